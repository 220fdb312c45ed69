//! Wiring: a validated `Config` becomes the running server (plain HTTP or TLS), with graceful
//! shutdown on SIGTERM and SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tower_http::trace::{DefaultMakeSpan, DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::cache::{self, BlobStore, ManifestStore};
use crate::config::{Config, ConfigError};
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::routes::{self, AppState, NameMapping};
use crate::service::RegistryService;
use crate::upstream::{Credentials, UpstreamClient};

/// How long in-flight pulls may take to finish after a shutdown signal.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(25);

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the upstream client: {0}")]
    Upstream(String),
    #[error("cannot load TLS certificate or key: {0}")]
    Tls(std::io::Error),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Builds everything a request needs from the configuration. Must run inside a Tokio runtime.
pub fn build_state(config: &Config) -> Result<Arc<AppState>, ServerError> {
    let metrics = Arc::new(Metrics::new());
    let storage = cache::open_store(&config.storage)?;
    let credentials = match (&config.upstream.username, config.upstream.resolve_password()?) {
        (Some(username), password) => {
            Some(Credentials { username: username.clone(), password: password.unwrap_or_default() })
        }
        (None, _) => None,
    };
    let upstream = Arc::new(
        UpstreamClient::new(&config.upstream, credentials, metrics.clone())
            .map_err(|e| ServerError::Upstream(e.to_string()))?,
    );
    let spool_dir = config.storage.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&spool_dir).map_err(|e| ConfigError::Invalid {
        field: "storage.spool_dir",
        reason: format!("cannot create {}: {e}", spool_dir.display()),
    })?;
    if let Some(root) = storage.local_root.clone() {
        // In the background: a large cache takes a while to walk, and serving need not wait.
        tokio::task::spawn_blocking(move || match cache::sweep_staging(&root) {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "removed staging files left by interrupted uploads"),
            Err(error) => tracing::warn!(%error, "cannot sweep staging files"),
        });
    }
    let blobs = BlobStore::new(storage.store.clone(), storage.part_size);
    let manifests = ManifestStore::new(storage.store, config.upstream.url.authority().to_owned());
    let fetcher = Arc::new(Fetcher::new(upstream.clone(), blobs.clone(), spool_dir, metrics.clone()));
    let service =
        RegistryService::new(upstream, blobs, manifests, fetcher, metrics.clone(), config.cache.manifest_freshness);
    Ok(Arc::new(AppState { service: Arc::new(service), names: NameMapping::from_config(config), metrics }))
}

/// Runs the server until SIGTERM or SIGINT, then lets in-flight requests finish.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let state = build_state(&config)?;
    let fetcher = state.service.fetcher().clone();
    // One INFO line per request (method, path, status, latency): the access log.
    let access_log = TraceLayer::new_for_http()
        .make_span_with(DefaultMakeSpan::new().level(Level::INFO))
        .on_response(DefaultOnResponse::new().level(Level::INFO));
    let app = routes::router(state).layer(access_log);
    let handle = axum_server::Handle::<SocketAddr>::new();
    tokio::spawn(shutdown_on_signal(handle.clone()));
    let announce = {
        let handle = handle.clone();
        let tls = config.tls.is_some();
        let upstream = config.upstream.url.to_string();
        let storage = config.storage.url.clone();
        let groups = config.groups.join(",");
        async move {
            if let Some(addr) = handle.listening().await {
                tracing::info!(%addr, tls, %upstream, %storage, %groups, mirror = config.mirror, "listening");
            }
        }
    };
    tokio::spawn(announce);
    let service = app.into_make_service();
    match &config.tls {
        Some(tls) => {
            let rustls = axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert_file, &tls.key_file)
                .await
                .map_err(ServerError::Tls)?;
            axum_server::bind_rustls(config.listen, rustls).handle(handle).serve(service).await?
        }
        None => axum_server::bind(config.listen).handle(handle).serve(service).await?,
    }
    // Downloads continue after their clients leave (to fill the cache); give them the grace
    // period to commit. One still running when the process exits leaves only an uncommitted
    // staging upload, never a blob under its key.
    if fetcher.inflight() > 0 {
        tracing::info!(downloads = fetcher.inflight(), "waiting for in-flight downloads");
        if tokio::time::timeout(SHUTDOWN_GRACE, fetcher.idle()).await.is_err() {
            tracing::warn!(downloads = fetcher.inflight(), "abandoning unfinished downloads");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_on_signal(handle: axum_server::Handle<SocketAddr>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
    }
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
}
