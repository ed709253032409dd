//! One maintenance run (forget and prune under the exclusive lock) at a time
//! per repository, across every agent and every namespace that uses it.
//!
//! Each repository location has a Lease in the agent's own namespace, named
//! after a hash of the location (no tenant can write there, and the name
//! reveals nothing of the URL). A retention run holds it while it forgets
//! and prunes, renewing it like the claim's heartbeat; another run for the
//! same repository waits for it instead of queueing for the exclusive lock.
//! The Lease also records when the repository was last pruned
//! ([`LAST_PRUNE`]), which the Repository's `maintenance.pruneInterval`
//! counts from: a tenant can patch its Repository's status, not this.

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use sha2::{Digest, Sha256};
use stash_api::lease::{self, Attempt};

/// Annotation of the maintenance Lease: when the last prune finished (RFC 3339).
pub const LAST_PRUNE: &str = "stash.rs/last-prune";
/// Annotation of the maintenance Lease: the Repository object that last held it.
pub const LAST_REPOSITORY: &str = "stash.rs/last-repository";

/// How long a maintenance Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(60);

/// The maintenance Lease of one repository location.
pub struct MaintenanceLease {
    api: Api<Lease>,
    name: String,
    identity: String,
}

/// The Lease's name for a repository location (as restic writes it, without
/// credentials).
pub fn lease_name(location: &str) -> String {
    let digest = Sha256::digest(location.trim_end_matches('/').as_bytes());
    format!("stash-maintenance-{}", &hex::encode(digest)[..24])
}

/// What taking the Lease found.
pub enum Taken {
    /// Ours, with the time of the repository's last prune.
    Held {
        /// When the repository was last pruned, if ever (by any agent).
        last_prune: Option<DateTime<Utc>>,
    },
    /// Another agent's maintenance run holds it.
    Busy(String),
}

impl MaintenanceLease {
    /// The Lease for `location` in `namespace`, taken as `identity`.
    pub fn new(client: Client, namespace: &str, location: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: lease_name(location),
            identity: identity.to_owned(),
        }
    }

    /// `namespace/name`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes (or renews) the Lease.
    pub async fn take(&self) -> Result<Taken, kube::Error> {
        match lease::take_or_renew(&self.api, &self.name, &self.identity, LEASE_DURATION).await? {
            Attempt::Held(l) => Ok(Taken::Held {
                last_prune: l
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(LAST_PRUNE))
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.with_timezone(&Utc)),
            }),
            Attempt::Busy { holder } => Ok(Taken::Busy(
                holder.unwrap_or_else(|| "another agent".to_owned()),
            )),
        }
    }

    /// Gives the Lease up; `pruned_at` records a finished prune of
    /// `repository` (`namespace/name`).
    pub async fn release(&self, repository: &str, pruned_at: Option<DateTime<Utc>>) {
        let res = lease::release(&self.api, &self.name, &self.identity, |l| {
            let a = l.metadata.annotations.get_or_insert_with(Default::default);
            a.insert(LAST_REPOSITORY.to_owned(), repository.to_owned());
            if let Some(t) = pruned_at {
                a.insert(LAST_PRUNE.to_owned(), t.to_rfc3339());
            }
        })
        .await;
        if let Err(e) = res {
            // The prune time is then lost: the next run prunes again, which
            // is safe. The Lease expires by itself.
            tracing::warn!(lease = %self.name, error = %e, "cannot release the maintenance Lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_hides_the_url_and_ignores_a_trailing_slash() {
        let a = lease_name("s3:https://minio.example/bucket/repo");
        assert_eq!(a, lease_name("s3:https://minio.example/bucket/repo/"));
        assert_ne!(a, lease_name("s3:https://minio.example/bucket/other"));
        assert!(a.starts_with("stash-maintenance-"), "{a}");
        assert!(!a.contains("minio"), "{a}");
        assert!(a.len() <= 63, "{a}");
    }
}
