//! Faults between the proxy and the upstream: cut mid-blob, corrupted bytes, 429, 503, a slow
//! trickle, an unasked gzip encoding, a reset, the upstream gone. No bad byte may reach a client
//! as a complete body, and none may be cached.

use std::time::Duration;

use integration_tests::image;
use integration_tests::*;

const LAYER: usize = 2 << 20;

/// An env with one image whose second layer is ~2 MiB of incompressible bytes.
fn env_with_big_layer(label: &str) -> (Env, Image, Blob) {
    let env = Env::new();
    let layer = Blob::random_layer(99, LAYER, false);
    let img = Image::new(
        Platform::amd64(),
        vec![Blob::layer(&[("f", label.as_bytes())], false), layer.clone()],
        false,
        label,
    );
    env.seed(img.clone(), "test/faults", "v1");
    (env, img, layer)
}

/// No file in the proxy's cache (nor its spool) holds any of the bytes the shim altered.
fn assert_no_bad_bytes_stored(env: &Env) {
    let bad = env.shim.bad_body_digests();
    assert!(!bad.is_empty(), "the fault did not alter any body");
    for (path, digest) in env.proxy.cache_files().into_iter().chain(proxy::files_with_digests(&env.proxy.spool_dir())) {
        assert!(!bad.contains(&digest), "{} holds bytes the upstream corrupted or cut ({digest})", path.display());
    }
}

fn inflight(env: &Env) -> f64 {
    env.proxy.metric("dependency_proxy_inflight_fetches", &[])
}

#[test]
fn cut_mid_blob_aborts_the_client_and_caches_nothing() {
    let (env, _img, layer) = env_with_big_layer("cut");
    let http = Http::new();
    let url = env.proxy.blob_url("test/faults", &layer.digest);
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::CutAfterPercent(50)).times(1));
    let r = http.get(&url);
    assert!(
        !r.complete() || r.status >= 500,
        "a cut upstream must not give a complete 2xx body: {} {} bytes",
        r.status,
        r.len
    );
    assert!(r.len < layer.size, "client received {} of {} bytes", r.len, layer.size);
    assert_ne!(r.digest, layer.digest);
    assert_no_bad_bytes_stored(&env);
    assert_eq!(env.shim.blob_gets(&layer.digest), 1);

    let r = http.get(&url);
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, layer.digest.as_str(), layer.size), "{:?}", r.error);
    assert_eq!(env.shim.blob_gets(&layer.digest), 2, "nothing from the cut transfer was cached");
    let r = http.get(&url);
    assert_eq!(r.digest, layer.digest);
    assert_eq!(env.shim.blob_gets(&layer.digest), 2, "the good transfer was cached");
    assert_eq!(inflight(&env), 0.0);
}

#[test]
fn corrupted_bytes_never_complete_and_are_not_cached() {
    let (env, _img, layer) = env_with_big_layer("flip");
    let http = Http::new();
    let url = env.proxy.blob_url("test/faults", &layer.digest);
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::FlipBytes).times(1));
    let r = http.get(&url);
    assert!(!r.complete(), "corrupted blob delivered as a complete body ({} bytes, status {})", r.len, r.status);
    assert!(
        r.len < layer.size,
        "the final byte must be withheld until the digest verifies: got {} of {}",
        r.len,
        layer.size
    );
    assert_no_bad_bytes_stored(&env);

    let r = http.get(&url);
    assert_eq!((r.status, r.digest.as_str()), (200, layer.digest.as_str()));
    assert_eq!(env.shim.blob_gets(&layer.digest), 2);
    assert_eq!(inflight(&env), 0.0);
}

#[test]
fn corrupted_layer_fails_skopeo_then_a_retry_pulls_clean() {
    let (env, img, layer) = env_with_big_layer("flip-skopeo");
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::FlipBytes).times(1));
    let skopeo = Skopeo::new();
    let src = format!("{}:v1", env.proxy.image_ref("test/faults"));
    let out = tempfile::tempdir().unwrap();
    // skopeo retries some failures by itself; either it fails, or what it stored is intact.
    match skopeo.copy_to_dir(&src, &out.path().join("1"), false) {
        Err(_) => {}
        Ok(_) => assert_eq!(
            sha256_digest(&std::fs::read(out.path().join("1").join(&layer.digest[7..])).unwrap()),
            layer.digest
        ),
    }
    skopeo.copy_to_dir(&src, &out.path().join("2"), false).unwrap();
    assert_eq!(std::fs::read(out.path().join("2/manifest.json")).unwrap(), img.manifest);
    assert_no_bad_bytes_stored(&env);
}

#[test]
fn too_many_requests_is_passed_through_with_retry_after() {
    let (env, img, layer) = env_with_big_layer("429");
    let http = Http::new();
    env.shim.add_fault(FaultRule::all(Fault::TooManyRequests { retry_after_secs: 17 }));
    let r = http.request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/faults", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert_eq!(r.status, 429, "uncached manifest under 429: {}", r.text());
    assert_eq!(r.header("retry-after").as_deref(), Some("17"));
    assert_eq!(r.oci_error_code(), "TOOMANYREQUESTS");
    let r = http.get(&env.proxy.blob_url("test/faults", &layer.digest));
    assert_eq!(r.status, 429, "uncached blob under 429");
    assert_eq!(r.header("retry-after").as_deref(), Some("17"));
    assert_eq!(r.oci_error_code(), "TOOMANYREQUESTS");
    let r = http.request(
        reqwest::Method::HEAD,
        &env.proxy.manifest_url("test/faults", &img.digest),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert_eq!(r.status, 429, "HEAD of an uncached manifest under 429");
    assert_eq!(r.header("retry-after").as_deref(), Some("17"));
}

#[test]
fn unavailable_upstream_gives_502_or_503_for_uncached_content() {
    let (env, _img, layer) = env_with_big_layer("503");
    let http = Http::new();
    env.shim.add_fault(FaultRule::all(Fault::Unavailable));
    let r = http.request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/faults", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert!(matches!(r.status, 502 | 503), "status {}: {}", r.status, r.text());
    r.oci_error_code();
    let r = http.get(&env.proxy.blob_url("test/faults", &layer.digest));
    assert!(matches!(r.status, 502 | 503), "status {}: {}", r.status, r.text());
    r.oci_error_code();
    env.shim.clear_faults();
    let r = http.get(&env.proxy.blob_url("test/faults", &layer.digest));
    assert_eq!((r.status, r.digest.as_str()), (200, layer.digest.as_str()), "503s were not cached as answers");
}

#[test]
fn reset_before_headers_is_an_upstream_error() {
    let (env, _img, layer) = env_with_big_layer("reset");
    let http = Http::new();
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::Reset));
    let r = http.get(&env.proxy.blob_url("test/faults", &layer.digest));
    assert!(matches!(r.status, 502 | 503), "status {}: {}", r.status, r.text());
    r.oci_error_code();
    env.shim.clear_faults();
    let r = http.get(&env.proxy.blob_url("test/faults", &layer.digest));
    assert_eq!(r.digest, layer.digest);
}

#[test]
fn cached_tag_is_served_stale_on_429_and_503() {
    let (env, img, _layer) = env_with_big_layer("stale");
    let http = Http::new();
    let url = env.proxy.manifest_url("test/faults", "v1");
    let get = || http.request(reqwest::Method::GET, &url, &[("accept", image::ACCEPT_ALL)]);
    assert_eq!(get().body, img.manifest);
    let stale0 = env.proxy.metric("dependency_proxy_stale_serves_total", &[]);

    env.shim.add_fault(FaultRule::manifests(Fault::TooManyRequests { retry_after_secs: 30 }));
    let r = get();
    assert_eq!((r.status, r.header("docker-content-digest")), (200, Some(img.digest.clone())), "{}", r.text());
    assert_eq!(r.body, img.manifest);
    assert_eq!(env.proxy.metric("dependency_proxy_stale_serves_total", &[]) - stale0, 1.0);

    env.shim.clear_faults();
    env.shim.add_fault(FaultRule::manifests(Fault::Unavailable));
    let r = get();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, img.manifest);
    assert_eq!(env.proxy.metric("dependency_proxy_stale_serves_total", &[]) - stale0, 2.0);
    assert!(env.shim.manifest_requests("HEAD", "v1") >= 2, "each tag pull tried to revalidate");
}

#[test]
fn upstream_stopped_cached_tag_and_digest_still_pull() {
    let (env, img, _layer) = env_with_big_layer("down");
    let skopeo = Skopeo::new();
    let out = tempfile::tempdir().unwrap();
    let by_tag = format!("{}:v1", env.proxy.image_ref("test/faults"));
    let by_digest = format!("{}@{}", env.proxy.image_ref("test/faults"), img.digest);
    skopeo.copy_to_dir(&by_tag, &out.path().join("warm"), false).unwrap();
    // Something never pulled.
    let other = Image::simple("never-pulled", false);
    env.seed(other.clone(), "test/other", "v1");

    env.shim.stop();
    skopeo.copy_to_dir(&by_tag, &out.path().join("tag"), false).unwrap();
    assert_eq!(std::fs::read(out.path().join("tag/manifest.json")).unwrap(), img.manifest);
    skopeo.copy_to_dir(&by_digest, &out.path().join("digest"), false).unwrap();
    assert_eq!(std::fs::read(out.path().join("digest/manifest.json")).unwrap(), img.manifest);

    let http = Http::new();
    let r = http.request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/other", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert!(matches!(r.status, 502 | 503), "uncached manifest with the upstream down: {} {}", r.status, r.text());
    r.oci_error_code();
    let r = http.get(&env.proxy.blob_url("test/other", &other.layers[0].digest));
    assert!(matches!(r.status, 502 | 503), "uncached blob with the upstream down: {} {}", r.status, r.text());
    assert!(env.proxy.metric("dependency_proxy_stale_serves_total", &[]) >= 1.0);

    env.shim.resume();
    let r = http.request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/other", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert_eq!((r.status, r.body == other.manifest), (200, true), "after the upstream is back: {}", r.text());
}

#[test]
fn slow_trickle_is_streamed_to_the_client() {
    let (env, _img, layer) = env_with_big_layer("trickle");
    // ~2 MiB at 512 KiB/s: about 4 s upstream.
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::Trickle { bytes_per_sec: 512 * 1024 }));
    let r = Http::new().get(&env.proxy.blob_url("test/faults", &layer.digest));
    assert_eq!((r.status, r.digest.as_str()), (200, layer.digest.as_str()));
    assert!(r.elapsed >= Duration::from_secs(3), "trickle finished in {:?}", r.elapsed);
    let first = r.first_byte.unwrap();
    // A proxy that buffered the blob would send its first byte at the end (~4 s).
    assert!(first < r.elapsed / 3, "first byte after {first:?} of {:?}: not streamed", r.elapsed);
    // Cached: fast now, no upstream request.
    let r = Http::new().get(&env.proxy.blob_url("test/faults", &layer.digest));
    assert_eq!(r.digest, layer.digest);
    assert!(r.elapsed < Duration::from_secs(2), "{:?}", r.elapsed);
    assert_eq!(env.shim.blob_gets(&layer.digest), 1);
}

#[test]
fn concurrent_cold_pulls_make_one_upstream_request() {
    let (env, _img, layer) = env_with_big_layer("single-flight");
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::Trickle { bytes_per_sec: 1024 * 1024 }));
    let url = env.proxy.blob_url("test/faults", &layer.digest);
    let http = Http::new();
    let results = rt().block_on(async {
        let futs = (0..6).map(|i| {
            let http = http.clone();
            let url = url.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100 * i)).await;
                http.fetch_async(reqwest::Method::GET, &url, &[], false).await
            }
        });
        futures::future::join_all(futs).await
    });
    for (i, r) in results.iter().enumerate() {
        assert_eq!(
            (r.status, r.digest.as_str(), r.len),
            (200, layer.digest.as_str(), layer.size),
            "client {i}: {:?}",
            r.error
        );
    }
    assert_eq!(env.shim.blob_gets(&layer.digest), 1, "concurrent cold pulls of one blob");
    assert_eq!(inflight(&env), 0.0);
}

#[test]
fn unasked_gzip_encoding_never_reaches_client_or_cache() {
    let (env, _img, layer) = env_with_big_layer("gzip");
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::GzipUnasked).times(1));
    let http = Http::new();
    let url = env.proxy.blob_url("test/faults", &layer.digest);
    let r = http.get(&url);
    if r.complete() && r.status == 200 {
        assert_eq!(r.digest, layer.digest, "gzip-encoded bytes served as the blob");
        assert_eq!(r.header("content-encoding"), None, "the proxy passed an encoding through");
    } else {
        assert!(r.len < layer.size);
    }
    let gets = env.shim.records().into_iter().filter(|r| r.kind == Kind::Blob && r.method == "GET").collect::<Vec<_>>();
    for g in &gets {
        assert!(
            matches!(g.accept_encoding.as_deref(), None | Some("identity")),
            "proxy asked for {:?}",
            g.accept_encoding
        );
    }
    assert_no_bad_bytes_stored(&env);
    let r = http.get(&url);
    assert_eq!((r.status, r.digest.as_str(), r.header("content-encoding")), (200, layer.digest.as_str(), None));
}

/// Several clients wait on one in-flight download that the upstream cuts (or corrupts): every
/// one of them is aborted, none gets a complete body, nothing is cached.
fn concurrent_clients_share_the_failure(fault: Fault, label: &str) {
    let (env, _img, layer) = env_with_big_layer(label);
    env.shim.add_fault(
        FaultRule::blob(&layer.digest, Fault::Slow { bytes_per_sec: 1024 * 1024, then: Box::new(fault) }).times(1),
    );
    let url = env.proxy.blob_url("test/faults", &layer.digest);
    let http = Http::new();
    let results = rt().block_on(async {
        let futs = (0..4).map(|i| {
            let http = http.clone();
            let url = url.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(150 * i)).await;
                http.fetch_async(reqwest::Method::GET, &url, &[], false).await
            }
        });
        futures::future::join_all(futs).await
    });
    let upstream_gets = env.shim.blob_gets(&layer.digest);
    for (i, r) in results.iter().enumerate() {
        if r.complete() && r.status == 200 {
            // Only possible if the proxy fetched again after the failure (then it must be right).
            assert_eq!(r.digest, layer.digest, "client {i} got a complete body with bad bytes");
            assert!(upstream_gets > 1, "client {i} complete although the only upstream transfer failed");
        } else {
            assert!(r.len < layer.size, "client {i}: {} of {} bytes", r.len, layer.size);
        }
    }
    assert_no_bad_bytes_stored(&env);
    let r = http.get(&url);
    assert_eq!((r.status, r.digest.as_str()), (200, layer.digest.as_str()));
    assert_eq!(inflight(&env), 0.0);
}

#[test]
fn concurrent_clients_of_a_cut_download_are_all_aborted() {
    concurrent_clients_share_the_failure(Fault::CutAfterPercent(60), "conc-cut");
}

#[test]
fn concurrent_clients_of_a_corrupt_download_are_all_aborted() {
    concurrent_clients_share_the_failure(Fault::FlipBytes, "conc-flip");
}

#[test]
fn corrupted_manifest_is_never_served() {
    let (env, img, _layer) = env_with_big_layer("bad-manifest");
    let http = Http::new();
    for reference in [img.digest.clone(), "v1".to_owned()] {
        env.shim.clear_faults();
        env.shim.add_fault(FaultRule {
            kind: Some(Kind::Manifest),
            method: Some(reqwest::Method::GET),
            reference: Some(reference.clone()),
            times: None,
            fault: Fault::FlipBytes,
        });
        let url = env.proxy.manifest_url("test/faults", &reference);
        let r = http.request(reqwest::Method::GET, &url, &[("accept", image::ACCEPT_ALL)]);
        assert!(
            !(r.status == 200 && r.complete() && r.body != img.manifest),
            "manifest {reference}: corrupted bytes served with 200"
        );
        assert!(r.status != 200 || r.body == img.manifest, "manifest {reference}: status {} {}", r.status, r.text());
    }
    env.shim.clear_faults();
    assert_no_bad_bytes_stored(&env);
    let r = http.request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/faults", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert_eq!((r.status, r.body == img.manifest), (200, true));
}

#[test]
fn sigterm_during_a_download_commits_nothing_partial() {
    let (mut env, _img, layer) = env_with_big_layer("sigterm-mid");
    // About 4 s upstream.
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::Trickle { bytes_per_sec: 512 * 1024 }).times(1));
    let url = env.proxy.blob_url("test/faults", &layer.digest);
    let client = {
        let url = url.clone();
        std::thread::spawn(move || Http::new().fetch(reqwest::Method::GET, &url, &[], false))
    };
    std::thread::sleep(Duration::from_millis(1200));
    let status = env.proxy.terminate();
    let r = client.join().unwrap();
    if r.complete() && r.status == 200 {
        assert_eq!(r.digest, layer.digest, "a shutdown delivered bad bytes");
    } else {
        assert!(r.len < layer.size);
    }
    assert!(status.success(), "exit status after SIGTERM: {status}");
    env.proxy.restart();
    let r = Http::new().get(&url);
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, layer.digest.as_str(), layer.size));
    // Either the download finished before exit (cached: 1 upstream GET) or it was dropped and is
    // fetched again now (2) — never served from a half-written entry.
    let gets = env.shim.blob_gets(&layer.digest);
    assert!(gets == 1 || gets == 2, "upstream GETs {gets}");
    env.proxy.wait_idle();
    for (path, digest) in env.proxy.cache_files() {
        let size = std::fs::metadata(&path).unwrap().len();
        if size > 1 << 20 {
            assert_eq!(digest, layer.digest, "{} is a large cache file that is not the blob", path.display());
        }
    }
}

#[test]
fn cached_tag_head_is_served_stale_when_the_upstream_is_down() {
    let (env, img, _layer) = env_with_big_layer("stale-head");
    let http = Http::new();
    let url = env.proxy.manifest_url("test/faults", "v1");
    let hdr = [("accept", image::ACCEPT_ALL)];
    let get = http.request(reqwest::Method::GET, &url, &hdr);
    assert_eq!(get.status, 200);
    env.shim.stop();
    let head = http.request(reqwest::Method::HEAD, &url, &hdr);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("docker-content-digest").as_deref(), Some(img.digest.as_str()));
    assert_eq!(head.header("content-length"), Some(img.manifest.len().to_string()));
    assert_eq!(head.header("content-type"), get.header("content-type"));
}

#[test]
fn range_of_a_blob_in_flight_gets_the_right_bytes() {
    let (env, _img, layer) = env_with_big_layer("range-inflight");
    let bytes = layer.bytes();
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::Trickle { bytes_per_sec: 1024 * 1024 }).times(1));
    let url = env.proxy.blob_url("test/faults", &layer.digest);
    let http = Http::new();
    let (full, ranged) = rt().block_on(async {
        let full = http.fetch_async(reqwest::Method::GET, &url, &[], false);
        let ranged = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            http.fetch_async(reqwest::Method::GET, &url, &[("range", "bytes=1000-1999")], true).await
        };
        futures::join!(full, ranged)
    });
    assert_eq!((full.status, full.digest.as_str()), (200, layer.digest.as_str()));
    match ranged.status {
        206 => {
            assert_eq!(ranged.header("content-range"), Some(format!("bytes 1000-1999/{}", bytes.len())));
            assert_eq!(ranged.body, &bytes[1000..2000]);
        }
        200 => assert_eq!(ranged.body, bytes),
        s => panic!("range during the download: status {s} {:?}", ranged.error),
    }
    assert_eq!(env.shim.blob_gets(&layer.digest), 1);
}

#[test]
fn client_abort_mid_download_leaves_a_clean_cache() {
    let (env, _img, layer) = env_with_big_layer("client-abort");
    env.shim.add_fault(FaultRule::blob(&layer.digest, Fault::Trickle { bytes_per_sec: 1024 * 1024 }).times(1));
    let url = env.proxy.blob_url("test/faults", &layer.digest);
    let got = rt().block_on(async {
        let client = reqwest::Client::new();
        let mut resp = client.get(&url).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let first = resp.chunk().await.unwrap().map(|c| c.len()).unwrap_or(0);
        drop(resp); // the client goes away mid-blob
        first
    });
    assert!(got > 0 && (got as u64) < layer.size);
    // Whatever the proxy did with the download, the next client gets the exact blob.
    let r = Http::new().get(&url);
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, layer.digest.as_str(), layer.size), "{:?}", r.error);
    assert!(env.shim.blob_gets(&layer.digest) <= 2);
    env.proxy.wait_idle();
    for (path, digest) in env.proxy.cache_files() {
        if std::fs::metadata(&path).unwrap().len() > 1 << 20 {
            assert_eq!(digest, layer.digest, "{} is a large cache file that is not the blob", path.display());
        }
    }
}

#[test]
fn a_404_is_not_remembered() {
    let (env, _img, _layer) = env_with_big_layer("not-yet");
    let http = Http::new();
    let later = Image::simple("later", false);
    let tag_url = env.proxy.manifest_url("test/later", "v1");
    let blob_url = env.proxy.blob_url("test/later", &later.layers[0].digest);
    let r = http.request(reqwest::Method::GET, &tag_url, &[("accept", image::ACCEPT_ALL)]);
    assert_eq!((r.status, r.oci_error_code().as_str()), (404, "MANIFEST_UNKNOWN"));
    let r = http.get(&blob_url);
    assert_eq!((r.status, r.oci_error_code().as_str()), (404, "BLOB_UNKNOWN"));
    env.seed(later.clone(), "test/later", "v1");
    let r = http.request(reqwest::Method::GET, &tag_url, &[("accept", image::ACCEPT_ALL)]);
    assert_eq!((r.status, r.body == later.manifest), (200, true));
    assert_eq!(http.get(&blob_url).digest, later.layers[0].digest);
}
