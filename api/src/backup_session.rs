//! `BackupSession`: one backup run, one item per volume.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::{Claim, ItemCommon, ItemPhase, SessionPhase};

/// One run of a BackupConfiguration, created by its schedule or by hand for
/// an on-demand backup.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stash.rs",
    version = "v1alpha1",
    kind = "BackupSession",
    namespaced,
    status = "BackupSessionStatus",
    shortname = "bs",
    category = "stash",
    printcolumn(
        name = "Configuration",
        type_ = "string",
        json_path = ".spec.backupConfiguration"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Duration",
        type_ = "string",
        json_path = ".status.duration",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a BackupSession's spec cannot change; create a new session"))]
#[serde(rename_all = "camelCase")]
pub struct BackupSessionSpec {
    /// The BackupConfiguration (in this namespace) to run.
    #[schemars(length(min = 1, max = 253))]
    pub backup_configuration: String,
    /// Why the session exists.
    #[serde(default)]
    pub trigger: SessionTrigger,
    /// The schedule tick this session is for (scheduled sessions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_time: Option<Time>,
}

/// Why a session exists.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum SessionTrigger {
    /// Created by hand or by a tool: an on-demand backup.
    #[default]
    Manual,
    /// Created by the controller for a schedule tick.
    Scheduled,
}

/// Progress of a BackupSession.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupSessionStatus {
    /// Where the session is as a whole.
    #[serde(default)]
    pub phase: SessionPhase,
    /// Finished items over all items, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// One per volume to back up.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<BackupItem>,
    /// When the items were resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the last item finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Wall time from start to completion, e.g. `1m30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// When the unfinished items and the retention run fail: `startTime`
    /// plus the configuration's `timeout`, or, when it has none, plus the
    /// default deadline (the schedule's interval, at least 1h and at most
    /// 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,
    /// `Ready` and refusals (e.g. `RepositoryNotAllowed`, `NoVolumes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The retention run after the items: the configuration's policy
    /// applied by one agent, and the repository's figures it reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionStatus>,
}

/// Retention after a session: set by the controller once every item is
/// finished and at least one succeeded, claimed and run by the agent on
/// `node` like an item, then copied by the controller to the Repository's
/// status. Runs (without forgetting anything) also when the configuration
/// has no retention policy, to refresh the Repository's figures.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetentionStatus {
    /// Where the retention run is.
    #[serde(default)]
    pub phase: ItemPhase,
    /// Whose agent runs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The claim of the agent running it (see the crate docs).
    #[serde(flatten)]
    pub claim: Claim,
    /// Snapshots of this configuration kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<i64>,
    /// Snapshots of this configuration removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<i64>,
    /// Whether this run pruned (see the Repository's `maintenance`); the
    /// claim's message says why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<bool>,
    /// Bytes of packs the prune deleted, net of what it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaimed_bytes: Option<i64>,
    /// Snapshots in the repository afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<i64>,
    /// Bytes the repository's packs take afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_size: Option<i64>,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
}

/// One volume of one pod, backed up by the agent on `node`; or one
/// PersistentVolumeClaim that no pod mounts, backed up by a Job
/// (`executor: job`, `pod` empty, `volume` the claim's name).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupItem {
    /// The volume, what runs it, where it is and how far it got.
    #[serde(flatten)]
    pub common: ItemCommon,
    /// UID of the pod when the item was resolved: a pod of the same name
    /// with another UID is a replacement, and the item's pod is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// The snapshot hostname, stable across pod restarts: `<namespace>/<pvc>`
    /// for a PersistentVolumeClaim, `<namespace>/<workload>/<volume>`
    /// otherwise (see [`crate::identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The snapshot it is incremental to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_snapshot_id: Option<String>,
    /// New data stored in the repository (before compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_added: Option<i64>,
}

impl AsMut<ItemCommon> for BackupItem {
    fn as_mut(&mut self) -> &mut ItemCommon {
        &mut self.common
    }
}
