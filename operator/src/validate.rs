//! Spec checks the CRD schema cannot express (or that must hold even if the CRD is outdated).
//!
//! A failed check is not retried: it is reported in `Degraded` and waits for a spec change.

use dependency_proxy::config::ConfigError;
use dependency_proxy::reference::is_valid_component;

use crate::crd::{AccessMode, DependencyProxySpec, ServiceType};

/// Why a spec cannot be turned into a working proxy.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("group {0:?} is not one path component (lowercase letters and digits separated by '.', '_', '__' or '-')")]
    BadGroup(String),
    #[error("storage needs exactly one of persistentVolume or objectStore")]
    StorageChoice,
    #[error(
        "replicas is {0} but the persistentVolume is ReadWriteOnce: pods on different nodes cannot share it; use ReadWriteMany or an objectStore, or scale to 1"
    )]
    ReadWriteOnceReplicas(i32),
    #[error("service.nodePort needs service.type NodePort or LoadBalancer")]
    NodePortWithClusterIp,
    #[error("upstream.url {url:?}: {reason}")]
    BadUpstreamUrl { url: String, reason: String },
    #[error("objectStore.endpoint {url:?}: {reason}")]
    BadEndpoint { url: String, reason: String },
    #[error("the proxy would refuse this configuration: {0}")]
    Config(#[from] ConfigError),
}

/// Checks what the builders rely on. Builders may assume a spec that passed.
pub fn check(spec: &DependencyProxySpec) -> Result<(), SpecError> {
    if !is_valid_component(&spec.group) {
        return Err(SpecError::BadGroup(spec.group.clone()));
    }
    let storage = &spec.storage;
    if storage.persistent_volume.is_some() == storage.object_store.is_some() {
        return Err(SpecError::StorageChoice);
    }
    if let Some(pv) = &storage.persistent_volume
        && spec.replicas > 1
        && !pv.access_modes.contains(&AccessMode::ReadWriteMany)
    {
        return Err(SpecError::ReadWriteOnceReplicas(spec.replicas));
    }
    if spec.service.node_port.is_some() && spec.service.type_ == ServiceType::ClusterIP {
        return Err(SpecError::NodePortWithClusterIp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::proxy;

    fn check_json(spec: serde_json::Value) -> Result<(), SpecError> {
        check(&proxy(spec).spec)
    }

    #[test]
    fn valid_specs_pass() {
        check(&crate::build::fixtures::pv_proxy().spec).unwrap();
        check(&crate::build::fixtures::s3_proxy().spec).unwrap();
    }

    #[test]
    fn bad_group_is_refused() {
        for group in ["Acme", "a/b", "-a", "a--", ""] {
            let err = check_json(serde_json::json!({
                "group": group, "storage": {"persistentVolume": {"size": "1Gi"}}
            }));
            assert!(matches!(err, Err(SpecError::BadGroup(_))), "{group}: {err:?}");
        }
    }

    #[test]
    fn both_or_neither_storage_is_refused() {
        let both = check_json(serde_json::json!({"group": "acme", "storage": {
            "persistentVolume": {"size": "1Gi"}, "objectStore": {"url": "s3://b/p"}
        }}));
        assert!(matches!(both, Err(SpecError::StorageChoice)));
        let neither = check_json(serde_json::json!({"group": "acme", "storage": {}}));
        assert!(matches!(neither, Err(SpecError::StorageChoice)));
    }

    #[test]
    fn several_replicas_need_shared_storage() {
        let rwo = check_json(serde_json::json!({"group": "acme", "replicas": 2,
            "storage": {"persistentVolume": {"size": "1Gi"}}}));
        assert!(matches!(rwo, Err(SpecError::ReadWriteOnceReplicas(2))));
        let rwx = check_json(serde_json::json!({"group": "acme", "replicas": 2,
            "storage": {"persistentVolume": {"size": "1Gi", "accessModes": ["ReadWriteMany"]}}}));
        rwx.unwrap();
    }

    #[test]
    fn node_port_needs_a_node_port_service() {
        let err = check_json(serde_json::json!({"group": "acme", "service": {"nodePort": 30500},
            "storage": {"objectStore": {"url": "s3://b/p"}}}));
        assert!(matches!(err, Err(SpecError::NodePortWithClusterIp)));
    }
}
