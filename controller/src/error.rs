//! The controller's errors: one variant per operation that failed, naming
//! the object.

/// An operation of the controller that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action} {object}: {source}")]
    Kube {
        /// What was being done, e.g. "create BackupSession".
        action: &'static str,
        /// `namespace/name` of the object.
        object: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// The Lease could not be read or written.
    #[error("leader election with Lease {lease}: {source}")]
    Lease {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// Another replica renewed the Lease, or ours could not be renewed in
    /// time: this replica must stop scheduling at once.
    #[error("lost the leadership Lease {lease}: {reason}")]
    LostLeadership {
        /// `namespace/name` of the Lease.
        lease: String,
        /// Why.
        reason: String,
    },
    /// The admission webhook's certificate could not be made, read or used.
    #[error("{what}: {reason}")]
    Certificate {
        /// The certificate or Secret.
        what: String,
        /// Why.
        reason: String,
    },
    /// The webhook cannot tell what to inject.
    #[error("{what}: {reason}")]
    Webhook {
        /// The object it looked at.
        what: String,
        /// Why.
        reason: String,
    },
    /// The metrics and health server could not serve.
    #[error("metrics server on {addr}: {source}")]
    Serve {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Short label for the `stash_controller_reconcile_errors_total` metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { action, .. } => action,
            Error::Lease { .. } => "lease",
            Error::LostLeadership { .. } => "lost_leadership",
            Error::Certificate { .. } => "certificate",
            Error::Webhook { .. } => "webhook",
            Error::Serve { .. } => "serve",
        }
    }
}

/// `Result` with the controller's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a kube error with the action and object it concerns.
pub(crate) fn kube_err(
    action: &'static str,
    ns: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> Error {
    let object = format!("{ns}/{name}");
    move |source| Error::Kube {
        action,
        object,
        source,
    }
}
