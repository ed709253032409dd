//! Helpers shared by the controller's tests against a real apiserver.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, Volume};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::Client;
use serde_json::json;
use stash_api::{BackupConfiguration, BackupSession, Repository};
use stash_envtest::Envtest;

/// A control plane with our CRDs installed, and an admin client.
pub async fn control_plane() -> (Envtest, Client) {
    let env = Envtest::start().await;
    env.install_crds(stash_api::crds()).await;
    let client = env.client().await;
    (env, client)
}

pub async fn namespace(client: &Client, name: &str, labels: &[(&str, &str)]) {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// A pod on `node` with emptyDir `volumes`, labels and annotations; there
/// is no kubelet, so it stays as written.
pub async fn pod(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    volumes: &[&str],
) {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(map(labels)),
            annotations: Some(map(annotations)),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            containers: vec![Container {
                name: "app".into(),
                image: Some("busybox".into()),
                ..Container::default()
            }],
            volumes: Some(
                volumes
                    .iter()
                    .map(|v| Volume {
                        name: (*v).into(),
                        empty_dir: Some(Default::default()),
                        ..Volume::default()
                    })
                    .collect(),
            ),
            ..PodSpec::default()
        }),
        status: None,
    };
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create pod {ns}/{name}: {e}"));
}

/// The tests' usual target: pod `name` on `node`, labeled `app: db`, with
/// one emptyDir volume `data` opted in to backups.
pub async fn db_pod(client: &Client, ns: &str, name: &str, node: &str) {
    pod(
        client,
        ns,
        name,
        node,
        &[("app", "db")],
        &[("stash.rs/backup-volumes", "data")],
        &["data"],
    )
    .await;
}

/// The spec of the tests' usual BackupConfiguration: every `app: db` pod
/// into Repository `main`, on a schedule that never fires in a test (1
/// January), with the fields of `more` added.
pub fn db_spec(more: serde_json::Value) -> serde_json::Value {
    let mut spec = json!({
        "schedule": "0 0 1 1 *",
        "target": {"selector": {"matchLabels": {"app": "db"}}},
        "repository": {"name": "main"},
    });
    if let serde_json::Value::Object(more) = more {
        spec.as_object_mut().expect("an object").extend(more);
    }
    spec
}

pub async fn repository(
    client: &Client,
    ns: &str,
    name: &str,
    usage_policy: Option<serde_json::Value>,
) {
    let mut spec =
        json!({"url": "s3:minio:9000/backups", "passwordSecret": {"name": "repo-password"}});
    if let Some(p) = usage_policy {
        spec["usagePolicy"] = p;
    }
    let repo: Repository = serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))
    .expect("a Repository");
    Api::<Repository>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &repo)
        .await
        .unwrap_or_else(|e| panic!("create Repository {ns}/{name}: {e}"));
}

pub async fn configuration(client: &Client, ns: &str, name: &str, spec: serde_json::Value) {
    let cfg: BackupConfiguration = serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("BackupConfiguration spec: {e}"));
    Api::<BackupConfiguration>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cfg)
        .await
        .unwrap_or_else(|e| panic!("create BackupConfiguration {ns}/{name}: {e}"));
}

pub async fn sessions(client: &Client, ns: &str) -> Vec<BackupSession> {
    let mut list = Api::<BackupSession>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap_or_else(|e| panic!("list BackupSessions in {ns}: {e}"))
        .items;
    list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    list
}

/// Polls `check` every 100 ms until it returns Some, or panics with `what`
/// after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A session kind whose status tests wait on.
pub trait Session:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    /// Its status type.
    type Status;
    /// Its status, once it has one.
    fn into_status(self) -> Option<Self::Status>;
}

impl Session for BackupSession {
    type Status = stash_api::BackupSessionStatus;
    fn into_status(self) -> Option<Self::Status> {
        self.status
    }
}

impl Session for stash_api::RestoreSession {
    type Status = stash_api::RestoreSessionStatus;
    fn into_status(self) -> Option<Self::Status> {
        self.status
    }
}

/// Polls session `ns/name` until its status passes `pred`, and returns
/// that status; panics with `what` after `timeout`.
pub async fn status_where<K: Session>(
    client: &Client,
    (ns, name): (&str, &str),
    timeout: Duration,
    what: &str,
    pred: impl Fn(&K::Status) -> bool,
) -> K::Status {
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    eventually(timeout, what, || {
        let api = api.clone();
        let pred = &pred;
        async move {
            let st = api.get(name).await.ok()?.into_status()?;
            pred(&st).then_some(st)
        }
    })
    .await
}

/// Waits up to 20 s until the Ready condition of `name` has `reason`, and
/// returns its message.
pub async fn ready_message<K>(api: &Api<K>, name: &str, reason: &str) -> String
where
    K: Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    eventually(Duration::from_secs(20), reason, || {
        let api = api.clone();
        async move {
            let obj = serde_json::to_value(api.get(name).await.ok()?).ok()?;
            let conditions = obj["status"]["conditions"].as_array()?;
            let ready = conditions.iter().find(|c| c["type"] == "Ready")?;
            (ready["reason"] == reason).then(|| ready["message"].as_str().unwrap().to_owned())
        }
    })
    .await
}

/// Settings for a controller under test.
pub fn settings() -> stash_controller::Settings {
    stash_controller::Settings {
        notify: stash_controller::notify::NotifySettings {
            allow_loopback: true,
            attempts: 3,
            first_backoff: std::time::Duration::from_millis(100),
            timeout: std::time::Duration::from_secs(5),
        },
        ..stash_controller::Settings::new("test")
    }
}

/// Runs the controllers in this process until the returned token is
/// cancelled; await the handle to see them stop.
pub fn start_controller(
    client: &Client,
    settings: stash_controller::Settings,
) -> (
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
    stash_controller::Metrics,
) {
    let metrics = stash_controller::Metrics::default();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(stash_controller::run_controllers(
        client.clone(),
        settings,
        metrics.clone(),
        shutdown.clone(),
    ));
    (shutdown, handle, metrics)
}

/// Stops a controller started by [`start_controller`].
pub async fn stop_controller(
    shutdown: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<()>,
) {
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the controller stops within 10 s of shutdown")
        .expect("controller task");
}

/// What a node agent does: a JSON patch (RFC 6902) on the status
/// subresource of a session, whose `test` operations make it conditional.
/// `Err` carries the apiserver's status code (422 when a test failed).
pub async fn agent_patch(
    client: &Client,
    plural: &str,
    ns: &str,
    name: &str,
    ops: serde_json::Value,
) -> Result<(), u16> {
    let url = format!("/apis/stash.rs/v1alpha1/namespaces/{ns}/{plural}/{name}/status");
    let req = http::Request::patch(url)
        .header("Content-Type", "application/json-patch+json")
        .body(serde_json::to_vec(&ops).unwrap())
        .unwrap();
    match client.request::<serde_json::Value>(req).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) => Err(s.code),
        Err(e) => panic!("JSON patch of {plural} {ns}/{name}: {e}"),
    }
}

/// `test` operations pinning item `i` to its identity, as agents send them.
pub fn item_identity(i: usize, ns: &str, pod: &str, volume: &str) -> Vec<serde_json::Value> {
    vec![
        json!({"op": "test", "path": format!("/status/items/{i}/namespace"), "value": ns}),
        json!({"op": "test", "path": format!("/status/items/{i}/pod"), "value": pod}),
        json!({"op": "test", "path": format!("/status/items/{i}/volume"), "value": volume}),
    ]
}

/// An RFC 3339 timestamp `ago` before now.
pub fn timestamp_ago(ago: Duration) -> String {
    (chrono::Utc::now() - chrono::Duration::from_std(ago).unwrap())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub async fn backup_session(client: &Client, ns: &str, name: &str, config: &str) {
    let s: BackupSession = serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"backupConfiguration": config},
    }))
    .unwrap();
    Api::<BackupSession>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &s)
        .await
        .unwrap_or_else(|e| panic!("create BackupSession {ns}/{name}: {e}"));
}

/// An agent claims and finishes item `i` (as resolved in `item`) at once.
pub async fn finish_item(
    client: &Client,
    ns: &str,
    session: &str,
    i: usize,
    item: &stash_api::BackupItem,
    phase: stash_api::ItemPhase,
) {
    let path = |f: &str| format!("/status/items/{i}/{f}");
    let mut ops = item_identity(
        i,
        &item.common.namespace,
        &item.common.pod,
        &item.common.volume,
    );
    let claim = format!("{}/agent/1", item.common.node.as_deref().unwrap_or("-"));
    let now = timestamp_ago(Duration::ZERO);
    ops.extend([
        json!({"op": "test", "path": path("phase"), "value": "Pending"}),
        json!({"op": "replace", "path": path("phase"), "value": phase}),
        json!({"op": "add", "path": path("claimedBy"), "value": claim}),
        json!({"op": "add", "path": path("startTime"), "value": now}),
        json!({"op": "add", "path": path("endTime"), "value": now}),
    ]);
    if phase == stash_api::ItemPhase::Succeeded {
        ops.push(json!({"op": "add", "path": path("snapshotId"), "value": format!("{i:064x}")}));
    } else {
        ops.push(json!({"op": "add", "path": path("error"), "value": "disk on fire"}));
    }
    agent_patch(client, "backupsessions", ns, session, json!(ops))
        .await
        .unwrap_or_else(|code| panic!("finishing item {i} of {ns}/{session}: {code}"));
}

/// Waits until the controller hands the retention run over; its node.
pub async fn wait_retention_pending(client: &Client, ns: &str, session: &str) -> String {
    let api: Api<BackupSession> = Api::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(15), "a Pending retention run", || {
        let api = api.clone();
        async move {
            let r = api.get(session).await.ok()?.status?.retention?;
            (r.phase == stash_api::ItemPhase::Pending).then(|| r.node.unwrap_or_default())
        }
    })
    .await
}

/// The agent claims the retention run and finishes it: with figures when
/// `phase` is Succeeded, with `error` otherwise.
pub async fn finish_retention(
    client: &Client,
    ns: &str,
    session: &str,
    phase: stash_api::ItemPhase,
    error: Option<&str>,
) {
    let claim = json!([
        {"op": "test", "path": "/status/retention/phase", "value": "Pending"},
        {"op": "replace", "path": "/status/retention/phase", "value": "Running"},
        {"op": "add", "path": "/status/retention/claimedBy", "value": "node/agent/r"},
        {"op": "add", "path": "/status/retention/heartbeatTime", "value": timestamp_ago(Duration::ZERO)},
    ]);
    agent_patch(client, "backupsessions", ns, session, claim)
        .await
        .unwrap_or_else(|code| panic!("claiming the retention of {ns}/{session}: {code}"));
    let mut ops = vec![
        json!({"op": "test", "path": "/status/retention/claimedBy", "value": "node/agent/r"}),
        json!({"op": "replace", "path": "/status/retention/phase", "value": phase}),
        json!({"op": "add", "path": "/status/retention/endTime", "value": timestamp_ago(Duration::ZERO)}),
    ];
    if phase == stash_api::ItemPhase::Succeeded {
        ops.extend([
            json!({"op": "add", "path": "/status/retention/kept", "value": 4}),
            json!({"op": "add", "path": "/status/retention/removed", "value": 2}),
            json!({"op": "add", "path": "/status/retention/snapshotCount", "value": 12}),
            json!({"op": "add", "path": "/status/retention/totalSize", "value": 123_456_789}),
        ]);
    }
    if let Some(e) = error {
        ops.push(json!({"op": "add", "path": "/status/retention/error", "value": e}));
    }
    agent_patch(client, "backupsessions", ns, session, json!(ops))
        .await
        .unwrap_or_else(|code| panic!("finishing the retention of {ns}/{session}: {code}"));
}

/// Creates any object from its JSON manifest.
pub async fn create<K>(client: &Client, ns: &str, manifest: serde_json::Value) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(manifest.clone())
        .unwrap_or_else(|e| panic!("manifest {manifest}: {e}"));
    Api::<K>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &obj)
        .await
        .unwrap_or_else(|e| panic!("create {manifest}: {e}"))
}

/// Binds pod `ns/name` to `node`, as the scheduler would.
pub async fn bind(client: &Client, ns: &str, name: &str, node: &str) {
    let body = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": name, "namespace": ns},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let req = http::Request::post(format!("/api/v1/namespaces/{ns}/pods/{name}/binding"))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    client
        .request::<serde_json::Value>(req)
        .await
        .unwrap_or_else(|e| panic!("bind pod {ns}/{name} to {node}: {e}"));
}

/// Events whose object is `name`, as (type, reason, note).
pub async fn events_of(client: &Client, ns: &str, name: &str) -> Vec<(String, String, String)> {
    Api::<k8s_openapi::api::events::v1::Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until the `node.stash.rs/` labels of session `name` name exactly
/// the nodes `want`: the nodes whose agents watch it.
pub async fn node_labels_become<K>(client: &kube::Client, ns: &str, name: &str, want: &[&str])
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let want: std::collections::BTreeSet<String> = want
        .iter()
        .map(|n| stash_api::nodes::node_label(n))
        .collect();
    let what = format!("node labels {want:?} on {name}");
    eventually(Duration::from_secs(20), &what, || {
        let (api, want) = (api.clone(), want.clone());
        async move {
            let s = api.get(name).await.ok()?;
            let have: std::collections::BTreeSet<String> = s
                .meta()
                .labels
                .iter()
                .flatten()
                .map(|(k, _)| k)
                .filter(|k| k.starts_with(stash_api::nodes::NODE_LABEL_PREFIX))
                .cloned()
                .collect();
            (have == want).then_some(())
        }
    })
    .await;
}
