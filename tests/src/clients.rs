//! The real clients: skopeo, podman (vfs storage in a tempdir) and containerd's `ctr` against a
//! containerd started per test (own root, state and socket; native snapshotter).
//!
//! Each helper isolates the client from the machine's configuration: its own `policy.json`,
//! an empty `registries.conf`, its own auth file and temporary directory.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::{command, require_program, tail, wait_for};

/// Output of a client command that succeeded.
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

fn run(mut cmd: Command, what: &str) -> Result<Output, String> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| format!("cannot run {what}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(Output { stdout, stderr })
    } else {
        Err(format!("{what} failed ({}):\nstdout: {stdout}\nstderr: {stderr}", out.status))
    }
}

/// Files that keep the containers/image tools away from the machine's configuration.
struct ContainersConfig {
    dir: TempDir,
}

impl ContainersConfig {
    fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("it-client-").tempdir().unwrap();
        std::fs::write(dir.path().join("policy.json"), br#"{"default":[{"type":"insecureAcceptAnything"}]}"#).unwrap();
        std::fs::write(
            dir.path().join("registries.conf"),
            "unqualified-search-registries = []\nshort-name-mode = \"disabled\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("auth.json"), "{}").unwrap();
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        Self { dir }
    }
    fn apply(&self, cmd: &mut Command) {
        cmd.env("CONTAINERS_REGISTRIES_CONF", self.dir.path().join("registries.conf"))
            .env("REGISTRY_AUTH_FILE", self.dir.path().join("auth.json"))
            .env("TMPDIR", self.dir.path().join("tmp"));
    }
    fn policy(&self) -> PathBuf {
        self.dir.path().join("policy.json")
    }
}

pub struct Skopeo {
    conf: ContainersConfig,
}

impl Default for Skopeo {
    fn default() -> Self {
        Self::new()
    }
}

impl Skopeo {
    pub fn new() -> Self {
        require_program("skopeo");
        Self { conf: ContainersConfig::new() }
    }

    /// Runs `skopeo <args>` with TLS verification off for docker:// sources (plain HTTP).
    pub fn run(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = Command::new("skopeo");
        self.conf.apply(&mut cmd);
        cmd.arg("--policy").arg(self.conf.policy()).arg("--command-timeout").arg("300s").args(args);
        run(cmd, &format!("skopeo {}", args.join(" ")))
    }

    /// `skopeo inspect --raw docker://…`: the manifest bytes exactly as served.
    pub fn inspect_raw(&self, docker_ref: &str) -> Result<Vec<u8>, String> {
        let mut cmd = Command::new("skopeo");
        self.conf.apply(&mut cmd);
        cmd.arg("--policy").arg(self.conf.policy()).args(["inspect", "--raw", "--tls-verify=false", docker_ref]);
        let out = cmd.stdin(Stdio::null()).output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(format!("skopeo inspect --raw {docker_ref} failed: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// `skopeo copy [--all] docker://<src> dir:<dest>`; skopeo verifies every blob's digest.
    pub fn copy_to_dir(&self, docker_ref: &str, dest: &Path, all: bool) -> Result<Output, String> {
        let dest = format!("dir:{}", dest.display());
        let mut args = vec!["copy", "--src-tls-verify=false"];
        if all {
            args.push("--all");
        }
        let src =
            if docker_ref.starts_with("docker://") { docker_ref.to_owned() } else { format!("docker://{docker_ref}") };
        args.push(&src);
        args.push(&dest);
        self.run(&args)
    }

    /// `skopeo copy docker://<src> oci:<dest>:<tag>`.
    pub fn copy_to_oci(&self, docker_ref: &str, dest: &Path, tag: &str, all: bool) -> Result<Output, String> {
        let dest = format!("oci:{}:{tag}", dest.display());
        let src = format!("docker://{docker_ref}");
        let mut args = vec!["copy", "--src-tls-verify=false"];
        if all {
            args.push("--all");
        }
        args.push(&src);
        args.push(&dest);
        self.run(&args)
    }
}

/// Podman with vfs storage in its own tempdir.
pub struct Podman {
    conf: ContainersConfig,
    root: TempDir,
}

impl Default for Podman {
    fn default() -> Self {
        Self::new()
    }
}

impl Podman {
    pub fn new() -> Self {
        require_program("podman");
        Self { conf: ContainersConfig::new(), root: tempfile::Builder::new().prefix("it-podman-").tempdir().unwrap() }
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        self.conf.apply(&mut cmd);
        cmd.arg("--storage-driver")
            .arg("vfs")
            .arg("--root")
            .arg(self.root.path().join("root"))
            .arg("--runroot")
            .arg(self.root.path().join("runroot"))
            .arg("--tmpdir")
            .arg(self.root.path().join("tmp"))
            .arg("--events-backend")
            .arg("none")
            .arg("--cgroup-manager")
            .arg("cgroupfs");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = self.cmd();
        cmd.args(args);
        run(cmd, &format!("podman {}", args.join(" ")))
    }

    /// `podman pull --tls-verify=false <ref>`
    pub fn pull(&self, reference: &str) -> Result<Output, String> {
        let policy = self.conf.policy().display().to_string();
        self.run(&["pull", "--tls-verify=false", "--signature-policy", &policy, reference])
    }

    /// The manifest digest podman recorded for `reference` (from `podman image inspect`).
    pub fn image_digest(&self, reference: &str) -> Result<String, String> {
        let out = self.run(&["image", "inspect", "--format", "{{.Digest}}", reference])?;
        Ok(out.stdout.trim().to_owned())
    }

    /// The image ID (config digest hex) of `reference`.
    pub fn image_id(&self, reference: &str) -> Result<String, String> {
        let out = self.run(&["image", "inspect", "--format", "{{.Id}}", reference])?;
        Ok(out.stdout.trim().to_owned())
    }
}

/// A containerd daemon of the test's own (root, state, socket in a tempdir).
pub struct Containerd {
    dir: TempDir,
    child: Option<Child>,
}

impl Containerd {
    pub fn start() -> Self {
        let bin = require_program("containerd");
        require_program("ctr");
        // Short path: the socket path must stay under 108 bytes.
        let dir = tempfile::Builder::new().prefix("ctd").tempdir_in("/tmp").unwrap();
        let d = dir.path();
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \
             \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \
             \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.internal.v1.opt\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"\"\n[metrics]\n  address = \"\"\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = d.join("c.sock").display(),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let log = File::create(d.join("containerd.log")).unwrap();
        let child = command(&bin)
            .arg("--config")
            .arg(d.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start containerd: {e}"));
        let mut c = Self { dir, child: Some(child) };
        wait_for("containerd to answer `ctr version`", Duration::from_secs(20), || {
            if let Some(status) = c.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("containerd exited with {status}:\n{}", tail(&c.dir.path().join("containerd.log"), 30));
            }
            c.ctr(&["version"]).ok().map(|_| ())
        });
        c
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("c.sock")
    }

    pub fn ctr(&self, args: &[&str]) -> Result<Output, String> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(self.socket()).args(args);
        run(cmd, &format!("ctr {}", args.join(" ")))
    }

    /// Writes `<dir>/<registry>/hosts.toml` that sends every pull and resolve of `registry` to
    /// `mirror_url` over plain HTTP, with the registry's own server pointing nowhere (so a pull
    /// that bypasses the mirror fails instead of leaving the machine). With `override_path`, the
    /// mirror URL carries the full `/v2/...` prefix (group mode); otherwise `/v2` is appended
    /// (mirror mode).
    pub fn write_hosts_toml(&self, registry: &str, mirror_url: &str, override_path: bool) -> PathBuf {
        let hosts = self.dir.path().join("hosts.d");
        let d = hosts.join(registry);
        std::fs::create_dir_all(&d).unwrap();
        let mut t = format!(
            "server = \"http://127.0.0.1:9\"\n\n[host.\"{mirror_url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true\n"
        );
        if override_path {
            t.push_str("  override_path = true\n");
        }
        std::fs::write(d.join("hosts.toml"), t).unwrap();
        hosts
    }

    /// `ctr images pull --hosts-dir <hosts> --snapshotter native [extra] <ref>`
    pub fn pull(&self, hosts_dir: &Path, reference: &str, extra: &[&str]) -> Result<Output, String> {
        let hosts = hosts_dir.display().to_string();
        let mut args = vec!["images", "pull", "--hosts-dir", &hosts, "--snapshotter", "native"];
        args.extend_from_slice(extra);
        args.push(reference);
        self.ctr(&args)
    }

    /// The target digest containerd recorded for `reference` (`ctr images ls`).
    pub fn image_digest(&self, reference: &str) -> Result<String, String> {
        let out = self.ctr(&["images", "ls"])?;
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(reference))
            .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
            .ok_or_else(|| format!("{reference} not in `ctr images ls`:\n{}", out.stdout))
    }

    /// Digests of every blob in containerd's content store.
    pub fn content_digests(&self) -> Result<Vec<String>, String> {
        let out = self.ctr(&["content", "ls", "--quiet"])?;
        Ok(out.stdout.lines().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty()).collect())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
