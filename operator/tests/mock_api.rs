//! Error paths a real apiserver will not produce on demand (500s, write conflicts), driven through
//! the reconciler and the leader elector with a tower-test mock in place of the apiserver.

use std::sync::Arc;
use std::time::Duration;

use dependency_proxy_operator::crd::DependencyProxy;
use dependency_proxy_operator::error::Error;
use dependency_proxy_operator::leader::{LeaderElector, LeaseConfig};
use dependency_proxy_operator::metrics::Metrics;
use dependency_proxy_operator::reconcile::{self, Context};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tower_test::mock;

/// One request the mock saw.
#[derive(Debug)]
struct Seen {
    method: Method,
    path: String,
    body: Value,
}

/// A failure to answer with: (method, path suffix, status code).
type Failure = (Method, &'static str, u16);

fn status_body(code: u16, reason: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": format!("mock says {code}"), "reason": reason, "code": code
    }))
    .unwrap()
}

fn dp_json() -> Value {
    json!({
        "apiVersion": "dependencyproxy.dev/v1alpha1", "kind": "DependencyProxy",
        "metadata": {"name": "acme", "namespace": "ci", "uid": "8f7a1c00-0000-4000-8000-000000000001", "generation": 1},
        "spec": {"group": "acme", "storage": {"persistentVolume": {"size": "1Gi"}}}
    })
}

/// Answers like an apiserver: writes echo their body, GETs of Deployments and Leases are 404,
/// except for the configured failures. Returns everything it saw once the client is dropped.
fn serve(
    mut handle: mock::Handle<Request<Body>, Response<Body>>,
    failures: Vec<Failure>,
    lease: Option<Value>,
) -> tokio::task::JoinHandle<Vec<Seen>> {
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path().to_owned();
            let failure = failures.iter().find(|(m, suffix, _)| *m == parts.method && path.ends_with(suffix));
            let (code, reply) = if let Some((_, _, code)) = failure {
                let reason = if *code == 409 { "Conflict" } else { "InternalError" };
                (*code, status_body(*code, reason))
            } else if parts.method == Method::GET {
                match (&lease, path.contains("/leases/")) {
                    (Some(lease), true) => (200, serde_json::to_vec(lease).unwrap()),
                    _ => (404, status_body(404, "NotFound")),
                }
            } else if path.ends_with("/status") {
                let mut dp = dp_json();
                dp["status"] = body["status"].clone();
                (200, serde_json::to_vec(&dp).unwrap())
            } else {
                (200, bytes.to_vec())
            };
            seen.push(Seen { method: parts.method, path, body });
            respond.send_response(
                Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", "application/json")
                    .body(Body::from(reply))
                    .unwrap(),
            );
        }
        seen
    })
}

fn context(client: Client) -> Arc<Context> {
    Arc::new(Context::new(client, Arc::new(Metrics::default()), "example/proxy:1".into(), "test".into()))
}

fn dp() -> Arc<DependencyProxy> {
    Arc::new(serde_json::from_value(dp_json()).unwrap())
}

fn degraded(seen: &[Seen]) -> Value {
    let patch = seen
        .iter()
        .find(|s| s.method == Method::PATCH && s.path.ends_with("/dependencyproxies/acme/status"))
        .expect("a status patch");
    patch.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Degraded")
        .expect("a Degraded condition")
        .clone()
}

#[tokio::test]
async fn apiserver_500_on_apply_fails_the_reconcile_and_shows_in_degraded() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = serve(handle, vec![(Method::PATCH, "/configmaps/acme-config", 500)], None);
    let ctx = context(Client::new(service, "default"));

    let result = reconcile::reconcile(dp(), ctx.clone()).await;
    let Err(Error::Apply { kind: "ConfigMap", name, source }) = &result else {
        panic!("expected a ConfigMap apply error, got {result:?}");
    };
    assert_eq!(name, "acme-config");
    assert!(matches!(source, kube::Error::Api(s) if s.code == 500), "{source:?}");
    let metrics = ctx.metrics.encode();
    assert!(metrics.contains(r#"dependency_proxy_operator_reconcile_errors_total{kind="apply"} 1"#), "{metrics}");

    // Backoff grows with consecutive failures of the same resource.
    let error = result.unwrap_err();
    assert_eq!(reconcile::error_policy(dp(), &error, ctx.clone()), Action::requeue(Duration::from_secs(1)));
    assert_eq!(reconcile::error_policy(dp(), &error, ctx.clone()), Action::requeue(Duration::from_secs(2)));
    drop(ctx);

    let seen = server.await.unwrap();
    let condition = degraded(&seen);
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "ReconcileFailed");
    assert!(condition["message"].as_str().unwrap().contains("applying ConfigMap acme-config"), "{condition}");
    let event = seen.iter().find(|s| s.path.ends_with("/events")).expect("a Warning event");
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["reason"], "ReconcileFailed");
    // Nothing after the failed write was attempted.
    assert!(!seen.iter().any(|s| s.path.contains("/deployments")), "{seen:?}");
}

#[tokio::test]
async fn conflict_on_the_deployment_is_an_error_not_a_panic() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = serve(handle, vec![(Method::PATCH, "/deployments/acme", 409)], None);
    let ctx = context(Client::new(service, "default"));

    let result = reconcile::reconcile(dp(), ctx.clone()).await;
    assert!(
        matches!(&result, Err(Error::Apply { kind: "Deployment", source: kube::Error::Api(s), .. }) if s.code == 409),
        "{result:?}"
    );
    drop(ctx);
    let seen = server.await.unwrap();
    // ConfigMap and PVC were applied before; the Service after the Deployment was not.
    assert!(seen.iter().any(|s| s.path.ends_with("/configmaps/acme-config")));
    assert!(seen.iter().any(|s| s.path.ends_with("/persistentvolumeclaims/acme-cache")));
    assert!(!seen.iter().any(|s| s.path.contains("/services/")));
    assert_eq!(degraded(&seen)["reason"], "ReconcileFailed");
}

#[tokio::test]
async fn status_write_failure_is_reported_as_a_status_error() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = serve(handle, vec![(Method::PATCH, "/dependencyproxies/acme/status", 503)], None);
    let ctx = context(Client::new(service, "default"));
    let result = reconcile::reconcile(dp(), ctx.clone()).await;
    assert!(matches!(&result, Err(Error::Status(kube::Error::Api(s))) if s.code == 503), "{result:?}");
    drop(ctx);
    server.await.unwrap();
}

fn elector(client: Client) -> LeaderElector {
    LeaderElector::new(
        client,
        LeaseConfig {
            namespace: "dp-system".into(),
            name: "op".into(),
            identity: "me".into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(1),
            renew_deadline: Duration::from_secs(10),
        },
    )
}

fn expired_lease() -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "op", "namespace": "dp-system", "resourceVersion": "42"},
        "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15, "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 3}
    })
}

#[tokio::test]
async fn losing_the_race_for_an_expired_lease_is_not_leadership() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = serve(handle, vec![(Method::PUT, "/leases/op", 409)], Some(expired_lease()));
    let elector = elector(Client::new(service, "default"));
    assert!(!elector.try_acquire_or_renew().await.expect("a 409 is a lost race, not an error"));
    drop(elector);
    let seen = server.await.unwrap();
    let put = seen.iter().find(|s| s.method == Method::PUT).expect("a takeover attempt");
    // The takeover carried the resourceVersion it read, which is what makes the 409 possible.
    assert_eq!(put.body["metadata"]["resourceVersion"], "42");
    assert_eq!(put.body["spec"]["holderIdentity"], "me");
    assert_eq!(put.body["spec"]["leaseTransitions"], 4);
}

#[tokio::test]
async fn lease_5xx_is_an_error() {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let server = serve(handle, vec![(Method::PUT, "/leases/op", 500)], Some(expired_lease()));
    let elector = elector(Client::new(service, "default"));
    let err = elector.try_acquire_or_renew().await.expect_err("a 500 is an error");
    assert!(matches!(err, kube::Error::Api(s) if s.code == 500));
    drop(elector);
    server.await.unwrap();
}
