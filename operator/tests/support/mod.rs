//! Harness for the control-plane tests: admin client, per-test namespaces, the operator binary
//! running as the chart's ServiceAccount, and polling helpers.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use tokio::sync::OnceCell;

/// The release namespace the chart's ServiceAccount and Lease Role are installed in.
pub const OPERATOR_NAMESPACE: &str = "dp-system";
/// Helm release name for the chart's RBAC.
pub const RELEASE: &str = "dpo";
/// The ServiceAccount the chart creates for that release.
pub const SERVICE_ACCOUNT: &str = "dpo-dependency-proxy-operator";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("operator/ has a parent").to_owned()
}

/// The admin kubeconfig; these tests are only run by run-tests.sh, which sets it, so a missing
/// one is a failure, not a skip.
pub fn kubeconfig_path() -> PathBuf {
    let path = std::env::var_os("KUBECONFIG")
        .expect("KUBECONFIG must point at the test control plane (run tests/controlplane/run-tests.sh)");
    PathBuf::from(path)
}

pub async fn admin_client() -> Client {
    let kubeconfig = Kubeconfig::read_from(kubeconfig_path()).expect("kubeconfig readable");
    let config =
        Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await.expect("kubeconfig valid");
    Client::try_from(config).expect("client")
}

/// Runs a command with the admin kubeconfig; returns stdout, panics with stderr on failure.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let output = try_run(program, args, stdin);
    assert!(
        output.status.success(),
        "{program} {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

pub fn try_run(program: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .env("KUBECONFIG", kubeconfig_path())
        .current_dir(workspace_root())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program} (is it on PATH?): {e}"));
    if let Some(input) = stdin {
        child.stdin.take().expect("piped stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("wait for command")
}

pub fn kubectl(args: &[&str]) -> String {
    run("kubectl", args, None)
}

static SETUP: OnceCell<PathBuf> = OnceCell::const_new();

/// Once per test binary: installs the CRD from `crds/` and the chart's ServiceAccount and RBAC
/// (rendered by `helm template`), and writes a kubeconfig that authenticates as that
/// ServiceAccount. Returns that kubeconfig's path. Every operator in these tests runs with it,
/// so every test also checks that the chart's RBAC suffices.
pub async fn setup() -> &'static Path {
    SETUP
        .get_or_init(|| async {
            tokio::task::spawn_blocking(|| {
                kubectl(&[
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "-f",
                    "crds/dependencyproxies.dependencyproxy.dev.yaml",
                ]);
                kubectl(&[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/dependencyproxies.dependencyproxy.dev",
                ]);
                let _ = try_run("kubectl", &["create", "namespace", OPERATOR_NAMESPACE], None);
                let rendered = run(
                    "helm",
                    &[
                        "template",
                        RELEASE,
                        "charts/dependency-proxy-operator",
                        "--namespace",
                        OPERATOR_NAMESPACE,
                        "--show-only",
                        "templates/serviceaccount.yaml",
                        "--show-only",
                        "templates/rbac.yaml",
                    ],
                    None,
                );
                run("kubectl", &["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&rendered));
                let token = run(
                    "kubectl",
                    &["create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, "--duration=4h"],
                    None,
                );
                write_token_kubeconfig(token.trim())
            })
            .await
            .expect("setup task")
        })
        .await
}

/// A kubeconfig for the ServiceAccount's token, with the admin kubeconfig's server and CA.
fn write_token_kubeconfig(token: &str) -> PathBuf {
    let server = kubectl(&["config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"]);
    let ca = kubectl(&[
        "config",
        "view",
        "--minify",
        "--raw",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority}",
    ]);
    let dir = std::env::temp_dir().join(format!("dp-operator-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("operator.kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: operator\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context: {{cluster: test, user: operator}}\n\
         current-context: test\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh namespace per test, deleted (in the background) when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).expect("namespace");
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        // Pods need the namespace's default ServiceAccount, which the controller-manager adds.
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &name);
        eventually("default ServiceAccount", Duration::from_secs(30), || async {
            sa.get_opt("default").await.ok().flatten()
        })
        .await;
        Self { name }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("DP_KEEP_TEST_NAMESPACES").is_none() {
            let _ = Command::new("kubectl")
                .args(["delete", "namespace", &self.name, "--wait=false"])
                .env("KUBECONFIG", kubeconfig_path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// The operator binary, running as the chart's ServiceAccount.
pub struct Operator {
    child: Option<Child>,
    pub identity: String,
    pub metrics_port: u16,
    pub log: PathBuf,
}

/// How to start one operator process.
pub struct OperatorArgs<'a> {
    pub watch_namespace: &'a str,
    pub lease_name: &'a str,
    pub identity: &'a str,
    pub proxy_image: &'a str,
}

impl Operator {
    pub async fn start(args: OperatorArgs<'_>) -> Self {
        let kubeconfig = setup().await;
        let metrics_port = free_port();
        let log = std::env::temp_dir().join(format!("dp-operator-{}-{}.log", args.identity, std::process::id()));
        let log_file = std::fs::File::create(&log).expect("operator log file");
        let child = Command::new(env!("CARGO_BIN_EXE_dependency-proxy-operator"))
            .args([
                "run",
                "--watch-namespace",
                args.watch_namespace,
                "--lease-namespace",
                OPERATOR_NAMESPACE,
                "--lease-name",
                args.lease_name,
                "--identity",
                args.identity,
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--proxy-image",
                args.proxy_image,
                "--lease-duration-seconds",
                "6",
                "--renew-deadline-seconds",
                "4",
                "--retry-period-seconds",
                "1",
                "--log-format",
                "text",
            ])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,dependency_proxy_operator=debug")
            .env_remove("POD_NAME")
            .env_remove("POD_NAMESPACE")
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("start the operator binary");
        let operator = Self { child: Some(child), identity: args.identity.to_owned(), metrics_port, log };
        eventually("operator /healthz", Duration::from_secs(20), || async {
            reqwest::get(format!("http://127.0.0.1:{metrics_port}/healthz"))
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
        operator
    }

    /// Its /metrics text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .expect("metrics reachable")
            .text()
            .await
            .expect("metrics body")
    }

    /// Sum of `dependency_proxy_operator_reconciles_total` over its results.
    pub async fn reconciles(&self) -> u64 {
        metric_sum(&self.metrics().await, "dependency_proxy_operator_reconciles_total")
    }

    /// SIGKILL: a crash, no chance to release the Lease.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait: the graceful path (the leader releases its Lease).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- operator {} log ({}) ---\n{}", self.identity, self.log.display(), self.log_text());
        }
    }
}

pub fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Polls `probe` every 250 ms until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes an object, ignoring "not found".
pub async fn delete_quietly<K>(api: &Api<K>, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let _ = api.delete(name, &DeleteParams::default()).await;
}
