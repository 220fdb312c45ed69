//! The HTTP contract seen with a plain HTTP client: error bodies, HEAD == GET headers, Range,
//! the cache's semantics (tag revalidation, digests served without upstream requests, survival
//! across a restart), the Accept list, metrics, health and shutdown.

use integration_tests::http::raw_request;
use integration_tests::image::{self, OCI_INDEX};
use integration_tests::*;
use reqwest::Method;

fn seeded(label: &str) -> (Env, Image) {
    let env = Env::new();
    let img = Image::simple(label, false);
    env.seed(img.clone(), "test/api", "v1");
    (env, img)
}

fn get_manifest(http: &Http, url: &str) -> Resp {
    http.request(Method::GET, url, &[("accept", image::ACCEPT_ALL)])
}

#[test]
fn base_and_health_endpoints() {
    let (env, _) = seeded("base");
    let http = Http::new();
    let r = http.get(&format!("{}/v2/", env.proxy.url()));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("docker-distribution-api-version").as_deref(), Some("registry/2.0"));
    assert_eq!(http.get(&format!("{}/healthz", env.proxy.url())).status, 200);
    assert_eq!(http.get(&format!("{}/readyz", env.proxy.url())).status, 200);
    let m = env.proxy.metrics();
    {
        let name = "dependency_proxy_inflight_fetches";
        assert!(m.keys().any(|k| k.starts_with(name)), "/metrics lacks {name}: {m:?}");
    }
}

fn assert_oci_error(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
    want_status: u16,
    want_code: &str,
    what: &str,
) {
    assert_eq!(status, want_status, "{what}: body {}", String::from_utf8_lossy(body));
    let ct = headers.iter().find(|(k, _)| k == "content-type").map(|(_, v)| v.as_str()).unwrap_or("");
    assert!(ct.starts_with("application/json"), "{what}: content-type {ct:?}");
    let v: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", String::from_utf8_lossy(body)));
    let e = &v["errors"][0];
    let code = e["code"].as_str().unwrap_or("<none>");
    assert!(want_code.split('|').any(|c| c == code), "{what}: want {want_code}, got {v}");
    assert!(e["message"].is_string(), "{what}: {v}");
}

#[test]
fn error_bodies_for_bad_names_digests_and_unknowns() {
    let (env, img) = seeded("errors");
    let host = env.proxy.host();
    let good_blob = &img.layers[0].digest;
    let cases: Vec<(String, u16, &str)> = vec![
        // A digest with slashes changes how the path splits: the name part is then invalid.
        ("/v2/g/dependency_proxy/containers/test/api/blobs/sha256:../../x".into(), 400, "NAME_INVALID|DIGEST_INVALID"),
        ("/v2/other/dependency_proxy/containers/test/api/manifests/v1".to_string(), 404, "NAME_UNKNOWN"),
        (format!("/v2/other/dependency_proxy/containers/test/api/blobs/{good_blob}"), 404, "NAME_UNKNOWN"),
        ("/v2/g/dependency_proxy/containers/Test/API/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/g/dependency_proxy/containers/test/../../../etc/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/g/dependency_proxy/containers/test/%2e%2e/x/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/g/dependency_proxy/containers/test//api/manifests/v1".into(), 400, "NAME_INVALID"),
        ("/v2/g/dependency_proxy/containers/test/api/blobs/sha256:1234".into(), 400, "DIGEST_INVALID"),
        (format!("/v2/g/dependency_proxy/containers/test/api/blobs/sha256:{}", "Z".repeat(64)), 400, "DIGEST_INVALID"),
        ("/v2/g/dependency_proxy/containers/test/api/blobs/notadigest".into(), 400, "DIGEST_INVALID"),
        ("/v2/g/dependency_proxy/containers/test/api/manifests/sha256:abc".into(), 400, "DIGEST_INVALID"),
        ("/v2/g/dependency_proxy/containers/test/api/manifests/nope".into(), 404, "MANIFEST_UNKNOWN"),
        ("/v2/g/dependency_proxy/containers/test/missing/manifests/v1".into(), 404, "MANIFEST_UNKNOWN"),
        (format!("/v2/g/dependency_proxy/containers/test/api/blobs/sha256:{}", "0".repeat(64)), 404, "BLOB_UNKNOWN"),
    ];
    for (target, status, code) in &cases {
        let (s, h, b) = raw_request(&host, "GET", target);
        assert_oci_error(s, &h, &b, *status, code, &format!("GET {target}"));
    }
    // Nothing invalid reached the upstream.
    for r in env.shim.records() {
        assert!(!r.path.contains(".."), "an invalid path reached the upstream: {r:?}");
        assert!(!r.path.contains("Test"), "an invalid name reached the upstream: {r:?}");
        assert!(!r.path.contains("sha256:1234"), "an invalid digest reached the upstream: {r:?}");
    }
    // An invalid tag (the grammar allows [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}).
    let (s, _h, b) =
        raw_request(&host, "GET", &format!("/v2/g/dependency_proxy/containers/test/api/manifests/{}", "a".repeat(129)));
    assert_eq!(s, 400, "tag of 129 characters: {}", String::from_utf8_lossy(&b));
    let (s, _h, b) = raw_request(&host, "GET", "/v2/g/dependency_proxy/containers/test/api/manifests/-lead");
    assert_eq!(s, 400, "tag starting with '-': {}", String::from_utf8_lossy(&b));
}

#[test]
fn methods_other_than_get_and_head_are_405() {
    let (env, img) = seeded("methods");
    let http = Http::new();
    for method in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
        for url in [env.proxy.manifest_url("test/api", "v1"), env.proxy.blob_url("test/api", &img.layers[0].digest)] {
            let r = http.request(method.clone(), &url, &[]);
            assert_eq!(r.status, 405, "{method} {url}: {}", r.text());
            assert!(r.header("content-type").unwrap_or_default().starts_with("application/json"), "{method} {url}");
            r.oci_error_code();
        }
    }
    let r = http.request(
        Method::POST,
        &format!("{}/v2/g/dependency_proxy/containers/test/api/blobs/uploads/", env.proxy.url()),
        &[],
    );
    assert!(matches!(r.status, 404 | 405), "upload start: {}", r.status);
    r.oci_error_code();
    assert!(env.shim.records().iter().all(|r| r.method == "GET" || r.method == "HEAD"), "a write reached the upstream");
}

fn same_headers(get: &Resp, head: &Resp, what: &str) {
    for h in ["content-type", "content-length", "docker-content-digest"] {
        assert_eq!(head.header(h), get.header(h), "{what}: {h} differs between HEAD and GET");
    }
    assert!(head.body.is_empty(), "{what}: HEAD has a body");
}

#[test]
fn head_answers_carry_the_same_headers_as_get() {
    let (env, img) = seeded("head");
    let http = Http::new();
    let hdr = [("accept", image::ACCEPT_ALL)];
    // Cold HEAD first, then GET, then warm HEAD.
    for reference in ["v1".to_owned(), img.digest.clone()] {
        let url = env.proxy.manifest_url("test/api", &reference);
        let cold = http.request(Method::HEAD, &url, &hdr);
        let get = http.request(Method::GET, &url, &hdr);
        let warm = http.request(Method::HEAD, &url, &hdr);
        assert_eq!((cold.status, get.status, warm.status), (200, 200, 200), "manifest {reference}");
        assert_eq!(get.header("content-length"), Some(img.manifest.len().to_string()));
        assert_eq!(get.header("docker-content-digest").as_deref(), Some(img.digest.as_str()));
        same_headers(&get, &cold, &format!("cold HEAD manifest {reference}"));
        same_headers(&get, &warm, &format!("warm HEAD manifest {reference}"));
    }
    let layer = &img.layers[1];
    let url = env.proxy.blob_url("test/api", &layer.digest);
    let cold = http.head(&url);
    let get = http.get(&url);
    let warm = http.head(&url);
    assert_eq!((cold.status, get.status, warm.status), (200, 200, 200));
    assert_eq!(get.header("content-length"), Some(layer.size.to_string()));
    assert_eq!(get.digest, layer.digest);
    for (what, head) in [("cold", &cold), ("warm", &warm)] {
        assert_eq!(head.header("content-length"), Some(layer.size.to_string()), "{what} HEAD blob");
        assert_eq!(head.header("docker-content-digest"), get.header("docker-content-digest"), "{what} HEAD blob");
    }
    assert_eq!(get.header("docker-content-digest").as_deref(), Some(layer.digest.as_str()));
    // A cold HEAD of a blob must not download it twice.
    assert!(env.shim.blob_gets(&layer.digest) <= 1);
    // Unknown blob: HEAD 404 like GET, no body.
    let missing = env.proxy.blob_url("test/api", &format!("sha256:{}", "1".repeat(64)));
    assert_eq!((http.head(&missing).status, http.get(&missing).status), (404, 404));
}

#[test]
fn range_requests_on_a_cached_blob() {
    let (env, img) = seeded("range");
    let http = Http::new();
    let layer = &img.layers[1];
    let bytes = layer.bytes();
    let n = bytes.len();
    let url = env.proxy.blob_url("test/api", &layer.digest);
    assert_eq!(http.get(&url).digest, layer.digest);
    let cases = [
        ("bytes=0-9", 0usize, 9usize),
        ("bytes=100-", 100, n - 1),
        ("bytes=-5", n - 5, n - 1),
        (&*format!("bytes=10-{}", n + 100), 10, n - 1),
    ];
    for (range, start, end) in cases {
        let r = http.request(Method::GET, &url, &[("range", range)]);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes {start}-{end}/{n}")), "{range}");
        assert_eq!(r.header("content-length"), Some((end - start + 1).to_string()), "{range}");
        assert_eq!(r.body, &bytes[start..=end], "{range}");
    }
    for range in [format!("bytes={n}-"), format!("bytes={}-{}", n + 10, n + 20)] {
        let r = http.request(Method::GET, &url, &[("range", &range)]);
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(r.header("content-range"), Some(format!("bytes */{n}")), "{range}");
    }
    assert_eq!(env.shim.blob_gets(&layer.digest), 1, "ranges were served from the cache");
    // A range on a cold blob is answered correctly too (206 of the right bytes, or the whole blob).
    let cold = &img.layers[0];
    let cb = cold.bytes();
    let r = http.request(Method::GET, &env.proxy.blob_url("test/api", &cold.digest), &[("range", "bytes=1-3")]);
    match r.status {
        206 => assert_eq!(r.body, &cb[1..=3]),
        200 => assert_eq!(r.body, cb),
        s => panic!("cold range: status {s}"),
    }
}

#[test]
fn tag_revalidation_and_digest_serving() {
    let (env, img) = seeded("reval");
    let http = Http::new();
    let tag_url = env.proxy.manifest_url("test/api", "v1");
    assert_eq!(get_manifest(&http, &tag_url).body, img.manifest);
    env.shim.reset();
    // Unchanged tag: exactly one upstream HEAD, no GET.
    assert_eq!(get_manifest(&http, &tag_url).body, img.manifest);
    assert_eq!(env.shim.manifest_requests("HEAD", "v1"), 1);
    assert_eq!(env.shim.manifest_requests("GET", "v1"), 0);
    // By digest: no upstream request at all.
    env.shim.reset();
    let r = get_manifest(&http, &env.proxy.manifest_url("test/api", &img.digest));
    assert_eq!(r.body, img.manifest);
    assert_eq!(env.shim.content_requests().len(), 0, "{:?}", env.shim.records());
    // The tag moves upstream: the next pull serves the new manifest.
    let newer = Image::simple("reval-2", false);
    env.seed(newer.clone(), "test/api", "v1");
    let r = get_manifest(&http, &tag_url);
    assert_eq!(r.header("docker-content-digest").as_deref(), Some(newer.digest.as_str()));
    assert_eq!(r.body, newer.manifest);
    // And the old digest is still served from cache.
    let r = get_manifest(&http, &env.proxy.manifest_url("test/api", &img.digest));
    assert_eq!(r.body, img.manifest);
}

#[test]
fn accept_list_in_several_header_lines_is_forwarded_whole() {
    // Go clients (skopeo, podman) send one Accept header line per media type.
    let env = Env::new();
    let idx = Index::two_platforms("accept-lines", false);
    env.seed(idx.clone(), "test/idx", "v1");
    let http = Http::new();
    let r = http.request(
        Method::GET,
        &env.proxy.manifest_url("test/idx", "v1"),
        &[("accept", image::OCI_MANIFEST), ("accept", OCI_INDEX), ("accept", image::DOCKER_MANIFEST)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some(OCI_INDEX));
    assert_eq!(r.body, idx.bytes);
}

#[test]
fn cache_survives_a_restart() {
    let (mut env, img) = seeded("restart");
    let http = Http::new();
    let layer = &img.layers[1];
    assert_eq!(http.get(&env.proxy.blob_url("test/api", &layer.digest)).digest, layer.digest);
    assert_eq!(get_manifest(&http, &env.proxy.manifest_url("test/api", "v1")).body, img.manifest);
    env.proxy.restart();
    env.shim.reset();
    assert_eq!(http.get(&env.proxy.blob_url("test/api", &layer.digest)).digest, layer.digest);
    assert_eq!(get_manifest(&http, &env.proxy.manifest_url("test/api", &img.digest)).body, img.manifest);
    assert_eq!(env.shim.content_requests().len(), 0, "{:?}", env.shim.records());
    // Upstream down after the restart: the tag is still served.
    env.shim.stop();
    assert_eq!(get_manifest(&http, &env.proxy.manifest_url("test/api", "v1")).body, img.manifest);
}

#[test]
fn memory_storage_serves_and_caches() {
    let env = Env::with(Default::default(), |mut o| {
        o.memory_storage = true;
        o
    });
    let img = Image::simple("memory", false);
    env.seed(img.clone(), "test/api", "v1");
    let http = Http::new();
    let layer = &img.layers[1];
    for _ in 0..2 {
        assert_eq!(http.get(&env.proxy.blob_url("test/api", &layer.digest)).digest, layer.digest);
    }
    assert_eq!(env.shim.blob_gets(&layer.digest), 1);
    assert!(env.proxy.cache_files().is_empty(), "memory:// wrote files");
}

#[test]
fn metrics_count_hits_misses_and_bytes() {
    let (env, img) = seeded("metrics");
    let http = Http::new();
    let layer = &img.layers[1];
    let m0 = env.proxy.metrics();
    let v = |m: &std::collections::BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]| {
        proxy::metric_sum(m, name, labels)
    };
    let r = http.get(&env.proxy.blob_url("test/api", &layer.digest));
    assert_eq!(r.digest, layer.digest);
    let m1 = env.proxy.metrics();
    let size = layer.size as f64;
    assert_eq!(
        v(&m1, "dependency_proxy_cache_misses_total", &[("kind", "blob")])
            - v(&m0, "dependency_proxy_cache_misses_total", &[("kind", "blob")]),
        1.0
    );
    assert_eq!(
        v(&m1, "dependency_proxy_cache_hits_total", &[("kind", "blob")])
            - v(&m0, "dependency_proxy_cache_hits_total", &[("kind", "blob")]),
        0.0
    );
    assert_eq!(
        v(&m1, "dependency_proxy_upstream_bytes_total", &[]) - v(&m0, "dependency_proxy_upstream_bytes_total", &[]),
        size
    );
    assert_eq!(
        v(&m1, "dependency_proxy_bytes_served_total", &[]) - v(&m0, "dependency_proxy_bytes_served_total", &[]),
        size
    );
    let r = http.get(&env.proxy.blob_url("test/api", &layer.digest));
    assert_eq!(r.digest, layer.digest);
    let m2 = env.proxy.metrics();
    assert_eq!(
        v(&m2, "dependency_proxy_cache_hits_total", &[("kind", "blob")])
            - v(&m1, "dependency_proxy_cache_hits_total", &[("kind", "blob")]),
        1.0
    );
    assert_eq!(
        v(&m2, "dependency_proxy_upstream_bytes_total", &[]) - v(&m1, "dependency_proxy_upstream_bytes_total", &[]),
        0.0
    );
    assert_eq!(
        v(&m2, "dependency_proxy_bytes_served_total", &[]) - v(&m1, "dependency_proxy_bytes_served_total", &[]),
        size
    );
    // Manifests: miss by tag, then a hit.
    get_manifest(&http, &env.proxy.manifest_url("test/api", "v1"));
    let m3 = env.proxy.metrics();
    get_manifest(&http, &env.proxy.manifest_url("test/api", "v1"));
    let m4 = env.proxy.metrics();
    assert_eq!(
        v(&m3, "dependency_proxy_cache_misses_total", &[("kind", "manifest")])
            - v(&m2, "dependency_proxy_cache_misses_total", &[("kind", "manifest")]),
        1.0
    );
    assert_eq!(
        v(&m4, "dependency_proxy_cache_hits_total", &[("kind", "manifest")])
            - v(&m3, "dependency_proxy_cache_hits_total", &[("kind", "manifest")]),
        1.0
    );
    assert_eq!(v(&m4, "dependency_proxy_inflight_fetches", &[]), 0.0);
    assert_eq!(v(&m4, "dependency_proxy_stale_serves_total", &[]), 0.0);
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let (mut env, img) = seeded("sigterm");
    let http = Http::new();
    assert_eq!(http.get(&env.proxy.blob_url("test/api", &img.layers[0].digest)).status, 200);
    let status = env.proxy.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
}

#[test]
fn upstream_without_docker_content_digest_header() {
    // Some registries omit Docker-Content-Digest; the proxy computes it from the bytes and still
    // revalidates tags correctly.
    let (env, img) = seeded("no-digest-header");
    env.shim.add_fault(FaultRule::manifests(Fault::StripHeader("docker-content-digest")));
    let http = Http::new();
    let url = env.proxy.manifest_url("test/api", "v1");
    let r = get_manifest(&http, &url);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, img.manifest);
    assert_eq!(r.header("docker-content-digest").as_deref(), Some(img.digest.as_str()));
    let newer = Image::simple("no-digest-header-2", false);
    env.seed(newer.clone(), "test/api", "v1");
    let r = get_manifest(&http, &url);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, newer.manifest, "the tag moved upstream; a HEAD without digest must not keep the old one");
    assert_eq!(r.header("docker-content-digest").as_deref(), Some(newer.digest.as_str()));
}
