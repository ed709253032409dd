//! Notifications: who hears of a finished session, and in which format.
//!
//! The controller sends them (it never reads volume data, but it sees every
//! session's outcome); the receiver's address and any headers come from a
//! Secret of the object's own namespace, so a tenant's webhook token never
//! sits in a spec that others can read.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One receiver of notifications.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.secret)").message("a notification needs exactly one of url and secret"))]
pub struct Notification {
    /// A name for this receiver, used in status conditions, logs and metrics.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The body's shape: `Webhook` (Stash's JSON document, see the README),
    /// `Slack` (a Slack-compatible incoming webhook: `{"text": …}`) or
    /// `Alertmanager` (an Alertmanager `/api/v2/alerts` endpoint: a failure
    /// fires an alert, a later success resolves it).
    pub format: NotificationFormat,
    /// The receiver's address (http or https), when it holds no secret
    /// (e.g. an in-cluster Alertmanager). Exactly one of `url` and `secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub url: Option<String>,
    /// Secret (in this namespace) holding the receiver: key `url` (http or
    /// https) and, optionally, keys `header.<Name>` sent as HTTP headers
    /// (e.g. `header.Authorization`). The controller reads it, so it needs
    /// `get` on Secrets (`deploy/controller-notifications-rbac.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret: Option<String>,
    /// Which outcomes are sent; `Failed`, `PartiallyFailed` and `Stale`
    /// when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub on: Vec<NotifyOn>,
}

/// The body's shape.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NotificationFormat {
    /// Stash's own JSON document.
    Webhook,
    /// A Slack-compatible incoming webhook.
    Slack,
    /// Alertmanager's `/api/v2/alerts`.
    Alertmanager,
}

/// An outcome a receiver may ask for.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NotifyOn {
    /// Every item succeeded.
    Succeeded,
    /// Some items failed.
    PartiallyFailed,
    /// The session failed.
    Failed,
    /// A BackupConfiguration has had no successful backup for twice its
    /// schedule's interval (detected by the controller even when nothing
    /// runs: pods gone, sessions skipped or stuck).
    Stale,
}

impl Notification {
    /// Whether this receiver wants to hear that a configuration went stale.
    pub fn wants_stale(&self) -> bool {
        self.on.is_empty() || self.on.contains(&NotifyOn::Stale)
    }

    /// Whether this receiver wants to hear of `phase` (a finished session's).
    pub fn wants(&self, phase: crate::SessionPhase) -> bool {
        let on = match phase {
            crate::SessionPhase::Succeeded => NotifyOn::Succeeded,
            crate::SessionPhase::PartiallyFailed => NotifyOn::PartiallyFailed,
            crate::SessionPhase::Failed => NotifyOn::Failed,
            _ => return false,
        };
        if self.on.is_empty() {
            on != NotifyOn::Succeeded
        } else {
            self.on.contains(&on)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionPhase;

    #[test]
    fn failures_by_default_and_exactly_what_is_asked_otherwise() {
        let mut n = Notification {
            name: "ops".into(),
            format: NotificationFormat::Webhook,
            url: None,
            secret: Some("hook".into()),
            on: vec![],
        };
        assert!(n.wants(SessionPhase::Failed));
        assert!(n.wants(SessionPhase::PartiallyFailed));
        assert!(n.wants_stale());
        assert!(!n.wants(SessionPhase::Succeeded));
        assert!(!n.wants(SessionPhase::Skipped));
        n.on = vec![NotifyOn::Succeeded];
        assert!(n.wants(SessionPhase::Succeeded));
        assert!(!n.wants(SessionPhase::Failed));
        assert!(!n.wants_stale());
        n.on = vec![NotifyOn::Stale];
        assert!(n.wants_stale());
        assert!(!n.wants(SessionPhase::Failed));
    }
}
