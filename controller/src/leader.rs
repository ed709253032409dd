//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several
//! replicas exactly one schedules.
//!
//! The holder renews `spec.renewTime` every `renew_period`; a replica takes
//! the Lease over when `renewTime + leaseDurationSeconds` has passed. Writes
//! carry the resourceVersion they read, so two replicas racing for an
//! expired Lease cannot both win. A holder that cannot renew within the
//! lease duration stops (the caller exits): better no scheduler for a
//! moment than two.

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::Client;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Parameters of the election.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and others retry.
    pub renew_period: Duration,
}

/// One replica's view of the Lease.
pub struct LeaderElector {
    /// The Leases of the namespace.
    api: Api<Lease>,
    /// The parameters.
    config: LeaseConfig,
}

fn now_micro() -> MicroTime {
    MicroTime(Timestamp::now())
}

impl LeaderElector {
    /// An elector for `config` through `client`.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    fn lease_name(&self) -> String {
        format!("{}/{}", self.config.namespace, self.config.name)
    }

    /// Waits until this replica holds the Lease. Returns `false` if
    /// `shutdown` came first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> Result<bool> {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(false),
                _ = tokio::time::sleep(self.config.renew_period) => {}
            }
        }
    }

    /// Renews the Lease until `shutdown` (then releases it and returns Ok)
    /// or until leadership is lost (returns the error).
    pub async fn hold(&self, shutdown: &CancellationToken) -> Result<()> {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    self.release().await;
                    return Ok(());
                }
                _ = tokio::time::sleep(self.config.renew_period) => {}
            }
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => {
                    return Err(Error::LostLeadership {
                        lease: self.lease_name(),
                        reason: "another replica holds it".into(),
                    })
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the Lease");
                    // Stop before the Lease could expire: another replica
                    // may take over the moment it does.
                    if last_renewal.elapsed() + self.config.renew_period
                        >= self.config.lease_duration
                    {
                        return Err(Error::LostLeadership {
                            lease: self.lease_name(),
                            reason: format!("not renewed for {:?}: {e}", last_renewal.elapsed()),
                        });
                    }
                }
            }
        }
    }

    /// One attempt: take the Lease if it is free, expired or ours.
    async fn try_acquire_or_renew(&self) -> Result<bool> {
        let lease_err = |source| Error::Lease {
            lease: self.lease_name(),
            source,
        };
        let me = &self.config.identity;
        let seconds =
            i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
        let current = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(lease_err)?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now_micro()),
                    renew_time: Some(now_micro()),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(lease_err(e)),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let ours = holder == *me;
        if !ours && !holder.is_empty() {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(seconds)) * 1000;
            let renewed = spec
                .renew_time
                .as_ref()
                .map(|t| t.0.as_millisecond())
                .unwrap_or(0);
            if renewed + duration > Utc::now().timestamp_millis() {
                return Ok(false);
            }
        }
        if !ours {
            spec.holder_identity = Some(me.clone());
            spec.acquire_time = Some(now_micro());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now_micro());
        // replace carries the resourceVersion read above: a concurrent
        // writer makes this fail with 409 instead of both winning.
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(lease_err(e)),
        }
    }

    /// Gives the Lease up, so another replica takes over without waiting
    /// for it to expire. Best effort.
    async fn release(&self) {
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
        if let Err(e) = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %e, "cannot release the Lease");
        }
    }
}
