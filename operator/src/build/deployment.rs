//! The proxy Deployment: hardened pod, probes, secrets as env vars, config-hash rollouts.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::config::{CACHE_DIR, CONFIG_DIR, SPOOL_DIR, TLS_DIR};
use super::{ChildNames, child_meta, labels, selector_labels};
use crate::crd::{AccessMode, DependencyProxy, PROXY_PORT};
use dependency_proxy::config::CONFIG_FILE_KEY;

/// Pod-template annotation with the config hash: a new value rolls the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "dependencyproxy.dev/config-hash";
/// Name of the proxy container.
pub const CONTAINER_NAME: &str = "proxy";
/// Name of the container port, used by the probes and the Service.
pub const PORT_NAME: &str = "http";
/// An unprivileged uid/gid (the distroless "nonroot" user the image runs as).
pub const RUN_AS: i64 = 65532;
/// Env vars the proxy reads the upstream account from.
pub const ENV_UPSTREAM_USERNAME: &str = "DP_UPSTREAM_USERNAME";
pub const ENV_UPSTREAM_PASSWORD: &str = "DP_UPSTREAM_PASSWORD";
/// The S3 SDK's standard variables.
pub const ENV_AWS_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_AWS_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// What a Deployment needs besides the resource: the hash of the rendered config, and the image
/// used when the spec names none.
#[derive(Debug, Clone)]
pub struct DeploymentInputs<'a> {
    pub config_hash: &'a str,
    pub default_image: &'a str,
}

pub fn deployment(dp: &DependencyProxy, inputs: &DeploymentInputs<'_>) -> Deployment {
    let names = ChildNames::of(dp);
    let spec = &dp.spec;
    let scheme = if spec.tls.is_some() { "HTTPS" } else { "HTTP" };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(PORT_NAME.to_owned()),
            scheme: Some(scheme.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };

    let mut mounts = vec![
        mount("config", CONFIG_DIR, true),
        mount("spool", SPOOL_DIR, false),
        // Libraries write temporary files; the root filesystem is read-only.
        mount("tmp", "/tmp", false),
    ];
    let mut volumes = vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: names.config_map.clone(),
                items: Some(vec![k8s_openapi::api::core::v1::KeyToPath {
                    key: CONFIG_FILE_KEY.into(),
                    path: CONFIG_FILE_KEY.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        empty_dir("spool"),
        empty_dir("tmp"),
    ];
    if spec.storage.persistent_volume.is_some() {
        mounts.push(mount("cache", CACHE_DIR, false));
        volumes.push(Volume {
            name: "cache".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: names.pvc.clone(),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    if let Some(tls) = &spec.tls {
        mounts.push(mount("tls", TLS_DIR, true));
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource { secret_name: Some(tls.secret_ref.name.clone()), ..Default::default() }),
            ..Default::default()
        });
    }

    let mut env = Vec::new();
    if let Some(secret) = &spec.upstream.credentials_secret_ref {
        env.push(secret_env(ENV_UPSTREAM_USERNAME, &secret.name, "username"));
        env.push(secret_env(ENV_UPSTREAM_PASSWORD, &secret.name, "password"));
    }
    if let Some(secret) = spec.storage.object_store.as_ref().and_then(|s| s.secret_ref.as_ref()) {
        env.push(secret_env(ENV_AWS_ACCESS_KEY_ID, &secret.name, ENV_AWS_ACCESS_KEY_ID));
        env.push(secret_env(ENV_AWS_SECRET_ACCESS_KEY, &secret.name, ENV_AWS_SECRET_ACCESS_KEY));
    }

    let container = Container {
        name: CONTAINER_NAME.into(),
        image: Some(spec.image.clone().unwrap_or_else(|| inputs.default_image.to_owned())),
        args: Some(vec!["--config".into(), format!("{CONFIG_DIR}/{CONFIG_FILE_KEY}")]),
        ports: Some(vec![ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: i32::from(PROXY_PORT),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        resources: spec.resources.clone(),
        volume_mounts: Some(mounts),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), add: None }),
            ..Default::default()
        }),
        ..Default::default()
    };

    Deployment {
        metadata: child_meta(dp, &names.workload),
        spec: Some(DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: LabelSelector { match_labels: Some(selector_labels(dp)), match_expressions: None },
            strategy: Some(strategy(dp)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(dp)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_owned(),
                        inputs.config_hash.to_owned(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    // The proxy talks to registries, not to the Kubernetes API.
                    automount_service_account_token: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        // Makes the volume writable for the unprivileged user.
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            localhost_profile: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A rolling update that never runs two pods on a single-writer volume: with ReadWriteOnce the
/// old pod must go before the new one can mount the claim (on another node it never could), so
/// surge is 0; with shared storage a new pod comes up before an old one leaves.
fn strategy(dp: &DependencyProxy) -> DeploymentStrategy {
    let exclusive_volume = dp
        .spec
        .storage
        .persistent_volume
        .as_ref()
        .is_some_and(|pv| !pv.access_modes.contains(&AccessMode::ReadWriteMany));
    let (surge, unavailable) = if exclusive_volume { (0, 1) } else { (1, 0) };
    DeploymentStrategy {
        type_: Some("RollingUpdate".into()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(IntOrString::Int(surge)),
            max_unavailable: Some(IntOrString::Int(unavailable)),
        }),
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume { name: name.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() }
}

fn secret_env(var: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: var.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: None }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::{proxy, pv_proxy, s3_proxy};

    const INPUTS: DeploymentInputs<'static> =
        DeploymentInputs { config_hash: "abc123", default_image: "example/dependency-proxy:1" };

    fn pod(d: &Deployment) -> (&PodTemplateSpec, &Container) {
        let template = &d.spec.as_ref().unwrap().template;
        (template, &template.spec.as_ref().unwrap().containers[0])
    }

    #[test]
    fn pod_is_hardened_and_probed() {
        let d = deployment(&pv_proxy(), &INPUTS);
        let (template, c) = pod(&d);
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let ready = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(ready.path.as_deref(), Some("/readyz"));
        let live = c.liveness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(live.path.as_deref(), Some("/healthz"));
        assert_eq!(c.args.as_ref().unwrap(), &["--config", "/etc/dependency-proxy/config.toml"]);
        assert_eq!(c.image.as_deref(), Some("example/dependency-proxy:1"));
        assert_eq!(template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION], "abc123");
    }

    #[test]
    fn pv_is_mounted_as_the_cache_and_rollout_never_doubles_a_rwo_writer() {
        let d = deployment(&pv_proxy(), &INPUTS);
        let (template, c) = pod(&d);
        let volumes = template.spec.as_ref().unwrap().volumes.as_ref().unwrap();
        let cache = volumes.iter().find(|v| v.name == "cache").unwrap();
        assert_eq!(cache.persistent_volume_claim.as_ref().unwrap().claim_name, "acme-cache");
        let mounts = c.volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().any(|m| m.mount_path == CACHE_DIR));
        assert!(mounts.iter().any(|m| m.mount_path == SPOOL_DIR && m.read_only.is_none()));
        let rolling = d.spec.unwrap().strategy.unwrap().rolling_update.unwrap();
        assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));
    }

    #[test]
    fn object_store_pods_get_secrets_as_env_and_surge() {
        let dp = s3_proxy();
        let d = deployment(&dp, &INPUTS);
        let (template, c) = pod(&d);
        let env: Vec<_> = c
            .env
            .as_ref()
            .unwrap()
            .iter()
            .map(|e| {
                let r = e.value_from.as_ref().unwrap().secret_key_ref.as_ref().unwrap();
                (e.name.as_str(), r.name.as_str(), r.key.as_str())
            })
            .collect();
        assert_eq!(
            env,
            [
                ("DP_UPSTREAM_USERNAME", "hub", "username"),
                ("DP_UPSTREAM_PASSWORD", "hub", "password"),
                ("AWS_ACCESS_KEY_ID", "s3-keys", "AWS_ACCESS_KEY_ID"),
                ("AWS_SECRET_ACCESS_KEY", "s3-keys", "AWS_SECRET_ACCESS_KEY"),
            ]
        );
        assert!(template.spec.as_ref().unwrap().volumes.as_ref().unwrap().iter().all(|v| v.name != "cache"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.strategy.unwrap().rolling_update.unwrap().max_surge, Some(IntOrString::Int(1)));
    }

    #[test]
    fn tls_mounts_the_secret_and_probes_over_https() {
        let dp = proxy(serde_json::json!({"group": "acme", "image": "mine:2",
            "tls": {"secretRef": {"name": "acme-tls"}},
            "storage": {"objectStore": {"url": "s3://b/p"}}}));
        let d = deployment(&dp, &INPUTS);
        let (template, c) = pod(&d);
        assert_eq!(c.image.as_deref(), Some("mine:2"));
        let tls = template.spec.as_ref().unwrap().volumes.as_ref().unwrap().iter().find(|v| v.name == "tls").unwrap();
        assert_eq!(tls.secret.as_ref().unwrap().secret_name.as_deref(), Some("acme-tls"));
        let probe = c.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(probe.scheme.as_deref(), Some("HTTPS"));
        assert!(c.env.is_none());
    }
}
