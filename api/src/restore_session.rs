//! `RestoreSession`: one restore, one item per volume.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::backup_configuration::WorkloadReference;
use crate::common::{Executor, ItemCommon, RepositoryReference, SessionPhase};
use crate::notification::Notification;

/// Restores a snapshot into volumes of pods in this namespace.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "stash.rs",
    version = "v1alpha1",
    kind = "RestoreSession",
    namespaced,
    status = "RestoreSessionStatus",
    shortname = "rs",
    category = "stash",
    printcolumn(
        name = "Repository",
        type_ = "string",
        json_path = ".spec.repository.name"
    ),
    printcolumn(name = "Snapshot", type_ = "string", json_path = ".spec.snapshot"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("a RestoreSession's spec cannot change; create a new session"))]
#[x_kube(validation = Rule::new("!has(self.before) || self.snapshot == 'latest'").message("before applies only to snapshot \"latest\""))]
#[x_kube(validation = Rule::new("!has(self.rollout) || !self.rollout || has(self.target.workload)").message("rollout applies only to a workload target"))]
#[x_kube(validation = Rule::new("!has(self.executor) || self.executor == 'node-agent' || has(self.target.persistentVolumeClaim)").message("executor job restores into a persistentVolumeClaim target only"))]
#[x_kube(validation = Rule::new("!has(self.adopted) || (!has(self.source) && self.snapshot == 'latest')").message("adopted chooses the snapshot of an adopted Repository: it excludes source and a snapshot id (use before to choose by time)"))]
#[x_kube(validation = Rule::new("!has(self.adopted) || has(self.target.persistentVolumeClaim) || (has(self.volumes) && size(self.volumes) == 1)").message("adopted restores one source: target a persistentVolumeClaim, or name the one target volume in volumes"))]
#[serde(rename_all = "camelCase")]
pub struct RestoreSessionSpec {
    /// What restores: `node-agent` (the default) into the pods mounting the
    /// target, waiting for one to exist; or `job`: a Job the controller
    /// starts mounts the target PersistentVolumeClaim (new or existing,
    /// which no running pod may mount) and restores into it itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<Executor>,
    /// The Repository to restore from.
    pub repository: RepositoryReference,
    /// `latest`, or a snapshot id (a unique prefix of at least 8 hex digits).
    #[serde(default = "default_snapshot")]
    #[x_kube(validation = Rule::new("self == 'latest' || self.matches('^[0-9a-f]{8,64}$')").message("snapshot must be \"latest\" or a snapshot id of 8 to 64 lowercase hex digits"))]
    #[schemars(length(min = 1, max = 64))]
    pub snapshot: String,
    /// With `latest`: the latest snapshot taken before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Time>,
    /// Whose snapshots to pick `latest` among; the target's own when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceIdentity>,
    /// For a Repository with `spec.adopt`: the source to restore, as the
    /// tool that wrote the repository records it (only the fields that tool
    /// records may be given; see `deploy/ADOPTING.md`). With `before`, its
    /// latest snapshot before that time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<AdoptedSource>,
    /// The pods whose volumes receive the data.
    pub target: RestoreTarget,
    /// Which snapshot volume goes to which target volume; each snapshot
    /// volume to the target volume of the same name when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub volumes: Vec<VolumeMapping>,
    /// Restore only paths matching these patterns (restic's syntax).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Do not restore paths matching these patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    /// What to do with files that already exist in the target.
    #[serde(default)]
    pub overwrite: OverwritePolicy,
    /// How long the restore may take, counted from the session's creation
    /// (waiting for the target pods to be scheduled included), e.g. `30m`;
    /// no limit when unset. Items not finished by then fail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+[smhd])+$')").message("timeout must be a duration such as \"90s\", \"30m\", \"1h30m\" or \"2d\""))]
    #[schemars(length(min = 2, max = 32))]
    pub timeout: Option<String>,
    /// With a workload target: restart the workload (a rollout) and restore
    /// into its new pods before their containers start. The controller marks
    /// the pod template with [`LABEL_RESTORE_SESSION`] and
    /// [`ANNOTATION_RESTORE_SESSION`]; its admission webhook gives each new
    /// pod of the workload the `stash restore-wait` init container, and the
    /// restore waits for each of the workload's desired replicas. Without
    /// it, the data goes into the workload's pods as they are, running or
    /// not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollout: bool,
    /// Privilege-giving content of the snapshot to restore as it is:
    /// device nodes, the setuid/setgid bits, file capabilities, other
    /// `security.*` and `trusted.*` xattrs. By default all of it is left out
    /// (the files are restored without those bits and xattrs) and reported
    /// in the item's message. Each kind asked for must also be allowed by
    /// the cluster's node agents (`--allow-privileged-restore`); a session
    /// asking for more fails its items instead of restoring less.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub privileged: Vec<PrivilegedContent>,
    /// Who hears of the outcome (see [`Notification`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub notifications: Vec<Notification>,
}

/// A kind of privilege-giving content a restore may create.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum PrivilegedContent {
    /// Block and character device nodes.
    Devices,
    /// The setuid and setgid mode bits.
    Setid,
    /// File capabilities (`security.capability`).
    Capabilities,
    /// Other `security.*` xattrs and `trusted.*` xattrs.
    SecurityXattrs,
}

/// Pod-template label (and so pod label) naming the RestoreSession whose
/// rollout created the pod; the controller's admission webhook is called
/// only for pods carrying it.
pub const LABEL_RESTORE_SESSION: &str = "stash.rs/restore-session";
/// Pod-template annotation naming the RestoreSession that restarted the
/// workload, with the time: changing it is what starts the rollout.
pub const ANNOTATION_RESTORE_SESSION: &str = "stash.rs/restore-session";
/// Name of the init container that waits for the restore.
pub const RESTORE_WAIT_CONTAINER: &str = "stash-restore-wait";

fn default_snapshot() -> String {
    "latest".to_owned()
}

/// Whose snapshots a restore picks from: the namespace and workload or pod
/// they were taken of.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SourceIdentity {
    /// Namespace the snapshots were taken in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod, or workload, the snapshots were taken of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only snapshots carrying every one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Which source of an adopted repository a restore reads (every field
/// given must match; see [`crate::adopt::Selector`]).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AdoptedSource {
    /// The namespace the tool recorded (Velero, K8up); the session's own
    /// when unset. Another namespace's needs a Repository of the session's
    /// own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    /// The PersistentVolumeClaim (K8up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub persistent_volume_claim: Option<String>,
    /// The PersistentVolumeClaim's UID (Velero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub persistent_volume_claim_uid: Option<String>,
    /// The pod (Velero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pod: Option<String>,
    /// The pod volume (Velero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub volume: Option<String>,
    /// The replica, `host-<ordinal>` (Stash v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub replica: Option<String>,
    /// The backed-up path in the workload's container (Stash v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub path: Option<String>,
}

impl AdoptedSource {
    /// The selector for a restore in `session_ns` from a repository
    /// written by `tool`, or why it cannot be used: a field the tool does
    /// not record, or another namespace's source from a Repository that is
    /// not the session's own.
    pub fn selector(
        &self,
        tool: crate::adopt::Tool,
        session_ns: &str,
        repo_in_session_ns: bool,
    ) -> Result<crate::adopt::Selector, String> {
        let namespace = match &self.namespace {
            Some(ns) => Some(ns.clone()),
            // The session's own, where the tool records namespaces.
            None if tool.records_namespace() => Some(session_ns.to_owned()),
            None => None,
        };
        if let Some(ns) = namespace.as_deref() {
            if ns != session_ns && !repo_in_session_ns {
                return Err(format!(
                    "spec.adopted names namespace {ns}: restoring another namespace's snapshots \
                     needs a Repository of the session's own namespace {session_ns}"
                ));
            }
        }
        let sel = crate::adopt::Selector {
            namespace,
            pvc: self.persistent_volume_claim.clone(),
            pvc_uid: self.persistent_volume_claim_uid.clone(),
            pod: self.pod.clone(),
            volume: self.volume.clone(),
            replica: self.replica.clone(),
            path: self.path.clone(),
        };
        sel.check(tool).map_err(|e| format!("spec.adopted: {e}"))?;
        Ok(sel)
    }
}

/// Where restored data goes: exactly one of a pod, a PersistentVolumeClaim or
/// a workload, in this namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.pod), has(self.persistentVolumeClaim), has(self.workload)].filter(x, x).size() == 1").message("target must set exactly one of pod, persistentVolumeClaim, workload"))]
pub struct RestoreTarget {
    /// A pod by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub pod: Option<String>,
    /// A PersistentVolumeClaim by name (through a pod mounting it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub persistent_volume_claim: Option<String>,
    /// The pods of a workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadReference>,
}

/// A snapshot volume and the target volume it is restored into.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMapping {
    /// Volume name in the snapshot.
    #[schemars(length(min = 1, max = 253))]
    pub source: String,
    /// Volume name in the target pod.
    #[schemars(length(min = 1, max = 253))]
    pub target: String,
}

/// What a restore does with a file that exists in the target.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum OverwritePolicy {
    /// Always replace it.
    Always,
    /// Replace it when its content or metadata differ.
    #[default]
    IfChanged,
    /// Replace it when the snapshot's copy is newer.
    IfNewer,
    /// Never replace it.
    Never,
}

/// Progress of a RestoreSession.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSessionStatus {
    /// Where the restore is as a whole.
    #[serde(default)]
    pub phase: SessionPhase,
    /// Finished items over all items, e.g. `1/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
    /// One per target volume.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<RestoreItem>,
    /// When the items were resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the last item finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// `Ready` and refusals.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One target volume of one pod, restored by the agent on `node`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RestoreItem {
    /// The target volume, what runs it, where it is and how far it got.
    #[serde(flatten)]
    pub common: ItemCommon,
    /// Volume name in the snapshot; a Job's item without `spec.volumes`:
    /// empty, the path of the latest snapshot of the sources.
    pub source_volume: String,
    /// Snapshot hostnames to pick `latest` among (see [`crate::identity`]);
    /// any snapshot with the path `/<sourceVolume>` when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_hosts: Vec<String>,
}

impl AsMut<ItemCommon> for RestoreItem {
    fn as_mut(&mut self) -> &mut ItemCommon {
        &mut self.common
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adopt::Tool;

    #[test]
    fn an_adopted_source_selects_in_the_sessions_namespace_and_by_what_the_tool_records() {
        let pvc = AdoptedSource {
            persistent_volume_claim: Some("db-data".into()),
            ..AdoptedSource::default()
        };
        let sel = pvc.selector(Tool::K8up, "shop", false).unwrap();
        assert_eq!(sel.namespace.as_deref(), Some("shop"));
        assert_eq!(sel.pvc.as_deref(), Some("db-data"));
        // Velero does not record the claim's name, only its UID.
        let e = pvc.selector(Tool::Velero, "shop", false).unwrap_err();
        assert!(e.contains("--pvc"), "{e}");
        // Another namespace only through a Repository of the session's own.
        let other = AdoptedSource {
            namespace: Some("bank".into()),
            ..pvc.clone()
        };
        let e = other.selector(Tool::K8up, "shop", false).unwrap_err();
        assert!(e.contains("namespace bank"), "{e}");
        assert!(other.selector(Tool::K8up, "shop", true).is_ok());
        // VolSync records nothing: time alone, and no namespace is implied.
        let none = AdoptedSource::default();
        assert_eq!(
            none.selector(Tool::VolSync, "shop", false)
                .unwrap()
                .namespace,
            None
        );
    }
}
