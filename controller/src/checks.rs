//! Scheduled checks of Repositories (`spec.check`): starts a run at each
//! tick or request, expires runs past their timeout, and records finished
//! ones in the status, an Event and the metrics. What to do is decided by
//! [`stash_api::check::decide`]; an agent claims and runs the check (see
//! the `stash_api::check` docs).
//!
//! Every status write carries the object's `resourceVersion`, so it never
//! overwrites what an agent wrote meanwhile (a conflict decides again).

use std::time::Duration;

use chrono::Utc;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::{json, Map, Value};
use stash_api::check::{
    decide, CheckState, CheckStep, CHECK_LABEL, CHECK_LABEL_VALUE, CHECK_NOW, RESULT_PASSED,
};
use stash_api::time::{from_time, to_time};
use stash_api::Repository;

use crate::error::{kube_err, Result};
use crate::events::publish;
use crate::Context;

/// How soon to look again after a write (its watch event usually comes
/// first).
const AFTER_WRITE: Duration = Duration::from_millis(500);

/// Does this reconcile's part for `repo`'s checks; when to look again
/// (`None`: on a change only).
pub async fn reconcile(ctx: &Context, repo: &Repository) -> Result<Option<Duration>> {
    let ns = repo.namespace().unwrap_or_default();
    let name = repo.name_any();
    let api: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
    let status = repo.status.clone().unwrap_or_default();
    export_metrics(ctx, &ns, &name, &status);
    let now = Utc::now();
    let created = repo
        .metadata
        .creation_timestamp
        .as_ref()
        .map(from_time)
        .unwrap_or(now);
    let request = repo.annotations().get(CHECK_NOW).map(String::as_str);
    let state = CheckState {
        run: status.check.as_ref(),
        last_check_time: status.last_check_time.as_ref(),
        last_schedule_time: status.last_check_schedule_time.as_ref(),
    };
    let decision = match decide(repo.spec.check.as_ref(), request, state, created, now) {
        Ok(d) => d,
        Err(why) => {
            let message = format!("Repository {ns}/{name}: checks cannot be scheduled: {why}");
            tracing::warn!(repository = %format!("{ns}/{name}"), %why, "invalid check settings");
            publish(ctx, repo, EventType::Warning, "InvalidCheck", &message).await;
            sync_label(&api, repo, false).await?;
            return Ok(None);
        }
    };
    let unfinished = status.check.as_ref().is_some_and(|r| !r.is_finished());
    let rv = repo.resource_version();
    let again = match decision.step {
        CheckStep::Nothing => {
            sync_label(&api, repo, unfinished).await?;
            decision
                .requeue_at
                .map(|t| (t - now).to_std().unwrap_or_default())
        }
        CheckStep::Start(run) => {
            let mut check = serde_json::to_value(&run).expect("a check run serialises");
            clear_old_fields(&mut check, status.check.as_ref());
            let mut st = Map::new();
            st.insert("check".into(), check);
            if run.trigger == Some(stash_api::check::CheckTrigger::Schedule) {
                st.insert("lastCheckScheduleTime".into(), json!(run.scheduled_time));
            }
            if !write_status(&api, &ns, &name, rv, Value::Object(st)).await? {
                return Ok(Some(AFTER_WRITE));
            }
            sync_label(&api, repo, true).await?;
            tracing::info!(repository = %format!("{ns}/{name}"), trigger = ?run.trigger, "check run asked for");
            Some(AFTER_WRITE)
        }
        CheckStep::Expire(why) => {
            let st = json!({"check": {
                "phase": "Failed",
                "error": why,
                "message": "failed",
                "endTime": to_time(now),
                // The agent's next heartbeat tests its claim: it stops.
                "claimedBy": null,
            }});
            if write_status(&api, &ns, &name, rv, st).await? {
                tracing::warn!(repository = %format!("{ns}/{name}"), %why, "check run expired");
            }
            Some(AFTER_WRITE)
        }
        CheckStep::Record {
            time,
            result,
            message,
        } => {
            let st = json!({"lastCheckTime": time, "lastCheckResult": result});
            if !write_status(&api, &ns, &name, rv, st).await? {
                return Ok(Some(AFTER_WRITE));
            }
            sync_label(&api, repo, false).await?;
            let (type_, reason) = if result == RESULT_PASSED {
                (EventType::Normal, "CheckPassed")
            } else {
                (EventType::Warning, "CheckFailed")
            };
            publish(ctx, repo, type_, reason, &message).await;
            ctx.metrics
                .check_time
                .with_label_values(&[&ns, &name])
                .set(from_time(&time).timestamp());
            ctx.metrics
                .check_passed
                .with_label_values(&[&ns, &name])
                .set(i64::from(result == RESULT_PASSED));
            tracing::info!(repository = %format!("{ns}/{name}"), result, %message, "check recorded");
            decision
                .requeue_at
                .map(|t| (t - now).to_std().unwrap_or_default())
        }
    };
    Ok(again.map(|d| d.max(Duration::from_millis(200))))
}

/// The last check's time and result as gauges (also after a restart of the
/// controller, from the status).
fn export_metrics(ctx: &Context, ns: &str, name: &str, status: &stash_api::RepositoryStatus) {
    if let (Some(t), Some(r)) = (&status.last_check_time, &status.last_check_result) {
        ctx.metrics
            .check_time
            .with_label_values(&[ns, name])
            .set(from_time(t).timestamp());
        ctx.metrics
            .check_passed
            .with_label_values(&[ns, name])
            .set(i64::from(r == RESULT_PASSED));
    }
}

/// Sets to null the fields of the `old` run that the new `run` (as JSON)
/// does not have, so a merge patch replaces the run whole.
fn clear_old_fields(run: &mut Value, old: Option<&stash_api::check::CheckRun>) {
    let (Some(obj), Some(old)) = (run.as_object_mut(), old) else {
        return;
    };
    if let Value::Object(old) = serde_json::to_value(old).expect("a check run serialises") {
        for k in old.keys() {
            obj.entry(k.clone()).or_insert(Value::Null);
        }
    }
}

/// A merge patch of `status` with `resourceVersion` as a precondition:
/// false when the object changed meanwhile (decide again) or is gone.
async fn write_status(
    api: &Api<Repository>,
    ns: &str,
    name: &str,
    rv: Option<String>,
    status: Value,
) -> Result<bool> {
    let patch = json!({"metadata": {"resourceVersion": rv}, "status": status});
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
        Err(e) => Err(kube_err("update Repository status", ns, name)(e)),
    }
}

/// Keeps the label [`CHECK_LABEL`] on `repo` exactly while `wanted` (an
/// unfinished run), so only then do the agents watch it.
async fn sync_label(api: &Api<Repository>, repo: &Repository, wanted: bool) -> Result<()> {
    let has = repo.labels().get(CHECK_LABEL).map(String::as_str) == Some(CHECK_LABEL_VALUE);
    if has == wanted {
        return Ok(());
    }
    let value = if wanted {
        json!(CHECK_LABEL_VALUE)
    } else {
        Value::Null
    };
    let patch = json!({"metadata": {"labels": {CHECK_LABEL: value}}});
    match api
        .patch(
            &repo.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err(
            "update Repository labels",
            &repo.namespace().unwrap_or_default(),
            &repo.name_any(),
        )(e)),
    }
}
