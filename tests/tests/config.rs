//! How the proxy is configured: a TOML file, environment variables, flags over the file, several
//! groups, the manifest freshness window and JSON logs.

use integration_tests::image;
use integration_tests::*;

fn seeded() -> (Registry, Shim, Image) {
    let registry = Registry::start();
    let img = Image::simple("config", false);
    Artifact::from(img.clone()).push(&registry.host(), "test/cfg", "v1");
    let shim = Shim::start(&registry.url());
    (registry, shim, img)
}

fn raw(upstream: &str, groups: &[&str], args: &[String], env: &[(&str, String)]) -> ProxyOptions {
    let mut o = ProxyOptions::new(upstream);
    o.groups = groups.iter().map(|g| g.to_string()).collect();
    o.raw_args = Some(args.to_vec());
    o.env = env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    o
}

fn manifest(http: &Http, proxy: &Proxy, group: &str, image: &str, reference: &str) -> Resp {
    let url = format!("{}/v2/{}/manifests/{reference}", proxy.url(), proxy.repo(group, image));
    http.request(reqwest::Method::GET, &url, &[("accept", image::ACCEPT_ALL)])
}

#[test]
fn toml_config_file_alone() {
    let (_reg, shim, img) = seeded();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "groups = [\"fromfile\"]\n\n[upstream]\nurl = \"{}\"\n\n[storage]\nurl = \"file://{}\"\nspool_dir = \"{}\"\n\n[cache]\nmanifest_freshness = \"0s\"\n",
        shim.url(),
        dir.path().join("cache").display(),
        dir.path().join("spool").display(),
    );
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    let proxy =
        Proxy::with_options(raw(&shim.url(), &["fromfile"], &["--config".into(), path.display().to_string()], &[]));
    let http = Http::new();
    let r = manifest(&http, &proxy, "fromfile", "test/cfg", "v1");
    assert_eq!((r.status, r.body == img.manifest), (200, true), "{}", r.text());
    let r = manifest(&http, &proxy, "default", "test/cfg", "v1");
    assert_eq!((r.status, r.oci_error_code().as_str()), (404, "NAME_UNKNOWN"), "only the file's group is served");
    assert!(dir.path().join("cache").exists(), "the file's storage was used");
}

#[test]
fn flags_override_the_config_file() {
    let (_reg, shim, img) = seeded();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    // The file points at a dead upstream; the flag wins.
    std::fs::write(
        &path,
        "groups = [\"g\"]\n[upstream]\nurl = \"http://127.0.0.1:9\"\n[storage]\nurl = \"memory://\"\n",
    )
    .unwrap();
    let args = vec!["--config".into(), path.display().to_string(), "--upstream".into(), shim.url()];
    let proxy = Proxy::with_options(raw(&shim.url(), &["g"], &args, &[]));
    let r = manifest(&Http::new(), &proxy, "g", "test/cfg", "v1");
    assert_eq!((r.status, r.body == img.manifest), (200, true), "{}", r.text());
}

#[test]
fn environment_variables_alone() {
    let (_reg, shim, img) = seeded();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("DP_UPSTREAM", shim.url()),
        ("DP_STORAGE", format!("file://{}", dir.path().join("cache").display())),
        ("DP_GROUPS", "envgroup".to_owned()),
        ("DP_SPOOL_DIR", dir.path().display().to_string()),
    ];
    let proxy = Proxy::with_options(raw(&shim.url(), &["envgroup"], &[], &env));
    let r = manifest(&Http::new(), &proxy, "envgroup", "test/cfg", "v1");
    assert_eq!((r.status, r.body == img.manifest), (200, true), "{}", r.text());
}

#[test]
fn several_groups() {
    let (_reg, shim, img) = seeded();
    let mut o = ProxyOptions::new(&shim.url());
    o.groups = vec!["alpha".into(), "beta".into()];
    let proxy = Proxy::with_options(o);
    let http = Http::new();
    for g in ["alpha", "beta"] {
        let r = manifest(&http, &proxy, g, "test/cfg", "v1");
        assert_eq!((r.status, r.body == img.manifest), (200, true), "group {g}: {}", r.text());
    }
    let r = manifest(&http, &proxy, "gamma", "test/cfg", "v1");
    assert_eq!((r.status, r.oci_error_code().as_str()), (404, "NAME_UNKNOWN"));
    // One cache behind both groups: the second group's pull of a blob is a hit.
    let layer = &img.layers[0];
    for g in ["alpha", "beta"] {
        let url = format!("{}/v2/{}/blobs/{}", proxy.url(), proxy.repo(g, "test/cfg"), layer.digest);
        assert_eq!(http.get(&url).digest, layer.digest);
    }
    assert_eq!(shim.blob_gets(&layer.digest), 1);
}

#[test]
fn manifest_freshness_window_skips_the_revalidation() {
    let (_reg, shim, img) = seeded();
    let args: Vec<String> =
        ["--upstream", &shim.url(), "--storage", "memory://", "--group", "g", "--manifest-freshness", "1h"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let proxy = Proxy::with_options(raw(&shim.url(), &["g"], &args, &[]));
    let http = Http::new();
    assert_eq!(manifest(&http, &proxy, "g", "test/cfg", "v1").body, img.manifest);
    shim.reset();
    assert_eq!(manifest(&http, &proxy, "g", "test/cfg", "v1").body, img.manifest);
    assert_eq!(shim.content_requests().len(), 0, "a fresh tag was revalidated: {:?}", shim.records());
}

#[test]
fn json_log_lines() {
    let (_reg, shim, _img) = seeded();
    let args: Vec<String> =
        ["--upstream", &shim.url(), "--storage", "memory://", "--group", "g", "--log-format", "json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let proxy = Proxy::with_options(raw(&shim.url(), &["g"], &args, &[]));
    let http = Http::new();
    manifest(&http, &proxy, "g", "test/cfg", "v1");
    manifest(&http, &proxy, "g", "test/cfg", "nope");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = proxy.log();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 2, "too few log lines: {log}");
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v.get("level").is_some() && v.get("timestamp").is_some(), "log line without level/timestamp: {l}");
    }
}
