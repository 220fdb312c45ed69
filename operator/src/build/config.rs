//! The proxy's own `Config`, built from a spec: what the ConfigMap holds and the pods read.

use dependency_proxy::config::{Config, LogFormat, TlsConfig};
use sha2::{Digest, Sha256};
use url::Url;

use crate::crd::{DependencyProxySpec, PROXY_PORT};
use crate::validate::SpecError;

/// Where the ConfigMap is mounted.
pub const CONFIG_DIR: &str = "/etc/dependency-proxy";
/// Where the TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/dependency-proxy/tls";
/// Where the PersistentVolume is mounted.
pub const CACHE_DIR: &str = "/var/cache/dependency-proxy";
/// An emptyDir for downloads in progress: the root filesystem is read-only.
pub const SPOOL_DIR: &str = "/var/spool/dependency-proxy";

/// The proxy configuration for a checked spec. Secrets never appear in it: credentials reach the
/// pod as environment variables from their Secrets (see `deployment`).
pub fn proxy_config(spec: &DependencyProxySpec) -> Result<Config, SpecError> {
    let mut config = Config {
        listen: ([0, 0, 0, 0], PROXY_PORT).into(),
        groups: vec![spec.group.clone()],
        mirror: spec.mirror,
        ..Config::default()
    };
    // Structured logs: cluster log pipelines parse JSON.
    config.log.format = LogFormat::Json;

    config.upstream.url = Url::parse(&spec.upstream.url)
        .map_err(|e| SpecError::BadUpstreamUrl { url: spec.upstream.url.clone(), reason: e.to_string() })?;

    config.storage.spool_dir = Some(SPOOL_DIR.into());
    if spec.storage.persistent_volume.is_some() {
        config.storage.url = format!("file://{CACHE_DIR}");
    } else if let Some(store) = &spec.storage.object_store {
        config.storage.url = store.url.clone();
        config.storage.region = store.region.clone();
        if let Some(endpoint) = &store.endpoint {
            let url = Url::parse(endpoint)
                .map_err(|e| SpecError::BadEndpoint { url: endpoint.clone(), reason: e.to_string() })?;
            // An in-cluster MinIO is commonly plain HTTP; saying so in the spec is consent enough.
            config.storage.allow_http = url.scheme() == "http";
            config.storage.endpoint = Some(url);
        }
    } else {
        return Err(SpecError::StorageChoice);
    }

    if spec.tls.is_some() {
        config.tls = Some(TlsConfig {
            cert_file: format!("{TLS_DIR}/tls.crt").into(),
            key_file: format!("{TLS_DIR}/tls.key").into(),
        });
    }

    // The proxy's own validation, minus what only holds inside the pod: the TLS files exist only
    // once the Secret is mounted there.
    let mut checkable = config.clone();
    checkable.tls = None;
    checkable.validate()?;
    Ok(config)
}

/// The hash the pod template carries, so any change of the rendered file rolls the pods.
pub fn config_hash(rendered: &str) -> String {
    let digest = Sha256::digest(rendered.as_bytes());
    hex::encode(&digest[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{proxy, pv_proxy, s3_proxy};
    use dependency_proxy::config::StorageLocation;

    #[test]
    fn pv_storage_is_the_mounted_cache_dir() {
        let config = proxy_config(&pv_proxy().spec).unwrap();
        assert_eq!(config.groups, vec!["acme"]);
        assert_eq!(config.listen.to_string(), "0.0.0.0:5000");
        assert_eq!(config.storage.location().unwrap(), StorageLocation::Filesystem(CACHE_DIR.into()));
        assert_eq!(config.storage.spool_dir.as_deref(), Some(std::path::Path::new(SPOOL_DIR)));
        assert_eq!(config.upstream.url.as_str(), "https://registry-1.docker.io/");
        assert!(config.tls.is_none());
        assert!(!config.mirror);
    }

    #[test]
    fn mirror_mode_is_passed_through() {
        let dp = proxy(serde_json::json!({"group": "acme", "mirror": true,
            "storage": {"persistentVolume": {"size": "1Gi"}}}));
        assert!(proxy_config(&dp.spec).unwrap().mirror);
    }

    #[test]
    fn object_store_carries_endpoint_region_and_http_consent() {
        let config = proxy_config(&s3_proxy().spec).unwrap();
        assert_eq!(
            config.storage.location().unwrap(),
            StorageLocation::S3 { bucket: "cache".into(), prefix: "acme".into() }
        );
        assert_eq!(config.storage.endpoint.unwrap().as_str(), "http://minio.storage:9000/");
        assert_eq!(config.storage.region.as_deref(), Some("eu-west-1"));
        assert!(config.storage.allow_http);
        assert_eq!(config.upstream.url.host_str(), Some("registry.example.com"));
    }

    #[test]
    fn rendered_config_round_trips_and_holds_no_secret_names() {
        let config = proxy_config(&s3_proxy().spec).unwrap();
        let text = config.to_toml();
        assert_eq!(Config::from_toml(&text).unwrap(), config);
        assert!(!text.contains("s3-keys") && !text.contains("hub"), "{text}");
    }

    #[test]
    fn tls_points_at_the_mounted_secret() {
        let dp = proxy(serde_json::json!({"group": "acme", "tls": {"secretRef": {"name": "acme-tls"}},
            "storage": {"persistentVolume": {"size": "1Gi"}}}));
        let tls = proxy_config(&dp.spec).unwrap().tls.unwrap();
        assert_eq!(tls.cert_file.to_str(), Some("/etc/dependency-proxy/tls/tls.crt"));
        assert_eq!(tls.key_file.to_str(), Some("/etc/dependency-proxy/tls/tls.key"));
    }

    #[test]
    fn proxy_validation_failures_surface() {
        let dp = proxy(serde_json::json!({"group": "acme", "upstream": {"url": "ftp://x"},
            "storage": {"persistentVolume": {"size": "1Gi"}}}));
        assert!(matches!(proxy_config(&dp.spec), Err(SpecError::Config(_))));
        let dp = proxy(serde_json::json!({"group": "acme", "upstream": {"url": "not a url"},
            "storage": {"persistentVolume": {"size": "1Gi"}}}));
        assert!(matches!(proxy_config(&dp.spec), Err(SpecError::BadUpstreamUrl { .. })));
    }

    #[test]
    fn hash_follows_content() {
        assert_eq!(config_hash("a"), config_hash("a"));
        assert_ne!(config_hash("a"), config_hash("b"));
        assert_eq!(config_hash("a").len(), 32);
    }
}
