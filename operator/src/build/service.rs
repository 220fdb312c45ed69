//! The Service in front of the proxy pods, and the pull prefix it gives.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{ChildNames, child_meta, selector_labels};
use crate::build::deployment::PORT_NAME;
use crate::crd::{DependencyProxy, ServiceType};

pub fn service(dp: &DependencyProxy) -> Service {
    let spec = &dp.spec.service;
    Service {
        metadata: child_meta(dp, &ChildNames::of(dp).workload),
        spec: Some(ServiceSpec {
            type_: Some(spec.type_.as_str().to_owned()),
            selector: Some(selector_labels(dp)),
            ports: Some(vec![ServicePort {
                name: Some(PORT_NAME.to_owned()),
                port: spec.port,
                target_port: Some(IntOrString::String(PORT_NAME.to_owned())),
                node_port: match spec.type_ {
                    ServiceType::ClusterIP => None,
                    _ => spec.node_port,
                },
                protocol: Some("TCP".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pull prefix CI jobs use: `<svc>.<ns>.svc:<port>/<group>/dependency_proxy/containers`.
pub fn pull_url(dp: &DependencyProxy) -> String {
    format!(
        "{}.{}.svc:{}/{}/dependency_proxy/containers",
        ChildNames::of(dp).workload,
        dp.namespace().unwrap_or_else(|| "default".to_owned()),
        dp.spec.service.port,
        dp.spec.group
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{proxy, pv_proxy};

    #[test]
    fn cluster_ip_service_targets_the_named_port() {
        let svc = service(&pv_proxy());
        let spec = svc.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(port.port, 5000);
        assert_eq!(port.target_port, Some(IntOrString::String("http".into())));
        assert_eq!(port.node_port, None);
        assert_eq!(spec.selector.unwrap()["app.kubernetes.io/instance"], "acme");
    }

    #[test]
    fn node_port_is_passed_through() {
        let dp = proxy(serde_json::json!({"group": "acme",
            "service": {"type": "NodePort", "port": 80, "nodePort": 30500},
            "storage": {"objectStore": {"url": "s3://b/p"}}}));
        let port = service(&dp).spec.unwrap().ports.unwrap()[0].clone();
        assert_eq!((port.port, port.node_port), (80, Some(30500)));
        assert_eq!(pull_url(&dp), "acme.ci.svc:80/acme/dependency_proxy/containers");
    }

    #[test]
    fn pull_url_names_service_namespace_port_and_group() {
        assert_eq!(pull_url(&pv_proxy()), "acme.ci.svc:5000/acme/dependency_proxy/containers");
    }
}
