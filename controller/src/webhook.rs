//! The restore-wait admission webhook: gives the new pods of a workload
//! being restored with `spec.rollout` the `stash restore-wait` init
//! container, so their containers start only once the agent has restored
//! their volumes.
//!
//! The apiserver calls it only for pods labelled `stash.rs/restore-session`
//! (the MutatingWebhookConfiguration's `objectSelector`): the label the
//! controller puts into the workload's pod template when it starts the
//! rollout. Every other pod in the cluster is created without a call here.
//! A pod is changed only when the RestoreSession its label names exists in
//! its namespace, is unfinished, asks for a rollout, and targets the
//! workload that owns the pod; anything else, including an error reading
//! the session, admits the pod unchanged (as `failurePolicy: Ignore` does
//! when the webhook cannot be reached), and the restore reconciler reports
//! pods that came up without the init container.
//!
//! The init container (see [`injection`]):
//! - runs the agent's image (`--restore-wait-image`) as
//!   `restore-wait --dir <path>...`, first among the init containers, so
//!   other init containers (migrations, say) see restored data;
//! - mounts each target volume where the pod's containers mount it (so its
//!   log names the paths the application knows), or under
//!   `/stash-restore/<volume>` when no container mounts the volume's root
//!   (a `subPath` mount does not show the marker in the volume's root);
//! - runs as the user of the first container mounting a target volume (it
//!   removes the agent's marker, so it needs that user's write access to the
//!   volume's root), with no capabilities, no privilege escalation and a
//!   read-only root filesystem, which Pod Security's `restricted` level
//!   admits; and with small resource requests and limits, so a namespace
//!   quota on limits does not refuse the pod.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, Pod, ResourceRequirements, SeccompProfile, SecurityContext,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use kube::Client;
use serde_json::{json, Value};
use stash_api::annotations::opted_in_volumes;
use stash_api::{
    identity, RestoreSession, WorkloadKind, LABEL_RESTORE_SESSION, RESTORE_WAIT_CONTAINER,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::certs::CertSettings;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use stash_api::policy::HostPathAllowList;

/// The path the MutatingWebhookConfiguration calls.
pub const MUTATE_PODS_PATH: &str = "/mutate-pods";
/// Where a target volume is mounted when no container mounts its root.
pub const FALLBACK_MOUNT_ROOT: &str = "/stash-restore";
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the init container's image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreWaitImage {
    /// This image.
    Fixed(String),
    /// The image of the first container of this DaemonSet (the agent's),
    /// read at each admission, so it follows the agent's upgrades.
    FromDaemonSet {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

impl RestoreWaitImage {
    /// The image, now.
    pub async fn resolve(&self, client: &Client) -> Result<String> {
        let (ns, name) = match self {
            RestoreWaitImage::Fixed(i) => return Ok(i.clone()),
            RestoreWaitImage::FromDaemonSet { namespace, name } => (namespace, name),
        };
        let ds = Api::<DaemonSet>::namespaced(client.clone(), ns)
            .get(name)
            .await
            .map_err(crate::error::kube_err("get agent DaemonSet", ns, name))?;
        ds.spec
            .and_then(|s| s.template.spec)
            .and_then(|s| s.containers.into_iter().next())
            .and_then(|c| c.image)
            .ok_or_else(|| Error::Webhook {
                what: format!("DaemonSet {ns}/{name}"),
                reason: "its pod template names no container image".into(),
            })
    }
}

/// What the webhook injects.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    /// Image of the init container: the agent's (`stash restore-wait`).
    pub restore_wait_image: RestoreWaitImage,
    /// hostPath volumes outside this list are never restored, so never
    /// waited for.
    pub host_paths: HostPathAllowList,
}

/// What the handler shares.
struct WebhookState {
    /// Reads RestoreSessions.
    client: Client,
    /// What to inject.
    settings: WebhookSettings,
    /// Counts admissions.
    metrics: Metrics,
}

/// The webhook's routes: `POST /mutate-pods` and `GET /healthz`.
pub fn router(client: Client, settings: WebhookSettings, metrics: Metrics) -> Router {
    let state = Arc::new(WebhookState {
        client,
        settings,
        metrics,
    });
    Router::new()
        .route(MUTATE_PODS_PATH, post(mutate_pods))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// Serves `router` over TLS on `listener` until `shutdown`, at most
/// [`MAX_CONNECTIONS`] connections at once.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    shutdown: CancellationToken,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(%addr, "serving the restore-wait admission webhook");
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                // Out of file descriptors and the like: the next accept
                // may work; a dead listener is reported.
                Err(e) if is_transient(&e) => {
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(source) => return Err(Error::Serve { addr, source }),
            },
        };
        let acceptor = acceptor.clone();
        let stop = shutdown.clone();
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            // On shutdown, finish the request in flight and close the
            // connection: the apiserver keeps connections alive, and must
            // not go on being served by a stopped webhook.
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "webhook connection ended");
            }
        });
    }
}

/// Everything the webhook needs: its certificate (made or read, then kept
/// current, with the `caBundle`) and the server. Runs until `shutdown`. A
/// replica that cannot get its certificate (RBAC, a missing
/// configuration) says so and tries again every few seconds, and the rest
/// of the controller runs on meanwhile: rollout restores then find their
/// pods without restore-wait and say so.
pub async fn run(
    client: Client,
    certs: CertSettings,
    settings: WebhookSettings,
    metrics: Metrics,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<()> {
    let current = loop {
        match crate::certs::prepare(&client, &certs).await {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "the restore-wait webhook cannot get its certificate; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    let keeper = tokio::spawn(crate::certs::keep_current(
        client.clone(),
        certs,
        current.clone(),
        shutdown.clone(),
    ));
    let result = serve(
        listener,
        current.server_config(),
        router(client, settings, metrics),
        shutdown,
    )
    .await;
    keeper.abort();
    result
}

fn is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock | TimedOut
    ) || e.raw_os_error().is_some_and(|c| c == 24 || c == 23) // EMFILE, ENFILE
}

async fn mutate_pods(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let review: AdmissionReview<Pod> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            state.metrics.admissions.with_label_values(&["error"]).inc();
            return json_response(
                AdmissionResponse::invalid(format!("not an AdmissionReview of a Pod: {e}"))
                    .into_review(),
            );
        }
    };
    let request: AdmissionRequest<Pod> = match review.try_into() {
        Ok(r) => r,
        Err(e) => {
            state.metrics.admissions.with_label_values(&["error"]).inc();
            return json_response(AdmissionResponse::invalid(e.to_string()).into_review());
        }
    };
    let (response, outcome) = admit(&state, &request).await;
    state.metrics.admissions.with_label_values(&[outcome]).inc();
    json_response(response.into_review())
}

fn json_response(review: AdmissionReview<DynamicObject>) -> Response {
    let body = serde_json::to_vec(&review).expect("an AdmissionReview serializes");
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The answer to one admission request, and its outcome for the metric.
async fn admit(
    state: &WebhookState,
    req: &AdmissionRequest<Pod>,
) -> (AdmissionResponse, &'static str) {
    let allow = AdmissionResponse::from(req);
    let Some(pod) = req
        .object
        .as_ref()
        .filter(|_| req.operation == Operation::Create)
    else {
        return (allow, "skipped");
    };
    let ns = req
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let Some(session) = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_RESTORE_SESSION))
    else {
        return (allow, "skipped");
    };
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let rs = match Api::<RestoreSession>::namespaced(state.client.clone(), &ns)
        .get_opt(session)
        .await
    {
        Ok(Some(rs)) => rs,
        Ok(None) => return (allow, "skipped"),
        Err(e) => {
            // Admit unchanged, as failurePolicy Ignore would; the restore
            // reconciler reports the pod as created without restore-wait.
            tracing::warn!(pod = %format!("{ns}/{pod_name}"), session = %session, error = %e,
                "cannot read the RestoreSession; admitting the pod without restore-wait");
            return (allow, "error");
        }
    };
    let image = match state
        .settings
        .restore_wait_image
        .resolve(&state.client)
        .await
    {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{pod_name}"), error = %e,
                "cannot tell the restore-wait image; admitting the pod without restore-wait");
            return (allow, "error");
        }
    };
    match injection(pod, &ns, &rs, &image, &state.settings.host_paths) {
        Injection::Skip { warning } => {
            let mut r = allow;
            if let Some(w) = warning {
                tracing::info!(pod = %format!("{ns}/{pod_name}"), session = %session, "{w}");
                r.warnings = Some(vec![w]);
            }
            (r, "skipped")
        }
        Injection::Patch { ops, dirs } => {
            let patch: json_patch::Patch =
                serde_json::from_value(Value::Array(ops)).expect("a JSON patch");
            match allow.clone().with_patch(patch) {
                Ok(r) => {
                    tracing::info!(pod = %format!("{ns}/{pod_name}"), session = %session,
                        dirs = %dirs.join(","), "added the restore-wait init container");
                    (r, "injected")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot serialize the restore-wait patch");
                    (allow, "error")
                }
            }
        }
    }
}

/// What the webhook does to a pod.
#[derive(Debug, PartialEq)]
pub enum Injection {
    /// Admit it as it is; with a warning for whoever created it, if any.
    Skip {
        /// Why, when it is worth telling.
        warning: Option<String>,
    },
    /// Apply these JSON patch operations, which add the init container
    /// waiting for `dirs`.
    Patch {
        /// RFC 6902 operations.
        ops: Vec<Value>,
        /// The directories `restore-wait` waits for.
        dirs: Vec<String>,
    },
}

/// The kind and name of the workload owning `pod`, if a Deployment (through
/// its ReplicaSet), StatefulSet or DaemonSet.
pub fn owning_workload(pod: &Pod) -> Option<(WorkloadKind, String)> {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let kind = match owner.kind.as_str() {
        "ReplicaSet" => WorkloadKind::Deployment,
        "StatefulSet" => WorkloadKind::StatefulSet,
        "DaemonSet" => WorkloadKind::DaemonSet,
        _ => return None,
    };
    let name = identity::workload_name_of(&pod.metadata);
    // A ReplicaSet that no Deployment made keeps its own name.
    if kind == WorkloadKind::Deployment && name == owner.name {
        return None;
    }
    Some((kind, name))
}

/// The volumes of `pod` that restore `rs` writes into: `spec.volumes`'
/// targets, or the pod's opted-in volumes; only those the pod has, and
/// hostPath volumes only inside `allow`.
pub fn target_volumes(pod: &Pod, rs: &RestoreSession, allow: &HostPathAllowList) -> Vec<String> {
    let wanted: Vec<String> = if rs.spec.volumes.is_empty() {
        opted_in_volumes(pod.metadata.annotations.as_ref())
    } else {
        rs.spec.volumes.iter().map(|m| m.target.clone()).collect()
    };
    let mut seen = BTreeSet::new();
    wanted
        .into_iter()
        .filter(|v| seen.insert(v.clone()))
        .filter(|v| {
            pod.spec
                .iter()
                .flat_map(|s| s.volumes.iter().flatten())
                .find(|pv| &pv.name == v)
                .is_some_and(|pv| pv.host_path.as_ref().is_none_or(|h| allow.allows(&h.path)))
        })
        .collect()
}

/// Decides what to do with `pod`, being created in `ns` with the label
/// naming `rs`: see the module docs.
pub fn injection(
    pod: &Pod,
    ns: &str,
    rs: &RestoreSession,
    image: &str,
    host_paths: &HostPathAllowList,
) -> Injection {
    let session = format!(
        "RestoreSession {ns}/{}",
        rs.metadata.name.as_deref().unwrap_or_default()
    );
    let skip = |w: Option<String>| Injection::Skip { warning: w };
    if rs.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
        return skip(None);
    }
    if !rs.spec.rollout {
        return skip(Some(format!(
            "{session} does not ask for a rollout; no restore-wait init container added"
        )));
    }
    let Some(target) = rs.spec.target.workload.as_ref() else {
        return skip(None);
    };
    if owning_workload(pod) != Some((target.kind, target.name.clone())) {
        return skip(Some(format!(
            "the pod carries the {LABEL_RESTORE_SESSION} label but is not a pod of {:?} {ns}/{}, \
             the target of {session}; no restore-wait init container added",
            target.kind, target.name
        )));
    }
    let Some(spec) = pod.spec.as_ref() else {
        return skip(None);
    };
    if spec
        .init_containers
        .iter()
        .flatten()
        .any(|c| c.name == RESTORE_WAIT_CONTAINER)
    {
        return skip(None);
    }
    let volumes = target_volumes(pod, rs, host_paths);
    if volumes.is_empty() {
        return skip(Some(format!(
            "{session} restores no volume of this pod (list them in spec.volumes, or opt them in \
             with the stash.rs/backup-volumes annotation); no restore-wait init container added"
        )));
    }
    let mut mounts: Vec<VolumeMount> = Vec::new();
    let mut user: Option<&SecurityContext> = None;
    for v in &volumes {
        let root_mount = spec
            .containers
            .iter()
            .flat_map(|c| c.volume_mounts.iter().flatten().map(move |m| (c, m)))
            .find(|(_, m)| {
                &m.name == v
                    && m.sub_path.as_deref().unwrap_or_default().is_empty()
                    && m.sub_path_expr.as_deref().unwrap_or_default().is_empty()
                    && !mounts.iter().any(|o| o.mount_path == m.mount_path)
            });
        if user.is_none() {
            user = spec
                .containers
                .iter()
                .find(|c| c.volume_mounts.iter().flatten().any(|m| &m.name == v))
                .and_then(|c| c.security_context.as_ref());
        }
        let mount_path = match root_mount {
            Some((_, m)) => m.mount_path.clone(),
            None => format!("{FALLBACK_MOUNT_ROOT}/{v}"),
        };
        mounts.push(VolumeMount {
            name: v.clone(),
            mount_path,
            ..VolumeMount::default()
        });
    }
    let dirs: Vec<String> = mounts.iter().map(|m| m.mount_path.clone()).collect();
    let mut args = vec![
        "restore-wait".to_owned(),
        "--session".to_owned(),
        rs.metadata.name.clone().unwrap_or_default(),
    ];
    for d in &dirs {
        args.push("--dir".into());
        args.push(d.clone());
    }
    let pod_has_seccomp = spec
        .security_context
        .as_ref()
        .is_some_and(|s| s.seccomp_profile.is_some());
    let q = |s: &str| Quantity(s.to_owned());
    let container = Container {
        name: RESTORE_WAIT_CONTAINER.to_owned(),
        image: Some(image.to_owned()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        volume_mounts: Some(mounts),
        resources: Some(ResourceRequirements {
            requests: Some([("cpu".into(), q("10m")), ("memory".into(), q("16Mi"))].into()),
            limits: Some([("cpu".into(), q("100m")), ("memory".into(), q("64Mi"))].into()),
            ..ResourceRequirements::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(SecurityContext {
            run_as_user: user.and_then(|u| u.run_as_user),
            run_as_group: user.and_then(|u| u.run_as_group),
            run_as_non_root: user.and_then(|u| u.run_as_non_root),
            se_linux_options: user.and_then(|u| u.se_linux_options.clone()),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: (!pod_has_seccomp).then(|| SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let c = serde_json::to_value(&container).expect("a Container serializes");
    let op = if spec.init_containers.is_some() {
        json!({"op": "add", "path": "/spec/initContainers/0", "value": c})
    } else {
        json!({"op": "add", "path": "/spec/initContainers", "value": [c]})
    };
    Injection::Patch {
        ops: vec![op],
        dirs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const IMAGE: &str = "registry.example.com/stash-agent:1.0";

    fn allow() -> HostPathAllowList {
        HostPathAllowList::new([PathBuf::from("/srv")])
    }

    fn session(rollout: bool, finished: bool, volumes: Value) -> RestoreSession {
        let mut rs: RestoreSession = serde_json::from_value(json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession",
            "metadata": {"name": "r1", "namespace": "shop"},
            "spec": {"repository": {"name": "main"}, "rollout": rollout, "volumes": volumes,
                     "target": {"workload": {"kind": "Deployment", "name": "web"}}},
        }))
        .unwrap();
        if finished {
            rs.status = Some(stash_api::RestoreSessionStatus {
                phase: stash_api::SessionPhase::Succeeded,
                ..Default::default()
            });
        }
        rs
    }

    fn web_pod(spec: Value) -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "web-5f7b9-", "namespace": "shop",
                "labels": {"app": "web", "pod-template-hash": "5f7b9", LABEL_RESTORE_SESSION: "r1"},
                "annotations": {"stash.rs/backup-volumes": "data,cache,root"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5f7b9",
                                     "uid": "u", "controller": true}]},
            "spec": spec,
        }))
        .unwrap()
    }

    fn spec() -> Value {
        json!({
            "securityContext": {"fsGroup": 2000},
            "containers": [
                {"name": "side", "image": "x", "volumeMounts": [{"name": "cache", "mountPath": "/c", "subPath": "a"}]},
                {"name": "app", "image": "x",
                 "securityContext": {"runAsUser": 1000, "runAsNonRoot": true},
                 "volumeMounts": [{"name": "data", "mountPath": "/var/lib/app"},
                                  {"name": "cache", "mountPath": "/cache", "subPath": "b"}]}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "web"}},
                        {"name": "cache", "emptyDir": {}},
                        {"name": "root", "hostPath": {"path": "/etc"}}],
        })
    }

    #[test]
    fn injects_first_with_the_apps_paths_and_user() {
        let Injection::Patch { ops, dirs } = injection(
            &web_pod(spec()),
            "shop",
            &session(true, false, json!([])),
            IMAGE,
            &allow(),
        ) else {
            panic!("no injection")
        };
        // data at the app's path; cache only mounted by subPath, so under
        // the fallback; the hostPath outside the allow-list not at all.
        assert_eq!(dirs, ["/var/lib/app", "/stash-restore/cache"]);
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0]["path"], "/spec/initContainers");
        let c = &ops[0]["value"][0];
        assert_eq!(c["name"], RESTORE_WAIT_CONTAINER);
        assert_eq!(c["image"], "registry.example.com/stash-agent:1.0");
        assert_eq!(
            c["args"],
            json!([
                "restore-wait",
                "--session",
                "r1",
                "--dir",
                "/var/lib/app",
                "--dir",
                "/stash-restore/cache"
            ])
        );
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "data", "mountPath": "/var/lib/app"},
                   {"name": "cache", "mountPath": "/stash-restore/cache"}])
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsUser"], 1000);
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
        assert!(c["resources"]["limits"]["memory"].is_string());

        // With init containers already there, it goes first.
        let mut s = spec();
        s["initContainers"] = json!([{"name": "migrate", "image": "x"}]);
        let Injection::Patch { ops, .. } = injection(
            &web_pod(s),
            "shop",
            &session(true, false, json!([])),
            IMAGE,
            &allow(),
        ) else {
            panic!("no injection")
        };
        assert_eq!(ops[0]["path"], "/spec/initContainers/0");

        // spec.volumes decides which volumes, not the annotation.
        let Injection::Patch { dirs, .. } = injection(
            &web_pod(spec()),
            "shop",
            &session(
                true,
                false,
                json!([{"source": "old", "target": "cache"}, {"source": "x", "target": "nope"}]),
            ),
            IMAGE,
            &allow(),
        ) else {
            panic!("no injection")
        };
        assert_eq!(dirs, ["/stash-restore/cache"]);
    }

    #[test]
    fn leaves_pods_outside_the_restore_alone() {
        let skip =
            |pod: Pod, rs: RestoreSession| match injection(&pod, "shop", &rs, IMAGE, &allow()) {
                Injection::Skip { warning } => warning,
                p => panic!("injected: {p:?}"),
            };
        // A finished restore, or one without rollout.
        assert_eq!(skip(web_pod(spec()), session(true, true, json!([]))), None);
        assert!(skip(web_pod(spec()), session(false, false, json!([])))
            .unwrap()
            .contains("does not ask for a rollout"));
        // A pod of another workload carrying the label.
        let mut other = web_pod(spec());
        other.metadata.owner_references.as_mut().unwrap()[0].name = "api-5f7b9".into();
        assert!(skip(other, session(true, false, json!([])))
            .unwrap()
            .contains("is not a pod of Deployment shop/web"));
        // A bare pod.
        let mut bare = web_pod(spec());
        bare.metadata.owner_references = None;
        assert!(skip(bare, session(true, false, json!([]))).is_some());
        // Already injected (a reinvocation).
        let mut s = spec();
        s["initContainers"] = json!([{"name": RESTORE_WAIT_CONTAINER, "image": "x"}]);
        assert_eq!(skip(web_pod(s), session(true, false, json!([]))), None);
        // Nothing to restore into.
        let mut none = web_pod(spec());
        none.metadata.annotations = None;
        assert!(skip(none, session(true, false, json!([])))
            .unwrap()
            .contains("restores no volume"));
    }

    #[test]
    fn owning_workload_follows_the_controller_reference() {
        let p = web_pod(spec());
        assert_eq!(
            owning_workload(&p),
            Some((WorkloadKind::Deployment, "web".into()))
        );
        let mut s = web_pod(spec());
        let o = &mut s.metadata.owner_references.as_mut().unwrap()[0];
        o.kind = "StatefulSet".into();
        o.name = "db".into();
        assert_eq!(
            owning_workload(&s),
            Some((WorkloadKind::StatefulSet, "db".into()))
        );
        let mut j = web_pod(spec());
        j.metadata.owner_references.as_mut().unwrap()[0].kind = "Job".into();
        assert_eq!(owning_workload(&j), None);
    }
}
