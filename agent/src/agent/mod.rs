//! `stash agent`: the node agent, one per node (a DaemonSet).
//!
//! It watches BackupSessions and RestoreSessions, takes the items the
//! controller assigned to its node (and the retention runs), claims each
//! with a JSON patch that only one agent can win (see `claim`), reads or
//! writes the pod volume through the kubelet's directories (see `volumes`),
//! and reports progress, the result and errors in the item's status. At
//! most `--max-concurrent` items run at once; an item waits unclaimed,
//! saying why, while its pod or volume is not ready. A restarted agent
//! takes over its node's items whose claim's heartbeat has stopped for
//! `--takeover-after`, so in-flight work is completed.

mod claim;
pub mod job;
mod maintenance;
pub mod metrics;
mod repository;
pub mod volumes;
mod work;

use work::note_start;
pub use work::RESTORE_MARKER;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use stash_api::policy::HostPathAllowList;
use stash_api::time::from_time;
use stash_api::{BackupSession, Claim, ItemCommon, ItemPhase, Repository, RestoreSession};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::cli::AgentArgs;
use claim::{Previous, Slot};
use metrics::Metrics;
use serde_json::Value;

/// What every piece of work shares.
pub struct Ctx {
    /// The API client.
    pub client: Client,
    /// This agent's node.
    pub node: String,
    /// This agent process: `<node>/<pod>/<nonce>`.
    pub instance: String,
    /// The agent's own namespace (its maintenance Leases live there).
    pub namespace: String,
    /// The kubelet's root directory as mounted in the agent.
    pub kubelet_root: PathBuf,
    /// The host's `/` as mounted in the agent (for hostPath volumes).
    pub host_root: PathBuf,
    /// Host directories hostPath volumes may be read from and written to.
    pub host_paths: HostPathAllowList,
    /// Privilege-giving content RestoreSessions may ask for.
    pub allow_privileged: repo_format::ops::restore::Privileged,
    /// What Repositories may use (credentials, endpoints, local paths).
    pub tenants: repository::TenantPolicy,
    /// Where Repositories' Secrets are read.
    pub secrets: repository::SecretSource,
    /// Which items this process runs and where it finds their volumes.
    pub scope: Scope,
    /// Heartbeat age after which another claim on this node is abandoned.
    pub takeover_after: Duration,
    /// How often progress is written to an item.
    pub progress_every: Duration,
    /// The metrics.
    pub metrics: Metrics,
    /// Work running now, so a rescan does not start it twice.
    running: Mutex<HashSet<WorkKey>>,
    /// Work that had to wait (pod or volume not ready), and when to look
    /// at it again.
    waiting: Mutex<HashMap<WorkKey, Instant>>,
}

/// Which items a process runs.
#[derive(Debug, Clone)]
pub enum Scope {
    /// The node agent: every node-agent item of its node, read through the
    /// kubelet's directories.
    Node,
    /// A Job executor: the one item of `claim`, mounted at `mount` in its
    /// own pod.
    Job {
        /// The PersistentVolumeClaim (in the session's namespace).
        claim: String,
        /// Where this pod mounts it.
        mount: PathBuf,
        /// This pod's name (the snapshots' `pod=` tag).
        pod: String,
    },
}

/// How long work that had to wait is left alone before it is looked at again.
const WAIT_RETRY: Duration = Duration::from_secs(5);

/// Identifies a piece of work across rescans.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WorkKey {
    kind: &'static str,
    uid: String,
    slot: Slot,
}

/// A piece of work found in a session's status.
#[derive(Debug, Clone)]
pub enum Work {
    /// Back up `status.items[slot]` of the session.
    Backup(Arc<BackupSession>, Slot, Previous),
    /// Restore `status.items[slot]` of the session.
    Restore(Arc<RestoreSession>, Slot, Previous),
    /// Run the retention of the session.
    Retention(Arc<BackupSession>, Previous),
    /// Run the check a Repository's status asks for, identified by the
    /// run's `scheduledTime`.
    Check(Arc<Repository>, Slot, Previous),
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub fn run(args: AgentArgs) -> Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))?;
    Ok(0)
}

async fn run_async(args: AgentArgs) -> Result<()> {
    note_start();
    let host_paths = HostPathAllowList::parse(args.allow_host_paths.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("--allow-host-path: {e}"))?;
    // The host's / is not mounted (deploy/agent.yaml): each allowed
    // directory must be, at --host-root/DIR, or its volumes fail later.
    for spec in &args.allow_host_paths {
        let dir = spec.split_once('=').map_or(spec.as_str(), |(_, d)| d);
        let seen = args.host_root.join(dir.trim_start_matches('/'));
        if !seen.is_dir() {
            tracing::warn!(
                "--allow-host-path {spec}: {} is not a directory here; mount the host's {dir} \
                 at {} (deploy/agent.yaml), or its hostPath volumes cannot be backed up or \
                 restored",
                seen.display(),
                seen.display()
            );
        }
    }
    for p in &args.allow_local_repositories {
        anyhow::ensure!(
            p.is_absolute(),
            "--allow-local-repository {} is not an absolute path",
            p.display()
        );
    }
    let tenants = repository::TenantPolicy {
        ambient_identity: args.allow_ambient_identity.clone(),
        endpoint_overrides: args.allow_endpoint_override.clone(),
        local_roots: args.allow_local_repositories.clone(),
        egress: args.allow_egress.clone(),
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster or KUBECONFIG)")?;
    let pod = args.pod_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "agent".into())
    });
    let nonce = format!("{:08x}", rand_nonce());
    let metrics = Metrics::default();
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        node: args.node_name.clone(),
        instance: format!("{}/{pod}/{nonce}", args.node_name),
        namespace: args.namespace.clone(),
        kubelet_root: args.kubelet_root.clone(),
        host_root: args.host_root.clone(),
        host_paths,
        allow_privileged: args.allow_privileged_restore,
        tenants,
        secrets: repository::SecretSource::Api,
        scope: Scope::Node,
        takeover_after: args.takeover_after,
        progress_every: args.progress_interval,
        metrics: metrics.clone(),
        running: Mutex::new(HashSet::new()),
        waiting: Mutex::new(HashMap::new()),
    });
    let shutdown = stash_api::serve::shutdown_on_signal("agent");
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    tracing::info!(
        node = %ctx.node, instance = %ctx.instance, kubelet_root = %ctx.kubelet_root.display(),
        metrics = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "agent started"
    );
    let server = tokio::spawn(stash_api::serve::serve_metrics(
        listener,
        metrics.registry.clone(),
        shutdown.clone(),
    ));

    let changed = Arc::new(Notify::new());
    // Only the sessions with unfinished work on this node (the controller
    // labels them), and without the fields the agent never reads: the
    // agent's memory does not grow with the cluster.
    let mine = watcher::Config::default().labels(&stash_api::nodes::node_label(&ctx.node));
    let (backups, backup_writer) = reflector::store();
    let (restores, restore_writer) = reflector::store();
    let watch_backups = watch(
        reflector::reflector(
            backup_writer,
            watcher(Api::<BackupSession>::all(client.clone()), mine.clone()).modify(slim),
        ),
        changed.clone(),
        shutdown.clone(),
    );
    let watch_restores = watch(
        reflector::reflector(
            restore_writer,
            watcher(Api::<RestoreSession>::all(client.clone()), mine.clone()).modify(slim),
        ),
        changed.clone(),
        shutdown.clone(),
    );
    // Repositories only while a check run is unfinished (the controller
    // labels them): any agent may take a check.
    let (repositories, repository_writer) = reflector::store();
    let checking = watcher::Config::default().labels(&format!(
        "{}={}",
        stash_api::check::CHECK_LABEL,
        stash_api::check::CHECK_LABEL_VALUE
    ));
    let watch_repositories = watch(
        reflector::reflector(
            repository_writer,
            watcher(Api::<Repository>::all(client.clone()), checking).modify(slim),
        ),
        changed.clone(),
        shutdown.clone(),
    );
    let slots = Arc::new(Semaphore::new(args.max_concurrent.max(1) as usize));
    let rescan = Duration::from_secs(2)
        .min(ctx.takeover_after / 2)
        .max(Duration::from_millis(200));
    let scan_loop = {
        let (ctx, shutdown) = (ctx.clone(), shutdown.clone());
        let (backups, restores) = (backups.clone(), restores.clone());
        let repositories = repositories.clone();
        async move {
            let _ = backups.wait_until_ready().await;
            let _ = restores.wait_until_ready().await;
            let _ = repositories.wait_until_ready().await;
            loop {
                for w in find_work(&ctx, &backups, &restores, &repositories) {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        break;
                    };
                    let key = w.key();
                    if !ctx.running.lock().expect("running set").insert(key.clone()) {
                        continue;
                    }
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let waits = work::run(&ctx, w).await;
                        let mut waiting = ctx.waiting.lock().expect("waiting set");
                        if waits {
                            waiting.insert(key.clone(), Instant::now() + WAIT_RETRY);
                        } else {
                            waiting.remove(&key);
                        }
                        drop(waiting);
                        ctx.running.lock().expect("running set").remove(&key);
                        drop(permit);
                    });
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = changed.notified() => {}
                    () = tokio::time::sleep(rescan) => {}
                }
            }
        }
    };
    tokio::join!(watch_backups, watch_restores, watch_repositories, scan_loop);
    // Running items keep their claim; a restarted agent takes them over.
    server.await.context("metrics server task")??;
    Ok(())
}

/// Drops what the agent never reads from a watched session before it is
/// cached: managed fields and the last-applied annotation of `kubectl
/// apply`, often larger than the rest of the object.
fn slim<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn rand_nonce() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ std::process::id().rotate_left(16)
}

async fn watch<K: kube::Resource + Clone + Send + Sync + 'static>(
    stream: impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
    changed: Arc<Notify>,
    shutdown: CancellationToken,
) where
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let stream = stream.default_backoff().touched_objects();
    tokio::pin!(stream);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            ev = stream.next() => match ev {
                None => return,
                Some(Ok(_)) => changed.notify_one(),
                Some(Err(e)) => tracing::warn!(error = %e, "watch failed; retrying"),
            },
        }
    }
}

impl Work {
    /// The claim the work's slot holds in the session as last seen.
    fn current_claim(&self) -> Option<Claim> {
        let index = |slot: &Slot| match slot {
            Slot::Item { index, .. } => Some(*index),
            Slot::Retention | Slot::Check { .. } => None,
        };
        let item = match self {
            Work::Backup(s, slot, _) => &s.status.as_ref()?.items.get(index(slot)?)?.common,
            Work::Restore(s, slot, _) => &s.status.as_ref()?.items.get(index(slot)?)?.common,
            Work::Retention(s, _) => {
                return Some(s.status.as_ref()?.retention.as_ref()?.claim.clone())
            }
            Work::Check(r, _, _) => return Some(r.status.as_ref()?.check.as_ref()?.claim.clone()),
        };
        Some(item.claim.clone())
    }

    fn key(&self) -> WorkKey {
        match self {
            Work::Backup(s, slot, _) => WorkKey {
                kind: "backup",
                uid: s.uid().unwrap_or_default(),
                slot: slot.clone(),
            },
            Work::Restore(s, slot, _) => WorkKey {
                kind: "restore",
                uid: s.uid().unwrap_or_default(),
                slot: slot.clone(),
            },
            Work::Retention(s, _) => WorkKey {
                kind: "retention",
                uid: s.uid().unwrap_or_default(),
                slot: Slot::Retention,
            },
            Work::Check(r, slot, _) => WorkKey {
                kind: "check",
                uid: r.uid().unwrap_or_default(),
                slot: slot.clone(),
            },
        }
    }
}

/// Whether this agent should take a piece of work in `phase` under `claim`.
fn takeable(ctx: &Ctx, phase: ItemPhase, claim: &Claim) -> Option<Previous> {
    match phase {
        ItemPhase::Pending => Some(Previous::Pending),
        ItemPhase::Running => {
            let holder = claim.claimed_by.clone()?;
            if holder == ctx.instance {
                // Ours and running here, or ours and lost in a bug: the
                // running set tells which.
                return Some(Previous::Abandoned(holder));
            }
            let beat = claim.heartbeat_time.as_ref().map(from_time)?;
            let silent = (Utc::now() - beat).to_std().unwrap_or_default();
            (silent >= ctx.takeover_after).then_some(Previous::Abandoned(holder))
        }
        ItemPhase::Succeeded | ItemPhase::Failed => None,
    }
}

/// Every piece of work for this node, oldest session first, then the
/// checks.
fn find_work(
    ctx: &Ctx,
    backups: &Store<BackupSession>,
    restores: &Store<RestoreSession>,
    repositories: &Store<Repository>,
) -> Vec<Work> {
    let mut skip = ctx.running.lock().expect("running set").clone();
    {
        let now = Instant::now();
        let mut waiting = ctx.waiting.lock().expect("waiting set");
        waiting.retain(|_, until| *until > now);
        skip.extend(waiting.keys().cloned());
    }
    let running = skip;
    let mut out: Vec<(Option<chrono::DateTime<Utc>>, Work)> = Vec::new();
    let mine = |node: &Option<String>| node.as_deref() == Some(ctx.node.as_str());
    let mut push = |created, w: Work| {
        if !running.contains(&w.key()) {
            out.push((created, w));
        }
    };
    // The items of one session on this node that can be taken, as slots.
    let takeable_items = |items: Vec<&ItemCommon>| -> Vec<(Slot, Previous)> {
        items
            .into_iter()
            .enumerate()
            .filter(|(_, i)| mine(&i.node) && !i.runs_in_job())
            .filter_map(|(index, i)| {
                let prev = takeable(ctx, i.phase, &i.claim)?;
                let slot = Slot::Item {
                    index,
                    namespace: i.namespace.to_owned(),
                    pod: i.pod.to_owned(),
                    volume: i.volume.to_owned(),
                };
                Some((slot, prev))
            })
            .collect()
    };
    for s in backups.state() {
        let Some(status) = s.status.as_ref().filter(|st| !st.phase.is_finished()) else {
            continue;
        };
        let created = s.metadata.creation_timestamp.as_ref().map(from_time);
        let items = status.items.iter().map(|i| &i.common);
        for (slot, prev) in takeable_items(items.collect()) {
            push(created, Work::Backup(s.clone(), slot, prev));
        }
        if let Some(r) = status.retention.as_ref().filter(|r| mine(&r.node)) {
            if let Some(prev) = takeable(ctx, r.phase, &r.claim) {
                push(created, Work::Retention(s.clone(), prev));
            }
        }
    }
    for s in restores.state() {
        let Some(status) = s.status.as_ref().filter(|st| !st.phase.is_finished()) else {
            continue;
        };
        let created = s.metadata.creation_timestamp.as_ref().map(from_time);
        let items = status.items.iter().map(|i| &i.common);
        for (slot, prev) in takeable_items(items.collect()) {
            push(created, Work::Restore(s.clone(), slot, prev));
        }
    }
    // Checks: any agent may take one (the claim decides); not a Job.
    if matches!(ctx.scope, Scope::Node) {
        for r in repositories.state() {
            let Some(run) = r.status.as_ref().and_then(|s| s.check.as_ref()) else {
                continue;
            };
            let Some(scheduled) = run.scheduled_time.as_ref() else {
                continue;
            };
            let Ok(Value::String(scheduled)) = serde_json::to_value(scheduled) else {
                continue;
            };
            // A takeover is of a run whose heartbeat stopped, on any node.
            if let Some(prev) = takeable(ctx, run.phase, &run.claim) {
                let asked = Some(from_time(
                    run.scheduled_time.as_ref().expect("checked above"),
                ));
                push(
                    asked,
                    Work::Check(r.clone(), Slot::Check { scheduled }, prev),
                );
            }
        }
    }
    // Retention after items, checks last, and older sessions first.
    out.sort_by_key(|(t, w)| {
        let rank = match w {
            Work::Backup(..) | Work::Restore(..) => 0,
            Work::Retention(..) => 1,
            Work::Check(..) => 2,
        };
        (rank, *t)
    });
    out.into_iter().map(|(_, w)| w).collect()
}
