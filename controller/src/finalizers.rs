//! Finalizers where deleting an object would otherwise break something a
//! platform engineer relies on:
//!
//! - [`SESSIONS`] on every BackupConfiguration: deleting a configuration
//!   while one of its sessions runs would delete the session with it (it is
//!   owned by the configuration) under the agents' feet, leaving a
//!   half-written snapshot and a stale repository lock. While the
//!   configuration is being deleted no tick fires, `Ready` is False with
//!   reason `Terminating` naming the sessions still running, and the
//!   finalizer goes once they are finished (or the configuration's timeout
//!   ended them); the finished sessions then go with the configuration.
//! - [`IN_USE`] on every Repository: deleting a Repository that
//!   BackupConfigurations still name would make every later session of
//!   theirs fail. Deletion waits, with `Ready` False reason `InUse` and a
//!   Warning Event naming them, until no configuration and no unfinished
//!   RestoreSession refers to it. (Deleting the object never deletes the
//!   repository's data.)
//!
//! Each reconcile of a Repository also brings the agents' Secrets Role of
//! its namespace up to date ([`crate::agent_secrets`]) and schedules its
//! checks ([`crate::checks`]).
//!
//! Finalizer lists are written with the object's `resourceVersion` as a
//! precondition, so a concurrent change is never lost.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;
use stash_api::policy::repository_admits;
use stash_api::{BackupConfiguration, Repository, RestoreSession};

use crate::error::{kube_err, Error, Result};
use crate::events::publish;
use crate::{agent_secrets, checks, conditions, Context};
use stash_api::time::to_time;

/// Finalizer on BackupConfigurations: their running sessions finish first.
pub const SESSIONS: &str = "stash.rs/sessions";
/// Finalizer on Repositories: no configuration refers to them any more.
pub const IN_USE: &str = "stash.rs/in-use";

/// How often a blocked deletion looks again.
const RECHECK: Duration = Duration::from_secs(5);

/// Adds (`present`) or removes finalizer `name` on `obj`, on condition of
/// its `resourceVersion`. False when the object changed meanwhile (the
/// caller requeues) or is gone.
pub async fn set<K>(api: &Api<K>, obj: &K, name: &str, present: bool) -> Result<bool>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut list = obj.finalizers().to_vec();
    if list.iter().any(|f| f == name) == present {
        return Ok(true);
    }
    if present {
        list.push(name.to_owned());
    } else {
        list.retain(|f| f != name);
    }
    let patch =
        json!({"metadata": {"resourceVersion": obj.resource_version(), "finalizers": list}});
    let ns = obj.namespace().unwrap_or_default();
    match api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
        Err(e) => Err(kube_err("update finalizers", &ns, &obj.name_any())(e)),
    }
}

/// Reconciles one Repository: keeps [`IN_USE`] on it, and releases a
/// Repository being deleted once nothing refers to it.
pub async fn reconcile_repository(repo: Arc<Repository>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics
        .reconciles
        .with_label_values(&["Repository"])
        .inc();
    let ns = repo.namespace().unwrap_or_default();
    let name = repo.name_any();
    let api: Api<Repository> = Api::namespaced(ctx.client.clone(), &ns);
    if repo.metadata.deletion_timestamp.is_none() {
        // The finalizer first: a Repository whose Secrets the agents may
        // read is always one whose deletion passes through here.
        if !set(&api, &repo, IN_USE, true).await? {
            return Ok(Action::requeue(Duration::from_millis(200)));
        }
        agent_secrets::sync(&ctx, &ns, |r| needs_secrets(r, None)).await?;
        return Ok(match checks::reconcile(&ctx, &repo).await? {
            Some(after) => Action::requeue(after),
            None => Action::await_change(),
        });
    }
    if !repo.finalizers().iter().any(|f| f == IN_USE) {
        agent_secrets::sync(&ctx, &ns, |r| needs_secrets(r, Some(&name))).await?;
        return Ok(Action::await_change());
    }
    let users = users_of(&ctx, &repo).await?;
    if users.is_empty() {
        // Its names leave the agents' Role before the Repository goes.
        agent_secrets::sync(&ctx, &ns, |r| needs_secrets(r, Some(&name))).await?;
        set(&api, &repo, IN_USE, false).await?;
        return Ok(Action::await_change());
    }
    let message = format!(
        "Repository {ns}/{name} is still used by {}; it is deleted once they no longer refer to it",
        users.join(", ")
    );
    let mut status = repo.status.clone().unwrap_or_default();
    let before = status.clone();
    conditions::set(
        &mut status.conditions,
        "Ready",
        false,
        "InUse",
        message.clone(),
        repo.metadata.generation,
        to_time(Utc::now()),
    );
    if status != before {
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": status.conditions}})),
        )
        .await
        .map_err(kube_err("update Repository status", &ns, &name))?;
        publish(&ctx, repo.as_ref(), EventType::Warning, "InUse", &message).await;
    }
    Ok(Action::requeue(RECHECK))
}

/// Whether `repo` still needs the agents to read its Secrets: it is not
/// `leaving` (the one whose finalizer this reconcile removes), and it is not
/// being deleted or [`IN_USE`] still holds it (its last sessions run).
fn needs_secrets(repo: &Repository, leaving: Option<&str>) -> bool {
    Some(repo.name_any().as_str()) != leaving
        && (repo.metadata.deletion_timestamp.is_none()
            || repo.finalizers().iter().any(|f| f == IN_USE))
}

/// The BackupConfigurations (also those being deleted: their last sessions
/// may still write to it) and unfinished RestoreSessions naming `repo`, as
/// `Kind ns/name`, among those in namespaces the Repository admits. Anyone
/// may name any Repository in a spec; one that does not admit the namespace
/// was never usable from there, so such a reference must not let a tenant
/// hold another namespace's Repository undeletable.
async fn users_of(ctx: &Context, repo: &Repository) -> Result<Vec<String>> {
    let ns = repo.namespace().unwrap_or_default();
    let name = repo.name_any();
    let refers = |r: &stash_api::RepositoryReference, user_ns: &str| {
        r.name == name && r.namespace.as_deref().unwrap_or(user_ns) == ns
    };
    let mut admitted: BTreeMap<String, bool> = BTreeMap::new();
    let mut users = Vec::new();
    let configs: Api<BackupConfiguration> = Api::all(ctx.client.clone());
    for c in configs
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list BackupConfigurations", "", "*"))?
    {
        let cns = c.namespace().unwrap_or_default();
        if refers(&c.spec.repository, &cns) && admits(ctx, repo, &mut admitted, &cns).await? {
            users.push(format!("BackupConfiguration {cns}/{}", c.name_any()));
        }
    }
    let restores: Api<RestoreSession> = Api::all(ctx.client.clone());
    for r in restores
        .list(&ListParams::default())
        .await
        .map_err(kube_err("list RestoreSessions", "", "*"))?
    {
        let rns = r.namespace().unwrap_or_default();
        let finished = r.status.as_ref().is_some_and(|s| s.phase.is_finished());
        if !finished
            && refers(&r.spec.repository, &rns)
            && admits(ctx, repo, &mut admitted, &rns).await?
        {
            users.push(format!("RestoreSession {rns}/{}", r.name_any()));
        }
    }
    users.sort();
    Ok(users)
}

/// Whether `repo` admits users in `user_ns` (answers cached in `cache`).
async fn admits(
    ctx: &Context,
    repo: &Repository,
    cache: &mut BTreeMap<String, bool>,
    user_ns: &str,
) -> Result<bool> {
    if repo.namespace().as_deref() == Some(user_ns) {
        return Ok(true);
    }
    if let Some(a) = cache.get(user_ns) {
        return Ok(*a);
    }
    let labels = Api::<Namespace>::all(ctx.client.clone())
        .get_opt(user_ns)
        .await
        .map_err(kube_err("read Namespace", "", user_ns))?
        .map(|n| n.labels().clone())
        .unwrap_or_default();
    let a = repository_admits(repo, user_ns, &labels, "").is_ok();
    cache.insert(user_ns.to_owned(), a);
    Ok(a)
}

/// Logs and counts a failed reconciliation and retries it soon.
pub fn error_policy(repo: Arc<Repository>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(object = %format!("{}/{}", repo.namespace().unwrap_or_default(), repo.name_any()), error = %err, "reconcile failed");
    ctx.metrics
        .reconcile_errors
        .with_label_values(&["Repository", err.metric_label()])
        .inc();
    Action::requeue(Duration::from_secs(5))
}
