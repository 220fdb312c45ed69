//! Command-line flags and their environment variables, layered over the config file: flags and
//! environment win, the file fills in the rest, defaults cover what neither sets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use url::Url;

use crate::config::{Config, ConfigError, LogFormat, TlsConfig};

#[derive(Debug, Parser)]
#[command(name = "dependency-proxy", version, about = "Pull-through cache for container images, one per group")]
pub struct Cli {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "DP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:5000].
    #[arg(long, env = "DP_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Upstream registry URL [default: https://registry-1.docker.io].
    #[arg(long, env = "DP_UPSTREAM")]
    pub upstream: Option<Url>,
    /// Upstream account name.
    #[arg(long, env = "DP_UPSTREAM_USERNAME")]
    pub upstream_username: Option<String>,
    /// Upstream password or access token.
    #[arg(long, env = "DP_UPSTREAM_PASSWORD", hide_env_values = true)]
    pub upstream_password: Option<String>,
    /// File holding the upstream password.
    #[arg(long, env = "DP_UPSTREAM_PASSWORD_FILE")]
    pub upstream_password_file: Option<PathBuf>,
    /// Prefix for single-component images (`alpine` → `library/alpine`); "" for none
    /// [default: library for Docker Hub, none otherwise].
    #[arg(long, env = "DP_OFFICIAL_IMAGES_PREFIX")]
    pub official_images_prefix: Option<String>,
    /// Cache location: file:///path, memory://, s3://bucket/prefix [default: file://./data].
    #[arg(long, env = "DP_STORAGE")]
    pub storage: Option<String>,
    /// S3-compatible endpoint URL.
    #[arg(long, env = "DP_S3_ENDPOINT")]
    pub s3_endpoint: Option<Url>,
    /// S3 region.
    #[arg(long, env = "DP_S3_REGION")]
    pub s3_region: Option<String>,
    /// Allow a plain-HTTP S3 endpoint.
    #[arg(long, env = "DP_S3_ALLOW_HTTP")]
    pub s3_allow_http: bool,
    /// Directory for downloads in progress [default: the system temporary directory].
    #[arg(long, env = "DP_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Group to serve under /v2/<group>/dependency_proxy/containers/ (repeatable) [default: default].
    #[arg(long = "group", env = "DP_GROUPS", value_delimiter = ',')]
    pub groups: Vec<String>,
    /// Also serve /v2/<image>/… directly, as a node-level registry mirror.
    #[arg(long, env = "DP_MIRROR")]
    pub mirror: bool,
    /// The ?ns= value mirror mode accepts [default: docker.io for Docker Hub, else the upstream's host].
    #[arg(long, env = "DP_MIRROR_NAMESPACE")]
    pub mirror_namespace: Option<String>,
    /// How long a cached tag is served without revalidation, e.g. 0s, 30s, 5m [default: 0s].
    #[arg(long, env = "DP_MANIFEST_FRESHNESS", value_parser = humantime::parse_duration)]
    pub manifest_freshness: Option<Duration>,
    /// PEM certificate for HTTPS (with --tls-key).
    #[arg(long, env = "DP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS (with --tls-cert).
    #[arg(long, env = "DP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "DP_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or dependency_proxy=debug [default: info].
    #[arg(long, env = "DP_LOG")]
    pub log_filter: Option<String>,
}

impl Cli {
    /// The effective configuration: file (if any), then flags and environment on top; validated.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(url) = self.upstream {
            config.upstream.url = url;
        }
        set_if_some(&mut config.upstream.username, self.upstream_username);
        if self.upstream_password.is_some() {
            config.upstream.password = self.upstream_password;
            config.upstream.password_file = None;
        }
        if self.upstream_password_file.is_some() {
            config.upstream.password_file = self.upstream_password_file;
            config.upstream.password = None;
        }
        set_if_some(&mut config.upstream.official_images_prefix, self.official_images_prefix);
        set_if_some(&mut config.upstream.mirror_namespace, self.mirror_namespace);
        if let Some(storage) = self.storage {
            config.storage.url = storage;
        }
        set_if_some(&mut config.storage.endpoint, self.s3_endpoint);
        set_if_some(&mut config.storage.region, self.s3_region);
        config.storage.allow_http |= self.s3_allow_http;
        set_if_some(&mut config.storage.spool_dir, self.spool_dir);
        if !self.groups.is_empty() {
            config.groups = self.groups.into_iter().map(|g| g.trim().to_owned()).filter(|g| !g.is_empty()).collect();
        }
        config.mirror |= self.mirror;
        if let Some(freshness) = self.manifest_freshness {
            config.cache.manifest_freshness = freshness;
        }
        if let (Some(cert_file), Some(key_file)) = (self.tls_cert, self.tls_key) {
            config.tls = Some(TlsConfig { cert_file, key_file });
        }
        if let Some(format) = self.log_format {
            config.log.format = format;
        }
        if let Some(filter) = self.log_filter {
            config.log.filter = filter;
        }
        config.validate()?;
        Ok(config)
    }
}

fn set_if_some<T>(target: &mut Option<T>, value: Option<T>) {
    if value.is_some() {
        *target = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Cli::try_parse_from(std::iter::once("dependency-proxy").chain(args.iter().copied())).unwrap().into_config()
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "groups = [\"fromfile\"]\nlisten = \"127.0.0.1:7000\"\n").unwrap();
        let config = parse(&[
            "--config",
            file.to_str().unwrap(),
            "--group",
            "acme",
            "--group",
            "beta",
            "--manifest-freshness",
            "5m",
        ])
        .unwrap();
        assert_eq!(config.groups, vec!["acme", "beta"]);
        assert_eq!(config.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(config.cache.manifest_freshness, Duration::from_secs(300));
        assert_eq!(config.upstream.url.as_str(), "https://registry-1.docker.io/");
    }

    #[test]
    fn bad_values_name_their_field() {
        let err = parse(&["--group", "Bad Group"]).unwrap_err();
        assert!(err.to_string().contains("`groups`"), "{err}");
        let err = parse(&["--storage", "ftp://x"]).unwrap_err();
        assert!(err.to_string().contains("`storage.url`"), "{err}");
        let err = parse(&["--config", "/nonexistent/config.toml"]).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }
}
