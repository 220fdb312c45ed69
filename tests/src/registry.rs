//! Debian's `docker-registry` (CNCF distribution 2.8) on loopback, with filesystem storage in a
//! temporary directory. It is the upstream every suite seeds and pulls from.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{command, free_port, require_program, tail, wait_for};

pub struct Registry {
    dir: TempDir,
    port: u16,
    child: Option<Child>,
}

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers 200.
    pub fn start() -> Self {
        let bin = std::env::var("DOCKER_REGISTRY_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| require_program("docker-registry"));
        let dir = tempfile::Builder::new().prefix("it-registry-").tempdir().unwrap();
        let port = free_port();
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {root}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: integration-tests\n",
            root = dir.path().join("data").display(),
        );
        std::fs::write(dir.path().join("config.yml"), config).unwrap();
        let mut reg = Self { dir, port, child: None };
        reg.spawn(&bin);
        reg
    }

    fn spawn(&mut self, bin: &Path) {
        let log = File::create(self.log_path()).unwrap();
        let child = command(bin)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        let url = format!("{}/v2/", self.url());
        let client = crate::Http::new();
        wait_for("docker-registry to answer GET /v2/", Duration::from_secs(20), || {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("docker-registry exited with {status}:\n{}", tail(&self.log_path(), 30));
            }
            (client.get(&url).status == 200).then_some(())
        });
    }

    /// `http://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:<port>`, the form skopeo and podman take.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    /// Stops the registry process (its storage stays) — the shim in front then answers 502.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
