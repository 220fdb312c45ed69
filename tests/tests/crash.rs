//! SIGKILL of the proxy while it streams a cold blob (early, mid-blob, and after the upstream
//! finished but before the client did), restarted on the same cache: the blob is absent or whole
//! under its key, never partial, and a later pull is correct and fetched once if it was absent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use integration_tests::*;
use sha2::Digest;

const NAME: &str = "test/crash";

/// How a client transfer that the test watches ended.
struct Transfer {
    status: u16,
    len: u64,
    digest: String,
    complete: bool,
}

/// A client reading the blob on the support runtime: `progress` counts the bytes received; while
/// `hold` is set it stops reading after its first chunk (a slow client, so the proxy is still
/// sending when the upstream is done).
struct Client {
    progress: Arc<AtomicU64>,
    hold: Arc<AtomicBool>,
    done: tokio::task::JoinHandle<Transfer>,
}

fn start_client(url: &str, hold: bool) -> Client {
    let progress = Arc::new(AtomicU64::new(0));
    let hold = Arc::new(AtomicBool::new(hold));
    let (p, h, url) = (progress.clone(), hold.clone(), url.to_owned());
    let done = rt().spawn(async move {
        let resp = reqwest::Client::new().get(&url).send().await.expect("the proxy answers the blob GET");
        let status = resp.status().as_u16();
        let announced = resp.content_length();
        let mut stream = resp.bytes_stream();
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        let mut failed = false;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => {
                    hasher.update(&c);
                    len += c.len() as u64;
                    p.store(len, Ordering::SeqCst);
                }
                Err(_) => {
                    failed = true;
                    break;
                }
            }
            while h.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let complete = !failed && announced == Some(len);
        Transfer { status, len, digest: format!("sha256:{}", hex::encode(hasher.finalize())), complete }
    });
    Client { progress, hold, done }
}

/// Kills the proxy (SIGKILL) once the client holds at least `fraction` of the blob, which the
/// shim trickles so the kill lands while the upstream is still sending.
fn kill_mid_stream(fraction: f64, label: &str) {
    let mut env = Env::new();
    let layer = Blob::random_layer(7 + label.len() as u64, 2 << 20, false);
    let img = Image::new(Platform::amd64(), vec![layer.clone()], false, label);
    env.seed(img, NAME, "v1");
    // ~2 MiB at 512 KiB/s: the upstream needs about 4 s, so kills at up to 60% land mid-transfer.
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::Trickle { bytes_per_sec: 512 * 1024 }).times(1));
    let url = env.proxy.blob_url(NAME, &layer.digest);
    let client = start_client(&url, false);
    let want = (layer.size as f64 * fraction) as u64;
    wait_for("the client to receive its share of the blob", Duration::from_secs(20), || {
        (client.progress.load(Ordering::SeqCst) >= want.max(1)).then_some(())
    });
    env.proxy.kill();
    let t = rt().block_on(client.done).unwrap();
    assert_eq!(t.status, 200);
    assert!(!t.complete, "the client got a complete body from a proxy killed mid-transfer");
    assert!(t.len < layer.size, "client holds {} of {} bytes", t.len, layer.size);

    // The upstream was still sending when the proxy died, so no verified blob can exist: nothing
    // may be under the blob's key, and no file under any key may hold other bytes than it names.
    assert!(!env.proxy.blob_path(&layer.digest).exists(), "a blob the proxy never finished is under its key");
    let after_crash = env.proxy.check_cache();
    assert_eq!(after_crash.blobs, Vec::<String>::new(), "blobs under their keys after the crash");
    let wrong: Vec<&String> = after_crash.problems.iter().filter(|p| !p.contains("leftover staging upload")).collect();
    assert!(wrong.is_empty(), "wrong bytes under a key after the crash: {wrong:?}");

    env.proxy.restart();
    let http = Http::new();
    let r = http.get(&url);
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, layer.digest.as_str(), layer.size), "{:?}", r.error);
    assert_eq!(env.shim.blob_gets(&layer.digest), 2, "the blob was absent, so it is fetched once more");
    let r = http.get(&url);
    assert_eq!((r.status, r.digest.as_str()), (200, layer.digest.as_str()));
    assert_eq!(env.shim.blob_gets(&layer.digest), 2, "the refetched blob is cached");

    env.proxy.wait_idle();
    let check = env.proxy.check_cache();
    assert!(check.blobs.contains(&layer.digest), "cached blobs: {:?}", check.blobs);
    // A killed upload may leave its staging file (`<key>#<n>`); the proxy is expected to clean
    // those up (at the latest on restart) instead of keeping partial bytes forever.
    assert_eq!(check.problems, Vec::<String>::new(), "cache entries that are not whole, valid objects");
}

#[test]
fn sigkill_early_in_a_cold_blob_leaves_it_absent() {
    kill_mid_stream(0.05, "crash-early");
}

#[test]
fn sigkill_mid_blob_leaves_it_absent() {
    kill_mid_stream(0.5, "crash-middle");
}

#[test]
fn sigkill_after_the_upstream_finished_leaves_the_blob_whole() {
    let mut env = Env::new();
    let work = tempfile::tempdir().unwrap();
    // 24 MiB: more than loopback socket buffers hold, so a client that stops reading keeps the
    // proxy sending long after the upstream finished.
    let layer = Blob::big_layer_file(&work.path().join("layer.tar"), 24 << 20, false);
    let img = Image::new(Platform::amd64(), vec![layer.clone()], false, "crash-late");
    env.seed(img, NAME, "v1");
    let url = env.proxy.blob_url(NAME, &layer.digest);
    let client = start_client(&url, true);
    // The download logs this after committing the verified blob, before it ends the flight.
    wait_for("the proxy to verify and commit the blob", Duration::from_secs(60), || {
        env.proxy
            .log()
            .lines()
            .any(|l| l.contains("blob fetched and verified") && l.contains(&layer.digest))
            .then_some(())
    });
    let held = client.progress.load(Ordering::SeqCst);
    assert!(held < layer.size, "the client already read all {held} bytes");
    env.proxy.kill();
    client.hold.store(false, Ordering::SeqCst);
    let t = rt().block_on(client.done).unwrap();
    assert_eq!(t.status, 200);
    assert!(!t.complete && t.len < layer.size, "client got {} of {} bytes from a killed proxy", t.len, layer.size);
    assert_ne!(t.digest, layer.digest);

    // Committed before the kill: whole under its key.
    let check = env.proxy.check_cache();
    assert_eq!(check.blobs, vec![layer.digest.clone()], "problems: {:?}", check.problems);
    assert_eq!(check.problems, Vec::<String>::new());
    assert_eq!(std::fs::metadata(env.proxy.blob_path(&layer.digest)).unwrap().len(), layer.size);

    env.proxy.restart();
    let r = Http::new().fetch(reqwest::Method::GET, &url, &[], false);
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, layer.digest.as_str(), layer.size), "{:?}", r.error);
    assert_eq!(env.shim.blob_gets(&layer.digest), 1, "served from the cache after the restart");
}
