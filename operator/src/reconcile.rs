//! The reconciler: applies a resource's children with server-side apply, reports status and
//! events, and runs the controller that watches resources and children.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Future, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::build::deployment::{CONFIG_HASH_ANNOTATION, DeploymentInputs, deployment};
use crate::build::{ChildNames, config, configmap, pvc, service};
use crate::crd::{API_GROUP, API_VERSION, DependencyProxy};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::status::{self, Outcome, Rollout, reason};
use crate::validate;

/// The server-side-apply field manager: owns every field the operator sets.
pub const FIELD_MANAGER: &str = "dependency-proxy-operator";
/// How often a healthy resource is reconciled anyway (children are watched; this is a safety net).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Backoff bounds for failed reconciles.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);

/// Event reasons.
pub mod event {
    pub const CREATED: &str = "Created";
    pub const CONFIG_CHANGED: &str = "ConfigChanged";
    pub const SCALED: &str = "Scaled";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
}

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// Proxy image for resources that name none.
    pub default_image: String,
    /// Consecutive failures per resource, for the backoff.
    failures: Mutex<HashMap<ObjectRef<DependencyProxy>, u32>>,
}

impl Context {
    pub fn new(client: Client, metrics: Arc<Metrics>, default_image: String, instance: String) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.to_owned(), instance: Some(instance) };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            default_image,
            failures: Mutex::default(),
        }
    }
}

/// Backoff after `failures` consecutive failures: doubling from one second, capped.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    (BACKOFF_MIN * 2u32.pow(exp)).min(BACKOFF_MAX)
}

/// One reconcile, with metrics and failure reporting around the real work.
pub async fn reconcile(dp: Arc<DependencyProxy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let start = Instant::now();
    let result = apply_all(&dp, &ctx).await;
    match &result {
        Ok((_, invalid)) => {
            ctx.metrics.observe(if *invalid { "invalid" } else { "applied" }, None, start.elapsed());
            ctx.failures.lock().expect("failure map lock").remove(&ObjectRef::from_obj(&*dp));
        }
        Err(e) => {
            ctx.metrics.observe("error", Some(e.kind()), start.elapsed());
            tracing::warn!(resource = %status::describe(&dp), error = %e, "reconcile failed");
            report_failure(&dp, &ctx, e).await;
        }
    }
    result.map(|(action, _)| action)
}

/// The controller's error policy: requeue with a per-resource exponential backoff.
pub fn error_policy(dp: Arc<DependencyProxy>, _error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures.lock().expect("failure map lock");
    let count = failures.entry(ObjectRef::from_obj(&*dp)).or_insert(0);
    *count += 1;
    Action::requeue(backoff(*count))
}

/// Applies everything; returns the next action and whether the spec was invalid.
async fn apply_all(dp: &DependencyProxy, ctx: &Context) -> Result<(Action, bool), Error> {
    let ns = dp.namespace().ok_or(Error::MissingMetadata("namespace"))?;
    if dp.uid().is_none() {
        return Err(Error::MissingMetadata("uid"));
    }
    let config = match validate::check(&dp.spec).and_then(|()| config::proxy_config(&dp.spec)) {
        Ok(config) => config,
        Err(invalid) => {
            let message = invalid.to_string();
            tracing::info!(resource = %status::describe(dp), %message, "invalid spec");
            if !status::degraded_with(dp, reason::INVALID_SPEC, &message) {
                publish(ctx, dp, EventType::Warning, event::INVALID_SPEC, message.clone()).await;
            }
            patch_status(ctx, dp, &Outcome::InvalidSpec(message)).await?;
            // Nothing to retry: only a spec change can help, and it triggers a reconcile.
            return Ok((Action::await_change(), true));
        }
    };
    let rendered = config.to_toml();
    let hash = config::config_hash(&rendered);
    let names = ChildNames::of(dp);

    apply(&ctx.client, &ns, &configmap::config_map(dp, &rendered)).await?;
    if let Some(claim) = pvc::pvc(dp) {
        apply::<PersistentVolumeClaim>(&ctx.client, &ns, &claim).await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let before = deployments.get_opt(&names.workload).await.map_err(|source| Error::Read {
        kind: "Deployment",
        name: names.workload.clone(),
        source,
    })?;
    let inputs = DeploymentInputs { config_hash: &hash, default_image: &ctx.default_image };
    let after = apply(&ctx.client, &ns, &deployment(dp, &inputs)).await?;
    apply::<Service>(&ctx.client, &ns, &service::service(dp)).await?;

    for (reason, note) in changes(before.as_ref(), &after) {
        publish(ctx, dp, EventType::Normal, reason, note).await;
    }
    patch_status(ctx, dp, &Outcome::Applied(Rollout::of(&after))).await?;
    Ok((Action::requeue(RESYNC), false))
}

/// The notable differences between the Deployment before and after an apply, as events.
pub fn changes(before: Option<&Deployment>, after: &Deployment) -> Vec<(&'static str, String)> {
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned())
    };
    let replicas = |d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas);
    let Some(before) = before else {
        return vec![(
            event::CREATED,
            format!("created Deployment {} and its ConfigMap and Service", after.name_any()),
        )];
    };
    let mut out = Vec::new();
    if hash(before) != hash(after) {
        out.push((event::CONFIG_CHANGED, "proxy configuration changed; rolling the pods".to_owned()));
    }
    if replicas(before) != replicas(after) {
        let show = |r: Option<i32>| r.map_or_else(|| "unset".to_owned(), |r| r.to_string());
        out.push((
            event::SCALED,
            format!("scaled from {} to {} replicas", show(replicas(before)), show(replicas(after))),
        ));
    }
    out
}

/// Server-side apply of one child, forcing ownership so hand edits of our fields are undone.
async fn apply<K>(client: &Client, ns: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = object.name_any();
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
        .await
        .map_err(|source| Error::Apply { kind: kind_of::<K>(), name, source })
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // The kinds the operator applies; anything else would be a new child type to list here.
    match K::kind(&()).as_ref() {
        "ConfigMap" => "ConfigMap",
        "Deployment" => "Deployment",
        "Service" => "Service",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        _ => "object",
    }
}

/// Writes the status when it changed (an unchanged write would only wake the watch again).
async fn patch_status(ctx: &Context, dp: &DependencyProxy, outcome: &Outcome) -> Result<(), Error> {
    let new = status::status(dp, outcome, Timestamp::now());
    if dp.status.as_ref() == Some(&new) {
        return Ok(());
    }
    let api: Api<DependencyProxy> = Api::namespaced(ctx.client.clone(), &dp.namespace().unwrap_or_default());
    let body = serde_json::json!({
        "apiVersion": format!("{API_GROUP}/{API_VERSION}"),
        "kind": "DependencyProxy",
        "status": new,
    });
    api.patch_status(&dp.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
        .await
        .map_err(Error::Status)?;
    Ok(())
}

/// Best effort: the failure itself is what the caller returns.
async fn report_failure(dp: &DependencyProxy, ctx: &Context, error: &Error) {
    let message = error.to_string();
    if !status::degraded_with(dp, reason::RECONCILE_FAILED, &message) {
        publish(ctx, dp, EventType::Warning, event::RECONCILE_FAILED, message.clone()).await;
    }
    if let Err(e) = patch_status(ctx, dp, &Outcome::Failed(message)).await {
        tracing::warn!(resource = %status::describe(dp), error = %e, "cannot record the failure in the status");
    }
}

/// Events are advisory: a failure to publish one is logged, never fails the reconcile.
async fn publish(ctx: &Context, dp: &DependencyProxy, type_: EventType, reason: &str, note: String) {
    let event =
        Event { type_, reason: reason.to_owned(), note: Some(note), action: "Reconcile".to_owned(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &dp.object_ref(&())).await {
        tracing::warn!(resource = %status::describe(dp), error = %e, "cannot publish event");
    }
}

/// Runs the controller until `shutdown` resolves. `namespace` limits the watches to one namespace.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, ns: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    // Only children carrying our managed-by label are watched: less memory in big clusters.
    let children =
        watcher::Config::default().labels(&format!("{}={}", crate::build::LABEL_MANAGED_BY, crate::build::MANAGED_BY));
    Controller::new(api::<DependencyProxy>(&client, ns), watcher::Config::default())
        .owns(api::<Deployment>(&client, ns), children.clone())
        .owns(api::<ConfigMap>(&client, ns), children.clone())
        .owns(api::<Service>(&client, ns), children.clone())
        .owns(api::<PersistentVolumeClaim>(&client, ns), children)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => tracing::debug!(%object, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "controller event"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::pv_proxy;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(40), BACKOFF_MAX);
    }

    #[test]
    fn changes_name_creation_config_and_scale() {
        let dp = pv_proxy();
        let a = deployment(&dp, &DeploymentInputs { config_hash: "a", default_image: "i" });
        assert_eq!(changes(None, &a)[0].0, event::CREATED);
        assert!(changes(Some(&a), &a).is_empty());
        let mut scaled = dp.clone();
        scaled.spec.replicas = 4;
        let b = deployment(&scaled, &DeploymentInputs { config_hash: "b", default_image: "i" });
        let reasons: Vec<_> = changes(Some(&a), &b).into_iter().map(|(r, _)| r).collect();
        assert_eq!(reasons, [event::CONFIG_CHANGED, event::SCALED]);
    }
}
