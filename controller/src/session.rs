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
//! agent of its node takes it over once the heartbeat is old enough, and
//! the configuration's `timeout` bounds the whole session (items and
//! retention) when the node never comes back.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;
use stash_api::{
    parse_duration, BackupConfiguration, BackupSession, BackupSessionStatus, ItemPhase, Repository,
    RetentionStatus, SessionPhase,
};

use crate::error::{kube_err, Error, Result};
use crate::events::publish;
use crate::scheduler::check_repository;
use crate::status::{write_if_unchanged, Written};
use crate::targets::{resolve_items, target_pods};
use crate::{conditions, Context};
use stash_api::time::{from_time, to_time};

/// How often a reconciliation reads the session again after a conflict
/// before it gives up and requeues.
const ATTEMPTS: usize = 5;

/// Condition type while the retention run is under way.
pub const CONDITION_RETENTION_RUNNING: &str = "RetentionRunning";
/// Condition type set when the retention run failed.
pub const CONDITION_RETENTION_FAILED: &str = "RetentionFailed";

/// Reconciles one BackupSession.
pub async fn reconcile(session: Arc<BackupSession>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics
        .reconciles
        .with_label_values(&["BackupSession"])
        .inc();
    // A burst of ticks gets the apiserver first (see `ticker::Firing`).
    ctx.firing.yield_to_ticks().await;
    let ns = session.namespace().unwrap_or_default();
    let name = session.name_any();
    let api: Api<BackupSession> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = session;
    for _ in 0..ATTEMPTS {
        if let Some(action) = step(&current, &ctx).await? {
            return Ok(action);
        }
        ctx.metrics.status_conflicts.inc();
        match api
            .get_opt(&name)
            .await
            .map_err(kube_err("get BackupSession", &ns, &name))?
        {
            Some(s) => current = Arc::new(s),
            None => return Ok(Action::await_change()),
        }
    }
    Ok(Action::requeue(Duration::from_secs(1)))
}

/// One decision on `session` as read; `None` when its status changed
/// meanwhile and the decision must be made again.
async fn step(session: &BackupSession, ctx: &Context) -> Result<Option<Action>> {
    let status = session.status.clone().unwrap_or_default();
    if status.phase.is_finished() {
        ctx.notifier.offer_backup(ctx, session);
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
    if let Err(refusal) = check_repository(ctx, &ns, &user, &cfg.spec.repository).await? {
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
        notes.push(Note::new(EventType::Warning, "HostPathNotAllowed", message));
    }
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
    status.items = resolution.items;
    status.phase = SessionPhase::Running;
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
    // Items already failed at resolution (missing volume, pod not on a
    // node) may finish the session at once.
    let outcome = decide(&mut status, now, timeout_of(&cfg), generation);
    notes.extend(outcome.notes);
    if let Some(record) = &outcome.record {
        record_on_repository(ctx, &ns, &cfg, record).await?;
    }
    Ok(commit(ctx, session, &old, &status, notes)
        .await?
        .then_some(outcome.action))
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
    let outcome = decide(
        &mut status,
        Utc::now(),
        cfg.as_ref().and_then(timeout_of),
        session.metadata.generation,
    );
    if let (Some(record), Some(cfg)) = (&outcome.record, &cfg) {
        record_on_repository(ctx, &ns, cfg, record).await?;
    }
    Ok(commit(ctx, session, &old, &status, outcome.notes)
        .await?
        .then_some(outcome.action))
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

/// The decision on a running session at `now`: fails what outlived
/// `timeout` (counted from the session's start), updates progress, hands
/// the retention run over once every item is finished and one succeeded,
/// and sets the final phase once the retention run (if any) is over.
pub(crate) fn decide(
    status: &mut BackupSessionStatus,
    now: DateTime<Utc>,
    timeout: Option<Duration>,
    generation: Option<i64>,
) -> Outcome {
    let started = status.start_time.as_ref().map(from_time).unwrap_or(now);
    let deadline = timeout
        .and_then(|t| chrono::Duration::from_std(t).ok())
        .and_then(|t| started.checked_add_signed(t));
    let expired = deadline.is_some_and(|d| now >= d);
    let wake = |deadline: Option<DateTime<Utc>>| {
        deadline
            .and_then(|d| (d - now).to_std().ok())
            .map(Action::requeue)
            .unwrap_or_else(Action::await_change)
    };
    let limit = timeout
        .map(|t| format!("{}s", t.as_secs()))
        .unwrap_or_default();
    let mut notes = Vec::new();
    if expired {
        for item in status.items.iter_mut().filter(|i| !i.phase.is_finished()) {
            item.phase = ItemPhase::Failed;
            item.error = Some(format!(
                "timed out: not finished {limit} after the session started (the configuration's timeout); \
                 the claim of {} was revoked",
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
        return Outcome {
            action: wake(deadline),
            notes,
            record: None,
        };
    }
    let mut record = None;
    if succeeded > 0 {
        let first = status
            .items
            .iter()
            .find(|i| i.phase == ItemPhase::Succeeded);
        let node = first.and_then(|i| i.node.clone());
        let retention = status.retention.get_or_insert_with(|| RetentionStatus {
            phase: ItemPhase::Pending,
            node: node.clone(),
            ..RetentionStatus::default()
        });
        if !retention.phase.is_finished() && expired {
            retention.phase = ItemPhase::Failed;
            retention.error = Some(format!(
                "timed out: not finished {limit} after the session started (the configuration's timeout)"
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
                action: wake(deadline),
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
            .filter(|i| i.phase == ItemPhase::Succeeded)
            .filter_map(|i| i.end_time.as_ref().map(from_time))
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
    use crate::testing::{answer, conflict, context, echo_rest, expect};
    use serde_json::Value;

    const CFG: &str = "/apis/stash.rs/v1alpha1/namespaces/team/backupconfigurations/db";
    const SESSION: &str = "/apis/stash.rs/v1alpha1/namespaces/team/backupsessions/s1";

    fn config() -> Value {
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration",
               "metadata": {"name": "db", "namespace": "team"},
               "spec": {"schedule": "@daily", "target": {"pod": "p"},
                        "repository": {"name": "main"}}})
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

        // Decided on version 7, where item c still runs: progress only.
        let (_, send) = expect(&mut handle, "GET", CFG).await;
        answer(send, 200, &config());
        let (body, send) = expect(&mut handle, "PATCH", &format!("{SESSION}/status")).await;
        assert_eq!(body["metadata"]["resourceVersion"], "7");
        assert_eq!(
            body["status"],
            json!({"progress": "2/3"}),
            "only what changed"
        );
        answer(send, 409, &conflict());
        // Meanwhile the agent finished c: read again, decide again.
        let (_, send) = expect(&mut handle, "GET", SESSION).await;
        let done = json!({"phase": "Running", "startTime": "2024-01-01T00:00:00Z",
            "items": [item("a", "node-x", "Failed"), item("b", "node-b", "Succeeded"),
                      item("c", "node-c", "Succeeded")]});
        answer(send, 200, &session("8", done.clone()));
        let (_, send) = expect(&mut handle, "GET", CFG).await;
        answer(send, 200, &config());
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

    #[tokio::test]
    async fn a_finished_retention_gives_the_phase_and_the_figures() {
        let st = json!({"phase": "Running", "startTime": "2024-01-01T00:00:00Z",
            "items": [item("a", "node-a", "Succeeded"), item("b", "node-b", "Failed")],
            "retention": {"phase": "Succeeded", "node": "node-a", "snapshotCount": 40,
                          "totalSize": 1000, "kept": 3, "removed": 1}});
        let s: BackupSession = serde_json::from_value(session("3", st)).unwrap();
        let (ctx, mut handle) = context(vec![]);
        let task = tokio::spawn(reconcile(Arc::new(s), ctx));
        let (_, send) = expect(&mut handle, "GET", CFG).await;
        answer(send, 200, &config());
        let repo = "/apis/stash.rs/v1alpha1/namespaces/team/repositories/main";
        let repository = json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
            "metadata": {"name": "main", "namespace": "team"},
            "spec": {"url": "/srv", "passwordSecret": {"name": "pw"}}});
        let (_, send) = expect(&mut handle, "GET", repo).await;
        answer(send, 200, &repository);
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
}
