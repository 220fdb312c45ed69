//! The resource's status, computed purely from what a reconcile saw: conditions in Kubernetes'
//! standard shape, whose `lastTransitionTime` only moves when a condition's status flips.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::build::{selector_string, service::pull_url};
use crate::crd::{DependencyProxy, DependencyProxyStatus};

pub const CONDITION_READY: &str = "Ready";
pub const CONDITION_PROGRESSING: &str = "Progressing";
pub const CONDITION_DEGRADED: &str = "Degraded";

/// Condition reasons (CamelCase, as Kubernetes expects).
pub mod reason {
    pub const ALL_REPLICAS_READY: &str = "AllReplicasReady";
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const RECONCILED: &str = "Reconciled";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const RECONCILE_FAILED: &str = "ReconcileFailed";
    pub const UNKNOWN: &str = "Unknown";
}

/// The Deployment's progress, as far as the status needs it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rollout {
    pub desired: i32,
    pub replicas: i32,
    pub ready: i32,
    pub updated: i32,
    /// The Deployment controller has seen the latest Deployment spec.
    pub observed: bool,
}

impl Rollout {
    pub fn of(deployment: &Deployment) -> Self {
        let desired = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = deployment.status.clone().unwrap_or_default();
        Self {
            desired,
            replicas: status.replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            observed: status.observed_generation.is_some()
                && status.observed_generation == deployment.metadata.generation,
        }
    }

    /// Every desired pod runs the latest template, is ready, and no old pod is left.
    pub fn complete(&self) -> bool {
        self.observed && self.updated == self.desired && self.ready == self.desired && self.replicas == self.desired
    }
}

/// What the reconcile ended with.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Children applied; this is the Deployment's progress.
    Applied(Rollout),
    /// The spec cannot work; nothing was applied.
    InvalidSpec(String),
    /// Applying failed (API error); it will be retried.
    Failed(String),
}

/// The new status for `dp` after `outcome`.
pub fn status(dp: &DependencyProxy, outcome: &Outcome, now: Timestamp) -> DependencyProxyStatus {
    let previous = dp.status.clone().unwrap_or_default();
    let generation = dp.metadata.generation;
    let mut status = DependencyProxyStatus {
        observed_generation: generation,
        replicas: previous.replicas,
        ready_replicas: previous.ready_replicas,
        selector: Some(selector_string(dp)),
        url: Some(pull_url(dp)),
        conditions: previous.conditions.clone(),
    };
    let conditions = &mut status.conditions;
    let set = |conditions: &mut Vec<Condition>, type_: &str, ok: bool, reason: &str, message: String| {
        set_condition(conditions, type_, ok, reason, message, generation, now);
    };
    match outcome {
        Outcome::Applied(rollout) => {
            let (ready, ready_reason, ready_message) = if rollout.desired == 0 {
                (false, reason::SCALED_TO_ZERO, "replicas is 0".to_owned())
            } else if rollout.complete() {
                (true, reason::ALL_REPLICAS_READY, format!("{} of {} replicas ready", rollout.ready, rollout.desired))
            } else {
                (false, reason::REPLICAS_NOT_READY, format!("{} of {} replicas ready", rollout.ready, rollout.desired))
            };
            set(conditions, CONDITION_READY, ready, ready_reason, ready_message);
            if rollout.complete() || rollout.desired == 0 {
                set(
                    conditions,
                    CONDITION_PROGRESSING,
                    false,
                    reason::ROLLOUT_COMPLETE,
                    "the Deployment is up to date".into(),
                );
            } else {
                let message =
                    format!("{} of {} replicas updated, {} ready", rollout.updated, rollout.desired, rollout.ready);
                set(conditions, CONDITION_PROGRESSING, true, reason::ROLLING_OUT, message);
            }
            set(conditions, CONDITION_DEGRADED, false, reason::RECONCILED, "all children applied".into());
        }
        Outcome::InvalidSpec(message) => {
            set(conditions, CONDITION_READY, false, reason::INVALID_SPEC, message.clone());
            set(conditions, CONDITION_PROGRESSING, false, reason::INVALID_SPEC, "waiting for a spec change".into());
            set(conditions, CONDITION_DEGRADED, true, reason::INVALID_SPEC, message.clone());
        }
        Outcome::Failed(message) => {
            // Ready and Progressing still describe the pods; only make sure they exist.
            for type_ in [CONDITION_READY, CONDITION_PROGRESSING] {
                if !conditions.iter().any(|c| c.type_ == type_) {
                    conditions.push(condition(type_, "Unknown", reason::UNKNOWN, String::new(), generation, now));
                }
            }
            set(conditions, CONDITION_DEGRADED, true, reason::RECONCILE_FAILED, message.clone());
        }
    }
    if let Outcome::Applied(rollout) = outcome {
        status.replicas = rollout.replicas;
        status.ready_replicas = rollout.ready;
    }
    status
}

/// The condition of a type, if present.
pub fn find<'a>(status: &'a DependencyProxyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Whether `dp`'s status says it is degraded for `reason` already (to emit an event only once).
pub fn degraded_with(dp: &DependencyProxy, reason: &str, message: &str) -> bool {
    dp.status
        .as_ref()
        .and_then(|s| find(s, CONDITION_DEGRADED))
        .is_some_and(|c| c.status == "True" && c.reason == reason && c.message == message)
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(now),
    }
}

fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if ok { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status.to_owned();
            existing.reason = reason.to_owned();
            existing.message = message;
            existing.observed_generation = generation;
        }
        None => conditions.push(condition(type_, status, reason, message, generation, now)),
    }
}

/// A short description for logs.
pub fn describe(dp: &DependencyProxy) -> String {
    format!("{}/{}", dp.namespace().unwrap_or_default(), dp.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::fixtures::pv_proxy;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).unwrap()
    }

    fn rollout(desired: i32, ready: i32, updated: i32) -> Rollout {
        Rollout { desired, replicas: desired, ready, updated, observed: true }
    }

    #[test]
    fn ready_when_every_replica_is_updated_and_ready() {
        let dp = pv_proxy();
        let s = status(&dp, &Outcome::Applied(rollout(2, 2, 2)), t(0));
        assert_eq!(find(&s, CONDITION_READY).unwrap().status, "True");
        assert_eq!(find(&s, CONDITION_PROGRESSING).unwrap().status, "False");
        assert_eq!(find(&s, CONDITION_DEGRADED).unwrap().status, "False");
        assert_eq!((s.replicas, s.ready_replicas), (2, 2));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.url.as_deref(), Some("acme.ci.svc:5000/acme/dependency_proxy/containers"));
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=acme,app.kubernetes.io/name=dependency-proxy")
        );
    }

    #[test]
    fn rolling_out_is_progressing_not_ready() {
        let s = status(&pv_proxy(), &Outcome::Applied(rollout(3, 3, 1)), t(0));
        let ready = find(&s, CONDITION_READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::REPLICAS_NOT_READY));
        assert_eq!(find(&s, CONDITION_PROGRESSING).unwrap().status, "True");
        let unobserved = Rollout { observed: false, ..rollout(1, 1, 1) };
        assert!(!unobserved.complete());
    }

    #[test]
    fn transition_time_moves_only_on_flips() {
        let mut dp = pv_proxy();
        dp.status = Some(status(&dp, &Outcome::Applied(rollout(1, 0, 1)), t(0)));
        let again = status(&dp, &Outcome::Applied(rollout(1, 0, 1)), t(10));
        assert_eq!(find(&again, CONDITION_READY).unwrap().last_transition_time, Time(t(0)));
        dp.status = Some(again);
        let flipped = status(&dp, &Outcome::Applied(rollout(1, 1, 1)), t(20));
        assert_eq!(find(&flipped, CONDITION_READY).unwrap().last_transition_time, Time(t(20)));
        assert_eq!(find(&flipped, CONDITION_DEGRADED).unwrap().last_transition_time, Time(t(0)));
    }

    #[test]
    fn invalid_spec_is_degraded_with_its_message() {
        let s = status(&pv_proxy(), &Outcome::InvalidSpec("replicas is 2 but…".into()), t(0));
        let degraded = find(&s, CONDITION_DEGRADED).unwrap();
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", reason::INVALID_SPEC));
        assert_eq!(degraded.message, "replicas is 2 but…");
        assert_eq!(find(&s, CONDITION_READY).unwrap().status, "False");
    }

    #[test]
    fn failure_keeps_pod_conditions_and_marks_degraded() {
        let mut dp = pv_proxy();
        dp.status = Some(status(&dp, &Outcome::Applied(rollout(1, 1, 1)), t(0)));
        let s = status(&dp, &Outcome::Failed("apiserver said 500".into()), t(5));
        assert_eq!(find(&s, CONDITION_READY).unwrap().status, "True");
        assert_eq!(s.ready_replicas, 1);
        let degraded = find(&s, CONDITION_DEGRADED).unwrap();
        assert_eq!((degraded.status.as_str(), degraded.reason.as_str()), ("True", reason::RECONCILE_FAILED));
        dp.status = Some(s);
        assert!(degraded_with(&dp, reason::RECONCILE_FAILED, "apiserver said 500"));
        let fresh = status(&pv_proxy(), &Outcome::Failed("x".into()), t(0));
        assert_eq!(find(&fresh, CONDITION_READY).unwrap().status, "Unknown");
    }
}
