//! End to end: a real kube-apiserver, the controller, two node agents as
//! processes (`node-a`, `node-b`), each with its own simulated kubelet
//! directory, and MinIO as the repository's storage. restic is the oracle
//! for what lands in the repository.
//!
//! There is no kubelet: the test creates the pods' volume directories where
//! a kubelet would (`<kubelet-root>/pods/<uid>/volumes/...`) and sets the
//! pods' status itself.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use stash_api::{
    BackupConfiguration, BackupSession, ItemPhase, Repository, RestoreSession, SessionPhase,
};
use stash_controller::{HostPathAllowList, LeaseConfig, Metrics, Settings};
use stash_envtest::Envtest;
use stash_testkit::compare::{assert_trees_equal, CompareOptions};
use stash_testkit::fixture::write_random_file;
use stash_testkit::restic::{write_password_file, Restic};
use stash_testkit::servers::{self, Server};
use tokio_util::sync::CancellationToken;

const NS: &str = "shop";
const PASSWORD: &str = "e2e-password";

/// A node: its agent process and its simulated host.
struct Node {
    name: &'static str,
    /// The host's `/` as the agent sees it (`--host-root`).
    host_root: PathBuf,
    /// The kubelet's root (`--kubelet-root`).
    kubelet: PathBuf,
    agent: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn new(base: &Path, name: &'static str) -> Node {
        let host_root = base.join(name).join("host");
        let kubelet = base.join(name).join("kubelet");
        fs::create_dir_all(&host_root).unwrap();
        fs::create_dir_all(&kubelet).unwrap();
        Node {
            name,
            log: base.join(format!("agent-{name}.log")),
            host_root,
            kubelet,
            agent: None,
        }
    }

    fn start_agent(&mut self, kubeconfig: &Path) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_stash"))
            .args([
                "agent",
                "--node-name",
                self.name,
                "--pod-name",
                &format!("agent-{}", self.name),
            ])
            .arg("--kubelet-root")
            .arg(&self.kubelet)
            .arg("--host-root")
            .arg(&self.host_root)
            .args(["--allow-host-path", "/srv"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--takeover-after", "6s", "--progress-interval", "1s"])
            .env("KUBECONFIG", kubeconfig)
            .env("STASH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        self.agent = Some(child);
    }

    /// Whether the agent process still runs (it did not crash).
    fn agent_running(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: the agent gets no chance to release anything.
    fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pod_volumes(&self, uid: &str) -> PathBuf {
        self.kubelet.join("pods").join(uid).join("volumes")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
    }
}

struct World {
    client: Client,
    /// The control plane; stopped when the test ends.
    _env: Envtest,
    nodes: Vec<Node>,
    _minio: Server,
    restic: Restic,
    restic_current: Restic,
    base: PathBuf,
    /// Removed when the test ends, also when it fails.
    _tmp: tempfile::TempDir,
}

impl World {
    fn node(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).unwrap()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            s.push_str(&format!(
                "\n--- agent {} ---\n{}",
                n.name,
                tail(&n.log(), 60)
            ));
        }
        s
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

async fn create<K>(client: &Client, ns: Option<&str>, v: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let obj: K = serde_json::from_value(v).unwrap();
    let api: Api<K> = Api::namespaced(client.clone(), ns.unwrap_or(NS));
    api.create(&PostParams::default(), &obj).await.unwrap()
}

async fn apply_cluster<K>(client: &Client, v: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let obj: K = serde_json::from_value(v).unwrap();
    let api: Api<K> = Api::all(client.clone());
    api.create(&PostParams::default(), &obj).await.unwrap()
}

/// Creates a pod on `node` and marks it Running, as its kubelet would;
/// returns its UID.
async fn running_pod(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    labels: Value,
    annotations: Value,
    volumes: Value,
) -> String {
    let pod: Pod = create(
        client,
        Some(ns),
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {
                "nodeName": node,
                "containers": [{"name": "app", "image": "busybox"}],
                "volumes": volumes,
            }
        }),
    )
    .await;
    set_pod_phase(client, ns, name, "Running").await;
    pod.uid().unwrap()
}

async fn set_pod_phase(client: &Client, ns: &str, name: &str, phase: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": phase}})),
    )
    .await
    .unwrap();
}

/// Waits for `pred` over the sessions of configuration `cfg`, newest first.
async fn wait_session(
    w: &World,
    cfg: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&BackupSession) -> bool,
) -> BackupSession {
    let api: Api<BackupSession> = Api::namespaced(w.client.clone(), NS);
    let start = Instant::now();
    loop {
        let mut list = api
            .list(
                &ListParams::default().labels(&format!("{}={cfg}", stash_api::LABEL_CONFIGURATION)),
            )
            .await
            .unwrap()
            .items;
        list.sort_by_key(|s| std::cmp::Reverse(s.metadata.creation_timestamp.clone().map(|t| t.0)));
        if let Some(s) = list.iter().find(|s| pred(s)) {
            return s.clone();
        }
        if start.elapsed() > timeout {
            if list.is_empty() {
                list = api.list(&ListParams::default()).await.unwrap().items;
            }
            let summary: Vec<Value> = list
                .iter()
                .take(3)
                .map(|s| json!({"name": s.name_any(), "labels": s.metadata.labels, "status": s.status}))
                .collect();
            panic!(
                "timed out after {timeout:?} waiting for {what}; newest sessions: {}\n{}",
                serde_json::to_string_pretty(&summary).unwrap(),
                w.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// An on-demand session `name` of configuration `nightly`.
fn on_demand(name: &str) -> BackupSession {
    serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
        "metadata": {"name": name, "labels": {(stash_api::LABEL_CONFIGURATION): "nightly"}},
        "spec": {"backupConfiguration": "nightly"}
    }))
    .unwrap()
}

/// Creates [`on_demand`] session `name` and waits up to 60 s for it to
/// succeed.
async fn back_up_now(w: &World, name: &str) -> BackupSession {
    Api::<BackupSession>::namespaced(w.client.clone(), NS)
        .create(&PostParams::default(), &on_demand(name))
        .await
        .unwrap();
    wait_session(
        w,
        "nightly",
        &format!("{name} to succeed"),
        Duration::from_secs(60),
        |s| s.name_any() == name && finished_ok(s),
    )
    .await
}

fn finished_ok(s: &BackupSession) -> bool {
    s.status
        .as_ref()
        .is_some_and(|st| st.phase == SessionPhase::Succeeded)
}

fn item<'a>(s: &'a BackupSession, pod: &str, volume: &str) -> &'a stash_api::BackupItem {
    s.status
        .as_ref()
        .unwrap()
        .items
        .iter()
        .find(|i| i.common.pod == pod && i.common.volume == volume)
        .unwrap_or_else(|| panic!("no item {pod}/{volume} in {:?}", s.status))
}

/// `restic check --read-data`, beside backups that may be running (their
/// shared locks would refuse check's exclusive one).
fn check_read_data(r: &Restic) {
    let out = r.run_ok(["--no-lock", "check", "--read-data"]);
    assert!(out.contains("no errors were found"), "{out}");
}

fn restic_snapshots(r: &Restic) -> Vec<Value> {
    r.snapshots_json().as_array().cloned().unwrap_or_default()
}

/// Restores snapshot `id` with restic and compares volume `volume` with `src`.
fn assert_restic_restores(r: &Restic, base: &Path, id: &str, volume: &str, src: &Path) {
    let target = base.join(format!("restic-restore-{}", &id[..8]));
    let _ = fs::remove_dir_all(&target);
    r.restore(id, &target);
    assert_trees_equal(
        src,
        &target.join(volume),
        &CompareOptions {
            check_root_metadata: false,
            ..CompareOptions::default()
        },
    );
}

async fn setup() -> World {
    let tmp = tempfile::Builder::new()
        .prefix("stash-e2e")
        .tempdir()
        .unwrap();
    let base = tmp.path().to_path_buf();
    let minio = servers::minio();
    let url = format!("s3:{}/e2e/repo", minio.base_url());
    let pw = write_password_file(&base, PASSWORD);
    // The repository exists before the cluster uses it (as an operator
    // would create it); weak KDF parameters keep the test fast.
    let out = Command::new(env!("CARGO_BIN_EXE_stash"))
        .args(["init", "-r", &url])
        .arg("--password-file")
        .arg(&pw)
        .env("AWS_ACCESS_KEY_ID", servers::MINIO_USER)
        .env("AWS_SECRET_ACCESS_KEY", servers::MINIO_PASSWORD)
        .env("STASH_KDF_PARAMS", "1024,8,1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let with_creds = |r: Restic| {
        r.with_env("AWS_ACCESS_KEY_ID", servers::MINIO_USER)
            .with_env("AWS_SECRET_ACCESS_KEY", servers::MINIO_PASSWORD)
    };
    let restic = with_creds(Restic::new(url.clone(), pw.clone()));
    let restic_current =
        with_creds(Restic::new(url.clone(), pw.clone()).with_bin(servers::bin("restic")));

    let env = Envtest::start().await;
    env.install_crds(stash_api::crds()).await;
    let client = env.client().await;
    for ns in [NS, "other"] {
        apply_cluster::<Namespace>(
            &client,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await;
    }
    create::<Secret>(
        &client,
        None,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-password"}, "stringData": {"password": PASSWORD}}),
    )
    .await;
    create::<Secret>(
        &client,
        None,
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-creds"},
               "stringData": {"AWS_ACCESS_KEY_ID": servers::MINIO_USER, "AWS_SECRET_ACCESS_KEY": servers::MINIO_PASSWORD}}),
    )
    .await;
    create::<Repository>(
        &client,
        None,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository", "metadata": {"name": "main"},
               "spec": {"url": url, "credentialsSecret": "repo-creds", "passwordSecret": {"name": "repo-password"},
                        // Prune after every retention run, as this test expects.
                        "maintenance": {"pruneInterval": "0s"}}}),
    )
    .await;
    // The agents run with the permissions deploy/ gives them, no more.
    let agent_kubeconfig = agent_kubeconfig(&env, &base);
    let mut nodes = vec![Node::new(&base, "node-a"), Node::new(&base, "node-b")];
    for n in &mut nodes {
        n.start_agent(&agent_kubeconfig);
    }
    World {
        client,
        _env: env,
        nodes,
        _minio: minio,
        restic,
        restic_current,
        base,
        _tmp: tmp,
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kubeconfig with the token of the agent's ServiceAccount, after
/// installing the agent's RBAC from deploy/.
fn agent_kubeconfig(env: &Envtest, base: &Path) -> PathBuf {
    let admin = env.kubeconfig();
    let rbac = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent-rbac.yaml");
    kubectl(&admin, &["create", "namespace", "stash-system"]);
    kubectl(&admin, &["apply", "-f", rbac.to_str().unwrap()]);
    let token = kubectl(
        &admin,
        &[
            "create",
            "token",
            "stash-agent",
            "-n",
            "stash-system",
            "--duration=1h",
        ],
    );
    let kubeconfig = base.join("agent-kubeconfig");
    fs::copy(&admin, &kubeconfig).unwrap();
    kubectl(
        &kubeconfig,
        &[
            "config",
            "set-credentials",
            "stash-agent",
            &format!("--token={}", token.trim()),
        ],
    );
    kubectl(
        &kubeconfig,
        &["config", "set-context", "--current", "--user=stash-agent"],
    );
    kubeconfig
}

fn start_controller(client: Client, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    start_controller_with(client, shutdown, Metrics::default())
}

/// [`start_controller`], also serving its `/metrics` on a loopback port
/// (returned).
async fn start_controller_serving(
    client: Client,
    shutdown: CancellationToken,
) -> (tokio::task::JoinHandle<()>, std::net::SocketAddr) {
    let metrics = Metrics::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(stash_controller::metrics::serve(
        listener,
        metrics.clone(),
        shutdown.clone(),
    ));
    (start_controller_with(client, shutdown, metrics), addr)
}

fn start_controller_with(
    client: Client,
    shutdown: CancellationToken,
    metrics: Metrics,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let settings = Settings {
            host_paths: HostPathAllowList::new([PathBuf::from("/srv")]),
            ..Settings::new("controller-e2e")
        };
        let lease = LeaseConfig {
            namespace: "default".into(),
            name: "stash-controller".into(),
            identity: "controller-e2e".into(),
            lease_duration: Duration::from_secs(15),
            renew_period: Duration::from_secs(5),
        };
        if let Err(e) = stash_controller::run(client, settings, lease, metrics, shutdown).await {
            panic!("controller: {e}");
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_agents_back_up_and_restore_pod_volumes_end_to_end() {
    let mut w = setup().await;
    let shutdown = CancellationToken::new();
    let controller = start_controller(w.client.clone(), shutdown.clone());
    let c = w.client.clone();

    // 1. Pods with an emptyDir and a hostPath volume on node-a, and a
    // CSI-backed PVC on node-b, with files where their kubelets keep them.
    apply_cluster::<PersistentVolume>(
        &c,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-db"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "csi": {"driver": "csi.example.com", "volumeHandle": "vol-1"},
                        "claimRef": {"namespace": NS, "name": "db-data"}}}),
    )
    .await;
    create::<PersistentVolumeClaim>(
        &c,
        None,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "db-data"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
                        "volumeName": "pv-db", "storageClassName": ""}}),
    )
    .await;
    let web_volumes = json!([
        {"name": "cache", "emptyDir": {}},
        {"name": "logs", "hostPath": {"path": "/srv/logs"}},
        {"name": "tmp", "emptyDir": {}},
    ]);
    let web_annotations = json!({"stash.rs/backup-volumes": "cache,logs"});
    let web_uid = running_pod(
        &c,
        NS,
        "web",
        "node-a",
        json!({"app": "shop"}),
        web_annotations.clone(),
        web_volumes.clone(),
    )
    .await;
    let db_uid = running_pod(
        &c,
        NS,
        "db",
        "node-b",
        json!({"app": "shop"}),
        json!({"stash.rs/backup-volumes": "data"}),
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "db-data"}}]),
    )
    .await;
    let cache_dir = w
        .node("node-a")
        .pod_volumes(&web_uid)
        .join("kubernetes.io~empty-dir/cache");
    let logs_dir = w.node("node-a").host_root.join("srv/logs");
    let data_dir = w
        .node("node-b")
        .pod_volumes(&db_uid)
        .join("kubernetes.io~csi/pv-db/mount");
    for d in [&cache_dir, &logs_dir, &data_dir] {
        fs::create_dir_all(d.join("sub")).unwrap();
    }
    for i in 0..20u64 {
        write_random_file(&cache_dir.join(format!("sub/f{i}")), 200_000, i).unwrap();
    }
    fs::write(logs_dir.join("app.log"), "started\n".repeat(1000)).unwrap();
    // Big enough that node-b's agent can be killed in the middle.
    write_random_file(&data_dir.join("sub/big.db"), 96 << 20, 7).unwrap();
    fs::write(data_dir.join("small"), b"row").unwrap();

    create::<BackupConfiguration>(
        &c,
        None,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration", "metadata": {"name": "nightly"},
               "spec": {"schedule": "*/10 * * * * *", "target": {"selector": {"matchLabels": {"app": "shop"}}},
                        "repository": {"name": "main"}, "concurrencyPolicy": "Forbid",
                        "retention": {"keepLast": 2}}}),
    )
    .await;

    // 6. Kill node-b's agent in the middle of the first backup of the PVC.
    let running = wait_session(
        &w,
        "nightly",
        "the PVC backup under way",
        Duration::from_secs(90),
        |s| {
            s.status.as_ref().is_some_and(|st| {
                st.items.iter().any(|i| {
                    i.common.pod == "db"
                        && i.common.phase == ItemPhase::Running
                        && i.common.bytes_done.unwrap_or(0) > 0
                })
            })
        },
    )
    .await;
    w.node("node-b").kill_agent();
    // The agent warned at its start that an allowed host directory is not
    // mounted where it looks for it (node-b has no /srv); once it is, a
    // restarted agent does not warn again.
    let unmounted = "--allow-host-path /srv: ";
    assert_eq!(
        w.node("node-b").log().matches(unmounted).count(),
        1,
        "{}",
        w.node("node-b").log()
    );
    fs::create_dir_all(w.node("node-b").host_root.join("srv")).unwrap();
    let killed_claim = item(&running, "db", "data")
        .common
        .claim
        .claimed_by
        .clone()
        .unwrap();
    assert!(killed_claim.starts_with("node-b/"), "{killed_claim}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let kubeconfig = w.base.join("agent-kubeconfig");
    w.node("node-b").start_agent(&kubeconfig);

    // 2. The session succeeds; each volume was backed up by its own node's agent.
    let first_name = running.name_any();
    let first = wait_session(
        &w,
        "nightly",
        "the first session to succeed",
        Duration::from_secs(180),
        |s| s.name_any() == first_name && finished_ok(s),
    )
    .await;
    assert_eq!(
        w.node("node-b").log().matches(unmounted).count(),
        1,
        "the restarted agent finds /srv"
    );
    let st = first.status.as_ref().unwrap();
    assert_eq!(st.items.len(), 3, "{st:?}");
    for (pod, volume, node) in [
        ("web", "cache", "node-a"),
        ("web", "logs", "node-a"),
        ("db", "data", "node-b"),
    ] {
        let i = item(&first, pod, volume);
        assert_eq!(i.common.node.as_deref(), Some(node));
        assert_eq!(i.common.phase, ItemPhase::Succeeded, "{i:?}");
        let by = i.common.claim.claimed_by.as_deref().unwrap();
        assert!(
            by.starts_with(&format!("{node}/")),
            "{pod}/{volume} claimed by {by}"
        );
        assert!(i.common.snapshot_id.is_some());
    }
    let db = item(&first, "db", "data");
    assert_eq!(
        db.common.claim.attempt,
        Some(2),
        "the restarted agent took the item over: {db:?}"
    );
    assert_ne!(
        db.common.claim.claimed_by.as_deref(),
        Some(killed_claim.as_str())
    );

    // restic sees the snapshots with the stable identity, and restores them.
    let snaps = restic_snapshots(&w.restic);
    let by_id = |id: &str| {
        snaps
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("restic lacks {id}: {snaps:?}"))
            .clone()
    };
    for (pod, volume, host, src) in [
        ("web", "cache", "shop/web/cache", &cache_dir),
        ("web", "logs", "shop/web/logs", &logs_dir),
        ("db", "data", "shop/db-data", &data_dir),
    ] {
        let id = item(&first, pod, volume)
            .common
            .snapshot_id
            .clone()
            .unwrap();
        let s = by_id(&id);
        assert_eq!(s["hostname"], host);
        assert_eq!(s["paths"], json!([format!("/{volume}")]));
        let tags: Vec<String> = serde_json::from_value(s["tags"].clone()).unwrap();
        for t in [
            format!("namespace={NS}"),
            format!("pod={pod}"),
            format!("volume={volume}"),
            format!("session={first_name}"),
            "config=nightly".into(),
        ] {
            assert!(tags.contains(&t), "{t} missing in {tags:?}");
        }
        assert_restic_restores(&w.restic, &w.base, &id, volume, src);
    }
    check_read_data(&w.restic);
    check_read_data(&w.restic_current);

    // From here on, backups are taken on demand, so that parents are known.
    let cfgs: Api<BackupConfiguration> = Api::namespaced(c.clone(), NS);
    cfgs.patch(
        "nightly",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    let sessions: Api<BackupSession> = Api::namespaced(c.clone(), NS);
    let start = Instant::now();
    loop {
        let list = sessions.list(&ListParams::default()).await.unwrap().items;
        if list
            .iter()
            .all(|s| s.status.as_ref().is_some_and(|st| st.phase.is_finished()))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "sessions still running after pausing\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let latest = wait_session(
        &w,
        "nightly",
        "the newest successful session",
        Duration::from_secs(1),
        finished_ok,
    )
    .await;

    // 3. Change a few files: the next backup is incremental.
    let cache_before = item(&latest, "web", "cache")
        .common
        .snapshot_id
        .clone()
        .unwrap();
    write_random_file(&cache_dir.join("sub/f3"), 200_000, 1003).unwrap();
    fs::write(cache_dir.join("new.txt"), b"new").unwrap();
    let second = back_up_now(&w, "manual-1").await;
    let cache2 = item(&second, "web", "cache");
    assert_eq!(
        cache2.parent_snapshot_id.as_deref(),
        Some(cache_before.as_str()),
        "{cache2:?}"
    );
    assert!(cache2.bytes_added.unwrap() < 600_000, "{cache2:?}");
    let db2 = item(&second, "db", "data");
    assert!(db2.parent_snapshot_id.is_some());
    assert!(db2.bytes_added.unwrap() < 1 << 20, "{db2:?}");

    // ... also after the pod is deleted and recreated with a new UID.
    let pods: Api<Pod> = Api::namespaced(c.clone(), NS);
    pods.delete("web", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pods.get_opt("web").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "pod web not deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let new_uid = running_pod(
        &c,
        NS,
        "web",
        "node-a",
        json!({"app": "shop"}),
        web_annotations,
        web_volumes,
    )
    .await;
    assert_ne!(new_uid, web_uid);
    let new_cache = w
        .node("node-a")
        .pod_volumes(&new_uid)
        .join("kubernetes.io~empty-dir/cache");
    fs::create_dir_all(new_cache.parent().unwrap()).unwrap();
    fs::rename(&cache_dir, &new_cache).unwrap();
    let cache_dir = new_cache;
    let third = back_up_now(&w, "manual-2").await;
    let cache3 = item(&third, "web", "cache");
    assert_eq!(
        cache3.parent_snapshot_id, cache2.common.snapshot_id,
        "{cache3:?}"
    );
    assert!(cache3.bytes_added.unwrap() < 100_000, "{cache3:?}");

    // 7. Retention ran after the session: keepLast 2 per volume.
    let retention = third
        .status
        .as_ref()
        .unwrap()
        .retention
        .clone()
        .expect("retention ran");
    assert_eq!(retention.phase, ItemPhase::Succeeded, "{retention:?}");
    // keepLast 2 with prune on (the default): forgotten data is pruned.
    assert!(retention.reclaimed_bytes.is_some(), "{retention:?}");
    let snaps = restic_snapshots(&w.restic);
    let mut per_host: BTreeMap<String, usize> = BTreeMap::new();
    for s in &snaps {
        *per_host
            .entry(s["hostname"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_host.len(), 3, "{per_host:?}");
    for (host, n) in &per_host {
        assert_eq!(*n, 2, "{host}: keepLast 2 keeps 2: {per_host:?}");
    }
    let ids: Vec<&str> = snaps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    for i in &third.status.as_ref().unwrap().items {
        assert!(
            ids.contains(&i.common.snapshot_id.as_deref().unwrap()),
            "the newest snapshot is kept"
        );
    }
    let repo: Repository = Api::namespaced(c.clone(), NS).get("main").await.unwrap();
    let rs = repo.status.expect("Repository status");
    assert_eq!(rs.snapshot_count, Some(6), "{rs:?}");
    assert!(rs.total_size.unwrap_or(0) > 96 << 20, "{rs:?}");

    // 4. A RestoreSession into a new pod on node-b, whose init container
    // (`stash restore-wait`) waits for the data.
    let restored_uid = {
        let pod: Pod = create(
            &c,
            None,
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "web-copy"},
                   "spec": {"nodeName": "node-b",
                            "initContainers": [{"name": "restore-wait", "image": "stash", "args": ["restore-wait", "--dir", "/cache"]}],
                            "containers": [{"name": "app", "image": "busybox"}],
                            "volumes": [{"name": "cache", "emptyDir": {}}]}}),
        )
        .await;
        set_pod_phase(&c, NS, "web-copy", "Pending").await;
        pod.uid().unwrap()
    };
    let copy_dir = w
        .node("node-b")
        .pod_volumes(&restored_uid)
        .join("kubernetes.io~empty-dir/cache");
    fs::create_dir_all(&copy_dir).unwrap();
    let mut wait = Command::new(env!("CARGO_BIN_EXE_stash"))
        .args(["restore-wait", "--dir"])
        .arg(&copy_dir)
        .args(["--timeout", "3m"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        wait.try_wait().unwrap().is_none(),
        "restore-wait must wait for the agent"
    );
    create::<RestoreSession>(
        &c,
        None,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession", "metadata": {"name": "copy"},
               "spec": {"repository": {"name": "main"}, "snapshot": "latest",
                        "source": {"namespace": NS, "name": "web"},
                        "target": {"pod": "web-copy"},
                        "volumes": [{"source": "cache", "target": "cache"}]}}),
    )
    .await;
    let restores: Api<RestoreSession> = Api::namespaced(c.clone(), NS);
    let start = Instant::now();
    let done = loop {
        let r = restores.get("copy").await.unwrap();
        if r.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "restore not finished: {:?}\n{}",
            r.status,
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let st = done.status.unwrap();
    assert_eq!(st.phase, SessionPhase::Succeeded, "{st:?}\n{}", w.logs());
    assert_eq!(st.items[0].common.snapshot_id, cache3.common.snapshot_id);
    assert!(st.items[0]
        .common
        .claim
        .claimed_by
        .as_deref()
        .unwrap()
        .starts_with("node-b/"));
    let out = tokio::task::spawn_blocking(move || wait.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "restore-wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !copy_dir.join(".stash-restore-done").exists(),
        "restore-wait removes the marker"
    );
    assert_trees_equal(
        &cache_dir,
        &copy_dir,
        &CompareOptions {
            check_root_metadata: false,
            ..CompareOptions::default()
        },
    );

    // 5. A BackupConfiguration in another namespace may not use this
    // namespace's Repository: refused, nothing scheduled.
    create::<BackupConfiguration>(
        &c,
        Some("other"),
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration", "metadata": {"name": "steal"},
               "spec": {"schedule": "*/5 * * * * *", "target": {"selector": {"matchLabels": {"app": "shop"}}},
                        "repository": {"name": "main", "namespace": NS}}}),
    )
    .await;
    let other: Api<BackupConfiguration> = Api::namespaced(c.clone(), "other");
    let start = Instant::now();
    loop {
        let cfg = other.get("steal").await.unwrap();
        let refused = cfg.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| {
                c.type_ == "Ready" && c.status == "False" && c.reason == "RepositoryNotAllowed"
            })
        });
        if refused {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not refused: {:?}",
            cfg.status
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let other_sessions: Api<BackupSession> = Api::namespaced(c.clone(), "other");
    let list = other_sessions
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert!(
        list.iter()
            .all(|s| s.status.as_ref().is_none_or(|st| st.items.is_empty())),
        "nothing may be backed up for namespace other: {list:?}"
    );

    // An item whose volume is not there yet waits, unclaimed, and says why.
    create::<PersistentVolumeClaim>(
        &c,
        None,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "unbound"},
               "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}, "storageClassName": ""}}),
    )
    .await;
    running_pod(
        &c,
        NS,
        "idle",
        "node-a",
        json!({"app": "idle"}),
        json!({"stash.rs/backup-volumes": "data"}),
        json!([{"name": "data", "persistentVolumeClaim": {"claimName": "unbound"}}]),
    )
    .await;
    create::<BackupConfiguration>(
        &c,
        None,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration", "metadata": {"name": "idle"},
               "spec": {"schedule": "@daily", "paused": true, "target": {"selector": {"matchLabels": {"app": "idle"}}},
                        "repository": {"name": "main"}}}),
    )
    .await;
    let mut idle = on_demand("idle-1");
    idle.spec.backup_configuration = "idle".into();
    idle.metadata.labels =
        Some([(stash_api::LABEL_CONFIGURATION.to_owned(), "idle".to_owned())].into());
    sessions
        .create(&PostParams::default(), &idle)
        .await
        .unwrap();
    let waiting = wait_session(
        &w,
        "idle",
        "the idle item to say why it waits",
        Duration::from_secs(30),
        |s| {
            s.status.as_ref().is_some_and(|st| {
                st.items.iter().any(|i| {
                    i.common
                        .claim
                        .message
                        .as_deref()
                        .is_some_and(|m| m.contains("not bound"))
                })
            })
        },
    )
    .await;
    let i = item(&waiting, "idle", "data");
    assert_eq!(i.common.phase, ItemPhase::Pending, "{i:?}");
    assert_eq!(i.common.claim.claimed_by, None);

    // The agents' metrics count what they did, per volume and repository.
    let log = w.nodes[0].log();
    let addr = log
        .lines()
        .find_map(|l| l.split("metrics=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no metrics address in the agent's log:\n{log}"))
        .to_owned();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let (code, body) = servers::http(port, "GET", "/metrics", "").expect("metrics answer");
    assert_eq!(code, 200);
    let line = body
        .lines()
        .find(|l| {
            l.starts_with("stash_agent_bytes_total{")
                && l.contains("shop/web/cache:/cache")
                && l.contains("kind=\"backup\"")
        })
        .unwrap_or_else(|| panic!("no byte counter for the cache volume:\n{body}"));
    let bytes: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(bytes >= 4_000_000.0, "{line}");
    assert!(body.contains("stash_agent_items_finished_total{"), "{body}");

    // The agents did all of this with their deploy/ RBAC: no refusal.
    for n in &w.nodes {
        let log = n.log();
        assert!(
            !log.contains("forbidden") && !log.contains("Forbidden"),
            "agent {} was refused something:\n{}",
            n.name,
            tail(&log, 40)
        );
    }

    // After everything, restic still finds the repository sound.
    check_read_data(&w.restic);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
}

/// The maintenance Leases the agents created in their namespace.
async fn maintenance_leases(c: &Client) -> Vec<Lease> {
    let api: Api<Lease> = Api::namespaced(c.clone(), "stash-system");
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|l| l.name_any().starts_with("stash-maintenance-"))
        .collect()
}

fn retention_of(s: &BackupSession) -> stash_api::RetentionStatus {
    s.status
        .as_ref()
        .and_then(|st| st.retention.clone())
        .unwrap_or_else(|| panic!("no retention in {:?}", s.status))
}

/// Issue 14, failure 4: on a repository two configurations share, one
/// maintenance run at a time (a Lease per repository), prune at most every
/// `pruneInterval`, and a backup waits for a running prune's exclusive lock
/// instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn maintenance_is_serialised_per_repository_and_pruned_at_most_every_interval() {
    let w = setup().await;
    let shutdown = CancellationToken::new();
    let controller = start_controller(w.client.clone(), shutdown.clone());
    let c = w.client.clone();
    let repos: Api<Repository> = Api::namespaced(c.clone(), NS);
    // The default interval: 24 h.
    repos
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maintenance": null}})),
        )
        .await
        .unwrap();
    let uid = running_pod(
        &c,
        NS,
        "app",
        "node-a",
        json!({"app": "tenant"}),
        json!({"stash.rs/backup-volumes": "data"}),
        json!([{"name": "data", "emptyDir": {}}]),
    )
    .await;
    let dir = w
        .nodes
        .iter()
        .find(|n| n.name == "node-a")
        .unwrap()
        .pod_volumes(&uid)
        .join("kubernetes.io~empty-dir/data");
    fs::create_dir_all(&dir).unwrap();
    for cfg in ["team-a", "team-b"] {
        create::<BackupConfiguration>(
            &c,
            None,
            json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration", "metadata": {"name": cfg},
                   "spec": {"schedule": "0 0 1 1 *", "target": {"selector": {"matchLabels": {"app": "tenant"}}},
                            "repository": {"name": "main"}, "retention": {"keepLast": 1}}}),
        )
        .await;
    }
    let sessions: Api<BackupSession> = Api::namespaced(c.clone(), NS);
    let mut n = 0u64;
    let mut run = |cfg: &'static str| {
        n += 1;
        write_random_file(&dir.join(format!("f{n}")), 300_000, n).unwrap();
        let name = format!("{cfg}-{n}");
        let s: BackupSession = serde_json::from_value(json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
            "metadata": {"name": name, "labels": {(stash_api::LABEL_CONFIGURATION): cfg}},
            "spec": {"backupConfiguration": cfg}
        }))
        .unwrap();
        let sessions = sessions.clone();
        async move {
            sessions.create(&PostParams::default(), &s).await.unwrap();
            name
        }
    };
    let done = |name: String| move |s: &BackupSession| s.name_any() == name && finished_ok(s);

    // 1. The first retention run on the repository prunes, and the Lease
    // records when.
    let name = run("team-a").await;
    let first = wait_session(
        &w,
        "team-a",
        "the first session",
        Duration::from_secs(90),
        done(name),
    )
    .await;
    let r = retention_of(&first);
    assert_eq!(r.pruned, Some(true), "{r:?}");
    assert!(r.reclaimed_bytes.is_some(), "{r:?}");
    let leases = maintenance_leases(&c).await;
    assert_eq!(leases.len(), 1, "one Lease per repository: {leases:?}");
    let lease = &leases[0];
    assert!(
        lease.spec.as_ref().unwrap().holder_identity.is_none(),
        "released: {lease:?}"
    );
    let annotations = lease.metadata.annotations.clone().unwrap_or_default();
    assert!(annotations.contains_key("stash.rs/last-prune"), "{lease:?}");
    assert_eq!(
        annotations
            .get("stash.rs/last-repository")
            .map(String::as_str),
        Some("shop/main")
    );
    let lease_name = lease.name_any();

    // 2. Another configuration's retention on the same repository
    // forgets, but does not prune again within the interval.
    let name = run("team-b").await;
    let second = wait_session(
        &w,
        "team-b",
        "the second session",
        Duration::from_secs(90),
        done(name),
    )
    .await;
    let r = retention_of(&second);
    assert_eq!(r.pruned, Some(false), "{r:?}");
    assert!(r.reclaimed_bytes.is_none(), "{r:?}");
    let msg = r.claim.message.clone().unwrap_or_default();
    assert!(msg.contains("not pruned: last pruned at"), "{msg}");
    assert!(msg.contains("pruneInterval 24h"), "{msg}");
    assert_eq!(
        r.removed,
        Some(0),
        "keepLast 1 of team-b's single snapshot: {r:?}"
    );

    // 3. While someone else holds the maintenance Lease, a retention run
    // waits for it (saying so), and runs once it is released.
    let leases_api: Api<Lease> = Api::namespaced(c.clone(), "stash-system");
    let held = stash_api::lease::take_or_renew(
        &leases_api,
        &lease_name,
        "test-holder",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert!(
        matches!(held, stash_api::lease::Attempt::Held(_)),
        "{held:?}"
    );
    let name = run("team-a").await;
    let waiting = wait_session(
        &w,
        "team-a",
        "the retention run to wait for the Lease",
        Duration::from_secs(90),
        |s| {
            s.name_any() == name
                && s.status
                    .as_ref()
                    .and_then(|st| st.retention.as_ref())
                    .is_some_and(|r| {
                        r.claim.message.as_deref().unwrap_or_default().contains(
                            "waiting for the maintenance run of test-holder on this repository",
                        )
                    })
        },
    )
    .await;
    assert_eq!(retention_of(&waiting).phase, ItemPhase::Running);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let still = sessions.get(&name).await.unwrap();
    assert_eq!(
        retention_of(&still).phase,
        ItemPhase::Running,
        "{:?}",
        still.status
    );
    assert!(
        stash_api::lease::release(&leases_api, &lease_name, "test-holder", |_| {})
            .await
            .unwrap()
    );
    let third = wait_session(
        &w,
        "team-a",
        "the waiting retention to finish",
        Duration::from_secs(60),
        done(name),
    )
    .await;
    let r = retention_of(&third);
    assert_eq!(r.removed, Some(1), "team-a keeps 1 of its 2: {r:?}");
    assert_eq!(r.pruned, Some(false), "{r:?}");

    // 4. A backup waits for an exclusive lock (a prune elsewhere) as long
    // as its holder refreshes it, and completes once it is gone.
    let repo = repos.get("main").await.unwrap();
    let url = repo.spec.url.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = tokio::task::spawn_blocking(move || {
        let repo = tenant_repository(&url);
        let lock = repo_format::repository::lock::RepoLock::acquire(repo, true).unwrap();
        held_tx.send(()).unwrap();
        rx.recv().unwrap();
        drop(lock);
    });
    held_rx.await.unwrap();
    let name = run("team-b").await;
    let waited_from = Instant::now();
    let blocked = wait_session(
        &w,
        "team-b",
        "the backup to start",
        Duration::from_secs(60),
        |s| {
            s.name_any() == name
                && s.status.as_ref().is_some_and(|st| {
                    st.items
                        .iter()
                        .any(|i| i.common.phase == ItemPhase::Running)
                })
        },
    )
    .await;
    assert!(blocked.status.as_ref().unwrap().retention.is_none());
    tokio::time::sleep(Duration::from_secs(8)).await;
    let s = sessions.get(&name).await.unwrap();
    let i = &s.status.as_ref().unwrap().items[0];
    assert_eq!(
        i.common.phase,
        ItemPhase::Running,
        "waits for the lock: {i:?}"
    );
    assert!(i.common.bytes_done.unwrap_or(0) == 0, "{i:?}");
    tx.send(()).unwrap();
    holder.await.unwrap();
    let fourth = wait_session(
        &w,
        "team-b",
        "the backup after the lock",
        Duration::from_secs(60),
        done(name),
    )
    .await;
    assert!(waited_from.elapsed() > Duration::from_secs(8));
    assert!(
        w.logs().contains("waiting for the repository lock"),
        "{}",
        w.logs()
    );
    assert_eq!(retention_of(&fourth).phase, ItemPhase::Succeeded);
    check_read_data(&w.restic);

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
}

/// Opens the World's repository with repo-format, as a tenant holding the
/// password could (blocking: call from a blocking thread).
fn tenant_repository(url: &str) -> std::sync::Arc<repo_format::Repository> {
    let creds = repo_format::backend::object_store::Credentials::from_env(|k| match k {
        "AWS_ACCESS_KEY_ID" => Some(servers::MINIO_USER.to_owned()),
        "AWS_SECRET_ACCESS_KEY" => Some(servers::MINIO_PASSWORD.to_owned()),
        _ => None,
    });
    let location = repo_format::backend::Location::parse(url).unwrap();
    let backend = repo_format::backend::open(
        &location,
        &repo_format::backend::OpenOptions {
            credentials: creds,
            ..Default::default()
        },
    )
    .unwrap();
    std::sync::Arc::new(repo_format::Repository::open(backend, PASSWORD.as_bytes()).unwrap())
}

/// Issue 14, failure 5: a volume built to crash its reader (a directory
/// chain deeper than any stack) and a repository holding a poison snapshot
/// file (a zstd bomb) fail or degrade only their own work, with the reason;
/// the agent process survives and the other items complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_volumes_and_snapshots_cost_only_their_own_work_never_the_agent() {
    let mut w = setup().await;
    let shutdown = CancellationToken::new();
    let controller = start_controller(w.client.clone(), shutdown.clone());
    let c = w.client.clone();
    let mut dirs = Vec::new();
    for pod in ["deep", "plain"] {
        let uid = running_pod(
            &c,
            NS,
            pod,
            "node-a",
            json!({"app": "mixed"}),
            json!({"stash.rs/backup-volumes": "data"}),
            json!([{"name": "data", "emptyDir": {}}]),
        )
        .await;
        let d = w
            .node("node-a")
            .pod_volumes(&uid)
            .join("kubernetes.io~empty-dir/data");
        fs::create_dir_all(&d).unwrap();
        for i in 0..5u64 {
            write_random_file(&d.join(format!("f{i}")), 100_000, i).unwrap();
        }
        dirs.push(d);
    }
    // Deeper than any stack took before the bound (about 1 000 levels in a
    // debug build): created through fds, as the path outgrows PATH_MAX.
    let levels = repo_format::ops::depth::MAX_DEPTH + 200;
    {
        use std::os::fd::AsRawFd;
        let mut cur = fs::File::open(&dirs[0]).unwrap();
        for _ in 0..levels {
            let here = format!("/proc/self/fd/{}", cur.as_raw_fd());
            fs::create_dir(format!("{here}/d")).unwrap();
            cur = fs::File::open(format!("{here}/d")).unwrap();
        }
    }
    create::<BackupConfiguration>(
        &c,
        None,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration", "metadata": {"name": "mixed"},
               "spec": {"schedule": "0 0 1 1 *", "target": {"selector": {"matchLabels": {"app": "mixed"}}},
                        "repository": {"name": "main"}}}),
    )
    .await;
    let sessions: Api<BackupSession> = Api::namespaced(c.clone(), NS);
    let session = |name: &str| {
        serde_json::from_value::<BackupSession>(json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
            "metadata": {"name": name, "labels": {(stash_api::LABEL_CONFIGURATION): "mixed"}},
            "spec": {"backupConfiguration": "mixed"}
        }))
        .unwrap()
    };
    sessions
        .create(&PostParams::default(), &session("mixed-1"))
        .await
        .unwrap();
    let first = wait_session(&w, "mixed", "mixed-1", Duration::from_secs(300), |s| {
        s.name_any() == "mixed-1" && finished_ok(s)
    })
    .await;
    assert!(w.node("node-a").agent_running(), "{}", w.logs());
    let deep = item(&first, "deep", "data");
    let msg = deep.common.claim.message.clone().unwrap_or_default();
    assert!(msg.contains("deeper than"), "the cut is reported: {deep:?}");
    assert!(item(&first, "plain", "data").common.snapshot_id.is_some());

    // A tenant holding the password writes a snapshot file that inflates
    // to 300 MiB.
    let repo: Repository = Api::namespaced(c.clone(), NS).get("main").await.unwrap();
    let url = repo.spec.url.clone();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let r = tenant_repository(&url);
        let mut z = vec![2u8];
        zstd::stream::copy_encode(std::io::repeat(0).take(300 << 20), &mut z, 1).unwrap();
        let ct = r.key().encrypt(&z);
        r.backend()
            .write(
                repo_format::FileType::Snapshot,
                &repo_format::Id::hash(&ct).to_hex(),
                &ct,
            )
            .unwrap();
    })
    .await
    .unwrap();
    sessions
        .create(&PostParams::default(), &session("mixed-2"))
        .await
        .unwrap();
    let second = wait_session(&w, "mixed", "mixed-2", Duration::from_secs(300), |s| {
        s.name_any() == "mixed-2" && finished_ok(s)
    })
    .await;
    assert!(w.node("node-a").agent_running(), "{}", w.logs());
    // The parent is still found past the poison file: little is added.
    let plain = item(&second, "plain", "data");
    assert_eq!(
        plain.parent_snapshot_id,
        item(&first, "plain", "data").common.snapshot_id,
        "{plain:?}"
    );
    assert!(w.logs().contains("skipping a snapshot that cannot be read"));
    assert!(!w.logs().contains("overflowed its stack"), "{}", w.logs());

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
}

/// Polls `get` until `pred` holds, for at most `timeout`.
async fn wait_for<T: std::fmt::Debug>(
    w: &World,
    what: &str,
    timeout: Duration,
    mut get: impl AsyncFnMut() -> T,
    pred: impl Fn(&T) -> bool,
) -> T {
    let start = Instant::now();
    loop {
        let v = get().await;
        if pred(&v) {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}: {v:?}\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Issue 12, hole 6, against the real apiserver: a tenant who may patch
/// session status rewrites an item's `host` (a backup) or `sourceHosts` (a
/// restore) to another workload's snapshot identity. The agent derives
/// both from the pod and the spec, so the snapshot written keeps the
/// attacker's identity and the restore reads only the attacker's own
/// snapshots.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tampered_item_status_never_chooses_the_snapshot_identity() {
    let mut w = setup().await;
    let shutdown = CancellationToken::new();
    let controller = start_controller(w.client.clone(), shutdown.clone());
    let c = w.client.clone();
    let sessions: Api<BackupSession> = Api::namespaced(c.clone(), NS);
    let session = |name: &str, cfg: &str| {
        serde_json::from_value::<BackupSession>(json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
            "metadata": {"name": name, "labels": {(stash_api::LABEL_CONFIGURATION): cfg}},
            "spec": {"backupConfiguration": cfg}
        }))
        .unwrap()
    };
    for (cfg, app) in [("victim", "victim"), ("attacker", "attacker")] {
        create::<BackupConfiguration>(
            &c,
            None,
            json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration", "metadata": {"name": cfg},
                   "spec": {"schedule": "0 0 1 1 *", "target": {"selector": {"matchLabels": {"app": app}}},
                            "repository": {"name": "main"}}}),
        )
        .await;
    }
    // The victim's snapshot.
    let victim_uid = running_pod(
        &c,
        NS,
        "victim",
        "node-a",
        json!({"app": "victim"}),
        json!({"stash.rs/backup-volumes": "data"}),
        json!([{"name": "data", "emptyDir": {}}]),
    )
    .await;
    let victim_dir = w
        .node("node-a")
        .pod_volumes(&victim_uid)
        .join("kubernetes.io~empty-dir/data");
    fs::create_dir_all(&victim_dir).unwrap();
    fs::write(victim_dir.join("secret.txt"), b"the victim's data").unwrap();
    sessions
        .create(&PostParams::default(), &session("victim-1", "victim"))
        .await
        .unwrap();
    let v = wait_session(&w, "victim", "victim-1", Duration::from_secs(90), |s| {
        s.name_any() == "victim-1" && finished_ok(s)
    })
    .await;
    let victim_host = item(&v, "victim", "data").host.clone().unwrap();

    // The attacker's pod is not running yet, so its item waits.
    let attacker: Pod = create(
        &c,
        None,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "attacker", "labels": {"app": "attacker"},
                            "annotations": {"stash.rs/backup-volumes": "data"}},
               "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "busybox"}],
                        "volumes": [{"name": "data", "emptyDir": {}}]}}),
    )
    .await;
    set_pod_phase(&c, NS, "attacker", "Pending").await;
    let attacker_dir = w
        .node("node-a")
        .pod_volumes(&attacker.uid().unwrap())
        .join("kubernetes.io~empty-dir/data");
    fs::create_dir_all(&attacker_dir).unwrap();
    fs::write(attacker_dir.join("mine.txt"), b"the attacker's data").unwrap();
    sessions
        .create(&PostParams::default(), &session("attacker-1", "attacker"))
        .await
        .unwrap();
    let waiting = wait_session(
        &w,
        "attacker",
        "the attacker's item to wait",
        Duration::from_secs(60),
        |s| {
            s.name_any() == "attacker-1"
                && s.status.as_ref().is_some_and(|st| {
                    st.items.iter().any(|i| {
                        i.common
                            .claim
                            .message
                            .as_deref()
                            .unwrap_or_default()
                            .contains("not Running")
                    })
                })
        },
    )
    .await;
    let own_host = item(&waiting, "attacker", "data").host.clone().unwrap();
    assert_ne!(own_host, victim_host);
    // The tenant rewrites the item's host to the victim's identity.
    sessions
        .patch_status(
            "attacker-1",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "test", "path": "/status/items/0/pod", "value": "attacker"},
                    {"op": "replace", "path": "/status/items/0/host", "value": victim_host},
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    set_pod_phase(&c, NS, "attacker", "Running").await;
    let a = wait_session(&w, "attacker", "attacker-1", Duration::from_secs(90), |s| {
        s.name_any() == "attacker-1" && finished_ok(s)
    })
    .await;
    let written = item(&a, "attacker", "data")
        .common
        .snapshot_id
        .clone()
        .unwrap();
    let snaps = restic_snapshots(&w.restic);
    let snap = snaps
        .iter()
        .find(|s| s["id"].as_str() == Some(written.as_str()))
        .expect("the attacker's snapshot");
    assert_eq!(snap["hostname"].as_str(), Some(own_host.as_str()), "{snap}");
    let victims = snaps
        .iter()
        .filter(|s| s["hostname"].as_str() == Some(victim_host.as_str()))
        .count();
    assert_eq!(
        victims, 1,
        "nothing added under the victim's identity: {snaps:?}"
    );

    // A restore of the attacker's own workload, whose item's sourceHosts the
    // tenant rewrites to the victim's, before the target volume is there.
    let copy: Pod = create(
        &c,
        None,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "attacker-copy"},
               "spec": {"nodeName": "node-a", "containers": [{"name": "app", "image": "busybox"}],
                        "volumes": [{"name": "data", "emptyDir": {}}]}}),
    )
    .await;
    set_pod_phase(&c, NS, "attacker-copy", "Running").await;
    create::<RestoreSession>(
        &c,
        None,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession", "metadata": {"name": "steal"},
               "spec": {"repository": {"name": "main"}, "snapshot": "latest",
                        "source": {"namespace": NS, "name": "attacker"},
                        "target": {"pod": "attacker-copy"},
                        "volumes": [{"source": "data", "target": "data"}]}}),
    )
    .await;
    let restores: Api<RestoreSession> = Api::namespaced(c.clone(), NS);
    let r = wait_for(
        &w,
        "the restore item to wait for its volume",
        Duration::from_secs(60),
        async || restores.get("steal").await.unwrap(),
        |r| {
            r.status.as_ref().is_some_and(|st| {
                st.items.iter().any(|i| {
                    i.common
                        .claim
                        .message
                        .as_deref()
                        .unwrap_or_default()
                        .contains("not mounted")
                })
            })
        },
    )
    .await;
    let sources = r.status.as_ref().unwrap().items[0].source_hosts.clone();
    assert!(
        sources.contains(&own_host) && !sources.contains(&victim_host),
        "the controller's source: {sources:?}"
    );
    restores
        .patch_status(
            "steal",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "test", "path": "/status/items/0/pod", "value": "attacker-copy"},
                    {"op": "replace", "path": "/status/items/0/sourceHosts", "value": [victim_host]},
                ]))
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    let copy_dir = w
        .node("node-a")
        .pod_volumes(&copy.uid().unwrap())
        .join("kubernetes.io~empty-dir/data");
    fs::create_dir_all(&copy_dir).unwrap();
    let done = wait_for(
        &w,
        "the restore to finish",
        Duration::from_secs(90),
        async || restores.get("steal").await.unwrap(),
        |r| r.status.as_ref().is_some_and(|s| s.phase.is_finished()),
    )
    .await;
    let st = done.status.unwrap();
    assert_eq!(st.phase, SessionPhase::Succeeded, "{st:?}");
    assert_eq!(
        st.items[0].common.snapshot_id.as_deref(),
        Some(written.as_str())
    );
    assert_eq!(
        fs::read(copy_dir.join("mine.txt")).unwrap(),
        b"the attacker's data"
    );
    assert!(
        !copy_dir.join("secret.txt").exists(),
        "the victim's data must not be restored"
    );

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
}

/// The check run of Repository `main`, as last read.
async fn check_run(c: &Client) -> Repository {
    Api::<Repository>::namespaced(c.clone(), NS)
        .get("main")
        .await
        .unwrap()
}

fn run_of(r: &Repository) -> Option<&stash_api::check::CheckRun> {
    r.status.as_ref().and_then(|s| s.check.as_ref())
}

/// Asks for a check of `main` now (a new `stash.rs/check-now` value) and
/// waits until it is recorded.
async fn check_now(w: &World, value: &str, timeout: Duration) -> Repository {
    Api::<Repository>::namespaced(w.client.clone(), NS)
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {(stash_api::check::CHECK_NOW): value}}}),
            ),
        )
        .await
        .unwrap();
    let c = w.client.clone();
    wait_for(
        w,
        &format!("check {value} to be recorded"),
        timeout,
        async || check_run(&c).await,
        |r| {
            run_of(r).is_some_and(|run| run.request.as_deref() == Some(value) && run.is_finished())
                && r.status.as_ref().unwrap().last_check_time
                    == run_of(r).and_then(|run| run.end_time.clone())
        },
    )
    .await
}

/// Issue 17, scheduled checks: a check asked for on a Repository is taken
/// by one agent (with the permissions deploy/ gives it), waits while
/// another maintenance run holds the repository's Lease (a check never
/// overlaps a prune), reads the data subset, and reports damage in the
/// status and an Event, as restic's own check does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checks_run_on_an_agent_never_beside_maintenance_and_report_damage() {
    let w = setup().await;
    let shutdown = CancellationToken::new();
    let (controller, controller_metrics) =
        start_controller_serving(w.client.clone(), shutdown.clone()).await;
    let c = w.client.clone();
    // A snapshot made by restic, of data that does not compress away.
    let data = w.base.join("data");
    fs::create_dir_all(&data).unwrap();
    for i in 0..4u64 {
        write_random_file(&data.join(format!("f{i}")), 2_000_000, i).unwrap();
    }
    w.restic.backup_contents(&data, &[]);
    let repos: Api<Repository> = Api::namespaced(c.clone(), NS);
    repos
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"check": {"readDataSubset": "100%"}}})),
        )
        .await
        .unwrap();

    // 1. A healthy repository passes; one agent ran it and read every pack.
    let r = check_now(&w, "1", Duration::from_secs(90)).await;
    let st = r.status.clone().unwrap();
    let run = st.check.clone().unwrap();
    assert_eq!(
        st.last_check_result.as_deref(),
        Some("Passed"),
        "{run:?}\n{}",
        w.logs()
    );
    assert_eq!(run.phase, ItemPhase::Succeeded);
    assert_eq!(run.snapshots, Some(1), "{run:?}");
    assert_eq!(run.error_count, Some(0), "{run:?}");
    assert!(run.packs_read.unwrap_or(0) >= 1, "{run:?}");
    assert_eq!(run.read_data_subset.as_deref(), Some("100%"));
    let node = run.node.clone().unwrap();
    assert!(["node-a", "node-b"].contains(&node.as_str()), "{run:?}");
    assert!(
        run.claim
            .claimed_by
            .as_deref()
            .unwrap_or("")
            .starts_with(&node),
        "{run:?}"
    );
    assert!(!r.labels().contains_key(stash_api::check::CHECK_LABEL));
    // The check took the repository's maintenance Lease, and released it.
    let leases = maintenance_leases(&c).await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    let lease_name = leases[0].name_any();
    assert!(leases[0].spec.as_ref().unwrap().holder_identity.is_none());

    // 2. While a maintenance run holds the Lease, the check waits, saying
    // so, and runs once it is released.
    let leases_api: Api<Lease> = Api::namespaced(c.clone(), "stash-system");
    let held = stash_api::lease::take_or_renew(
        &leases_api,
        &lease_name,
        "test-holder",
        Duration::from_secs(3600),
    )
    .await
    .unwrap();
    assert!(
        matches!(held, stash_api::lease::Attempt::Held(_)),
        "{held:?}"
    );
    repos
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {(stash_api::check::CHECK_NOW): "2"}}}),
            ),
        )
        .await
        .unwrap();
    let waiting = wait_for(
        &w,
        "the check to wait for the Lease",
        Duration::from_secs(60),
        async || check_run(&c).await,
        |r| {
            run_of(r).is_some_and(|run| {
                run.request.as_deref() == Some("2")
                    && run.phase == ItemPhase::Running
                    && run.claim.message.as_deref().unwrap_or("").contains(
                        "waiting for the maintenance run of test-holder on this repository",
                    )
            })
        },
    )
    .await;
    assert!(run_of(&waiting).unwrap().end_time.is_none());
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        run_of(&check_run(&c).await).unwrap().phase,
        ItemPhase::Running
    );
    assert!(
        stash_api::lease::release(&leases_api, &lease_name, "test-holder", |_| {})
            .await
            .unwrap()
    );
    let c2 = c.clone();
    let r = wait_for(
        &w,
        "the waiting check to pass",
        Duration::from_secs(60),
        async || check_run(&c2).await,
        |r| {
            r.status
                .as_ref()
                .and_then(|s| s.check.as_ref())
                .is_some_and(|run| run.request.as_deref() == Some("2") && run.is_finished())
        },
    )
    .await;
    assert_eq!(
        run_of(&r).unwrap().phase,
        ItemPhase::Succeeded,
        "{}",
        w.logs()
    );

    // 3. A damaged pack: the next check fails naming it, as restic's does.
    let url = r.spec.url.clone();
    let damaged = tokio::task::spawn_blocking(move || {
        let repo = tenant_repository(&url);
        let b = repo.backend();
        let mut packs = b.list(repo_format::FileType::Pack).unwrap();
        packs.sort_by_key(|p| std::cmp::Reverse(p.size));
        let name = packs[0].name.clone();
        let mut bytes = b.read(repo_format::FileType::Pack, &name).unwrap();
        let mid = bytes.len() / 3;
        bytes[mid] ^= 0xff;
        b.write(repo_format::FileType::Pack, &name, &bytes).unwrap();
        name
    })
    .await
    .unwrap();
    let out = w.restic.run(["check", "--read-data"]);
    assert!(!out.status.success(), "restic finds the damage too");
    let r = check_now(&w, "3", Duration::from_secs(90)).await;
    let st = r.status.clone().unwrap();
    let run = st.check.clone().unwrap();
    assert_eq!(st.last_check_result.as_deref(), Some("Failed"), "{run:?}");
    assert!(run.error_count.unwrap_or(0) >= 1, "{run:?}");
    let error = run.error.clone().unwrap_or_default();
    assert!(
        error.contains(&damaged[..8]),
        "names pack {damaged}: {error}"
    );
    let events = Api::<k8s_openapi::api::events::v1::Event>::namespaced(c.clone(), NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    let reasons: Vec<(String, String)> = events
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|o| o.kind.as_deref()) == Some("Repository"))
        .map(|e| {
            (
                e.reason.clone().unwrap_or_default(),
                e.note.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        reasons.iter().any(|(r, _)| r == "CheckPassed"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(r, n)| r == "CheckFailed" && n.contains(&damaged[..8])),
        "{reasons:?}"
    );

    // 4. A backup, so that the backup series exist too.
    let uid = running_pod(
        &c,
        NS,
        "app",
        "node-a",
        json!({"app": "tenant"}),
        json!({"stash.rs/backup-volumes": "data"}),
        json!([{"name": "data", "emptyDir": {}}]),
    )
    .await;
    let vol = w
        .nodes
        .iter()
        .find(|n| n.name == "node-a")
        .unwrap()
        .pod_volumes(&uid)
        .join("kubernetes.io~empty-dir/data");
    fs::create_dir_all(&vol).unwrap();
    write_random_file(&vol.join("f"), 100_000, 7).unwrap();
    create::<BackupConfiguration>(
        &c,
        None,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration", "metadata": {"name": "nightly"},
               "spec": {"schedule": "0 3 * * *", "target": {"selector": {"matchLabels": {"app": "tenant"}}},
                        "repository": {"name": "main"}}}),
    )
    .await;
    back_up_now(&w, "now-1").await;

    // 5. A real Prometheus scraping the agents and the controller, with
    // deploy/monitoring/'s rules: the series the rules and every panel of
    // the dashboard use exist with their labels, and the failed check
    // raises StashRepositoryCheckFailed.
    let agents: Vec<String> = w.nodes.iter().map(agent_metrics_addr).collect();
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         rule_files: [rules.yaml]\n\
         scrape_configs:\n\
         - job_name: stash-system/stash-agent\n  static_configs: [{{targets: [{}]}}]\n\
         - job_name: stash-system/stash-controller\n  static_configs: [{{targets: ['{controller_metrics}']}}]\n",
        agents.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ")
    );
    let prom = servers::prometheus(&config, &[("rules.yaml", &monitoring_rules())]);
    let port = prom.port;
    let query = |q: &'static str, want: usize| {
        let w = &w;
        async move {
            let start = Instant::now();
            loop {
                let got = tokio::task::spawn_blocking(move || servers::prometheus_query(port, q))
                    .await
                    .unwrap()
                    .unwrap_or_default();
                if got.len() >= want {
                    return got;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "{q}: {got:?} after 60 s\n{}",
                    w.logs()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let up = query(r#"up{job="stash-system/stash-agent"} == 1"#, 2).await;
    assert_eq!(up.len(), 2, "{up:?}");
    let checked = query(
        r#"stash_agent_items_finished_total{kind="check",repository="shop/main"}"#,
        1,
    )
    .await;
    assert!(
        checked
            .iter()
            .any(|(l, _)| l.get("result").map(String::as_str) == Some("failed")),
        "{checked:?}"
    );
    let passed = query(
        r#"stash_controller_repository_check_passed{namespace="shop",repository="main"}"#,
        1,
    )
    .await;
    assert_eq!(passed[0].1, "0", "{passed:?}");
    query(r#"stash_controller_leader == 1"#, 1).await;
    let firing = query(
        r#"ALERTS{alertname="StashRepositoryCheckFailed",alertstate="firing"}"#,
        1,
    )
    .await;
    assert_eq!(
        firing[0].0.get("repository").map(String::as_str),
        Some("main"),
        "{firing:?}"
    );
    let dashboard: Value = serde_json::from_str(
        &fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/monitoring/grafana-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr: &'static str =
                Box::leak(t["expr"].as_str().unwrap().to_owned().into_boxed_str());
            let got = query(expr, 1).await;
            // Every label the legend names is on the result.
            let legend = t["legendFormat"].as_str().unwrap_or_default();
            for label in legend
                .split("{{")
                .skip(1)
                .filter_map(|x| x.split_once("}}"))
            {
                assert!(
                    got.iter().all(|(l, _)| l.contains_key(label.0)),
                    "panel {:?}: {expr} has no label {} in {got:?}",
                    p["title"],
                    label.0
                );
            }
        }
    }
    drop(prom);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
}

/// Every file of the repository at `url` with its SHA-256, `locks/`
/// included (blocking).
fn repository_checksums(url: &str) -> Vec<(String, String)> {
    use repo_format::FileType;
    use sha2::Digest;
    let repo = tenant_repository(url);
    let b = repo.backend();
    let mut out = vec![(
        "config".to_owned(),
        hex::encode(sha2::Sha256::digest(
            b.read(FileType::Config, "config").unwrap(),
        )),
    )];
    for t in [
        FileType::Key,
        FileType::Lock,
        FileType::Snapshot,
        FileType::Index,
        FileType::Pack,
    ] {
        for f in b.list(t).unwrap() {
            let sum = hex::encode(sha2::Sha256::digest(b.read(t, &f.name).unwrap()));
            out.push((format!("{}/{}", t.dirname(), f.name), sum));
        }
    }
    out.sort();
    out
}

/// Issue 19: a Repository adopted from K8up (`spec.adopt.from: k8up`).
/// K8up's own layout is made with real restic as K8up's pod runs it
/// (hostname = namespace, one path `/data/<pvc>`), two namespaces and two
/// points in time. A RestoreSession chooses a claim and a time with
/// `spec.adopted` and gets exactly that version into a pod's volume; a
/// BackupConfiguration naming the adopted Repository is refused; another
/// namespace's source is refused; the repository is byte-for-byte the same
/// afterwards, with no lock left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_adopted_k8up_repository_is_restored_by_identity_and_never_written() {
    let w = setup().await;
    let shutdown = CancellationToken::new();
    let controller = start_controller(w.client.clone(), shutdown.clone());
    let c = w.client.clone();
    let repos: Api<Repository> = Api::namespaced(c.clone(), NS);
    let main_url = repos.get("main").await.unwrap().spec.url;
    let url = main_url.replace("/e2e/repo", "/e2e/k8up");
    let restic = Restic::new(url.clone(), w.base.join("restic-password"))
        .with_bin(servers::bin("restic"))
        .with_env("AWS_ACCESS_KEY_ID", servers::MINIO_USER)
        .with_env("AWS_SECRET_ACCESS_KEY", servers::MINIO_PASSWORD)
        .with_cache_dir(w.base.join("restic-cache"))
        .with_env("TZ", "UTC");
    restic.init(2);
    // Two generations of two claims in shop and one in bank.
    let times = ["2026-01-05 02:00:00", "2026-02-05 02:00:00"];
    for (g, time) in times.iter().enumerate() {
        for (ns, pvc) in [("shop", "db-data"), ("shop", "uploads"), ("bank", "ledger")] {
            let src = w.base.join(format!("k8up/{ns}/{pvc}/{g}"));
            fs::create_dir_all(src.join("sub")).unwrap();
            write_random_file(
                &src.join("sub/data.bin"),
                500_000,
                g as u64 * 10 + pvc.len() as u64,
            )
            .unwrap();
            fs::write(src.join("generation"), format!("{pvc} {g}\n")).unwrap();
            let at = format!("/data/{pvc}");
            restic.backup_in_mount_namespace(
                &w.base.join("pod-root"),
                &[(&src, &at)],
                "/",
                &["--host", ns, "--tag", "daily", "--time", time, &at],
            );
        }
    }
    let before = {
        let url = url.clone();
        tokio::task::spawn_blocking(move || repository_checksums(&url))
            .await
            .unwrap()
    };
    create::<Repository>(
        &c,
        None,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository", "metadata": {"name": "k8up"},
               "spec": {"url": url, "credentialsSecret": "repo-creds", "passwordSecret": {"name": "repo-password"},
                        "adopt": {"from": "k8up"}}}),
    )
    .await;
    // The schema: an adopted repository cannot be made writable.
    let writable: Result<Repository, _> = Api::namespaced(c.clone(), NS)
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
                "metadata": {"name": "k8up-rw"},
                "spec": {"url": "s3:h/b", "passwordSecret": {"name": "repo-password"},
                         "adopt": {"from": "k8up"}, "readOnly": false}}),
            )
            .unwrap(),
        )
        .await;
    let e = writable.expect_err("readOnly: false with adopt is refused");
    assert!(
        e.to_string().contains("an adopted repository is read-only"),
        "{e}"
    );

    // A backup into it is refused, with the reason.
    create::<BackupConfiguration>(
        &c,
        None,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration", "metadata": {"name": "into-k8up"},
               "spec": {"schedule": "0 0 1 1 *", "target": {"selector": {"matchLabels": {"app": "none"}}},
                        "repository": {"name": "k8up"}}}),
    )
    .await;
    let configs: Api<BackupConfiguration> = Api::namespaced(c.clone(), NS);
    let refused = wait_for(
        &w,
        "the configuration into the adopted repository to be refused",
        Duration::from_secs(30),
        async || configs.get("into-k8up").await.unwrap(),
        |cfg| {
            cfg.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "RepositoryReadOnly")
            })
        },
    )
    .await;
    let st = refused.status.unwrap();
    let msg = &st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(msg.contains("adopted from K8up"), "{msg}");

    // The target: a pod on node-b with an emptyDir.
    let uid = running_pod(
        &c,
        NS,
        "restored",
        "node-b",
        json!({"app": "restored"}),
        json!({}),
        json!([{"name": "data", "emptyDir": {}}]),
    )
    .await;
    let dir = w
        .nodes
        .iter()
        .find(|n| n.name == "node-b")
        .unwrap()
        .pod_volumes(&uid)
        .join("kubernetes.io~empty-dir/data");
    fs::create_dir_all(&dir).unwrap();
    let restores: Api<RestoreSession> = Api::namespaced(c.clone(), NS);
    let restore = |name: &str, adopted: Value| {
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession", "metadata": {"name": name},
               "spec": {"repository": {"name": "k8up"}, "adopted": adopted,
                        "before": "2026-01-20T00:00:00Z",
                        "target": {"pod": "restored"}, "volumes": [{"source": "db-data", "target": "data"}]}})
    };
    // A field K8up never records (a pod): refused with the reason. (A
    // source in another namespace needs a Repository of the session's own
    // namespace: unit-tested in stash-api.)
    create::<RestoreSession>(&c, None, restore("by-pod", json!({"pod": "db-0"}))).await;
    let r = wait_for(
        &w,
        "the restore naming a pod to be refused",
        Duration::from_secs(30),
        async || restores.get("by-pod").await.unwrap(),
        |r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.phase == SessionPhase::Failed)
        },
    )
    .await;
    let why = format!("{:?}", r.status.unwrap().conditions);
    assert!(why.contains("K8up"), "{why}");

    create::<RestoreSession>(
        &c,
        None,
        restore("january", json!({"persistentVolumeClaim": "db-data"})),
    )
    .await;
    let done = wait_for(
        &w,
        "the adopted restore to finish",
        Duration::from_secs(90),
        async || restores.get("january").await.unwrap(),
        |r| r.status.as_ref().is_some_and(|s| s.phase.is_finished()),
    )
    .await;
    assert_eq!(
        done.status.as_ref().unwrap().phase,
        SessionPhase::Succeeded,
        "{:?}\n{}",
        done.status,
        w.logs()
    );
    // Exactly the January version of shop's db-data (and the marker that
    // releases pods waiting for the restore).
    let marker = dir.join(format!(".stash-restore-done.{}", done.uid().unwrap()));
    assert!(marker.exists(), "{marker:?}");
    fs::remove_file(&marker).unwrap();
    assert_trees_equal(
        &w.base.join("k8up/shop/db-data/0"),
        &dir,
        &CompareOptions {
            check_root_metadata: false,
            ..CompareOptions::default()
        },
    );
    // Nothing was written to the adopted repository, and no lock is left.
    let after = tokio::task::spawn_blocking(move || repository_checksums(&url))
        .await
        .unwrap();
    assert_eq!(before, after, "the adopted repository changed");
    assert!(
        !after.iter().any(|(f, _)| f.starts_with("locks/")),
        "{after:?}"
    );
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
}

/// The address the agent of `n` serves its metrics on, from its log.
fn agent_metrics_addr(n: &Node) -> String {
    let log = n.log();
    let line = log
        .lines()
        .find(|l| l.contains("agent started"))
        .unwrap_or_else(|| panic!("no start line in the log of {}:\n{log}", n.name));
    let at = line
        .split_whitespace()
        .find_map(|t| t.strip_prefix("metrics="))
        .unwrap_or_else(|| panic!("no metrics= in {line:?}"));
    at.trim_matches('"').to_owned()
}

/// `deploy/monitoring/prometheus-rule.yaml`'s `spec` (its rule groups) as a
/// plain Prometheus rules file.
fn monitoring_rules() -> String {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring/prometheus-rule.yaml");
    let rule: serde_yaml::Value =
        serde_yaml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    serde_yaml::to_string(&rule["spec"]).unwrap()
}

/// Issue 17: `promtool` finds deploy/monitoring/'s rules valid, and its
/// unit tests (`tests.yaml`) of every alert pass: a failed backup, no
/// success for twice the schedule's interval, a failed check, an agent
/// down, no controller leading.
#[test]
fn monitoring_rules_pass_promtool_check_and_their_tests() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("rules.yaml"), monitoring_rules()).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring/tests.yaml"),
        dir.path().join("tests.yaml"),
    )
    .unwrap();
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "tests.yaml"],
    ] {
        let out = Command::new(servers::promtool())
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
