//! Reconciles BackupSessions: resolves a new session into per-volume items,
//! each on its pod's node, then follows the items the agents update until
//! every item is finished; hands the retention run to the agent of the first
//! succeeded item; then gives the session its final phase and copies the
//! repository's figures to the Repository's status.
//!
//! # Sharing the status with the agents
//!
//! The agents update items (and the retention run) with JSON patches on the
//! status subresource (see the `stash-api` crate docs). The controller
//! writes the items only twice in a session's life: when it resolves them,
//! and when the configuration's `timeout` fails the unfinished ones (which
//! also revokes their claim, so the agent's next `test` fails and it stops).
//! Every other write carries only the session-level fields it changed. Each
//! write carries the `resourceVersion` the decision was made on
//! ([`crate::status`]); on 409 Conflict the session is read again and the
//! decision made again, so an agent's update is never lost.
//!
//! An item whose agent stopped sending heartbeats is not failed here: the
//! agent of its node takes it over once the heartbeat is old enough. An
//! unfinished item whose pod is gone (deleted, or replaced by a pod of the
//! same name with another UID) or whose node is NotReady or gone fails,
//! once that has lasted `--lost-item-grace`, with the reason `PodGone` or
//! `NodeNotReady` (and its claim revoked): no agent can finish it. A
//! running session is read again at least every half grace (at most 30 s)
//! to see that, since pods and nodes are not watched.
//!
//! # Deadlines
//!
//! Every session has a deadline (`status.deadline`): its start plus the
//! configuration's `timeout`, or, when that is unset, plus the default
//! deadline ([`default_deadline`]: the schedule's interval, at least 1 h,
//! at most 24 h). What is unfinished then (items and retention) fails, so
//! one stuck session never holds a `Forbid` schedule for longer than that.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;
use stash_api::schedule::Schedule;
use stash_api::{
    parse_duration, BackupConfiguration, BackupSession, BackupSessionStatus, ItemPhase, Repository,
    RetentionStatus, SessionPhase,
};

use crate::error::{kube_err, Error, Result};
use crate::events::publish;
use crate::scheduler::check_writable_repository;
use crate::status::{decide_until_written, write_if_unchanged, Written};
use crate::targets::{resolve_items, target_pods};
use crate::{conditions, Context};
use stash_api::time::{from_time, to_time};

/// Condition type while the retention run is under way.
pub const CONDITION_RETENTION_RUNNING: &str = "RetentionRunning";
/// Condition type set when the retention run failed.
pub const CONDITION_RETENTION_FAILED: &str = "RetentionFailed";

/// The shortest default deadline ([`default_deadline`]).
pub const DEFAULT_DEADLINE_MIN: Duration = Duration::from_secs(3600);
/// The longest default deadline ([`default_deadline`]).
pub const DEFAULT_DEADLINE_MAX: Duration = Duration::from_secs(24 * 3600);

/// The longest a reconciliation waits before looking at a running session
/// again (a deadline far off is still checked, so a requeue is never too
/// long for the runtime's timer).
const LONGEST_WAIT: Duration = Duration::from_secs(3600);

/// Item failure reason: the item's pod was deleted or replaced.
pub const REASON_POD_GONE: &str = "PodGone";
/// Item failure reason: the item's node is NotReady or gone.
pub const REASON_NODE_NOT_READY: &str = "NodeNotReady";

/// Reconciles one BackupSession.
pub async fn reconcile(session: Arc<BackupSession>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics
        .reconciles
        .with_label_values(&["BackupSession"])
        .inc();
    // A burst of ticks gets the apiserver first (see `ticker::Firing`).
    ctx.firing.yield_to_ticks().await;
    let api: Api<BackupSession> =
        Api::namespaced(ctx.client.clone(), &session.namespace().unwrap_or_default());
    let wanted = stash_api::nodes::wanted_for_backup(session.status.as_ref());
    crate::node_labels::sync(&api, &session, &wanted, "label BackupSession").await?;
    let conflicts = &ctx.metrics.status_conflicts;
    decide_until_written(&api, session, conflicts, "get BackupSession", |s| {
        let ctx = ctx.clone();
        async move { step(&s, &ctx).await }
    })
    .await
}

/// One decision on `session` as read; `None` when its status changed
/// meanwhile and the decision must be made again.
async fn step(session: &BackupSession, ctx: &Context) -> Result<Option<Action>> {
    let status = session.status.clone().unwrap_or_default();
    if status.phase.is_finished() {
        ctx.notifier.offer_backup(ctx, session);
        ctx.lost_since.forget(&session.uid().unwrap_or_default());
        return Ok(Some(Action::await_change()));
    }
    if status.start_time.is_none() {
        return start(session, ctx).await;
    }
    follow(session, ctx, status).await
}

/// An Event to publish once the status it describes is written.
pub(crate) struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// CamelCase reason.
    pub reason: String,
    /// What happened.
    pub message: String,
}

impl Note {
    fn new(type_: EventType, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            reason: reason.to_owned(),
            message: message.into(),
        }
    }
}

/// Sets the `HostPathNotAllowed` condition to the volumes a resolution
/// `refused` (outside the controller's allowed host paths), and returns
/// the Warning to publish; nothing when it refused none.
pub(crate) fn refuse_host_paths(
    conditions: &mut Vec<Condition>,
    refused: &[String],
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> Option<Note> {
    if refused.is_empty() {
        return None;
    }
    let message = refused.join("; ");
    conditions::set(
        conditions,
        "HostPathNotAllowed",
        true,
        "HostPathNotAllowed",
        message.clone(),
        generation,
        to_time(now),
    );
    Some(Note::new(EventType::Warning, "HostPathNotAllowed", message))
}

/// Writes `new` over `old` on condition, then publishes `notes`.
async fn commit(
    ctx: &Context,
    session: &BackupSession,
    old: &BackupSessionStatus,
    new: &BackupSessionStatus,
    notes: Vec<Note>,
) -> Result<bool> {
    let api: Api<BackupSession> =
        Api::namespaced(ctx.client.clone(), &session.namespace().unwrap_or_default());
    let written =
        write_if_unchanged(&api, session, old, new, "update BackupSession status").await?;
    if written == Written::Conflict {
        return Ok(false);
    }
    for n in notes {
        publish(ctx, session, n.type_, &n.reason, &n.message).await;
    }
    Ok(true)
}

/// Resolves a new session into items, or fails it with the reason.
async fn start(session: &BackupSession, ctx: &Context) -> Result<Option<Action>> {
    let ns = session.namespace().unwrap_or_default();
    let old = session.status.clone().unwrap_or_default();
    let now = Utc::now();
    let mut status = BackupSessionStatus {
        start_time: Some(to_time(now)),
        ..old.clone()
    };
    let generation = session.metadata.generation;
    let fail = |status: &mut BackupSessionStatus, reason: &str, message: String| {
        status.phase = SessionPhase::Failed;
        status.completion_time = Some(to_time(now));
        conditions::set(
            &mut status.conditions,
            "Ready",
            false,
            reason,
            message,
            generation,
            to_time(now),
        );
    };

    let cfg_name = &session.spec.backup_configuration;
    let Some(cfg) = get_configuration(ctx, &ns, cfg_name).await? else {
        let message = format!("BackupConfiguration {ns}/{cfg_name} does not exist");
        fail(&mut status, "ConfigurationNotFound", message.clone());
        let note = Note::new(EventType::Warning, "ConfigurationNotFound", message);
        return Ok(commit(ctx, session, &old, &status, vec![note])
            .await?
            .then(Action::await_change));
    };
    if let Some(message) = cfg.spec.unsupported_mode() {
        // A session made by hand for a configuration stored before the CRD
        // refused its mode: fail it rather than run it on the node agent.
        fail(
            &mut status,
            crate::scheduler::REASON_MODE,
            message.to_owned(),
        );
        let note = Note::new(EventType::Warning, crate::scheduler::REASON_MODE, message);
        return Ok(commit(ctx, session, &old, &status, vec![note])
            .await?
            .then(Action::await_change));
    }
    let user = format!("BackupSession {ns}/{}", session.name_any());
    if let Err(refusal) = check_writable_repository(ctx, &ns, &user, &cfg.spec.repository).await? {
        fail(&mut status, refusal.reason, refusal.message.clone());
        let note = Note::new(EventType::Warning, refusal.reason, refusal.message);
        return Ok(commit(ctx, session, &old, &status, vec![note])
            .await?
            .then(Action::await_change));
    }
    let pods = target_pods(&ctx.client, &ns, &cfg.spec.target).await?;
    let resolution = resolve_items(
        &pods,
        &cfg.spec.volumes,
        cfg.spec.target.persistent_volume_claim.as_deref(),
        &ctx.settings.host_paths,
    );
    let mut resolution = resolution;
    if pods.is_empty() {
        if let Some(claim) = cfg.spec.target.persistent_volume_claim.as_deref() {
            resolution.items = pod_less_claim(ctx, &cfg, &ns, claim).await?;
        }
    }
    let mut notes = Vec::new();
    notes.extend(refuse_host_paths(
        &mut status.conditions,
        &resolution.refused,
        generation,
        now,
    ));
    if resolution.items.is_empty() {
        let message = format!(
            "nothing to back up: {} pod(s) match the target of BackupConfiguration {ns}/{cfg_name}, and none has a volume to back up{}",
            pods.len(),
            if cfg.spec.volumes.is_empty() { " (opt volumes in with the stash.rs/backup-volumes pod annotation, or list them in spec.volumes)" } else { "" }
        );
        fail(&mut status, "NoVolumes", message.clone());
        notes.push(Note::new(EventType::Warning, "NoVolumes", message));
        return Ok(commit(ctx, session, &old, &status, notes)
            .await?
            .then(Action::await_change));
    }
    let jobs = resolution
        .items
        .iter()
        .filter(|i| i.common.runs_in_job())
        .count();
    status.items = resolution.items;
    status.phase = SessionPhase::Running;
    let limit = limit_of(&cfg, now);
    status.deadline = chrono::Duration::from_std(limit.after)
        .ok()
        .and_then(|t| now.checked_add_signed(t))
        .map(to_time);
    conditions::set(
        &mut status.conditions,
        "Ready",
        true,
        "Resolved",
        if jobs == 0 {
            format!(
                "{} volume(s) assigned to their nodes' agents",
                status.items.len()
            )
        } else {
            format!(
                "{} volume(s): {} for their nodes' agents, {jobs} for Jobs (claims no pod mounts)",
                status.items.len(),
                status.items.len() - jobs
            )
        },
        generation,
        to_time(now),
    );
    // Items already failed at resolution (missing volume, pod not on a
    // node) may finish the session at once.
    let outcome = decide(
        &mut status,
        now,
        Some(limit),
        recheck(&ctx.settings),
        generation,
    );
    notes.extend(outcome.notes);
    if let Some(record) = &outcome.record {
        record_on_repository(ctx, &ns, &cfg, record).await?;
    }
    Ok(commit(ctx, session, &old, &status, notes)
        .await?
        .then_some(outcome.action))
}

/// The item of a PersistentVolumeClaim target that no pod mounts, for a
/// Job: none when the claim does not exist (the session then fails with
/// `NoVolumes`), a Failed one when a Job cannot run it.
async fn pod_less_claim(
    ctx: &Context,
    cfg: &BackupConfiguration,
    ns: &str,
    claim: &str,
) -> Result<Vec<stash_api::BackupItem>> {
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
    let Some(pvc) =
        pvcs.get_opt(claim)
            .await
            .map_err(kube_err("get PersistentVolumeClaim", ns, claim))?
    else {
        return Ok(Vec::new());
    };
    let mut item = crate::targets::job_item(ns, claim);
    let repo_ns = cfg.spec.repository.namespace.as_deref().unwrap_or(ns);
    let why = if repo_ns != ns {
        Some(format!(
            "PersistentVolumeClaim {ns}/{claim} is mounted by no pod, so a Job would back it up,              but a Job reads only a Repository of its own namespace ({ns}), not {repo_ns}/{}",
            cfg.spec.repository.name
        ))
    } else if pvc.metadata.deletion_timestamp.is_some() {
        Some(format!(
            "PersistentVolumeClaim {ns}/{claim} is being deleted"
        ))
    } else {
        None
    };
    if let Some(why) = why {
        item.common.phase = ItemPhase::Failed;
        item.common.error = Some(why);
    }
    Ok(vec![item])
}

/// Follows a running session: timeouts, retention handoff, final phase.
async fn follow(
    session: &BackupSession,
    ctx: &Context,
    old: BackupSessionStatus,
) -> Result<Option<Action>> {
    let ns = session.namespace().unwrap_or_default();
    let cfg = get_configuration(ctx, &ns, &session.spec.backup_configuration).await?;
    let mut status = old.clone();
    let now = Utc::now();
    let lost = lost_items(ctx, session, &status, now).await?;
    let mut notes = fail_lost(&mut status, &lost, now);
    if status.items.iter().any(|i| i.common.runs_in_job()) {
        let repo = match &cfg {
            Some(c) => {
                let repos: Api<Repository> = Api::namespaced(
                    ctx.client.clone(),
                    c.spec.repository.namespace.as_deref().unwrap_or(&ns),
                );
                repos
                    .get_opt(&c.spec.repository.name)
                    .await
                    .map_err(kube_err("get Repository", &ns, &c.spec.repository.name))?
            }
            None => None,
        };
        let deadline = status.deadline.as_ref().map(from_time);
        let job_notes = crate::jobs::drive(
            ctx,
            &crate::jobs::JobSession::backup(session),
            &mut status.items,
            repo.as_ref(),
            deadline,
            now,
        )
        .await?;
        notes.extend(
            job_notes
                .into_iter()
                .map(|(reason, message)| Note::new(EventType::Warning, reason, message)),
        );
    }
    let outcome = decide(
        &mut status,
        now,
        cfg.as_ref().map(|c| limit_of(c, now)),
        recheck(&ctx.settings),
        session.metadata.generation,
    );
    if let (Some(record), Some(cfg)) = (&outcome.record, &cfg) {
        record_on_repository(ctx, &ns, cfg, record).await?;
    }
    notes.extend(outcome.notes);
    // Pods are not watched: a Job's pod that cannot start or dies is seen
    // by looking again soon.
    let jobs_unfinished = status
        .items
        .iter()
        .any(|i| i.common.runs_in_job() && !i.common.phase.is_finished());
    let action = if jobs_unfinished {
        Action::requeue(JOB_POLL)
    } else {
        outcome.action
    };
    Ok(commit(ctx, session, &old, &status, notes)
        .await?
        .then_some(action))
}

/// How often a session with unfinished Job items looks at their pods.
const JOB_POLL: Duration = Duration::from_secs(3);

/// When the controller first saw an item's pod or node gone, by session
/// UID, item index and reason. A NotReady node says since when itself (its
/// `Ready` condition's `lastTransitionTime`); a pod or node that no longer
/// exists does not, so its grace counts from the first reconciliation that
/// saw it gone.
#[derive(Default)]
pub struct LostSince(Mutex<HashMap<String, DateTime<Utc>>>);

impl LostSince {
    /// When `key` was first seen lost (`now` if this is the first time).
    fn since(&self, key: String, now: DateTime<Utc>) -> DateTime<Utc> {
        *self.0.lock().expect("lost_since").entry(key).or_insert(now)
    }

    /// `key` is no longer lost.
    fn clear(&self, key: &str) {
        self.0.lock().expect("lost_since").remove(key);
    }

    /// Forgets every entry of the session with `uid`.
    fn forget(&self, uid: &str) {
        let prefix = format!("{uid}/");
        self.0
            .lock()
            .expect("lost_since")
            .retain(|k, _| !k.starts_with(&prefix));
    }
}

/// An unfinished item no agent can finish.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lost {
    /// Its index in `status.items`.
    pub index: usize,
    /// [`REASON_POD_GONE`] or [`REASON_NODE_NOT_READY`].
    pub reason: &'static str,
    /// What is gone, and since when.
    pub message: String,
}

/// How often a running session is looked at again: half the grace, from
/// 1 s to 30 s.
fn recheck(settings: &crate::Settings) -> Duration {
    (settings.lost_item_grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// The unfinished items of `status` whose pod has been gone, or whose node
/// has been NotReady or gone, for at least `--lost-item-grace`.
async fn lost_items(
    ctx: &Context,
    session: &BackupSession,
    status: &BackupSessionStatus,
    now: DateTime<Utc>,
) -> Result<Vec<Lost>> {
    let grace =
        chrono::Duration::from_std(ctx.settings.lost_item_grace).unwrap_or(chrono::Duration::MAX);
    let uid = session.uid().unwrap_or_default();
    let nodes_api: Api<Node> = Api::all(ctx.client.clone());
    let mut nodes: BTreeMap<String, Option<Node>> = BTreeMap::new();
    let mut out = Vec::new();
    for (index, item) in status.items.iter().enumerate() {
        if item.common.phase.is_finished() {
            continue;
        }
        // An item without a node failed at resolution.
        let Some(node_name) = item.common.node.as_deref() else {
            continue;
        };
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &item.common.namespace);
        let pod = pods.get_opt(&item.common.pod).await.map_err(kube_err(
            "get Pod",
            &item.common.namespace,
            &item.common.pod,
        ))?;
        let pod_key = format!("{uid}/{index}/{REASON_POD_GONE}");
        let gone = match &pod {
            None => Some(format!(
                "pod {}/{} no longer exists",
                item.common.namespace, item.common.pod
            )),
            Some(p) if item.pod_uid.is_some() && p.metadata.uid != item.pod_uid => Some(format!(
                "pod {}/{} was replaced (UID {} when the session started, {} now)",
                item.common.namespace,
                item.common.pod,
                item.pod_uid.as_deref().unwrap_or("?"),
                p.metadata.uid.as_deref().unwrap_or("?")
            )),
            Some(_) => None,
        };
        if let Some(why) = gone {
            let since = ctx.lost_since.since(pod_key, now);
            if now - since >= grace {
                out.push(Lost {
                    index,
                    reason: REASON_POD_GONE,
                    message: format!("{why} (seen gone since {})", since.to_rfc3339()),
                });
            }
            continue;
        }
        ctx.lost_since.clear(&pod_key);
        if !nodes.contains_key(node_name) {
            let node = nodes_api
                .get_opt(node_name)
                .await
                .map_err(kube_err("get Node", "", node_name))?;
            nodes.insert(node_name.to_owned(), node);
        }
        let node_key = format!("{uid}/{index}/{REASON_NODE_NOT_READY}");
        let not_ready = match nodes.get(node_name).and_then(Option::as_ref) {
            None => Some((
                ctx.lost_since.since(node_key.clone(), now),
                format!("node {node_name} no longer exists"),
            )),
            Some(node) => {
                let ready = node
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
                match ready {
                    Some(c) if c.status == "True" => None,
                    c => {
                        let since = c
                            .and_then(|c| c.last_transition_time.as_ref())
                            .map(from_time)
                            .unwrap_or_else(|| ctx.lost_since.since(node_key.clone(), now));
                        Some((
                            since,
                            format!(
                                "node {node_name} is NotReady (Ready={}{})",
                                c.map(|c| c.status.as_str()).unwrap_or("missing"),
                                c.and_then(|c| c.reason.as_deref())
                                    .map(|r| format!(", {r}"))
                                    .unwrap_or_default()
                            ),
                        ))
                    }
                }
            }
        };
        match not_ready {
            Some((since, why)) => {
                if now - since >= grace {
                    out.push(Lost {
                        index,
                        reason: REASON_NODE_NOT_READY,
                        message: format!("{why} since {}", since.to_rfc3339()),
                    });
                }
            }
            None => ctx.lost_since.clear(&node_key),
        }
    }
    Ok(out)
}

/// Fails the `lost` items of `status` with their reason, revoking their
/// claim (so an agent that comes back stops at its next `test`); the
/// Events to publish.
pub(crate) fn fail_lost(
    status: &mut BackupSessionStatus,
    lost: &[Lost],
    now: DateTime<Utc>,
) -> Vec<Note> {
    let mut notes = Vec::new();
    for l in lost {
        let Some(item) = status.items.get_mut(l.index).map(|i| &mut i.common) else {
            continue;
        };
        if item.phase.is_finished() {
            continue;
        }
        let error = format!(
            "{}: {}; no agent can finish volume {:?} of pod {}/{}; the claim of {} was revoked",
            l.reason,
            l.message,
            item.volume,
            item.namespace,
            item.pod,
            item.claim.claimed_by.as_deref().unwrap_or("no agent")
        );
        notes.push(Note::new(EventType::Warning, l.reason, error.clone()));
        item.fail(error, to_time(now));
    }
    notes
}

async fn get_configuration(
    ctx: &Context,
    ns: &str,
    name: &str,
) -> Result<Option<BackupConfiguration>> {
    // The watch cache first; one it does not hold yet (just created) is
    // read, so a session never fails because the cache lags.
    if let Some(cfg) = ctx
        .configs
        .get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
    {
        return Ok(Some(Arc::unwrap_or_clone(cfg)));
    }
    let configs: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), ns);
    configs
        .get_opt(name)
        .await
        .map_err(kube_err("get BackupConfiguration", ns, name))
}

/// The configuration's `timeout`; the schema only admits valid ones.
fn timeout_of(cfg: &BackupConfiguration) -> Option<Duration> {
    cfg.spec
        .timeout
        .as_deref()
        .and_then(|t| parse_duration(t).ok())
}

/// How long a session may run, and where that comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limit {
    /// From the session's start.
    pub after: Duration,
    /// What set it, for the messages.
    pub source: &'static str,
}

/// The deadline of a session of `cfg` started at `now`: its `timeout`, or
/// the default.
pub(crate) fn limit_of(cfg: &BackupConfiguration, now: DateTime<Utc>) -> Limit {
    match timeout_of(cfg) {
        Some(after) => Limit {
            after,
            source: "the configuration's timeout",
        },
        None => Limit {
            after: default_deadline(&cfg.spec.schedule, cfg.spec.time_zone.as_deref(), now),
            source: "the default deadline: the schedule's interval, 1h to 24h; set spec.timeout to choose",
        },
    }
}

/// The deadline of a session whose configuration sets no `timeout`: the
/// interval of its schedule (from the next tick after `now` to the one
/// after), at least [`DEFAULT_DEADLINE_MIN`] (a backup of a large volume
/// on a frequent schedule still gets time) and at most
/// [`DEFAULT_DEADLINE_MAX`] (a weekly schedule does not wait a week for a
/// lost node). A schedule that cannot be read gets the maximum.
pub fn default_deadline(schedule: &str, time_zone: Option<&str>, now: DateTime<Utc>) -> Duration {
    Schedule::parse(schedule, time_zone)
        .ok()
        .and_then(|s| {
            let a = s.next_after(now)?;
            let b = s.next_after(a)?;
            (b - a).to_std().ok()
        })
        .unwrap_or(DEFAULT_DEADLINE_MAX)
        .clamp(DEFAULT_DEADLINE_MIN, DEFAULT_DEADLINE_MAX)
}

/// What a finished session leaves on its Repository's status.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When the last succeeded item finished.
    pub last_backup_time: Time,
    /// `snapshotCount` and `totalSize` read by a succeeded retention run.
    pub figures: Option<(Option<i64>, Option<i64>)>,
}

/// What [`decide`] concluded besides the new status.
pub(crate) struct Outcome {
    /// When to look again.
    pub action: Action,
    /// Events to publish once the status is written.
    pub notes: Vec<Note>,
    /// What to write on the Repository, when the session just finished.
    pub record: Option<Record>,
}

/// The decision on a running session at `now`: fails what outlived its
/// deadline (`status.deadline`, or the start plus `limit`), updates
/// progress, hands the retention run over once every item is finished and
/// one succeeded, and sets the final phase once the retention run (if any)
/// is over. While items are unfinished it looks again within `recheck`.
pub(crate) fn decide(
    status: &mut BackupSessionStatus,
    now: DateTime<Utc>,
    limit: Option<Limit>,
    recheck: Duration,
    generation: Option<i64>,
) -> Outcome {
    let started = status.start_time.as_ref().map(from_time).unwrap_or(now);
    let deadline = status.deadline.as_ref().map(from_time).or_else(|| {
        limit
            .and_then(|l| chrono::Duration::from_std(l.after).ok())
            .and_then(|t| started.checked_add_signed(t))
    });
    let expired = deadline.is_some_and(|d| now >= d);
    let wake = |deadline: Option<DateTime<Utc>>, longest: Duration| {
        let until = deadline
            .and_then(|d| (d - now).to_std().ok())
            .unwrap_or(longest);
        Action::requeue(until.min(longest))
    };
    let source = limit.map(|l| l.source).unwrap_or("the session's deadline");
    let limit = match deadline {
        Some(d) => format!("{}s", (d - started).num_seconds().max(0)),
        None => String::new(),
    };
    let mut notes = Vec::new();
    if expired {
        let unfinished = status.items.iter_mut().map(|i| &mut i.common);
        for item in unfinished.filter(|i| !i.phase.is_finished()) {
            let error = format!(
                "timed out: not finished {limit} after the session started ({source}); \
                 the claim of {} was revoked",
                item.claim.claimed_by.as_deref().unwrap_or("no agent")
            );
            item.fail(error, to_time(now));
        }
    }
    let total = status.items.len();
    let count = |p: ItemPhase| status.items.iter().filter(|i| i.common.phase == p).count();
    let (succeeded, failed) = (count(ItemPhase::Succeeded), count(ItemPhase::Failed));
    status.progress = Some(format!("{}/{total}", succeeded + failed));
    if succeeded + failed < total {
        return Outcome {
            action: wake(deadline, recheck),
            notes,
            record: None,
        };
    }
    let mut record = None;
    if succeeded > 0 {
        let first = status
            .items
            .iter()
            .find(|i| i.common.phase == ItemPhase::Succeeded);
        let node = first.and_then(|i| i.common.node.clone());
        let retention = status.retention.get_or_insert_with(|| RetentionStatus {
            phase: ItemPhase::Pending,
            node: node.clone(),
            ..RetentionStatus::default()
        });
        if !retention.phase.is_finished() && expired {
            retention.phase = ItemPhase::Failed;
            retention.error = Some(format!(
                "timed out: not finished {limit} after the session started ({source})"
            ));
            retention.claim.claimed_by = None;
            retention.end_time = Some(to_time(now));
        }
        let retention = retention.clone();
        if !retention.phase.is_finished() {
            conditions::set(
                &mut status.conditions,
                CONDITION_RETENTION_RUNNING,
                true,
                "Running",
                format!(
                    "every volume is finished; the agent on node {} applies the retention policy \
                     and reads the repository's figures",
                    retention.node.as_deref().unwrap_or("?")
                ),
                generation,
                to_time(now),
            );
            return Outcome {
                action: wake(deadline, LONGEST_WAIT),
                notes,
                record: None,
            };
        }
        let ok = retention.phase == ItemPhase::Succeeded;
        conditions::set(
            &mut status.conditions,
            CONDITION_RETENTION_RUNNING,
            false,
            if ok { "Succeeded" } else { "Failed" },
            if ok {
                format!(
                    "retention done: {} snapshot(s) kept, {} removed",
                    retention.kept.unwrap_or(0),
                    retention.removed.unwrap_or(0)
                )
            } else {
                "retention failed (see the RetentionFailed condition)".to_owned()
            },
            generation,
            to_time(now),
        );
        if !ok {
            let message = format!(
                "the retention run on node {} failed: {}",
                retention.node.as_deref().unwrap_or("?"),
                retention.error.as_deref().unwrap_or("no reason given")
            );
            conditions::set(
                &mut status.conditions,
                CONDITION_RETENTION_FAILED,
                true,
                "RetentionFailed",
                message.clone(),
                generation,
                to_time(now),
            );
            notes.push(Note::new(EventType::Warning, "RetentionFailed", message));
        }
        let last = status
            .items
            .iter()
            .filter(|i| i.common.phase == ItemPhase::Succeeded)
            .filter_map(|i| i.common.end_time.as_ref().map(from_time))
            .max()
            .unwrap_or(now);
        record = Some(Record {
            last_backup_time: to_time(last),
            figures: ok.then_some((retention.snapshot_count, retention.total_size)),
        });
    }
    status.phase = match failed {
        0 => SessionPhase::Succeeded,
        f if f == total => SessionPhase::Failed,
        _ => SessionPhase::PartiallyFailed,
    };
    status.completion_time = Some(to_time(now));
    status.duration = Some(format!("{}s", (now - started).num_seconds().max(0)));
    notes.push(match status.phase {
        SessionPhase::Succeeded => Note::new(
            EventType::Normal,
            "Succeeded",
            format!("all {total} volume(s) backed up"),
        ),
        phase => Note::new(
            EventType::Warning,
            &format!("{phase:?}"),
            format!("{failed} of {total} volume(s) failed"),
        ),
    });
    Outcome {
        action: Action::await_change(),
        notes,
        record,
    }
}

/// Records a finished backup on the Repository's status: the last backup
/// time (never moved back) and the figures of the retention run. Writing
/// the same record twice is harmless, so this runs before the session's
/// final status is written and a conflict there only repeats it.
async fn record_on_repository(
    ctx: &Context,
    ns: &str,
    cfg: &BackupConfiguration,
    record: &Record,
) -> Result<()> {
    let repo_ns = cfg.spec.repository.namespace.as_deref().unwrap_or(ns);
    let repo_name = &cfg.spec.repository.name;
    let repos: Api<Repository> = Api::namespaced(ctx.client.clone(), repo_ns);
    let err = || kube_err("update Repository status", repo_ns, repo_name);
    let Some(repo) = repos.get_opt(repo_name).await.map_err(err())? else {
        // The Repository went away since the session started: the backup
        // stands, there is just nothing to stamp.
        tracing::warn!(
            repository = %format!("{repo_ns}/{repo_name}"),
            "the Repository of a finished backup no longer exists"
        );
        return Ok(());
    };
    let mut fields = serde_json::Map::new();
    let newer = repo
        .status
        .as_ref()
        .and_then(|s| s.last_backup_time.as_ref())
        .is_none_or(|t| from_time(t) < from_time(&record.last_backup_time));
    if newer {
        fields.insert("lastBackupTime".into(), json!(record.last_backup_time));
    }
    if let Some((count, size)) = record.figures {
        if let Some(c) = count {
            fields.insert("snapshotCount".into(), json!(c));
        }
        if let Some(s) = size {
            fields.insert("totalSize".into(), json!(s));
        }
    }
    if fields.is_empty() {
        return Ok(());
    }
    match repos
        .patch_status(
            repo_name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": fields })),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(err()(e)),
    }
}

/// Logs and counts a failed reconciliation and retries it soon.
pub fn error_policy(session: Arc<BackupSession>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(object = %format!("{}/{}", session.namespace().unwrap_or_default(), session.name_any()), error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["BackupSession", err.metric_label()])
        .inc();
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{answer, conflict, context, echo_rest, expect, respond};
    use serde_json::Value;

    const CFG: &str = "/apis/stash.rs/v1alpha1/namespaces/team/backupconfigurations/db";
    const SESSION: &str = "/apis/stash.rs/v1alpha1/namespaces/team/backupsessions/s1";

    fn config() -> Value {
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration",
               "metadata": {"name": "db", "namespace": "team"},
               "spec": {"schedule": "@daily", "target": {"pod": "p"},
                        "repository": {"name": "main"}, "timeout": "100000d"}})
    }

    /// Answers the lookups of an unfinished item's pod and (Ready) node.
    async fn pod_and_node_exist(handle: &mut crate::testing::Handle, pod: &str, node: &str) {
        respond(
            handle,
            "GET",
            &format!("/api/v1/namespaces/team/pods/{pod}"),
            200,
            &json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": "team", "uid": "u1"}}),
        )
        .await;
        respond(
            handle,
            "GET",
            &format!("/api/v1/nodes/{node}"),
            200,
            &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
        .await;
    }

    fn session(rv: &str, status: Value) -> Value {
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
               "metadata": {"name": "s1", "namespace": "team", "resourceVersion": rv},
               "spec": {"backupConfiguration": "db"}, "status": status})
    }

    fn item(pod: &str, node: &str, phase: &str) -> Value {
        json!({"namespace": "team", "pod": pod, "volume": "data", "node": node, "phase": phase})
    }

    #[tokio::test]
    async fn finished_items_hand_retention_over_and_a_conflict_decides_again() {
        let running = json!({"phase": "Running", "startTime": "2024-01-01T00:00:00Z",
            "items": [item("a", "node-x", "Failed"), item("b", "node-b", "Succeeded"),
                      item("c", "node-c", "Running")]});
        let s: BackupSession = serde_json::from_value(session("7", running)).unwrap();
        let (ctx, mut handle) = context(vec![]);
        let task = tokio::spawn(reconcile(Arc::new(s), ctx));

        // Item c still runs on node-c: its agent watches the session by
        // that node's label (merged in, the session's version not tested).
        let (body, send) = expect(&mut handle, "PATCH", SESSION).await;
        assert_eq!(
            body,
            json!({"metadata": {"labels": {"node.stash.rs/node-c": "true"}}})
        );
        answer(send, 200, &session("7", json!({})));
        // Decided on version 7, where item c still runs: progress only.
        respond(&mut handle, "GET", CFG, 200, &config()).await;
        pod_and_node_exist(&mut handle, "c", "node-c").await;
        let (body, send) = expect(&mut handle, "PATCH", &format!("{SESSION}/status")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(
            body["status"],
            json!({"progress": "2/3"}),
            "only what changed"
        );
        answer(send, 409, &conflict());
        // Meanwhile the agent finished c: read again, decide again.
        let done = json!({"phase": "Running", "startTime": "2024-01-01T00:00:00Z",
            "items": [item("a", "node-x", "Failed"), item("b", "node-b", "Succeeded"),
                      item("c", "node-c", "Succeeded")]});
        respond(
            &mut handle,
            "GET",
            SESSION,
            200,
            &session("8", done.clone()),
        )
        .await;
        respond(&mut handle, "GET", CFG, 200, &config()).await;
        let (body, send) = expect(&mut handle, "PATCH", &format!("{SESSION}/status")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "8");
        let st = &body["status"];
        assert!(st.get("items").is_none(), "items are the agents': {st}");
        assert_eq!(st["progress"], "3/3");
        assert_eq!(
            st["retention"],
            json!({"phase": "Pending", "node": "node-b"})
        );
        assert!(st.get("phase").is_none(), "still Running: {st}");
        assert_eq!(st["conditions"][0]["type"], "RetentionRunning");
        answer(send, 200, &session("9", done));
        let rest = echo_rest(handle);
        task.await.unwrap().unwrap();
        assert!(rest.await.unwrap().is_empty(), "no events before the end");
    }

    #[test]
    fn the_default_deadline_is_the_interval_from_1h_to_24h() {
        let now = Utc::now();
        let d = |s: &str| default_deadline(s, None, now).as_secs();
        assert_eq!(d("0 */6 * * *"), 6 * 3600);
        assert_eq!(d("*/5 * * * *"), 3600, "at least 1h");
        assert_eq!(d("@weekly"), 24 * 3600, "at most 24h");
        assert_eq!(d("0 0 1 1 *"), 24 * 3600);
    }

    #[test]
    fn a_lost_item_fails_with_its_reason_and_the_session_finishes() {
        let mut status: BackupSessionStatus = serde_json::from_value(json!({
            "phase": "Running", "startTime": "2024-01-01T00:00:00Z",
            "items": [item("a", "node-a", "Succeeded"),
                      {"namespace": "team", "pod": "b", "volume": "data", "node": "node-b",
                       "phase": "Running", "claimedBy": "node-b/agent/1"}]}))
        .unwrap();
        let now = Utc::now();
        let lost = [Lost {
            index: 1,
            reason: REASON_NODE_NOT_READY,
            message: "node node-b is NotReady".into(),
        }];
        let notes = fail_lost(&mut status, &lost, now);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].reason, "NodeNotReady");
        let b = &status.items[1];
        assert_eq!(b.common.phase, ItemPhase::Failed);
        assert_eq!(b.common.claim.claimed_by, None);
        assert!(b
            .common
            .error
            .as_deref()
            .unwrap()
            .starts_with("NodeNotReady: node node-b"));
        let limit = Limit {
            after: Duration::from_secs(u32::MAX as u64),
            source: "test",
        };
        decide(&mut status, now, Some(limit), Duration::from_secs(1), None);
        assert_eq!(status.progress.as_deref(), Some("2/2"));
        assert!(
            status.retention.is_some(),
            "the session goes on to retention"
        );
    }

    #[tokio::test]
    async fn a_finished_retention_gives_the_phase_and_the_figures() {
        let st = json!({"phase": "Running", "startTime": "2024-01-01T00:00:00Z",
            "items": [item("a", "node-a", "Succeeded"), item("b", "node-b", "Failed")],
            "retention": {"phase": "Succeeded", "node": "node-a", "snapshotCount": 40,
                          "totalSize": 1000, "kept": 3, "removed": 1}});
        let s: BackupSession = serde_json::from_value(session("3", st)).unwrap();
        let (ctx, mut handle) = context(vec![]);
        let task = tokio::spawn(reconcile(Arc::new(s), ctx));
        respond(&mut handle, "GET", CFG, 200, &config()).await;
        let repo = "/apis/stash.rs/v1alpha1/namespaces/team/repositories/main";
        let repository = json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
            "metadata": {"name": "main", "namespace": "team"},
            "spec": {"url": "/srv", "passwordSecret": {"name": "pw"}}});
        respond(&mut handle, "GET", repo, 200, &repository).await;
        let (body, send) = expect(&mut handle, "PATCH", &format!("{repo}/status")).await;
        assert_eq!(body["status"]["snapshotCount"], 40);
        assert_eq!(body["status"]["totalSize"], 1000);
        assert!(body["status"]["lastBackupTime"].is_string());
        answer(send, 200, &repository);
        let (body, send) = expect(&mut handle, "PATCH", &format!("{SESSION}/status")).await;
        assert_eq!(body["status"]["phase"], "PartiallyFailed");
        assert_eq!(body["status"]["progress"], "2/2");
        answer(send, 200, &session("4", body["status"].clone()));
        let rest = echo_rest(handle);
        task.await.unwrap().unwrap();
        let rest = rest.await.unwrap();
        assert_eq!(rest.len(), 1, "{rest:?}");
        assert_eq!(rest[0].2["reason"], "PartiallyFailed");
        assert_eq!(rest[0].2["type"], "Warning");
    }

    /// Issue 15: a Job item of a running session gets its ServiceAccount,
    /// Role, RoleBinding and Job (in that order, owned by the session),
    /// and the item names its Job; once the Job's pod is OOMKilled, the
    /// item fails with the pod's reason and the session finishes.
    #[tokio::test]
    async fn a_job_item_gets_its_job_and_fails_with_the_pods_reason() {
        let job_item = |phase: &str, job: Option<&str>| {
            let mut i = json!({"namespace": "team", "pod": "", "volume": "archive",
                "executor": "job", "persistentVolumeClaim": "archive", "host": "team/archive",
                "phase": phase});
            if let Some(j) = job {
                i["job"] = json!(j);
            }
            i
        };
        let with_uid = |rv: &str, status: Value| {
            let mut s = session(rv, status);
            s["metadata"]["uid"] = json!("uid-1");
            s
        };
        let name = crate::jobs::job_name(crate::jobs::JobKind::Backup, "uid-1", "archive");
        let running = json!({"phase": "Running", "startTime": "2024-01-01T00:00:00Z",
            "deadline": "2999-01-01T00:00:00Z", "items": [job_item("Pending", None)]});
        let s: BackupSession = serde_json::from_value(with_uid("7", running)).unwrap();
        let (ctx, mut handle) = context(vec![]);
        let task = tokio::spawn(reconcile(Arc::new(s), ctx));
        respond(&mut handle, "GET", CFG, 200, &config()).await;
        respond(
            &mut handle,
            "GET",
            "/apis/stash.rs/v1alpha1/namespaces/team/repositories/main",
            200,
            &json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
            "metadata": {"name": "main", "namespace": "team"},
            "spec": {"url": "s3:http://m/b", "passwordSecret": {"name": "pw"}}}),
        )
        .await;
        let not_found = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "not found"});
        respond(
            &mut handle,
            "GET",
            &format!("/apis/batch/v1/namespaces/team/jobs/{name}"),
            404,
            &not_found,
        )
        .await;
        // Nobody mounts the claim now.
        respond(
            &mut handle,
            "GET",
            "/api/v1/namespaces/team/pods",
            200,
            &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        )
        .await;
        for path in [
            "/api/v1/namespaces/team/serviceaccounts",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team/roles",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings",
            "/apis/batch/v1/namespaces/team/jobs",
        ] {
            let (body, send) = expect(&mut handle, "POST", path).await;
            assert_eq!(body["metadata"]["name"], name.as_str(), "{path}");
            assert_eq!(
                body["metadata"]["ownerReferences"][0]["uid"], "uid-1",
                "{path}"
            );
            answer(send, 201, &body);
        }
        let (body, send) = expect(&mut handle, "PATCH", &format!("{SESSION}/status")).await;
        let it = &body["status"]["items"][0];
        assert_eq!(it["job"], name.as_str(), "{body}");
        assert_eq!(it["phase"], "Pending", "{body}");
        answer(send, 200, &with_uid("8", json!({})));
        let rest = echo_rest(handle);
        task.await.unwrap().unwrap();
        assert!(rest.await.unwrap().is_empty());

        // The Job's pod was OOMKilled before it could write the result.
        let running = json!({"phase": "Running", "startTime": "2024-01-01T00:00:00Z",
            "deadline": "2999-01-01T00:00:00Z", "items": [job_item("Running", Some(&name))]});
        let s: BackupSession = serde_json::from_value(with_uid("9", running)).unwrap();
        let (ctx, mut handle) = context(vec![]);
        let task = tokio::spawn(reconcile(Arc::new(s), ctx));
        respond(&mut handle, "GET", CFG, 200, &config()).await;
        respond(
            &mut handle,
            "GET",
            "/apis/stash.rs/v1alpha1/namespaces/team/repositories/main",
            404,
            &not_found,
        )
        .await;
        respond(
            &mut handle,
            "GET",
            &format!("/apis/batch/v1/namespaces/team/jobs/{name}"),
            200,
            &json!({"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": "team"}, "status": {}}),
        )
        .await;
        respond(&mut handle, "GET", "/api/v1/namespaces/team/pods", 200,
            &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
            {"metadata": {"name": format!("{name}-x1"), "namespace": "team"},
             "status": {"phase": "Failed", "containerStatuses": [{"name": "stash", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}]})).await;
        let (body, send) = expect(&mut handle, "PATCH", &format!("{SESSION}/status")).await;
        let st = &body["status"];
        assert_eq!(st["items"][0]["phase"], "Failed", "{body}");
        assert_eq!(
            st["items"][0]["error"],
            format!("Job pod {name}-x1: container stash terminated: OOMKilled (exit code 137)")
        );
        assert_eq!(st["phase"], "Failed", "{body}");
        answer(send, 200, &with_uid("10", json!({})));
        let rest = echo_rest(handle);
        task.await.unwrap().unwrap();
        let seen = rest.await.unwrap();
        assert!(
            seen.iter().any(|(_, _, b)| b["reason"] == "JobPodFailed"),
            "an Event with the pod's reason: {seen:?}"
        );
    }
}
