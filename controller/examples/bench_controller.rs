//! Scale bench of the controller (issue 6, "What must hold" 5); run by
//! `hack/bench-controller.sh`, never by the tests.
//!
//! Starts a real kube-apiserver (envtest), creates `CONFIGS`
//! BackupConfigurations and `PODS` pods spread over `NAMESPACES`
//! namespaces, then runs the `stash-controller` binary given as the first
//! argument and watches BackupSessions appear. Each configuration has a
//! six-field schedule firing once a minute at its own second (`<s> * * * *
//! *`, s = index mod 60), so about CONFIGS/60 sessions are due every second,
//! each resolving into the opted-in volumes of its PODS/CONFIGS pods. With
//! `BURST=1` every configuration fires at second 0 instead, and the
//! controller is started at second 35, so the burst comes 25 s after it.
//!
//! The configurations are brand new when the controller starts (no
//! finalizer, no status: the first start of a controller in a cluster that
//! already has them), and use `concurrencyPolicy: Allow`, so every tick must
//! yield a session (no agent runs, so with Forbid the sessions of ticks
//! before the window would hold back the ticks inside it).
//!
//! What is measured: for every tick `t` of every configuration with
//! `start + WARMUP_SECONDS <= t < start + WARMUP_SECONDS + WINDOW_SECONDS`
//! (`start`: the moment the controller process is spawned), the time from
//! `t` to the moment this bench's watch sees the BackupSession of that tick
//! (an upper bound of tick → created). A tick whose session is not seen by
//! the end counts as infinitely late. Reports p50 / p99 / max over all of
//! them, the same per 10 s of the window (the first ones are the
//! controller's start-up), and the controller's peak RSS (VmHWM).

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Timelike, Utc};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use serde_json::json;
use stash_api::schedule::Schedule;
use stash_api::{BackupConfiguration, BackupSession, Repository};
use stash_controller::scheduler::session_name;
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

/// `p50 / p99 / max` of `latencies` (sorted), infinity shown as "never".
fn summary(sorted: &[f64]) -> String {
    let show = |v: f64| {
        if v.is_finite() {
            format!("{v:.3} s")
        } else {
            "never".to_owned()
        }
    };
    format!(
        "p50 {}  p99 {}  max {}  ({} ticks)",
        show(percentile(sorted, 0.5)),
        show(percentile(sorted, 0.99)),
        show(sorted.last().copied().unwrap_or(f64::NAN)),
        sorted.len()
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let controller_bin = std::env::args()
        .nth(1)
        .context("usage: bench_controller <path to stash-controller>")?;
    let configs = env_usize("CONFIGS", 1000);
    let pods = env_usize("PODS", 10_000);
    let namespaces = env_usize("NAMESPACES", 50).max(1);
    let window = chrono::Duration::seconds(env_usize("WINDOW_SECONDS", 60) as i64);
    let warmup = chrono::Duration::seconds(env_usize("WARMUP_SECONDS", 2) as i64);
    let parallel = env_usize("PARALLEL", 32);
    let burst = env_usize("BURST", 0) != 0;
    let second_of = |c: usize| if burst { 0 } else { c % 60 };

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
                    "spec": {"schedule": format!("{} * * * * *", second_of(c)),
                             "concurrencyPolicy": "Allow",
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
    if burst {
        // Start at second 35: the burst at second 0 comes 25 s later.
        let wait = (35 + 60 - i64::from(Utc::now().second())) % 60;
        eprintln!("burst mode: starting the controller in {wait} s");
        tokio::time::sleep(Duration::from_secs(wait as u64)).await;
    }

    let log_path = std::env::temp_dir().join("stash-bench-controller.log");
    let log = std::fs::File::create(&log_path)?;
    let controller_started = Utc::now();
    let mut child = Command::new(&controller_bin)
        .env("KUBECONFIG", env.kubeconfig())
        .env(
            "STASH_LOG",
            std::env::var("STASH_LOG").unwrap_or_else(|_| "warn".into()),
        )
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

    let from = controller_started + warmup;
    let until = from + window;
    // Every tick in [from, until): (namespace, session name) -> tick.
    let mut expected: HashMap<(String, String), DateTime<Utc>> = HashMap::new();
    for c in 0..configs {
        let schedule = Schedule::parse(&format!("{} * * * * *", second_of(c)), None)?;
        let mut t = from - chrono::Duration::milliseconds(1);
        while let Some(tick) = schedule.next_after(t).filter(|tick| *tick < until) {
            let ns = format!("bench-{}", c % namespaces);
            expected.insert((ns, session_name(&format!("c{c}"), tick)), tick);
            t = tick;
        }
    }
    let sessions: Api<BackupSession> = Api::all(client.clone());
    let mut stream = watcher(sessions, watcher::Config::default())
        .applied_objects()
        .boxed();
    let mut seen: HashMap<(String, String), f64> = HashMap::new();
    let mut peak_kib = 0;
    let give_up = until + chrono::Duration::seconds(30);
    let mut sample = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            next = stream.next() => {
                let Some(s) = next.transpose()? else { bail!("the watch ended") };
                let now = Utc::now();
                let key = (s.metadata.namespace.clone().unwrap_or_default(), s.metadata.name.clone().unwrap_or_default());
                if let Some(tick) = expected.get(&key) {
                    seen.entry(key).or_insert_with(|| (now - *tick).num_microseconds().unwrap_or(0) as f64 / 1e6);
                }
            }
            _ = sample.tick() => {
                peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
                let now = Utc::now();
                if now > give_up || (now > until && seen.len() == expected.len()) {
                    break;
                }
                if let Some(status) = child.try_wait()? {
                    bail!("stash-controller exited: {status} (log: {})", log_path.display());
                }
            }
        }
    }
    peak_kib = peak_kib.max(vm_hwm_kib(pid).unwrap_or(0));
    let _ = child.kill();
    let _ = child.wait();

    // Latencies by 10 s of the window, missing sessions as infinity.
    let mut all = Vec::with_capacity(expected.len());
    let mut by_phase: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for (key, tick) in &expected {
        let l = seen.get(key).copied().unwrap_or(f64::INFINITY);
        all.push(l);
        by_phase
            .entry((*tick - controller_started).num_seconds() / 10)
            .or_default()
            .push(l);
    }
    all.sort_by(f64::total_cmp);
    let missing = expected.len() - seen.len();
    println!(
        "stash-controller scale bench{}",
        if burst {
            " (burst: every configuration at second 0)"
        } else {
            ""
        }
    );
    println!("  configurations         {configs}");
    println!("  pods                   {pods}");
    println!(
        "  ticks                  {} in [start+{}s, start+{}s), {missing} without a session",
        expected.len(),
        warmup.num_seconds(),
        (warmup + window).num_seconds()
    );
    println!(
        "  controller peak RSS    {:.1} MiB",
        peak_kib as f64 / 1024.0
    );
    println!("  tick -> session        {}", summary(&all));
    for (phase, mut l) in by_phase {
        l.sort_by(f64::total_cmp);
        println!("    ticks at start+{:>3}s  {}", phase * 10, summary(&l));
    }
    Ok(())
}
