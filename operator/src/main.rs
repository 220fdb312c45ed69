//! `dependency-proxy-operator`: `run` the controller (with leader election), or print the `crd`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use dependency_proxy_operator::crd::crd_yaml;
use dependency_proxy_operator::leader::{LeaderElector, LeaseConfig};
use dependency_proxy_operator::metrics::{self, Metrics};
use dependency_proxy_operator::reconcile::{self, Context};
use tokio::sync::watch;

/// The proxy image used when a DependencyProxy names none.
const DEFAULT_PROXY_IMAGE: &str = concat!("ghcr.io/dependency-proxy/dependency-proxy:", env!("CARGO_PKG_VERSION"));

#[derive(Parser)]
#[command(version, about = "Reconciles DependencyProxy resources into group proxies")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CustomResourceDefinition as YAML.
    Crd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Proxy image for resources that set no `spec.image`.
    #[arg(long, env = "DP_PROXY_IMAGE", default_value = DEFAULT_PROXY_IMAGE)]
    proxy_image: String,
    /// Address of the /metrics and /healthz server.
    #[arg(long, env = "DP_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "DP_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "dependency-proxy-operator")]
    lease_name: String,
    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Seconds a leader may fail to renew before it stops leading.
    #[arg(long, default_value_t = 10)]
    renew_deadline_seconds: u64,
    /// Seconds between renewals and between a standby's attempts.
    #[arg(long, default_value_t = 2)]
    retry_period_seconds: u64,
    #[arg(long, env = "DP_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Command::Crd => {
            print!("{}", crd_yaml());
            std::process::ExitCode::SUCCESS
        }
        Command::Run(args) => match run(args).await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "operator stopped");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("no Kubernetes client configuration: {0}")]
    Client(#[from] kube::Error),
    #[error("metrics server: {0}")]
    Metrics(#[from] std::io::Error),
    #[error("lost the leader Lease")]
    LostLease,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(args: RunArgs) -> Result<(), RunError> {
    init_logs(args.log_format);
    let client = kube::Client::try_default().await?;
    let metrics = Arc::new(Metrics::default());
    let metrics_listener = tokio::net::TcpListener::bind(args.metrics_addr).await?;
    let server_metrics = metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(metrics_listener, metrics::router(server_metrics)).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let elector = Arc::new(LeaderElector::new(
        client.clone(),
        LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            lease_duration: Duration::from_secs(args.lease_duration_seconds),
            renew_deadline: Duration::from_secs(args.renew_deadline_seconds),
            retry_period: Duration::from_secs(args.retry_period_seconds),
        },
    ));
    tracing::info!(%identity, lease = %args.lease_name, namespace = %args.lease_namespace, "waiting for leadership");

    // A signal while standing by just exits; while leading, it stops the controller gracefully
    // and releases the Lease.
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    tokio::select! {
        () = elector.acquire() => {}
        _ = stop_rx.changed() => return Ok(()),
    }
    metrics.leader.set(1);

    let (lost_tx, mut lost_rx) = watch::channel(false);
    let renewer = elector.clone();
    tokio::spawn(async move {
        renewer.keep_renewing().await;
        let _ = lost_tx.send(true);
    });
    let mut stop = stop_rx.clone();
    let mut lost = lost_rx.clone();
    let shutdown = async move {
        tokio::select! {
            _ = stop.changed() => {}
            _ = lost.changed() => {}
        }
    };
    let ctx = Arc::new(Context::new(client, metrics.clone(), args.proxy_image, identity));
    reconcile::run(ctx, args.watch_namespace, shutdown).await;
    metrics.leader.set(0);
    if *lost_rx.borrow_and_update() {
        // Exit so the pod restarts as a fresh candidate; reconciling on would risk two leaders.
        return Err(RunError::LostLease);
    }
    elector.release().await;
    Ok(())
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".to_owned());
    format!("{host}-{}", std::process::id())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
