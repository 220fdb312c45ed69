//! Leader election on a `coordination.k8s.io` Lease, so two operator replicas never reconcile at
//! once: the holder renews the Lease; a standby takes it over once it has expired.
//!
//! Writes use the Lease's resourceVersion (optimistic concurrency): of two candidates racing for
//! an expired Lease, the apiserver lets exactly one replace it and answers the other 409.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

/// Timing and identity of one candidate.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process (the pod name in a cluster).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and a standby retries.
    pub retry_period: Duration,
    /// A holder that could not renew for this long stops leading (before others may take over).
    pub renew_deadline: Duration,
}

/// What a candidate should do with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else holds a valid Lease.
    Wait { holder: String },
}

/// Pure decision from the Lease and the clock. A Lease is expired when `renewTime +
/// leaseDurationSeconds` has passed; an empty holder means it was released.
pub fn decide(lease: Option<&Lease>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return if lease.is_none() { Decision::Create } else { Decision::TakeOver };
    };
    let holder = spec.holder_identity.as_deref().unwrap_or("");
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match &spec.renew_time {
        Some(MicroTime(renewed)) if *renewed + duration > now => Decision::Wait { holder: holder.to_owned() },
        _ => Decision::TakeOver,
    }
}

/// One candidate for the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self { api: Api::namespaced(client, &config.namespace), config }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// One round: returns whether this candidate holds the Lease afterwards. A lost race (409)
    /// is `Ok(false)`; other API errors are returned.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.config.name).await?;
        let decision = decide(current.as_ref(), &self.config.identity, now);
        let result = match (&decision, current) {
            (Decision::Wait { .. }, _) => return Ok(false),
            (Decision::Create, _) => self.api.create(&PostParams::default(), &self.fresh(now, 0)).await,
            (Decision::Renew, Some(mut lease)) => {
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(self.duration_secs());
                self.api.replace(&self.config.name, &PostParams::default(), &lease).await
            }
            (Decision::TakeOver, Some(lease)) => {
                let transitions = lease.spec.as_ref().and_then(|s| s.lease_transitions).unwrap_or(0) + 1;
                let mut next = self.fresh(now, transitions);
                // The resourceVersion makes the replace fail if another candidate won meanwhile.
                next.metadata.resource_version = lease.resource_version();
                self.api.replace(&self.config.name, &PostParams::default(), &next).await
            }
            (Decision::Renew | Decision::TakeOver, None) => {
                unreachable!("decide returns Create without a Lease")
            }
        };
        match result {
            Ok(_) => {
                if decision != Decision::Renew {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.name, "became leader");
                }
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this candidate holds the Lease.
    pub async fn acquire(&self) {
        let mut announced = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {
                    if let Ok(Some(lease)) = self.api.get_opt(&self.config.name).await {
                        let holder = lease.spec.and_then(|s| s.holder_identity);
                        if holder != announced {
                            tracing::info!(holder = ?holder, "standing by; another replica leads");
                            announced = holder;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read or write the leader Lease"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews until a renewal has failed for longer than the renew deadline, then returns: the
    /// caller must stop reconciling, since another replica may take over soon after.
    pub async fn keep_renewing(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("the leader Lease was taken over");
                    return;
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
            }
            if last_ok.elapsed() > self.config.renew_deadline {
                tracing::error!("could not renew the leader Lease in time");
                return;
            }
        }
    }

    /// Gives the Lease up on shutdown so a standby takes over at once instead of after expiry.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match self.api.replace(&self.config.name, &PostParams::default(), &lease).await {
            Ok(_) => tracing::info!("released the leader Lease"),
            Err(e) => tracing::warn!(error = %e, "cannot release the leader Lease"),
        }
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn fresh(&self, now: Timestamp, transitions: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(self.duration_secs()),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(transitions),
                ..Default::default()
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_owned),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", at(100)), Decision::Create);
        assert_eq!(decide(Some(&lease(Some("a"), 90, 15)), "a", at(100)), Decision::Renew);
        assert_eq!(decide(Some(&lease(Some("b"), 90, 15)), "a", at(100)), Decision::Wait { holder: "b".into() });
        assert_eq!(decide(Some(&lease(Some("b"), 80, 15)), "a", at(100)), Decision::TakeOver);
        assert_eq!(decide(Some(&lease(None, 99, 15)), "a", at(100)), Decision::TakeOver);
        assert_eq!(decide(Some(&lease(Some(""), 99, 15)), "a", at(100)), Decision::TakeOver);
    }
}
