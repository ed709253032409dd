//! Scale bench of the controller (issue 6, "What must hold" 5); run by
//! `hack/bench-controller.sh`, never by the tests.
//!
//! Starts a real kube-apiserver (envtest), creates `CONFIGS`
//! BackupConfigurations and `PODS` pods spread over `NAMESPACES`
//! namespaces, then runs the `stash-controller` binary given as the first
//! argument and watches BackupSessions appear. Each configuration has a
//! six-field schedule firing once a minute at its own second (`<s> * * * *
//! *`, s = index mod 60), so about CONFIGS/60 sessions are due every second,
//! each resolving into the opted-in volumes of its PODS/CONFIGS pods.
//!
//! Reports the controller's peak RSS (VmHWM) and the time from a schedule
//! tick to the BackupSession being seen by a watch (an upper bound of tick
//! → created), p50 / p99 / max, over the first minute of ticks.

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use stash_api::{BackupConfiguration, BackupSession, Repository};
use stash_envtest::Envtest;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let controller_bin = std::env::args()
        .nth(1)
        .context("usage: bench_controller <path to stash-controller>")?;
    let configs = env_usize("CONFIGS", 1000);
    let pods = env_usize("PODS", 10_000);
    let namespaces = env_usize("NAMESPACES", 50).max(1);
    let window = Duration::from_secs(env_usize("WINDOW_SECONDS", 60) as u64);
    let parallel = env_usize("PARALLEL", 32);

    let env = Envtest::start().await;
    env.install_crds(stash_api::crds()).await;
    let client = env.client().await;
    let started = Instant::now();
    for n in 0..namespaces {
        let ns = format!("bench-{n}");
        let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &obj)
            .await?;
        let repo: Repository = serde_json::from_value(json!({
            "apiVersion": "stash.rs/v1alpha1", "kind": "Repository",
            "metadata": {"name": "main", "namespace": ns},
            "spec": {"url": "s3:minio:9000/bench", "passwordSecret": {"name": "pw"}},
        }))?;
        Api::<Repository>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &repo)
            .await?;
    }
    // Configuration c lives in namespace c % namespaces; pod p belongs to
    // configuration p % configs.
    futures::stream::iter(0..pods)
        .map(|p| {
            let client = client.clone();
            async move {
                let c = p % configs;
                let ns = format!("bench-{}", c % namespaces);
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("pod-{p}"), "namespace": ns,
                                 "labels": {"config": format!("c{c}")},
                                 "annotations": {"stash.rs/backup-volumes": "data"}},
                    "spec": {"nodeName": format!("node-{}", p % 100),
                             "containers": [{"name": "app", "image": "busybox"}],
                             "volumes": [{"name": "data", "emptyDir": {}}]},
                }))?;
                Api::<Pod>::namespaced(client, &ns)
                    .create(&PostParams::default(), &pod)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await?;
    futures::stream::iter(0..configs)
        .map(|c| {
            let client = client.clone();
            async move {
                let ns = format!("bench-{}", c % namespaces);
                let cfg: BackupConfiguration = serde_json::from_value(json!({
                    "apiVersion": "stash.rs/v1alpha1", "kind": "BackupConfiguration",
                    "metadata": {"name": format!("c{c}"), "namespace": ns},
                    "spec": {"schedule": format!("{} * * * * *", c % 60),
                             "target": {"selector": {"matchLabels": {"config": format!("c{c}")}}},
                             "repository": {"name": "main"}},
                }))?;
                Api::<BackupConfiguration>::namespaced(client, &ns)
                    .create(&PostParams::default(), &cfg)
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(parallel)
        .try_collect::<()>()
        .await?;
    eprintln!(
        "created {namespaces} namespaces, {pods} pods, {configs} BackupConfigurations in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let log = std::fs::File::create(std::env::temp_dir().join("stash-bench-controller.log"))?;
    let mut child = Command::new(&controller_bin)
        .env("KUBECONFIG", env.kubeconfig())
        .env("STASH_LOG", "warn")
        .args([
            "--identity",
            "bench",
            "--lease-namespace",
            "default",
            "--metrics-addr",
            "127.0.0.1:0",
            // Scheduling is measured; the webhook serves no pod here.
            "--no-webhook",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {controller_bin}"))?;
    let pid = child.id();
    let controller_started = Utc::now();

    // Ticks before the controller was up are not scheduling latency; the
    // first full second after it is.
    let from = controller_started + chrono::Duration::seconds(5);
    let until = from + chrono::Duration::from_std(window)?;
    let sessions: Api<BackupSession> = Api::all(client.clone());
    let mut stream = watcher(sessions, watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut seen = HashSet::new();
    let mut latencies = Vec::new();
    let mut peak_kib = 0;
    let deadline = Instant::now() + window + Duration::from_secs(40);
    let mut sample = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            next = stream.next() => {
                let Some(s) = next.transpose()? else { bail!("the watch ended") };
                let now = Utc::now();
                let Some(tick) = s.spec.scheduled_time.as_ref() else { continue };
                let tick = chrono::DateTime::from_timestamp_millis(tick.0.as_millisecond()).unwrap_or_default();
                let key = (s.metadata.namespace.clone(), s.metadata.name.clone());
                if tick >= from && tick < until && seen.insert(key) {
                    latencies.push((now - tick).num_microseconds().unwrap_or(0) as f64 / 1e6);
                }
            }
            _ = sample.tick() => {
                peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
                if Instant::now() > deadline || Utc::now() > until + chrono::Duration::seconds(10) {
                    break;
                }
                if let Some(status) = child.try_wait()? {
                    bail!("stash-controller exited: {status}");
                }
            }
        }
    }
    peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
    let _ = child.kill();
    let _ = child.wait();
    latencies.sort_by(f64::total_cmp);
    let expected = configs as f64 * window.as_secs_f64() / 60.0;
    let mut report = BTreeMap::new();
    report.insert("configurations", configs.to_string());
    report.insert("pods", pods.to_string());
    report.insert(
        "ticks measured",
        format!("{} (expected ~{expected:.0})", latencies.len()),
    );
    report.insert(
        "controller peak RSS",
        format!("{:.1} MiB", peak_kib as f64 / 1024.0),
    );
    report.insert(
        "tick -> session p50",
        format!("{:.3} s", percentile(&latencies, 0.5)),
    );
    report.insert(
        "tick -> session p99",
        format!("{:.3} s", percentile(&latencies, 0.99)),
    );
    report.insert(
        "tick -> session max",
        format!("{:.3} s", latencies.last().copied().unwrap_or(f64::NAN)),
    );
    println!("stash-controller scale bench");
    for (k, v) in &report {
        println!("  {k:<22} {v}");
    }
    Ok(())
}
