//! Pure builders: from a `DependencyProxy` to the objects the operator applies, with no I/O.

pub mod config;
pub mod configmap;
pub mod deployment;
pub mod pvc;
pub mod service;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

use crate::crd::DependencyProxy;

/// `app.kubernetes.io/name` of every child, and of nothing else the operator does not own.
pub const APP_NAME: &str = "dependency-proxy";
/// `app.kubernetes.io/managed-by` of every child.
pub const MANAGED_BY: &str = "dependency-proxy-operator";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_GROUP: &str = "dependencyproxy.dev/group";

/// The names of one resource's children, so builders, reconciler and tests agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildNames {
    /// Deployment and Service (the Service name is the host in the pull prefix).
    pub workload: String,
    pub config_map: String,
    pub pvc: String,
}

impl ChildNames {
    pub fn of(dp: &DependencyProxy) -> Self {
        let name = dp.name_any();
        Self { config_map: format!("{name}-config"), pvc: format!("{name}-cache"), workload: name }
    }
}

/// Labels selecting one resource's pods. Kept to two keys: a Deployment's selector is immutable,
/// so nothing that may change later (such as the group) may be part of it.
pub fn selector_labels(dp: &DependencyProxy) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_NAME.to_owned(), APP_NAME.to_owned()), (LABEL_INSTANCE.to_owned(), dp.name_any())])
}

/// The selector as the string the scale subresource and HPAs read from the status.
pub fn selector_string(dp: &DependencyProxy) -> String {
    selector_labels(dp).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Labels on every child.
pub fn labels(dp: &DependencyProxy) -> BTreeMap<String, String> {
    let mut labels = selector_labels(dp);
    labels.insert(LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned());
    // Groups are label-value-safe: the group grammar is a subset of the label-value grammar,
    // but a group can be longer than a label value's 63 characters.
    if dp.spec.group.len() <= 63 {
        labels.insert(LABEL_GROUP.to_owned(), dp.spec.group.clone());
    }
    labels
}

/// Metadata of a child: name, namespace, labels and the controller owner reference through which
/// Kubernetes' garbage collector deletes the child with its resource.
pub fn child_meta(dp: &DependencyProxy, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: dp.namespace(),
        labels: Some(labels(dp)),
        owner_references: Some(vec![owner_reference(dp)]),
        ..Default::default()
    }
}

/// The owner reference children carry. It needs a uid, which every resource read from the
/// apiserver has; the reconciler refuses a resource without one before calling any builder.
/// `blockOwnerDeletion` makes a foreground deletion of the resource wait for its children.
pub fn owner_reference(dp: &DependencyProxy) -> OwnerReference {
    let owner = dp.controller_owner_ref(&()).expect("the reconciler checked the uid");
    OwnerReference { block_owner_deletion: Some(true), ..owner }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Resources for the builders' unit tests.
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use crate::crd::{DependencyProxy, DependencyProxySpec};

    pub fn proxy(spec: serde_json::Value) -> DependencyProxy {
        let spec: DependencyProxySpec = serde_json::from_value(spec).expect("test spec parses");
        let mut dp = DependencyProxy::new("acme", spec);
        dp.metadata = ObjectMeta {
            name: Some("acme".into()),
            namespace: Some("ci".into()),
            uid: Some("0d6f6a43-1111-2222-3333-444455556666".into()),
            generation: Some(3),
            ..Default::default()
        };
        dp
    }

    pub fn pv_proxy() -> DependencyProxy {
        proxy(serde_json::json!({
            "group": "acme",
            "storage": {"persistentVolume": {"size": "10Gi", "storageClassName": "fast"}}
        }))
    }

    pub fn s3_proxy() -> DependencyProxy {
        proxy(serde_json::json!({
            "group": "acme",
            "replicas": 3,
            "upstream": {"url": "https://registry.example.com", "credentialsSecretRef": {"name": "hub"}},
            "storage": {"objectStore": {
                "url": "s3://cache/acme", "endpoint": "http://minio.storage:9000",
                "region": "eu-west-1", "secretRef": {"name": "s3-keys"}
            }}
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_are_owned_by_their_resource_as_controller() {
        let dp = fixtures::pv_proxy();
        let meta = child_meta(&dp, "acme-config");
        let owner = &meta.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "DependencyProxy");
        assert_eq!(owner.api_version, "dependencyproxy.dev/v1alpha1");
        assert_eq!(owner.name, "acme");
        assert_eq!(owner.uid, "0d6f6a43-1111-2222-3333-444455556666");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(owner.block_owner_deletion, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("ci"));
    }

    #[test]
    fn selector_is_stable_and_printable() {
        let dp = fixtures::pv_proxy();
        assert_eq!(selector_string(&dp), "app.kubernetes.io/instance=acme,app.kubernetes.io/name=dependency-proxy");
        assert_eq!(labels(&dp)[LABEL_GROUP], "acme");
        assert_eq!(ChildNames::of(&dp).pvc, "acme-cache");
    }
}
