//! The `dependency-proxy` binary: flags → config → logging → server.

use clap::Parser;
use dependency_proxy::cli::Cli;
use dependency_proxy::config::{Config, LogFormat};
use dependency_proxy::server;
use tracing_subscriber::EnvFilter;

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = match Cli::parse().into_config() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("dependency-proxy: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(&config);
    match server::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "dependency-proxy failed");
            eprintln!("dependency-proxy: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
