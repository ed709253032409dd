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

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use stash_api::lease::Attempt;
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
        let c = &self.config;
        match stash_api::lease::take_or_renew(&self.api, &c.name, &c.identity, c.lease_duration)
            .await
        {
            Ok(Attempt::Held(_)) => Ok(true),
            Ok(Attempt::Busy { .. }) => Ok(false),
            Err(source) => Err(Error::Lease {
                lease: self.lease_name(),
                source,
            }),
        }
    }

    /// Gives the Lease up, so another replica takes over without waiting
    /// for it to expire. Best effort.
    async fn release(&self) {
        let c = &self.config;
        if let Err(e) = stash_api::lease::release(&self.api, &c.name, &c.identity, |_| {}).await {
            tracing::warn!(error = %e, "cannot release the Lease");
        }
    }
}
