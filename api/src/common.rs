//! Types several resources share.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Repository by name; in another namespace only if that Repository's
/// usage policy admits the referring object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryReference {
    /// Name of the Repository.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the Repository; the referring object's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

/// A key of a Secret in the same namespace as the object that names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyReference {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_password_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_password_key() -> String {
    "password".to_owned()
}

/// Where a BackupSession or RestoreSession is as a whole.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum SessionPhase {
    /// Accepted; items not resolved yet.
    #[default]
    Pending,
    /// Items resolved; some still at work.
    Running,
    /// Every item succeeded.
    Succeeded,
    /// Some items succeeded, some failed.
    PartiallyFailed,
    /// Every item failed, or the session could not start (see conditions).
    Failed,
    /// Not run: the concurrency policy or a refusal stopped it (see conditions).
    Skipped,
}

impl SessionPhase {
    /// Whether the session is over.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::PartiallyFailed | Self::Failed | Self::Skipped
        )
    }
}

/// Where one volume of a session is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum ItemPhase {
    /// Waiting for the agent on its node to claim it.
    #[default]
    Pending,
    /// An agent works on it.
    Running,
    /// Done.
    Succeeded,
    /// Failed; `error` says why.
    Failed,
}

impl ItemPhase {
    /// Whether the item is over.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// What runs an item: the node agent of the item's node, or a Job the
/// controller starts for a PersistentVolumeClaim that no pod mounts (the
/// Job's own pod mounts the claim and runs `stash job backup` itself; see
/// ARCHITECTURE.md, "Workload-scoped executors").
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum Executor {
    /// The privileged agent on the item's node, through the kubelet's
    /// directories.
    #[default]
    #[serde(rename = "node-agent")]
    NodeAgent,
    /// A Job in the session's namespace mounting the claim.
    #[serde(rename = "job")]
    Job,
}

/// Which agent works on an item, and whether it is still alive: written by
/// the agent with JSON patches whose `test` operations make the claim
/// atomic (see the crate docs for the protocol).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Claim {
    /// The agent instance (`<node>/<pod>/<start nonce>`) that claimed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
    /// How many times an agent has started it (a restarted agent takes
    /// over its own node's items whose heartbeat has stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// Last sign of life of the claiming agent; refreshed with progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    /// What the agent is waiting for, or doing, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a backup item and a restore item share: which volume of which pod,
/// what runs it, where it is and how far it got. Flattened into
/// [`crate::BackupItem`] and [`crate::RestoreItem`], so its fields stand
/// beside theirs in the status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ItemCommon {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod; empty for a Job's item (no pod mounts the claim).
    pub pod: String,
    /// Name of the volume in the pod's spec (for a restore, the target
    /// volume); a Job's item: the claim's name.
    pub volume: String,
    /// Node the pod runs on: whose agent does the work. For a Job's item,
    /// the node its pod ran on, written when it finishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// What runs the item (unset in sessions older than this field: the
    /// node agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<Executor>,
    /// The PersistentVolumeClaim a Job's item backs up or restores into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<String>,
    /// The Job (in the item's namespace) running the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Where the item is.
    #[serde(default)]
    pub phase: ItemPhase,
    /// The claim of the agent working on it (see the crate docs).
    #[serde(flatten)]
    pub claim: Claim,
    /// Bytes read (backup) or written (restore) so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_done: Option<i64>,
    /// Bytes to read or write, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<i64>,
    /// Files read or written so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_done: Option<i64>,
    /// Files to read or write, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_total: Option<i64>,
    /// The snapshot written (backup), or restored once resolved (restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Why the item failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the agent started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<Time>,
}

impl ItemCommon {
    /// Whether a Job runs this item (the node agents leave it alone).
    pub fn runs_in_job(&self) -> bool {
        self.executor == Some(Executor::Job)
    }

    /// Fails it with `error` at `end`, revoking any claim (its agent stops
    /// at its next heartbeat).
    pub fn fail(&mut self, error: String, end: Time) {
        self.phase = ItemPhase::Failed;
        self.error = Some(error);
        self.claim.claimed_by = None;
        self.end_time = Some(end);
    }
}
