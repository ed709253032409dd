//! Reconciles RestoreSessions: resolves the target (a pod, the pods
//! mounting a PersistentVolumeClaim, or a workload's pods) into one item per
//! target volume on its pod's node, then follows the items the agents
//! update until the restore is Succeeded, PartiallyFailed or Failed.
//!
//! - Volumes: `spec.volumes` maps snapshot volumes to target volumes; when
//!   empty, each target pod's volumes opted in with `stash.rs/backup-volumes`
//!   (for a PVC target: the pod's volumes mounting that claim) are restored
//!   from the snapshot volume of the same name. A volume backed by a claim
//!   another pod of the target already mounts gets no second item.
//! - Source: `spec.source` names whose snapshots `latest` picks among
//!   ([`identity::source_hosts`]); when unset, the target's own identity:
//!   `<ns>/<claim>` for a claim-backed volume, `<ns>/<workload>/<snapshot
//!   volume>` otherwise (the snapshot volume, not the target volume, since
//!   the snapshot was taken under that name).
//! - Security, as for backups: the Repository's usage policy must admit the
//!   session's namespace; only pods and claims of that namespace are looked
//!   at; hostPath target volumes only inside the allow-list. A source in
//!   another namespace is refused unless the Repository is the session's own
//!   (a tenant of a shared Repository restores only its own snapshots).
//!   Refusals are conditions and Warning events.
//! - Waiting: a target pod need not run (it may sit in the `stash
//!   restore-wait` init container until the agent's marker releases it),
//!   but it must be scheduled, and a workload must have all its pods. Until
//!   then the session stays Pending with `Ready=False WaitingForTarget`,
//!   looked at again every few seconds; `spec.timeout` (counted from the
//!   session's creation) bounds the wait and the whole restore: at the
//!   deadline, unscheduled pods' items and unfinished items fail.
//!
//! Status writes are conditional on `resourceVersion`, as for backups (see
//! [`crate::session`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use stash_api::annotations::opted_in_volumes;
use stash_api::{
    identity, parse_duration, ItemPhase, RestoreItem, RestoreSession, RestoreSessionStatus,
    SessionPhase,
};

use crate::error::{kube_err, Error, Result};
use crate::scheduler::{check_repository, publish};
use crate::security::{HostPathAllowList, Refusal};
use crate::session::Note;
use crate::status::{write_if_unchanged, Written};
use crate::targets::{claim_pods, claim_volumes, get_pod, workload_pods};
use crate::time::{from_time, to_time};
use crate::{conditions, Context};

/// How often a restore waiting for its target looks again.
const WAIT_POLL: Duration = Duration::from_secs(2);
/// How often a reconciliation reads the session again after a conflict.
const ATTEMPTS: usize = 5;

/// Reconciles one RestoreSession.
pub async fn reconcile(rs: Arc<RestoreSession>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics
        .reconciles
        .with_label_values(&["RestoreSession"])
        .inc();
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let api: Api<RestoreSession> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = rs;
    for _ in 0..ATTEMPTS {
        if let Some(action) = step(&current, &ctx).await? {
            return Ok(action);
        }
        ctx.metrics.status_conflicts.inc();
        match api
            .get_opt(&name)
            .await
            .map_err(kube_err("get RestoreSession", &ns, &name))?
        {
            Some(s) => current = Arc::new(s),
            None => return Ok(Action::await_change()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

async fn step(rs: &RestoreSession, ctx: &Context) -> Result<Option<Action>> {
    let old = rs.status.clone().unwrap_or_default();
    if old.phase.is_finished() {
        return Ok(Some(Action::await_change()));
    }
    let now = Utc::now();
    let deadline = deadline(rs);
    let mut status = old.clone();
    let (action, notes) = if old.start_time.is_none() {
        start(rs, ctx, &mut status, now, deadline).await?
    } else {
        decide(&mut status, now, deadline)
    };
    let api: Api<RestoreSession> =
        Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    match write_if_unchanged(&api, rs, &old, &status, "update RestoreSession status").await? {
        Written::Conflict => Ok(None),
        Written::Done | Written::Unchanged => {
            for n in notes {
                publish(ctx, rs, n.type_, &n.reason, &n.message).await;
            }
            Ok(Some(action))
        }
    }
}

/// `spec.timeout` after the session's creation.
fn deadline(rs: &RestoreSession) -> Option<DateTime<Utc>> {
    let timeout = parse_duration(rs.spec.timeout.as_deref()?).ok()?;
    let created = rs.metadata.creation_timestamp.as_ref().map(from_time)?;
    created.checked_add_signed(chrono::Duration::from_std(timeout).ok()?)
}

fn fail(
    status: &mut RestoreSessionStatus,
    now: DateTime<Utc>,
    generation: Option<i64>,
    reason: &str,
    message: String,
) -> (Action, Vec<Note>) {
    status.phase = SessionPhase::Failed;
    status.completion_time = Some(to_time(now));
    conditions::set(
        &mut status.conditions,
        "Ready",
        false,
        reason,
        message.clone(),
        generation,
        to_time(now),
    );
    (
        Action::await_change(),
        vec![Note {
            type_: EventType::Warning,
            reason: reason.to_owned(),
            message,
        }],
    )
}

/// Resolves the items, waits for the target, or fails with the reason.
async fn start(
    rs: &RestoreSession,
    ctx: &Context,
    status: &mut RestoreSessionStatus,
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) -> Result<(Action, Vec<Note>)> {
    let ns = rs.namespace().unwrap_or_default();
    let generation = rs.metadata.generation;
    let user = format!("RestoreSession {ns}/{}", rs.name_any());
    let repo = match check_repository(ctx, &ns, &user, &rs.spec.repository).await? {
        Ok(repo) => repo,
        Err(r) => return Ok(fail(status, now, generation, r.reason, r.message)),
    };
    if let Err(r) = source_allowed(rs, &ns, repo.metadata.namespace.as_deref(), &user) {
        return Ok(fail(status, now, generation, r.reason, r.message));
    }
    let expired = deadline.is_some_and(|d| now >= d);
    let (pods, waiting) = target(ctx, rs, &ns).await?;
    if let Some(why) = waiting.filter(|_| !expired) {
        conditions::set(
            &mut status.conditions,
            "Ready",
            false,
            "WaitingForTarget",
            format!(
                "{why}{}",
                deadline
                    .map(|d| format!("; waiting until {}", d.to_rfc3339()))
                    .unwrap_or_default()
            ),
            generation,
            to_time(now),
        );
        return Ok((Action::requeue(WAIT_POLL), Vec::new()));
    }
    if pods.is_empty() {
        return Ok(fail(
            status,
            now,
            generation,
            "TargetNotFound",
            format!("{user}: no pod of the target exists in namespace {ns} (spec.timeout passed)"),
        ));
    }
    let resolution = resolve_restore_items(rs, &pods, &ctx.settings.host_paths);
    let mut notes = Vec::new();
    if !resolution.refused.is_empty() {
        let message = resolution.refused.join("; ");
        conditions::set(
            &mut status.conditions,
            "HostPathNotAllowed",
            true,
            "HostPathNotAllowed",
            message.clone(),
            generation,
            to_time(now),
        );
        notes.push(Note {
            type_: EventType::Warning,
            reason: "HostPathNotAllowed".into(),
            message,
        });
    }
    if resolution.items.is_empty() {
        let message = format!(
            "nothing to restore: {} target pod(s), and no volume to restore into{}",
            pods.len(),
            if rs.spec.volumes.is_empty() {
                " (list the volumes in spec.volumes, or opt them in with the stash.rs/backup-volumes pod annotation)"
            } else {
                ""
            }
        );
        let (action, more) = fail(status, now, generation, "NoVolumes", message);
        notes.extend(more);
        return Ok((action, notes));
    }
    status.items = resolution.items;
    status.phase = SessionPhase::Running;
    status.start_time = Some(to_time(now));
    conditions::set(
        &mut status.conditions,
        "Ready",
        true,
        "Resolved",
        format!(
            "{} volume(s) assigned to their nodes' agents",
            status.items.len()
        ),
        generation,
        to_time(now),
    );
    let (action, more) = decide(status, now, deadline);
    notes.extend(more);
    Ok((action, notes))
}

/// A source in another namespace only out of the session's own Repository.
fn source_allowed(
    rs: &RestoreSession,
    ns: &str,
    repo_ns: Option<&str>,
    user: &str,
) -> std::result::Result<(), Refusal> {
    let Some(src_ns) = rs.spec.source.as_ref().and_then(|s| s.namespace.as_deref()) else {
        return Ok(());
    };
    if src_ns == ns || repo_ns == Some(ns) {
        return Ok(());
    }
    Err(Refusal {
        reason: "SourceNotAllowed",
        message: format!(
            "{user} may not restore snapshots of namespace {src_ns} from Repository {}/{}: \
             a shared Repository gives each namespace only its own snapshots (restore from a \
             Repository in {ns}, or leave spec.source.namespace unset)",
            repo_ns.unwrap_or_default(),
            rs.spec.repository.name
        ),
    })
}

/// The target's pods, and why to wait for more, if so.
async fn target(
    ctx: &Context,
    rs: &RestoreSession,
    ns: &str,
) -> Result<(Vec<Pod>, Option<String>)> {
    let t = &rs.spec.target;
    let (mut pods, mut waiting) = if let Some(name) = &t.pod {
        let pod = get_pod(&ctx.client, ns, name).await?;
        let why = pod
            .is_none()
            .then(|| format!("pod {ns}/{name} does not exist yet"));
        (pod.into_iter().collect::<Vec<_>>(), why)
    } else if let Some(claim) = &t.persistent_volume_claim {
        let pods = claim_pods(&ctx.client, ns, claim).await?;
        let why = pods
            .is_empty()
            .then(|| format!("no pod mounts PersistentVolumeClaim {ns}/{claim} yet"));
        (pods, why)
    } else if let Some(w) = &t.workload {
        match workload_pods(&ctx.client, ns, w.kind, &w.name).await? {
            None => (
                Vec::new(),
                Some(format!("{:?} {ns}/{} does not exist yet", w.kind, w.name)),
            ),
            Some(found) => {
                let why = (found.pods.len() < found.desired || found.pods.is_empty()).then(|| {
                    format!(
                        "{:?} {ns}/{} has {} of its {} pod(s)",
                        w.kind,
                        w.name,
                        found.pods.len(),
                        found.desired.max(1)
                    )
                });
                (found.pods, why)
            }
        }
    } else {
        (Vec::new(), Some("the target names nothing".to_owned()))
    };
    pods.retain(|p| p.metadata.deletion_timestamp.is_none());
    if waiting.is_none() {
        let unscheduled: Vec<String> = pods
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
            .map(|p| p.name_any())
            .collect();
        if !unscheduled.is_empty() {
            waiting = Some(format!(
                "pod(s) {} not scheduled to a node yet",
                unscheduled.join(", ")
            ));
        }
    }
    Ok((pods, waiting))
}

/// The outcome of resolving a restore's pods into items.
#[derive(Debug, Default, PartialEq)]
pub struct RestoreResolution {
    /// One per target volume.
    pub items: Vec<RestoreItem>,
    /// Volumes refused (hostPath outside the allow-list), as messages.
    pub refused: Vec<String>,
}

/// Items for `pods` of `rs`: see the module docs.
pub fn resolve_restore_items(
    rs: &RestoreSession,
    pods: &[Pod],
    allow: &HostPathAllowList,
) -> RestoreResolution {
    let mut out = RestoreResolution::default();
    let mut claims_done: BTreeSet<String> = BTreeSet::new();
    for pod in pods {
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.name_any();
        let pairs: Vec<(String, String)> = if !rs.spec.volumes.is_empty() {
            rs.spec
                .volumes
                .iter()
                .map(|m| (m.source.clone(), m.target.clone()))
                .collect()
        } else if let Some(claim) = &rs.spec.target.persistent_volume_claim {
            claim_volumes(pod, claim)
                .into_iter()
                .map(|v| (v.clone(), v))
                .collect()
        } else {
            opted_in_volumes(pod.metadata.annotations.as_ref())
                .into_iter()
                .map(|v| (v.clone(), v))
                .collect()
        };
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        for (source, volume) in pairs {
            let spec_volume = pod
                .spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .find(|v| v.name == volume);
            let claim = identity::volume_claim(pod, &volume).map(str::to_owned);
            if let Some(c) = &claim {
                if !claims_done.insert(c.clone()) {
                    continue;
                }
            }
            let source_hosts = match rs.spec.source.as_ref().and_then(|s| s.name.as_deref()) {
                Some(src) => {
                    let src_ns = rs
                        .spec
                        .source
                        .as_ref()
                        .and_then(|s| s.namespace.as_deref())
                        .unwrap_or(&ns);
                    identity::source_hosts(src_ns, src, &source)
                }
                None => vec![match &claim {
                    Some(c) => format!("{ns}/{c}"),
                    None => format!("{ns}/{}/{source}", identity::workload_name(pod)),
                }],
            };
            let mut item = RestoreItem {
                namespace: ns.clone(),
                pod: name.clone(),
                volume: volume.clone(),
                source_volume: source,
                node: node.clone(),
                source_hosts,
                ..RestoreItem::default()
            };
            match spec_volume {
                None => {
                    item.phase = ItemPhase::Failed;
                    item.error = Some(format!("pod {ns}/{name} has no volume named {volume:?}"));
                }
                Some(v) => {
                    if let Some(hp) = &v.host_path {
                        if !allow.allows(&hp.path) {
                            out.refused.push(format!(
                                "volume {volume:?} of pod {ns}/{name} is hostPath {:?}, outside the \
                                 controller's allowed host paths (--allow-host-path)",
                                hp.path
                            ));
                            continue;
                        }
                    }
                    if node.is_none() {
                        item.phase = ItemPhase::Failed;
                        item.error = Some(format!(
                            "pod {ns}/{name} was not scheduled to a node before spec.timeout; \
                             no agent can write {volume:?}"
                        ));
                    }
                }
            }
            out.items.push(item);
        }
    }
    out
}

/// Fails what outlived the deadline, updates progress, and sets the final
/// phase once every item is finished.
fn decide(
    status: &mut RestoreSessionStatus,
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) -> (Action, Vec<Note>) {
    let expired = deadline.is_some_and(|d| now >= d);
    if expired {
        for item in status.items.iter_mut().filter(|i| !i.phase.is_finished()) {
            item.phase = ItemPhase::Failed;
            item.error = Some(format!(
                "timed out: not finished by spec.timeout; the claim of {} was revoked",
                item.claim.claimed_by.as_deref().unwrap_or("no agent")
            ));
            item.claim.claimed_by = None;
            item.end_time = Some(to_time(now));
        }
    }
    let total = status.items.len();
    let count = |p: ItemPhase| status.items.iter().filter(|i| i.phase == p).count();
    let (succeeded, failed) = (count(ItemPhase::Succeeded), count(ItemPhase::Failed));
    status.progress = Some(format!("{}/{total}", succeeded + failed));
    if succeeded + failed < total {
        let action = deadline
            .and_then(|d| (d - now).to_std().ok())
            .map(Action::requeue)
            .unwrap_or_else(Action::await_change);
        return (action, Vec::new());
    }
    status.phase = match failed {
        0 => SessionPhase::Succeeded,
        f if f == total => SessionPhase::Failed,
        _ => SessionPhase::PartiallyFailed,
    };
    status.completion_time = Some(to_time(now));
    let note = match status.phase {
        SessionPhase::Succeeded => Note {
            type_: EventType::Normal,
            reason: "Succeeded".into(),
            message: format!("all {total} volume(s) restored"),
        },
        phase => Note {
            type_: EventType::Warning,
            reason: format!("{phase:?}"),
            message: format!("{failed} of {total} volume(s) failed to restore"),
        },
    };
    (Action::await_change(), vec![note])
}

/// Logs and counts a failed reconciliation and retries it soon.
pub fn error_policy(rs: Arc<RestoreSession>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(object = %format!("{}/{}", rs.namespace().unwrap_or_default(), rs.name_any()), error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["RestoreSession", err.metric_label()])
        .inc();
    Action::requeue(Duration::from_secs(5))
}
