//! The programs under test and their shared upstream, each configured by the harness in its own
//! temporary folder: the upstream `docker-registry`, this proxy, distribution in proxy mode and
//! nginx `proxy_cache`.
//!
//! All three caches get the same URLs (`/v2/<repo>/…`: this proxy in mirror mode), log no access
//! lines (request logging is a real per-request cost that only some would pay otherwise), and run
//! one at a time, so none competes with another for the two cores.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{BenchError, Result};
use crate::procs::{self, Service};

/// The upstream registry every cache pulls from; its access log counts upstream fetches.
pub struct Upstream {
    pub url: String,
    service: Service,
}

impl Upstream {
    pub async fn start(client: &reqwest::Client, registry_bin: &Path, dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir.join("data")).map_err(BenchError::io("create upstream dir"))?;
        let port = procs::free_port()?;
        // Access log on (it goes to stdout, hence the log file): it is how upstream fetches are
        // counted for all three caches alike.
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        let config_path = dir.join("config.yml");
        fs::write(&config_path, config).map_err(BenchError::io("write upstream config"))?;
        let log = dir.join("registry.log");
        let mut service = Service::spawn("upstream", Command::new(registry_bin).arg("serve").arg(&config_path), log)?;
        let url = format!("http://127.0.0.1:{port}");
        procs::wait_ready(client, &format!("{url}/v2/"), &mut service).await?;
        Ok(Self { url, service })
    }

    /// Full and partial GETs of one blob the upstream has answered so far, and their bytes.
    pub fn blob_gets(&self, repo: &str, digest: &str) -> Result<(u64, u64)> {
        let log = fs::read_to_string(&self.service.log).map_err(BenchError::io("read upstream access log"))?;
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} ");
        let mut count = 0;
        let mut bytes = 0;
        for line in log.lines().filter(|l| l.contains(&needle)) {
            // Combined log format: `"GET … HTTP/1.1" <status> <bytes> "referer" "agent"`.
            let after = line.split("\" ").nth(1).unwrap_or("");
            let mut fields = after.split(' ');
            let status = fields.next().unwrap_or("");
            if status == "200" || status == "206" {
                count += 1;
                bytes += fields.next().and_then(|b| b.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        Ok((count, bytes))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    DependencyProxy,
    Distribution,
    Nginx,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::DependencyProxy, Kind::Distribution, Kind::Nginx];

    pub fn label(self) -> &'static str {
        match self {
            Kind::DependencyProxy => "dependency-proxy",
            Kind::Distribution => "distribution (proxy mode)",
            Kind::Nginx => "nginx proxy_cache",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Kind::DependencyProxy => "dependency-proxy",
            Kind::Distribution => "distribution",
            Kind::Nginx => "nginx",
        }
    }
}

/// Paths of the programs, checked once at start.
pub struct Programs {
    pub proxy: PathBuf,
    pub registry: PathBuf,
    pub nginx: PathBuf,
}

/// One cache under test, with its state folder; `reset` gives it an empty cache.
pub struct System {
    pub kind: Kind,
    pub url: String,
    dir: PathBuf,
    port: u16,
    upstream: String,
    service: Option<Service>,
}

impl System {
    pub fn new(kind: Kind, dir: PathBuf, upstream: &str) -> Result<Self> {
        let port = procs::free_port()?;
        Ok(Self {
            kind,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            port,
            upstream: upstream.to_owned(),
            service: None,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.service.as_ref().map(Service::pids).unwrap_or_default()
    }

    fn cache_dir(&self) -> PathBuf {
        self.dir.join("cache")
    }

    pub async fn start(&mut self, client: &reqwest::Client, programs: &Programs) -> Result<()> {
        let cache = self.cache_dir();
        fs::create_dir_all(&cache).map_err(BenchError::io(format!("create {}", cache.display())))?;
        let log = self.dir.join(format!("{}.log", self.kind.short()));
        let listen = format!("127.0.0.1:{}", self.port);
        let service = match self.kind {
            Kind::DependencyProxy => {
                let spool = self.dir.join("spool");
                fs::create_dir_all(&spool).map_err(BenchError::io("create spool dir"))?;
                let mut cmd = Command::new(&programs.proxy);
                cmd.args(["--listen", &listen, "--upstream", &self.upstream])
                    .arg("--storage")
                    .arg(format!("file://{}", cache.display()))
                    .arg("--spool-dir")
                    .arg(&spool)
                    .args(["--group", "bench", "--official-images-prefix", "", "--mirror"])
                    .args(["--manifest-freshness", "0s", "--log-format", "text", "--log-filter", "warn"]);
                Service::spawn(self.kind.short(), &mut cmd, log)?
            }
            Kind::Distribution => {
                let config = format!(
                    "version: 0.1\nlog:\n  level: error\n  formatter: text\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  cache:\n    blobdescriptor: inmemory\n\
                     http:\n  addr: {listen}\nproxy:\n  remoteurl: {}\n",
                    cache.display(),
                    self.upstream
                );
                let path = self.dir.join("distribution.yml");
                fs::write(&path, config).map_err(BenchError::io("write distribution config"))?;
                Service::spawn(self.kind.short(), Command::new(&programs.registry).arg("serve").arg(&path), log)?
            }
            Kind::Nginx => {
                let path = self.write_nginx_config(&listen)?;
                let mut cmd = Command::new(&programs.nginx);
                cmd.arg("-p").arg(&self.dir).arg("-e").arg(self.dir.join("error.log")).arg("-c").arg(&path);
                Service::spawn(self.kind.short(), &mut cmd, log)?
            }
        };
        let service = self.service.insert(service);
        procs::wait_ready(client, &format!("{}/v2/", self.url), service).await
    }

    pub fn stop(&mut self) {
        if let Some(mut service) = self.service.take() {
            service.stop();
        }
    }

    /// Stops the system, empties its cache and starts it again: the next pull is cold.
    pub async fn reset(&mut self, client: &reqwest::Client, programs: &Programs) -> Result<()> {
        self.stop();
        let cache = self.cache_dir();
        if cache.exists() {
            fs::remove_dir_all(&cache).map_err(BenchError::io(format!("empty {}", cache.display())))?;
        }
        for dir in ["spool", "tmp"] {
            let _ = fs::remove_dir_all(self.dir.join(dir));
        }
        self.start(client, programs).await
    }

    /// nginx as an operator would set it up for a registry: blobs (immutable, by digest) and
    /// manifests by digest cached for long, keyed by URI (plus Accept for manifests, which are
    /// content-negotiated); a cache lock so concurrent misses wait for one upstream fetch instead
    /// of each fetching; tags passed through, since a tag must be checked upstream on every pull
    /// (nginx cannot revalidate with zero freshness). sendfile on, as the targets compare against.
    fn write_nginx_config(&self, listen: &str) -> Result<PathBuf> {
        let d = self.dir.display();
        let upstream = self.upstream.trim_start_matches("http://");
        for sub in ["tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi", "logs"] {
            fs::create_dir_all(self.dir.join(sub)).map_err(BenchError::io("create nginx dirs"))?;
        }
        let config = format!(
            r#"# Written by the dependency-proxy bench harness.
daemon off;
master_process on;
user root;
worker_processes auto;
pid {d}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    error_log {d}/error.log warn;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    proxy_cache_path {d}/cache levels=1:2 keys_zone=registry:16m max_size=20g inactive=7d use_temp_path=off;
    upstream registry {{ server {upstream}; keepalive 64; }}
    server {{
        listen {listen};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{{64}}$" {{
            proxy_pass http://registry;
            proxy_cache registry;
            proxy_cache_key $uri;
            proxy_cache_valid 200 30d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10m;
            proxy_cache_lock_age 10m;
        }}
        location ~ "^/v2/.+/manifests/sha256:[0-9a-f]{{64}}$" {{
            proxy_pass http://registry;
            proxy_cache registry;
            proxy_cache_key "$uri $http_accept";
            proxy_cache_valid 200 30d;
            proxy_cache_lock on;
        }}
        location /v2/ {{
            proxy_pass http://registry;
        }}
    }}
}}
"#
        );
        let path = self.dir.join("nginx.conf");
        fs::write(&path, config).map_err(BenchError::io("write nginx config"))?;
        Ok(path)
    }
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop();
    }
}
