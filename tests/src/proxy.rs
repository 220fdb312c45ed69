//! The `dependency-proxy` binary under test, started as a process.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{Http, command, free_port, tail, wait_for};

/// The proxy binary: `$DEPENDENCY_PROXY_BIN`, else `<workspace>/target/debug/dependency-proxy`.
pub fn binary() -> PathBuf {
    let path = std::env::var_os("DEPENDENCY_PROXY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::workspace_root().join("target/debug/dependency-proxy"));
    if !path.is_file() {
        panic!(
            "proxy binary {} not found: build it with `cargo build -p dependency-proxy` \
             or point DEPENDENCY_PROXY_BIN at it",
            path.display()
        );
    }
    path
}

/// How to start the proxy. `upstream` is required; everything else has test defaults
/// (file storage in a tempdir, group `g`, freshness 0s).
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    pub upstream: String,
    pub groups: Vec<String>,
    pub mirror: bool,
    pub mirror_namespace: Option<String>,
    pub official_images_prefix: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `memory://` instead of the file storage.
    pub memory_storage: bool,
    pub extra_args: Vec<String>,
    /// When set, the proxy gets only `--listen <addr>` plus these arguments (config-file and
    /// environment tests); the other fields are ignored.
    pub raw_args: Option<Vec<String>>,
    /// Extra environment variables (`DP_*` from the test's own environment are removed).
    pub env: Vec<(String, String)>,
}

impl ProxyOptions {
    pub fn new(upstream: &str) -> Self {
        Self {
            upstream: upstream.into(),
            groups: vec!["g".into()],
            mirror: false,
            mirror_namespace: None,
            official_images_prefix: None,
            username: None,
            password: None,
            memory_storage: false,
            extra_args: Vec::new(),
            raw_args: None,
            env: Vec::new(),
        }
    }
    pub fn mirror(mut self, namespace: Option<&str>) -> Self {
        self.mirror = true;
        self.mirror_namespace = namespace.map(str::to_owned);
        self
    }
    pub fn credentials(mut self, user: &str, pass: &str) -> Self {
        self.username = Some(user.into());
        self.password = Some(pass.into());
        self
    }
}

pub struct Proxy {
    opts: ProxyOptions,
    dir: TempDir,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl Proxy {
    /// Starts the proxy in front of `upstream` with the default options.
    pub fn start(upstream: &str) -> Self {
        Self::with_options(ProxyOptions::new(upstream))
    }

    pub fn with_options(opts: ProxyOptions) -> Self {
        let dir = tempfile::Builder::new().prefix("it-proxy-").tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        let mut p = Self { opts, dir, port: free_port(), child: None, starts: 0 };
        p.spawn();
        p
    }

    fn args(&self) -> Vec<String> {
        let o = &self.opts;
        if let Some(raw) = &o.raw_args {
            let mut a = vec!["--listen".to_owned(), format!("127.0.0.1:{}", self.port)];
            a.extend(raw.iter().cloned());
            return a;
        }
        let mut a = vec![
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
            "--upstream".into(),
            o.upstream.clone(),
            "--storage".into(),
            if o.memory_storage { "memory://".into() } else { format!("file://{}", self.cache_dir().display()) },
            "--spool-dir".into(),
            self.dir.path().join("spool").display().to_string(),
            "--manifest-freshness".into(),
            "0s".into(),
            "--log-format".into(),
            "text".into(),
        ];
        for g in &o.groups {
            a.push("--group".into());
            a.push(g.clone());
        }
        if o.mirror {
            a.push("--mirror".into());
        }
        if let Some(ns) = &o.mirror_namespace {
            a.push("--mirror-namespace".into());
            a.push(ns.clone());
        }
        if let Some(p) = &o.official_images_prefix {
            a.push("--official-images-prefix".into());
            a.push(p.clone());
        }
        if let Some(u) = &o.username {
            a.push("--upstream-username".into());
            a.push(u.clone());
        }
        a.extend(o.extra_args.iter().cloned());
        a
    }

    fn spawn(&mut self) {
        let bin = binary();
        self.starts += 1;
        let log = File::create(self.log_path()).unwrap();
        let mut cmd = command(&bin);
        cmd.args(self.args())
            .env("RUST_LOG", std::env::var("DP_TEST_LOG").unwrap_or_else(|_| "info".into()))
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("DP_") {
                cmd.env_remove(k);
            }
        }
        if let Some(p) = &self.opts.password {
            cmd.env("DP_UPSTREAM_PASSWORD", p);
        }
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let http = Http::new();
        let url = format!("{}/readyz", self.url());
        let exited = wait_for("the proxy to answer /readyz with 200", Duration::from_secs(30), || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Some(Some(status));
            }
            (http.get(&url).status == 200).then_some(None)
        });
        if let Some(status) = exited {
            self.child = None;
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            // Another process took the port between free_port() and the bind: try another one.
            if log.contains("in use") && self.starts < 4 {
                self.port = free_port();
                return self.spawn();
            }
            panic!("dependency-proxy {:?} exited with {status}:\n{}", self.args(), tail(&self.log_path(), 40));
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The repository path of `image` under `group`: `<group>/dependency_proxy/containers/<image>`.
    pub fn repo(&self, group: &str, image: &str) -> String {
        format!("{group}/dependency_proxy/containers/{image}")
    }

    /// `127.0.0.1:<port>/g/dependency_proxy/containers/<image>` for skopeo/podman references.
    pub fn image_ref(&self, image: &str) -> String {
        format!("{}/{}", self.host(), self.repo(&self.opts.groups[0], image))
    }

    /// `http://…/v2/<first group>/dependency_proxy/containers/<image>/manifests/<reference>`
    pub fn manifest_url(&self, image: &str, reference: &str) -> String {
        format!("{}/v2/{}/manifests/{reference}", self.url(), self.repo(&self.opts.groups[0], image))
    }

    /// `http://…/v2/<first group>/dependency_proxy/containers/<image>/blobs/<digest>`
    pub fn blob_url(&self, image: &str, digest: &str) -> String {
        format!("{}/v2/{}/blobs/{digest}", self.url(), self.repo(&self.opts.groups[0], image))
    }

    /// The proxy's own temporary directory (holds `cache/` and `spool/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.path().join("spool")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("proxy-{}.log", self.starts))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("proxy is running").id()
    }

    /// Peak resident set size (`VmHWM`) of the proxy process, in bytes.
    pub fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/<pid>/status");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// The `/metrics` text parsed into `series → value`, series written as
    /// `name{k="v",…}` with the labels sorted (or `name` without labels).
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let r = Http::new().get(&format!("{}/metrics", self.url()));
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        parse_metrics(&r.text())
    }

    /// Sum of every series of `name` whose labels include all of `labels`.
    /// Waits until no download is in flight: a download's cache commit follows the moment its
    /// clients are served, so what is cached is only certain once the proxy is idle.
    pub fn wait_idle(&self) {
        crate::wait_for("in-flight fetches to drain", std::time::Duration::from_secs(10), || {
            (self.metric("dependency_proxy_inflight_fetches", &[]) == 0.0).then_some(())
        });
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }

    /// Kills the proxy (SIGKILL) and starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("proxy is running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        wait_for("the proxy to exit after SIGTERM", Duration::from_secs(30), || child.try_wait().unwrap())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every file under the cache directory with its `sha256:` digest.
    pub fn cache_files(&self) -> Vec<(PathBuf, String)> {
        files_with_digests(&self.cache_dir())
    }

    /// Where the file storage keeps the blob `digest` (`cache/blobs/sha256/<xx>/<hex>`).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.cache_dir().join("blobs/sha256").join(&hex[..2]).join(hex)
    }

    /// Checks every file of the file storage against the digest its key names.
    pub fn check_cache(&self) -> CacheCheck {
        check_cache_dir(&self.cache_dir())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- proxy log ({}) ----\n{}", self.log_path().display(), tail(&self.log_path(), 60));
        }
        self.kill();
    }
}

/// Every regular file under `dir` (recursively) with the sha256 of its content.
pub fn files_with_digests(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                use sha2::Digest;
                use std::io::Read;
                let mut f = File::open(&p).unwrap();
                let mut h = sha2::Sha256::new();
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                out.push((p, format!("sha256:{}", hex::encode(h.finalize()))));
            }
        }
    }
    out
}

/// What [`check_cache_dir`] found.
#[derive(Debug, Default, Clone)]
pub struct CacheCheck {
    /// Digests of the blobs whose bytes hash to the digest their key names.
    pub blobs: Vec<String>,
    /// Digests of the manifests whose envelope holds bytes hashing to their key's digest.
    pub manifests: Vec<String>,
    /// Number of tag records that parse and name a digest.
    pub tags: usize,
    /// One line per file that is not a valid entry: wrong bytes under a key, a leftover staging
    /// upload (`<key>#<n>`), or a file outside the layout.
    pub problems: Vec<String>,
}

/// Verifies the proxy's file-storage layout under `dir`:
/// `blobs/sha256/<xx>/<hex>` must hash to `sha256:<hex>`, `manifests/sha256/<xx>/<hex>` must be a
/// media type line followed by bytes hashing to it, `tags/…/_tags/<tag>` must be a JSON record
/// with a digest. Anything else is a problem.
pub fn check_cache_dir(dir: &Path) -> CacheCheck {
    use sha2::Digest;
    let mut check = CacheCheck::default();
    for (path, digest) in files_with_digests(dir) {
        let rel = path.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = rel.split('/').collect();
        let name = parts.last().copied().unwrap_or_default();
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if name.contains('#') {
            check.problems.push(format!("{rel}: leftover staging upload of {size} bytes"));
            continue;
        }
        let keyed = parts.len() == 4 && parts[1] == "sha256" && name.len() == 64 && name.starts_with(parts[2]);
        match parts[0] {
            "blobs" if keyed => {
                if digest == format!("sha256:{name}") {
                    check.blobs.push(digest);
                } else {
                    check.problems.push(format!("{rel}: {size} bytes hashing to {digest}"));
                }
            }
            "manifests" if keyed => {
                let bytes = std::fs::read(&path).unwrap();
                let ok = bytes
                    .iter()
                    .position(|b| *b == b'\n')
                    .is_some_and(|nl| hex::encode(sha2::Sha256::digest(&bytes[nl + 1..])) == name);
                if ok {
                    check.manifests.push(format!("sha256:{name}"));
                } else {
                    check.problems.push(format!("{rel}: manifest envelope of {size} bytes does not hash to its key"));
                }
            }
            "tags" if parts.len() >= 4 && parts[parts.len() - 2] == "_tags" => {
                let record: Option<serde_json::Value> =
                    std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
                if record.as_ref().and_then(|r| r["digest"].as_str()).is_some_and(|d| d.starts_with("sha256:")) {
                    check.tags += 1;
                } else {
                    check.problems.push(format!("{rel}: not a tag record"));
                }
            }
            _ => check.problems.push(format!("{rel}: file outside the cache layout ({size} bytes)")),
        }
    }
    check.blobs.sort();
    check.manifests.sort();
    check
}

pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.find('}') {
            Some(i) => (&line[..=i], &line[i + 1..]),
            None => match line.split_once(' ') {
                Some((s, r)) => (s, r),
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) else { continue };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut ls: Vec<&str> = split_labels(labels.trim_end_matches('}'));
                ls.sort();
                if ls.is_empty() { name.to_owned() } else { format!("{name}{{{}}}", ls.join(",")) }
            }
            None => series.to_owned(),
        };
        out.insert(key, value);
    }
    out
}

fn split_labels(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_quotes = false;
    let bytes = s.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_quotes = !in_quotes,
            b',' if !in_quotes => {
                if i > start {
                    out.push(s[start..i].trim());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() && !s[start..].trim().is_empty() {
        out.push(s[start..].trim());
    }
    out
}

pub fn metric_sum(metrics: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| {
            let (n, ls) = match k.split_once('{') {
                Some((n, ls)) => (n, ls.trim_end_matches('}')),
                None => (k.as_str(), ""),
            };
            n == name && labels.iter().all(|(lk, lv)| split_labels(ls).contains(&format!("{lk}=\"{lv}\"").as_str()))
        })
        .map(|(_, v)| v)
        .sum()
}
