//! End to end on a real node: `stash_envtest::Cluster` (etcd,
//! kube-apiserver, kube-controller-manager, kube-scheduler, and one node with
//! containerd, runc, the CNI bridge, the kubelet and kube-proxy, all built
//! from source), Stash installed with `kubectl apply -k` of `deploy/` (an
//! overlay in this directory sets what a user of this cluster would: the
//! kubelet root, the hostPath allow-list, shorter takeover times), the agent
//! and controller images built by `hack/images.sh` from the cargo-built
//! binaries, MinIO as the repository and restic as the oracle.
//!
//! Nothing here lays out kubelet directories or sets pod status: real pods
//! write into their volumes, the DaemonSet's agent pod reads them where the
//! real kubelet mounted them.
//!
//! Run: `bash hack/envtest.sh && bash hack/node.sh && cargo build -p
//! stash-controller --bin stash-controller && cargo test -p stash-agent
//! --test e2e_node` (as root; see deploy/README.md, "Tests on a real node").

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use stash_api::{BackupSession, ItemPhase, RestoreSession, SessionPhase};
use stash_envtest::Cluster;
use stash_testkit::compare::{assert_trees_equal, CompareOptions};
use stash_testkit::restic::{write_password_file, Restic};
use stash_testkit::servers::{self, Server};

const NS: &str = "shop";
const PASSWORD: &str = "e2e-node-password";
/// The workload's volumes, as the pod names them.
const VOLUMES: [&str; 3] = ["cache", "host", "data"];

struct World {
    cluster: Cluster,
    client: Client,
    restic: Restic,
    base: PathBuf,
    /// The allow-listed host directory holding the hostPath volume.
    host_dir: PathBuf,
    /// The local PersistentVolume's directory.
    local_pv: PathBuf,
    _minio: Server,
    _tmp: tempfile::TempDir,
}

impl World {
    fn kubectl(&self, args: &[&str]) -> String {
        self.cluster.kubectl(args)
    }

    /// Everything a failure message needs: the cluster's logs and Stash's
    /// pods' logs.
    fn logs(&self) -> String {
        let mut out = self.cluster.logs();
        for (kind, label) in [
            ("agent", "app.kubernetes.io/name=stash-agent"),
            ("controller", "app.kubernetes.io/name=stash-controller"),
        ] {
            let pods = self
                .cluster
                .kubelet_root()
                .parent()
                .map(|d| d.join("pod-logs"))
                .unwrap_or_default();
            out.push_str(&format!("--- {kind} pods ({label}) ---\n"));
            for e in walk(&pods) {
                if e.to_string_lossy().contains(&format!("stash-{kind}")) && e.is_file() {
                    let text = fs::read_to_string(&e).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    out.push_str(&format!(
                        "{}:\n{}\n",
                        e.display(),
                        lines[lines.len().saturating_sub(40)..].join("\n")
                    ));
                }
            }
        }
        out
    }

    /// The host directory of pod `uid`'s emptyDir `volume`, where the real
    /// kubelet made it.
    fn empty_dir(&self, uid: &str, volume: &str) -> PathBuf {
        self.cluster
            .kubelet_root()
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~empty-dir")
            .join(volume)
    }

    /// Where the data of `volume` of pod `uid` is on the host.
    fn volume_source(&self, uid: &str, volume: &str) -> PathBuf {
        match volume {
            "cache" => self.empty_dir(uid, "cache"),
            "host" => self.host_dir.clone(),
            "data" => self.local_pv.clone(),
            v => panic!("no volume {v}"),
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `target/<profile>/stash` (this package's binary) and the controller's
/// binary next to it (another package: built by `cargo build -p
/// stash-controller`, which hack/test.sh runs before the tests).
fn binaries() -> (PathBuf, PathBuf) {
    let agent = PathBuf::from(env!("CARGO_BIN_EXE_stash"));
    let controller = std::env::var_os("STASH_CONTROLLER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| agent.with_file_name("stash-controller"));
    assert!(
        controller.is_file(),
        "{} is missing: run `cargo build -p stash-controller --bin stash-controller` \
         (hack/test.sh does) or set STASH_CONTROLLER_BIN",
        controller.display()
    );
    (agent, controller)
}

/// `hack/images.sh`: OCI archives of pause, busybox, the agent and the
/// controller.
fn build_images(out: &Path) -> Vec<PathBuf> {
    let (agent, controller) = binaries();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/images.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg(out)
        .arg(&agent)
        .arg(&controller)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "hack/images.sh failed");
    ["pause", "busybox", "stash-agent", "stash-controller"]
        .iter()
        .map(|n| out.join(format!("{n}.tar")))
        .collect()
}

/// The overlay a user of this cluster would write over `deploy/`.
fn write_overlay(dir: &Path, kubelet_root: &Path, host_dir: &Path) {
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .canonicalize()
        .expect("deploy/ exists");
    fs::create_dir_all(dir).unwrap();
    // kustomize takes bases by relative path only.
    let up = "../".repeat(dir.components().count() - 1);
    let deploy = format!(
        "{up}{}",
        deploy.display().to_string().trim_start_matches('/')
    );
    let root = kubelet_root.display();
    let allow = host_dir.display();
    let overlay = format!(
        r#"apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {deploy}
patches:
  - target: {{kind: DaemonSet, name: stash-agent}}
    patch: |
      - {{op: replace, path: /spec/template/spec/volumes/0/hostPath/path, value: "{root}"}}
      - {{op: replace, path: /spec/template/spec/containers/0/volumeMounts/0/mountPath, value: "{root}"}}
      - {{op: replace, path: /spec/template/spec/containers/0/env/2/value, value: "{root}"}}
      - {{op: add, path: /spec/template/spec/containers/0/args/-, value: "--allow-host-path={allow}"}}
      - {{op: add, path: /spec/template/spec/volumes/-, value: {{name: host-srv, hostPath: {{path: "{allow}", type: Directory}}}}}}
      - {{op: add, path: /spec/template/spec/containers/0/volumeMounts/-, value: {{name: host-srv, mountPath: "/host{allow}", mountPropagation: HostToContainer}}}}
      - {{op: add, path: /spec/template/spec/containers/0/args/-, value: "--takeover-after=6s"}}
      - {{op: add, path: /spec/template/spec/containers/0/args/-, value: "--progress-interval=1s"}}
      - {{op: add, path: /spec/template/spec/terminationGracePeriodSeconds, value: 2}}
  - target: {{kind: Deployment, name: stash-controller}}
    patch: |
      - {{op: add, path: /spec/template/spec/containers/0/args/-, value: "--allow-host-path={allow}"}}
      - {{op: add, path: /spec/template/spec/terminationGracePeriodSeconds, value: 2}}
"#
    );
    fs::write(dir.join("kustomization.yaml"), overlay).unwrap();
}

async fn setup() -> World {
    let tmp = tempfile::Builder::new()
        .prefix("stash-e2e-node-")
        .tempdir()
        .unwrap();
    let base = tmp.path().to_path_buf();
    let images = build_images(&base.join("images"));
    let cluster = Cluster::start(&images).await;
    let client = cluster.client().await;

    // The repository, on MinIO where pods can reach it (the node's address).
    let minio = servers::minio_on(cluster.node_ip());
    let url = format!("s3:http://{}:{}/e2e/repo", cluster.node_ip(), minio.port);
    let pw = write_password_file(&base, PASSWORD);
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
    let restic = Restic::new(url.clone(), pw)
        .with_env("AWS_ACCESS_KEY_ID", servers::MINIO_USER)
        .with_env("AWS_SECRET_ACCESS_KEY", servers::MINIO_PASSWORD);

    let host_dir = cluster.host_dir("srv/web");
    let local_pv = cluster.host_dir("local-pv");
    let w = World {
        client,
        restic,
        base: base.clone(),
        host_dir,
        local_pv,
        _minio: minio,
        _tmp: tmp,
        cluster,
    };

    // Install Stash as the README says: kubectl apply -k.
    let overlay = base.join("overlay");
    write_overlay(
        &overlay,
        &w.cluster.kubelet_root(),
        w.host_dir.parent().unwrap(),
    );
    let start = Instant::now();
    w.kubectl(&["apply", "--server-side", "-k", overlay.to_str().unwrap()]);
    for what in ["daemonset/stash-agent", "deployment/stash-controller"] {
        let out = Command::new(stash_kubectl(&w))
            .arg(format!("--kubeconfig={}", w.cluster.kubeconfig().display()))
            .args([
                "-n",
                "stash-system",
                "rollout",
                "status",
                what,
                "--timeout=180s",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what} not rolled out: {}{}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            w.kubectl(&["get", "pods", "-A", "-o", "wide"]),
            w.logs()
        );
    }
    eprintln!(
        "e2e-node: Stash installed and rolled out in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_agent_unprivileged();

    w.kubectl(&["create", "namespace", NS]);
    w.kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "repo-password",
        &format!("--from-literal=password={PASSWORD}"),
    ]);
    w.kubectl(&[
        "-n",
        NS,
        "create",
        "secret",
        "generic",
        "repo-creds",
        &format!("--from-literal=AWS_ACCESS_KEY_ID={}", servers::MINIO_USER),
        &format!(
            "--from-literal=AWS_SECRET_ACCESS_KEY={}",
            servers::MINIO_PASSWORD
        ),
    ]);
    apply(
        &w,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
               "metadata": {"name": "main", "namespace": NS},
               "spec": {"url": url, "credentialsSecret": "repo-creds", "passwordSecret": {"name": "repo-password"}}}),
    );
    w
}

/// Issue 12, hole 9: the agent process the real runtime started from
/// deploy/agent.yaml has exactly CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH,
/// FOWNER and FSETID (bits 0-4), no way to gain more, and a seccomp filter:
/// read from the host's /proc, where the test runs.
fn assert_agent_unprivileged() {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let Ok(cmdline) = fs::read(dir.join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_agent = args.len() > 1
            && args[0].ends_with(b"stash")
            && args[1] == b"agent"
            && args.iter().any(|a| a.starts_with(b"--metrics-addr="));
        // Only the DaemonSet's (a pod's cgroup), not an agent some other
        // test runs on this machine.
        let in_pod = fs::read_to_string(dir.join("cgroup")).is_ok_and(|c| c.contains("kubepods"));
        if !is_agent || !in_pod {
            continue;
        }
        let Ok(status) = fs::read_to_string(dir.join("status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        found.push((
            field("CapEff:"),
            field("CapBnd:"),
            field("NoNewPrivs:"),
            field("Seccomp:"),
        ));
    }
    assert!(!found.is_empty(), "no agent process found in /proc");
    for (eff, bnd, nnp, seccomp) in found {
        assert_eq!(
            eff, "000000000000001f",
            "the agent's effective capabilities"
        );
        assert_eq!(
            bnd, "000000000000001f",
            "the agent's capability bounding set"
        );
        assert_eq!(
            nnp, "1",
            "the agent may gain privileges (no_new_privs unset)"
        );
        assert_eq!(seccomp, "2", "the agent runs without a seccomp filter");
    }
}

fn stash_kubectl(w: &World) -> PathBuf {
    // The kubectl hack/envtest.sh built (the cluster's version).
    let dir = String::from_utf8(
        Command::new("bash")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/envtest.sh"))
            .arg("--path")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let _ = w;
    PathBuf::from(dir.trim()).join("kubectl")
}

/// `kubectl apply -f -` of one object.
fn apply(w: &World, obj: Value) {
    let f = w.base.join(format!("obj-{}.json", rand_suffix()));
    fs::write(&f, serde_json::to_vec(&obj).unwrap()).unwrap();
    w.kubectl(&["apply", "-f", f.to_str().unwrap()]);
}

/// PersistentVolumeClaim `name` in `NS`, bound to a local
/// PersistentVolume `<name>-pv` of 1 GiB at `dir` on the node.
fn local_claim(w: &World, name: &str, dir: &Path) {
    apply(
        w,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": format!("{name}-pv")},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "local",
                        "local": {"path": dir},
                        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [stash_envtest::cluster::NODE_NAME]}]}]}}}}),
    );
    apply(
        w,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": NS},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                        "volumeName": format!("{name}-pv"), "resources": {"requests": {"storage": "1Gi"}}}}),
    );
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The workload: a Deployment whose pod writes into an emptyDir, an
/// allow-listed hostPath and a local PV, first a fixed data set (random
/// files, `size_kib` KiB in `data`), then a log it appends to every 0.2 s
/// while backups run.
fn workload(w: &World, size_kib: u32) {
    apply(
        w,
        json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "local-data"},
               "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                        "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "local",
                        "local": {"path": w.local_pv},
                        "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "kubernetes.io/hostname", "operator": "In", "values": [stash_envtest::cluster::NODE_NAME]}]}]}}}}),
    );
    apply(
        w,
        json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": NS},
               "spec": {"accessModes": ["ReadWriteOnce"], "storageClassName": "local",
                        "volumeName": "local-data", "resources": {"requests": {"storage": "1Gi"}}}}),
    );
    let script = format!(
        "set -e\n\
         for d in /cache /host /data; do\n\
           if [ ! -f $d/seed ]; then\n\
             mkdir -p $d/sub/deeper\n\
             head -c 200000 /dev/urandom > $d/sub/a.bin\n\
             head -c 3000 /dev/urandom > $d/sub/deeper/b.bin\n\
             ln -s sub/a.bin $d/link\n\
             echo $HOSTNAME > $d/seed\n\
           fi\n\
         done\n\
         [ -f /data/big.bin ] || head -c {size_kib}k /dev/urandom > /data/big.bin\n\
         touch /cache/.ready\n\
         while true; do date >> /cache/live.log; date >> /data/live.log; sleep 0.2; done\n"
    );
    apply(
        w,
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": NS},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "strategy": {"type": "Recreate"},
                        "template": {
                            "metadata": {"labels": {"app": "web"},
                                         "annotations": {"stash.rs/backup-volumes": VOLUMES.join(",")}},
                            "spec": {"terminationGracePeriodSeconds": 1,
                                     "containers": [{"name": "app", "image": "stash-test/busybox:1",
                                                     "imagePullPolicy": "Never",
                                                     "command": ["/bin/sh", "-c", script],
                                                     "volumeMounts": [
                                                         {"name": "cache", "mountPath": "/cache"},
                                                         {"name": "host", "mountPath": "/host"},
                                                         {"name": "data", "mountPath": "/data"}]}],
                                     "volumes": [
                                         {"name": "cache", "emptyDir": {}},
                                         {"name": "host", "hostPath": {"path": w.host_dir, "type": "Directory"}},
                                         {"name": "data", "persistentVolumeClaim": {"claimName": "data"}}]}}}}),
    );
}

/// Waits until the Deployment's pod (other than `not_uid`) runs and has
/// written its data; returns it.
async fn web_pod(w: &World, not_uid: Option<&str>) -> Pod {
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), NS);
    let start = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .unwrap()
            .items;
        let running = list.into_iter().find(|p| {
            p.uid().as_deref() != not_uid
                && p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        });
        if let Some(p) = running {
            if w.empty_dir(&p.uid().unwrap(), "cache")
                .join(".ready")
                .exists()
            {
                return p;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the web pod is not running\n{}\n{}",
            w.kubectl(&["get", "pods", "-A", "-o", "wide"]),
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn on_demand(name: &str) -> BackupSession {
    serde_json::from_value(json!({
        "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
        "metadata": {"name": name, "namespace": NS, "labels": {(stash_api::LABEL_CONFIGURATION): "web"}},
        "spec": {"backupConfiguration": "web"}
    }))
    .unwrap()
}

async fn wait_backup(
    w: &World,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&BackupSession) -> bool,
) -> BackupSession {
    let api: Api<BackupSession> = Api::namespaced(w.client.clone(), NS);
    let start = Instant::now();
    loop {
        if let Some(s) = api.get_opt(name).await.unwrap() {
            if pred(&s) {
                return s;
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}: {}\n{}",
                    serde_json::to_string_pretty(&s.status).unwrap(),
                    w.logs()
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn succeeded(s: &BackupSession) -> bool {
    s.status
        .as_ref()
        .is_some_and(|st| st.phase == SessionPhase::Succeeded)
}

fn finished(s: &BackupSession) -> bool {
    s.status.as_ref().is_some_and(|st| st.phase.is_finished())
}

fn item<'a>(s: &'a BackupSession, volume: &str) -> &'a stash_api::BackupItem {
    s.status
        .as_ref()
        .unwrap()
        .items
        .iter()
        .find(|i| i.common.volume == volume)
        .unwrap_or_else(|| panic!("no item for volume {volume} in {:?}", s.status))
}

/// Compares restic's restore of snapshot `id` (volume `volume`) with the
/// host directory `src` the pod wrote, except `live.log`, which the pod
/// appends to while the backup runs: the snapshot's copy must be a prefix
/// of the file now.
fn assert_restic_restores(w: &World, id: &str, volume: &str, src: &Path) {
    let target = w.base.join(format!("restic-{volume}-{}", &id[..8]));
    w.restic.restore(id, &target);
    let restored = target.join(volume);
    check_and_drop_live_log(&restored, src);
    let expected = w.base.join(format!("expected-{volume}-{}", &id[..8]));
    copy_tree_without_live_log(src, &expected);
    assert_trees_equal(
        &expected,
        &restored,
        &CompareOptions {
            check_root_metadata: false,
            ..CompareOptions::default()
        },
    );
}

fn check_and_drop_live_log(restored: &Path, src: &Path) {
    let log = restored.join("live.log");
    if log.exists() {
        let then = fs::read(&log).unwrap();
        let now = fs::read(src.join("live.log")).unwrap();
        assert!(
            now.starts_with(&then),
            "the snapshot's live.log ({} bytes) is not a prefix of the pod's ({} bytes)",
            then.len(),
            now.len()
        );
        fs::remove_file(&log).unwrap();
    }
}

/// `cp -a` of `src` to `dst` without `live.log` (the pod keeps writing it).
fn copy_tree_without_live_log(src: &Path, dst: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap();
    assert!(status.success());
    let _ = fs::remove_file(dst.join("live.log"));
}

/// One real node per process: the tests of this binary take turns.
static NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stash_on_a_real_node() {
    let _node = NODE.lock().await;
    let w = setup().await;
    let sessions: Api<BackupSession> = Api::namespaced(w.client.clone(), NS);

    // 1. A real pod writes into an emptyDir, an allow-listed hostPath and a
    // local PV; the DaemonSet's agent pod backs each up while it writes.
    workload(&w, 64 << 10);
    let pod = web_pod(&w, None).await;
    let uid = pod.uid().unwrap();
    apply(
        &w,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration",
               "metadata": {"name": "web", "namespace": NS},
               "spec": {"schedule": "0 0 1 1 *", "paused": true,
                        "target": {"selector": {"matchLabels": {"app": "web"}}},
                        "repository": {"name": "main"}}}),
    );
    let start = Instant::now();
    sessions
        .create(&PostParams::default(), &on_demand("first"))
        .await
        .unwrap();
    let first = wait_backup(
        &w,
        "first",
        "the first backup",
        Duration::from_secs(240),
        finished,
    )
    .await;
    assert!(succeeded(&first), "{:?}\n{}", first.status, w.logs());
    eprintln!(
        "e2e-node: first backup (3 volumes, 64 MiB) in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let agent_pods = w.kubectl(&[
        "-n",
        "stash-system",
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/name=stash-agent",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let snaps = w.restic.snapshots_json();
    let snaps = snaps.as_array().unwrap();
    for (volume, host) in [
        ("cache", "shop/web/cache"),
        ("host", "shop/web/host"),
        ("data", "shop/data"),
    ] {
        let i = item(&first, volume);
        assert_eq!(i.common.phase, ItemPhase::Succeeded, "{i:?}");
        assert_eq!(
            i.common.node.as_deref(),
            Some(stash_envtest::cluster::NODE_NAME),
            "{i:?}"
        );
        // Claimed by the DaemonSet's pod (<node>/<pod>), not a process.
        let by = i.common.claim.claimed_by.as_deref().unwrap();
        assert!(
            agent_pods.split_whitespace().any(|p| by.contains(p)),
            "{volume} claimed by {by}, not one of the agent pods {agent_pods}"
        );
        let id = i.common.snapshot_id.clone().unwrap();
        let s = snaps
            .iter()
            .find(|s| s["id"] == id.as_str())
            .unwrap_or_else(|| panic!("restic lacks {id}: {snaps:?}"));
        assert_eq!(s["hostname"], host, "{s}");
        assert_eq!(s["paths"], json!([format!("/{volume}")]));
        assert_restic_restores(&w, &id, volume, &w.volume_source(&uid, volume));
    }

    // 2. The pod is deleted; its Deployment makes a new one (new UID): the
    // next backup of each volume is incremental on the last one.
    let cache_src_before = w.base.join("cache-before");
    copy_tree_without_live_log(&w.empty_dir(&uid, "cache"), &cache_src_before);
    w.kubectl(&["-n", NS, "delete", "pod", &pod.name_any(), "--wait=false"]);
    let pod2 = web_pod(&w, Some(&uid)).await;
    let uid2 = pod2.uid().unwrap();
    assert_ne!(uid, uid2);
    // At once, while the old pod may still be terminating: the controller
    // leaves terminating pods out of the targets (targets::target_pods),
    // so the session's items are the new pod's.
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), NS);
    sessions
        .create(&PostParams::default(), &on_demand("second"))
        .await
        .unwrap();
    let second = wait_backup(
        &w,
        "second",
        "the second backup",
        Duration::from_secs(240),
        finished,
    )
    .await;
    assert!(succeeded(&second), "{:?}\n{}", second.status, w.logs());
    for volume in VOLUMES {
        let (a, b) = (item(&first, volume), item(&second, volume));
        assert_eq!(b.common.pod, pod2.name_any());
        assert_eq!(
            b.parent_snapshot_id, a.common.snapshot_id,
            "{volume}: the recreated pod's backup has its predecessor's as parent"
        );
        let id = b.common.snapshot_id.clone().unwrap();
        assert_restic_restores(&w, &id, volume, &w.volume_source(&uid2, volume));
    }
    // hostPath and local PV kept their data: (almost) nothing new.
    for volume in ["host", "data"] {
        let b = item(&second, volume);
        assert!(b.bytes_added.unwrap() < 200_000, "{b:?}");
    }

    // 5. The agent pod deleted in the middle of a backup: the DaemonSet's
    // new pod takes the item over; restic check --read-data is clean.
    let status = Command::new("head")
        .args(["-c", "96M", "/dev/urandom"])
        .stdout(fs::File::create(w.local_pv.join("more.bin")).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    sessions
        .create(&PostParams::default(), &on_demand("third"))
        .await
        .unwrap();
    let running = wait_backup(
        &w,
        "third",
        "the local PV's backup under way",
        Duration::from_secs(120),
        |s| {
            finished(s)
                || s.status.as_ref().is_some_and(|st| {
                    st.items.iter().any(|i| {
                        i.common.volume == "data"
                            && i.common.phase == ItemPhase::Running
                            && i.common.bytes_done.unwrap_or(0) > 0
                    })
                })
        },
    )
    .await;
    assert!(
        !finished(&running),
        "the backup finished before the agent could be deleted: {:?}",
        running.status
    );
    let claimed = item(&running, "data")
        .common
        .claim
        .claimed_by
        .clone()
        .unwrap();
    // The claim is `<node>/<agent pod>/<run>`.
    let old_agent = w
        .kubectl(&[
            "-n",
            "stash-system",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=stash-agent",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .split_whitespace()
        .find(|p| claimed.contains(&format!("/{p}/")) || claimed.ends_with(&format!("/{p}")))
        .unwrap_or_else(|| panic!("no agent pod named in the claim {claimed}"))
        .to_string();
    w.kubectl(&[
        "-n",
        "stash-system",
        "delete",
        "pod",
        &old_agent,
        "--grace-period=0",
        "--force",
    ]);
    let third = wait_backup(
        &w,
        "third",
        "the third backup",
        Duration::from_secs(300),
        finished,
    )
    .await;
    assert!(succeeded(&third), "{:?}\n{}", third.status, w.logs());
    let data3 = item(&third, "data");
    let by = data3.common.claim.claimed_by.as_deref().unwrap();
    assert!(
        !by.contains(&format!("/{old_agent}")),
        "taken over by the new agent pod: {data3:?}"
    );
    assert!(data3.common.claim.attempt.unwrap_or(1) >= 2, "{data3:?}");
    let out = w.restic.run_ok(["--no-lock", "check", "--read-data"]);
    assert!(out.contains("no errors were found"), "{out}");
    assert_restic_restores(
        &w,
        data3.common.snapshot_id.as_deref().unwrap(),
        "data",
        &w.local_pv,
    );

    // 3. Restore into a new pod held by the real restore-wait init
    // container until its volume is filled.
    let cache_expected = w.base.join("cache-expected");
    copy_tree_without_live_log(&w.empty_dir(&uid2, "cache"), &cache_expected);
    let _ = cache_src_before;
    apply(
        &w,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web-copy", "namespace": NS},
               "spec": {"terminationGracePeriodSeconds": 1,
                        "initContainers": [{"name": "restore-wait", "image": "stash-agent:0.1.0",
                                            "imagePullPolicy": "Never",
                                            "args": ["restore-wait", "--dir", "/cache", "--timeout", "5m"],
                                            "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
                        "containers": [{"name": "app", "image": "stash-test/busybox:1", "imagePullPolicy": "Never",
                                        "command": ["/bin/sh", "-c", "ls -la /cache; sleep 100000"],
                                        "volumeMounts": [{"name": "cache", "mountPath": "/cache"}]}],
                        "volumes": [{"name": "cache", "emptyDir": {}}]}}),
    );
    let copy_uid = loop {
        let p = pods.get("web-copy").await.unwrap();
        let init_running = p
            .status
            .as_ref()
            .and_then(|s| s.init_container_statuses.as_ref())
            .and_then(|s| s.first())
            .and_then(|s| s.state.as_ref())
            .is_some_and(|s| s.running.is_some());
        if init_running {
            break p.uid().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = pods.get("web-copy").await.unwrap();
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending"),
        "restore-wait holds the pod until the restore"
    );
    apply(
        &w,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession",
               "metadata": {"name": "copy", "namespace": NS},
               "spec": {"repository": {"name": "main"}, "snapshot": "latest",
                        "source": {"namespace": NS, "name": "web"},
                        "target": {"pod": "web-copy"},
                        "volumes": [{"source": "cache", "target": "cache"}]}}),
    );
    let restores: Api<RestoreSession> = Api::namespaced(w.client.clone(), NS);
    let start = Instant::now();
    let done = loop {
        let r = restores.get("copy").await.unwrap();
        if r.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "restore not finished: {:?}\n{}",
            r.status,
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let st = done.status.unwrap();
    assert_eq!(st.phase, SessionPhase::Succeeded, "{st:?}\n{}", w.logs());
    assert_eq!(
        st.items[0].common.snapshot_id,
        item(&third, "cache").common.snapshot_id
    );
    let start = Instant::now();
    loop {
        let p = pods.get("web-copy").await.unwrap();
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "web-copy not Running after the restore: {:?}\n{}",
            p.status,
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let copy_dir = w.empty_dir(&copy_uid, "cache");
    assert!(
        !copy_dir.join(".stash-restore-done").exists(),
        "restore-wait removes the marker"
    );
    let restored = w.base.join("copy-restored");
    copy_tree_without_live_log(&copy_dir, &restored);
    // The third snapshot's live.log is in the copy: a prefix of the source's.
    check_and_drop_live_log(&copy_dir.clone(), &w.empty_dir(&uid2, "cache"));
    let _ = fs::remove_file(cache_expected.join("live.log"));
    assert_trees_equal(
        &cache_expected,
        &restored,
        &CompareOptions {
            check_root_metadata: false,
            ..CompareOptions::default()
        },
    );

    let _ = pods
        .delete("web-copy", &DeleteParams::default().grace_period(0))
        .await;

    // 4. Restore into an allow-listed hostPath: the agent writes through its
    // read-write /host/DIR mount (the host's / is no longer mounted).
    let host_copy = w.host_dir.parent().unwrap().join("web-host-copy");
    fs::create_dir_all(&host_copy).unwrap();
    apply(
        &w,
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web-host-copy", "namespace": NS},
               "spec": {"terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "app", "image": "stash-test/busybox:1", "imagePullPolicy": "Never",
                                        "command": ["/bin/sh", "-c", "sleep 100000"],
                                        "volumeMounts": [{"name": "host", "mountPath": "/host"}]}],
                        "volumes": [{"name": "host", "hostPath": {"path": host_copy, "type": "Directory"}}]}}),
    );
    let start = Instant::now();
    loop {
        let p = pods.get("web-host-copy").await.unwrap();
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "web-host-copy not Running: {:?}\n{}",
            p.status,
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    apply(
        &w,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession",
               "metadata": {"name": "host-copy", "namespace": NS},
               "spec": {"repository": {"name": "main"}, "snapshot": "latest",
                        "source": {"namespace": NS, "name": "web"},
                        "target": {"pod": "web-host-copy"},
                        "volumes": [{"source": "host", "target": "host"}]}}),
    );
    let start = Instant::now();
    let done = loop {
        let r = restores.get("host-copy").await.unwrap();
        if r.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "hostPath restore not finished: {:?}\n{}",
            r.status,
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let st = done.status.unwrap();
    assert_eq!(st.phase, SessionPhase::Succeeded, "{st:?}\n{}", w.logs());
    for e in fs::read_dir(&host_copy).unwrap().flatten() {
        if e.file_name()
            .to_string_lossy()
            .starts_with(".stash-restore-done")
        {
            fs::remove_file(e.path()).unwrap();
        }
    }
    assert_trees_equal(
        &w.host_dir,
        &host_copy,
        &CompareOptions {
            check_root_metadata: false,
            ..CompareOptions::default()
        },
    );
    let _ = pods
        .delete("web-host-copy", &DeleteParams::default().grace_period(0))
        .await;
}

/// Issue 15, "Jobs", must-hold 3: a PersistentVolumeClaim that no pod
/// mounts is backed up by a Job the controller starts (not by the node
/// agent), with the claim's identity; restic lists and restores identical
/// data; the next backup is incremental on it; the Job is owned by the
/// session and its grant is revoked once the item is done. Then a restore
/// Job (`executor: job`) fills a new claim, and a pod that mounts it
/// afterwards sees identical data.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_no_pod_mounts_is_backed_up_by_a_job() {
    let _node = NODE.lock().await;
    let w = setup().await;
    let sessions: Api<BackupSession> = Api::namespaced(w.client.clone(), NS);
    // Data on a local volume, written on the host: no pod ever mounts it.
    let dir = w.cluster.host_dir("archive-pv");
    fs::create_dir_all(dir.join("sub/deeper")).unwrap();
    let status = Command::new("head")
        .args(["-c", "3M", "/dev/urandom"])
        .stdout(fs::File::create(dir.join("sub/a.bin")).unwrap())
        .status()
        .unwrap();
    assert!(status.success());
    fs::write(
        dir.join("sub/deeper/b.txt"),
        b"hello from a volume no pod mounts\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("sub/a.bin", dir.join("link")).unwrap();
    // Readable only by its owner: the Job reads it anyway (DAC_OVERRIDE).
    fs::write(dir.join("secret.txt"), b"0600\n").unwrap();
    fs::set_permissions(
        dir.join("secret.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    local_claim(&w, "archive", &dir);
    apply(
        &w,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration",
               "metadata": {"name": "archive", "namespace": NS},
               "spec": {"schedule": "0 0 1 1 *", "paused": true,
                        "target": {"persistentVolumeClaim": "archive"},
                        "repository": {"name": "main"}}}),
    );
    let session = |name: &str| -> BackupSession {
        serde_json::from_value(json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"backupConfiguration": "archive"}
        }))
        .unwrap()
    };
    let start = Instant::now();
    sessions
        .create(&PostParams::default(), &session("archive-1"))
        .await
        .unwrap();
    let first = wait_backup(
        &w,
        "archive-1",
        "the Job's backup",
        Duration::from_secs(240),
        finished,
    )
    .await;
    assert!(
        succeeded(&first),
        "{:?}\n{}\n{}",
        first.status,
        w.kubectl(&["-n", NS, "get", "jobs,pods", "-o", "wide"]),
        w.logs()
    );
    eprintln!(
        "e2e-node: backup of a pod-less claim through a Job in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let i = item(&first, "archive");
    assert_eq!(i.common.executor, Some(stash_api::Executor::Job), "{i:?}");
    assert_eq!(i.common.pod, "", "{i:?}");
    assert_eq!(
        i.common.node.as_deref(),
        Some(stash_envtest::cluster::NODE_NAME)
    );
    let job = i.common.job.clone().expect("the item names its Job");
    let by = i.common.claim.claimed_by.as_deref().unwrap();
    assert!(
        by.starts_with(&format!("job/{job}-")),
        "claimed by the Job's pod: {by}"
    );
    // The Job belongs to the session; its pod ran our executor.
    let owner = w.kubectl(&[
        "-n",
        NS,
        "get",
        "job",
        &job,
        "-o",
        "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}",
    ]);
    assert_eq!(owner.trim(), "BackupSession/archive-1");
    // Its grant on the session is revoked once the item is done (the
    // namespace keeps the agents' `stash-agent-secrets` binding).
    let deadline = Instant::now() + Duration::from_secs(60);
    let binding = format!("rolebinding.rbac.authorization.k8s.io/{job}");
    while w
        .kubectl(&["-n", NS, "get", "rolebindings", "-o", "name"])
        .lines()
        .any(|l| l.trim() == binding)
    {
        assert!(
            Instant::now() < deadline,
            "the Job's RoleBinding is still there"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let id = i.common.snapshot_id.clone().unwrap();
    let snaps = w.restic.snapshots_json();
    let s = snaps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id.as_str())
        .unwrap_or_else(|| panic!("restic lacks {id}: {snaps}"));
    assert_eq!(s["hostname"], "shop/archive", "{s}");
    assert_eq!(s["paths"], json!(["/archive"]), "{s}");
    assert_restic_restores(&w, &id, "archive", &dir);

    // The next backup is incremental on the first.
    fs::write(dir.join("new.txt"), b"added later\n").unwrap();
    sessions
        .create(&PostParams::default(), &session("archive-2"))
        .await
        .unwrap();
    let second = wait_backup(
        &w,
        "archive-2",
        "the second Job's backup",
        Duration::from_secs(240),
        finished,
    )
    .await;
    assert!(succeeded(&second), "{:?}\n{}", second.status, w.logs());
    let j = item(&second, "archive");
    assert_eq!(j.parent_snapshot_id.as_deref(), Some(id.as_str()), "{j:?}");
    assert!(j.bytes_added.unwrap() < 100_000, "{j:?}");
    assert_restic_restores(
        &w,
        j.common.snapshot_id.as_deref().unwrap(),
        "archive",
        &dir,
    );

    // A restore Job fills a new, empty claim from the latest snapshot.
    let target = w.cluster.host_dir("restored-pv");
    local_claim(&w, "restored", &target);
    apply(
        &w,
        json!({"apiVersion": "stash.rs/v1alpha1", "kind": "RestoreSession",
               "metadata": {"name": "fill", "namespace": NS},
               "spec": {"repository": {"name": "main"}, "snapshot": "latest", "executor": "job",
                        "source": {"name": "archive"},
                        "target": {"persistentVolumeClaim": "restored"}}}),
    );
    let restores: Api<RestoreSession> = Api::namespaced(w.client.clone(), NS);
    let start = Instant::now();
    let done = loop {
        let r = restores.get("fill").await.unwrap();
        if r.status.as_ref().is_some_and(|s| s.phase.is_finished()) {
            break r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "restore not finished: {:?}\n{}\n{}",
            r.status,
            w.kubectl(&["-n", NS, "get", "jobs,pods", "-o", "wide"]),
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let st = done.status.unwrap();
    assert_eq!(st.phase, SessionPhase::Succeeded, "{st:?}\n{}", w.logs());
    eprintln!(
        "e2e-node: restore into a new claim through a Job in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let r = &st.items[0];
    assert_eq!(r.common.executor, Some(stash_api::Executor::Job), "{r:?}");
    assert_eq!(
        r.common.snapshot_id, j.common.snapshot_id,
        "the latest snapshot: {r:?}"
    );
    let by = r.common.claim.claimed_by.as_deref().unwrap();
    assert!(
        by.starts_with(&format!("job/{}-", r.common.job.as_deref().unwrap())),
        "{by}"
    );
    // Byte for byte and in metadata, and no restore-wait marker left.
    assert_trees_equal(
        &dir,
        &target,
        &CompareOptions {
            check_root_metadata: false,
            ..CompareOptions::default()
        },
    );
    // A pod that mounts the claim afterwards sees the same data.
    let sums = |root: &Path| -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg("find . | sort && md5sum sub/a.bin sub/deeper/b.txt new.txt secret.txt && readlink link")
            .current_dir(root)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    apply(
        &w,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "reader", "namespace": NS},
               "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                        "containers": [{"name": "app", "image": "stash-test/busybox:1", "imagePullPolicy": "Never",
                                        "command": ["/bin/sh", "-c",
                                            "(cd /data && find . | sort && md5sum sub/a.bin sub/deeper/b.txt new.txt secret.txt && readlink link) > /dev/termination-log"],
                                        "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "restored"}}]}}),
    );
    // What it printed comes back as its termination message (the test
    // node's kubelet serves no logs to kubectl: its name does not resolve).
    let pods: Api<Pod> = Api::namespaced(w.client.clone(), NS);
    let start = Instant::now();
    let seen = loop {
        let p = pods.get("reader").await.unwrap();
        let st = p.status.clone().unwrap_or_default();
        let phase = st.phase.clone().unwrap_or_default();
        if phase == "Succeeded" {
            break st
                .container_statuses
                .iter()
                .flatten()
                .find_map(|c| c.state.as_ref()?.terminated.as_ref()?.message.clone())
                .unwrap_or_default();
        }
        assert!(
            phase != "Failed" && start.elapsed() < Duration::from_secs(120),
            "the reader pod: {st:?}\n{}",
            w.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(
        seen.trim(),
        sums(&dir).trim(),
        "what the pod sees of the restored claim"
    );
}
