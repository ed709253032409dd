//! Adopting repositories written by other tools: how Velero (its restic
//! path), K8up, Stash v1 and VolSync (its restic mover) lay out their
//! snapshots, and the identity (namespace, PVC, pod volume, …) each one maps
//! to. Pure: a snapshot's hostname, paths and tags in, an [`Identity`] or
//! the reason it does not fit out. `deploy/ADOPTING.md` documents each
//! layout and the source file every fact comes from.
//!
//! Nothing here guesses: a snapshot that does not carry what the tool
//! always writes is a [`Misfit`] with the reason, and a selector naming a
//! field the tool never records is refused ([`Selector::check`]).

use chrono::{DateTime, FixedOffset};
use serde::Serialize;

/// A tool whose restic repositories can be adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// Velero's file-system backup with the restic uploader.
    Velero,
    /// K8up (v1 and v2).
    K8up,
    /// Stash v1 (`stash.appscode.com/v1beta1`).
    Stash,
    /// VolSync's restic mover.
    VolSync,
}

impl Tool {
    /// The tool's name as users know it.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Velero => "Velero",
            Tool::K8up => "K8up",
            Tool::Stash => "Stash v1",
            Tool::VolSync => "VolSync",
        }
    }

    /// What every snapshot of this tool carries, for error messages.
    pub fn layout(self) -> &'static str {
        match self {
            Tool::Velero => {
                "tags backup=, backup-uid=, ns=, pod=, pod-uid=, volume= (and pvc-uid= for a PVC), \
                 one path /host_pods/<pod-uid>/volumes/<plugin>/<dir>"
            }
            Tool::K8up => {
                "hostname = the namespace, one path /data/<pvc> (or /<namespace>-<container><ext> \
                 for a backup command's output)"
            }
            Tool::Stash => {
                "no tags, hostname host-<ordinal>, one absolute path (the workload's mount path)"
            }
            Tool::VolSync => "hostname volsync, the one path /data, no tags",
        }
    }

    /// Whether its snapshots record the source's namespace.
    pub fn records_namespace(self) -> bool {
        self.records().contains(&Field::Namespace)
    }

    /// The identity fields this tool records in its snapshots.
    fn records(self) -> &'static [Field] {
        match self {
            Tool::Velero => &[Field::Namespace, Field::PvcUid, Field::Pod, Field::Volume],
            Tool::K8up => &[Field::Namespace, Field::Pvc],
            Tool::Stash => &[Field::Replica, Field::Path],
            Tool::VolSync => &[],
        }
    }

    /// What the tool keeps outside the repository, for error messages.
    pub fn outside(self) -> &'static str {
        match self {
            Tool::Velero => {
                "Velero records the PVC's UID (tag pvc-uid), not its name; the name is in \
                 the PodVolumeBackup's annotation velero.io/pvc-name"
            }
            Tool::K8up => "K8up records the namespace and the PVC only",
            Tool::Stash => {
                "Stash v1 keeps one repository per target: its namespace and workload are \
                 the Repository object's, not recorded in the snapshots"
            }
            Tool::VolSync => {
                "VolSync keeps one repository per ReplicationSource: its namespace and PVC \
                 are the ReplicationSource's, not recorded in the snapshots"
            }
        }
    }
}

/// What a snapshot says about itself.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The snapshot's hostname.
    pub hostname: &'a str,
    /// Its paths.
    pub paths: &'a [String],
    /// Its tags.
    pub tags: &'a [String],
}

/// The identity an adopted snapshot maps to. Fields the tool does not
/// record are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The source's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The PersistentVolumeClaim's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvc: Option<String>,
    /// The PersistentVolumeClaim's UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pvc_uid: Option<String>,
    /// The pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The pod volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// Stash v1: the replica (`host-<ordinal>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// Stash v1: the backed-up path inside the workload's container.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// K8up: the file a backup command's output was stored as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Velero: the Backup this snapshot belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Where the source's contents are in the snapshot's tree: the names
    /// to descend from its root (empty: the root itself).
    #[serde(skip)]
    pub subdir: Vec<String>,
}

impl Identity {
    /// What was backed up, without the namespace: `pvc/db-data`,
    /// `pod/web-0 volume/data`, `replica/host-0 path//source/data`, …
    pub fn source(&self) -> String {
        let mut parts = Vec::new();
        if let Some(p) = &self.pvc {
            parts.push(format!("pvc/{p}"));
        }
        if let Some(p) = &self.pod {
            parts.push(format!("pod/{p}"));
        }
        if let Some(v) = &self.volume {
            parts.push(format!("volume/{v}"));
        }
        if let Some(u) = &self.pvc_uid {
            parts.push(format!("pvc-uid/{u}"));
        }
        if let Some(r) = &self.replica {
            parts.push(format!("replica/{r}"));
        }
        if let Some(p) = &self.path {
            parts.push(format!("path/{p}"));
        }
        if let Some(s) = &self.stream {
            parts.push(format!("stream/{s}"));
        }
        if parts.is_empty() {
            return "(the repository's own volume)".into();
        }
        parts.join(" ")
    }

    /// One source over time: snapshots with the same key are points in
    /// time of the same volume. A PVC's UID outlives the pods that mount it
    /// (Velero names the pod, which a Deployment renames on every rollout).
    fn key(&self) -> String {
        let ns = self.namespace.as_deref().unwrap_or("");
        let what = if let Some(p) = &self.pvc {
            format!("pvc/{p}")
        } else if let Some(u) = &self.pvc_uid {
            format!("pvc-uid/{u}")
        } else if self.pod.is_some() || self.volume.is_some() {
            format!(
                "pod/{}/{}",
                self.pod.as_deref().unwrap_or(""),
                self.volume.as_deref().unwrap_or("")
            )
        } else if self.replica.is_some() || self.path.is_some() {
            format!(
                "replica/{}{}",
                self.replica.as_deref().unwrap_or(""),
                self.path.as_deref().unwrap_or("")
            )
        } else if let Some(s) = &self.stream {
            format!("stream/{s}")
        } else {
            "repository".into()
        };
        format!("{ns}|{what}")
    }

    /// The identity as one line: `namespace shop, pvc/db-data`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("namespace {ns}, {}", self.source()),
            None => self.source(),
        }
    }
}

/// Why a snapshot does not fit the tool's layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Misfit(pub String);

/// The identity of a snapshot written by `tool`, or why it does not fit.
pub fn map(tool: Tool, facts: Facts<'_>) -> Result<Identity, Misfit> {
    match tool {
        Tool::Velero => velero(facts),
        Tool::K8up => k8up(facts),
        Tool::Stash => stash(facts),
        Tool::VolSync => volsync(facts),
    }
}

fn misfit(why: impl Into<String>) -> Misfit {
    Misfit(why.into())
}

fn one_path<'a>(facts: &Facts<'a>) -> Result<&'a str, Misfit> {
    match facts.paths {
        [p] => Ok(p.as_str()),
        ps => Err(misfit(format!("{} paths, not one", ps.len()))),
    }
}

/// A DNS-1123 label: what a namespace name is.
fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A DNS-1123 subdomain: what a PVC name is.
fn is_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Velero: `restic backup --tag=k=v … --host=velero .` run in the volume's
/// directory as the node agent sees it, `/host_pods/<pod-uid>/volumes/
/// <plugin>/<dir>` (pkg/restic/command_factory.go, pkg/podvolume/
/// backupper.go, pkg/controller/pod_volume_backup_controller.go).
fn velero(facts: Facts<'_>) -> Result<Identity, Misfit> {
    let mut tags = std::collections::BTreeMap::new();
    for t in facts.tags {
        if let Some((k, v)) = t.split_once('=') {
            tags.insert(k, v);
        }
    }
    let need = ["backup", "backup-uid", "ns", "pod", "pod-uid", "volume"];
    let missing: Vec<&str> = need
        .iter()
        .copied()
        .filter(|k| tags.get(k).is_none_or(|v| v.is_empty()))
        .collect();
    if !missing.is_empty() {
        return Err(misfit(format!(
            "no Velero tag{} {}",
            if missing.len() == 1 { "" } else { "s" },
            missing
                .iter()
                .map(|k| format!("{k}="))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let path = one_path(&facts)?;
    let prefix = format!("/host_pods/{}/volumes/", tags["pod-uid"]);
    if !path.starts_with(&prefix) {
        return Err(misfit(format!(
            "path {path} is not below {prefix} (the pod's volumes as Velero's node agent sees them)"
        )));
    }
    Ok(Identity {
        namespace: Some(tags["ns"].to_owned()),
        pod: Some(tags["pod"].to_owned()),
        volume: Some(tags["volume"].to_owned()),
        pvc_uid: tags
            .get("pvc-uid")
            .filter(|u| !u.is_empty())
            .map(|u| u.to_string()),
        backup: Some(tags["backup"].to_owned()),
        // `backup .`: the snapshot's root is the volume.
        subdir: Vec::new(),
        ..Identity::default()
    })
}

/// K8up: `restic backup --host $HOSTNAME /data/<pvc>` per PVC mounted
/// below BACKUP_DIR=/data, with HOSTNAME set to the namespace
/// (restic/cli/backup.go, operator/executor/envvarconverter.go,
/// operator/backupcontroller/backup_utils.go); a backup command's output
/// goes in with `--stdin-filename /<namespace>-<container><ext>`
/// (cmd/restic/main.go: backupAnnotatedPod).
fn k8up(facts: Facts<'_>) -> Result<Identity, Misfit> {
    let ns = facts.hostname;
    if !is_label(ns) {
        return Err(misfit(format!(
            "hostname {ns:?} is not a namespace name (K8up uses the namespace)"
        )));
    }
    let path = one_path(&facts)?;
    if let Some(pvc) = path.strip_prefix("/data/") {
        if !is_subdomain(pvc) {
            return Err(misfit(format!(
                "path {path}: {pvc:?} is not a PVC name (K8up backs up /data/<pvc>)"
            )));
        }
        return Ok(Identity {
            namespace: Some(ns.to_owned()),
            pvc: Some(pvc.to_owned()),
            subdir: vec!["data".into(), pvc.to_owned()],
            ..Identity::default()
        });
    }
    if let Some(stream) = path
        .strip_prefix('/')
        .filter(|s| !s.contains('/') && s.starts_with(&format!("{ns}-")))
    {
        return Ok(Identity {
            namespace: Some(ns.to_owned()),
            stream: Some(stream.to_owned()),
            subdir: Vec::new(),
            ..Identity::default()
        });
    }
    Err(misfit(format!(
        "path {path} is neither /data/<pvc> nor /{ns}-<container> (a backup command's output)"
    )))
}

/// Stash v1: `restic backup <path> --host <host>` for each target path,
/// no tags (stashed/apimachinery pkg/restic/backup.go and commands.go),
/// host `host-<ordinal>` for a StatefulSet's pod, the node name for a
/// DaemonSet, `host-0` otherwise, or the target's alias
/// (stashed/stash pkg/util/util.go: GetHostName).
fn stash(facts: Facts<'_>) -> Result<Identity, Misfit> {
    if !facts.tags.is_empty() {
        return Err(misfit(format!(
            "tags {} (Stash v1 writes none)",
            facts.tags.join(",")
        )));
    }
    // A DaemonSet's node names and a target's alias are Stash's too, but
    // cannot be told apart from another tool's hostname: reported, not
    // guessed at.
    let ordinal = facts.hostname.strip_prefix("host-").unwrap_or("");
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return Err(misfit(format!(
            "hostname {:?} is not host-<ordinal> (a DaemonSet's node name or a target alias \
             cannot be told apart from other tools' hostnames)",
            facts.hostname
        )));
    }
    let path = one_path(&facts)?;
    let subdir: Vec<String> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    if !path.starts_with('/') || subdir.is_empty() || subdir.iter().any(|c| c == "." || c == "..") {
        return Err(misfit(format!(
            "path {path:?} is not an absolute directory path"
        )));
    }
    Ok(Identity {
        replica: Some(facts.hostname.to_owned()),
        path: Some(path.to_owned()),
        subdir,
        ..Identity::default()
    })
}

/// VolSync: `restic backup --host volsync --exclude=lost+found .` in
/// DATA_DIR=/data (mover-restic/entry.sh, controllers/mover/restic/mover.go).
fn volsync(facts: Facts<'_>) -> Result<Identity, Misfit> {
    if facts.hostname != "volsync" {
        return Err(misfit(format!(
            "hostname {:?}, not volsync",
            facts.hostname
        )));
    }
    if facts.paths != ["/data"] {
        return Err(misfit(format!("paths {:?}, not [\"/data\"]", facts.paths)));
    }
    if !facts.tags.is_empty() {
        return Err(misfit(format!(
            "tags {} (VolSync writes none)",
            facts.tags.join(",")
        )));
    }
    Ok(Identity::default())
}

/// An identity field a selector can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Namespace,
    Pvc,
    PvcUid,
    Pod,
    Volume,
    Replica,
    Path,
}

impl Field {
    fn flag(self) -> &'static str {
        match self {
            Field::Namespace => "--namespace",
            Field::Pvc => "--pvc",
            Field::PvcUid => "--pvc-uid",
            Field::Pod => "--pod",
            Field::Volume => "--volume",
            Field::Replica => "--replica",
            Field::Path => "--path",
        }
    }

    fn of(self, id: &Identity) -> Option<&str> {
        match self {
            Field::Namespace => id.namespace.as_deref(),
            Field::Pvc => id.pvc.as_deref(),
            Field::PvcUid => id.pvc_uid.as_deref(),
            Field::Pod => id.pod.as_deref(),
            Field::Volume => id.volume.as_deref(),
            Field::Replica => id.replica.as_deref(),
            Field::Path => id.path.as_deref(),
        }
    }
}

/// Which adopted snapshots a restore may pick from: every given field must
/// equal the snapshot's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// `--namespace`.
    pub namespace: Option<String>,
    /// `--pvc`.
    pub pvc: Option<String>,
    /// `--pvc-uid`.
    pub pvc_uid: Option<String>,
    /// `--pod`.
    pub pod: Option<String>,
    /// `--volume`.
    pub volume: Option<String>,
    /// `--replica`.
    pub replica: Option<String>,
    /// `--path`.
    pub path: Option<String>,
}

impl Selector {
    fn given(&self) -> Vec<(Field, &str)> {
        [
            (Field::Namespace, &self.namespace),
            (Field::Pvc, &self.pvc),
            (Field::PvcUid, &self.pvc_uid),
            (Field::Pod, &self.pod),
            (Field::Volume, &self.volume),
            (Field::Replica, &self.replica),
            (Field::Path, &self.path),
        ]
        .into_iter()
        .filter_map(|(f, v)| v.as_deref().map(|v| (f, v)))
        .collect()
    }

    /// Refuses a selector that names a field `tool` never records (it
    /// could only match by guessing).
    pub fn check(&self, tool: Tool) -> Result<(), String> {
        let unknown: Vec<&str> = self
            .given()
            .into_iter()
            .filter(|(f, _)| !tool.records().contains(f))
            .map(|(f, _)| f.flag())
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        let known: Vec<&str> = tool.records().iter().map(|f| f.flag()).collect();
        Err(format!(
            "{} cannot select {} snapshots: {}; select by {}",
            unknown.join(", "),
            tool.name(),
            tool.outside(),
            if known.is_empty() {
                "time alone (--at)".to_owned()
            } else {
                format!("{} and --at", known.join(", "))
            }
        ))
    }

    /// Whether `id` has every given field.
    pub fn matches(&self, id: &Identity) -> bool {
        self.given().iter().all(|(f, v)| f.of(id) == Some(*v))
    }
}

/// An adopted snapshot.
#[derive(Debug, Clone)]
pub struct Adopted {
    /// The snapshot's id (hex).
    pub id: String,
    /// When it was taken.
    pub time: DateTime<FixedOffset>,
    /// What it maps to.
    pub identity: Identity,
}

/// Why no snapshot could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChooseError {
    /// Nothing matches the selector.
    #[error("no adopted snapshot matches; the repository holds {}", list(.sources))]
    NoMatch {
        /// Every source the repository holds.
        sources: Vec<String>,
    },
    /// Snapshots of several sources match.
    #[error("the selection matches snapshots of {} sources, select one of them: {}", .sources.len(), list(.sources))]
    Ambiguous {
        /// The matching sources.
        sources: Vec<String>,
    },
    /// The source has no snapshot at or before the time.
    #[error("{what} has no snapshot at or before {at}; its first is {first}")]
    TooEarly {
        /// The source.
        what: String,
        /// The time asked for.
        at: String,
        /// Its earliest snapshot's time.
        first: String,
    },
}

fn list(sources: &[String]) -> String {
    if sources.is_empty() {
        "no snapshot of that tool".into()
    } else {
        sources.join("; ")
    }
}

/// The snapshot to restore: of the one source `sel` matches, the latest
/// taken at or before `at` (the latest of all when `at` is `None`).
/// Returns its index in `all`.
pub fn choose(
    all: &[Adopted],
    sel: &Selector,
    at: Option<DateTime<FixedOffset>>,
) -> Result<usize, ChooseError> {
    let describe_all = |it: &mut dyn Iterator<Item = &Adopted>| {
        let mut seen = std::collections::BTreeMap::new();
        for a in it {
            seen.entry(a.identity.key())
                .or_insert_with(|| a.identity.describe());
        }
        seen.into_values().collect::<Vec<_>>()
    };
    let matching: Vec<usize> = (0..all.len())
        .filter(|&i| sel.matches(&all[i].identity))
        .collect();
    if matching.is_empty() {
        return Err(ChooseError::NoMatch {
            sources: describe_all(&mut all.iter()),
        });
    }
    let sources = describe_all(&mut matching.iter().map(|&i| &all[i]));
    if sources.len() > 1 {
        return Err(ChooseError::Ambiguous { sources });
    }
    let best = matching
        .iter()
        .copied()
        .filter(|&i| at.is_none_or(|t| all[i].time <= t))
        .max_by_key(|&i| all[i].time);
    best.ok_or_else(|| {
        let first = matching
            .iter()
            .map(|&i| all[i].time)
            .min()
            .expect("not empty");
        ChooseError::TooEarly {
            what: sources[0].clone(),
            at: at.map(|t| t.to_rfc3339()).unwrap_or_default(),
            first: first.to_rfc3339(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(host: &'a str, paths: &'a [String], tags: &'a [String]) -> Facts<'a> {
        Facts {
            hostname: host,
            paths,
            tags,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn velero_tags(
        ns: &str,
        pod: &str,
        uid: &str,
        vol: &str,
        pvc_uid: Option<&str>,
    ) -> Vec<String> {
        let mut t = s(&[
            "backup=nightly-1",
            "backup-uid=b-1",
            &format!("ns={ns}"),
            &format!("pod={pod}"),
            &format!("pod-uid={uid}"),
            &format!("volume={vol}"),
        ]);
        if let Some(u) = pvc_uid {
            t.push(format!("pvc-uid={u}"));
        }
        t
    }

    #[test]
    fn velero_snapshots_map_to_namespace_pod_and_volume() {
        let tags = velero_tags("shop", "db-0", "u1", "data", Some("p1"));
        let paths = s(&["/host_pods/u1/volumes/kubernetes.io~csi/pvc-123/mount"]);
        let id = map(Tool::Velero, facts("velero", &paths, &tags)).unwrap();
        assert_eq!(id.namespace.as_deref(), Some("shop"));
        assert_eq!(id.pod.as_deref(), Some("db-0"));
        assert_eq!(id.volume.as_deref(), Some("data"));
        assert_eq!(id.pvc_uid.as_deref(), Some("p1"));
        assert_eq!(id.backup.as_deref(), Some("nightly-1"));
        assert!(id.subdir.is_empty());
        assert_eq!(
            id.describe(),
            "namespace shop, pod/db-0 volume/data pvc-uid/p1"
        );

        // A snapshot without Velero's tags, or of another pod's directory.
        let e = map(Tool::Velero, facts("velero", &paths, &s(&["ns=shop"]))).unwrap_err();
        assert!(
            e.0.contains("backup=, backup-uid=, pod=, pod-uid=, volume="),
            "{e}"
        );
        let other = s(&["/host_pods/u2/volumes/x/y"]);
        let e = map(Tool::Velero, facts("velero", &other, &tags)).unwrap_err();
        assert!(e.0.contains("/host_pods/u1/volumes/"), "{e}");
    }

    #[test]
    fn k8up_snapshots_map_to_namespace_and_pvc() {
        let paths = s(&["/data/db-data"]);
        let id = map(Tool::K8up, facts("shop", &paths, &s(&["daily"]))).unwrap();
        assert_eq!(id.namespace.as_deref(), Some("shop"));
        assert_eq!(id.pvc.as_deref(), Some("db-data"));
        assert_eq!(id.subdir, ["data", "db-data"]);
        let stream = s(&["/shop-mysql.sql"]);
        let id = map(Tool::K8up, facts("shop", &stream, &[])).unwrap();
        assert_eq!(id.stream.as_deref(), Some("shop-mysql.sql"));
        assert!(map(
            Tool::K8up,
            facts("velero", &s(&["/host_pods/u/volumes/a/b"]), &[])
        )
        .is_err());
        assert!(map(Tool::K8up, facts("Not_A_Namespace", &paths, &[])).is_err());
        // VolSync's /data alone names no PVC.
        assert!(map(Tool::K8up, facts("volsync", &s(&["/data"]), &[])).is_err());
    }

    #[test]
    fn stash_and_volsync_snapshots_map_to_what_they_record() {
        let paths = s(&["/source/data"]);
        let id = map(Tool::Stash, facts("host-1", &paths, &[])).unwrap();
        assert_eq!(id.replica.as_deref(), Some("host-1"));
        assert_eq!(id.path.as_deref(), Some("/source/data"));
        assert_eq!(id.subdir, ["source", "data"]);
        assert!(map(Tool::Stash, facts("host-1", &paths, &s(&["ns=shop"]))).is_err());
        assert!(map(Tool::Stash, facts("host-1", &s(&["/a", "/b"]), &[])).is_err());
        let e = map(Tool::Stash, facts("volsync", &s(&["/data"]), &[])).unwrap_err();
        assert!(e.0.contains("not host-<ordinal>"), "{e}");

        let data = s(&["/data"]);
        let id = map(Tool::VolSync, facts("volsync", &data, &[])).unwrap();
        assert_eq!(id, Identity::default());
        assert!(map(Tool::VolSync, facts("host-0", &data, &[])).is_err());
        assert!(map(Tool::VolSync, facts("volsync", &paths, &[])).is_err());
    }

    #[test]
    fn selectors_naming_what_a_tool_does_not_record_are_refused() {
        let sel = Selector {
            namespace: Some("shop".into()),
            pvc: Some("db".into()),
            ..Selector::default()
        };
        assert!(sel.check(Tool::K8up).is_ok());
        let e = sel.check(Tool::Velero).unwrap_err();
        assert!(e.starts_with("--pvc cannot select Velero snapshots"), "{e}");
        assert!(e.contains("--pvc-uid"), "{e}");
        let e = sel.check(Tool::VolSync).unwrap_err();
        assert!(e.contains("--namespace, --pvc"), "{e}");
        assert!(e.contains("time alone"), "{e}");
    }

    fn adopted(id: &str, t: &str, identity: Identity) -> Adopted {
        Adopted {
            id: id.into(),
            time: DateTime::parse_from_rfc3339(t).unwrap(),
            identity,
        }
    }

    #[test]
    fn choose_picks_the_latest_at_or_before_the_time_of_one_source() {
        let pvc = |ns: &str, p: &str| Identity {
            namespace: Some(ns.into()),
            pvc: Some(p.into()),
            ..Identity::default()
        };
        let all = vec![
            adopted("a", "2026-01-01T00:00:00Z", pvc("shop", "db")),
            adopted("b", "2026-01-02T00:00:00Z", pvc("shop", "db")),
            adopted("c", "2026-01-03T00:00:00Z", pvc("shop", "db")),
            adopted("d", "2026-01-02T00:00:00Z", pvc("shop", "web")),
            adopted("e", "2026-01-02T00:00:00Z", pvc("bank", "db")),
        ];
        let sel = |ns: Option<&str>, p: Option<&str>| Selector {
            namespace: ns.map(Into::into),
            pvc: p.map(Into::into),
            ..Selector::default()
        };
        let t = |s: &str| Some(DateTime::parse_from_rfc3339(s).unwrap());
        assert_eq!(choose(&all, &sel(Some("shop"), Some("db")), None), Ok(2));
        assert_eq!(
            choose(
                &all,
                &sel(Some("shop"), Some("db")),
                t("2026-01-02T12:00:00Z")
            ),
            Ok(1)
        );
        assert_eq!(
            choose(
                &all,
                &sel(Some("shop"), Some("db")),
                t("2026-01-02T00:00:00Z")
            ),
            Ok(1)
        );
        match choose(
            &all,
            &sel(Some("shop"), Some("db")),
            t("2025-12-31T00:00:00Z"),
        ) {
            Err(ChooseError::TooEarly { first, .. }) => assert!(first.starts_with("2026-01-01")),
            other => panic!("{other:?}"),
        }
        match choose(&all, &sel(None, Some("db")), None) {
            Err(ChooseError::Ambiguous { sources }) => assert_eq!(
                sources,
                ["namespace bank, pvc/db", "namespace shop, pvc/db"]
            ),
            other => panic!("{other:?}"),
        }
        let e = choose(&all, &sel(Some("shop"), Some("cache")), None).unwrap_err();
        assert!(e.to_string().contains("namespace shop, pvc/web"), "{e}");

        // Velero: one PVC over pods renamed by rollouts is one source.
        let vel = |pod: &str| Identity {
            namespace: Some("shop".into()),
            pod: Some(pod.into()),
            volume: Some("data".into()),
            pvc_uid: Some("p1".into()),
            ..Identity::default()
        };
        let all = vec![
            adopted("a", "2026-01-01T00:00:00Z", vel("web-1")),
            adopted("b", "2026-01-02T00:00:00Z", vel("web-2")),
        ];
        let sel = Selector {
            namespace: Some("shop".into()),
            volume: Some("data".into()),
            ..Selector::default()
        };
        assert_eq!(choose(&all, &sel, None), Ok(1));
    }
}
