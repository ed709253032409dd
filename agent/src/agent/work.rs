//! Running one piece of work: prepare (find the volume's directory and the
//! repository; wait, unclaimed, while they are not ready), claim, run the
//! blocking engine call on a worker thread while a task reports progress,
//! and finish with the result or the error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use chrono::Utc;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use repo_format::ops::backup::{backup_with_progress, BackupOptions};
use repo_format::ops::forget::{self, Count, GroupBy, KeepDuration, Policy};
use repo_format::ops::progress::Progress;
use repo_format::ops::restore::{restore_with_progress, Overwrite, Privileged, RestoreOptions};
use repo_format::repository::lock::{LockTiming, RepoLock};
use repo_format::{FileType, Id, NodeType, Repository};
use serde_json::{json, Map, Value};
use stash_api::identity::{self, TAG_CONFIG, TAG_NAMESPACE};
use stash_api::time::{from_time, to_time};
use stash_api::{
    BackupConfiguration, BackupSession, OverwritePolicy, PrivilegedContent, PruneDecision,
    RestoreSession, RetentionPolicy,
};

use super::claim::{self, Previous, Slot};
use super::maintenance::{MaintenanceLease, Taken, LEASE_DURATION};
use super::repository::{fetch, RepoAccess};
use super::volumes::{self, PvLocation, VolumeKind};
use super::{Ctx, Scope, Work};

/// The marker a finished restore leaves in the volume's root for
/// `stash restore-wait`.
pub const RESTORE_MARKER: &str = ".stash-restore-done";

/// How often a wait for a repository lock is logged.
const LOCK_WAIT_LOG_EVERY: Duration = Duration::from_secs(60);
/// The longest pause between two attempts to take a repository lock (the
/// wait notices a cancellation within it).
const LOCK_WAIT_MAX_PAUSE: Duration = Duration::from_secs(10);

/// The fraction of unreadable entries at which a backup item fails
/// instead of writing its snapshot ("most or all of the volume").
const MAX_UNREADABLE: f64 = 0.5;

/// Why work cannot start.
enum NotReady {
    /// Not yet: the item stays Pending with this message.
    Wait(String),
    /// Never: the item fails with this message.
    Refuse(String),
}

impl From<anyhow::Error> for NotReady {
    fn from(e: anyhow::Error) -> Self {
        NotReady::Refuse(chain(&e))
    }
}

fn chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}

fn now() -> Time {
    to_time(Utc::now())
}

/// The result fields of a finished piece of work.
struct Done {
    fields: Map<String, Value>,
    bytes: u64,
    files: u64,
    file_errors: u64,
    /// The work ran to its end but failed (a check that found damage): the
    /// fields are written with phase Failed and this error.
    failure: Option<String>,
}

/// A claimed piece of work: where to write its status.
struct Claimed<'a> {
    ctx: &'a Ctx,
    kind: &'static str,
    namespace: String,
    name: String,
    slot: Slot,
}

impl Claimed<'_> {
    async fn patch(&self, patch: Value) -> Result<(), kube::Error> {
        let patch: json_patch::Patch =
            serde_json::from_value(patch).expect("well-formed JSON patch");
        let pp = PatchParams::default();
        match self.kind {
            "restore" => {
                let api: Api<RestoreSession> =
                    Api::namespaced(self.ctx.client.clone(), &self.namespace);
                api.patch_status(&self.name, &pp, &Patch::Json::<()>(patch))
                    .await
                    .map(|_| ())
            }
            "check" => {
                let api: Api<stash_api::Repository> =
                    Api::namespaced(self.ctx.client.clone(), &self.namespace);
                api.patch_status(&self.name, &pp, &Patch::Json::<()>(patch))
                    .await
                    .map(|_| ())
            }
            _ => {
                let api: Api<BackupSession> =
                    Api::namespaced(self.ctx.client.clone(), &self.namespace);
                api.patch_status(&self.name, &pp, &Patch::Json::<()>(patch))
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Writes `fields` if we still hold the claim. A failure that proves
    /// the claim is gone (its `test` failed, or the session is gone) ends
    /// at once with [`Write::Lost`]; any other (429, 5xx, timeouts, a
    /// broken connection) is retried with backoff for up to `budget`, and
    /// then reported as [`Write::NotNow`]: the work goes on, and the next
    /// write tries again.
    async fn update(&self, fields: Map<String, Value>, budget: Duration) -> Write {
        let started = Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            let patch = claim::update(&self.slot, &self.ctx.instance, &now(), fields.clone());
            let e = match self.patch(patch).await {
                Ok(()) => return Write::Done,
                Err(e) => e,
            };
            let session = format!("{}/{}", self.namespace, self.name);
            if claim::proves_loss(&e) {
                tracing::warn!(%session, slot = ?self.slot, error = %e, "the item is no longer ours (claim revoked or taken over, or the session is gone)");
                return Write::Lost;
            }
            if started.elapsed() + pause > budget {
                tracing::warn!(%session, slot = ?self.slot, error = %e, "could not update the item (transient); the work goes on and the next update tries again");
                return Write::NotNow;
            }
            tracing::info!(%session, slot = ?self.slot, error = %e, retry_in_ms = pause.as_millis() as u64, "could not update the item (transient); retrying");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }
}

/// How a status write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    Done,
    /// The claim is proven gone.
    Lost,
    /// Transient failures only, for the whole budget.
    NotNow,
}

/// How long the final write of a result is retried through transient
/// failures: hours of work are not thrown away for a hiccup.
const FINAL_WRITE_BUDGET: Duration = Duration::from_secs(5 * 60);

/// Runs one piece of work to its end, or until it must wait (then true).
pub async fn run(ctx: &Ctx, work: Work) -> bool {
    let (kind, namespace, name, slot, previous) = match &work {
        Work::Backup(s, slot, p) => ("backup", s.namespace(), s.name_any(), slot.clone(), p),
        Work::Restore(s, slot, p) => ("restore", s.namespace(), s.name_any(), slot.clone(), p),
        Work::Retention(s, p) => ("retention", s.namespace(), s.name_any(), Slot::Retention, p),
        Work::Check(r, slot, p) => ("check", r.namespace(), r.name_any(), slot.clone(), p),
    };
    let (namespace, previous) = (namespace.unwrap_or_default(), previous.clone());
    let current = work.current_claim().unwrap_or_default();
    let c = Claimed {
        ctx,
        kind,
        namespace,
        name,
        slot,
    };
    let prepared = match &work {
        Work::Backup(s, slot, _) => prepare_backup(ctx, s, slot).await.map(Prepared::Backup),
        Work::Restore(s, slot, _) => prepare_restore(ctx, s, slot)
            .await
            .map(|p| Prepared::Restore(Box::new(p))),
        Work::Retention(s, _) => prepare_retention(ctx, s).await.map(Prepared::Retention),
        Work::Check(r, _, _) => prepare_check(ctx, r).await.map(Prepared::Check),
    };
    let prepared = match prepared {
        Ok(p) => Ok(p),
        Err(NotReady::Wait(msg)) => {
            if matches!(previous, Previous::Pending) {
                let message = format!("waiting: {msg}");
                if current.message.as_deref() != Some(message.as_str()) {
                    tracing::info!(session = %format!("{}/{}", c.namespace, c.name), slot = ?c.slot, reason = %msg, "waiting");
                    let _ = c.patch(claim::waiting(&c.slot, &message)).await;
                }
                return true;
            }
            // Taken over, but no longer possible to run: fail it.
            Err(msg)
        }
        Err(NotReady::Refuse(msg)) => Err(msg),
    };
    let attempt = current.attempt.unwrap_or(0) + 1;
    if let Err(e) = c
        .patch(claim::claim(
            &c.slot,
            &previous,
            &ctx.instance,
            attempt,
            &now(),
        ))
        .await
    {
        tracing::debug!(slot = ?c.slot, error = %e, "claim lost to another writer");
        return false;
    }
    tracing::info!(kind, session = %format!("{}/{}", c.namespace, c.name), slot = ?c.slot, attempt, "claimed");
    let (repository, volume_label) = match &prepared {
        Ok(p) => p.labels(),
        Err(_) => ("unknown".to_owned(), "unknown".to_owned()),
    };
    let labels = [kind, repository.as_str(), volume_label.as_str()];
    let started = Instant::now();
    ctx.metrics
        .in_flight
        .with_label_values(&[kind, repository.as_str()])
        .inc();
    let result = match prepared {
        Err(msg) => Err(msg),
        Ok(p) => execute(&c, p).await,
    };
    ctx.metrics
        .in_flight
        .with_label_values(&[kind, repository.as_str()])
        .dec();
    ctx.metrics
        .duration
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
    let mut fields = Map::new();
    fields.insert("endTime".into(), json!(now()));
    if matches!(ctx.scope, Scope::Job { .. }) || kind == "check" {
        // Which node the Job's pod ran on (the retention run goes to that
        // node's agent), or which agent checked.
        fields.insert("node".into(), json!(ctx.node));
    }
    let result = match result {
        Ok(Done {
            fields: f,
            failure: Some(why),
            ..
        }) => {
            fields.extend(f);
            Err(why)
        }
        r => r,
    };
    match result {
        Ok(done) => {
            ctx.metrics
                .bytes
                .with_label_values(&labels)
                .inc_by(done.bytes);
            ctx.metrics
                .files
                .with_label_values(&labels)
                .inc_by(done.files);
            ctx.metrics
                .errors
                .with_label_values(&labels)
                .inc_by(done.file_errors);
            ctx.metrics
                .items
                .with_label_values(&[
                    kind,
                    repository.as_str(),
                    volume_label.as_str(),
                    "succeeded",
                ])
                .inc();
            fields.extend(done.fields);
            fields.insert("phase".into(), json!("Succeeded"));
            tracing::info!(kind, session = %format!("{}/{}", c.namespace, c.name), slot = ?c.slot, "succeeded");
        }
        Err(msg) => {
            ctx.metrics.errors.with_label_values(&labels).inc();
            ctx.metrics
                .items
                .with_label_values(&[kind, repository.as_str(), volume_label.as_str(), "failed"])
                .inc();
            tracing::warn!(kind, session = %format!("{}/{}", c.namespace, c.name), slot = ?c.slot, error = %msg, "failed");
            fields.insert("phase".into(), json!("Failed"));
            fields.insert("error".into(), json!(msg));
            fields.insert("message".into(), json!("failed"));
        }
    }
    c.update(fields, FINAL_WRITE_BUDGET).await;
    false
}

/// Everything a piece of work needs, found before claiming it.
enum Prepared {
    Backup(BackupPlan),
    Restore(Box<RestorePlan>),
    Retention(RetentionPlan),
    Check(CheckPlan),
}

impl Prepared {
    /// The repository whose maintenance Lease the work must hold: a
    /// forget/prune, or a check (never beside a prune).
    fn maintenance(&self) -> Option<&RepoAccess> {
        match self {
            Prepared::Retention(r) => Some(&r.repo),
            Prepared::Check(c) => Some(&c.repo),
            Prepared::Backup(_) | Prepared::Restore(_) => None,
        }
    }

    fn labels(&self) -> (String, String) {
        match self {
            Prepared::Backup(p) => (p.repo.name.clone(), format!("{}:{}", p.host, p.as_path)),
            Prepared::Restore(p) => (
                p.repo.name.clone(),
                format!("{}/{}/{}", p.namespace, p.pod, p.volume),
            ),
            Prepared::Retention(p) => (p.repo.name.clone(), String::new()),
            Prepared::Check(p) => (p.repo.name.clone(), String::new()),
        }
    }
}

struct BackupPlan {
    repo: RepoAccess,
    dir: PathBuf,
    host: String,
    as_path: String,
    /// Use the path of the latest snapshot of `host` instead of `as_path`
    /// when there is one (a Job's item: the claim's snapshots keep the
    /// path the pods that mounted it gave them, so parents carry over).
    path_of_latest: bool,
    tags: Vec<String>,
}

struct RestorePlan {
    /// Leave the done marker for `stash restore-wait`.
    marker: bool,
    repo: RepoAccess,
    dir: PathBuf,
    namespace: String,
    pod: String,
    volume: String,
    session: String,
    session_uid: String,
    privileged: Privileged,
    source_volume: String,
    source_hosts: Vec<String>,
    source_tags: Vec<String>,
    snapshot: String,
    before: Option<chrono::DateTime<Utc>>,
    includes: Vec<String>,
    excludes: Vec<String>,
    overwrite: Overwrite,
    /// An adopted repository's tool and the source chosen in it
    /// (`spec.adopted`).
    adopted: Option<(stash_api::adopt::Tool, stash_api::adopt::Selector)>,
}

struct RetentionPlan {
    repo: RepoAccess,
    namespace: String,
    config: String,
    policy: Option<RetentionPolicy>,
}

fn slot_identity(slot: &Slot) -> (&str, &str, &str) {
    match slot {
        Slot::Item {
            namespace,
            pod,
            volume,
            ..
        } => (namespace, pod, volume),
        Slot::Retention | Slot::Check { .. } => ("", "", ""),
    }
}

/// The pod of an item, checked to be ours to read.
async fn item_pod(ctx: &Ctx, session_ns: &str, ns: &str, pod: &str) -> Result<Pod, NotReady> {
    if ns != session_ns {
        return Err(NotReady::Refuse(format!(
            "the item names pod {ns}/{pod}, outside the session's namespace {session_ns}: refused"
        )));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let p = pods
        .get_opt(pod)
        .await
        .map_err(|e| NotReady::Wait(format!("cannot read pod {ns}/{pod}: {e}")))?
        .ok_or_else(|| NotReady::Wait(format!("pod {ns}/{pod} does not exist")))?;
    let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
    if node.as_deref() != Some(ctx.node.as_str()) {
        return Err(NotReady::Refuse(format!(
            "pod {ns}/{pod} runs on node {}, not on this agent's node {}",
            node.as_deref().unwrap_or("(none)"),
            ctx.node
        )));
    }
    Ok(p)
}

/// The directory holding `volume` of `pod` on this node.
async fn volume_dir(ctx: &Ctx, pod: &Pod, volume: &str) -> Result<PathBuf, NotReady> {
    let ns = pod.namespace().unwrap_or_default();
    let uid = pod.uid().unwrap_or_default();
    let dir = match volumes::classify(pod, volume).map_err(NotReady::Refuse)? {
        VolumeKind::EmptyDir => volumes::empty_dir(&ctx.kubelet_root, &uid, volume),
        // Judged where the path resolves on the host, not only lexically.
        VolumeKind::HostPath(path) => ctx
            .host_paths
            .resolve(&ns, &ctx.host_root, &path)
            .map_err(|e| NotReady::Refuse(format!("volume {volume:?}: {e}")))?,
        VolumeKind::Claim(claim) => {
            let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
            let pvc = pvcs
                .get_opt(&claim)
                .await
                .map_err(|e| {
                    NotReady::Wait(format!(
                        "cannot read PersistentVolumeClaim {ns}/{claim}: {e}"
                    ))
                })?
                .ok_or_else(|| {
                    NotReady::Wait(format!("PersistentVolumeClaim {ns}/{claim} does not exist"))
                })?;
            let pv_name = pvc
                .spec
                .and_then(|s| s.volume_name)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| {
                    NotReady::Wait(format!(
                        "PersistentVolumeClaim {ns}/{claim} is not bound to a volume yet"
                    ))
                })?;
            let pvs: Api<PersistentVolume> = Api::all(ctx.client.clone());
            let pv = pvs
                .get_opt(&pv_name)
                .await
                .map_err(|e| {
                    NotReady::Wait(format!("cannot read PersistentVolume {pv_name}: {e}"))
                })?
                .ok_or_else(|| {
                    NotReady::Wait(format!("PersistentVolume {pv_name} does not exist"))
                })?;
            match volumes::pv_dir(&ctx.kubelet_root, &uid, &pv).map_err(NotReady::Refuse)? {
                PvLocation::Kubelet(d) => d,
                // A hostPath PersistentVolume names a host directory as a
                // hostPath volume does (whoever made the PV, a claim of this
                // namespace may bind it): the same allow-list.
                PvLocation::Host(path) => ctx
                    .host_paths
                    .resolve(&ns, &ctx.host_root, &path)
                    .map_err(|e| {
                        NotReady::Refuse(format!(
                            "volume {volume:?} is PersistentVolume {pv_name}: {e}"
                        ))
                    })?,
            }
        }
    };
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(NotReady::Refuse(format!("{} is not a directory", dir.display()))),
        Err(_) => Err(NotReady::Wait(format!(
            "volume {volume:?} of pod {ns}/{} is not mounted on this node yet ({} does not exist; is --kubelet-root {} right?)",
            pod.name_any(),
            dir.display(),
            ctx.kubelet_root.display()
        ))),
    }
}

/// A Job executor's volume: its own mount of the claim it was started for
/// (from its command line, never from status).
fn job_volume(
    ctx: &Ctx,
    session_ns: &str,
    ns: &str,
    volume: &str,
) -> Option<Result<(String, PathBuf), NotReady>> {
    let Scope::Job { claim, mount, .. } = &ctx.scope else {
        return None;
    };
    if ns != session_ns || volume != claim {
        return Some(Err(NotReady::Refuse(format!(
            "the item names {ns}/{volume}, not this Job's PersistentVolumeClaim {session_ns}/{claim}: refused"
        ))));
    }
    Some(match std::fs::metadata(mount) {
        Ok(m) if m.is_dir() => Ok((claim.clone(), mount.clone())),
        _ => Err(NotReady::Refuse(format!(
            "PersistentVolumeClaim {ns}/{claim} is not mounted at {} in this Job's pod",
            mount.display()
        ))),
    })
}

/// The repository session `s` writes to, named by its configuration and
/// opened on the session's behalf (its namespace's tenant rules apply).
async fn session_repository(ctx: &Ctx, s: &BackupSession) -> Result<RepoAccess, NotReady> {
    let session_ns = s.namespace().unwrap_or_default();
    let cfg = backup_configuration(ctx, &session_ns, &s.spec.backup_configuration).await?;
    let user = format!("BackupSession {session_ns}/{}", s.name_any());
    writable(
        fetch(
            &ctx.client,
            &ctx.tenants,
            &ctx.secrets,
            &session_ns,
            &user,
            &cfg.spec.repository,
        )
        .await?,
    )
}

/// `repo`, unless nothing may be written to it (defence in depth: the
/// controller refuses such configurations first).
fn writable(repo: RepoAccess) -> Result<RepoAccess, NotReady> {
    match &repo.read_only {
        Some(why) => Err(NotReady::Refuse(why.clone())),
        None => Ok(repo),
    }
}

async fn prepare_backup(ctx: &Ctx, s: &BackupSession, slot: &Slot) -> Result<BackupPlan, NotReady> {
    let session_ns = s.namespace().unwrap_or_default();
    let (ns, pod_name, volume) = slot_identity(slot);
    let cfg_name = &s.spec.backup_configuration;
    if let Some(found) = job_volume(ctx, &session_ns, ns, volume) {
        let (claim, dir) = found?;
        let repo = session_repository(ctx, s).await?;
        return Ok(BackupPlan {
            repo,
            dir,
            host: format!("{ns}/{claim}"),
            as_path: identity::snapshot_path(&claim),
            path_of_latest: true,
            tags: identity::snapshot_tags(ns, job_pod(ctx), &claim, &s.name_any(), cfg_name),
        });
    }
    let pod = item_pod(ctx, &session_ns, ns, pod_name).await?;
    let phase = pod
        .status
        .as_ref()
        .and_then(|st| st.phase.clone())
        .unwrap_or_default();
    if phase != "Running" {
        return Err(NotReady::Wait(format!(
            "pod {ns}/{pod_name} is {phase}, not Running"
        )));
    }
    let dir = volume_dir(ctx, &pod, volume).await?;
    let repo = session_repository(ctx, s).await?;
    // The snapshot identity comes from the pod, never from the item's
    // `host` in status: a tenant able to patch status would otherwise
    // write snapshots under another workload's identity (in a shared
    // Repository, another tenant's), which that workload's restores and
    // retention would then pick.
    let host = identity::snapshot_host(&pod, volume);
    Ok(BackupPlan {
        repo,
        dir,
        host,
        as_path: identity::snapshot_path(volume),
        path_of_latest: false,
        tags: identity::snapshot_tags(ns, pod_name, volume, &s.name_any(), cfg_name),
    })
}

fn job_pod(ctx: &Ctx) -> &str {
    match &ctx.scope {
        Scope::Job { pod, .. } => pod,
        Scope::Node => "",
    }
}

async fn backup_configuration(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<BackupConfiguration, NotReady> {
    let configs: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), ns);
    configs
        .get_opt(name)
        .await
        .map_err(|e| NotReady::Wait(format!("cannot read BackupConfiguration {ns}/{name}: {e}")))?
        .ok_or_else(|| NotReady::Refuse(format!("BackupConfiguration {ns}/{name} does not exist")))
}

async fn prepare_restore(
    ctx: &Ctx,
    s: &RestoreSession,
    slot: &Slot,
) -> Result<RestorePlan, NotReady> {
    let session_ns = s.namespace().unwrap_or_default();
    let (ns, pod_name, volume) = slot_identity(slot);
    let spec = &s.spec;
    let repo_ns = spec.repository.namespace.as_deref().unwrap_or(&session_ns);
    // Where to, and which snapshots: from the spec and the pod (or the
    // Job's own mount and claim), never from the item's
    // `sourceVolume`/`sourceHosts` in status (a tampered or emptied list
    // would restore another workload's or namespace's data).
    let (dir, source_volume, source_hosts, marker) = match job_volume(ctx, &session_ns, ns, volume)
    {
        Some(found) => {
            let (claim, dir) = found?;
            let (v, hosts) =
                identity::claim_restore_source(spec, ns, &claim, repo_ns == session_ns)
                    .map_err(NotReady::Refuse)?;
            // No pod waits for a marker in a claim a Job restores into,
            // and the pods that mount it later must see only the data.
            (dir, v, hosts, false)
        }
        None => {
            let pod = item_pod(ctx, &session_ns, ns, pod_name).await?;
            let dir = volume_dir(ctx, &pod, volume).await?;
            let (v, hosts) = identity::restore_source(spec, &pod, volume, repo_ns == session_ns)
                .map_err(NotReady::Refuse)?;
            (dir, v, hosts, true)
        }
    };
    let user = format!("RestoreSession {session_ns}/{}", s.name_any());
    let repo = fetch(
        &ctx.client,
        &ctx.tenants,
        &ctx.secrets,
        &session_ns,
        &user,
        &s.spec.repository,
    )
    .await?;
    let mut privileged = Privileged::default();
    for k in &spec.privileged {
        match k {
            PrivilegedContent::Devices => privileged.devices = true,
            PrivilegedContent::Setid => privileged.setid = true,
            PrivilegedContent::Capabilities => privileged.capabilities = true,
            PrivilegedContent::SecurityXattrs => privileged.security_xattrs = true,
        }
    }
    let beyond = privileged.beyond(ctx.allow_privileged);
    if !beyond.is_empty() {
        return Err(NotReady::Refuse(format!(
            "spec.privileged asks to restore {}, which this cluster's node agents do not allow (--allow-privileged-restore)",
            beyond.join(", ")
        )));
    }
    let session_uid = s
        .uid()
        .ok_or_else(|| NotReady::Refuse("the RestoreSession has no uid".into()))?;
    // From the spec again (the controller checked first): an adopted
    // repository's source, in this namespace unless the Repository is ours.
    let adopted = match (repo.adopt, &spec.adopted) {
        (Some(tool), Some(src)) => Some((
            tool,
            src.selector(tool, &session_ns, repo_ns == session_ns)
                .map_err(NotReady::Refuse)?,
        )),
        (Some(tool), None) => {
            return Err(NotReady::Refuse(format!(
                "Repository {} is adopted from {}: name the source in spec.adopted",
                repo.name,
                tool.name()
            )))
        }
        (None, Some(_)) => {
            return Err(NotReady::Refuse(format!(
                "spec.adopted needs an adopted Repository, and {} has no spec.adopt",
                repo.name
            )))
        }
        (None, None) => None,
    };
    Ok(RestorePlan {
        adopted,
        marker,
        repo,
        dir,
        namespace: ns.to_owned(),
        pod: pod_name.to_owned(),
        volume: volume.to_owned(),
        session: s.name_any(),
        session_uid,
        privileged,
        source_volume,
        source_hosts,
        source_tags: spec
            .source
            .as_ref()
            .map(|x| x.tags.clone())
            .unwrap_or_default(),
        snapshot: spec.snapshot.clone(),
        before: spec.before.as_ref().map(from_time),
        includes: spec.include.clone(),
        excludes: spec.exclude.clone(),
        overwrite: match spec.overwrite {
            OverwritePolicy::Always => Overwrite::Always,
            OverwritePolicy::IfChanged => Overwrite::IfChanged,
            OverwritePolicy::IfNewer => Overwrite::IfNewer,
            OverwritePolicy::Never => Overwrite::Never,
        },
    })
}

async fn prepare_retention(ctx: &Ctx, s: &BackupSession) -> Result<RetentionPlan, NotReady> {
    let ns = s.namespace().unwrap_or_default();
    let cfg_name = &s.spec.backup_configuration;
    let configs: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
    let cfg = configs
        .get_opt(cfg_name)
        .await
        .map_err(|e| {
            NotReady::Wait(format!(
                "cannot read BackupConfiguration {ns}/{cfg_name}: {e}"
            ))
        })?
        .ok_or_else(|| {
            NotReady::Refuse(format!(
                "BackupConfiguration {ns}/{cfg_name} does not exist"
            ))
        })?;
    let user = format!("BackupSession {ns}/{}", s.name_any());
    let repo = writable(
        fetch(
            &ctx.client,
            &ctx.tenants,
            &ctx.secrets,
            &ns,
            &user,
            &cfg.spec.repository,
        )
        .await?,
    )?;
    Ok(RetentionPlan {
        repo,
        namespace: ns,
        config: cfg_name.clone(),
        policy: cfg.spec.retention.clone(),
    })
}

struct CheckPlan {
    repo: RepoAccess,
    /// `spec.check.readDataSubset` (from the spec: the status is the
    /// controller's and the agents', and anyone with status access could
    /// write it).
    read_data_subset: Option<String>,
}

async fn prepare_check(ctx: &Ctx, r: &stash_api::Repository) -> Result<CheckPlan, NotReady> {
    let ns = r.namespace().unwrap_or_default();
    let reference = stash_api::RepositoryReference {
        name: r.name_any(),
        namespace: None,
    };
    let user = format!("the check of Repository {ns}/{}", r.name_any());
    let repo = fetch(
        &ctx.client,
        &ctx.tenants,
        &ctx.secrets,
        &ns,
        &user,
        &reference,
    )
    .await?;
    Ok(CheckPlan {
        repo,
        read_data_subset: r
            .spec
            .check
            .as_ref()
            .and_then(|c| c.read_data_subset.clone()),
    })
}

/// Runs the engine on a worker thread, reporting `progress` every
/// `progress_every` until it ends.
async fn execute(c: &Claimed<'_>, p: Prepared) -> Result<Done, String> {
    let progress = Arc::new(Progress::default());
    let lost = Arc::new(AtomicBool::new(false));
    // A retention run first takes its repository's maintenance Lease: one
    // forget/prune per repository at a time, whoever's session it is.
    let (maintenance, last_prune) = match p.maintenance() {
        Some(repo) => {
            let (lease, last) = take_maintenance(c, repo).await?;
            (Some((lease, repo.name.clone())), last)
        }
        None => (None, None),
    };
    let work = {
        let (progress, lost) = (progress.clone(), lost.clone());
        tokio::task::spawn_blocking(move || match p {
            Prepared::Backup(b) => run_backup(&b, &progress),
            Prepared::Restore(r) => run_restore(&r, &progress),
            Prepared::Retention(r) => run_retention(&r, &lost, &progress, last_prune),
            Prepared::Check(k) => run_check(&k, &lost, &progress),
        })
    };
    tokio::pin!(work);
    let mut tick = tokio::time::interval(c.ctx.progress_every);
    tick.tick().await;
    let mut renewed = Instant::now();
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = tick.tick() => {
                if let Some((lease, _)) = &maintenance {
                    if renewed.elapsed() >= MAINTENANCE_RENEW_EVERY {
                        match lease.take().await {
                            Ok(Taken::Held { .. }) => renewed = Instant::now(),
                            Ok(Taken::Busy(holder)) => {
                                tracing::warn!(lease = %lease.name(), %holder, kind = c.kind, "the maintenance Lease was taken over; stopping");
                                lost.store(true, Ordering::Relaxed);
                                progress.cancel();
                            }
                            Err(e) if renewed.elapsed() + MAINTENANCE_RENEW_EVERY >= LEASE_DURATION => {
                                // Stop before the Lease could expire and
                                // another run start beside this one.
                                tracing::warn!(lease = %lease.name(), error = %e, kind = c.kind, "cannot renew the maintenance Lease; stopping");
                                lost.store(true, Ordering::Relaxed);
                                progress.cancel();
                            }
                            Err(e) => tracing::info!(lease = %lease.name(), error = %e, "cannot renew the maintenance Lease (transient); retrying"),
                        }
                    }
                }
                let s = progress.snapshot();
                // A retention or check run reports only its heartbeat.
                let mut f = Map::new();
                if c.kind != "retention" && c.kind != "check" {
                    f.insert("bytesDone".into(), json!(s.bytes_done));
                    f.insert("bytesTotal".into(), json!(s.bytes_total.max(s.bytes_done)));
                    f.insert("filesDone".into(), json!(s.files_done));
                    f.insert("filesTotal".into(), json!(s.files_total.max(s.files_done)));
                }
                if c.update(f, c.ctx.progress_every).await == Write::Lost {
                    // The item is no longer ours (timed out, revoked,
                    // taken over, or its session deleted): a backup stops
                    // without writing its snapshot, a restore stops
                    // writing and leaves no marker (so no pod waiting for
                    // it is released onto a half-restored volume), and a
                    // retention run stops before its next removal.
                    lost.store(true, Ordering::Relaxed);
                    progress.cancel();
                }
            }
        }
    };
    if let Some((lease, repository)) = maintenance {
        let pruned = matches!(&result, Ok(Ok(d)) if d.fields.get("pruned") == Some(&json!(true)));
        lease.release(&repository, pruned.then(Utc::now)).await;
    }
    match result {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(chain(&e)),
        Err(e) => Err(format!("internal error: {e}")),
    }
}

/// How often a retention run renews its maintenance Lease.
const MAINTENANCE_RENEW_EVERY: Duration = Duration::from_secs(15);

/// Takes the maintenance Lease of a retention run's repository, waiting
/// (with the claim's heartbeat going on, and the reason in the status)
/// while another run holds it.
async fn take_maintenance(
    c: &Claimed<'_>,
    repo: &RepoAccess,
) -> Result<(MaintenanceLease, Option<chrono::DateTime<Utc>>), String> {
    let ns = &c.ctx.namespace;
    let lease = MaintenanceLease::new(
        c.ctx.client.clone(),
        ns,
        &repo.location.to_string(),
        &c.ctx.instance,
    );
    let mut said: Option<String> = None;
    loop {
        let wait = match lease.take().await {
            Ok(Taken::Held { last_prune }) => return Ok((lease, last_prune)),
            Ok(Taken::Busy(holder)) => format!(
                "waiting for the maintenance run of {holder} on this repository to finish (Lease {ns}/{})",
                lease.name()
            ),
            Err(e) => format!(
                "cannot take the maintenance Lease {ns}/{}: {e}; retrying",
                lease.name()
            ),
        };
        let mut f = Map::new();
        if said.as_deref() != Some(wait.as_str()) {
            tracing::info!(object = %format!("{}/{}", c.namespace, c.name), kind = c.kind, reason = %wait, "waiting for the maintenance Lease");
            f.insert("message".into(), json!(wait));
            said = Some(wait);
        }
        if c.update(f, c.ctx.progress_every).await == Write::Lost {
            return Err(format!(
                "the {} run was taken from this agent while it waited for the maintenance Lease",
                c.kind
            ));
        }
        tokio::time::sleep(c.ctx.progress_every.max(Duration::from_secs(2))).await;
    }
}

/// When this process started: locks with our host name and pid that are
/// older were left by an earlier agent in this pod (a container restart
/// reuses both), and are stale although a process with that pid runs.
static STARTED: std::sync::LazyLock<chrono::DateTime<chrono::FixedOffset>> =
    std::sync::LazyLock::new(|| chrono::Local::now().fixed_offset());

/// Notes the process start (call at start-up).
pub fn note_start() {
    std::sync::LazyLock::force(&STARTED);
}

/// Removes the locks an earlier incarnation of this agent left behind.
fn remove_own_stale_locks(repo: &Repository) -> Result<usize> {
    let (_, host) = repo_format::repository::whoami();
    let pid = i64::from(std::process::id());
    let mut removed = 0;
    for id in repo.list_ids(FileType::Lock)? {
        let name = id.to_hex();
        let Ok(bytes) = repo.load_unpacked(FileType::Lock, &name) else {
            continue;
        };
        let Ok(l) = repo_format::format::repofile::LockFile::from_json(&bytes, &name) else {
            continue;
        };
        if l.hostname == host && l.pid == pid && l.time < *STARTED {
            tracing::info!(lock = %name, since = %l.time, "removing a lock an earlier run of this agent left");
            if repo.backend().remove(FileType::Lock, &name).is_ok() {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// Takes a lock, waiting while others hold a conflicting one: a backup
/// waits for a running prune (which holds the exclusive lock, possibly for
/// hours) and a retention run for running backups, as long as it takes,
/// with backoff. A holder that died is no obstacle for long: its lock goes
/// stale and is removed (see `repository::lock`). The wait ends when
/// `progress` is cancelled: the item's deadline passed or the claim was
/// lost. A lock that cannot be refreshed in time cancels `progress` (see
/// [`RepoLock::is_lost`]).
fn lock(repo: &Arc<Repository>, exclusive: bool, progress: &Arc<Progress>) -> Result<RepoLock> {
    let started = Instant::now();
    let mut cleaned = false;
    let mut pause = Duration::from_secs(1);
    let mut said = Duration::ZERO;
    loop {
        let p = progress.clone();
        let on_lost: repo_format::repository::lock::OnLost = Box::new(move || p.cancel());
        match RepoLock::acquire_with(
            repo.clone(),
            exclusive,
            LockTiming::default(),
            Some(on_lost),
        ) {
            Ok(l) => {
                if !said.is_zero() {
                    tracing::info!(
                        waited_s = started.elapsed().as_secs(),
                        "repository lock taken"
                    );
                }
                return Ok(l);
            }
            Err(repo_format::Error::Locked { .. }) if !cleaned => {
                cleaned = true;
                if remove_own_stale_locks(repo)? == 0 {
                    std::thread::sleep(pause);
                }
            }
            Err(e @ repo_format::Error::Locked { .. }) => {
                if progress.is_cancelled() {
                    return Err(e).context(format!(
                        "locking the repository: gave up after {} s (the item was cancelled or reached its deadline)",
                        started.elapsed().as_secs()
                    ));
                }
                if started.elapsed() >= said {
                    tracing::info!(error = %e, waited_s = started.elapsed().as_secs(), "waiting for the repository lock");
                    said = started.elapsed() + LOCK_WAIT_LOG_EVERY;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(LOCK_WAIT_MAX_PAUSE);
            }
            Err(e) => return Err(e).context("locking the repository"),
        }
    }
}

fn run_backup(p: &BackupPlan, progress: &Arc<Progress>) -> Result<Done> {
    let repo = p.repo.open()?;
    let lock = lock(&repo, false, progress)?;
    repo.load_index().context("loading the index")?;
    repo_format::ops::repair::reuse_interrupted_uploads(&repo, &lock);
    let as_path = if p.path_of_latest {
        let latest = repo
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| s.hostname == p.host && s.paths.len() == 1)
            .max_by_key(|(_, s)| s.time);
        latest.map_or_else(|| p.as_path.clone(), |(_, s)| s.paths[0].clone())
    } else {
        p.as_path.clone()
    };
    let res = backup_with_progress(
        &repo,
        &BackupOptions {
            paths: vec![p.dir.clone()],
            as_path: Some(as_path.clone()),
            host: Some(p.host.clone()),
            tags: p.tags.clone(),
            // A volume the agent can (almost) not read fails the item with
            // the reason instead of passing an empty snapshot for a backup.
            max_unreadable: Some(MAX_UNREADABLE),
            // The restore-done markers are ours, not the volume's data.
            skip_top: vec![RESTORE_MARKER.as_bytes().to_vec()],
            ..BackupOptions::default()
        },
        progress,
    );
    lock.check()?;
    let res = res?;
    let summary = res.snapshot.summary.clone().unwrap_or_default();
    let mut f = Map::new();
    f.insert("snapshotId".into(), json!(res.snapshot_id.to_hex()));
    if let Some(parent) = res.snapshot.parent {
        f.insert("parentSnapshotId".into(), json!(parent.to_hex()));
    }
    f.insert("bytesAdded".into(), json!(summary.data_added));
    f.insert("bytesDone".into(), json!(summary.total_bytes_processed));
    f.insert("bytesTotal".into(), json!(summary.total_bytes_processed));
    f.insert("filesDone".into(), json!(summary.total_files_processed));
    f.insert("filesTotal".into(), json!(summary.total_files_processed));
    let message = match res.errors.first() {
        None => format!(
            "snapshot {} of {}:{}: {} files, {} new, {} changed",
            res.snapshot_id.short(),
            p.host,
            as_path,
            summary.total_files_processed,
            summary.files_new,
            summary.files_changed
        ),
        Some(first) => format!(
            "snapshot {} written without {} unreadable file(s), e.g. {}: {}",
            res.snapshot_id.short(),
            res.errors.len(),
            first.path.display(),
            first.message
        ),
    };
    f.insert("message".into(), json!(message));
    Ok(Done {
        fields: f,
        bytes: summary.total_bytes_processed,
        files: summary.total_files_processed,
        file_errors: res.errors.len() as u64,
        failure: None,
    })
}

/// The snapshot a restore item reads: the named one, or the latest of the
/// source identity (before a time, if given).
fn pick_snapshot(repo: &Repository, p: &RestorePlan) -> Result<(Id, repo_format::Snapshot)> {
    // An empty source volume (a Job's restore without spec.volumes): the
    // one path of the source's snapshots, whatever the pods that mounted
    // the claim called it.
    let want_path =
        (!p.source_volume.is_empty()).then(|| identity::snapshot_path(&p.source_volume));
    if p.snapshot != "latest" {
        let id = repo
            .find_id(FileType::Snapshot, &p.snapshot)
            .with_context(|| format!("snapshot {}", p.snapshot))?;
        let snap = repo.load_snapshot(&id)?;
        // A snapshot named by id must still be one of the sources this
        // restore may read: in a shared repository, an id is no key to
        // another namespace's data.
        if !p.source_hosts.is_empty() && !p.source_hosts.contains(&snap.hostname) {
            bail!(
                "snapshot {} was taken of {}, not of {}: this restore may not read it",
                id.short(),
                snap.hostname,
                p.source_hosts.join(" or ")
            );
        }
        return Ok((id, snap));
    }
    // A snapshot file that cannot be read costs only itself (as in
    // restic's listings): a poison file must not block every restore.
    let all = repo.snapshots_readable()?;
    for (id, e) in &all.unreadable {
        tracing::warn!(snapshot = %id, error = %e, "skipping a snapshot that cannot be read");
    }
    let mut candidates: Vec<(Id, repo_format::Snapshot)> = all
        .snapshots
        .into_iter()
        .filter(|(_, s)| match &want_path {
            Some(w) => s.paths == [w.clone()],
            None => s.paths.len() == 1,
        })
        .filter(|(_, s)| p.source_hosts.is_empty() || p.source_hosts.contains(&s.hostname))
        .filter(|(_, s)| forget::has_tags(s, &p.source_tags))
        .filter(|(_, s)| p.before.is_none_or(|b| s.time.with_timezone(&Utc) < b))
        .collect();
    candidates.sort_by_key(|(_, s)| s.time);
    candidates.pop().ok_or_else(|| {
        anyhow!(
            "no snapshot of volume {} from {} in Repository {}{}",
            want_path.as_deref().unwrap_or("(any)"),
            if p.source_hosts.is_empty() {
                "any host".to_owned()
            } else {
                p.source_hosts.join(" or ")
            },
            p.repo.name,
            p.before.map(|b| format!(" before {b}")).unwrap_or_default()
        )
    })
}

/// The snapshot a restore from one of our repositories reads, and the
/// tree of its source volume.
fn own_subtree(repo: &Repository, p: &RestorePlan) -> Result<(Id, Id)> {
    let (id, snap) = pick_snapshot(repo, p)?;
    let source_volume = if p.source_volume.is_empty() {
        snap.paths
            .first()
            .map(|path| path.trim_start_matches('/').to_owned())
            .unwrap_or_default()
    } else {
        p.source_volume.clone()
    };
    let root = repo.load_tree(&snap.tree)?;
    let node = root
        .nodes
        .iter()
        .find(|n| n.name == source_volume.as_bytes())
        .ok_or_else(|| {
            anyhow!(
                "snapshot {} holds {:?}, not the volume {:?}",
                id.short(),
                snap.paths,
                source_volume
            )
        })?;
    if node.node_type != NodeType::Dir {
        bail!(
            "snapshot {}: {:?} is not a directory",
            id.short(),
            source_volume
        );
    }
    let subtree = node
        .subtree
        .ok_or_else(|| anyhow!("snapshot {}: directory without a tree", id.short()))?;
    Ok((id, subtree))
}

fn run_restore(p: &RestorePlan, progress: &Arc<Progress>) -> Result<Done> {
    let repo = p.repo.open()?;
    let lock = lock(&repo, false, progress)?;
    repo.load_index().context("loading the index")?;
    let (id, subtree) = match &p.adopted {
        Some((tool, sel)) => {
            let all = repo.snapshots_readable()?;
            for (id, e) in &all.unreadable {
                tracing::warn!(snapshot = %id, error = %e, "skipping a snapshot that cannot be read");
            }
            let at = p.before.map(|b| b.fixed_offset());
            let (id, _, tree, what) =
                crate::cmd::adopt::choose_tree(&repo, *tool, all.snapshots, sel, at)
                    .with_context(|| format!("Repository {}", p.repo.name))?;
            tracing::info!(snapshot = %id.short(), source = %what, "restoring an adopted snapshot");
            (id, tree)
        }
        None => own_subtree(&repo, p)?,
    };
    let res = restore_with_progress(
        &repo,
        &subtree,
        &RestoreOptions {
            target: p.dir.clone(),
            includes: p.includes.clone(),
            excludes: p.excludes.clone(),
            overwrite: p.overwrite,
            privileged: p.privileged,
            // A snapshot cannot plant (or replace) a restore-done marker.
            skip_top: vec![RESTORE_MARKER.as_bytes().to_vec()],
            ..RestoreOptions::default()
        },
        progress,
    );
    lock.check()?;
    let res = res?;
    if let Some(first) = res.errors.first() {
        bail!(
            "{} file(s) could not be restored from snapshot {}, e.g. {}: {}",
            res.errors.len(),
            id.short(),
            first.path,
            first.message
        );
    }
    // The marker releases the pods waiting for this restore: never for a
    // restore that was stopped.
    if progress.is_cancelled() {
        bail!("the restore was stopped (its item is no longer this agent's)");
    }
    if p.marker {
        write_marker(&p.dir, &p.session, &p.session_uid, &id)?;
    }
    let mut f = Map::new();
    f.insert("snapshotId".into(), json!(id.to_hex()));
    f.insert("bytesDone".into(), json!(res.bytes));
    f.insert("bytesTotal".into(), json!(res.bytes));
    f.insert("filesDone".into(), json!(res.files));
    f.insert("filesTotal".into(), json!(res.files));
    let withheld = match res.skipped.first() {
        None => String::new(),
        Some(first) => format!(
            "; {} entries withheld by policy, e.g. {}: {}",
            res.skipped.len(),
            first.path,
            first.message
        ),
    };
    f.insert(
        "message".into(),
        json!(format!(
            "restored snapshot {} ({} files, {} bytes written, {} unchanged) into {}/{} volume {}{withheld}",
            id.short(),
            res.files,
            res.bytes_written,
            res.files_skipped,
            p.namespace,
            p.pod,
            p.volume
        )),
    );
    Ok(Done {
        fields: f,
        bytes: res.bytes_written,
        files: res.files,
        file_errors: 0,
        failure: None,
    })
}

/// Leaves the marker `stash restore-wait` waits for, one per
/// RestoreSession (named by its UID), written atomically.
///
/// The volume belongs to a running pod, which may have put anything at
/// the marker's name (a symlink to a host file, say): everything is
/// relative to the volume's directory fd, the temporary file is created
/// with `O_CREAT|O_EXCL|O_NOFOLLOW` (a symlink or file there is removed
/// first, never followed), and `renameat` replaces whatever is at the final
/// name itself. Backups skip these names, and restores never create them.
pub fn write_marker(dir: &Path, session: &str, uid: &str, id: &Id) -> Result<()> {
    use repo_format::ops::beneath;
    use std::io::Write as _;
    use std::os::fd::AsFd as _;
    let body = serde_json::to_vec(
        &json!({"session": session, "uid": uid, "snapshot": id.to_hex(), "time": Utc::now()}),
    )?;
    let name = format!("{RESTORE_MARKER}.{uid}");
    let tmp = format!("{name}.tmp");
    let d = beneath::open_dir_path(dir).with_context(|| format!("opening {}", dir.display()))?;
    match beneath::unlink_at(d.as_fd(), tmp.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {tmp} in {}", dir.display()))
        }
        _ => {}
    }
    let fd = beneath::create_file_at(d.as_fd(), tmp.as_bytes())
        .with_context(|| format!("creating {tmp} in {}", dir.display()))?;
    let mut f = std::fs::File::from(fd);
    f.write_all(&body)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {tmp} in {}", dir.display()))?;
    rustix::fs::renameat(d.as_fd(), tmp.as_str(), d.as_fd(), name.as_str())
        .map_err(std::io::Error::from)
        .with_context(|| format!("writing the restore marker in {}", dir.display()))?;
    Ok(())
}

/// restic's retention policy from the API's.
fn policy(p: &RetentionPolicy) -> Result<Policy> {
    let n = |v: Option<u32>| v.map(Count::N);
    Ok(Policy {
        keep_last: n(p.keep_last),
        keep_hourly: n(p.keep_hourly),
        keep_daily: n(p.keep_daily),
        keep_weekly: n(p.keep_weekly),
        keep_monthly: n(p.keep_monthly),
        keep_yearly: n(p.keep_yearly),
        keep_within: p
            .keep_within
            .as_deref()
            .map(|w| {
                w.parse::<KeepDuration>()
                    .map_err(|e| anyhow!("keepWithin {w:?}: {e}"))
            })
            .transpose()?,
        keep_tags: p
            .keep_tags
            .iter()
            .map(|t| t.split(',').map(str::to_owned).collect())
            .collect(),
        ..Policy::default()
    })
}

fn run_retention(
    p: &RetentionPlan,
    lost: &AtomicBool,
    progress: &Arc<Progress>,
    last_prune: Option<chrono::DateTime<Utc>>,
) -> Result<Done> {
    let repo = p.repo.open()?;
    let mut f = Map::new();
    let mut removed = 0u64;
    let mut pruning = String::new();
    if let Some(rp) = p.policy.as_ref() {
        let policy = policy(rp)?;
        if !policy.is_empty() {
            let _lock = lock(&repo, true, progress)?;
            let ns_tag = format!("{TAG_NAMESPACE}{}", p.namespace);
            let cfg_tag = format!("{TAG_CONFIG}{}", p.config);
            let mine: Vec<_> = repo
                .snapshots()?
                .into_iter()
                .filter(|(_, s)| s.tags.contains(&ns_tag) && s.tags.contains(&cfg_tag))
                .collect();
            let by = GroupBy {
                host: true,
                paths: true,
                tags: false,
            };
            let groups = forget::apply(&mine, by, &policy, Utc::now());
            let kept: usize = groups.iter().map(|g| g.keep.len()).sum();
            let done =
                match forget::remove_forgotten(&repo, &groups, || lost.load(Ordering::Relaxed)) {
                    Err(repo_format::Error::Cancelled) => {
                        bail!("the retention run was taken from this agent; stopped")
                    }
                    r => r.context("forgetting snapshots")?,
                };
            removed = done.removed as u64;
            if let Some((id, e)) = done.failed.first() {
                bail!(
                    "{} snapshot(s) could not be removed, the first {}: {e}",
                    done.failed.len(),
                    id.short()
                );
            }
            f.insert("kept".into(), json!(kept));
            f.insert("removed".into(), json!(removed));
            let decision = if rp.prune == Some(false) {
                PruneDecision::NotDue("retention.prune is false".into())
            } else {
                p.repo
                    .maintenance
                    .prune_decision(last_prune, Utc::now())
                    .map_err(|e| anyhow!("Repository {}: {e}", p.repo.name))?
            };
            f.insert("pruned".into(), json!(decision == PruneDecision::Due));
            if let PruneDecision::NotDue(why) = &decision {
                pruning = format!("; not pruned: {why}");
            }
            if decision == PruneDecision::Due {
                if lost.load(Ordering::Relaxed) {
                    bail!("the retention run was taken from this agent; stopped before pruning");
                }
                let before = repo.stats()?.pack_bytes;
                let opts = repo_format::ops::prune::PruneOptions::default();
                let plan =
                    repo_format::ops::prune::plan(&repo, &opts).context("planning the prune")?;
                if !plan.is_empty() {
                    repo_format::ops::prune::execute(&repo, plan, &opts).context("pruning")?;
                }
                let after = repo.stats()?.pack_bytes;
                f.insert("reclaimedBytes".into(), json!(before.saturating_sub(after)));
            }
        }
    }
    let stats = repo.stats()?;
    let (snapshots, size) = (stats.snapshots, stats.pack_bytes);
    f.insert("snapshotCount".into(), json!(snapshots));
    f.insert("totalSize".into(), json!(size));
    f.insert(
        "message".into(),
        json!(format!("{removed} snapshot(s) removed{pruning}; the repository holds {snapshots} snapshot(s) in {size} bytes of packs")),
    );
    Ok(Done {
        fields: f,
        bytes: 0,
        files: 0,
        file_errors: 0,
        failure: None,
    })
}

/// How many of a check's errors its status names (the rest are counted).
const CHECK_ERRORS_SHOWN: usize = 5;

fn run_check(p: &CheckPlan, lost: &AtomicBool, progress: &Arc<Progress>) -> Result<Done> {
    use repo_format::ops::check::{check, CheckOptions, Subset};
    let subset = p
        .read_data_subset
        .as_deref()
        .map(|s| {
            s.parse::<Subset>()
                .map_err(|e| anyhow!("check.readDataSubset: {e}"))
        })
        .transpose()?;
    let repo = p.repo.open()?;
    // A shared lock, as restic's check: backups go on beside it, a prune
    // (exclusive) cannot start; the maintenance Lease keeps other agents'
    // prunes away too.
    let _lock = lock(&repo, false, progress)?;
    let report = check(
        &repo,
        CheckOptions {
            read_data: false,
            subset,
        },
    )
    .context("checking the repository")?;
    if lost.load(Ordering::Relaxed) || progress.is_cancelled() {
        bail!("the check lost its claim, its maintenance Lease or its repository lock while it ran; its result is discarded");
    }
    let mut f = Map::new();
    f.insert("snapshots".into(), json!(report.snapshots));
    f.insert("trees".into(), json!(report.trees));
    f.insert("errorCount".into(), json!(report.errors.len()));
    f.insert("warningCount".into(), json!(report.warnings.len()));
    if let Some(s) = &p.read_data_subset {
        f.insert("readDataSubset".into(), json!(s));
        f.insert("packsRead".into(), json!(report.packs_read));
    }
    for w in report.warnings.iter().take(CHECK_ERRORS_SHOWN) {
        tracing::info!(repository = %p.repo.name, warning = %w, "check warning");
    }
    let failure = (!report.is_ok()).then(|| {
        let shown: Vec<&str> = report
            .errors
            .iter()
            .take(CHECK_ERRORS_SHOWN)
            .map(String::as_str)
            .collect();
        let more = report.errors.len().saturating_sub(CHECK_ERRORS_SHOWN);
        let mut msg = format!(
            "the repository contains {} error(s): {}",
            report.errors.len(),
            shown.join("; ")
        );
        if more > 0 {
            msg.push_str(&format!("; and {more} more (run `stash check` to see all)"));
        }
        truncate(msg, 4096)
    });
    let message = match &failure {
        None => format!(
            "no errors found in {} snapshot(s) and {} tree(s){}",
            report.snapshots,
            report.trees,
            match &p.read_data_subset {
                Some(s) => format!("; {} pack(s) read (subset {s})", report.packs_read),
                None => String::new(),
            }
        ),
        Some(_) => "failed".to_owned(),
    };
    f.insert("message".into(), json!(message));
    Ok(Done {
        fields: f,
        bytes: 0,
        files: 0,
        file_errors: report.errors.len() as u64,
        failure,
    })
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max.saturating_sub(3);
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}
