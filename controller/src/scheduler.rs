//! BackupConfigurations: creating a tick's session, and reconciling the
//! rest.
//!
//! [`crate::ticker`] decides when a tick is due (once `tick + jitter` has
//! passed) and calls [`fire_tick`], which creates the BackupSession unless
//! the concurrency policy says otherwise; the Event and `lastScheduleTime`
//! follow. Session names are derived from the tick (`<config>-<unix
//! seconds>`), so a tick can never produce two sessions, whatever happens to
//! leadership. The reconciler keeps the finalizer, the `Ready` condition,
//! `nextScheduleTime` and the session history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use stash_api::schedule::Schedule;
use stash_api::{
    BackupConfiguration, BackupConfigurationStatus, BackupSession, BackupSessionSpec,
    BackupSessionStatus, ConcurrencyPolicy, ItemPhase, Repository, RepositoryReference,
    SessionPhase, SessionTrigger, LABEL_CONFIGURATION,
};

use crate::clock::{jitter_offset, last_handled, plan};
use crate::error::{kube_err, Error, Result};
use crate::events::publish;
use crate::status::{changed_fields, write_if_unchanged, Written};
use crate::{conditions, finalizers, Context, ANNOTATION_SCHEDULED_BY};
use stash_api::policy::{repository_admits, Refusal};
use stash_api::time::{from_time, to_time};

/// Condition type on a BackupConfiguration: True while a tick was skipped
/// because a session still runs (concurrencyPolicy Forbid), naming it.
pub const CONDITION_STUCK: &str = "Stuck";
/// Condition: True while no session succeeded for twice the schedule's
/// interval (since creation when none ever did).
pub const CONDITION_STALE: &str = "Stale";

/// How often to look again at a configuration refused for a reason outside
/// it (a Repository missing or not admitting it), since those objects are
/// not watched.
const RECHECK: Duration = Duration::from_secs(30);

/// The `Ready` reason of a configuration whose `spec.mode` nothing implements.
pub(crate) const REASON_MODE: &str = "ModeNotImplemented";

/// Reconciles one BackupConfiguration: its finalizer, its `Ready`
/// condition and `nextScheduleTime`, and its session history. The ticks
/// themselves are fired by [`crate::ticker`].
pub async fn reconcile(cfg: Arc<BackupConfiguration>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics
        .reconciles
        .with_label_values(&["BackupConfiguration"])
        .inc();
    // A burst of ticks gets the apiserver first (see `clock::Firing`).
    ctx.firing.yield_to_ticks().await;
    let ns = cfg.namespace().unwrap_or_default();
    let name = cfg.name_any();
    let now = Utc::now();
    let mut status = cfg.status.clone().unwrap_or_default();
    status.observed_generation = cfg.metadata.generation;
    let generation = cfg.metadata.generation;
    let set_ready =
        |status: &mut BackupConfigurationStatus, ok: bool, reason: &str, message: String| {
            conditions::set(
                &mut status.conditions,
                "Ready",
                ok,
                reason,
                message,
                generation,
                to_time(now),
            );
        };

    let api: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
    if cfg.metadata.deletion_timestamp.is_some() {
        return terminate(&ctx, &cfg, status, &api).await;
    }
    if !finalizers::set(&api, &cfg, finalizers::SESSIONS, true).await? {
        return Ok(Action::requeue(Duration::from_millis(200)));
    }

    let schedule = match Schedule::parse(&cfg.spec.schedule, cfg.spec.time_zone.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            status.next_schedule_time = None;
            set_ready(&mut status, false, "InvalidSchedule", e.to_string());
            write_status(&ctx, &cfg, status).await?;
            return Ok(Action::await_change());
        }
    };
    if let Some(message) = cfg.spec.unsupported_mode() {
        // Stored before the CRD refused it: never run it on the node agent.
        status.next_schedule_time = None;
        let changed = conditions::get(&status.conditions, "Ready").map(|c| c.reason.as_str())
            != Some(REASON_MODE);
        set_ready(&mut status, false, REASON_MODE, message.into());
        if changed {
            publish(&ctx, cfg.as_ref(), EventType::Warning, REASON_MODE, message).await;
        }
        write_status(&ctx, &cfg, status).await?;
        return Ok(Action::await_change());
    }
    let user = format!("BackupConfiguration {ns}/{name}");
    if let Err(refusal) = check_writable_repository(&ctx, &ns, &user, &cfg.spec.repository).await? {
        status.next_schedule_time = None;
        let changed = conditions::get(&status.conditions, "Ready").map(|c| c.reason.as_str())
            != Some(refusal.reason);
        set_ready(&mut status, false, refusal.reason, refusal.message.clone());
        if changed {
            publish(
                &ctx,
                cfg.as_ref(),
                EventType::Warning,
                refusal.reason,
                &refusal.message,
            )
            .await;
        }
        write_status(&ctx, &cfg, status).await?;
        return Ok(Action::requeue(RECHECK));
    }
    if cfg.spec.paused {
        status.next_schedule_time = None;
        set_ready(
            &mut status,
            false,
            "Paused",
            "spec.paused is true: no new sessions".into(),
        );
        write_status(&ctx, &cfg, status).await?;
        return Ok(Action::await_change());
    }

    let sessions = sessions_of(&ctx, &ns, &name);
    prune(&ctx, &cfg, &sessions).await?;
    let jitter = jitter_offset(&ns, &name, cfg.spec.jitter_seconds.unwrap_or(0));
    let jitter = chrono::Duration::from_std(jitter).unwrap_or_default();
    let (_, next) = plan(&schedule, jitter, last_handled(&cfg, &ctx.ticks, now), now);
    status.next_schedule_time = next.map(to_time);
    stuck(&ctx, &cfg, &sessions, &mut status, now);
    let stale_in = outcomes(&ctx, &cfg, &sessions, &mut status, &schedule, now);
    // The message does not name the next tick, so it does not change (and
    // cost a write) on every tick: nextScheduleTime says it.
    set_ready(
        &mut status,
        true,
        "Scheduled",
        match &cfg.spec.time_zone {
            Some(tz) => format!(
                "sessions follow the schedule {:?} in {tz}",
                cfg.spec.schedule
            ),
            None => format!("sessions follow the schedule {:?}", cfg.spec.schedule),
        },
    );
    write_status(&ctx, &cfg, status).await?;
    // The ticks come from the ticker; this runs again when the object or
    // one of its sessions changes, or when it would go stale.
    Ok(match stale_in {
        Some(d) => Action::requeue(d.max(Duration::from_secs(1))),
        None => Action::await_change(),
    })
}

/// A session's phase; one without status has not started.
fn phase_of(s: &BackupSession) -> SessionPhase {
    s.status.as_ref().map(|st| st.phase).unwrap_or_default()
}

/// The oldest unfinished session of `sessions`, and since when it exists.
fn oldest_running(sessions: &[Arc<BackupSession>]) -> Option<(&Arc<BackupSession>, DateTime<Utc>)> {
    sessions
        .iter()
        .filter(|s| !phase_of(s).is_finished())
        .filter_map(|s| {
            s.metadata
                .creation_timestamp
                .as_ref()
                .map(|t| (s, from_time(t)))
        })
        .min_by_key(|(_, t)| *t)
}

/// Records how the configuration's sessions ended: `lastSuccessfulTime`
/// in the status, and the gauges the alerts of `deploy/monitoring/` use
/// (last success, or the configuration's creation when none succeeded
/// yet; whether the last finished session succeeded; the schedule's
/// interval, for "no success for twice the interval"); and the `Stale`
/// condition, offering a notification when it turns True. Returns how long
/// until the configuration goes stale, if it is not.
fn outcomes(
    ctx: &Context,
    cfg: &BackupConfiguration,
    sessions: &[Arc<BackupSession>],
    status: &mut BackupConfigurationStatus,
    schedule: &Schedule,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let ns = cfg.namespace().unwrap_or_default();
    let name = cfg.name_any();
    let ended: Vec<(SessionPhase, DateTime<Utc>)> = sessions
        .iter()
        .filter_map(|s| {
            let st = s.status.as_ref()?;
            let ran = matches!(
                st.phase,
                SessionPhase::Succeeded | SessionPhase::PartiallyFailed | SessionPhase::Failed
            );
            ran.then_some((st.phase, from_time(st.completion_time.as_ref()?)))
        })
        .collect();
    let last_ok = ended
        .iter()
        .filter(|(p, _)| *p == SessionPhase::Succeeded)
        .map(|(_, t)| *t)
        .max();
    if let Some(t) = last_ok {
        if status.last_successful_time.as_ref().map(from_time) < Some(t) {
            status.last_successful_time = Some(to_time(t));
        }
    }
    let labels = [ns.as_str(), name.as_str()];
    let since = status
        .last_successful_time
        .as_ref()
        .map(from_time)
        .or_else(|| cfg.metadata.creation_timestamp.as_ref().map(from_time));
    if let Some(t) = since {
        ctx.metrics
            .last_success
            .with_label_values(&labels)
            .set(t.timestamp());
    }
    if let Some((phase, _)) = ended.iter().max_by_key(|(_, t)| *t) {
        ctx.metrics
            .last_session_succeeded
            .with_label_values(&labels)
            .set(i64::from(*phase == SessionPhase::Succeeded));
    }
    let interval = schedule
        .next_after(now)
        .and_then(|a| Some((schedule.next_after(a)? - a).num_seconds()));
    if let Some(i) = interval {
        ctx.metrics
            .schedule_interval
            .with_label_values(&labels)
            .set(i);
    }
    let (since, interval) = (since?, chrono::TimeDelta::seconds(interval?));
    let stale_at = since + interval * 2;
    let was =
        conditions::get(&status.conditions, CONDITION_STALE).is_some_and(|c| c.status == "True");
    let generation = cfg.metadata.generation;
    let succeeded_once = status.last_successful_time.is_some();
    if now >= stale_at {
        let message = format!(
            "no successful backup {} {}: more than twice the schedule's interval of {}s",
            if succeeded_once {
                "since"
            } else {
                "since the configuration was created at"
            },
            since.to_rfc3339(),
            interval.num_seconds()
        );
        if !was {
            tracing::warn!(configuration = %format!("{ns}/{name}"), %message, "stale");
            ctx.notifier
                .offer_stale(ctx, cfg, since, succeeded_once, interval, &message);
        }
        conditions::set(
            &mut status.conditions,
            CONDITION_STALE,
            true,
            "NoRecentSuccess",
            message,
            generation,
            to_time(now),
        );
        return None;
    }
    if was {
        conditions::set(
            &mut status.conditions,
            CONDITION_STALE,
            false,
            "RecentSuccess",
            format!("succeeded at {}", since.to_rfc3339()),
            generation,
            to_time(now),
        );
    }
    (stale_at - now).to_std().ok()
}

/// When the session's unfinished work fails, as its status says.
fn deadline_of(s: &BackupSession) -> String {
    s.status
        .as_ref()
        .and_then(|st| st.deadline.as_ref())
        .map(|d| {
            format!(
                "it fails what is unfinished at its deadline {}",
                from_time(d).to_rfc3339()
            )
        })
        .unwrap_or_else(|| "it has no deadline yet".to_owned())
}

/// Sets the `Stuck` condition (True when a tick came after the oldest
/// unfinished session was created and Forbid skipped it; False again once
/// it is over) and the oldest-session-age gauge.
fn stuck(
    ctx: &Context,
    cfg: &BackupConfiguration,
    sessions: &[Arc<BackupSession>],
    status: &mut BackupConfigurationStatus,
    now: DateTime<Utc>,
) {
    let ns = cfg.namespace().unwrap_or_default();
    let name = cfg.name_any();
    let oldest = oldest_running(sessions);
    ctx.metrics
        .oldest_session_age
        .with_label_values(&[&ns, &name])
        .set(
            oldest
                .map(|(_, t)| (now - t).num_seconds().max(0))
                .unwrap_or(0),
        );
    let last_tick = status.last_schedule_time.as_ref().map(from_time);
    let blocking = oldest.filter(|(_, created)| {
        cfg.spec.concurrency_policy == ConcurrencyPolicy::Forbid
            && last_tick.is_some_and(|tick| tick > *created)
    });
    let generation = cfg.metadata.generation;
    match blocking {
        Some((s, created)) => {
            let tick = last_tick.unwrap_or(now);
            conditions::set(
                &mut status.conditions,
                CONDITION_STUCK,
                true,
                "SessionStillRunning",
                format!(
                    "the tick at {} was skipped (concurrencyPolicy Forbid): session {} has run for \
                     {}s (since {}); {}",
                    tick.to_rfc3339(),
                    s.name_any(),
                    (tick - created).num_seconds().max(0),
                    created.to_rfc3339(),
                    deadline_of(s)
                ),
                generation,
                to_time(now),
            );
        }
        None => {
            if conditions::get(&status.conditions, CONDITION_STUCK)
                .is_some_and(|c| c.status == "True")
            {
                conditions::set(
                    &mut status.conditions,
                    CONDITION_STUCK,
                    false,
                    "NoSessionBlocking",
                    "no running session holds the schedule back",
                    generation,
                    to_time(now),
                );
            }
        }
    }
}

/// A configuration being deleted: no more ticks; the finalizer goes once
/// its sessions are finished (see [`crate::finalizers`]).
async fn terminate(
    ctx: &Context,
    cfg: &BackupConfiguration,
    mut status: BackupConfigurationStatus,
    api: &Api<BackupConfiguration>,
) -> Result<Action> {
    if !cfg.finalizers().iter().any(|f| f == finalizers::SESSIONS) {
        return Ok(Action::await_change());
    }
    let ns = cfg.namespace().unwrap_or_default();
    let running: Vec<String> = sessions_of(ctx, &ns, &cfg.name_any())
        .iter()
        .filter(|s| !phase_of(s).is_finished())
        .map(|s| s.name_any())
        .collect();
    if running.is_empty() {
        finalizers::set(api, cfg, finalizers::SESSIONS, false).await?;
        return Ok(Action::await_change());
    }
    status.next_schedule_time = None;
    conditions::set(
        &mut status.conditions,
        "Ready",
        false,
        "Terminating",
        format!(
            "being deleted: no new sessions; waiting for session(s) {} to finish",
            running.join(", ")
        ),
        cfg.metadata.generation,
        to_time(Utc::now()),
    );
    write_status(ctx, cfg, status).await?;
    // Session changes wake this too (the sessions are watched).
    Ok(Action::requeue(Duration::from_secs(30)))
}

/// What [`fire_tick`] leaves to record once the session exists.
pub(crate) struct Fired {
    /// The tick handled.
    tick: DateTime<Utc>,
    /// The session of the tick, unless the concurrency policy skipped it.
    session: Option<String>,
    /// The Event to publish about it, if any.
    note: Option<(EventType, &'static str, String)>,
}

/// Fires `tick` of `cfg`: adds the finalizer if it is not there yet (a
/// session must never exist without it), checks the Repository policy,
/// applies the concurrency policy and creates the session. `None` when the
/// configuration is gone or refused (its reconciler says why).
pub(crate) async fn fire_tick(
    ctx: &Context,
    cfg: &BackupConfiguration,
    tick: DateTime<Utc>,
) -> Result<Option<Fired>> {
    let ns = cfg.namespace().unwrap_or_default();
    let name = cfg.name_any();
    let api: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = std::borrow::Cow::Borrowed(cfg);
    while !current
        .finalizers()
        .iter()
        .any(|f| f == finalizers::SESSIONS)
    {
        if finalizers::set(&api, current.as_ref(), finalizers::SESSIONS, true).await? {
            break;
        }
        // Changed meanwhile (or gone): read it again.
        match api
            .get_opt(&name)
            .await
            .map_err(kube_err("get BackupConfiguration", &ns, &name))?
        {
            Some(fresh) if fresh.metadata.deletion_timestamp.is_none() => {
                current = std::borrow::Cow::Owned(fresh);
            }
            _ => return Ok(None),
        }
    }
    if cfg.spec.unsupported_mode().is_some() {
        return Ok(None);
    }
    let user = format!("BackupConfiguration {ns}/{name}");
    if check_writable_repository(ctx, &ns, &user, &cfg.spec.repository)
        .await?
        .is_err()
    {
        return Ok(None);
    }
    let jitter = jitter_offset(&ns, &name, cfg.spec.jitter_seconds.unwrap_or(0));
    let jitter = chrono::Duration::from_std(jitter).unwrap_or_default();
    let sessions = sessions_of(ctx, &ns, &name);
    fire(ctx, cfg, &sessions, tick, jitter).await.map(Some)
}

impl Fired {
    /// Publishes the Event and writes `lastScheduleTime`, `lastSession` and
    /// `nextScheduleTime`: the status fields the ticker owns.
    pub(crate) async fn record(self, ctx: &Context, cfg: &BackupConfiguration) {
        if let Some((type_, reason, note)) = &self.note {
            publish(ctx, cfg, *type_, reason, note).await;
        }
        let mut fields = json!({"lastScheduleTime": to_time(self.tick)});
        if let Some(session) = &self.session {
            fields["lastSession"] = json!(session);
        }
        if let Some((schedule, jitter)) = crate::clock::clock_of(cfg) {
            let now = Utc::now();
            let last = last_handled(cfg, &ctx.ticks, now).max(self.tick);
            if let (_, Some(next)) = plan(&schedule, jitter, last, now) {
                fields["nextScheduleTime"] = json!(to_time(next));
            }
        }
        let ns = cfg.namespace().unwrap_or_default();
        let name = cfg.name_any();
        let api: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": fields})),
            )
            .await
        {
            // The session exists; the status catches up with the next tick
            // or reconciliation.
            tracing::warn!(config = %format!("{ns}/{name}"), error = %e, "cannot record the last tick in the status");
        }
    }
}

/// Creates (or, by the concurrency policy, skips) the session for `tick`.
async fn fire(
    ctx: &Context,
    cfg: &BackupConfiguration,
    sessions: &[Arc<BackupSession>],
    tick: DateTime<Utc>,
    jitter: chrono::Duration,
) -> Result<Fired> {
    let ns = cfg.namespace().unwrap_or_default();
    let name = cfg.name_any();
    let active: Vec<&Arc<BackupSession>> = sessions
        .iter()
        .filter(|s| !phase_of(s).is_finished())
        .collect();
    match cfg.spec.concurrency_policy {
        ConcurrencyPolicy::Forbid if !active.is_empty() => {
            ctx.metrics
                .ticks_skipped
                .with_label_values(&[&ns, &name])
                .inc();
            let now = Utc::now();
            let (blocker, since) = oldest_running(sessions)
                .map(|(s, t)| (s.as_ref(), Some(t)))
                .unwrap_or((active[0].as_ref(), None));
            if let Some(t) = since {
                ctx.metrics
                    .oldest_session_age
                    .with_label_values(&[&ns, &name])
                    .set((now - t).num_seconds().max(0));
            }
            let message = format!(
                "skipped the tick at {}: session {} is still running (concurrencyPolicy Forbid){}; {}",
                tick.to_rfc3339(),
                blocker.name_any(),
                since
                    .map(|t| format!(", for {}s", (now - t).num_seconds().max(0)))
                    .unwrap_or_default(),
                deadline_of(blocker)
            );
            return Ok(Fired {
                tick,
                session: None,
                note: Some((EventType::Warning, "TickSkipped", message)),
            });
        }
        ConcurrencyPolicy::Replace => {
            for s in active {
                replace_session(ctx, s).await?;
            }
        }
        _ => {}
    }
    let session_name = session_name(&name, tick);
    let session = BackupSession {
        metadata: ObjectMeta {
            name: Some(session_name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([(
                LABEL_CONFIGURATION.to_owned(),
                name.clone(),
            )])),
            annotations: Some(BTreeMap::from([(
                ANNOTATION_SCHEDULED_BY.to_owned(),
                ctx.settings.identity.clone(),
            )])),
            owner_references: cfg.controller_owner_ref(&()).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: BackupSessionSpec {
            backup_configuration: name.clone(),
            trigger: SessionTrigger::Scheduled,
            scheduled_time: Some(to_time(tick)),
        },
        status: None,
    };
    let api: Api<BackupSession> = Api::namespaced(ctx.client.clone(), &ns);
    let note = match api.create(&PostParams::default(), &session).await {
        Ok(_) => {
            let latency = (Utc::now() - (tick + jitter)).to_std().unwrap_or_default();
            ctx.metrics.schedule_latency.observe(latency.as_secs_f64());
            ctx.metrics.sessions_created.inc();
            tracing::info!(session = %format!("{ns}/{session_name}"), ?latency, "scheduled");
            Some((
                EventType::Normal,
                "Scheduled",
                format!("created BackupSession {session_name}"),
            ))
        }
        // Already created for this tick (by us before a restart, or by a
        // previous leader): nothing to do.
        Err(kube::Error::Api(s)) if s.code == 409 => None,
        Err(e) => return Err(kube_err("create BackupSession", &ns, &session_name)(e)),
    };
    Ok(Fired {
        tick,
        session: Some(session_name),
        note,
    })
}

/// Fails an unfinished session that a new tick replaces, with its
/// unfinished items and retention run (revoking their claims, so their
/// agents stop). Written on condition of the version read, like every
/// session status write (see [`crate::session`]).
async fn replace_session(ctx: &Context, s: &BackupSession) -> Result<()> {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    let api: Api<BackupSession> = Api::namespaced(ctx.client.clone(), &ns);
    let mut current = s.clone();
    loop {
        let old = current.status.clone().unwrap_or_default();
        if old.phase.is_finished() {
            return Ok(());
        }
        let now = to_time(Utc::now());
        let mut st = old.clone();
        replaced(&mut st, now.clone(), current.metadata.generation);
        match write_if_unchanged(&api, &current, &old, &st, "fail replaced BackupSession").await? {
            Written::Conflict => {
                ctx.metrics.status_conflicts.inc();
                match api
                    .get_opt(&name)
                    .await
                    .map_err(kube_err("get BackupSession", &ns, &name))?
                {
                    Some(fresh) => current = fresh,
                    None => return Ok(()),
                }
            }
            Written::Done | Written::Unchanged => return Ok(()),
        }
    }
}

/// `status` of a session a newer tick replaced: Failed, and so is every
/// unfinished item and retention run, their claims revoked.
pub(crate) fn replaced(status: &mut BackupSessionStatus, now: Time, generation: Option<i64>) {
    const WHY: &str = "a newer tick replaced this session (concurrencyPolicy Replace)";
    status.phase = SessionPhase::Failed;
    status.completion_time = Some(now.clone());
    let items = status.items.iter_mut().map(|i| &mut i.common);
    for item in items.filter(|i| !i.phase.is_finished()) {
        item.fail(WHY.to_owned(), now.clone());
    }
    if let Some(r) = status.retention.as_mut().filter(|r| !r.phase.is_finished()) {
        r.phase = ItemPhase::Failed;
        r.error = Some(WHY.to_owned());
        r.claim.claimed_by = None;
        r.end_time = Some(now.clone());
    }
    conditions::set(
        &mut status.conditions,
        "Ready",
        false,
        "Replaced",
        WHY,
        generation,
        now,
    );
}

/// Deletes finished sessions beyond the history limits.
async fn prune(
    ctx: &Context,
    cfg: &BackupConfiguration,
    sessions: &[Arc<BackupSession>],
) -> Result<()> {
    let ns = cfg.namespace().unwrap_or_default();
    let api: Api<BackupSession> = Api::namespaced(ctx.client.clone(), &ns);
    for name in to_prune(
        sessions,
        cfg.spec.successful_history_limit,
        cfg.spec.failed_history_limit,
    ) {
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(kube_err("delete old BackupSession", &ns, &name)(e)),
        }
    }
    Ok(())
}

/// Names of the finished sessions to delete: all but the newest
/// `successful` Succeeded ones and the newest `failed` others.
pub fn to_prune(sessions: &[Arc<BackupSession>], successful: u32, failed: u32) -> Vec<String> {
    let mut finished: Vec<(&Arc<BackupSession>, SessionPhase)> = sessions
        .iter()
        .filter_map(|s| {
            let phase = phase_of(s);
            phase.is_finished().then_some((s, phase))
        })
        .collect();
    // Newest first; the name breaks ties within a second.
    finished.sort_by(|(a, _), (b, _)| {
        let key = |s: &BackupSession| {
            (
                s.metadata.creation_timestamp.as_ref().map(from_time),
                s.name_any(),
            )
        };
        key(b).cmp(&key(a))
    });
    let (mut ok_kept, mut failed_kept) = (0, 0);
    let mut out = Vec::new();
    for (s, phase) in finished {
        let (kept, limit) = if phase == SessionPhase::Succeeded {
            (&mut ok_kept, successful)
        } else {
            (&mut failed_kept, failed)
        };
        if *kept < limit {
            *kept += 1;
        } else {
            out.push(s.name_any());
        }
    }
    out
}

/// The sessions of configuration `name` in `ns`, from the watch cache.
fn sessions_of(ctx: &Context, ns: &str, name: &str) -> Vec<Arc<BackupSession>> {
    ctx.sessions
        .state()
        .into_iter()
        .filter(|s| {
            s.metadata.namespace.as_deref() == Some(ns) && s.spec.backup_configuration == name
        })
        .collect()
}

/// The session name for `tick`: `<config>-<unix seconds>`, the config part
/// shortened so the whole stays a valid object name.
pub fn session_name(config: &str, tick: DateTime<Utc>) -> String {
    let suffix = format!("-{}", tick.timestamp());
    let keep = 253 - suffix.len();
    let base: String = config.chars().take(keep).collect();
    format!("{}{suffix}", base.trim_end_matches(['-', '.']))
}

/// [`check_repository`] for a backup: the Repository must also take
/// writes (not `readOnly`, not adopted).
pub async fn check_writable_repository(
    ctx: &Context,
    ns: &str,
    user: &str,
    reference: &RepositoryReference,
) -> Result<std::result::Result<Repository, Refusal>> {
    Ok(check_repository(ctx, ns, user, reference)
        .await?
        .and_then(|repo| {
            let name = format!(
                "{}/{}",
                repo.metadata.namespace.as_deref().unwrap_or(ns),
                reference.name
            );
            match repo.spec.refuses_writes(&name) {
                Some(why) => Err(Refusal {
                    reason: "RepositoryReadOnly",
                    message: format!("{user} cannot back up into it: {why}"),
                }),
                None => Ok(repo),
            }
        }))
}

/// Whether `user` in `ns` may use the Repository `reference` names: the
/// Repository, or why not.
pub async fn check_repository(
    ctx: &Context,
    ns: &str,
    user: &str,
    reference: &RepositoryReference,
) -> Result<std::result::Result<Repository, Refusal>> {
    let repo_ns = reference.namespace.as_deref().unwrap_or(ns);
    // The watch cache first; a Repository it does not hold yet (just
    // created) is read, so a refusal is never due to the cache lagging.
    let cached = ctx
        .repositories
        .get(&ObjectRef::new(&reference.name).within(repo_ns));
    let repo = match cached {
        Some(repo) => Some(Arc::unwrap_or_clone(repo)),
        None => {
            let api: Api<Repository> = Api::namespaced(ctx.client.clone(), repo_ns);
            api.get_opt(&reference.name).await.map_err(kube_err(
                "get Repository",
                repo_ns,
                &reference.name,
            ))?
        }
    };
    let Some(repo) = repo else {
        return Ok(Err(Refusal {
            reason: "RepositoryNotFound",
            message: format!(
                "{user} refers to Repository {repo_ns}/{}, which does not exist",
                reference.name
            ),
        }));
    };
    let labels = if repo_ns == ns {
        BTreeMap::new()
    } else {
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        namespaces
            .get_opt(ns)
            .await
            .map_err(kube_err("get Namespace", "", ns))?
            .and_then(|n| n.metadata.labels)
            .unwrap_or_default()
    };
    Ok(repository_admits(&repo, ns, &labels, user).map(|()| repo))
}

/// Writes what differs between `status` and the stored one.
async fn write_status(
    ctx: &Context,
    cfg: &BackupConfiguration,
    status: BackupConfigurationStatus,
) -> Result<()> {
    // Only the fields that changed, so a stale cached copy never takes back
    // the lastScheduleTime the ticker wrote meanwhile.
    let old = cfg.status.clone().unwrap_or_default();
    let Some(fields) = changed_fields(&old, &status) else {
        return Ok(());
    };
    let ns = cfg.namespace().unwrap_or_default();
    let name = cfg.name_any();
    let api: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": fields})),
    )
    .await
    .map_err(kube_err("update BackupConfiguration status", &ns, &name))?;
    Ok(())
}

/// Logs and counts a failed reconciliation and retries it soon.
pub fn error_policy(cfg: Arc<BackupConfiguration>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(object = %format!("{}/{}", cfg.namespace().unwrap_or_default(), cfg.name_any()), error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["BackupConfiguration", err.metric_label()])
        .inc();
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use stash_api::{BackupSessionSpec, BackupSessionStatus};

    fn session(name: &str, created: i64, phase: Option<SessionPhase>) -> Arc<BackupSession> {
        let mut s = BackupSession::new(
            name,
            BackupSessionSpec {
                backup_configuration: "db".into(),
                trigger: SessionTrigger::Scheduled,
                scheduled_time: None,
            },
        );
        s.metadata.creation_timestamp = Some(to_time(Utc.timestamp_opt(created, 0).unwrap()));
        s.status = phase.map(|phase| BackupSessionStatus {
            phase,
            ..BackupSessionStatus::default()
        });
        Arc::new(s)
    }

    #[test]
    fn pruning_keeps_the_newest_of_each_kind_and_all_unfinished() {
        let s = [
            session("ok-1", 1, Some(SessionPhase::Succeeded)),
            session("ok-2", 2, Some(SessionPhase::Succeeded)),
            session("bad-3", 3, Some(SessionPhase::Failed)),
            session("ok-4", 4, Some(SessionPhase::Succeeded)),
            session("part-5", 5, Some(SessionPhase::PartiallyFailed)),
            session("run-6", 6, Some(SessionPhase::Running)),
            session("new-7", 7, None),
        ];
        let mut pruned = to_prune(&s, 2, 1);
        pruned.sort();
        assert_eq!(pruned, ["bad-3", "ok-1"]);
        assert_eq!(to_prune(&s, 0, 0).len(), 5);
    }

    mod policy {
        use super::super::*;
        use crate::testing::{answer, context, expect, respond};
        use serde_json::json;

        const NS: &str = "/apis/stash.rs/v1alpha1/namespaces/team";
        const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/team/events";

        fn config(policy: &str) -> BackupConfiguration {
            let ten_ago = (Utc::now() - chrono::Duration::seconds(10)).to_rfc3339();
            serde_json::from_value(json!({
                "apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration",
                "metadata": {"name": "db", "namespace": "team", "resourceVersion": "1",
                             "uid": "u1", "finalizers": ["stash.rs/sessions"],
                             "creationTimestamp": "2024-01-01T00:00:00Z"},
                "spec": {"schedule": "* * * * * *", "target": {"pod": "p"},
                         "repository": {"name": "main"}, "concurrencyPolicy": policy},
                "status": {"lastScheduleTime": ten_ago},
            }))
            .unwrap()
        }

        fn running_session() -> BackupSession {
            serde_json::from_value(json!({
                "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
                "metadata": {"name": "db-1", "namespace": "team", "resourceVersion": "5"},
                "spec": {"backupConfiguration": "db"},
                "status": {"phase": "Running", "startTime": "2024-01-01T00:00:00Z",
                           "items": [{"namespace": "team", "pod": "p", "volume": "data",
                                      "phase": "Running", "claimedBy": "n/a/1"}]},
            }))
            .unwrap()
        }

        /// Fires the tick due now (every second) and records it, as the
        /// ticker does.
        async fn tick(cfg: BackupConfiguration, ctx: Arc<Context>) {
            let now = Utc::now();
            let (schedule, jitter) = crate::clock::clock_of(&cfg).unwrap();
            let last = crate::clock::last_handled(&cfg, &ctx.ticks, now);
            let (due, _) = crate::clock::plan(&schedule, jitter, last, now);
            let fired = fire_tick(&ctx, &cfg, due.unwrap()).await.unwrap();
            fired.unwrap().record(&ctx, &cfg).await;
        }

        async fn repository_is_fine(handle: &mut crate::testing::Handle) {
            respond(
                handle,
                "GET",
                &format!("{NS}/repositories/main"),
                200,
                &json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
                "metadata": {"name": "main", "namespace": "team"},
                "spec": {"url": "/srv", "passwordSecret": {"name": "pw"}}}),
            )
            .await;
        }

        #[tokio::test]
        async fn forbid_skips_the_tick_while_a_session_runs() {
            let (ctx, mut handle) = context(vec![running_session()]);
            let task = tokio::spawn(tick(config("Forbid"), ctx.clone()));
            repository_is_fine(&mut handle).await;
            let (event, send) = expect(&mut handle, "POST", EVENTS).await;
            assert_eq!(event["reason"], "TickSkipped");
            assert!(event["note"]
                .as_str()
                .unwrap()
                .contains("session db-1 is still running"));
            answer(send, 201, &event);
            // No session is created: the next request is the status.
            let (body, send) = expect(
                &mut handle,
                "PATCH",
                &format!("{NS}/backupconfigurations/db/status"),
            )
            .await;
            assert!(body["status"]["lastScheduleTime"].is_string());
            answer(send, 200, &serde_json::to_value(config("Forbid")).unwrap());
            task.await.unwrap();
            assert_eq!(
                ctx.metrics
                    .ticks_skipped
                    .with_label_values(&["team", "db"])
                    .get(),
                1
            );
        }

        #[tokio::test]
        async fn replace_fails_the_running_session_then_creates_the_next() {
            let (ctx, mut handle) = context(vec![running_session()]);
            let task = tokio::spawn(tick(config("Replace"), ctx));
            repository_is_fine(&mut handle).await;
            let (body, send) = expect(
                &mut handle,
                "PATCH",
                &format!("{NS}/backupsessions/db-1/status"),
            )
            .await;
            assert_eq!(
                body["metadata"]["resourceVersion"], "5",
                "conditional on the version read"
            );
            assert_eq!(body["status"]["phase"], "Failed");
            let item = &body["status"]["items"][0];
            assert_eq!(item["phase"], "Failed");
            assert!(
                item.get("claimedBy").is_none(),
                "the claim is revoked: {item}"
            );
            answer(send, 200, &serde_json::to_value(running_session()).unwrap());
            let (created, send) =
                expect(&mut handle, "POST", &format!("{NS}/backupsessions")).await;
            assert_eq!(created["spec"]["backupConfiguration"], "db");
            assert_eq!(created["spec"]["trigger"], "Scheduled");
            assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "u1");
            answer(send, 201, &created);
            let (event, send) = expect(&mut handle, "POST", EVENTS).await;
            assert_eq!(event["reason"], "Scheduled");
            answer(send, 201, &event);
            respond(
                &mut handle,
                "PATCH",
                &format!("{NS}/backupconfigurations/db/status"),
                200,
                &serde_json::to_value(config("Replace")).unwrap(),
            )
            .await;
            task.await.unwrap();
        }
    }

    #[test]
    fn names_and_jitter_are_stable() {
        let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        assert_eq!(session_name("db", t), "db-1700000000");
        assert_eq!(session_name(&"x".repeat(300), t).len(), 253);
        assert_eq!(jitter_offset("a", "b", 0), Duration::ZERO);
        let j = jitter_offset("team", "db", 60);
        assert!(j < Duration::from_secs(60));
        assert_eq!(j, jitter_offset("team", "db", 60));
        assert_ne!(j, jitter_offset("team", "web", 60));
    }
}
