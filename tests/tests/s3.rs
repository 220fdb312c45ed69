//! S3 storage against a real S3-compatible server on loopback (`moto_server`): multipart upload
//! of a layer over 5 MiB, warm pulls without upstream blob requests, exactly the expected keys
//! under the prefix, and no object (nor a dangling upload) left by a cut upstream transfer.

use std::time::Duration;

use integration_tests::*;

const BUCKET: &str = "it-cache";
const PREFIX: &str = "pfx/cache";
const NAME: &str = "test/s3";

struct S3Env {
    s3: S3Server,
    proxy: Proxy,
    shim: Shim,
    registry: Registry,
    _spool: tempfile::TempDir,
}

fn s3_env() -> S3Env {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET);
    let registry = Registry::start();
    let shim = Shim::start(&registry.url());
    let spool = tempfile::Builder::new().prefix("it-s3-spool-").tempdir().unwrap();
    let mut opts = ProxyOptions::new(&shim.url());
    opts.raw_args = Some(
        [
            "--upstream",
            &shim.url(),
            "--storage",
            &format!("s3://{BUCKET}/{PREFIX}"),
            "--s3-endpoint",
            &s3.url(),
            "--s3-allow-http",
            "--spool-dir",
            &spool.path().display().to_string(),
            "--group",
            "g",
            "--manifest-freshness",
            "0s",
            "--log-format",
            "text",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    opts.env = vec![
        ("AWS_ACCESS_KEY_ID".into(), s3::ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY".into(), s3::SECRET_KEY.into()),
    ];
    let proxy = Proxy::with_options(opts);
    S3Env { s3, proxy, shim, registry, _spool: spool }
}

fn key(tree: &str, digest: &str) -> String {
    let hex = &digest[7..];
    format!("{PREFIX}/{tree}/sha256/{}/{hex}", &hex[..2])
}

fn drained(proxy: &Proxy) {
    wait_for("in-flight fetches to drain", Duration::from_secs(20), || {
        (proxy.metric("dependency_proxy_inflight_fetches", &[]) == 0.0).then_some(())
    });
}

#[test]
fn s3_storage_multipart_warm_pull_layout_and_cut_transfer() {
    let mut env = s3_env();
    let work = tempfile::tempdir().unwrap();
    // 12 MiB with 5 MiB parts: three parts (5 + 5 + 2).
    let big = Blob::big_layer_file(&work.path().join("big.tar"), 12 << 20, false);
    let small = Blob::layer(&[("hello", b"hello from s3\n")], false);
    let img = Image::new(Platform::amd64(), vec![small.clone(), big.clone()], false, "s3");
    Artifact::from(img.clone()).push(&env.registry.host(), NAME, "v1");

    let skopeo = Skopeo::new();
    let src = format!("{}:v1", env.proxy.image_ref(NAME));
    let out = tempfile::tempdir().unwrap();
    skopeo.copy_to_dir(&src, &out.path().join("cold"), false).unwrap();
    assert_eq!(std::fs::read(out.path().join("cold/manifest.json")).unwrap(), img.manifest);
    assert_eq!(image::file_sha256(&out.path().join("cold").join(&big.digest[7..])), big.digest);
    drained(&env.proxy);

    // Exactly the blobs, the manifest and the tag record, all under the prefix.
    let objects = env.s3.list(BUCKET, "");
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let upstream = env.shim.host().replace(':', "_");
    let mut expected = vec![
        key("blobs", &img.config.digest),
        key("blobs", &small.digest),
        key("blobs", &big.digest),
        key("manifests", &img.digest),
        format!("{PREFIX}/tags/{upstream}/{NAME}/_tags/v1"),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    for b in [&img.config, &small, &big] {
        let o = objects.iter().find(|o| o.key == key("blobs", &b.digest)).unwrap();
        assert_eq!(o.size, b.size, "{} size in the bucket", o.key);
    }
    let big_object = objects.iter().find(|o| o.key == key("blobs", &big.digest)).unwrap();
    assert!(big_object.etag.ends_with("-3"), "the 12 MiB blob was not a 3-part upload: ETag {}", big_object.etag);
    assert_eq!(sha256_digest(&env.s3.get(BUCKET, &big_object.key)), big.digest);
    assert_eq!(env.s3.multipart_uploads(BUCKET), Vec::<String>::new(), "uploads left open");

    // Warm: no blob request reaches the upstream, also after a restart (the cache is the bucket).
    env.shim.reset();
    skopeo.copy_to_dir(&src, &out.path().join("warm"), false).unwrap();
    assert_eq!(std::fs::read(out.path().join("warm/manifest.json")).unwrap(), img.manifest);
    assert_eq!(env.shim.count(Kind::Blob, "GET"), 0, "warm pull fetched blobs upstream");
    env.proxy.restart();
    let r = Http::new().fetch(reqwest::Method::GET, &env.proxy.blob_url(NAME, &big.digest), &[], false);
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, big.digest.as_str(), big.size), "{:?}", r.error);
    assert_eq!(env.shim.count(Kind::Blob, "GET"), 0, "blob fetched upstream after the restart");

    // A cut upstream transfer (after the first part was uploaded) leaves nothing under its key.
    let other = Blob::big_layer_file(&work.path().join("other.tar"), 11 << 20, false);
    let img2 = Image::new(Platform::amd64(), vec![other.clone()], false, "s3-cut");
    Artifact::from(img2).push(&env.registry.host(), "test/s3cut", "v1");
    env.shim.add_fault(FaultRule::blob(&other.digest, Fault::CutAfterPercent(70)).times(1));
    let url = env.proxy.blob_url("test/s3cut", &other.digest);
    let r = Http::new().fetch(reqwest::Method::GET, &url, &[], false);
    assert!(!r.complete() && r.len < other.size, "cut transfer: {} {} of {} bytes", r.status, r.len, other.size);
    drained(&env.proxy);
    let blob_key = key("blobs", &other.digest);
    assert!(env.s3.list(BUCKET, &blob_key).is_empty(), "an object under the key of a cut blob");
    assert_eq!(env.s3.multipart_uploads(BUCKET), Vec::<String>::new(), "the cut blob's upload was not aborted");

    let r = Http::new().fetch(reqwest::Method::GET, &url, &[], false);
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, other.digest.as_str(), other.size), "{:?}", r.error);
    drained(&env.proxy);
    let listed = env.s3.list(BUCKET, &blob_key);
    assert_eq!(
        listed.iter().map(|o| (o.key.as_str(), o.size)).collect::<Vec<_>>(),
        vec![(blob_key.as_str(), other.size)]
    );
    assert_eq!(env.shim.blob_gets(&other.digest), 2);
}

#[test]
fn s3_sigkill_mid_upload_leaves_no_object_under_the_key() {
    let mut env = s3_env();
    let work = tempfile::tempdir().unwrap();
    let big = Blob::big_layer_file(&work.path().join("big.tar"), 12 << 20, false);
    let img = Image::new(Platform::amd64(), vec![big.clone()], false, "s3-kill");
    Artifact::from(img).push(&env.registry.host(), NAME, "v1");
    // ~12 MiB at 4 MiB/s: about 3 s upstream, so the kill lands between parts.
    env.shim.add_fault(FaultRule::blob(&big.digest, Fault::Trickle { bytes_per_sec: 4 << 20 }).times(1));
    let url = env.proxy.blob_url(NAME, &big.digest);
    let client = {
        let url = url.clone();
        std::thread::spawn(move || Http::new().fetch(reqwest::Method::GET, &url, &[], false))
    };
    let blob_key = key("blobs", &big.digest);
    // Killed once the first 5 MiB part is in the bucket: the upload is open and holds data.
    wait_for("the first part to be uploaded", Duration::from_secs(30), || {
        (env.s3.uploaded_parts(BUCKET, &blob_key) >= 1).then_some(())
    });
    env.proxy.kill();
    let r = client.join().unwrap();
    assert!(!r.complete() && r.len < big.size, "client got {} of {} bytes from a killed proxy", r.len, big.size);
    assert!(env.s3.list(BUCKET, &blob_key).is_empty(), "an object under the key of a blob whose upload was killed");
    // The killed upload stays open in the bucket (nothing can abort it); report it.
    eprintln!("open uploads after the kill: {:?}", env.s3.multipart_uploads(BUCKET));

    env.proxy.restart();
    let r = Http::new().fetch(reqwest::Method::GET, &url, &[], false);
    assert_eq!((r.status, r.digest.as_str(), r.len), (200, big.digest.as_str(), big.size), "{:?}", r.error);
    drained(&env.proxy);
    let listed = env.s3.list(BUCKET, &blob_key);
    assert_eq!(
        listed.iter().map(|o| (o.key.as_str(), o.size)).collect::<Vec<_>>(),
        vec![(blob_key.as_str(), big.size)]
    );
    assert_eq!(env.shim.blob_gets(&big.digest), 2, "absent after the kill, so fetched once more");
}
