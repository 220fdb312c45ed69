//! The `DependencyProxy` custom resource (`dependencyproxy.dev/v1alpha1`) and its CRD rendering.
//!
//! `retention` and `auth` (later issues) will be added as further optional blocks of the spec;
//! every field here is optional or defaulted so that adding them is not a breaking change.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the resource.
pub const API_GROUP: &str = "dependencyproxy.dev";
/// The only version so far.
pub const API_VERSION: &str = "v1alpha1";
/// Port the proxy container listens on; the Service maps `spec.service.port` to it.
pub const PROXY_PORT: u16 = 5000;
/// Docker Hub, the upstream when none is given (the proxy's own default).
pub const DEFAULT_UPSTREAM_URL: &str = dependency_proxy::config::DOCKER_HUB_URL;

/// The same grammar as the proxy's `reference::is_valid_component` (one OCI path component), so
/// a bad group is refused at admission instead of becoming a proxy that cannot start.
const GROUP_RULE: &str = "self.matches('^[a-z0-9]+((\\\\.|_|__|-+)[a-z0-9]+)*$')";

/// A group's pull-through cache: the operator turns one into a ConfigMap, Deployment, Service and
/// (with `storage.persistentVolume`) a PersistentVolumeClaim.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dependencyproxy.dev",
    version = "v1alpha1",
    kind = "DependencyProxy",
    plural = "dependencyproxies",
    shortname = "dp",
    namespaced,
    status = "DependencyProxyStatus",
    derive = "PartialEq",
    doc = "A group's pull-through cache for container images (GitLab's Dependency Proxy).",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Group","type":"string","jsonPath":".spec.group"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Replicas","type":"integer","jsonPath":".spec.replicas"}"#,
    printcolumn = r#"{"name":"URL","type":"string","jsonPath":".status.url"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DependencyProxySpec {
    /// The group served: pulls go to `<service>/<group>/dependency_proxy/containers/<image>`.
    /// One path component of lowercase letters and digits, separated by `.`, `_`, `__` or `-`.
    #[x_kube(validation = Rule::new(GROUP_RULE).message("group must be one path component: lowercase letters and digits separated by '.', '_', '__' or '-'"))]
    #[schemars(length(min = 1, max = 255))]
    pub group: String,
    /// The registry images are pulled from (Docker Hub when unset).
    #[serde(default)]
    pub upstream: UpstreamSpec,
    /// Number of proxy pods. More than one needs shared storage (object store or ReadWriteMany).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,
    /// Proxy image; the operator's default (`--proxy-image`) when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resource requests and limits of the proxy container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// How the proxy is exposed.
    #[serde(default)]
    pub service: ServiceSpec,
    /// Serve HTTPS (needed by node runtimes, which refuse plain-HTTP mirrors by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// Where cached blobs and manifests live.
    pub storage: StorageSpec,
    /// Also serve `/v2/<image>/…` as a registry mirror for node runtimes (containerd's
    /// `hosts.toml`), next to the group prefix.
    #[serde(default)]
    pub mirror: bool,
}

fn default_replicas() -> i32 {
    1
}

/// The upstream registry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// Base URL (scheme and host, optionally a port) of the upstream registry.
    #[serde(default = "default_upstream_url")]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("upstream.url must be an http:// or https:// URL"))]
    pub url: String,
    /// Secret with keys `username` and `password` for an upstream account (raises Docker Hub's
    /// pull limits, or reaches a private registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretReference>,
}

fn default_upstream_url() -> String {
    DEFAULT_UPSTREAM_URL.to_owned()
}

impl Default for UpstreamSpec {
    fn default() -> Self {
        Self { url: default_upstream_url(), credentials_secret_ref: None }
    }
}

/// A Secret in the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SecretReference {
    /// Name of the Secret.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// How the Service exposes the proxy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.nodePort) || self.type != 'ClusterIP'").message("service.nodePort needs service.type NodePort or LoadBalancer"))]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Service port (the pull prefix's port).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Fixed node port, for node-level mirroring (node runtimes cannot resolve cluster DNS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub node_port: Option<i32>,
}

fn default_service_port() -> i32 {
    i32::from(PROXY_PORT)
}

impl Default for ServiceSpec {
    fn default() -> Self {
        Self { type_: ServiceType::default(), port: default_service_port(), node_port: None }
    }
}

/// Kubernetes Service types the proxy supports.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// TLS served by the proxy itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`).
    pub secret_ref: SecretReference,
}

/// Exactly one storage backend.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.persistentVolume) != has(self.objectStore)").message("storage needs exactly one of persistentVolume or objectStore"))]
pub struct StorageSpec {
    /// A PersistentVolumeClaim the operator creates and mounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume: Option<PersistentVolumeSpec>,
    /// An S3-compatible bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_store: Option<ObjectStoreSpec>,
}

/// The claim the operator creates for the cache.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeSpec {
    /// Requested size, a Kubernetes quantity such as `50Gi`.
    #[x_kube(validation = Rule::new("isQuantity(self)").message("persistentVolume.size must be a quantity such as 50Gi"))]
    pub size: String,
    /// Storage class; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Access modes; `ReadWriteOnce` when unset. `ReadWriteMany` allows more than one replica.
    #[serde(default = "default_access_modes")]
    #[schemars(length(min = 1))]
    pub access_modes: Vec<AccessMode>,
}

fn default_access_modes() -> Vec<AccessMode> {
    vec![AccessMode::ReadWriteOnce]
}

/// PersistentVolume access modes.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadWriteOncePod,
    ReadOnlyMany,
    ReadWriteMany,
}

impl AccessMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadWriteOnce => "ReadWriteOnce",
            Self::ReadWriteOncePod => "ReadWriteOncePod",
            Self::ReadOnlyMany => "ReadOnlyMany",
            Self::ReadWriteMany => "ReadWriteMany",
        }
    }
}

/// An S3-compatible bucket.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStoreSpec {
    /// `s3://bucket/prefix`.
    #[x_kube(validation = Rule::new("self.startsWith('s3://') && size(self) > 5").message("objectStore.url must look like s3://bucket/prefix"))]
    pub url: String,
    /// S3-compatible endpoint (MinIO, Ceph…); AWS when unset. `http://` endpoints are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region; the proxy's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Secret with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`; without it the proxy
    /// uses the pod's ambient credentials (IRSA, instance profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
}

/// What the operator observed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DependencyProxyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Proxy pods that exist (the scale subresource reads this).
    #[serde(default)]
    pub replicas: i32,
    /// Proxy pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, as a string (the scale subresource and HPAs read this).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The pull prefix: `<service>.<namespace>.svc:<port>/<group>/dependency_proxy/containers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `Ready`, `Progressing` and `Degraded`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Where the generated CRD is checked in, relative to the workspace root.
pub const CRD_FILE: &str = "crds/dependencyproxies.dependencyproxy.dev.yaml";
/// The chart's copy (Helm installs files under a chart's `crds/` before its templates).
pub const CHART_CRD_FILE: &str = "charts/dependency-proxy-operator/crds/dependencyproxies.dependencyproxy.dev.yaml";

/// The CRD as YAML, exactly what `dependency-proxy-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> String {
    let crd = DependencyProxy::crd();
    format!(
        "# Generated by `dependency-proxy-operator crd`; do not edit (a test fails when stale).\n{}",
        serde_yaml::to_string(&crd).expect("a CRD serializes to YAML")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_has_names_scale_and_columns() {
        let crd = DependencyProxy::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("dependencyproxies.dependencyproxy.dev"));
        assert_eq!(crd.spec.names.short_names, Some(vec!["dp".to_owned()]));
        let version = &crd.spec.versions[0];
        let scale = version.subresources.as_ref().unwrap().scale.as_ref().unwrap();
        assert_eq!(scale.spec_replicas_path, ".spec.replicas");
        assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
        let columns: Vec<_> =
            version.additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.as_str()).collect();
        assert_eq!(columns, ["Group", "Ready", "Replicas", "URL", "Age"]);
    }

    #[test]
    fn crd_carries_the_cel_rules() {
        let yaml = crd_yaml();
        for rule in ["has(self.persistentVolume) != has(self.objectStore)", "self.matches("] {
            assert!(yaml.contains(rule), "missing {rule} in\n{yaml}");
        }
    }

    /// The CRD files in `crds/` and in the chart are this binary's output, byte for byte.
    #[test]
    fn checked_in_crds_are_current() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        for file in [CRD_FILE, CHART_CRD_FILE] {
            let on_disk = std::fs::read_to_string(format!("{root}/{file}")).unwrap_or_default();
            assert!(
                on_disk == crd_yaml(),
                "{file} is stale: run `cargo run -p dependency-proxy-operator -- crd > {file}`"
            );
        }
    }

    #[test]
    fn minimal_spec_takes_defaults() {
        let spec: DependencyProxySpec = serde_json::from_value(serde_json::json!({
            "group": "acme",
            "storage": {"persistentVolume": {"size": "1Gi"}}
        }))
        .unwrap();
        assert_eq!(spec.replicas, 1);
        assert_eq!(spec.upstream.url, DEFAULT_UPSTREAM_URL);
        assert_eq!(spec.service.port, 5000);
        assert_eq!(spec.service.type_, ServiceType::ClusterIP);
        assert_eq!(spec.storage.persistent_volume.unwrap().access_modes, vec![AccessMode::ReadWriteOnce]);
    }
}
