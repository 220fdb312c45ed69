//! Operator tests against a real control plane (kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok), started by tests/controlplane/run-tests.sh. Ignored in a plain
//! `cargo test`; run-tests.sh runs them with `--ignored`, and then they fail, never skip, when
//! something is missing.

mod support;

use std::time::Duration;

use dependency_proxy::config::{CONFIG_FILE_KEY, Config};
use dependency_proxy_operator::build::deployment::CONFIG_HASH_ANNOTATION;
use dependency_proxy_operator::crd::DependencyProxy;
use dependency_proxy_operator::reconcile::FIELD_MANAGER;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use support::*;

const PROXY_IMAGE: &str = "example.test/dependency-proxy:test";
const WAIT: Duration = Duration::from_secs(60);

/// A namespace with its own operator watching it.
struct Fixture {
    client: Client,
    ns: TestNamespace,
    operator: Operator,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        let client = admin_client().await;
        setup().await;
        let ns = TestNamespace::new(&client, prefix).await;
        let lease = format!("lease-{}", ns.name);
        let identity = format!("op-{}", ns.name);
        let operator = Operator::start(OperatorArgs {
            watch_namespace: &ns.name,
            lease_name: &lease,
            identity: &identity,
            proxy_image: PROXY_IMAGE,
        })
        .await;
        Self { client, ns, operator }
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns.name)
    }

    async fn create(&self, spec: serde_json::Value, name: &str) -> DependencyProxy {
        let dp: DependencyProxy = serde_json::from_value(json!({
            "apiVersion": "dependencyproxy.dev/v1alpha1", "kind": "DependencyProxy",
            "metadata": {"name": name}, "spec": spec,
        }))
        .expect("test resource");
        self.api::<DependencyProxy>().create(&PostParams::default(), &dp).await.expect("create DependencyProxy")
    }

    /// A PersistentVolume reserved for `<name>-cache` in this namespace, so the claim binds and
    /// the scheduler can place the pod.
    async fn volume_for(&self, name: &str, access_mode: &str) {
        let pv: PersistentVolume = serde_json::from_value(json!({
            "metadata": {"name": format!("pv-{}-{name}", self.ns.name)},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": [access_mode],
                "hostPath": {"path": format!("/tmp/dp-test-pv/{}/{name}", self.ns.name)},
                "claimRef": {"namespace": self.ns.name, "name": format!("{name}-cache")},
                "persistentVolumeReclaimPolicy": "Retain"
            }
        }))
        .expect("pv");
        Api::<PersistentVolume>::all(self.client.clone()).create(&PostParams::default(), &pv).await.expect("create pv");
    }

    async fn wait_condition(&self, name: &str, type_: &str, status: &str) -> DependencyProxy {
        let api = self.api::<DependencyProxy>();
        eventually(&format!("{name} {type_}={status}"), WAIT, || async {
            let dp = api.get(name).await.ok()?;
            let s = dp.status.as_ref()?;
            let matches = s.observed_generation == dp.metadata.generation
                && s.conditions.iter().any(|c| c.type_ == type_ && c.status == status);
            matches.then_some(dp)
        })
        .await
    }

    async fn deployment(&self, name: &str) -> Deployment {
        let api = self.api::<Deployment>();
        eventually(&format!("Deployment {name}"), WAIT, || async { api.get_opt(name).await.ok().flatten() }).await
    }

    async fn events(&self, name: &str) -> Vec<Event> {
        let lp = ListParams::default().fields(&format!("regarding.name={name}"));
        self.api::<Event>().list(&lp).await.expect("list events").items
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", self.ns.name.as_str()];
        all.extend_from_slice(args);
        kubectl(&all)
    }
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, dp: &DependencyProxy) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == dp.uid().unwrap() && o.kind == "DependencyProxy" && o.controller == Some(true))
}

fn applied_by_operator(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .any(|m| m.manager.as_deref() == Some(FIELD_MANAGER) && m.operation.as_deref() == Some("Apply"))
}

fn template_hash(d: &Deployment) -> String {
    d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().annotations.as_ref().unwrap()[CONFIG_HASH_ANNOTATION]
        .clone()
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn crd_is_accepted_by_the_real_apiserver() {
    let client = admin_client().await;
    setup().await;
    let crd = Api::<CustomResourceDefinition>::all(client)
        .get("dependencyproxies.dependencyproxy.dev")
        .await
        .expect("CRD installed");
    let conditions = crd.status.unwrap().conditions.unwrap();
    for type_ in ["Established", "NamesAccepted"] {
        assert!(conditions.iter().any(|c| c.type_ == type_ && c.status == "True"), "{type_}: {conditions:?}");
    }
    // A schema that is not structural or a CEL rule that does not compile would show here.
    assert!(!conditions.iter().any(|c| c.type_ == "NonStructuralSchema" && c.status == "True"), "{conditions:?}");
    let served = kubectl(&["get", "crd", "dependencyproxies.dependencyproxy.dev", "-o", "json"]);
    assert!(served.contains("x-kubernetes-validations"), "CEL rules were dropped: {served}");
    assert!(kubectl(&["api-resources", "--api-group=dependencyproxy.dev"]).contains("dp "));
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn apply_creates_owned_children_and_becomes_ready() {
    let f = Fixture::new("dp-apply").await;
    f.volume_for("acme", "ReadWriteOnce").await;
    let dp = f.create(json!({"group": "acme", "storage": {"persistentVolume": {"size": "1Gi"}}}), "acme").await;

    let cm =
        eventually("ConfigMap", WAIT, || async { f.api::<ConfigMap>().get_opt("acme-config").await.ok().flatten() })
            .await;
    let deployment = f.deployment("acme").await;
    let service =
        eventually("Service", WAIT, || async { f.api::<Service>().get_opt("acme").await.ok().flatten() }).await;
    let pvc = eventually("PVC", WAIT, || async {
        f.api::<PersistentVolumeClaim>().get_opt("acme-cache").await.ok().flatten()
    })
    .await;
    for (kind, meta) in [
        ("ConfigMap", &cm.metadata),
        ("Deployment", &deployment.metadata),
        ("Service", &service.metadata),
        ("PVC", &pvc.metadata),
    ] {
        assert!(owned_by(meta, &dp), "{kind} lacks the controller owner reference: {:?}", meta.owner_references);
        assert!(applied_by_operator(meta), "{kind} was not server-side applied by {FIELD_MANAGER}");
    }
    let config =
        Config::from_toml(&cm.data.as_ref().unwrap()[CONFIG_FILE_KEY]).expect("ConfigMap holds a proxy config");
    assert_eq!(config.groups, vec!["acme"]);
    let pod = deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some(PROXY_IMAGE));

    let ready = f.wait_condition("acme", "Ready", "True").await;
    let status = ready.status.unwrap();
    assert_eq!(
        status.url.as_deref(),
        Some(format!("acme.{}.svc:5000/acme/dependency_proxy/containers", f.ns.name).as_str())
    );
    assert_eq!((status.replicas, status.ready_replicas), (1, 1));
    assert!(status.conditions.iter().any(|c| c.type_ == "Degraded" && c.status == "False"));
    let events = f.events("acme").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("Created")), "no Created event: {events:?}");
    eventually("reconciles counted", WAIT, || async { (f.operator.reconciles().await > 0).then_some(()) }).await;
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn kubectl_scale_moves_the_deployment_and_columns_show() {
    let f = Fixture::new("dp-scale").await;
    f.create(json!({"group": "acme", "storage": {"objectStore": {"url": "s3://cache/acme"}}}), "acme").await;
    f.wait_condition("acme", "Ready", "True").await;

    f.kubectl(&["scale", "dp/acme", "--replicas=3"]);
    let api = f.api::<Deployment>();
    eventually("Deployment at 3 replicas", WAIT, || async {
        let d = api.get("acme").await.ok()?;
        (d.spec.as_ref()?.replicas == Some(3)).then_some(())
    })
    .await;
    let dp = f.wait_condition("acme", "Ready", "True").await;
    assert_eq!(dp.status.as_ref().unwrap().ready_replicas, 3);
    // The scale subresource reads status.replicas and the selector.
    let scale = f.api::<DependencyProxy>().get_scale("acme").await.expect("scale subresource");
    assert_eq!(scale.status.as_ref().unwrap().replicas, 3);
    assert_eq!(
        scale.status.unwrap().selector.as_deref(),
        Some("app.kubernetes.io/instance=acme,app.kubernetes.io/name=dependency-proxy")
    );

    let table = f.kubectl(&["get", "dp"]);
    let mut lines = table.lines();
    let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "GROUP", "READY", "REPLICAS", "URL", "AGE"], "{table}");
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..4], ["acme", "acme", "True", "3"], "{table}");
    assert_eq!(row[4], format!("acme.{}.svc:5000/acme/dependency_proxy/containers", f.ns.name));
    let events = f.events("acme").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("Scaled")), "no Scaled event: {events:?}");
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn hand_edits_are_restored_and_spec_changes_roll_out() {
    let f = Fixture::new("dp-drift").await;
    f.create(json!({"group": "acme", "storage": {"objectStore": {"url": "s3://cache/acme"}}}), "acme").await;
    f.wait_condition("acme", "Ready", "True").await;
    let before = f.deployment("acme").await;

    // A hand edit of a field the operator owns (as `kubectl edit` would do, with an update).
    f.kubectl(&["set", "image", "deployment/acme", "proxy=evil.example/not-the-proxy:1"]);
    f.kubectl(&["patch", "deployment", "acme", "--type=merge", "-p", r#"{"spec":{"replicas":5}}"#]);
    let api = f.api::<Deployment>();
    eventually("hand-edited Deployment restored", WAIT, || async {
        let d = api.get("acme").await.ok()?;
        let spec = d.spec.as_ref()?;
        let image = spec.template.spec.as_ref()?.containers[0].image.as_deref()?;
        (image == PROXY_IMAGE && spec.replicas == Some(1)).then_some(())
    })
    .await;

    // A spec change that alters the config: new hash, new ReplicaSet, Ready again.
    let old_hash = template_hash(&before);
    let patch = json!({"spec": {"upstream": {"url": "https://registry.example.com"}}});
    f.api::<DependencyProxy>().patch("acme", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let after = eventually("new config hash", WAIT, || async {
        let d = api.get("acme").await.ok()?;
        (template_hash(&d) != old_hash).then_some(d)
    })
    .await;
    let cm = f.api::<ConfigMap>().get("acme-config").await.unwrap();
    let config = Config::from_toml(&cm.data.unwrap()[CONFIG_FILE_KEY]).unwrap();
    assert_eq!(config.upstream.url.as_str(), "https://registry.example.com/");
    assert_eq!(template_hash(&after), dependency_proxy_operator::build::config::config_hash(&config.to_toml()));
    eventually("a second ReplicaSet (rollout)", WAIT, || async {
        let rs = f.api::<ReplicaSet>().list(&ListParams::default()).await.ok()?;
        (rs.items.len() >= 2).then_some(())
    })
    .await;
    f.wait_condition("acme", "Ready", "True").await;
    let events = f.events("acme").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("ConfigChanged")), "{events:?}");
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn deleting_the_resource_garbage_collects_its_children() {
    let f = Fixture::new("dp-delete").await;
    f.volume_for("acme", "ReadWriteOnce").await;
    f.create(json!({"group": "acme", "storage": {"persistentVolume": {"size": "1Gi"}}}), "acme").await;
    f.wait_condition("acme", "Ready", "True").await;

    f.kubectl(&["delete", "dp/acme", "--wait=true"]);
    eventually("children collected", Duration::from_secs(90), || async {
        let cm = f.api::<ConfigMap>().get_opt("acme-config").await.ok()?;
        let d = f.api::<Deployment>().get_opt("acme").await.ok()?;
        let s = f.api::<Service>().get_opt("acme").await.ok()?;
        let p = f.api::<PersistentVolumeClaim>().get_opt("acme-cache").await.ok()?;
        (cm.is_none() && d.is_none() && s.is_none() && p.is_none()).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn invalid_specs_are_rejected_or_degraded() {
    let f = Fixture::new("dp-invalid").await;
    let api = f.api::<DependencyProxy>();
    let try_create = |spec: serde_json::Value, name: &'static str| {
        let api = api.clone();
        async move {
            let dp: DependencyProxy = serde_json::from_value(json!({
                "apiVersion": "dependencyproxy.dev/v1alpha1", "kind": "DependencyProxy",
                "metadata": {"name": name}, "spec": spec,
            }))
            .unwrap();
            api.create(&PostParams::default(), &dp).await
        }
    };
    let rejected = |result: Result<DependencyProxy, kube::Error>, needle: &str| match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains(needle), "{needle:?} not in {:?}", status.message);
        }
        other => panic!("expected a 422 mentioning {needle:?}, got {other:?}"),
    };
    rejected(
        try_create(json!({"group": "acme", "storage": {"persistentVolume": {"size": "1Gi"}, "objectStore": {"url": "s3://b/p"}}}), "both").await,
        "exactly one of persistentVolume or objectStore",
    );
    rejected(
        try_create(json!({"group": "acme", "storage": {}}), "neither").await,
        "exactly one of persistentVolume or objectStore",
    );
    rejected(
        try_create(json!({"group": "Not/A Group", "storage": {"objectStore": {"url": "s3://b/p"}}}), "badgroup").await,
        "group must be one path component",
    );
    rejected(
        try_create(json!({"group": "acme", "storage": {"persistentVolume": {"size": "lots"}}}), "badsize").await,
        "quantity",
    );

    // Admission cannot know that ReadWriteOnce cannot be shared; the operator says so.
    try_create(json!({"group": "acme", "replicas": 2, "storage": {"persistentVolume": {"size": "1Gi"}}}), "rwo")
        .await
        .expect("admitted");
    let dp = f.wait_condition("rwo", "Degraded", "True").await;
    let degraded = dp.status.unwrap().conditions.into_iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(degraded.message.contains("ReadWriteOnce"), "{}", degraded.message);
    assert!(f.api::<Deployment>().get_opt("rwo").await.unwrap().is_none(), "nothing is applied for an invalid spec");
    let events = f.events("rwo").await;
    assert!(events.iter().any(|e| e.reason.as_deref() == Some("InvalidSpec") && e.type_.as_deref() == Some("Warning")));

    // Fixing the spec clears Degraded.
    let patch = json!({"spec": {"replicas": 1}});
    api.patch("rwo", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    f.wait_condition("rwo", "Degraded", "False").await;
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn the_charts_service_account_has_least_privilege() {
    let kubeconfig = setup().await;
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    let sa = Client::try_from(config).unwrap();
    let reviews: Api<SelfSubjectAccessReview> = Api::all(sa);
    let can = |verb: &'static str, group: &'static str, resource: &'static str, ns: &'static str| {
        let reviews = reviews.clone();
        async move {
            let review: SelfSubjectAccessReview = serde_json::from_value(json!({"spec": {"resourceAttributes": {
                "verb": verb, "group": group, "resource": resource, "namespace": ns}}}))
            .unwrap();
            reviews.create(&PostParams::default(), &review).await.unwrap().status.unwrap().allowed
        }
    };
    // What the operator needs (the other tests prove it is enough: they all run as this account).
    for (verb, group, resource) in [
        ("watch", "dependencyproxy.dev", "dependencyproxies"),
        ("patch", "dependencyproxy.dev", "dependencyproxies/status"),
        ("patch", "apps", "deployments"),
        ("create", "", "configmaps"),
        ("create", "events.k8s.io", "events"),
    ] {
        assert!(can(verb, group, resource, "anywhere").await, "cannot {verb} {resource}");
    }
    assert!(can("update", "coordination.k8s.io", "leases", OPERATOR_NAMESPACE).await);
    // What it must not be able to do.
    for (verb, group, resource) in [
        ("get", "", "secrets"),
        ("list", "", "secrets"),
        ("delete", "apps", "deployments"),
        ("update", "apps", "deployments"),
        ("delete", "", "configmaps"),
        ("create", "", "pods"),
        ("patch", "dependencyproxy.dev", "dependencyproxies"),
        ("delete", "dependencyproxy.dev", "dependencyproxies"),
        ("create", "rbac.authorization.k8s.io", "clusterroles"),
    ] {
        assert!(!can(verb, group, resource, "anywhere").await, "may {verb} {group}/{resource}");
    }
    assert!(!can("update", "coordination.k8s.io", "leases", "kube-system").await, "leases outside its namespace");
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn one_of_two_operators_leads_and_the_other_takes_over() {
    let client = admin_client().await;
    setup().await;
    let ns = TestNamespace::new(&client, "dp-leader").await;
    let lease_name = format!("lease-{}", ns.name);
    let start = |identity: &'static str| {
        let (ns, lease) = (ns.name.clone(), lease_name.clone());
        async move {
            Operator::start(OperatorArgs {
                watch_namespace: &ns,
                lease_name: &lease,
                identity,
                proxy_image: PROXY_IMAGE,
            })
            .await
        }
    };
    let mut first = start("first").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let holder = || async {
        leases.get_opt(&lease_name).await.ok().flatten().and_then(|l| l.spec?.holder_identity).filter(|h| !h.is_empty())
    };
    assert_eq!(eventually("a leader", WAIT, holder).await, "first");
    let second = start("second").await;

    let dps: Api<DependencyProxy> = Api::namespaced(client.clone(), &ns.name);
    let create = |name: &'static str| {
        let dps = dps.clone();
        async move {
            let dp: DependencyProxy = serde_json::from_value(json!({
                "apiVersion": "dependencyproxy.dev/v1alpha1", "kind": "DependencyProxy", "metadata": {"name": name},
                "spec": {"group": name, "storage": {"objectStore": {"url": "s3://cache/x"}}}}))
            .unwrap();
            dps.create(&PostParams::default(), &dp).await.unwrap();
        }
    };
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    create("one").await;
    eventually("leader reconciles", WAIT, || async { deployments.get_opt("one").await.ok().flatten() }).await;
    // The metric counts finished reconciles; the Deployment appears while one is under way.
    eventually("leader counts its reconcile", WAIT, || async { (first.reconciles().await > 0).then_some(()) }).await;
    assert_eq!(second.reconciles().await, 0, "the standby reconciled");
    assert!(first.metrics().await.contains("dependency_proxy_operator_leader 1"));
    assert!(second.metrics().await.contains("dependency_proxy_operator_leader 0"));

    first.stop();
    eventually("the standby takes over", WAIT, || async { holder().await.filter(|h| h == "second") }).await;
    create("two").await;
    eventually("new leader reconciles", WAIT, || async { deployments.get_opt("two").await.ok().flatten() }).await;
    eventually("new leader counts its reconcile", WAIT, || async { (second.reconciles().await > 0).then_some(()) })
        .await;
    assert!(second.metrics().await.contains("dependency_proxy_operator_leader 1"));
    let lease = leases.get(&lease_name).await.unwrap();
    assert!(lease.spec.unwrap().lease_transitions.unwrap_or(0) >= 1);

    // A leader that dies without releasing (SIGKILL): the standby waits for the Lease to expire.
    let third = start("third").await;
    let mut second = second;
    second.kill();
    eventually("takeover after expiry", WAIT, || async { holder().await.filter(|h| h == "third") }).await;
    create("three").await;
    eventually("third leader reconciles", WAIT, || async { deployments.get_opt("three").await.ok().flatten() }).await;
    eventually("third counts its reconcile", WAIT, || async { (third.reconciles().await > 0).then_some(()) }).await;
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn chart_lints_and_its_manifests_pass_server_side_dry_run() {
    setup().await;
    run("helm", &["lint", "--strict", "charts/dependency-proxy-operator"], None);
    let rendered = run(
        "helm",
        &["template", "dry", "charts/dependency-proxy-operator", "--namespace", OPERATOR_NAMESPACE, "--include-crds"],
        None,
    );
    let out = run("kubectl", &["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
    for kind in [
        "serviceaccount",
        "clusterrole",
        "clusterrolebinding",
        "role",
        "rolebinding",
        "deployment",
        "service",
        "customresourcedefinition",
    ] {
        let applied = out.lines().any(|l| {
            l.strip_prefix(kind).is_some_and(|rest| rest.starts_with('/') || rest.starts_with('.'))
                && l.ends_with("(server dry run)")
        });
        assert!(applied, "{kind} missing from dry run:\n{out}");
    }
    // The examples are valid resources too.
    for example in ["examples/dependencyproxy-pv.yaml", "examples/dependencyproxy-s3.yaml"] {
        kubectl(&["apply", "--dry-run=server", "-n", OPERATOR_NAMESPACE, "-f", example]);
    }
}

#[tokio::test]
#[ignore = "needs the control plane: run tests/controlplane/run-tests.sh"]
async fn generated_config_starts_the_real_proxy_and_an_image_pulls_through() {
    let (Some(proxy_bin), Some(upstream)) =
        (std::env::var_os("DEPENDENCY_PROXY_BIN"), std::env::var("DP_TEST_UPSTREAM_URL").ok())
    else {
        eprintln!(
            "\n!!!!!!!! SKIPPED generated_config_starts_the_real_proxy_and_an_image_pulls_through:\n\
             !!!!!!!! set DEPENDENCY_PROXY_BIN (the proxy binary) and DP_TEST_UPSTREAM_URL (a writable\n\
             !!!!!!!! registry on loopback, e.g. Debian's docker-registry at http://127.0.0.1:5001).\n"
        );
        return;
    };
    let upstream = upstream.trim_end_matches('/').to_owned();
    let http = reqwest::Client::new();
    // A fresh image in the upstream, so the pull cannot be served by anything but the upstream.
    let repository = format!("dp-operator-test/hello-{}", std::process::id());
    let pushed = push_synthetic_image(&http, &upstream, &repository, "v1").await;

    let f = Fixture::new("dp-proxy").await;
    f.create(
        json!({"group": "acme", "upstream": {"url": upstream}, "storage": {"persistentVolume": {"size": "1Gi"}}}),
        "acme",
    )
    .await;
    let cm =
        eventually("ConfigMap", WAIT, || async { f.api::<ConfigMap>().get_opt("acme-config").await.ok().flatten() })
            .await;
    let text = cm.data.unwrap()[CONFIG_FILE_KEY].clone();

    // What the pod's mounts provide (the cache volume, the spool emptyDir) and its port are moved
    // to local paths; everything else is the operator's text as read back from the apiserver.
    let mut config = Config::from_toml(&text).expect("the proxy's own parser accepts the ConfigMap");
    assert_eq!(config.storage.url, "file:///var/cache/dependency-proxy");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    config.storage.url = format!("file://{}", dir.path().join("cache").display());
    config.storage.spool_dir = Some(dir.path().join("spool"));
    std::fs::create_dir_all(dir.path().join("cache")).unwrap();
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config.to_toml()).unwrap();

    let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
    let mut proxy = std::process::Command::new(&proxy_bin)
        .args(["--config", path.to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start the proxy binary");
    let base = format!("http://127.0.0.1:{port}");
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        eventually("proxy /readyz", Duration::from_secs(30), || async {
            http.get(format!("{base}/readyz")).send().await.ok().filter(|r| r.status().is_success())
        })
        .await;
        let prefix = format!("{base}/v2/acme/dependency_proxy/containers/{repository}");
        let manifest = http
            .get(format!("{prefix}/manifests/v1"))
            .header("Accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .expect("manifest request");
        assert!(manifest.status().is_success(), "manifest through the proxy: {}", manifest.status());
        let bytes = manifest.bytes().await.unwrap();
        assert_eq!(format!("sha256:{}", hex_sha256(&bytes)), pushed.manifest_digest, "manifest changed on the way");
        for digest in &pushed.blob_digests {
            let blob = http.get(format!("{prefix}/blobs/{digest}")).send().await.unwrap();
            assert!(blob.status().is_success(), "blob {digest}: {}", blob.status());
            let bytes = blob.bytes().await.unwrap();
            assert_eq!(&format!("sha256:{}", hex_sha256(&bytes)), digest, "blob content does not match its digest");
        }
    })
    .await;
    let _ = proxy.kill();
    let _ = proxy.wait();
    if outcome.is_err() {
        panic!(
            "pull through the proxy timed out; proxy log:\n{}",
            std::fs::read_to_string(dir.path().join("proxy.log")).unwrap_or_default()
        );
    }
}

struct Pushed {
    manifest_digest: String,
    blob_digests: Vec<String>,
}

/// Pushes a one-layer OCI image with random content through the distribution push API.
async fn push_synthetic_image(http: &reqwest::Client, registry: &str, repository: &str, tag: &str) -> Pushed {
    let seed = format!("{}-{:?}", std::process::id(), std::time::SystemTime::now());
    let layer: Vec<u8> =
        (0..64 * 1024).map(|i| hex_sha256(format!("{seed}{}", i / 32).as_bytes()).as_bytes()[i % 32]).collect();
    let layer_digest = format!("sha256:{}", hex_sha256(&layer));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}, "config": {}
    }))
    .unwrap();
    let config_digest = format!("sha256:{}", hex_sha256(&config));
    for (digest, bytes) in [(&layer_digest, &layer), (&config_digest, &config)] {
        // Start an upload session, then finish it in one PUT (distribution 2.8 has no single-POST upload).
        let session =
            http.post(format!("{registry}/v2/{repository}/blobs/uploads/")).send().await.expect("upstream reachable");
        assert_eq!(session.status().as_u16(), 202, "blob upload session at the upstream");
        let location = session.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') { format!("{registry}{location}") } else { location };
        let separator = if location.contains('?') { '&' } else { '?' };
        let response = http
            .put(format!("{location}{separator}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(bytes.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 201, "blob upload to the upstream");
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}]
    }))
    .unwrap();
    let response = http
        .put(format!("{registry}/v2/{repository}/manifests/{tag}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201, "manifest push to the upstream");
    Pushed {
        manifest_digest: format!("sha256:{}", hex_sha256(&manifest)),
        blob_digests: vec![config_digest, layer_digest],
    }
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
