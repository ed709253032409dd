//! Memory of node agents in a large cluster (issue 14, failure 6); run by
//! `hack/bench-agent-memory.sh`, never by the tests.
//!
//! Starts a real kube-apiserver (envtest) and the controller (in-process),
//! creates `PODS` pods spread over `NODES` nodes and `NAMESPACES`
//! namespaces, one BackupConfiguration per `PODS / SESSIONS` pods and one
//! BackupSession of each, so the API server holds `SESSIONS` unfinished
//! sessions with one item per pod. Then it starts one agent process per
//! binary given on the command line, side by side, each as the agent of its
//! own node (`node-0`, `node-1`, …), whose pods get real volume directories
//! (`VOLUME_KIB` of random files each, under a simulated kubelet root) and
//! are marked Running; every other node's items stay Pending, as on nodes
//! whose agents are elsewhere.
//!
//! Reported per agent: the peak RSS (VmHWM) while it backs up its node's
//! volumes into a local repository ("busy"), the time until every item of
//! its node is finished, and its RSS `IDLE_SECONDS` after that ("idle",
//! with the whole cluster still in the API server).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::ResourceExt;
use serde_json::{json, Value};
use stash_api::{BackupConfiguration, BackupSession, ItemPhase, Repository};
use stash_controller::{LeaseConfig, Metrics, Settings};
use stash_envtest::Envtest;
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "bench-password";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A field of `/proc/PID/status` in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn create<K>(api: &Api<K>, v: Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v)?;
    Ok(api.create(&PostParams::default(), &obj).await?)
}

struct Agent {
    binary: PathBuf,
    node: String,
    child: Child,
    started: Instant,
    done_after: Option<Duration>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let binaries: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if binaries.is_empty() {
        bail!("usage: bench_agent_memory STASH_BINARY [STASH_BINARY...]");
    }
    let pods_n = env_usize("PODS", 10_000);
    let sessions_n = env_usize("SESSIONS", 1_000).clamp(1, pods_n);
    let nodes_n = env_usize("NODES", 100).max(binaries.len());
    let namespaces_n = env_usize("NAMESPACES", 10).max(1);
    let volume_kib = env_usize("VOLUME_KIB", 1024);
    let idle = Duration::from_secs(env_usize("IDLE_SECONDS", 20) as u64);
    let per_session = pods_n / sessions_n;

    let tmp = tempfile::Builder::new()
        .prefix("stash-bench-mem")
        .tempdir()?;
    let base = tmp.path().to_path_buf();
    let repo = base.join("repo");
    let pw = base.join("password");
    fs::write(&pw, PASSWORD)?;
    let out = Command::new(&binaries[0])
        .args(["init", "-r"])
        .arg(&repo)
        .arg("--password-file")
        .arg(&pw)
        .env("STASH_KDF_PARAMS", "1024,8,1")
        .output()?;
    if !out.status.success() {
        bail!("init: {}", String::from_utf8_lossy(&out.stderr));
    }

    let env = Envtest::start().await;
    env.install_crds(stash_api::crds()).await;
    let client = env.client().await;
    let namespaces: Vec<String> = (0..namespaces_n).map(|i| format!("bench-{i}")).collect();
    for ns in &namespaces {
        create::<Namespace>(
            &Api::all(client.clone()),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
        create::<Secret>(
            &Api::namespaced(client.clone(), ns),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "repo-password"},
                   "stringData": {"password": PASSWORD}}),
        )
        .await?;
        create::<Repository>(
            &Api::namespaced(client.clone(), ns),
            json!({"apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
                   "metadata": {"name": "main"},
                   "spec": {"url": format!("local:{}", repo.display()),
                            "passwordSecret": {"name": "repo-password"}}}),
        )
        .await?;
    }

    // Pods: pod i is selected by configuration c = i / per_session, in
    // that configuration's namespace c % NAMESPACES, on node i % NODES.
    let t = Instant::now();
    let pod_of = |i: usize| {
        let ns = namespaces[(i / per_session) % namespaces_n].clone();
        let node = format!("node-{}", i % nodes_n);
        (ns, format!("pod-{i}"), node, i / per_session)
    };
    futures::stream::iter(0..pods_n)
        .map(|i| {
            let client = client.clone();
            let (ns, name, node, cfg) = pod_of(i);
            async move {
                create::<Pod>(
                    &Api::namespaced(client, &ns),
                    json!({"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": name, "labels": {"cfg": format!("cfg-{cfg}")},
                                        "annotations": {"stash.rs/backup-volumes": "data"}},
                           "spec": {"nodeName": node,
                                    "containers": [{"name": "app", "image": "busybox"}],
                                    "volumes": [{"name": "data", "emptyDir": {}}]}}),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    eprintln!("{pods_n} pods in {:.1?}", t.elapsed());

    // The nodes of the agents under test: real volumes, Running pods.
    let t = Instant::now();
    let nodes: Vec<String> = (0..binaries.len()).map(|k| format!("node-{k}")).collect();
    for (ns, name, node, _) in (0..pods_n).map(pod_of) {
        let Some(k) = nodes.iter().position(|n| *n == node) else {
            continue;
        };
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let uid = pods.get(&name).await?.uid().context("pod uid")?;
        let dir = base
            .join(&node)
            .join("kubelet/pods")
            .join(&uid)
            .join("volumes/kubernetes.io~empty-dir/data");
        fs::create_dir_all(&dir)?;
        let mut left = volume_kib as u64 * 1024;
        let mut f = 0u64;
        while left > 0 {
            let size = left.min(256 * 1024);
            stash_testkit::fixture::write_random_file(
                &dir.join(format!("f{f}")),
                size,
                (k as u64) << 40 | f ^ uid.len() as u64 ^ name.len() as u64,
            )?;
            left -= size;
            f += 1;
        }
        pods.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running"}})),
        )
        .await?;
    }
    eprintln!("the agents' volumes in {:.1?}", t.elapsed());

    // Configurations and one session each, resolved by the controller.
    let shutdown = CancellationToken::new();
    let controller = tokio::spawn({
        let (client, shutdown) = (client.clone(), shutdown.clone());
        async move {
            let lease = LeaseConfig {
                namespace: "default".into(),
                name: "stash-controller".into(),
                identity: "bench".into(),
                lease_duration: Duration::from_secs(15),
                renew_period: Duration::from_secs(5),
            };
            stash_controller::run(
                client,
                Settings::new("bench"),
                lease,
                Metrics::default(),
                shutdown,
            )
            .await
        }
    });
    let t = Instant::now();
    futures::stream::iter(0..sessions_n)
        .map(|c| {
            let client = client.clone();
            // Configuration c selects pods c*per_session.. in its namespace.
            let ns = namespaces[c % namespaces_n].clone();
            async move {
                let cfg = format!("cfg-{c}");
                create::<BackupConfiguration>(
                    &Api::namespaced(client.clone(), &ns),
                    json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration",
                           "metadata": {"name": cfg},
                           "spec": {"schedule": "0 0 1 1 *",
                                    "target": {"selector": {"matchLabels": {"cfg": cfg}}},
                                    "repository": {"name": "main"}}}),
                )
                .await?;
                create::<BackupSession>(
                    &Api::namespaced(client, &ns),
                    json!({"apiVersion": "stash.rs/v1alpha1", "kind": "BackupSession",
                           "metadata": {"name": format!("s-{c}")},
                           "spec": {"backupConfiguration": cfg}}),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    let sessions: Api<BackupSession> = Api::all(client.clone());
    let items = loop {
        let list = sessions.list(&ListParams::default()).await?;
        let resolved: Vec<_> = list
            .items
            .iter()
            .filter_map(|s| s.status.as_ref().filter(|st| !st.items.is_empty()))
            .collect();
        if resolved.len() == sessions_n {
            break resolved.iter().map(|st| st.items.len()).sum::<usize>();
        }
        if t.elapsed() > Duration::from_secs(600) {
            bail!("only {} of {sessions_n} sessions resolved", resolved.len());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    eprintln!(
        "{sessions_n} sessions with {items} items resolved in {:.1?}",
        t.elapsed()
    );

    // The agents, side by side.
    let mut agents = Vec::new();
    for (binary, node) in binaries.iter().zip(&nodes) {
        let log = fs::File::create(base.join(format!("agent-{node}.log")))?;
        let host = base.join(node).join("host");
        fs::create_dir_all(&host)?;
        let child = Command::new(binary)
            .args([
                "agent",
                "--node-name",
                node,
                "--pod-name",
                &format!("agent-{node}"),
            ])
            .arg("--kubelet-root")
            .arg(base.join(node).join("kubelet"))
            .arg("--host-root")
            .arg(&host)
            // Local repositories must lie strictly inside an allowed directory.
            .arg("--allow-local-repository")
            .arg(&base)
            .args(["--metrics-addr", "127.0.0.1:0", "--namespace", "default"])
            .env("KUBECONFIG", env.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        agents.push(Agent {
            binary: binary.clone(),
            node: node.clone(),
            child,
            started: Instant::now(),
            done_after: None,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(1800);
    while agents.iter().any(|a| a.done_after.is_none()) {
        let list = sessions.list(&ListParams::default()).await?;
        for a in agents.iter_mut().filter(|a| a.done_after.is_none()) {
            if let Ok(Some(status)) = a.child.try_wait() {
                bail!("the agent of {} exited: {status}", a.node);
            }
            let mine = list
                .items
                .iter()
                .flat_map(|s| s.status.iter().flat_map(|st| st.items.iter()))
                .map(|i| &i.common)
                .filter(|i| i.node.as_deref() == Some(a.node.as_str()));
            let (mut done, mut failed, mut all) = (0, 0, 0);
            for i in mine {
                all += 1;
                done += usize::from(i.phase.is_finished());
                failed += usize::from(i.phase == ItemPhase::Failed);
            }
            if done == all {
                if failed > 0 {
                    let log = fs::read_to_string(base.join(format!("agent-{}.log", a.node)))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(10).collect();
                    bail!(
                        "{failed} of {all} items of {} failed; its log ends:\n{}",
                        a.node,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                a.done_after = Some(a.started.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("the agents did not finish their items in 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(idle).await;

    let mine_per_node = (0..pods_n).filter(|i| i % nodes_n == 0).count();
    println!(
        "cluster: {pods_n} pods on {nodes_n} nodes, {sessions_n} unfinished sessions, {items} items; \
         each agent's node: {mine_per_node} volumes of {volume_kib} KiB"
    );
    println!(
        "| agent | node | items done after s | peak RSS MiB (busy) | RSS MiB {}s idle |",
        idle.as_secs()
    );
    println!("|---|---|---|---|---|");
    let mut idle_rss = Vec::new();
    for a in &agents {
        let pid = a.child.id();
        let hwm = status_kib(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0;
        let rss = status_kib(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0;
        idle_rss.push(rss);
        println!(
            "| {} | {} | {:.1} | {hwm:.1} | {rss:.1} |",
            a.binary.display(),
            a.node,
            a.done_after.unwrap_or_default().as_secs_f64(),
        );
    }
    if idle_rss.len() > 1 {
        for (a, rss) in agents.iter().zip(&idle_rss).skip(1) {
            println!(
                "idle RSS of {} / {}: {:.2}",
                a.binary.display(),
                agents[0].binary.display(),
                rss / idle_rss[0]
            );
        }
    }
    drop(agents);
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), controller).await;
    Ok(())
}
