//! The Stash controller: schedules backups in-process and resolves sessions
//! into per-volume work for the node agents. It never reads volume data.
//!
//! - [`ticker`] fires the cron ticks (with jitter) of every
//!   BackupConfiguration on time, independent of the reconcile queues;
//! - [`scheduler`] creates a tick's session (concurrency policy) and
//!   reconciles BackupConfigurations: finalizer, paused, history limits, and
//!   the Repository namespace policy as a `Ready` condition;
//! - [`session`] reconciles BackupSessions: resolves the target into one
//!   item per volume on its pod's node, aggregates item phases, times out
//!   stuck items, hands the retention run to an agent, records the last
//!   backup and the repository's figures on the Repository;
//! - [`status`] writes session status on condition of the version read, so
//!   the controller never overwrites what an agent wrote meanwhile;
//! - [`restore`] reconciles RestoreSessions: resolves the target into one
//!   item per target volume, waits for unscheduled pods within the
//!   session's timeout, aggregates item phases;
//! - [`auto_backup`] turns `stash.rs/backup-schedule` pod annotations into
//!   BackupConfigurations owned by the pod's workload;
//! - [`agent_secrets`] keeps, in each namespace with Repositories, the Role
//!   that lets the node agents `get` exactly the Secrets those Repositories
//!   name;
//! - [`finalizers`] hold back the deletion of a BackupConfiguration while
//!   its sessions run, and of a Repository while configurations use it;
//! - [`leader`] elects one scheduling replica with a Lease;
//! - [`webhook`] (on every replica, leader or not) gives the new pods of a
//!   workload restored with `spec.rollout` the `stash restore-wait` init
//!   container; [`certs`] keeps its TLS certificate and the apiserver's
//!   trust in it;
//! - [`notify`] tells webhooks, Slack and Alertmanager of finished
//!   sessions, from a bounded queue, never holding a reconcile back;
//! - `node_labels` labels each unfinished session with the nodes that
//!   have agent work in it, so a node agent watches only its own;
//! - [`metrics`] serves `/metrics` and `/healthz`.
//!
//! [`run`] ties them together; `main.rs` only parses flags and builds the
//! client, listener and shutdown token it passes in.

pub mod agent_secrets;
pub mod auto_backup;
pub mod certs;
pub mod checks;
pub mod clock;
pub mod conditions;
pub mod error;
pub mod events;
pub mod finalizers;
pub mod jobs;
pub mod leader;
pub mod metrics;
mod node_labels;
pub mod notify;
pub mod restore;
pub mod scheduler;
pub mod session;
pub mod status;
pub mod targets;
#[cfg(test)]
mod testing;
pub mod ticker;
pub mod webhook;

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use stash_api::{BackupConfiguration, BackupSession, Repository, RestoreSession};
use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};
pub use leader::{LeaderElector, LeaseConfig};
pub use metrics::Metrics;
pub use stash_api::policy::HostPathAllowList;

/// Annotation on a BackupSession naming the controller replica that
/// scheduled it.
pub const ANNOTATION_SCHEDULED_BY: &str = "stash.rs/scheduled-by";

/// Settings of one controller replica.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This replica's identity (pod name), for the Lease, events and the
    /// `stash.rs/scheduled-by` annotation.
    pub identity: String,
    /// Host directories hostPath volumes may be backed up from.
    pub host_paths: HostPathAllowList,
    /// How many objects of each kind are reconciled at once.
    pub concurrency: u16,
    /// How notifications reach their receivers.
    pub notify: notify::NotifySettings,
    /// How long an unfinished backup item may have its pod gone (deleted
    /// or replaced) or its node NotReady (or gone) before it fails with
    /// `PodGone` or `NodeNotReady`, so its session finishes and the next
    /// tick runs (`--lost-item-grace`).
    pub lost_item_grace: std::time::Duration,
    /// The agents' ServiceAccount, bound in each namespace with Repositories
    /// to the Role [`agent_secrets::ROLE`]; `None` leaves the agents'
    /// Secret access to the cluster admin (`--agent-service-account ''`).
    pub agent_account: Option<agent_secrets::AgentAccount>,
    /// Whether RestoreSessions with `spec.rollout` may patch (restart)
    /// their workload (`--rollout-restores`; the RBAC is deploy/rollout/).
    pub rollout_restores: bool,
    /// The controller's own namespace: rollout restores never patch a
    /// workload there.
    pub own_namespace: String,
    /// The image of the Jobs that back up claims no pod mounts
    /// (`stash job backup`); `None`: such items fail saying so.
    pub job_image: Option<webhook::RestoreWaitImage>,
}

impl Settings {
    /// The defaults of the command line for the replica `identity`: no
    /// hostPath allowed, 4 objects of a kind at once, notifications as
    /// [`notify::NotifySettings::default`], [`DEFAULT_LOST_ITEM_GRACE`],
    /// the agents' Secrets Roles bound to `stash-system/stash-agent`, no
    /// rollout restores, own namespace `stash-system`.
    /// Change single fields with struct update syntax.
    pub fn new(identity: impl Into<String>) -> Settings {
        Settings {
            identity: identity.into(),
            host_paths: HostPathAllowList::default(),
            concurrency: 4,
            notify: notify::NotifySettings::default(),
            lost_item_grace: DEFAULT_LOST_ITEM_GRACE,
            agent_account: Some(agent_secrets::AgentAccount::default()),
            rollout_restores: false,
            own_namespace: "stash-system".into(),
            job_image: None,
        }
    }
}

/// The default of [`Settings::lost_item_grace`]: longer than the kubelet's
/// usual NotReady blips and a pod's restart, short enough that a lost node
/// costs at most one schedule tick of a frequent schedule.
pub const DEFAULT_LOST_ITEM_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

/// What every reconciliation shares.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// The settings.
    pub settings: Settings,
    /// The metrics.
    pub metrics: Metrics,
    /// Publishes Events on our objects.
    pub recorder: Recorder,
    /// Every BackupSession, kept current by a watch: the scheduler reads
    /// the sessions of a configuration from here instead of listing.
    pub sessions: Store<BackupSession>,
    /// Every BackupConfiguration, kept current by a watch.
    pub configs: Store<BackupConfiguration>,
    /// Every Repository, kept current by a watch.
    pub repositories: Store<Repository>,
    /// The last tick the ticker handled, per configuration.
    pub ticks: clock::Ticks,
    /// Ticks without a session yet: reconcilers yield to them.
    pub firing: clock::Firing,
    /// Finished sessions waiting to be announced.
    pub notifier: notify::Notifier,
    /// When the controller first saw an item's pod or node gone, by
    /// session UID, item and reason (see [`session`]); lost on restart,
    /// which only restarts the grace period.
    pub lost_since: session::LostSince,
    /// Serialises the agents' Secrets Roles ([`agent_secrets::sync`]).
    pub agent_secrets: agent_secrets::SyncLock,
}

/// How many changed objects a shared watch holds for its slowest
/// subscriber before it waits.
const SHARED_BUFFER: usize = 256;

/// A watch of all `K` feeding a shared cache, with managed fields dropped
/// before they reach it (they are most of an object's size and nobody here
/// reads them): the cache, a subscription per consumer, and the future that
/// drives the watch until `stop`.
fn shared_watch<K>(
    api: Api<K>,
    subscribers: usize,
    stop: CancellationToken,
) -> (
    Store<K>,
    Vec<reflector::ReflectHandle<K>>,
    impl std::future::Future<Output = ()> + Send,
)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store_shared(SHARED_BUFFER);
    let handles = (0..subscribers)
        .map(|_| {
            writer
                .subscribe()
                .expect("a shared store can be subscribed")
        })
        .collect();
    let drive = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o: &mut K| {
                o.meta_mut().managed_fields = None;
            }),
    )
    .touched_objects()
    .take_until(async move { stop.cancelled().await })
    .for_each(|_| futures::future::ready(()));
    (store, handles, drive)
}

/// Runs `controller` (a kube `Controller` built with
/// `graceful_shutdown_on(shutdown)` whose own watch feeds `store`) until it
/// ends.
///
/// kube holds every reconcile until the store is ready, and a store fed by
/// the controller's own watch never becomes ready once that watch has ended
/// with the shutdown: a shutdown before the first list completed would wait
/// for ever. Nothing can have started then, so nothing is cut short by
/// dropping the controller.
pub(crate) async fn until_shutdown<K>(
    controller: impl std::future::Future<Output = ()>,
    store: Store<K>,
    shutdown: CancellationToken,
) where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    use futures::FutureExt;
    let never_ready = async move {
        shutdown.cancelled().await;
        // After the shutdown the watch is no longer polled: the answer
        // cannot change.
        if store.wait_until_ready().now_or_never().is_some() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = controller => {}
        () = never_ready => tracing::debug!("shut down before the watch had listed"),
    }
}

/// Runs the controllers until `shutdown`, as the leader. The caller must
/// hold the leadership Lease for as long as this runs.
pub async fn run_controllers(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    // One watch per kind, shared by everything that reads or follows it.
    let (configs, mut config_subs, config_watch) = shared_watch(
        Api::<BackupConfiguration>::all(client.clone()),
        2,
        shutdown.clone(),
    );
    let (sessions, mut session_subs, session_watch) = shared_watch(
        Api::<BackupSession>::all(client.clone()),
        2,
        shutdown.clone(),
    );
    let (repositories, mut repository_subs, repository_watch) =
        shared_watch(Api::<Repository>::all(client.clone()), 1, shutdown.clone());
    let watches = async {
        tokio::join!(config_watch, session_watch, repository_watch);
    };
    let reporter = Reporter {
        controller: "stash-controller".into(),
        instance: Some(settings.identity.clone()),
    };
    let concurrency = settings.concurrency;
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        settings,
        metrics,
        sessions: sessions.clone(),
        configs: configs.clone(),
        repositories: repositories.clone(),
        ticks: clock::Ticks::default(),
        firing: clock::Firing::default(),
        notifier: notify::Notifier::default(),
        lost_since: session::LostSince::default(),
        agent_secrets: agent_secrets::SyncLock::default(),
    });
    let config = controller::Config::default().concurrency(concurrency);
    let stop = shutdown.clone();
    let ticks = ticker::run(ctx.clone(), config_subs.remove(0), shutdown.clone());
    let schedule = Controller::for_shared_stream(config_subs.remove(0), configs.clone())
        .with_config(config.clone())
        // A session finishing may let a Forbid tick through or prune history.
        .watches_shared_stream(session_subs.remove(0), |s: Arc<BackupSession>| {
            let ns = s.metadata.namespace.clone()?;
            Some(reflector::ObjectRef::new(&s.spec.backup_configuration).within(&ns))
        })
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(scheduler::reconcile, scheduler::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let stop = shutdown.clone();
    let run_sessions = Controller::for_shared_stream(session_subs.remove(0), sessions.clone())
        .with_config(config.clone())
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(session::reconcile, session::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let stop = shutdown.clone();
    let restore_controller = Controller::new(
        Api::<RestoreSession>::all(ctx.client.clone()),
        watcher::Config::default(),
    );
    let restore_store = restore_controller.store();
    let restores = restore_controller
        .with_config(config)
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(restore::reconcile, restore::error_policy, ctx.clone())
        .for_each(|_| futures::future::ready(()));
    let restores = until_shutdown(restores, restore_store, shutdown.clone());
    let stop = shutdown.clone();
    let run_repositories =
        Controller::for_shared_stream(repository_subs.remove(0), repositories.clone())
            .with_config(controller::Config::default().concurrency(concurrency))
            .graceful_shutdown_on(async move { stop.cancelled().await })
            .run(
                finalizers::reconcile_repository,
                finalizers::error_policy,
                ctx.clone(),
            )
            .for_each(|_| futures::future::ready(()));
    let notifications = notify::run(ctx.clone(), shutdown.clone());
    let auto = auto_backup::run(ctx, shutdown.clone());
    // The scheduler decides on what it sees in the caches (Forbid, history,
    // the Repository): start only once they hold everything.
    let controllers = async move {
        let ready = tokio::try_join!(
            sessions.wait_until_ready(),
            configs.wait_until_ready(),
            repositories.wait_until_ready()
        );
        if ready.is_ok() {
            tokio::join!(
                ticks,
                schedule,
                run_sessions,
                restores,
                run_repositories,
                auto,
                notifications
            );
        }
    };
    tokio::join!(watches, controllers);
}

/// Waits for the leadership Lease, then runs the controllers while holding
/// it, until `shutdown` (Ok) or until leadership is lost (the error: the
/// process should exit so it never schedules without the Lease).
pub async fn run(
    client: Client,
    settings: Settings,
    lease: LeaseConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<()> {
    let elector = LeaderElector::new(client.clone(), lease);
    if !elector.acquire(&shutdown).await? {
        return Ok(());
    }
    tracing::info!(identity = %settings.identity, "acquired the leadership Lease; scheduling");
    metrics.leader.set(1);
    // The controllers stop with `shutdown`; the Lease is released only
    // after they have, so a successor never overlaps with a reconcile here.
    let controllers = run_controllers(client, settings, metrics.clone(), shutdown.child_token());
    let stop_holding = CancellationToken::new();
    let hold = elector.hold(&stop_holding);
    tokio::pin!(controllers, hold);
    let result = tokio::select! {
        // Lost: return at once, dropping (aborting) the controllers.
        lost = &mut hold => lost,
        () = &mut controllers => {
            stop_holding.cancel();
            hold.await
        }
    };
    metrics.leader.set(0);
    result
}
