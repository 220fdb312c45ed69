//! A layer of more than 1 GiB, generated streaming (never in memory), pulled once through the
//! proxy by skopeo (which verifies the digest): the bytes arrive whole, the upstream is asked once,
//! the cache holds exactly the blob, and the proxy's peak RSS stays bounded.

use integration_tests::image::file_sha256;
use integration_tests::*;

const GIB: u64 = 1 << 30;
/// Peak resident memory the proxy may reach while streaming the layer (a correctness bound:
/// buffering the layer would need more than 1 GiB).
const RSS_LIMIT: u64 = 200 << 20;

#[test]
fn one_gib_layer_streams_through_with_bounded_memory() {
    let env = Env::new();
    let work = tempfile::Builder::new().prefix("it-big-").tempdir().unwrap();
    let big = Blob::big_layer_file(&work.path().join("big.tar"), GIB + (1 << 20), false);
    assert!(big.size > GIB);
    let small = Blob::layer(&[("hello", b"big image\n")], false);
    let img = Image::new(Platform::amd64(), vec![small.clone(), big.clone()], false, "big");
    env.seed(img.clone(), "test/big", "v1");
    std::fs::remove_file(work.path().join("big.tar")).unwrap();

    let out = work.path().join("pulled");
    Skopeo::new().copy_to_dir(&format!("{}:v1", env.proxy.image_ref("test/big")), &out, false).unwrap();
    let pulled = out.join(&big.digest[7..]);
    assert_eq!(std::fs::metadata(&pulled).unwrap().len(), big.size);
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), img.manifest);
    assert_eq!(env.shim.blob_gets(&big.digest), 1, "one upstream GET of the big layer");

    let peak = env.proxy.peak_rss();
    eprintln!("proxy peak RSS after a {} byte layer: {} MiB", big.size, peak >> 20);
    assert!(peak < RSS_LIMIT, "proxy peak RSS {} MiB (limit {} MiB)", peak >> 20, RSS_LIMIT >> 20);

    // The cache holds the layer's exact bytes, and no other file of its size.
    let same_size: Vec<_> =
        walk(&env.proxy.cache_dir()).into_iter().filter(|p| std::fs::metadata(p).unwrap().len() == big.size).collect();
    assert_eq!(same_size.len(), 1, "files of the layer's size in the cache: {same_size:?}");
    assert_eq!(file_sha256(&same_size[0]), big.digest);
    let upstream = env.proxy.metric("dependency_proxy_upstream_bytes_total", &[]);
    assert!(upstream >= big.size as f64, "upstream bytes {upstream} < layer size {}", big.size);
    assert_eq!(env.proxy.metric("dependency_proxy_inflight_fetches", &[]), 0.0);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
