//! Stash's Kubernetes API: group `stash.rs`, version `v1alpha1`.
//!
//! The custom resources, generated into `deploy/crds/` by the `crdgen`
//! binary, and shared by the controller and the node agent:
//!
//! - [`Repository`]: where snapshots go, and which namespaces may use it;
//! - [`BackupConfiguration`]: what to back up, when, where, and what to keep;
//! - [`BackupSession`]: one backup run, one item per volume;
//! - [`RestoreSession`]: one restore, one item per volume.
//!
//! Validation lives in the schema (OpenAPI and CEL rules) so the API server
//! refuses a bad object before any Stash code sees it; [`schedule`] parses a
//! cron schedule the same way the controller runs it.
//!
//! # How agents and the controller share a session's status
//!
//! The controller writes a session's items once, when it resolves them, and
//! afterwards only the session-level fields (phase, progress, conditions,
//! retention request), and item timeouts — always with the object's
//! `resourceVersion` as a precondition, so it never overwrites what an agent
//! wrote meanwhile. An agent changes only items of its own node, with JSON
//! patches on the status subresource that first `test` the item's identity
//! (namespace, pod, volume) and claim:
//!
//! - claim: test `phase == Pending`, then set `phase: Running`,
//!   `claimedBy: <node>/<pod>/<nonce>`, `attempt`, `heartbeatTime`,
//!   `startTime`; of two agents racing, the second patch fails its test;
//! - progress: test `claimedBy` is still its own, then set the counters and
//!   `heartbeatTime` (a few times a minute at most);
//! - take over: an item `Running` on its node under another claim whose
//!   heartbeat is older than the agent's takeover time (an agent that died
//!   mid-item) is claimed again the same way, testing the old `claimedBy`;
//! - finish: test the claim, then set `phase`, the result or `error`, and
//!   `endTime`.
//!
//! [`RetentionStatus`] and a Repository's [`check::CheckRun`] follow the
//! same protocol.

// Each `printcolumn(...)` in `#[kube(...)]` repeats `type_ = ...`, which
// clippy mistakes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod adopt;
pub mod annotations;
mod backup_configuration;
mod backup_session;
pub mod check;
mod common;
mod duration;
pub mod identity;
pub mod lease;
pub mod nodes;
mod notification;
pub mod policy;
mod repository;
mod restore_session;
pub mod schedule;
#[cfg(feature = "serve")]
pub mod serve;
pub mod time;

pub use backup_configuration::{
    BackupConfiguration, BackupConfigurationSpec, BackupConfigurationStatus, BackupMode,
    BackupTarget, ConcurrencyPolicy, RetentionPolicy, WorkloadKind, WorkloadReference,
};
pub use backup_session::{
    BackupItem, BackupSession, BackupSessionSpec, BackupSessionStatus, RetentionStatus,
    SessionTrigger,
};
pub use common::{
    Claim, Executor, ItemCommon, ItemPhase, RepositoryReference, SecretKeyReference, SessionPhase,
};
pub use duration::{parse_duration, DurationError};
pub use notification::{Notification, NotificationFormat, NotifyOn};
pub use repository::{
    AdoptFrom, Adoption, AllowedNamespaces, Maintenance, MaintenanceWindow, NamespacesFrom,
    PruneDecision, Repository, RepositorySpec, RepositoryStatus, UsagePolicy,
    DEFAULT_PRUNE_INTERVAL,
};
pub use restore_session::{
    AdoptedSource, OverwritePolicy, PrivilegedContent, RestoreItem, RestoreSession,
    RestoreSessionSpec, RestoreSessionStatus, RestoreTarget, SourceIdentity, VolumeMapping,
    ANNOTATION_RESTORE_SESSION, LABEL_RESTORE_SESSION, RESTORE_WAIT_CONTAINER,
};

/// The API group of every Stash resource.
pub const GROUP: &str = "stash.rs";
/// The API version this crate describes.
pub const VERSION: &str = "v1alpha1";

/// Label on a BackupSession naming the BackupConfiguration that created it.
pub const LABEL_CONFIGURATION: &str = "stash.rs/backup-configuration";

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// Every CustomResourceDefinition of the API, in the order they are installed.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        Repository::crd(),
        BackupConfiguration::crd(),
        BackupSession::crd(),
        RestoreSession::crd(),
    ]
}
