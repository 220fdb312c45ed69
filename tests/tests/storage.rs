//! Storage errors: a read-only cache (read-only bind mount), a full cache filesystem and a full
//! spool (tiny tmpfs mounts). The client gets a clean error or a correct uncached pass-through,
//! the proxy stays up, and nothing corrupt is left. Needs root for the mounts; as root, `chmod`
//! would not stop any write, so it cannot make a read-only cache.

use integration_tests::image::ACCEPT_ALL;
use integration_tests::*;

/// GET of a blob while storage is failing: either a correct, complete 200 (pass-through) or an
/// OCI JSON error. Returns whether it was served.
fn served_or_clean_error(r: &Resp, blob: &Blob, what: &str) -> bool {
    if r.status == 200 {
        assert!(r.complete(), "{what}: 200 with a broken body: {:?}", r.error);
        assert_eq!((r.digest.as_str(), r.len), (blob.digest.as_str(), blob.size), "{what}: wrong bytes served");
        true
    } else {
        assert!(r.status >= 500, "{what}: status {} {}", r.status, r.text());
        r.oci_error_code();
        false
    }
}

fn healthy(proxy: &Proxy) {
    let r = Http::new().get(&format!("{}/healthz", proxy.url()));
    assert_eq!(r.status, 200, "/healthz after the storage errors");
}

fn get_manifest(http: &Http, proxy: &Proxy, name: &str, reference: &str) -> Resp {
    http.request(reqwest::Method::GET, &proxy.manifest_url(name, reference), &[("accept", ACCEPT_ALL)])
}

#[test]
fn read_only_cache_serves_what_it_has_and_passes_the_rest_through() {
    let env = Env::new();
    let warm = Image::simple("ro-warm", false);
    let cold = Image::new(
        Platform::amd64(),
        vec![Blob::layer(&[("cold", b"cold\n")], false), Blob::random_layer(31, 1 << 20, false)],
        false,
        "ro-cold",
    );
    env.seed(warm.clone(), "test/warm", "v1");
    env.seed(cold.clone(), "test/cold", "v1");
    let http = Http::new();
    assert_eq!(get_manifest(&http, &env.proxy, "test/warm", "v1").body, warm.manifest);
    for b in Artifact::from(warm.clone()).blobs() {
        assert_eq!(http.get(&env.proxy.blob_url("test/warm", &b.digest)).digest, b.digest);
    }
    env.proxy.wait_idle();
    let before = env.proxy.check_cache();

    let ro = Mount::read_only(&env.proxy.cache_dir()).expect("read-only bind mount of the cache (needs root)");
    assert!(std::fs::write(env.proxy.cache_dir().join("probe"), b"x").is_err(), "the read-only mount lets root write");
    env.shim.reset();

    // What is cached is still served, without the upstream.
    for b in Artifact::from(warm.clone()).blobs() {
        let r = http.get(&env.proxy.blob_url("test/warm", &b.digest));
        assert_eq!((r.status, r.digest.as_str()), (200, b.digest.as_str()));
    }
    assert_eq!(env.shim.count(Kind::Blob, "GET"), 0, "cached blobs went upstream");
    let r = get_manifest(&http, &env.proxy, "test/warm", "v1");
    assert_eq!((r.status, r.body == warm.manifest), (200, true), "{}", r.text());

    // What is not cached cannot be stored: passed through (the designed behaviour) or refused.
    let r = get_manifest(&http, &env.proxy, "test/cold", "v1");
    if r.status == 200 {
        assert_eq!(r.body, cold.manifest);
    } else {
        assert!(r.status >= 500, "cold manifest: {} {}", r.status, r.text());
        r.oci_error_code();
    }
    let big = &cold.layers[1];
    let url = env.proxy.blob_url("test/cold", &big.digest);
    let first = served_or_clean_error(&http.get(&url), big, "first cold GET");
    env.proxy.wait_idle();
    let second = served_or_clean_error(&http.get(&url), big, "second cold GET");
    env.proxy.wait_idle();
    assert!(first && second, "the proxy is designed to pass through uncached when it cannot write");
    assert_eq!(env.shim.blob_gets(&big.digest), 2, "a blob that could not be cached is fetched each time");
    healthy(&env.proxy);

    drop(ro);
    let after = env.proxy.check_cache();
    assert_eq!(after.problems, Vec::<String>::new());
    assert_eq!(after.blobs, before.blobs, "the read-only cache changed");
    assert!(!env.proxy.blob_path(&big.digest).exists());

    // Writable again: the next pull caches it.
    assert_eq!(http.get(&url).digest, big.digest);
    env.proxy.wait_idle();
    assert_eq!(http.get(&url).digest, big.digest);
    assert_eq!(env.shim.blob_gets(&big.digest), 3, "cached once the storage is writable");
}

#[test]
fn full_cache_filesystem_passes_a_big_blob_through_uncached() {
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    // 6 MiB into a 4 MiB filesystem: the staging write fails part-way.
    let big = Blob::big_layer_file(&work.path().join("layer.tar"), 6 << 20, false);
    let small = Blob::layer(&[("small", b"fits\n")], false);
    let img = Image::new(Platform::amd64(), vec![small.clone(), big.clone()], false, "full-cache");
    env.seed(img.clone(), "test/full", "v1");
    let full = Mount::tmpfs(&env.proxy.cache_dir(), "4m").expect("tmpfs over the cache (needs root)");
    let http = Http::new();

    let r = get_manifest(&http, &env.proxy, "test/full", "v1");
    assert_eq!((r.status, r.body == img.manifest), (200, true), "{}", r.text());
    assert_eq!(http.get(&env.proxy.blob_url("test/full", &small.digest)).digest, small.digest);
    let url = env.proxy.blob_url("test/full", &big.digest);
    for attempt in ["first", "second"] {
        let r = http.fetch(reqwest::Method::GET, &url, &[], false);
        assert!(served_or_clean_error(&r, &big, attempt), "the proxy is designed to pass through uncached");
        env.proxy.wait_idle();
    }
    assert_eq!(env.shim.blob_gets(&big.digest), 2, "a blob that does not fit is fetched each time");
    assert_eq!(env.shim.blob_gets(&small.digest), 1, "small blobs still fit and are cached");
    healthy(&env.proxy);
    env.proxy.wait_idle();

    let check = env.proxy.check_cache();
    assert_eq!(check.problems, Vec::<String>::new(), "the failed staging upload was not cleaned up");
    assert_eq!(check.blobs, vec![small.digest.clone()], "the small blob is cached; the big one is not");
    drop(full);
}

#[test]
fn full_spool_gives_a_clean_error_and_the_proxy_stays_up() {
    let env = Env::new();
    let work = tempfile::tempdir().unwrap();
    // 3 MiB through a 1 MiB spool.
    let big = Blob::big_layer_file(&work.path().join("layer.tar"), 3 << 20, false);
    let small = Blob::layer(&[("small", b"fits in the spool\n")], false);
    let img = Image::new(Platform::amd64(), vec![small.clone(), big.clone()], false, "full-spool");
    env.seed(img, "test/spool", "v1");
    let spool = Mount::tmpfs(&env.proxy.spool_dir(), "1m").expect("tmpfs over the spool (needs root)");
    let http = Http::new();

    let r = http.fetch(reqwest::Method::GET, &env.proxy.blob_url("test/spool", &big.digest), &[], false);
    eprintln!("full spool: status {}, {} of {} bytes, {:?}", r.status, r.len, big.size, r.error);
    if r.status == 200 {
        // Headers were already sent when the spool filled: the body must be cut, not completed.
        assert!(!r.complete() && r.len < big.size, "full spool: {} of {} bytes, {:?}", r.len, big.size, r.error);
    } else {
        assert!(r.status >= 500, "full spool: status {}", r.status);
    }
    assert_ne!(r.digest, big.digest);
    healthy(&env.proxy);
    let r = http.get(&env.proxy.blob_url("test/spool", &small.digest));
    assert_eq!((r.status, r.digest.as_str()), (200, small.digest.as_str()), "a blob that fits the spool");
    env.proxy.wait_idle();
    let check = env.proxy.check_cache();
    assert_eq!(check.problems, Vec::<String>::new());
    assert_eq!(check.blobs, vec![small.digest.clone()], "only the blob that fit is cached");

    drop(spool);
    let r = http.fetch(reqwest::Method::GET, &env.proxy.blob_url("test/spool", &big.digest), &[], false);
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, big.digest.as_str(), big.size), "{:?}", r.error);
    env.proxy.wait_idle();
    assert!(env.proxy.blob_path(&big.digest).exists(), "cached once the spool has room");
}
