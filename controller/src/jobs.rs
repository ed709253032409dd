//! Jobs for the items no node agent can run: a PersistentVolumeClaim that
//! no pod mounts.
//!
//! For each such item of a BackupSession the controller creates, in the
//! session's namespace and owned by the session (so they go with it when
//! the history limits delete it): a ServiceAccount, a Role that lets it
//! read this session, patch this session's status and read the session's
//! BackupConfiguration and Repository (by name, nothing else: no Secret, no
//! pod), a RoleBinding, and a Job whose one pod runs `stash job backup`
//! with the claim mounted read-only and the Repository's Secrets mounted
//! into that pod only. The pod claims its item with the agents' claim
//! protocol and writes progress and the result itself (`agent/src/agent/
//! job.rs`). The scheduler places the pod where the volume can attach (a
//! bound claim's PersistentVolume node affinity, e.g. a local volume's
//! node, is part of scheduling); a claim that a pod mounts by the time the
//! Job would be created is reported in the item and never mounted a second
//! time. A pod that cannot start or dies fails its item with the pod's
//! reason (`pod_failure`); the Job's `activeDeadlineSeconds` is the
//! session's deadline, so nothing waits past it. Once the item is finished
//! the RoleBinding is deleted: the pod's token can no longer touch the
//! session.

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use stash_api::{BackupSession, ItemCommon, ItemPhase, Repository, RestoreSession};

use crate::error::{kube_err, Result};
use crate::targets::{claim_pods, mounts_volumes, JOB_POD_NAME};
use crate::Context;

/// Label on everything made for a session's Jobs: the session's name.
pub const LABEL_SESSION: &str = "stash.rs/backup-session";
/// Where the Job's pod mounts the claim.
pub const MOUNT: &str = "/var/lib/stash/volume";
/// Where the Job's pod mounts the Repository's Secrets (one directory each).
pub const SECRETS: &str = "/var/run/stash/secrets";

/// The name of the Job (and its ServiceAccount, Role and RoleBinding) of
/// the item of `claim` in the session with UID `session_uid`: stable, so a
/// repeated reconciliation finds what it made, and short enough for the
/// `job-name` label.
pub fn job_name(kind: JobKind, session_uid: &str, claim: &str) -> String {
    // FNV-1a: stable across releases, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in session_uid.bytes().chain([0]).chain(claim.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("stash-{}-{h:016x}", kind.verb())
}

/// What a Job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    /// Back up a claim for a BackupSession.
    Backup,
    /// Restore into a claim for a RestoreSession.
    Restore,
}

impl JobKind {
    fn verb(self) -> &'static str {
        match self {
            JobKind::Backup => "backup",
            JobKind::Restore => "restore",
        }
    }
}

/// The session a Job works for, as the Job's objects need it.
pub struct JobSession {
    /// Backup or restore.
    pub kind: JobKind,
    /// Its namespace (the Job's).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID.
    pub uid: String,
    /// The owner reference to it.
    pub owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    /// The BackupConfiguration it reads (backups).
    pub configuration: Option<String>,
}

impl JobSession {
    /// A BackupSession's.
    pub fn backup(s: &BackupSession) -> JobSession {
        Self::of(
            s,
            JobKind::Backup,
            Some(s.spec.backup_configuration.clone()),
        )
    }

    /// A RestoreSession's.
    pub fn restore(s: &RestoreSession) -> JobSession {
        Self::of(s, JobKind::Restore, None)
    }

    fn of<K: Resource<DynamicType = ()>>(
        s: &K,
        kind: JobKind,
        configuration: Option<String>,
    ) -> JobSession {
        let mut owner = s.controller_owner_ref(&()).unwrap_or_default();
        // Deleting the session need not wait for these.
        owner.block_owner_deletion = None;
        JobSession {
            kind,
            namespace: s.namespace().unwrap_or_default(),
            name: s.name_any(),
            uid: s.uid().unwrap_or_default(),
            owner,
            configuration,
        }
    }
}

/// Everything a Job's item needs, made from the session, the claim and the
/// Repository alone.
pub struct JobObjects {
    /// The pod's identity.
    pub service_account: ServiceAccount,
    /// What it may do.
    pub role: Role,
    /// The grant.
    pub role_binding: RoleBinding,
    /// The Job.
    pub job: Job,
}

/// The objects of the Job backing up (or restoring into) `claim` for
/// `session` with `repo` and `image`, ending at the latest
/// `deadline_seconds` from now.
pub fn job_objects(
    session: &JobSession,
    claim: &str,
    repo: &Repository,
    image: &str,
    deadline_seconds: i64,
) -> JobObjects {
    let ns = session.namespace.clone();
    let session_name = session.name.clone();
    let name = job_name(session.kind, &session.uid, claim);
    let owner = vec![session.owner.clone()];
    let meta = json!({
        "name": name,
        "namespace": ns,
        "labels": {
            LABEL_SESSION: session_name,
            "app.kubernetes.io/name": JOB_POD_NAME,
            "app.kubernetes.io/part-of": "stash",
        },
        "ownerReferences": owner,
    });
    let one = |v: &str| json!([v]);
    let resource = match session.kind {
        JobKind::Backup => "backupsessions",
        JobKind::Restore => "restoresessions",
    };
    let mut rules = vec![
        json!({"apiGroups": ["stash.rs"], "resources": [resource],
               "resourceNames": one(&session_name), "verbs": ["get"]}),
        json!({"apiGroups": ["stash.rs"], "resources": [format!("{resource}/status")],
               "resourceNames": one(&session_name), "verbs": ["patch"]}),
    ];
    if let Some(c) = &session.configuration {
        rules.push(
            json!({"apiGroups": ["stash.rs"], "resources": ["backupconfigurations"],
                          "resourceNames": one(c), "verbs": ["get"]}),
        );
    }
    rules.push(
        json!({"apiGroups": ["stash.rs"], "resources": ["repositories"],
                      "resourceNames": one(&repo.name_any()), "verbs": ["get"]}),
    );
    let role = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
        "rules": rules,
    });
    let restore = session.kind == JobKind::Restore;
    // Reading needs only to bypass file modes (DAC_OVERRIDE); writing a
    // restore also sets owners, modes and times of files it does not own
    // (CHOWN, FOWNER, FSETID). All in Pod Security `baseline`.
    let caps: &[&str] = if restore {
        &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]
    } else {
        &["DAC_OVERRIDE"]
    };
    let binding = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}],
    });
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta});
    let mut secrets = vec![repo.spec.password_secret.name.clone()];
    secrets.extend(repo.spec.credentials_secret.clone());
    secrets.dedup();
    let mut volumes = vec![
        json!({"name": "volume", "persistentVolumeClaim": {"claimName": claim, "readOnly": !restore}}),
        json!({"name": "tmp", "emptyDir": {}}),
    ];
    let mut mounts = vec![
        json!({"name": "volume", "mountPath": MOUNT, "readOnly": !restore}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    for (i, s) in secrets.iter().enumerate() {
        volumes.push(json!({"name": format!("secret-{i}"), "secret": {"secretName": s}}));
        mounts.push(json!({"name": format!("secret-{i}"), "mountPath": format!("{SECRETS}/{s}"), "readOnly": true}));
    }
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let job = json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline_seconds.max(1),
            "template": {
                "metadata": {"labels": {LABEL_SESSION: session_name, "app.kubernetes.io/name": JOB_POD_NAME}},
                "spec": {
                    "serviceAccountName": name,
                    "restartPolicy": "Never",
                    "enableServiceLinks": false,
                    "volumes": volumes,
                    "containers": [{
                        "name": "stash",
                        "image": image,
                        "args": ["job", session.kind.verb(), "--session", session_name, "--claim", claim,
                                 "--mount", MOUNT, "--secrets", SECRETS, "--progress-interval", "2s"],
                        "env": [
                            field("NODE_NAME", "spec.nodeName"),
                            field("POD_NAME", "metadata.name"),
                            field("POD_NAMESPACE", "metadata.namespace"),
                            {"name": "HOME", "value": "/tmp"},
                        ],
                        "volumeMounts": mounts,
                        // Root with only the capabilities above; no
                        // privilege escalation, a read-only root file
                        // system.
                        "securityContext": {
                            "runAsUser": 0,
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"], "add": caps},
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                    }],
                },
            },
        },
    });
    JobObjects {
        service_account: serde_json::from_value(sa).expect("a well-formed ServiceAccount"),
        role: serde_json::from_value(role).expect("a well-formed Role"),
        role_binding: serde_json::from_value(binding).expect("a well-formed RoleBinding"),
        job: serde_json::from_value(job).expect("a well-formed Job"),
    }
}

/// Why a Job's pod will not finish its item: `(final, reason)`. Final
/// reasons fail the item at once (the image cannot be found, the pod's
/// configuration is broken, the container died); the others (unschedulable,
/// an image pull backing off) may pass, and are shown in the item's message
/// until the session's deadline.
pub fn pod_failure(pod: &Pod) -> Option<(bool, String)> {
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    for c in status.container_statuses.iter().flatten() {
        let state = c.state.as_ref();
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_default();
            let message = w.message.clone().unwrap_or_default();
            let fatal = matches!(
                reason.as_str(),
                "ErrImageNeverPull"
                    | "InvalidImageName"
                    | "CreateContainerConfigError"
                    | "CreateContainerError"
                    | "RunContainerError"
            );
            if fatal || matches!(reason.as_str(), "ImagePullBackOff" | "ErrImagePull") {
                return Some((fatal, format!("Job pod {name}: {reason}: {message}")));
            }
        }
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            if t.exit_code != 0 {
                return Some((
                    true,
                    format!(
                        "Job pod {name}: container {} terminated: {} (exit code {}){}",
                        c.name,
                        t.reason.as_deref().unwrap_or("Error"),
                        t.exit_code,
                        t.message
                            .as_deref()
                            .map(|m| format!(": {m}"))
                            .unwrap_or_default()
                    ),
                ));
            }
            return Some((
                true,
                format!("Job pod {name}: the executor exited without finishing the item"),
            ));
        }
    }
    let unschedulable = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    if let Some(c) = unschedulable {
        return Some((
            false,
            format!(
                "Job pod {name}: {}: {}",
                c.reason.as_deref().unwrap_or("Unschedulable"),
                c.message.as_deref().unwrap_or_default()
            ),
        ));
    }
    if status.phase.as_deref() == Some("Failed") {
        return Some((
            true,
            format!(
                "Job pod {name} failed: {}: {}",
                status.reason.as_deref().unwrap_or("?"),
                status.message.as_deref().unwrap_or_default()
            ),
        ));
    }
    None
}

/// Why a Job ended without its item being finished, from its conditions
/// (`Failed` with `DeadlineExceeded`, `BackoffLimitExceeded`, …).
pub fn job_failure(job: &Job) -> Option<String> {
    let c = job
        .status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Failed" && c.status == "True")?;
    Some(format!(
        "Job {}: {}: {}",
        job.name_any(),
        c.reason.as_deref().unwrap_or("Failed"),
        c.message.as_deref().unwrap_or_default()
    ))
}

/// Drives the Job items of a running session: creates their objects, fails
/// an item whose pod will not finish it, shows a passing reason in its
/// message, and revokes the grant of a finished item. Returns the Events
/// (`reason`, `message`) to publish.
pub async fn drive<I: AsMut<ItemCommon>>(
    ctx: &Context,
    session: &JobSession,
    items: &mut [I],
    repo: Option<&Repository>,
    deadline: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Vec<(&'static str, String)>> {
    let ns = session.namespace.clone();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let bindings: Api<RoleBinding> = Api::namespaced(ctx.client.clone(), &ns);
    let mut notes = Vec::new();
    for item in items.iter_mut() {
        let item = item.as_mut();
        if !item.runs_in_job() {
            continue;
        }
        let Some(claim) = item.persistent_volume_claim.clone() else {
            continue;
        };
        let name = job_name(session.kind, &session.uid, &claim);
        if item.phase.is_finished() {
            // The pod's token loses its grant on the session.
            match bindings.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(kube_err("delete RoleBinding", &ns, &name)(e)),
            }
            continue;
        }
        let mut fail = |item: &mut ItemCommon, reason: &'static str, error: String| {
            item.fail(error.clone(), stash_api::time::to_time(now));
            notes.push((reason, error));
        };
        let job = jobs
            .get_opt(&name)
            .await
            .map_err(kube_err("get Job", &ns, &name))?;
        let Some(job) = job else {
            if item.phase != ItemPhase::Pending || item.job.is_some() {
                fail(item, "JobGone", format!("Job {ns}/{name} of PersistentVolumeClaim {claim} was deleted before it finished"));
                continue;
            }
            // A pod may have started to mount the claim since the session
            // was resolved: a second node must never attach a
            // ReadWriteOnce volume, and a restore must not write under a
            // running application.
            let users = claim_pods(&ctx.client, &ns, &claim).await?;
            if let Some(p) = users.iter().find(|p| mounts_volumes(p)) {
                let node = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_else(|| "no node yet".into());
                let next = match session.kind {
                    JobKind::Backup => "the next session backs it up through that pod",
                    JobKind::Restore => {
                        "stop the pod, or restore into it with the node agent (no spec.executor)"
                    }
                };
                fail(item, "ClaimInUse", format!(
                    "PersistentVolumeClaim {ns}/{claim} is mounted by pod {} (on {node}): a Job does not mount a claim a pod uses; {next}",
                    p.name_any()
                ));
                continue;
            }
            let Some(repo) = repo else {
                fail(item, "RepositoryNotFound", format!("the Repository of the session of PersistentVolumeClaim {ns}/{claim} does not exist"));
                continue;
            };
            let image = match &ctx.settings.job_image {
                Some(i) => i.resolve(&ctx.client).await,
                None => Err(crate::error::Error::Webhook {
                    what: "the Job image".into(),
                    reason: "no --job-image and no agent DaemonSet to take it from".into(),
                }),
            };
            let image = match image {
                Ok(i) => i,
                Err(e) => {
                    fail(
                        item,
                        "NoJobImage",
                        format!("cannot start a Job for PersistentVolumeClaim {ns}/{claim}: {e}"),
                    );
                    continue;
                }
            };
            let left = deadline.map_or(24 * 3600, |d| (d - now).num_seconds());
            let objects = job_objects(session, &claim, repo, &image, left);
            create(
                &ctx.client,
                &ns,
                &objects.service_account,
                "create ServiceAccount",
            )
            .await?;
            create(&ctx.client, &ns, &objects.role, "create Role").await?;
            create(
                &ctx.client,
                &ns,
                &objects.role_binding,
                "create RoleBinding",
            )
            .await?;
            create(&ctx.client, &ns, &objects.job, "create Job").await?;
            item.job = Some(name.clone());
            item.claim.message = Some(format!("Job {name} created"));
            continue;
        };
        item.job = Some(name.clone());
        if let Some(why) = job_failure(&job) {
            fail(item, "JobFailed", why);
            continue;
        }
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        let list = pods
            .list(&ListParams::default().labels(&format!("job-name={name}")))
            .await
            .map_err(kube_err("list pods", &ns, &name))?;
        for p in &list.items {
            match pod_failure(p) {
                Some((true, why)) => {
                    fail(item, "JobPodFailed", why);
                    break;
                }
                Some((false, why)) if item.phase == ItemPhase::Pending => {
                    item.claim.message = Some(format!("waiting: {why}"));
                }
                _ => {}
            }
        }
    }
    Ok(notes)
}

async fn create<K>(client: &kube::Client, ns: &str, obj: &K, action: &'static str) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(kube_err(action, ns, &obj.name_any())(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn session() -> BackupSession {
        serde_json::from_value(json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
            "metadata": {"name": "nightly-1", "namespace": "shop", "uid": "u-1"},
            "spec": {"backupConfiguration": "nightly"}
        }))
        .unwrap()
    }

    fn repo() -> Repository {
        serde_json::from_value(json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
            "metadata": {"name": "main", "namespace": "shop"},
            "spec": {"url": "s3:http://minio/b", "passwordSecret": {"name": "pw"}, "credentialsSecret": "creds"}
        }))
        .unwrap()
    }

    fn pod(status: Value) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "stash-backup-1-abcde"}, "status": status}),
        )
        .unwrap()
    }

    /// The Job's objects grant exactly this session, its configuration and
    /// Repository (no Secret, no pod), belong to the session, mount the
    /// claim read-only and the Repository's two Secrets into the pod, and
    /// end by the session's deadline without retries.
    #[test]
    fn the_job_gets_only_what_its_item_needs() {
        let o = job_objects(
            &JobSession::backup(&session()),
            "archive",
            &repo(),
            "stash-agent:1",
            600,
        );
        let name = job_name(JobKind::Backup, "u-1", "archive");
        assert_eq!(o.job.metadata.name.as_deref(), Some(name.as_str()));
        assert!(name.len() <= 63);
        assert_ne!(name, job_name(JobKind::Backup, "u-1", "archive2"));
        assert_ne!(name, job_name(JobKind::Backup, "u-2", "archive"));
        assert_ne!(name, job_name(JobKind::Restore, "u-1", "archive"));
        for owners in [
            &o.job.metadata.owner_references,
            &o.role.metadata.owner_references,
            &o.role_binding.metadata.owner_references,
            &o.service_account.metadata.owner_references,
        ] {
            let owner = &owners.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                ("BackupSession", "nightly-1", "u-1")
            );
            assert_eq!(owner.controller, Some(true));
        }
        let rules = serde_json::to_value(o.role.rules.unwrap()).unwrap();
        assert_eq!(
            rules,
            json!([
                {"apiGroups": ["stash.rs"], "resources": ["backupsessions"], "resourceNames": ["nightly-1"], "verbs": ["get"]},
                {"apiGroups": ["stash.rs"], "resources": ["backupsessions/status"], "resourceNames": ["nightly-1"], "verbs": ["patch"]},
                {"apiGroups": ["stash.rs"], "resources": ["backupconfigurations"], "resourceNames": ["nightly"], "verbs": ["get"]},
                {"apiGroups": ["stash.rs"], "resources": ["repositories"], "resourceNames": ["main"], "verbs": ["get"]},
            ])
        );
        let spec = o.job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(600));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
        let volumes = serde_json::to_value(pod.volumes.unwrap()).unwrap();
        assert_eq!(
            volumes[0]["persistentVolumeClaim"],
            json!({"claimName": "archive", "readOnly": true})
        );
        let secrets: Vec<&str> = volumes
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["secret"]["secretName"].as_str())
            .collect();
        assert_eq!(secrets, ["pw", "creds"]);
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("stash-agent:1"));
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.privileged, None);
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        assert_eq!(caps.add.as_deref(), Some(&["DAC_OVERRIDE".to_owned()][..]));
        let mounts: Vec<(String, bool)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.clone(), m.read_only == Some(true)))
            .collect();
        assert!(mounts.contains(&(MOUNT.to_owned(), true)), "{mounts:?}");
        assert!(
            mounts.contains(&(format!("{SECRETS}/pw"), true)),
            "{mounts:?}"
        );
        // A deadline already past still gives a valid Job, which ends at once.
        let late = job_objects(&JobSession::backup(&session()), "archive", &repo(), "i", -5);
        assert_eq!(late.job.spec.unwrap().active_deadline_seconds, Some(1));
    }

    /// A restore Job: the RestoreSession and the Repository only (no
    /// BackupConfiguration), the claim mounted read-write, and the
    /// capabilities that set owners, modes and times.
    #[test]
    fn a_restore_job_writes_the_claim_with_only_what_a_restore_needs() {
        let rs: RestoreSession = serde_json::from_value(json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession",
            "metadata": {"name": "fill", "namespace": "shop", "uid": "u-9"},
            "spec": {"repository": {"name": "main"}, "executor": "job", "target": {"persistentVolumeClaim": "new"}}
        }))
        .unwrap();
        let o = job_objects(
            &JobSession::restore(&rs),
            "new",
            &repo(),
            "stash-agent:1",
            60,
        );
        assert_eq!(
            o.job.metadata.name.as_deref(),
            Some(job_name(JobKind::Restore, "u-9", "new").as_str())
        );
        let rules = serde_json::to_value(o.role.rules.unwrap()).unwrap();
        assert_eq!(
            rules,
            json!([
                {"apiGroups": ["stash.rs"], "resources": ["restoresessions"], "resourceNames": ["fill"], "verbs": ["get"]},
                {"apiGroups": ["stash.rs"], "resources": ["restoresessions/status"], "resourceNames": ["fill"], "verbs": ["patch"]},
                {"apiGroups": ["stash.rs"], "resources": ["repositories"], "resourceNames": ["main"], "verbs": ["get"]},
            ])
        );
        let pod = o.job.spec.unwrap().template.spec.unwrap();
        let volumes = serde_json::to_value(pod.volumes.unwrap()).unwrap();
        assert_eq!(
            volumes[0]["persistentVolumeClaim"],
            json!({"claimName": "new", "readOnly": false})
        );
        let c = &pod.containers[0];
        assert_eq!(&c.args.as_ref().unwrap()[..2], ["job", "restore"]);
        let caps = c
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap();
        assert_eq!(
            caps.add.as_deref().unwrap(),
            ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID"]
        );
    }

    #[test]
    fn a_pods_reason_fails_or_annotates_the_item() {
        let waiting = |reason: &str| {
            pod(
                json!({"phase": "Pending", "containerStatuses": [{"name": "stash", "image": "i", "imageID": "",
                "ready": false, "restartCount": 0, "state": {"waiting": {"reason": reason, "message": "m"}}}]}),
            )
        };
        let (fatal, why) = pod_failure(&waiting("ErrImageNeverPull")).unwrap();
        assert!(fatal);
        assert_eq!(why, "Job pod stash-backup-1-abcde: ErrImageNeverPull: m");
        assert!(
            pod_failure(&waiting("CreateContainerConfigError"))
                .unwrap()
                .0
        );
        let (fatal, why) = pod_failure(&waiting("ImagePullBackOff")).unwrap();
        assert!(!fatal && why.contains("ImagePullBackOff"), "{why}");
        assert_eq!(pod_failure(&waiting("ContainerCreating")), None);

        let oom = pod(
            json!({"phase": "Failed", "containerStatuses": [{"name": "stash", "image": "i", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}),
        );
        let (fatal, why) = pod_failure(&oom).unwrap();
        assert!(fatal);
        assert_eq!(
            why,
            "Job pod stash-backup-1-abcde: container stash terminated: OOMKilled (exit code 137)"
        );

        let unschedulable = pod(
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "0/1 nodes are available: 1 node(s) didn't match PersistentVolume's node affinity."}]}),
        );
        let (fatal, why) = pod_failure(&unschedulable).unwrap();
        assert!(!fatal);
        assert!(why.contains("Unschedulable: 0/1 nodes"), "{why}");

        let running = pod(
            json!({"phase": "Running", "containerStatuses": [{"name": "stash", "image": "i", "imageID": "",
            "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
        );
        assert_eq!(pod_failure(&running), None);

        let job: Job = serde_json::from_value(json!({"metadata": {"name": "j"}, "status": {"conditions": [
            {"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "Job was active longer than specified deadline"}]}}))
        .unwrap();
        assert_eq!(
            job_failure(&job).as_deref(),
            Some("Job j: DeadlineExceeded: Job was active longer than specified deadline")
        );
    }
}
