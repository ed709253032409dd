//! Automatic BackupConfigurations from pod annotations: a pod annotated
//! `stash.rs/backup-schedule` and `stash.rs/backup-repository` gets a
//! BackupConfiguration `auto-<workload>` without anyone writing one.
//!
//! - One configuration per workload (the Deployment, StatefulSet or
//!   DaemonSet owning the pod, which it targets and which owns it through an
//!   ownerReference, so it goes away with the workload), or per pod for a
//!   pod of any other kind (it targets and is owned by that pod).
//! - The newest pod of the workload decides: during a rollout the new
//!   template's annotations win, and once the newest pod carries neither
//!   annotation the configuration is deleted.
//! - Only configurations this controller made (label
//!   `stash.rs/auto-backup: "true"`) are changed or deleted; a hand-written
//!   `auto-<workload>` is left alone with an Event on the pod.
//! - Volumes are those the pods opt in with `stash.rs/backup-volumes`.
//!   Other fields (retention, timeout, ...) may be added to the generated
//!   object by hand: server-side apply leaves them alone.
//! - Invalid values (a bad cron schedule, a malformed repository, one
//!   annotation without the other) give a Warning Event on the pod and leave
//!   an existing configuration as it was.
//!
//! Pods are watched metadata-only, with managed fields and foreign
//! annotations dropped, so 10 000 pods cost little memory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;
use serde_json::json;
use stash_api::annotations::{BACKUP_REPOSITORY, BACKUP_SCHEDULE};
use stash_api::identity::workload_name_of;
use stash_api::schedule::Schedule;
use stash_api::{BackupConfiguration, RepositoryReference};
use tokio_util::sync::CancellationToken;

use crate::error::{kube_err, Error, Result};
use crate::events::publish;
use crate::Context;

/// Label on the BackupConfigurations made from annotations.
pub const LABEL_AUTO_BACKUP: &str = "stash.rs/auto-backup";
/// Field manager of the generated configurations.
const MANAGER: &str = "stash-controller-auto-backup";

/// What the auto-backup reconciler reads.
pub struct AutoContext {
    /// The shared context.
    pub ctx: Arc<Context>,
    /// Every pod's metadata.
    pub pods: Store<PartialObjectMeta<Pod>>,
    /// The configurations made from annotations.
    pub configs: Store<BackupConfiguration>,
}

/// Runs the auto-backup reconciler until `shutdown`.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let client = ctx.client.clone();
    let (configs, config_writer) = reflector::store();
    let stop = shutdown.clone();
    let config_cache = reflector::reflector(
        config_writer,
        watcher(
            Api::<BackupConfiguration>::all(client.clone()),
            watcher::Config::default().labels(&format!("{LABEL_AUTO_BACKUP}=true")),
        ),
    )
    .default_backoff()
    .touched_objects()
    .take_until(async move { stop.cancelled().await })
    .for_each(|_| futures::future::ready(()));
    let (pods, pod_writer) = reflector::store();
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(
            Api::<PartialObjectMeta<Pod>>::all(client),
            watcher::Config::default(),
        )
        .default_backoff()
        .modify(|p: &mut PartialObjectMeta<Pod>| {
            p.metadata.managed_fields = None;
            if let Some(a) = p.metadata.annotations.as_mut() {
                a.retain(|k, _| k.starts_with("stash.rs/"));
            }
        }),
    )
    .applied_objects()
    // Ends with the shutdown like every other watch here: the controller
    // below then stops once its in-flight reconciles are done.
    .take_until({
        let stop = shutdown.clone();
        async move { stop.cancelled().await }
    });
    let concurrency = ctx.settings.concurrency;
    let actx = Arc::new(AutoContext {
        ctx,
        pods: pods.clone(),
        configs: configs.clone(),
    });
    let stop = shutdown.clone();
    let controller = Controller::for_stream(pod_stream, pods.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, actx)
        .for_each(|_| futures::future::ready(()));
    let controller = crate::until_shutdown(controller, pods, shutdown.clone());
    // Deletions decide on the managed configurations in the cache: start
    // only once it holds them all.
    let controller = async move {
        if configs.wait_until_ready().await.is_ok() {
            controller.await;
        }
    };
    tokio::join!(config_cache, controller);
}

/// The configuration a workload's annotations ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The cron schedule.
    pub schedule: String,
    /// The Repository.
    pub repository: RepositoryReference,
}

/// Reads the two annotations: `None` when neither is set, the desired
/// configuration, or why the values are unusable.
pub fn desired(
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<std::result::Result<Desired, String>> {
    let get = |k: &str| {
        annotations
            .and_then(|a| a.get(k))
            .map(|v| v.trim().to_owned())
    };
    let (schedule, repository) = match (get(BACKUP_SCHEDULE), get(BACKUP_REPOSITORY)) {
        (None, None) => return None,
        (Some(s), Some(r)) => (s, r),
        (Some(_), None) => {
            return Some(Err(format!(
                "{BACKUP_SCHEDULE} needs {BACKUP_REPOSITORY} (`name` or `namespace/name` of a Repository)"
            )))
        }
        (None, Some(_)) => {
            return Some(Err(format!(
                "{BACKUP_REPOSITORY} needs {BACKUP_SCHEDULE} (a cron schedule such as \"0 2 * * *\")"
            )))
        }
    };
    if let Err(e) = Schedule::parse(&schedule, None) {
        return Some(Err(format!("{BACKUP_SCHEDULE}: {e}")));
    }
    let parts: Vec<&str> = repository.split('/').collect();
    let (namespace, name) = match parts.as_slice() {
        [name] => (None, *name),
        [ns, name] => (Some((*ns).to_owned()), *name),
        _ => {
            return Some(Err(format!(
            "{BACKUP_REPOSITORY} {repository:?} must be `name` or `namespace/name` of a Repository"
        )))
        }
    };
    let valid = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !valid(name, 253)
        || namespace
            .as_deref()
            .is_some_and(|n| !valid(n, 63) || n.contains('.'))
    {
        return Some(Err(format!(
            "{BACKUP_REPOSITORY} {repository:?}: not a valid Repository name (lowercase letters, digits, '-' and '.')"
        )));
    }
    Some(Ok(Desired {
        schedule,
        repository: RepositoryReference {
            name: name.to_owned(),
            namespace,
        },
    }))
}

/// `auto-<workload>`, shortened to a valid object name.
pub fn config_name(workload: &str) -> String {
    let name: String = format!("auto-{workload}").chars().take(253).collect();
    name.trim_end_matches(['-', '.']).to_owned()
}

/// The newest pod of the workload `workload` in `ns`.
fn newest_of(
    pods: &Store<PartialObjectMeta<Pod>>,
    ns: &str,
    workload: &str,
) -> Option<Arc<PartialObjectMeta<Pod>>> {
    pods.state()
        .into_iter()
        .filter(|p| {
            p.metadata.namespace.as_deref() == Some(ns)
                && p.metadata.deletion_timestamp.is_none()
                && workload_name_of(&p.metadata) == workload
        })
        .max_by(|a, b| {
            let key = |p: &PartialObjectMeta<Pod>| {
                (
                    p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                    p.metadata.name.clone(),
                )
            };
            key(a).cmp(&key(b))
        })
}

/// Reconciles the automatic configuration of `pod`'s workload.
pub async fn reconcile(pod: Arc<PartialObjectMeta<Pod>>, actx: Arc<AutoContext>) -> Result<Action> {
    let ctx = &actx.ctx;
    let ns = pod.namespace().unwrap_or_default();
    let workload = workload_name_of(&pod.metadata);
    let name = config_name(&workload);
    let existing = actx
        .configs
        .get(&reflector::ObjectRef::new(&name).within(&ns));
    let annotated = desired(pod.metadata.annotations.as_ref()).is_some();
    // Most pods: no annotation and no configuration to remove.
    if !annotated && existing.is_none() {
        return Ok(Action::await_change());
    }
    ctx.metrics
        .reconciles
        .with_label_values(&["AutoBackup"])
        .inc();
    let Some(newest) = newest_of(&actx.pods, &ns, &workload) else {
        return Ok(Action::await_change());
    };
    let configs: Api<BackupConfiguration> = Api::namespaced(ctx.client.clone(), &ns);
    match desired(newest.metadata.annotations.as_ref()) {
        None => {
            if let Some(cfg) = existing {
                let dp = DeleteParams {
                    preconditions: Some(Preconditions {
                        uid: cfg.uid(),
                        resource_version: None,
                    }),
                    ..DeleteParams::background()
                };
                match configs.delete(&name, &dp).await {
                    Ok(_) => {
                        publish(
                            ctx,
                            newest.as_ref(),
                            EventType::Normal,
                            "AutoBackupRemoved",
                            &format!("deleted BackupConfiguration {name}: the {BACKUP_SCHEDULE} annotation is gone"),
                        )
                        .await;
                    }
                    Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                    Err(e) => return Err(kube_err("delete BackupConfiguration", &ns, &name)(e)),
                }
            }
        }
        Some(Err(why)) => {
            publish(
                ctx,
                newest.as_ref(),
                EventType::Warning,
                "InvalidAutoBackup",
                &why,
            )
            .await;
        }
        Some(Ok(want)) => {
            let owner = owner_of(ctx, &newest).await?;
            let target = match owner.kind.as_str() {
                "Deployment" | "StatefulSet" | "DaemonSet" => {
                    json!({"workload": {"kind": owner.kind, "name": owner.name}})
                }
                _ => json!({"pod": newest.name_any()}),
            };
            let up_to_date = existing.as_ref().is_some_and(|c| {
                c.spec.schedule == want.schedule
                    && c.spec.repository == want.repository
                    && serde_json::to_value(&c.spec.target).ok().as_ref() == Some(&target)
                    && c.owner_references().iter().any(|o| o.uid == owner.uid)
            });
            if up_to_date {
                return Ok(Action::await_change());
            }
            if existing.is_none() {
                if let Some(theirs) = configs.get_opt(&name).await.map_err(kube_err(
                    "get BackupConfiguration",
                    &ns,
                    &name,
                ))? {
                    if !theirs.labels().contains_key(LABEL_AUTO_BACKUP) {
                        let why = format!(
                            "BackupConfiguration {ns}/{name} exists and was not made from annotations; \
                             it is left alone (delete it, or remove the {BACKUP_SCHEDULE} annotation)"
                        );
                        publish(
                            ctx,
                            newest.as_ref(),
                            EventType::Warning,
                            "AutoBackupNameTaken",
                            &why,
                        )
                        .await;
                        return Ok(Action::await_change());
                    }
                }
            }
            let manifest = json!({
                "apiVersion": "stash.rs/v1alpha1",
                "kind": "BackupConfiguration",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {LABEL_AUTO_BACKUP: "true"},
                    "ownerReferences": [owner],
                },
                "spec": {
                    "schedule": want.schedule,
                    "repository": want.repository,
                    "target": target,
                },
            });
            configs
                .patch(
                    &name,
                    &PatchParams::apply(MANAGER).force(),
                    &Patch::Apply(manifest),
                )
                .await
                .map_err(kube_err("apply BackupConfiguration", &ns, &name))?;
            publish(
                ctx,
                newest.as_ref(),
                EventType::Normal,
                "AutoBackupConfigured",
                &format!(
                    "BackupConfiguration {name}: schedule {:?}, Repository {}",
                    want.schedule,
                    match &want.repository.namespace {
                        Some(n) => format!("{n}/{}", want.repository.name),
                        None => want.repository.name.clone(),
                    }
                ),
            )
            .await;
        }
    }
    Ok(Action::await_change())
}

/// Who owns the configuration of `pod`'s workload: the Deployment (through
/// the pod's ReplicaSet), StatefulSet or DaemonSet controlling it, else the
/// pod itself.
async fn owner_of(ctx: &Context, pod: &PartialObjectMeta<Pod>) -> Result<OwnerReference> {
    let ns = pod.namespace().unwrap_or_default();
    let own = || OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: pod.name_any(),
        uid: pod.uid().unwrap_or_default(),
        ..OwnerReference::default()
    };
    let Some(controller) = pod
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
    else {
        return Ok(own());
    };
    let plain = |o: &OwnerReference| OwnerReference {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
        ..OwnerReference::default()
    };
    match controller.kind.as_str() {
        "StatefulSet" | "DaemonSet" => Ok(plain(controller)),
        "ReplicaSet" => {
            let api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
            let rs = api.get_opt(&controller.name).await.map_err(kube_err(
                "get ReplicaSet",
                &ns,
                &controller.name,
            ))?;
            Ok(rs
                .as_ref()
                .and_then(|rs| {
                    rs.owner_references()
                        .iter()
                        .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                        .map(plain)
                })
                .unwrap_or_else(own))
        }
        _ => Ok(own()),
    }
}

/// Logs and counts a failed reconciliation and retries it soon.
pub fn error_policy(
    pod: Arc<PartialObjectMeta<Pod>>,
    err: &Error,
    actx: Arc<AutoContext>,
) -> Action {
    tracing::warn!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), error = %err, "auto-backup reconcile failed");
    actx.ctx
        .metrics
        .reconcile_errors
        .with_label_values(&["AutoBackup", err.metric_label()])
        .inc();
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn annotations_read() {
        assert_eq!(desired(Some(&ann(&[("other", "x")]))), None);
        let d = desired(Some(&ann(&[
            (BACKUP_SCHEDULE, "0 2 * * *"),
            (BACKUP_REPOSITORY, "infra/main"),
        ])))
        .unwrap()
        .unwrap();
        assert_eq!(d.repository.namespace.as_deref(), Some("infra"));
        assert_eq!(d.repository.name, "main");
        for (s, r, why) in [
            ("every day", "main", "backup-schedule:"),
            ("0 2 * * *", "a/b/c", "must be `name` or `namespace/name`"),
            ("0 2 * * *", "Main", "not a valid Repository name"),
        ] {
            let e = desired(Some(&ann(&[(BACKUP_SCHEDULE, s), (BACKUP_REPOSITORY, r)])))
                .unwrap()
                .unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let e = desired(Some(&ann(&[(BACKUP_SCHEDULE, "@daily")])))
            .unwrap()
            .unwrap_err();
        assert!(e.contains("needs stash.rs/backup-repository"), "{e}");
        assert_eq!(config_name("web"), "auto-web");
        assert_eq!(config_name(&"x".repeat(300)).len(), 253);
    }
}
