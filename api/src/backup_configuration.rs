//! `BackupConfiguration`: what to back up, when, where, and what to keep.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::common::RepositoryReference;
use crate::notification::Notification;

/// Backs up volumes of pods in this namespace on a cron schedule.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stash.rs",
    version = "v1alpha1",
    kind = "BackupConfiguration",
    namespaced,
    status = "BackupConfigurationStatus",
    shortname = "bc",
    category = "stash",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Paused", type_ = "boolean", json_path = ".spec.paused"),
    printcolumn(
        name = "Last Schedule",
        type_ = "date",
        json_path = ".status.lastScheduleTime"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackupConfigurationSpec {
    /// Cron schedule: five fields (`minute hour day-of-month month
    /// day-of-week`), six with seconds first, or `@hourly`, `@daily`,
    /// `@weekly`, `@monthly`, `@yearly`.
    #[x_kube(validation = Rule::new(crate::schedule::cron_rule()).message("schedule must be a cron expression: 5 fields (minute hour day-of-month month day-of-week, e.g. \"0 2 * * *\"), 6 with seconds first (e.g. \"*/10 * * * * *\"), or @hourly, @daily, @weekly, @monthly, @yearly"))]
    #[schemars(length(min = 1, max = 200))]
    pub schedule: String,
    /// Time zone the schedule is read in (tz database name); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$')").message("timeZone must be a tz database name such as \"UTC\" or \"Europe/Berlin\""))]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: Option<String>,
    /// Up to this many seconds of delay added to each tick, the same for
    /// every tick of this object, so configurations sharing a schedule do
    /// not all start at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 86400))]
    pub jitter_seconds: Option<u32>,
    /// No new sessions while true; running ones go on.
    #[serde(default)]
    pub paused: bool,
    /// The pods whose volumes are backed up.
    pub target: BackupTarget,
    /// Names of the pod volumes to back up; when empty, those each pod opts
    /// in with the `stash.rs/backup-volumes` annotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub volumes: Vec<String>,
    /// Where the snapshots go.
    pub repository: RepositoryReference,
    /// Which snapshots to keep after each successful session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionPolicy>,
    /// What to do when a tick comes while a session of this configuration runs.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// How many finished successful sessions to keep.
    #[serde(default = "default_successful_history")]
    #[schemars(range(max = 1000))]
    pub successful_history_limit: u32,
    /// How many finished failed sessions to keep.
    #[serde(default = "default_failed_history")]
    #[schemars(range(max = 1000))]
    pub failed_history_limit: u32,
    /// An item (or retention run) not finished this long after the session
    /// started fails, e.g. `30m`, `2h`. When unset, the default deadline is
    /// the schedule's interval (the time between two ticks), at least 1h and
    /// at most 24h, so one stuck session can never hold the schedule
    /// (`concurrencyPolicy: Forbid`) for longer than a day. The session's
    /// `status.deadline` shows the one in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[smhd])+$')").message("timeout must be a duration such as \"90s\", \"30m\", \"1h30m\" or \"2d\""))]
    #[schemars(length(min = 2, max = 32))]
    pub timeout: Option<String>,
    /// Who reads the volumes. Only the node agent (the default) runs today:
    /// `sidecar` is refused until the sidecar executor exists, rather than
    /// silently running on the privileged agent.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == 'node-agent'").message(MODE_NOT_IMPLEMENTED))]
    pub mode: BackupMode,
    /// Who hears of each session's outcome (see [`Notification`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub notifications: Vec<Notification>,
}

/// Why a mode other than `node-agent` is refused, at admission (CEL) and by
/// the controller for objects stored before that rule.
pub const MODE_NOT_IMPLEMENTED: &str = "mode \"sidecar\" is not implemented yet: only \"node-agent\" runs backups; remove spec.mode or set it to node-agent";

impl BackupConfigurationSpec {
    /// The refusal of a mode nothing implements (`sidecar`), if set.
    pub fn unsupported_mode(&self) -> Option<&'static str> {
        (self.mode != BackupMode::NodeAgent).then_some(MODE_NOT_IMPLEMENTED)
    }
}

fn default_successful_history() -> u32 {
    3
}

fn default_failed_history() -> u32 {
    1
}

/// The pods a BackupConfiguration backs up: exactly one of a label selector,
/// a workload, a PersistentVolumeClaim (the pods mounting it), or one pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.selector), has(self.workload), has(self.persistentVolumeClaim), has(self.pod)].filter(x, x).size() == 1").message("target must set exactly one of selector, workload, persistentVolumeClaim, pod"))]
pub struct BackupTarget {
    /// Pods in this namespace matching these labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The pods of a Deployment, StatefulSet or DaemonSet in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadReference>,
    /// The pods mounting this PersistentVolumeClaim (in this namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub persistent_volume_claim: Option<String>,
    /// One pod by name (in this namespace), e.g. a pod without a workload
    /// that asked for an automatic backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pod: Option<String>,
}

/// A workload in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadReference {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The workload kinds a target may name.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

/// restic's `forget` policy: snapshots kept by any rule stay.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicy {
    /// Keep the last n snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_last: Option<u32>,
    /// Keep the last snapshot of each of the last n hours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_hourly: Option<u32>,
    /// Keep the last snapshot of each of the last n days.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_daily: Option<u32>,
    /// Keep the last snapshot of each of the last n weeks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_weekly: Option<u32>,
    /// Keep the last snapshot of each of the last n months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_monthly: Option<u32>,
    /// Keep the last snapshot of each of the last n years.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_yearly: Option<u32>,
    /// Keep every snapshot carrying one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_tags: Vec<String>,
    /// Keep every snapshot younger than this, relative to the newest one
    /// (restic's units: `2y5m7d3h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[ymdh])+$')").message("keepWithin must be a duration in restic's units, e.g. \"7d\", \"1y6m\", \"2y5m7d3h\""))]
    #[schemars(length(min = 2, max = 32))]
    pub keep_within: Option<String>,
    /// After forgetting, prune: delete the data no snapshot needs any more,
    /// repacking partly used packs until at most 5 % of the repository is
    /// unused (restic's `prune`). On when unset; set false to prune on a
    /// schedule of your own (e.g. `stash forget --prune` in a CronJob).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
}

/// What a tick does while a session of the same configuration is unfinished.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum ConcurrencyPolicy {
    /// Skip the tick.
    #[default]
    Forbid,
    /// Fail the unfinished sessions and start a new one.
    Replace,
    /// Start a new one anyway.
    Allow,
}

/// Who reads the volumes.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum BackupMode {
    /// The privileged agent on the pod's node reads the volume through the
    /// kubelet's directories.
    #[default]
    #[serde(rename = "node-agent")]
    NodeAgent,
    /// A sidecar container in the pod reads it.
    #[serde(rename = "sidecar")]
    Sidecar,
}

/// What the controller did with a BackupConfiguration.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupConfigurationStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last tick a session was created (or skipped) for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The next tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// When the last session that succeeded finished (kept when history
    /// limits delete that session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<Time>,
    /// The session created for the last tick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_session: Option<String>,
    /// `Ready`: True when the configuration is scheduled; False with the
    /// reason (e.g. `RepositoryNotAllowed`, `InvalidSchedule`, `Paused`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
