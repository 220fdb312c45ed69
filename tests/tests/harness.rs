//! The harness proven against the registry alone (no proxy): what the suites rely on — seeding
//! with exact digests, exact request counts, the token service, the CDN redirect, every fault and
//! the stop/start — behaves as described when a real client talks to it.

use std::time::Duration;

use integration_tests::image::{self, DOCKER_LIST, OCI_INDEX};
use integration_tests::shim::{AuthOptions, ShimOptions};
use integration_tests::*;

fn seeded() -> (Registry, Image) {
    let reg = Registry::start();
    let img = Image::simple("harness", false);
    Artifact::from(img.clone()).push(&reg.host(), "test/simple", "v1");
    (reg, img)
}

#[test]
fn skopeo_through_shim_counts_exactly() {
    let (reg, img) = seeded();
    let shim = Shim::start(&reg.url());
    let skopeo = Skopeo::new();
    let raw = skopeo.inspect_raw(&format!("docker://{}/test/simple:v1", shim.host())).unwrap();
    assert_eq!(raw, img.manifest);
    shim.reset();
    let out = tempfile::tempdir().unwrap();
    skopeo.copy_to_dir(&format!("{}/test/simple:v1", shim.host()), &out.path().join("d"), false).unwrap();
    assert_eq!(std::fs::read(out.path().join("d/manifest.json")).unwrap(), img.manifest);
    for b in std::iter::once(&img.config).chain(&img.layers) {
        assert_eq!(shim.blob_gets(&b.digest), 1, "blob {}", b.digest);
        assert_eq!(std::fs::read(out.path().join("d").join(&b.digest[7..])).unwrap(), b.bytes());
    }
    assert_eq!(shim.manifest_requests("GET", "v1"), 1);
    assert_eq!(shim.count(Kind::Blob, "GET"), 3);
}

#[test]
fn index_and_manifest_list_push_with_exact_digests() {
    let reg = Registry::start();
    let oci = Index::two_platforms("h-oci", false);
    let docker = Index::two_platforms("h-docker", true);
    Artifact::from(oci.clone()).push(&reg.host(), "test/multi", "v1");
    Artifact::from(docker.clone()).push(&reg.host(), "test/list", "v1");
    let http = Http::new();
    for (name, idx, mt) in [("test/multi", &oci, OCI_INDEX), ("test/list", &docker, DOCKER_LIST)] {
        let r = http.request(
            reqwest::Method::GET,
            &format!("{}/v2/{name}/manifests/v1", reg.url()),
            &[("accept", image::ACCEPT_ALL)],
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type").as_deref(), Some(mt));
        assert_eq!(r.header("docker-content-digest").as_deref(), Some(idx.digest.as_str()));
        assert_eq!(r.body, idx.bytes);
        for img in &idx.images {
            let r = http.request(
                reqwest::Method::GET,
                &format!("{}/v2/{name}/manifests/{}", reg.url(), img.digest),
                &[("accept", image::ACCEPT_ALL)],
            );
            assert_eq!(r.body, img.manifest);
        }
    }
    let shim = Shim::start(&reg.url());
    let out = tempfile::tempdir().unwrap();
    Skopeo::new().copy_to_dir(&format!("{}/test/list:v1", shim.host()), &out.path().join("d"), true).unwrap();
    assert_eq!(std::fs::read(out.path().join("d/manifest.json")).unwrap(), docker.bytes);
    for img in &docker.images {
        assert_eq!(shim.manifest_requests("GET", &img.digest), 1);
        for l in &img.layers {
            assert_eq!(shim.blob_gets(&l.digest), 1);
        }
    }
}

#[test]
fn bearer_challenge_and_token_service() {
    let (reg, img) = seeded();
    let shim = Shim::with_options(
        &reg.url(),
        ShimOptions {
            auth: Some(AuthOptions { basic: Some(("alice".into(), "s3cret".into())), ..Default::default() }),
            redirect_blobs: false,
        },
    );
    let http = Http::new();
    let r = http.get(&format!("{}/v2/test/simple/manifests/v1", shim.url()));
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate").unwrap(),
        format!(
            "Bearer realm=\"{}/token\",service=\"test-registry\",scope=\"repository:test/simple:pull\"",
            shim.url()
        )
    );
    // Wrong credentials are refused by the token service, and so skopeo fails.
    let skopeo = Skopeo::new();
    let src = format!("docker://{}/test/simple:v1", shim.host());
    let bad = skopeo.run(&["inspect", "--raw", "--tls-verify=false", "--creds", "alice:wrong", &src]);
    assert!(bad.is_err(), "skopeo with wrong credentials must fail");
    let out = tempfile::tempdir().unwrap();
    let dest = format!("dir:{}", out.path().join("d").display());
    skopeo.run(&["copy", "--src-tls-verify=false", "--src-creds", "alice:s3cret", &src, &dest]).unwrap();
    assert_eq!(std::fs::read(out.path().join("d/manifest.json")).unwrap(), img.manifest);
    let tokens: Vec<_> = shim.records().into_iter().filter(|r| r.kind == Kind::Token && r.status == 200).collect();
    assert!(!tokens.is_empty());
    assert!(tokens.iter().all(|t| t.query.as_deref().unwrap_or("").contains("service=test-registry")));
    // Revoked tokens are challenged again.
    let tok = http.get(&format!("{}/token?service=test-registry&scope=repository:test/simple:pull", shim.url()));
    assert_eq!(tok.status, 401, "token without Basic credentials");
    let b64 = "YWxpY2U6czNjcmV0"; // alice:s3cret
    let tok = http.request(
        reqwest::Method::GET,
        &format!("{}/token?service=test-registry&scope=repository%3Atest%2Fsimple%3Apull", shim.url()),
        &[("authorization", &format!("Basic {b64}"))],
    );
    assert_eq!(tok.status, 200);
    let v = tok.json();
    let t = v["token"].as_str().unwrap().to_owned();
    assert_eq!(v["access_token"], v["token"]);
    assert_eq!(v["expires_in"], 300);
    assert!(v["issued_at"].as_str().unwrap().ends_with('Z'));
    let url = format!("{}/v2/test/simple/manifests/v1", shim.url());
    let bearer = format!("Bearer {t}");
    let with_token = [("authorization", bearer.as_str()), ("accept", image::ACCEPT_ALL)];
    assert_eq!(http.request(reqwest::Method::HEAD, &url, &with_token).status, 200);
    let other = format!("{}/v2/test/other/manifests/v1", shim.url());
    let r = http.request(reqwest::Method::HEAD, &other, &with_token);
    assert_eq!(r.status, 401, "a token for test/simple does not open test/other");
    shim.revoke_tokens();
    assert_eq!(http.request(reqwest::Method::HEAD, &url, &with_token).status, 401);
}

#[test]
fn redirect_to_cdn_strips_authorization_with_skopeo() {
    let (reg, img) = seeded();
    let shim = Shim::with_options(&reg.url(), ShimOptions { auth: Some(AuthOptions::default()), redirect_blobs: true });
    let out = tempfile::tempdir().unwrap();
    Skopeo::new().copy_to_dir(&format!("{}/test/simple:v1", shim.host()), &out.path().join("d"), false).unwrap();
    let cdn = shim.cdn_records();
    assert_eq!(cdn.len(), 3, "config + 2 layers from the CDN: {cdn:#?}");
    assert!(cdn.iter().all(|r| r.authorization.is_none()), "Go's client strips Authorization across hosts");
    for l in &img.layers {
        assert_eq!(std::fs::read(out.path().join("d").join(&l.digest[7..])).unwrap(), l.bytes());
    }
    let redirects = shim.records().into_iter().filter(|r| r.kind == Kind::Blob && r.status == 307).count();
    assert_eq!(redirects, 3);
}

#[test]
fn faults_do_what_they_say() {
    let reg = Registry::start();
    let layer = Blob::random_layer(7, 1 << 20, false);
    let img = Image::new(Platform::amd64(), vec![layer.clone()], false, "faults");
    Artifact::from(img).push(&reg.host(), "test/f", "v1");
    let shim = Shim::start(&reg.url());
    let http = Http::new();
    let url = format!("{}/v2/test/f/blobs/{}", shim.url(), layer.digest);

    shim.add_fault(FaultRule::blob(&layer.digest, Fault::CutAfterPercent(50)).times(1));
    let r = http.get(&url);
    assert_eq!(r.status, 200);
    assert!(r.error.is_some(), "cut body must be an error");
    assert!(r.len <= layer.size / 2, "got {} of {}", r.len, layer.size);
    assert_eq!(shim.bad_body_digests().len(), 1);

    shim.add_fault(FaultRule::blob(&layer.digest, Fault::FlipBytes).times(1));
    let r = http.get(&url);
    assert!(r.complete());
    assert_eq!(r.len, layer.size);
    assert_ne!(r.digest, layer.digest);
    assert!(shim.bad_body_digests().contains(&r.digest));

    shim.add_fault(FaultRule::blob(&layer.digest, Fault::TooManyRequests { retry_after_secs: 7 }).times(1));
    let r = http.get(&url);
    assert_eq!((r.status, r.header("retry-after").as_deref()), (429, Some("7")));
    assert_eq!(r.oci_error_code(), "TOOMANYREQUESTS");

    shim.add_fault(FaultRule::all(Fault::Unavailable).times(1));
    assert_eq!(http.get(&url).status, 503);

    shim.add_fault(FaultRule::blob(&layer.digest, Fault::GzipUnasked).times(1));
    let r = http.get(&url);
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
    assert!(r.complete());
    assert_eq!(sha256_digest(&image::gunzip(&r.body)), layer.digest);

    shim.add_fault(FaultRule::blob(&layer.digest, Fault::Trickle { bytes_per_sec: 512 * 1024 }).times(1));
    let r = http.get(&url);
    assert_eq!(r.digest, layer.digest);
    assert!(r.elapsed >= Duration::from_millis(1500), "1 MiB at 512 KiB/s took {:?}", r.elapsed);
    assert!(r.first_byte.unwrap() < r.elapsed / 3, "first byte after {:?} of {:?}", r.first_byte, r.elapsed);

    // No fault left: the blob is intact.
    let r = http.get(&url);
    assert_eq!((r.status, r.digest.as_str()), (200, layer.digest.as_str()));
}

#[test]
fn shim_stop_and_resume() {
    let (reg, _img) = seeded();
    let shim = Shim::start(&reg.url());
    let http = Http::new();
    let url = format!("{}/v2/", shim.url());
    assert_eq!(http.get(&url).status, 200);
    shim.stop();
    let r = http.get(&url);
    assert_eq!(r.status, 0, "stopped shim refuses connections");
    shim.resume();
    assert_eq!(http.get(&url).status, 200);
}

#[test]
fn podman_pulls_through_shim() {
    let (reg, img) = seeded();
    let shim = Shim::start(&reg.url());
    let podman = Podman::new();
    let reference = format!("{}/test/simple:v1", shim.host());
    podman.pull(&reference).unwrap();
    assert_eq!(podman.image_digest(&reference).unwrap(), img.digest);
    assert_eq!(podman.image_id(&reference).unwrap(), img.config.digest[7..]);
    for b in std::iter::once(&img.config).chain(&img.layers) {
        assert_eq!(shim.blob_gets(&b.digest), 1);
    }
}

#[test]
fn containerd_pulls_through_hosts_toml_mirror() {
    let reg = Registry::start();
    let idx = Index::two_platforms("h-ctr", false);
    Artifact::from(idx.clone()).push(&reg.host(), "test/multi", "v1");
    let shim = Shim::start(&reg.url());
    let ctrd = Containerd::start();
    let hosts = ctrd.write_hosts_toml("docker.io", &shim.url(), false);
    ctrd.pull(&hosts, "docker.io/test/multi:v1", &["--platform", "linux/amd64"]).unwrap();
    assert_eq!(ctrd.image_digest("docker.io/test/multi:v1").unwrap(), idx.digest);
    let recs = shim.content_requests();
    assert!(!recs.is_empty());
    assert!(recs.iter().all(|r| r.query.as_deref() == Some("ns=docker.io")), "{recs:#?}");
    let amd64 = &idx.images[0];
    for l in &amd64.layers {
        assert_eq!(shim.blob_gets(&l.digest), 1);
    }
    for l in &idx.images[1].layers {
        assert_eq!(shim.blob_gets(&l.digest), 0, "arm64 layers are not fetched for linux/amd64");
    }
}

#[test]
fn big_layer_is_a_valid_tar_written_streaming() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.tar");
    let b = Blob::big_layer_file(&path, 8 << 20, false);
    assert_eq!(b.size, std::fs::metadata(&path).unwrap().len());
    assert!(b.size >= 8 << 20);
    assert_eq!(b.size % 512, 0);
    assert_eq!(sha256_digest(&std::fs::read(&path).unwrap()), b.digest);
    let out = std::process::Command::new("tar").arg("-tvf").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("big.bin"));
    // Layers built twice are byte-identical.
    assert_eq!(Blob::random_layer(3, 1000, false).digest, Blob::random_layer(3, 1000, false).digest);
    let t = image::tar_archive(&[("a", b"x")]);
    let out = std::process::Command::new("tar")
        .arg("-tvf")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&t)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(" a"), "{}", String::from_utf8_lossy(&out.stdout));
}
