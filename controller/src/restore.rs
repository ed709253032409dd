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
//!   but it must be scheduled. A pod or claim target waits until its pods
//!   exist and are scheduled, Pending with `Ready=False WaitingForTarget`,
//!   looked at again every few seconds. A workload target gets items pod by
//!   pod, as each appears and is scheduled (an OrderedReady StatefulSet
//!   creates pod N+1 only once pod N, restored, is Ready), and is over once
//!   each of its desired replicas has been restored into. `spec.timeout`
//!   (counted from the session's creation) bounds the wait and the whole
//!   restore: at the deadline, unscheduled pods' items and unfinished items
//!   fail, and replicas that never appeared count as failed.
//! - Rollout (`spec.rollout`, workload targets): the controller first marks
//!   the workload's pod template with the `stash.rs/restore-session` label
//!   and annotation, which restarts it; the admission webhook
//!   ([`crate::webhook`]) gives its new pods the restore-wait init
//!   container; only those pods are restored into. A new pod that came
//!   without it (the webhook was down) is not restored into, and a
//!   `RestoreWaitMissing` condition and Warning event say to delete it. A
//!   rollout that would restore into a claim still in use (a Deployment
//!   updating with RollingUpdate, or several replicas sharing one claim) is
//!   refused with the reason.
//!
//! Status writes are conditional on `resourceVersion`, as for backups (see
//! [`crate::session`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use stash_api::annotations::opted_in_volumes;
use stash_api::{
    identity, parse_duration, ItemCommon, ItemPhase, RestoreItem, RestoreSession,
    RestoreSessionStatus, SessionPhase, WorkloadKind, WorkloadReference,
    ANNOTATION_RESTORE_SESSION, LABEL_RESTORE_SESSION, RESTORE_WAIT_CONTAINER,
};

use crate::error::{kube_err, Error, Result};
use crate::events::publish;
use crate::scheduler::check_repository;
use crate::session::{refuse_host_paths, Note};
use crate::status::{decide_until_written, write_if_unchanged, Written};
use crate::targets::{check_volume, claim_pods, claim_volumes, get_pod, workload_pods};
use crate::{conditions, Context};
use stash_api::policy::{HostPathAllowList, Refusal};
use stash_api::time::{from_time, to_time};

/// How often a restore waiting for its target looks again.
const WAIT_POLL: Duration = Duration::from_secs(2);

/// Reconciles one RestoreSession.
pub async fn reconcile(rs: Arc<RestoreSession>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics
        .reconciles
        .with_label_values(&["RestoreSession"])
        .inc();
    let api: Api<RestoreSession> =
        Api::namespaced(ctx.client.clone(), &rs.namespace().unwrap_or_default());
    let wanted = stash_api::nodes::wanted_for_restore(rs.status.as_ref());
    crate::node_labels::sync(&api, &rs, &wanted, "label RestoreSession").await?;
    let conflicts = &ctx.metrics.status_conflicts;
    decide_until_written(&api, rs, conflicts, "get RestoreSession", |s| {
        let ctx = ctx.clone();
        async move { step(&s, &ctx).await }
    })
    .await
}

async fn step(rs: &RestoreSession, ctx: &Context) -> Result<Option<Action>> {
    let old = rs.status.clone().unwrap_or_default();
    if old.phase.is_finished() {
        ctx.notifier.offer_restore(ctx, rs);
        return Ok(Some(Action::await_change()));
    }
    let now = Utc::now();
    let deadline = deadline(rs);
    let mut status = old.clone();
    let (action, notes) = if let Some(w) = &rs.spec.target.workload {
        workload_step(rs, w, ctx, &mut status, now, deadline).await?
    } else if old.start_time.is_none() {
        start(rs, ctx, &mut status, now, deadline).await?
    } else if status.items.iter().any(|i| i.common.runs_in_job()) {
        follow_jobs(rs, ctx, &mut status, now, deadline).await?
    } else {
        decide(&mut status, now, deadline, 0)
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

/// How often a restore with Job items looks at their pods (pods are not
/// watched).
const JOB_POLL: Duration = Duration::from_secs(3);

/// A running restore with Job items: drives the Jobs, then decides.
async fn follow_jobs(
    rs: &RestoreSession,
    ctx: &Context,
    status: &mut RestoreSessionStatus,
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) -> Result<(Action, Vec<Note>)> {
    let ns = rs.namespace().unwrap_or_default();
    let r = &rs.spec.repository;
    let repos: Api<stash_api::Repository> =
        Api::namespaced(ctx.client.clone(), r.namespace.as_deref().unwrap_or(&ns));
    let repo = repos
        .get_opt(&r.name)
        .await
        .map_err(kube_err("get Repository", &ns, &r.name))?;
    let job_notes = crate::jobs::drive(
        ctx,
        &crate::jobs::JobSession::restore(rs),
        &mut status.items,
        repo.as_ref(),
        deadline,
        now,
    )
    .await?;
    let (mut action, mut notes) = decide(status, now, deadline, 0);
    if !status.phase.is_finished() {
        action = Action::requeue(JOB_POLL);
    } else {
        // One more pass revokes the finished items' grants.
        crate::jobs::drive(
            ctx,
            &crate::jobs::JobSession::restore(rs),
            &mut status.items,
            repo.as_ref(),
            deadline,
            now,
        )
        .await?;
    }
    notes.extend(job_notes.into_iter().map(|(reason, message)| Note {
        type_: EventType::Warning,
        reason: reason.into(),
        message,
    }));
    Ok((action, notes))
}

/// The item of a restore into PersistentVolumeClaim `claim` by a Job
/// (`spec.executor: job`), once the claim exists and no pod mounts it;
/// `Err(why)` while it must wait.
async fn job_restore_item(
    ctx: &Context,
    rs: &RestoreSession,
    ns: &str,
    claim: &str,
    repo_in_session_ns: bool,
) -> Result<std::result::Result<RestoreItem, String>> {
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(ctx.client.clone(), ns);
    if pvcs
        .get_opt(claim)
        .await
        .map_err(kube_err("get PersistentVolumeClaim", ns, claim))?
        .is_none()
    {
        return Ok(Err(format!(
            "PersistentVolumeClaim {ns}/{claim} does not exist yet"
        )));
    }
    let mut item = RestoreItem {
        common: ItemCommon {
            namespace: ns.to_owned(),
            volume: claim.to_owned(),
            executor: Some(stash_api::Executor::Job),
            persistent_volume_claim: Some(claim.to_owned()),
            ..ItemCommon::default()
        },
        ..RestoreItem::default()
    };
    match identity::claim_restore_source(&rs.spec, ns, claim, repo_in_session_ns) {
        Ok((source_volume, hosts)) => {
            item.source_volume = source_volume;
            item.source_hosts = hosts;
        }
        Err(why) => {
            item.common.phase = ItemPhase::Failed;
            item.common.error = Some(why);
        }
    }
    let users = claim_pods(&ctx.client, ns, claim).await?;
    if let Some(p) = users.iter().find(|p| crate::targets::mounts_volumes(p)) {
        item.common.phase = ItemPhase::Failed;
        item.common.error = Some(format!(
            "PersistentVolumeClaim {ns}/{claim} is mounted by pod {}: a restore Job writes only into a claim no pod uses \
             (stop the pod, or restore into it with the node agent: no spec.executor)",
            p.name_any()
        ));
    }
    Ok(Ok(item))
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
    if let Err(r) = source_allowed(rs, &ns, &repo, &user) {
        return Ok(fail(status, now, generation, r.reason, r.message));
    }
    let expired = deadline.is_some_and(|d| now >= d);
    if rs.spec.executor == Some(stash_api::Executor::Job) {
        let claim = rs
            .spec
            .target
            .persistent_volume_claim
            .clone()
            .unwrap_or_default();
        let repo_in_ns = repo.metadata.namespace.as_deref() == Some(ns.as_str());
        if !repo_in_ns {
            let message = format!(
                "{user}: a restore Job reads only a Repository of its own namespace {ns}, not {}/{}",
                repo.metadata.namespace.as_deref().unwrap_or_default(),
                rs.spec.repository.name
            );
            return Ok(fail(
                status,
                now,
                generation,
                "RepositoryNotAllowed",
                message,
            ));
        }
        let item = match job_restore_item(ctx, rs, &ns, &claim, repo_in_ns).await? {
            Ok(item) => item,
            Err(why) if !expired => {
                waiting(status, generation, now, deadline, why);
                return Ok((Action::requeue(WAIT_POLL), Vec::new()));
            }
            Err(why) => {
                let message = format!("{user}: {why} (spec.timeout passed)");
                return Ok(fail(status, now, generation, "TargetNotFound", message));
            }
        };
        status.items = vec![item];
        status.phase = SessionPhase::Running;
        status.start_time = Some(to_time(now));
        conditions::set(
            &mut status.conditions,
            "Ready",
            true,
            "Resolved",
            format!("PersistentVolumeClaim {ns}/{claim} restored by a Job"),
            generation,
            to_time(now),
        );
        let (action, notes) = decide(status, now, deadline, 0);
        let action = if status.phase.is_finished() {
            action
        } else {
            Action::requeue(Duration::from_millis(200))
        };
        return Ok((action, notes));
    }
    let (pods, not_yet) = target(ctx, rs, &ns).await?;
    if let Some(why) = not_yet.filter(|_| !expired) {
        waiting(status, generation, now, deadline, why);
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
    notes.extend(refuse_host_paths(
        &mut status.conditions,
        &resolution.refused,
        generation,
        now,
    ));
    if resolution.items.is_empty() {
        let message = nothing_to_restore(rs, pods.len());
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
    let (action, more) = decide(status, now, deadline, 0);
    notes.extend(more);
    Ok((action, notes))
}

/// A source in another namespace only out of the session's own Repository.
fn source_allowed(
    rs: &RestoreSession,
    ns: &str,
    repo: &stash_api::Repository,
    user: &str,
) -> std::result::Result<(), Refusal> {
    let repo_ns = repo.metadata.namespace.as_deref();
    let repo_name = format!(
        "{}/{}",
        repo_ns.unwrap_or_default(),
        rs.spec.repository.name
    );
    match (&repo.spec.adopt, &rs.spec.adopted) {
        (None, Some(_)) => {
            return Err(Refusal {
                reason: "NotAdopted",
                message: format!(
                    "{user}: spec.adopted chooses snapshots of an adopted repository, and Repository {repo_name} has no spec.adopt"
                ),
            })
        }
        (Some(a), None) => {
            let tool = a.from.tool();
            return Err(Refusal {
                reason: "AdoptedSourceRequired",
                message: format!(
                    "{user}: Repository {repo_name} is adopted from {}, whose snapshots carry {}: name the source in spec.adopted",
                    tool.name(),
                    tool.layout()
                ),
            });
        }
        (Some(a), Some(src)) => {
            return src
                .selector(a.from.tool(), ns, repo_ns == Some(ns))
                .map(|_| ())
                .map_err(|e| Refusal {
                    reason: "SourceNotAllowed",
                    message: format!("{user}: {e}"),
                })
        }
        (None, None) => {}
    }
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

/// Condition type set once the controller has restarted the workload for
/// a rollout restore (it does so once).
pub const CONDITION_ROLLOUT: &str = "RolloutStarted";
/// Condition type naming the pods of a rollout created without the
/// restore-wait init container.
pub const CONDITION_RESTORE_WAIT_MISSING: &str = "RestoreWaitMissing";

fn has_restore_wait(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .any(|c| c.name == RESTORE_WAIT_CONTAINER)
}

/// Why a restore whose `pods` target pods have no volume to restore into
/// fails (`NoVolumes`), and what to do.
fn nothing_to_restore(rs: &RestoreSession, pods: usize) -> String {
    format!(
        "nothing to restore: {pods} target pod(s), and no volume to restore into{}",
        if rs.spec.volumes.is_empty() {
            " (list the volumes in spec.volumes, or opt them in with the stash.rs/backup-volumes pod annotation)"
        } else {
            ""
        }
    )
}

fn waiting(
    status: &mut RestoreSessionStatus,
    generation: Option<i64>,
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    why: String,
) {
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
}

/// A workload target: pods get items as they appear and are scheduled (a
/// StatefulSet with OrderedReady creates the next pod only once the one
/// before is restored and Ready); the restore is over once every desired
/// replica has its items and they are all finished, or at the deadline.
/// With `spec.rollout`, the workload is restarted first, and only its new
/// pods (labelled with this session and given restore-wait by the webhook)
/// are restored into.
async fn workload_step(
    rs: &RestoreSession,
    w: &WorkloadReference,
    ctx: &Context,
    status: &mut RestoreSessionStatus,
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
) -> Result<(Action, Vec<Note>)> {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    let generation = rs.metadata.generation;
    let user = format!("RestoreSession {ns}/{name}");
    let workload = format!("{:?} {ns}/{}", w.kind, w.name);
    let mut notes = Vec::new();
    if status.start_time.is_none() {
        let repo = match check_repository(ctx, &ns, &user, &rs.spec.repository).await? {
            Ok(repo) => repo,
            Err(r) => return Ok(fail(status, now, generation, r.reason, r.message)),
        };
        if let Err(r) = source_allowed(rs, &ns, &repo, &user) {
            return Ok(fail(status, now, generation, r.reason, r.message));
        }
    }
    let expired = deadline.is_some_and(|d| now >= d);
    let Some(found) = workload_pods(&ctx.client, &ns, w.kind, &w.name).await? else {
        let why = format!("{workload} does not exist");
        if !expired {
            waiting(status, generation, now, deadline, format!("{why} yet"));
            return Ok((Action::requeue(WAIT_POLL), notes));
        }
        if status.items.is_empty() {
            return Ok(fail(
                status,
                now,
                generation,
                "TargetNotFound",
                format!("{user}: {why} (spec.timeout passed)"),
            ));
        }
        return Ok(decide(status, now, deadline, 1));
    };
    let desired = found.desired.max(1);
    if rs.spec.rollout && conditions::get(&status.conditions, CONDITION_ROLLOUT).is_none() {
        let hint = match start_rollout(ctx, rs, w, &ns, desired).await? {
            Ok(hint) => hint,
            Err(message) => {
                return Ok(fail(
                    status,
                    now,
                    generation,
                    "RolloutRefused",
                    format!("{user}: {message}"),
                ))
            }
        };
        let message = format!(
            "{workload} restarted: its pod template carries {LABEL_RESTORE_SESSION}={name}, and \
             its new pods get the {RESTORE_WAIT_CONTAINER} init container{hint}"
        );
        conditions::set(
            &mut status.conditions,
            CONDITION_ROLLOUT,
            true,
            "Restarted",
            message.clone(),
            generation,
            to_time(now),
        );
        notes.push(Note {
            type_: EventType::Normal,
            reason: CONDITION_ROLLOUT.into(),
            message,
        });
        waiting(
            status,
            generation,
            now,
            deadline,
            format!("waiting for the new pods of {workload}"),
        );
        return Ok((Action::requeue(WAIT_POLL), notes));
    }

    let mut pods: Vec<Pod> = found
        .pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let mut bypassed = Vec::new();
    if rs.spec.rollout {
        // Only the pods the rollout created; the old ones are going away.
        pods.retain(|p| {
            p.labels().get(LABEL_RESTORE_SESSION).map(String::as_str) == Some(name.as_str())
        });
        pods.retain(|p| {
            let ok = has_restore_wait(p);
            if !ok {
                bypassed.push(p.name_any());
            }
            ok
        });
    }
    let scheduled = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
    let unscheduled: Vec<String> = pods
        .iter()
        .filter(|p| !scheduled(p))
        .map(|p| p.name_any())
        .collect();
    // At the deadline unscheduled pods are resolved too: into failed items
    // that say why.
    let eligible: Vec<&Pod> = pods.iter().filter(|p| expired || scheduled(p)).collect();
    let mut claims: BTreeSet<String> = status
        .items
        .iter()
        .filter_map(|i| {
            let p = pods.iter().find(|p| p.name_any() == i.common.pod)?;
            identity::volume_claim(p, &i.common.volume).map(str::to_owned)
        })
        .collect();
    let known: BTreeSet<&str> = status.items.iter().map(|i| i.common.pod.as_str()).collect();
    let new: Vec<Pod> = eligible
        .iter()
        .filter(|p| !known.contains(p.name_any().as_str()))
        .map(|p| (*p).clone())
        .collect();
    let resolution = resolve_more_items(rs, &new, &ctx.settings.host_paths, &mut claims);
    notes.extend(refuse_host_paths(
        &mut status.conditions,
        &resolution.refused,
        generation,
        now,
    ));
    let added = resolution.items.len();
    status.items.extend(resolution.items);

    if !bypassed.is_empty() {
        let message = format!(
            "pod(s) {} of {workload} were created without the {RESTORE_WAIT_CONTAINER} init \
             container (the admission webhook was unreachable, and its failurePolicy Ignore \
             admitted them): their containers may already use the volumes, so nothing is \
             restored into them. Delete them; {workload} creates them again, through the webhook",
            bypassed.join(", ")
        );
        if conditions::get(&status.conditions, CONDITION_RESTORE_WAIT_MISSING)
            .is_none_or(|c| c.message != message)
        {
            notes.push(Note {
                type_: EventType::Warning,
                reason: CONDITION_RESTORE_WAIT_MISSING.into(),
                message: message.clone(),
            });
        }
        conditions::set(
            &mut status.conditions,
            CONDITION_RESTORE_WAIT_MISSING,
            true,
            "PodsWithoutRestoreWait",
            message,
            generation,
            to_time(now),
        );
    } else if conditions::get(&status.conditions, CONDITION_RESTORE_WAIT_MISSING)
        .is_some_and(|c| c.status == "True")
    {
        conditions::set(
            &mut status.conditions,
            CONDITION_RESTORE_WAIT_MISSING,
            false,
            "AllPodsWait",
            "every pod of the rollout has the restore-wait init container",
            generation,
            to_time(now),
        );
    }

    let covered = eligible.len();
    let missing = desired.saturating_sub(covered);
    let mut why = format!("{workload} has {covered} of its {desired} pod(s)");
    if rs.spec.rollout {
        why.push_str(" from the rollout");
    }
    if !unscheduled.is_empty() {
        why.push_str(&format!(
            "; pod(s) {} not scheduled to a node yet",
            unscheduled.join(", ")
        ));
    }
    if status.items.is_empty() {
        if !new.is_empty() && added == 0 {
            let message = nothing_to_restore(rs, new.len());
            let (action, more) = fail(status, now, generation, "NoVolumes", message);
            notes.extend(more);
            return Ok((action, notes));
        }
        if expired {
            let (action, more) = fail(
                status,
                now,
                generation,
                "TargetNotFound",
                format!("{user}: {why} (spec.timeout passed)"),
            );
            notes.extend(more);
            return Ok((action, notes));
        }
        waiting(status, generation, now, deadline, why);
        return Ok((Action::requeue(WAIT_POLL), notes));
    }
    if status.start_time.is_none() {
        status.start_time = Some(to_time(now));
        status.phase = SessionPhase::Running;
    }
    if missing == 0 {
        conditions::set(
            &mut status.conditions,
            "Ready",
            true,
            "Resolved",
            format!(
                "{} volume(s) of {covered} pod(s) assigned to their nodes' agents",
                status.items.len()
            ),
            generation,
            to_time(now),
        );
    } else {
        waiting(status, generation, now, deadline, why);
    }
    let (action, more) = decide(status, now, deadline, missing);
    notes.extend(more);
    Ok((action, notes))
}

/// The API resource of a workload kind.
fn workload_resource(kind: WorkloadKind) -> ApiResource {
    match kind {
        WorkloadKind::Deployment => ApiResource::erase::<Deployment>(&()),
        WorkloadKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
        WorkloadKind::DaemonSet => ApiResource::erase::<DaemonSet>(&()),
    }
}

/// Restarts the workload by marking its pod template with the session
/// (label and annotation); idempotent. `Ok(Err(why))` when a rollout
/// restore of it would be unsafe; `Ok(Ok(hint))` with what the user may
/// have to do.
async fn start_rollout(
    ctx: &Context,
    rs: &RestoreSession,
    w: &WorkloadReference,
    ns: &str,
    desired: usize,
) -> Result<std::result::Result<String, String>> {
    let name = rs.name_any();
    let workload = format!("{:?} {ns}/{}", w.kind, w.name);
    if !ctx.settings.rollout_restores {
        return Ok(Err(format!(
            "rollout restores are not enabled in this cluster, so the controller may not restart              {workload}: the cluster admin enables them with the controller's --rollout-restores              flag and the RBAC of deploy/rollout/ (Helm: rollout.enabled=true); or restore the              pods' volumes without spec.rollout"
        )));
    }
    if ns == ctx.settings.own_namespace {
        return Ok(Err(format!(
            "the controller never restarts workloads in its own namespace {ns} (its own and the              agents'): {workload} is not restored with a rollout"
        )));
    }
    if name.len() > 63 {
        return Ok(Err(format!(
            "a rollout restore's name becomes the {LABEL_RESTORE_SESSION} pod label, at most 63 \
             characters; {name:?} has {}",
            name.len()
        )));
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &workload_resource(w.kind));
    let Some(obj) = api
        .get_opt(&w.name)
        .await
        .map_err(kube_err("get workload", ns, &w.name))?
    else {
        return Ok(Err(format!("{workload} does not exist")));
    };
    let spec = &obj.data["spec"];
    let template: PodTemplateSpec =
        serde_json::from_value(spec["template"].clone()).unwrap_or_default();
    let targets: Vec<String> = if rs.spec.volumes.is_empty() {
        opted_in_volumes(
            template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref()),
        )
    } else {
        rs.spec.volumes.iter().map(|m| m.target.clone()).collect()
    };
    let claims: Vec<&str> = template
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter(|v| targets.contains(&v.name))
        .filter_map(|v| v.persistent_volume_claim.as_ref())
        .map(|c| c.claim_name.as_str())
        .collect();
    if let Some(claim) = claims.first() {
        if w.kind != WorkloadKind::StatefulSet && desired > 1 {
            return Ok(Err(format!(
                "the {desired} pods of {workload} share PersistentVolumeClaim {claim}: it is \
                 restored once, and each new pod would wait for the one marker the first of \
                 them removes. Scale {workload} to 1 replica for the restore, or restore the \
                 claim (target.persistentVolumeClaim) without a rollout"
            )));
        }
        if w.kind == WorkloadKind::Deployment
            && spec["strategy"]["type"].as_str().unwrap_or("RollingUpdate") != "Recreate"
        {
            return Ok(Err(format!(
                "{workload} updates with strategy RollingUpdate: its old pod keeps running on \
                 PersistentVolumeClaim {claim} while the new one is restored into it. Set \
                 spec.strategy.type: Recreate for the restore"
            )));
        }
    }
    let strategy = match w.kind {
        WorkloadKind::Deployment => None,
        _ => spec["updateStrategy"]["type"].as_str(),
    };
    let patch = serde_json::json!({"spec": {"template": {"metadata": {
        "labels": {LABEL_RESTORE_SESSION: name},
        "annotations": {ANNOTATION_RESTORE_SESSION: format!("{name}/{}", rs.uid().unwrap_or_default())},
    }}}});
    api.patch(&w.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(kube_err("patch workload pod template", ns, &w.name))?;
    Ok(Ok(if strategy == Some("OnDelete") {
        "; its updateStrategy is OnDelete, so delete its pods to have them recreated and \
         restored"
            .to_owned()
    } else {
        String::new()
    }))
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
    resolve_more_items(rs, pods, allow, &mut BTreeSet::new())
}

/// [`resolve_restore_items`] for pods added to a restore that already has
/// items for the claims in `claims_done` (which grows by the new ones).
pub fn resolve_more_items(
    rs: &RestoreSession,
    pods: &[Pod],
    allow: &HostPathAllowList,
    claims_done: &mut BTreeSet<String>,
) -> RestoreResolution {
    let mut out = RestoreResolution::default();
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
                common: ItemCommon {
                    namespace: ns.clone(),
                    pod: name.clone(),
                    volume: volume.clone(),
                    node: node.clone(),
                    ..ItemCommon::default()
                },
                source_volume: source,
                source_hosts,
            };
            let unscheduled = format!(
                "pod {ns}/{name} was not scheduled to a node before spec.timeout; \
                 no agent can write {volume:?}"
            );
            if !check_volume(
                &mut item.common,
                spec_volume,
                allow,
                unscheduled,
                &mut out.refused,
            ) {
                continue;
            }
            out.items.push(item);
        }
    }
    out
}

/// Fails what outlived the deadline, updates progress, and sets the final
/// phase once every item is finished.
///
/// `missing`: replicas of a workload target not yet seen (none restored
/// into them); the session waits for them until the deadline, and counts
/// them as failed after it.
fn decide(
    status: &mut RestoreSessionStatus,
    now: DateTime<Utc>,
    deadline: Option<DateTime<Utc>>,
    missing: usize,
) -> (Action, Vec<Note>) {
    let expired = deadline.is_some_and(|d| now >= d);
    if expired {
        let unfinished = status.items.iter_mut().map(|i| &mut i.common);
        for item in unfinished.filter(|i| !i.phase.is_finished()) {
            let error = format!(
                "timed out: not finished by spec.timeout; the claim of {} was revoked",
                item.claim.claimed_by.as_deref().unwrap_or("no agent")
            );
            item.fail(error, to_time(now));
        }
    }
    let total = status.items.len();
    let count = |p: ItemPhase| status.items.iter().filter(|i| i.common.phase == p).count();
    let (succeeded, failed) = (count(ItemPhase::Succeeded), count(ItemPhase::Failed));
    status.progress = Some(format!("{}/{total}", succeeded + failed));
    if succeeded + failed < total || (missing > 0 && !expired) {
        let mut action = deadline
            .and_then(|d| (d - now).to_std().ok())
            .map(Action::requeue)
            .unwrap_or_else(Action::await_change);
        if missing > 0 {
            action = Action::requeue(WAIT_POLL);
        }
        return (action, Vec::new());
    }
    status.phase = if failed == 0 && missing == 0 {
        SessionPhase::Succeeded
    } else if succeeded == 0 {
        SessionPhase::Failed
    } else {
        SessionPhase::PartiallyFailed
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
            message: if missing > 0 {
                format!(
                    "{failed} of {total} volume(s) failed to restore, and {missing} replica(s) \
                     of the workload did not appear before spec.timeout"
                )
            } else {
                format!("{failed} of {total} volume(s) failed to restore")
            },
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
