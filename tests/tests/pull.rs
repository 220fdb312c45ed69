//! Real clients pull real images through the proxy: skopeo (also `--all`), podman, containerd's
//! `ctr` via a hosts.toml mirror. Digests and bytes equal the upstream's; cached content is not
//! fetched again.

use integration_tests::image::{self, DOCKER_LIST, OCI_INDEX, OCI_MANIFEST};
use integration_tests::*;

/// Asserts that `dir` (a skopeo `dir:` copy) holds exactly `art`'s manifests and the blobs of
/// `images`.
fn assert_dir_copy(dir: &std::path::Path, art: &Artifact, images: &[&Image]) {
    assert_eq!(std::fs::read(dir.join("manifest.json")).unwrap(), art.bytes(), "top manifest bytes");
    if let Artifact::Index(_) = art {
        for img in images {
            let p = dir.join(format!("{}.manifest.json", &img.digest[7..]));
            assert_eq!(std::fs::read(&p).unwrap(), img.manifest, "manifest {}", img.digest);
        }
    }
    for img in images {
        for b in std::iter::once(&img.config).chain(&img.layers) {
            let got = std::fs::read(dir.join(&b.digest[7..])).unwrap_or_else(|e| panic!("blob {}: {e}", b.digest));
            assert_eq!(sha256_digest(&got), b.digest);
        }
    }
}

#[test]
fn single_arch_image_with_skopeo_is_byte_identical() {
    let env = Env::new();
    let img = Image::simple("single", false);
    let art = env.seed(img.clone(), "test/single", "v1");
    let skopeo = Skopeo::new();
    let upstream_raw = skopeo.inspect_raw(&format!("docker://{}/test/single:v1", env.registry.host())).unwrap();
    let raw = skopeo.inspect_raw(&format!("docker://{}:v1", env.proxy.image_ref("test/single"))).unwrap();
    assert_eq!(raw, upstream_raw);
    assert_eq!(sha256_digest(&raw), img.digest);

    let out = tempfile::tempdir().unwrap();
    skopeo.copy_to_dir(&format!("{}:v1", env.proxy.image_ref("test/single")), &out.path().join("d"), false).unwrap();
    assert_dir_copy(&out.path().join("d"), &art, &[&img]);
    for b in std::iter::once(&img.config).chain(&img.layers) {
        assert_eq!(env.shim.blob_gets(&b.digest), 1, "upstream GETs of {}", b.digest);
    }

    // Headers of the manifest as served.
    let r = Http::new().request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/single", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some(OCI_MANIFEST));
    assert_eq!(r.header("docker-content-digest").as_deref(), Some(img.digest.as_str()));
    assert_eq!(r.header("content-length"), Some(img.manifest.len().to_string()));
    assert_eq!(r.body, img.manifest);
}

#[test]
fn second_pull_makes_no_upstream_blob_request() {
    let env = Env::new();
    let img = Image::simple("twice", false);
    env.seed(img.clone(), "test/twice", "v1");
    let skopeo = Skopeo::new();
    let src = format!("{}:v1", env.proxy.image_ref("test/twice"));
    let out = tempfile::tempdir().unwrap();
    skopeo.copy_to_dir(&src, &out.path().join("1"), false).unwrap();
    let blobs_after_first = env.shim.count(Kind::Blob, "GET");
    assert_eq!(blobs_after_first, 3, "config + 2 layers");
    let manifest_gets = env.shim.count(Kind::Manifest, "GET");
    let heads = env.shim.manifest_requests("HEAD", "v1");
    let hits_before = env.proxy.metric("dependency_proxy_cache_hits_total", &[("kind", "blob")]);

    skopeo.copy_to_dir(&src, &out.path().join("2"), false).unwrap();
    assert_eq!(env.shim.count(Kind::Blob, "GET"), blobs_after_first, "second pull fetched a blob upstream");
    assert_eq!(env.shim.count(Kind::Blob, "HEAD"), 0, "second pull asked upstream about a blob");
    assert_eq!(env.shim.count(Kind::Manifest, "GET"), manifest_gets, "unchanged tag fetched again");
    assert!(env.shim.manifest_requests("HEAD", "v1") > heads, "tag was not revalidated with a HEAD");
    let hits = env.proxy.metric("dependency_proxy_cache_hits_total", &[("kind", "blob")]);
    assert_eq!(hits - hits_before, 3.0, "blob cache hits on the second pull");
    assert_eq!(std::fs::read(out.path().join("2/manifest.json")).unwrap(), img.manifest);
}

#[test]
fn oci_index_with_two_platforms_copy_all() {
    let env = Env::new();
    let idx = Index::two_platforms("oci-multi", false);
    let art = env.seed(idx.clone(), "test/multi", "v1");
    let skopeo = Skopeo::new();
    let src = format!("{}:v1", env.proxy.image_ref("test/multi"));
    let raw = skopeo.inspect_raw(&format!("docker://{src}")).unwrap();
    assert_eq!(raw, idx.bytes);
    let out = tempfile::tempdir().unwrap();
    skopeo.copy_to_dir(&src, &out.path().join("d"), true).unwrap();
    let images: Vec<&Image> = idx.images.iter().collect();
    assert_dir_copy(&out.path().join("d"), &art, &images);
    for img in &idx.images {
        for l in &img.layers {
            assert_eq!(env.shim.blob_gets(&l.digest), 1);
        }
    }
    let r = Http::new().request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/multi", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert_eq!(r.header("content-type").as_deref(), Some(OCI_INDEX));
    assert_eq!(r.header("docker-content-digest").as_deref(), Some(idx.digest.as_str()));
    // Without --all skopeo picks linux/amd64 only.
    let env2 = Env::new();
    env2.seed(idx.clone(), "test/multi", "v1");
    skopeo
        .copy_to_dir(&format!("{}:v1", env2.proxy.image_ref("test/multi")), &out.path().join("amd64"), false)
        .unwrap();
    assert_eq!(std::fs::read(out.path().join("amd64/manifest.json")).unwrap(), idx.images[0].manifest);
    assert_eq!(env2.shim.blob_gets(&idx.images[1].layers[0].digest), 0);
}

#[test]
fn docker_manifest_list_copy_all() {
    let env = Env::new();
    let idx = Index::two_platforms("docker-list", true);
    let art = env.seed(idx.clone(), "test/list", "v1");
    let skopeo = Skopeo::new();
    let src = format!("{}:v1", env.proxy.image_ref("test/list"));
    let out = tempfile::tempdir().unwrap();
    skopeo.copy_to_dir(&src, &out.path().join("d"), true).unwrap();
    let images: Vec<&Image> = idx.images.iter().collect();
    assert_dir_copy(&out.path().join("d"), &art, &images);
    let http = Http::new();
    let r = http.request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/list", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type").as_deref(), Some(DOCKER_LIST));
    assert_eq!(r.header("docker-content-digest").as_deref(), Some(idx.digest.as_str()));
    assert_eq!(r.body, idx.bytes);
    let child = &idx.images[1];
    let r = http.request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/list", &child.digest),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert_eq!(r.header("content-type").as_deref(), Some(image::DOCKER_MANIFEST));
    assert_eq!(r.body, child.manifest);
}

#[test]
fn nested_name_a_b_c() {
    let env = Env::new();
    let img = Image::simple("nested", false);
    let art = env.seed(img.clone(), "a/b/c", "v1");
    let out = tempfile::tempdir().unwrap();
    Skopeo::new().copy_to_dir(&format!("{}:v1", env.proxy.image_ref("a/b/c")), &out.path().join("d"), false).unwrap();
    assert_dir_copy(&out.path().join("d"), &art, &[&img]);
    let names: std::collections::BTreeSet<_> = env.shim.content_requests().into_iter().filter_map(|r| r.name).collect();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["a/b/c".to_owned()]);
}

#[test]
fn two_images_sharing_a_layer_fetch_it_once() {
    let env = Env::new();
    let base = Blob::random_layer(42, 256 * 1024, false);
    let one = Image::new(Platform::amd64(), vec![base.clone(), Blob::layer(&[("one", b"1")], false)], false, "one");
    let two = Image::new(Platform::amd64(), vec![base.clone(), Blob::layer(&[("two", b"2")], false)], false, "two");
    env.seed(one.clone(), "test/one", "v1");
    env.seed(two.clone(), "test/two", "v1");
    let skopeo = Skopeo::new();
    let out = tempfile::tempdir().unwrap();
    skopeo.copy_to_dir(&format!("{}:v1", env.proxy.image_ref("test/one")), &out.path().join("1"), false).unwrap();
    skopeo.copy_to_dir(&format!("{}:v1", env.proxy.image_ref("test/two")), &out.path().join("2"), false).unwrap();
    assert_eq!(env.shim.blob_gets(&base.digest), 1, "the shared layer is fetched once for both images");
    assert_eq!(env.shim.blob_gets(&two.layers[1].digest), 1);
    assert_eq!(std::fs::read(out.path().join("2").join(&base.digest[7..])).unwrap(), base.bytes());
}

#[test]
fn official_images_prefix_maps_alpine_to_library_alpine() {
    let env = Env::with(Default::default(), |mut o| {
        o.official_images_prefix = Some("library".into());
        o
    });
    let img = Image::simple("alpine", false);
    env.seed(img.clone(), "library/alpine", "3");
    let raw = Skopeo::new().inspect_raw(&format!("docker://{}:3", env.proxy.image_ref("alpine"))).unwrap();
    assert_eq!(raw, img.manifest);
    let names: std::collections::BTreeSet<_> = env.shim.content_requests().into_iter().filter_map(|r| r.name).collect();
    assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["library/alpine".to_owned()]);
}

#[test]
fn podman_pull_through_group_path() {
    let env = Env::new();
    let img = Image::simple("podman", false);
    env.seed(img.clone(), "test/podman", "v1");
    let podman = Podman::new();
    let reference = format!("{}:v1", env.proxy.image_ref("test/podman"));
    podman.pull(&reference).unwrap();
    assert_eq!(podman.image_digest(&reference).unwrap(), img.digest);
    assert_eq!(podman.image_id(&reference).unwrap(), img.config.digest[7..]);
    // A second podman store pulls again: the proxy serves it from cache.
    let before = env.shim.count(Kind::Blob, "GET");
    let podman2 = Podman::new();
    podman2.pull(&reference).unwrap();
    assert_eq!(podman2.image_digest(&reference).unwrap(), img.digest);
    assert_eq!(env.shim.count(Kind::Blob, "GET"), before);
}

#[test]
fn ctr_pull_via_hosts_toml_mirror() {
    let env = Env::with(Default::default(), |o| o.mirror(Some("docker.io")));
    let idx = Index::two_platforms("ctr", false);
    env.seed(idx.clone(), "test/multi", "v1");
    let ctrd = Containerd::start();
    let hosts = ctrd.write_hosts_toml("docker.io", &env.proxy.url(), false);
    ctrd.pull(&hosts, "docker.io/test/multi:v1", &["--platform", "linux/amd64"]).unwrap();
    assert_eq!(ctrd.image_digest("docker.io/test/multi:v1").unwrap(), idx.digest);
    let content = ctrd.content_digests().unwrap();
    for l in &idx.images[0].layers {
        assert!(content.contains(&l.digest), "containerd lacks layer {}", l.digest);
        assert_eq!(env.shim.blob_gets(&l.digest), 1);
    }
    // Another node (a fresh containerd) pulls from the proxy's cache.
    let before = env.shim.count(Kind::Blob, "GET");
    let ctrd2 = Containerd::start();
    let hosts2 = ctrd2.write_hosts_toml("docker.io", &env.proxy.url(), false);
    ctrd2.pull(&hosts2, "docker.io/test/multi:v1", &["--platform", "linux/amd64"]).unwrap();
    assert_eq!(ctrd2.image_digest("docker.io/test/multi:v1").unwrap(), idx.digest);
    assert_eq!(env.shim.count(Kind::Blob, "GET"), before);
}

#[test]
fn podman_pull_of_a_multi_platform_index() {
    let env = Env::new();
    let idx = Index::two_platforms("podman-idx", false);
    env.seed(idx.clone(), "test/multi", "v1");
    let podman = Podman::new();
    let reference = format!("{}:v1", env.proxy.image_ref("test/multi"));
    podman.pull(&reference).unwrap();
    // podman records the index digest and unpacks linux/amd64.
    assert_eq!(podman.image_digest(&reference).unwrap(), idx.digest);
    assert_eq!(podman.image_id(&reference).unwrap(), idx.images[0].config.digest[7..]);
    assert_eq!(env.shim.blob_gets(&idx.images[1].layers[0].digest), 0);
}

#[test]
fn ctr_pull_from_cache_with_the_upstream_stopped() {
    let env = Env::with(Default::default(), |o| o.mirror(Some("docker.io")));
    let idx = Index::two_platforms("ctr-down", true);
    env.seed(idx.clone(), "library/busybox", "1");
    let ctrd = Containerd::start();
    let hosts = ctrd.write_hosts_toml("docker.io", &env.proxy.url(), false);
    ctrd.pull(&hosts, "docker.io/library/busybox:1", &["--platform", "linux/amd64"]).unwrap();
    env.shim.stop();
    let ctrd2 = Containerd::start();
    let hosts2 = ctrd2.write_hosts_toml("docker.io", &env.proxy.url(), false);
    ctrd2.pull(&hosts2, "docker.io/library/busybox:1", &["--platform", "linux/amd64"]).unwrap();
    assert_eq!(ctrd2.image_digest("docker.io/library/busybox:1").unwrap(), idx.digest);
}

#[test]
fn ctr_pull_via_group_path_override() {
    let env = Env::new();
    let img = Image::simple("ctr-group", false);
    env.seed(img.clone(), "test/single", "v1");
    let ctrd = Containerd::start();
    let mirror = format!("{}/v2/g/dependency_proxy/containers", env.proxy.url());
    let hosts = ctrd.write_hosts_toml("docker.io", &mirror, true);
    ctrd.pull(&hosts, "docker.io/test/single:v1", &[]).unwrap();
    assert_eq!(ctrd.image_digest("docker.io/test/single:v1").unwrap(), img.digest);
}

#[test]
fn mirror_mode_routes_with_and_without_ns() {
    let env = Env::with(Default::default(), |o| o.mirror(Some("docker.io")));
    let img = Image::simple("mirror", false);
    env.seed(img.clone(), "test/single", "v1");
    let http = Http::new();
    for q in ["", "?ns=docker.io"] {
        let url = format!("{}/v2/test/single/manifests/v1{q}", env.proxy.url());
        let r = http.request(reqwest::Method::GET, &url, &[("accept", image::ACCEPT_ALL)]);
        assert_eq!(r.status, 200, "GET {url}: {}", r.text());
        assert_eq!(r.body, img.manifest);
        let url = format!("{}/v2/test/single/blobs/{}{q}", env.proxy.url(), img.layers[0].digest);
        let r = http.get(&url);
        assert_eq!((r.status, r.digest.as_str()), (200, img.layers[0].digest.as_str()), "GET {url}");
    }
    // Another namespace is not this upstream: not served, and not asked for upstream.
    env.shim.reset();
    let url = format!("{}/v2/test/single/manifests/v1?ns=quay.io", env.proxy.url());
    let r = http.request(reqwest::Method::GET, &url, &[("accept", image::ACCEPT_ALL)]);
    assert!(matches!(r.status, 400 | 404), "GET {url}: {} {}", r.status, r.text());
    r.oci_error_code();
    assert_eq!(env.shim.content_requests().len(), 0, "a foreign ns reached the upstream");
    // Group mode keeps working next to mirror mode.
    let r = http.request(
        reqwest::Method::GET,
        &env.proxy.manifest_url("test/single", "v1"),
        &[("accept", image::ACCEPT_ALL)],
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.body, img.manifest);
    let r = http.get(&env.proxy.blob_url("test/single", &img.layers[0].digest));
    assert_eq!(r.digest, img.layers[0].digest);
    assert_eq!(env.shim.blob_gets(&img.layers[0].digest), 0, "group and mirror paths share the blob cache");
}

#[test]
fn ctr_mirror_default_namespace_is_the_upstream_host_and_port() {
    // No --mirror-namespace: the accepted ?ns= is the (non-Docker-Hub) upstream's host:port, so a
    // node can mirror that registry under its own name.
    let env = Env::with(Default::default(), |o| o.mirror(None));
    let img = Image::simple("ctr-ns", false);
    env.seed(img.clone(), "test/single", "v1");
    let ctrd = Containerd::start();
    let upstream = env.shim.host();
    let hosts = ctrd.write_hosts_toml(&upstream, &env.proxy.url(), false);
    let reference = format!("{upstream}/test/single:v1");
    env.shim.reset();
    ctrd.pull(&hosts, &reference, &[]).unwrap();
    assert_eq!(ctrd.image_digest(&reference).unwrap(), img.digest);
    // The pull went through the proxy (containerd's fallback server is unreachable).
    assert_eq!(env.shim.blob_gets(&img.layers[0].digest), 1);
}
