//! Proxy configuration: one serde type, read from a TOML file, flags and environment, validated in
//! one place. The operator builds the same type and renders it into the proxy's ConfigMap.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::reference;

/// Docker Hub's registry endpoint, the default upstream.
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";
/// Docker Hub keeps its official images under this namespace (`alpine` is `library/alpine`).
pub const DOCKER_HUB_OFFICIAL_PREFIX: &str = "library";
/// The group served when none is configured.
pub const DEFAULT_GROUP: &str = "default";
/// The listen address when none is configured.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5000";
/// The storage when none is configured: a directory relative to the working directory.
pub const DEFAULT_STORAGE: &str = "file://./data";
/// The key in the operator's ConfigMap that holds the rendered configuration file.
pub const CONFIG_FILE_KEY: &str = "config.toml";

/// Everything the proxy needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Socket address the HTTP server binds.
    pub listen: SocketAddr,
    /// Groups served under `/<group>/dependency_proxy/containers/<image>`.
    pub groups: Vec<String>,
    /// Also serve `/v2/<image>/…` directly, as a containerd or CRI-O registry mirror.
    pub mirror: bool,
    pub upstream: UpstreamConfig,
    pub storage: StorageConfig,
    pub cache: CacheConfig,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<TlsConfig>,
    pub log: LogConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Base URL of the upstream registry (scheme and host, optionally a port).
    pub url: Url,
    /// Prefix for single-component image names (`alpine` → `library/alpine`). Defaults to
    /// `library` for Docker Hub and to none for other registries; set `""` to disable.
    pub official_images_prefix: Option<String>,
    /// Value of containerd's `?ns=` query parameter that mirror mode accepts. Defaults to
    /// `docker.io` for Docker Hub and to the upstream's host otherwise.
    pub mirror_namespace: Option<String>,
    /// Account for the upstream (Basic credentials, also sent to its token service).
    pub username: Option<String>,
    /// Password or access token for `username`. Prefer `password_file` or the environment.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// File holding the password (a mounted Secret); trailing newlines are ignored.
    pub password_file: Option<PathBuf>,
    /// Time allowed to establish a connection to the upstream.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Time allowed between two reads from the upstream before a transfer is abandoned.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where the cache lives: `file:///path`, `file://./relative`, `memory://` or
    /// `s3://bucket/prefix`.
    pub url: String,
    /// S3-compatible endpoint (for MinIO, Ceph, moto…); AWS when unset.
    pub endpoint: Option<Url>,
    /// S3 region; `AWS_REGION` or `us-east-1` when unset.
    pub region: Option<String>,
    /// Allow a plain-HTTP S3 endpoint.
    pub allow_http: bool,
    /// Directory for downloads in progress (shared between concurrent clients of one blob).
    /// The system's temporary directory when unset.
    pub spool_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// How long a cached tag is served without asking the upstream whether it moved.
    /// `0s` (the default) revalidates every pull with a HEAD request.
    #[serde(with = "humantime_serde")]
    pub manifest_freshness: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter such as `info` or `dependency_proxy=debug,info`.
    pub filter: String,
}

/// A configuration value that cannot work, named by its field path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("default listen address parses"),
            groups: vec![DEFAULT_GROUP.to_owned()],
            mirror: false,
            upstream: UpstreamConfig::default(),
            storage: StorageConfig::default(),
            cache: CacheConfig::default(),
            tls: None,
            log: LogConfig::default(),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: Url::parse(DOCKER_HUB_URL).expect("Docker Hub URL parses"),
            official_images_prefix: None,
            mirror_namespace: None,
            username: None,
            password: None,
            password_file: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(60),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self { url: DEFAULT_STORAGE.to_owned(), endpoint: None, region: None, allow_http: false, spool_dir: None }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { manifest_freshness: Duration::ZERO }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, filter: "info".to_owned() }
    }
}

impl Config {
    /// Reads a TOML configuration file; fields it leaves out keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })
    }

    /// Parses TOML text (the format of the config file and of the operator's ConfigMap).
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Renders the configuration as TOML. Inline secrets (`upstream.password`) are left out.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("Config always serializes to TOML")
    }

    /// Checks every field that could parse but cannot work, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.groups.is_empty() && !self.mirror {
            return Err(invalid("groups", "serve at least one group, or enable mirror mode"));
        }
        for group in &self.groups {
            reference::validate_group(group).map_err(|e| invalid("groups", e.to_string()))?;
        }
        self.upstream.validate()?;
        self.storage.validate()?;
        if let Some(tls) = &self.tls {
            for (field, path) in [("tls.cert_file", &tls.cert_file), ("tls.key_file", &tls.key_file)] {
                if !path.is_file() {
                    return Err(invalid(field, format!("{} is not a readable file", path.display())));
                }
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.filter).map_err(|e| invalid("log.filter", e.to_string()))?;
        Ok(())
    }
}

impl UpstreamConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.url.scheme(), "http" | "https") {
            return Err(invalid("upstream.url", "scheme must be http or https"));
        }
        if self.url.host_str().is_none() {
            return Err(invalid("upstream.url", "has no host"));
        }
        if self.url.query().is_some() || self.url.fragment().is_some() {
            return Err(invalid("upstream.url", "must not have a query or fragment"));
        }
        if !self.url.username().is_empty() || self.url.password().is_some() {
            return Err(invalid("upstream.url", "put credentials in upstream.username/password"));
        }
        if let Some(prefix) = &self.official_images_prefix
            && !prefix.is_empty()
        {
            reference::validate_group(prefix).map_err(|e| invalid("upstream.official_images_prefix", e.to_string()))?;
        }
        if self.password.is_some() && self.password_file.is_some() {
            return Err(invalid("upstream.password", "set either password or password_file"));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return Err(invalid("upstream.username", "required when a password is set"));
        }
        if let Some(path) = &self.password_file
            && !path.is_file()
        {
            return Err(invalid("upstream.password_file", format!("{} is not a file", path.display())));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid("upstream.connect_timeout", "must be greater than zero"));
        }
        if self.read_timeout.is_zero() {
            return Err(invalid("upstream.read_timeout", "must be greater than zero"));
        }
        Ok(())
    }

    /// True when the upstream is Docker Hub, whose conventions (`library/`, `docker.io`) apply.
    pub fn is_docker_hub(&self) -> bool {
        matches!(self.url.host_str(), Some("registry-1.docker.io" | "index.docker.io" | "docker.io"))
    }

    /// The prefix for single-component names, after applying the Docker Hub default.
    pub fn effective_official_prefix(&self) -> Option<&str> {
        match self.official_images_prefix.as_deref() {
            Some("") => None,
            Some(prefix) => Some(prefix),
            None if self.is_docker_hub() => Some(DOCKER_HUB_OFFICIAL_PREFIX),
            None => None,
        }
    }

    /// The `?ns=` value mirror mode accepts, after applying the defaults.
    pub fn effective_mirror_namespace(&self) -> String {
        match &self.mirror_namespace {
            Some(ns) => ns.clone(),
            None if self.is_docker_hub() => "docker.io".to_owned(),
            None => self.url.authority().to_owned(),
        }
    }

    /// The password, read from `password_file` when that is how it was given.
    pub fn resolve_password(&self) -> Result<Option<String>, ConfigError> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("upstream.password_file", format!("cannot read {}: {e}", path.display())))?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()));
        }
        Ok(self.password.clone())
    }
}

/// Where the cache lives, parsed from `storage.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageLocation {
    Filesystem(PathBuf),
    Memory,
    S3 { bucket: String, prefix: String },
}

impl StorageConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let location = self.location()?;
        if !matches!(location, StorageLocation::S3 { .. }) {
            if self.endpoint.is_some() {
                return Err(invalid("storage.endpoint", "only applies to s3:// storage"));
            }
            if self.region.is_some() {
                return Err(invalid("storage.region", "only applies to s3:// storage"));
            }
        }
        Ok(())
    }

    /// Parses `storage.url`. `file://./x` and `file://x` are relative to the working directory.
    pub fn location(&self) -> Result<StorageLocation, ConfigError> {
        let url = self.url.as_str();
        let (scheme, rest) =
            url.split_once("://").ok_or_else(|| invalid("storage.url", "expected file://, memory:// or s3://"))?;
        match scheme {
            "file" => {
                if rest.is_empty() {
                    return Err(invalid("storage.url", "file:// needs a path"));
                }
                Ok(StorageLocation::Filesystem(PathBuf::from(rest)))
            }
            "memory" if rest.is_empty() => Ok(StorageLocation::Memory),
            "memory" => Err(invalid("storage.url", "memory:// takes no path")),
            "s3" => {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(invalid("storage.url", "s3:// needs a bucket"));
                }
                let prefix = prefix.trim_matches('/');
                if prefix.split('/').any(|segment| segment == "." || segment == "..") {
                    return Err(invalid("storage.url", "prefix must not contain . or .."));
                }
                Ok(StorageLocation::S3 { bucket: bucket.to_owned(), prefix: prefix.to_owned() })
            }
            other => Err(invalid("storage.url", format!("unsupported scheme {other}://"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_point_at_docker_hub() {
        let config = Config::default();
        config.validate().unwrap();
        assert_eq!(config.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(config.groups, vec!["default"]);
        assert_eq!(config.upstream.effective_official_prefix(), Some("library"));
        assert_eq!(config.upstream.effective_mirror_namespace(), "docker.io");
        assert_eq!(config.storage.location().unwrap(), StorageLocation::Filesystem("./data".into()));
    }

    #[test]
    fn toml_round_trips_without_inline_password() {
        let mut config = Config { groups: vec!["acme".into(), "beta".into()], ..Default::default() };
        config.upstream.username = Some("bot".into());
        config.upstream.password = Some("hunter2".into());
        config.cache.manifest_freshness = Duration::from_secs(300);
        let text = config.to_toml();
        assert!(!text.contains("hunter2"), "inline password leaked into {text}");
        let back = Config::from_toml(&text).unwrap();
        assert_eq!(back.groups, config.groups);
        assert_eq!(back.cache.manifest_freshness, Duration::from_secs(300));
        assert_eq!(back.upstream.password, None);
    }

    #[test]
    fn partial_file_keeps_defaults_and_unknown_fields_are_rejected() {
        let config = Config::from_toml("groups = [\"acme\"]\n[cache]\nmanifest_freshness = \"5m\"\n").unwrap();
        assert_eq!(config.upstream.url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(config.cache.manifest_freshness, Duration::from_secs(300));
        let err = Config::from_toml("[upstream]\nurll = \"x\"\n").unwrap_err();
        assert!(err.contains("urll"), "{err}");
    }

    fn field_of(config: &Config) -> &'static str {
        match config.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_bad_field() {
        let c = Config { groups: vec!["Not A Group".into()], ..Default::default() };
        assert_eq!(field_of(&c), "groups");

        let mut c = Config::default();
        c.upstream.url = Url::parse("ftp://example.com").unwrap();
        assert_eq!(field_of(&c), "upstream.url");

        let mut c = Config::default();
        c.upstream.password = Some("x".into());
        assert_eq!(field_of(&c), "upstream.username");

        let mut c = Config::default();
        c.storage.url = "gs://bucket".into();
        assert_eq!(field_of(&c), "storage.url");

        let mut c = Config::default();
        c.storage.endpoint = Some(Url::parse("http://127.0.0.1:9000").unwrap());
        assert_eq!(field_of(&c), "storage.endpoint");

        let mut c = Config::default();
        c.upstream.read_timeout = Duration::ZERO;
        assert_eq!(field_of(&c), "upstream.read_timeout");

        let mut c = Config::default();
        c.log.filter = "=[".into();
        assert_eq!(field_of(&c), "log.filter");
    }

    #[test]
    fn storage_urls_parse() {
        let s = |url: &str| StorageConfig { url: url.into(), ..Default::default() }.location();
        assert_eq!(s("file:///var/cache/dp").unwrap(), StorageLocation::Filesystem("/var/cache/dp".into()));
        assert_eq!(s("memory://").unwrap(), StorageLocation::Memory);
        assert_eq!(
            s("s3://bucket/some/prefix/").unwrap(),
            StorageLocation::S3 { bucket: "bucket".into(), prefix: "some/prefix".into() }
        );
        assert!(s("s3://bucket/../x").is_err());
        assert!(s("s3:///x").is_err());
        assert!(s("/no/scheme").is_err());
    }

    #[test]
    fn non_docker_hub_upstreams_get_no_library_prefix() {
        let mut up = UpstreamConfig { url: Url::parse("http://127.0.0.1:5001").unwrap(), ..Default::default() };
        assert_eq!(up.effective_official_prefix(), None);
        assert_eq!(up.effective_mirror_namespace(), "127.0.0.1:5001");
        up.official_images_prefix = Some("library".into());
        assert_eq!(up.effective_official_prefix(), Some("library"));
    }
}
