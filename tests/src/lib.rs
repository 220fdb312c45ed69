//! Test support: starts the real parts (registry, proxy, clients) the integration suites use.
//!
//! Everything here runs real programs: Debian's `docker-registry` (CNCF distribution) as the
//! upstream, a Rust HTTP shim between the proxy and that registry (request counting, a Bearer
//! token service, a CDN redirect target, fault injection, stop/start), the `dependency-proxy`
//! binary, and the clients `skopeo`, `podman` and `ctr` (containerd).
//!
//! The suites are plain `#[test]` functions. The shim runs on a background Tokio runtime owned by
//! this library ([`rt`]), so a test can block on a client process while the shim keeps serving.
//! Every process is killed when its handle is dropped (and, through `PR_SET_PDEATHSIG`, when the
//! test thread that started it dies).

pub mod clients;
pub mod http;
pub mod image;
pub mod mounts;
pub mod proxy;
pub mod registry;
pub mod s3;
pub mod shim;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use clients::{Containerd, Podman, Skopeo};
pub use http::{Http, Resp};
pub use image::{Artifact, Blob, Image, Index, Platform};
pub use mounts::Mount;
pub use proxy::{CacheCheck, Proxy, ProxyOptions};
pub use registry::Registry;
pub use s3::S3Server;
pub use shim::{Fault, FaultRule, Kind, RandomFaults, Shim, ShimOptions};

/// The background runtime that serves the shims and runs async helpers.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("it-support")
            .build()
            .expect("build the support runtime")
    })
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A TCP port on `ip` (a loopback address) that was free a moment ago.
pub fn free_port_on(ip: &str) -> u16 {
    // Ports handed out by this process are remembered so that two parallel tests never get the
    // same one even if the first has not bound it yet.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind((ip, 0)).expect("bind an ephemeral port");
        let port = l.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The workspace root (the parent of this package).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// Hex sha256 of `bytes` as an OCI digest string `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A command whose process gets SIGKILL when the thread that spawned it dies, so a crashed test
/// leaves no registry, proxy or containerd behind.
pub fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

/// Requires that `program` is on the machine, with a message naming the script that installs it.
pub fn require_program(program: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain(["/usr/sbin", "/sbin"]) {
        let p = PathBuf::from(dir).join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!("`{program}` is not installed; run `bash scripts/test-deps.sh` (as root) first");
}

/// The last `n` lines of a log file, for failure messages.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Deterministic pseudo-random bytes (splitmix64), so layers are incompressible but repeatable.
pub struct PseudoRandom(u64);

impl PseudoRandom {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            let b = z.to_le_bytes();
            chunk.copy_from_slice(&b[..chunk.len()]);
        }
    }

    pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        Self::new(seed).fill(&mut v);
        v
    }
}

/// A registry, a shim in front of it and a proxy in front of the shim: the usual test setup.
pub struct Env {
    pub proxy: Proxy,
    pub shim: Shim,
    pub registry: Registry,
}

impl Env {
    /// Anonymous upstream, default proxy options (group `g`).
    pub fn new() -> Self {
        Self::with(ShimOptions::default(), |o| o)
    }

    pub fn with(shim: ShimOptions, proxy: impl FnOnce(ProxyOptions) -> ProxyOptions) -> Self {
        let registry = Registry::start();
        let shim = Shim::with_options(&registry.url(), shim);
        let proxy = Proxy::with_options(proxy(ProxyOptions::new(&shim.url())));
        Self { proxy, shim, registry }
    }

    /// Pushes `artifact` to the registry (directly, not through the shim) as `name:tag`.
    pub fn seed(&self, artifact: impl Into<Artifact>, name: &str, tag: &str) -> Artifact {
        let a = artifact.into();
        a.push(&self.registry.host(), name, tag);
        a
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- upstream requests seen by the shim ----");
            for r in self.shim.records() {
                eprintln!(
                    "{} {}{} -> {} accept={:?} auth={} range={:?} accept-encoding={:?}",
                    r.method,
                    r.path,
                    r.query.as_deref().map(|q| format!("?{q}")).unwrap_or_default(),
                    r.status,
                    r.accept,
                    r.authorization.as_deref().map(|a| a.split(' ').next().unwrap_or("")).unwrap_or("-"),
                    r.range,
                    r.accept_encoding,
                );
            }
        }
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}
