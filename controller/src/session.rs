//! Reconciles BackupSessions: resolves a new session into per-volume items,
//! each on its pod's node, then follows the items the agents update until
//! the session is Succeeded, PartiallyFailed or Failed; fails items that
//! outlive the configuration's timeout; records the last backup on the
//! Repository.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::ResourceExt;
use serde_json::json;
use stash_api::{
    parse_duration, BackupConfiguration, BackupSession, BackupSessionStatus, ItemPhase, Repository,
    SessionPhase,
};

use crate::error::{kube_err, Error, Result};
use crate::scheduler::{check_repository, publish};
use crate::targets::{resolve_items, target_pods};
use crate::time::{from_time, to_time};
use crate::{conditions, Context};

/// Reconciles one BackupSession.
pub async fn reconcile(session: Arc<BackupSession>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics
        .reconciles
        .with_label_values(&["BackupSession"])
        .inc();
    let status = session.status.clone().unwrap_or_default();
    if status.phase.is_finished() {
        return Ok(Action::await_change());
    }
    if status.start_time.is_none() {
        return start(&session, &ctx).await;
    }
    follow(&session, &ctx, status).await
}

/// Resolves a new session into items, or fails it with the reason.
async fn start(session: &BackupSession, ctx: &Context) -> Result<Action> {
    let ns = session.namespace().unwrap_or_default();
    let name = session.name_any();
    let now = to_time(Utc::now());
    let mut status = BackupSessionStatus {
        start_time: Some(now.clone()),
        ..BackupSessionStatus::default()
    };
    let generation = session.metadata.generation;
    let fail = |mut status: BackupSessionStatus, reason: &str, message: String| {
        status.phase = SessionPhase::Failed;
        status.completion_time = Some(now.clone());
        conditions::set(
            &mut status.conditions,
            "Ready",
            false,
            reason,
            message,
            generation,
            now.clone(),
        );
        status
    };

    let configs: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
    let cfg_name = &session.spec.backup_configuration;
    let Some(cfg) = configs.get_opt(cfg_name).await.map_err(kube_err(
        "get BackupConfiguration",
        &ns,
        cfg_name,
    ))?
    else {
        let message = format!("BackupConfiguration {ns}/{cfg_name} does not exist");
        write_status(ctx, session, fail(status, "ConfigurationNotFound", message)).await?;
        return Ok(Action::await_change());
    };
    let user = format!("BackupSession {ns}/{name}");
    if let Err(refusal) = check_repository(ctx, &ns, &user, &cfg.spec.repository).await? {
        publish(
            ctx,
            session,
            EventType::Warning,
            refusal.reason,
            &refusal.message,
        )
        .await;
        write_status(ctx, session, fail(status, refusal.reason, refusal.message)).await?;
        return Ok(Action::await_change());
    }
    let pods = target_pods(&ctx.client, &ns, &cfg.spec.target).await?;
    let resolution = resolve_items(
        &pods,
        &cfg.spec.volumes,
        cfg.spec.target.persistent_volume_claim.as_deref(),
        &ctx.settings.host_paths,
    );
    if !resolution.refused.is_empty() {
        let message = resolution.refused.join("; ");
        publish(
            ctx,
            session,
            EventType::Warning,
            "HostPathNotAllowed",
            &message,
        )
        .await;
        conditions::set(
            &mut status.conditions,
            "HostPathNotAllowed",
            true,
            "HostPathNotAllowed",
            message,
            generation,
            now.clone(),
        );
    }
    if resolution.items.is_empty() {
        let message = format!(
            "nothing to back up: {} pod(s) match the target of BackupConfiguration {ns}/{cfg_name}, and none has a volume to back up{}",
            pods.len(),
            if cfg.spec.volumes.is_empty() { " (opt volumes in with the stash.rs/backup-volumes pod annotation, or list them in spec.volumes)" } else { "" }
        );
        write_status(ctx, session, fail(status, "NoVolumes", message)).await?;
        return Ok(Action::await_change());
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
        now,
    );
    // Items already failed at resolution (missing volume, pod not on a
    // node) may finish the session at once.
    let action = finish_if_done(ctx, session, &mut status, cfg.spec.timeout.as_deref()).await?;
    write_status(ctx, session, status).await?;
    Ok(action)
}

/// Follows a running session: timeouts and the overall phase.
async fn follow(
    session: &BackupSession,
    ctx: &Context,
    mut status: BackupSessionStatus,
) -> Result<Action> {
    let ns = session.namespace().unwrap_or_default();
    let configs: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
    let timeout = configs
        .get_opt(&session.spec.backup_configuration)
        .await
        .map_err(kube_err(
            "get BackupConfiguration",
            &ns,
            &session.spec.backup_configuration,
        ))?
        .and_then(|c| c.spec.timeout);
    let before = status.clone();
    let action = finish_if_done(ctx, session, &mut status, timeout.as_deref()).await?;
    if status != before {
        write_status(ctx, session, status).await?;
    }
    Ok(action)
}

/// Times out stuck items, updates progress, and finishes the session when
/// every item is done. Returns when to look again.
async fn finish_if_done(
    ctx: &Context,
    session: &BackupSession,
    status: &mut BackupSessionStatus,
    timeout: Option<&str>,
) -> Result<Action> {
    let now = Utc::now();
    let started = status.start_time.as_ref().map(from_time).unwrap_or(now);
    let timeout = timeout.and_then(|t| parse_duration(t).ok());
    let mut wake = None;
    if let Some(limit) = timeout {
        let deadline = started + chrono::Duration::from_std(limit).unwrap_or_default();
        if now >= deadline {
            for item in status.items.iter_mut().filter(|i| !i.phase.is_finished()) {
                item.phase = ItemPhase::Failed;
                item.error = Some(format!(
                    "timed out: not finished {limit:?} after the session started"
                ));
                item.end_time = Some(to_time(now));
            }
        } else {
            wake = (deadline - now).to_std().ok();
        }
    }
    let total = status.items.len();
    let done = status
        .items
        .iter()
        .filter(|i| i.phase.is_finished())
        .count();
    let failed = status
        .items
        .iter()
        .filter(|i| i.phase == ItemPhase::Failed)
        .count();
    status.progress = Some(format!("{done}/{total}"));
    if done < total {
        return Ok(wake
            .map(Action::requeue)
            .unwrap_or_else(Action::await_change));
    }
    status.phase = match failed {
        0 => SessionPhase::Succeeded,
        f if f == total => SessionPhase::Failed,
        _ => SessionPhase::PartiallyFailed,
    };
    status.completion_time = Some(to_time(now));
    status.duration = Some(format!("{}s", (now - started).num_seconds().max(0)));
    let ns = session.namespace().unwrap_or_default();
    let (type_, message) = match status.phase {
        SessionPhase::Succeeded => (
            EventType::Normal,
            format!("all {total} volume(s) backed up"),
        ),
        _ => (
            EventType::Warning,
            format!("{failed} of {total} volume(s) failed"),
        ),
    };
    publish(
        ctx,
        session,
        type_,
        &format!("{:?}", status.phase),
        &message,
    )
    .await;
    if status.phase == SessionPhase::Succeeded {
        record_backup(ctx, &ns, session).await?;
    }
    Ok(Action::await_change())
}

/// Records the finished backup on the Repository's status.
async fn record_backup(ctx: &Context, ns: &str, session: &BackupSession) -> Result<()> {
    let configs: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), ns);
    let Some(cfg) = configs
        .get_opt(&session.spec.backup_configuration)
        .await
        .map_err(kube_err(
            "get BackupConfiguration",
            ns,
            &session.spec.backup_configuration,
        ))?
    else {
        return Ok(());
    };
    let repo_ns = cfg.spec.repository.namespace.as_deref().unwrap_or(ns);
    let repos: Api<Repository> = Api::namespaced(ctx.client.clone(), repo_ns);
    let patch = json!({"status": {"lastBackupTime": to_time(Utc::now())}});
    match repos
        .patch_status(
            &cfg.spec.repository.name,
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        // The Repository went away since the session started: the backup
        // stands, there is just nothing to stamp.
        Err(kube::Error::Api(s)) if s.code == 404 => {
            tracing::warn!(
                repository = %format!("{repo_ns}/{}", cfg.spec.repository.name),
                "the Repository of a finished backup no longer exists"
            );
            Ok(())
        }
        Err(e) => Err(kube_err(
            "update Repository status",
            repo_ns,
            &cfg.spec.repository.name,
        )(e)),
    }
}

async fn write_status(
    ctx: &Context,
    session: &BackupSession,
    status: BackupSessionStatus,
) -> Result<()> {
    let ns = session.namespace().unwrap_or_default();
    let name = session.name_any();
    let api: Api<BackupSession> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .map_err(kube_err("update BackupSession status", &ns, &name))?;
    Ok(())
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
