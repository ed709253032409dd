//! `stash job backup` and `stash job restore`: the executor a
//! controller-made Job runs for a PersistentVolumeClaim that no pod mounts.
//!
//! It is the node agent's machinery scoped to one item: the same claim
//! protocol (`claim`), progress and heartbeat, engine calls and result
//! (`work`), but the volume is this pod's own mount of the claim (not a
//! kubelet directory), the Repository's Secrets are the Secret volumes the
//! controller mounted into this pod only (its ServiceAccount reads no
//! Secret), and it needs no privilege beyond reading the volume's files.
//! It claims exactly the item of its claim, and only while it is Pending: a
//! Job's pod is not restarted (`backoffLimit: 0`), so there is nothing to
//! take over; the controller fails the item with the pod's reason when the
//! pod fails.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context as _, Result};
use kube::{Api, Client};
use stash_api::{BackupSession, ItemCommon, ItemPhase, RestoreSession};

use super::claim::{Previous, Slot};
use super::metrics::Metrics;
use super::repository::{SecretSource, TenantPolicy};
use super::{Ctx, Scope, Work};
use crate::cli::JobArgs;

/// Runs the backup item of `args.claim` in `args.session`; exit status 0
/// when it succeeded, 1 when it failed (the item says why).
pub fn backup(args: JobArgs) -> Result<u8> {
    block_on(run_item(args, Kind::Backup))
}

/// Runs the restore item of `args.claim` in `args.session`, as [`backup`].
pub fn restore(args: JobArgs) -> Result<u8> {
    block_on(run_item(args, Kind::Restore))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Backup,
    Restore,
}

fn block_on(f: impl std::future::Future<Output = Result<u8>>) -> Result<u8> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

/// The item of `claim` in a session's items: its index, identity and phase.
fn find_item<'a>(
    items: impl Iterator<Item = &'a ItemCommon>,
    claim: &str,
) -> Option<(usize, Slot, ItemPhase)> {
    items
        .enumerate()
        .find(|(_, i)| i.runs_in_job() && i.persistent_volume_claim.as_deref() == Some(claim))
        .map(|(index, i)| {
            let slot = Slot::Item {
                index,
                namespace: i.namespace.clone(),
                pod: i.pod.clone(),
                volume: i.volume.clone(),
            };
            (index, slot, i.phase)
        })
}

async fn run_item(args: JobArgs, kind: Kind) -> Result<u8> {
    super::note_start();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster)")?;
    let ns = args.namespace.clone();
    let what = match kind {
        Kind::Backup => "BackupSession",
        Kind::Restore => "RestoreSession",
    };
    let backups: Api<BackupSession> = Api::namespaced(client.clone(), &ns);
    let restores: Api<RestoreSession> = Api::namespaced(client.clone(), &ns);
    let read = |e| format!("reading {what} {ns}/{}: {e}", args.session);
    let (work, index) = match kind {
        Kind::Backup => {
            let s = backups
                .get(&args.session)
                .await
                .map_err(|e| anyhow!(read(e)))?;
            let items = s.status.iter().flat_map(|st| st.items.iter());
            let items = items.map(|i| &i.common);
            let (index, slot, phase) =
                find_item(items, &args.claim).with_context(|| no_item(what, &ns, &args))?;
            pending(phase, &ns, &args)?;
            (Work::Backup(Arc::new(s), slot, Previous::Pending), index)
        }
        Kind::Restore => {
            let s = restores
                .get(&args.session)
                .await
                .map_err(|e| anyhow!(read(e)))?;
            let items = s.status.iter().flat_map(|st| st.items.iter());
            let items = items.map(|i| &i.common);
            let (index, slot, phase) =
                find_item(items, &args.claim).with_context(|| no_item(what, &ns, &args))?;
            pending(phase, &ns, &args)?;
            (Work::Restore(Arc::new(s), slot, Previous::Pending), index)
        }
    };
    let nonce = format!("{:08x}", super::rand_nonce());
    let ctx = Ctx {
        client: client.clone(),
        node: args.node_name.clone(),
        instance: format!("job/{}/{nonce}", args.pod_name),
        // A Job runs no retention (that goes to a node agent), so it takes
        // no maintenance Lease.
        namespace: String::new(),
        kubelet_root: Default::default(),
        host_root: Default::default(),
        host_paths: Default::default(),
        // A restore Job restores what a node agent restores by default:
        // no device nodes, set-id bits, file capabilities or security
        // extended attributes.
        allow_privileged: Default::default(),
        // A Job runs in the tenant's namespace with the tenant's Secrets:
        // no cloud identity of its own, no endpoint overrides, no local
        // repositories.
        tenants: TenantPolicy::default(),
        secrets: SecretSource::Dir(args.secrets.clone()),
        scope: Scope::Job {
            claim: args.claim.clone(),
            mount: args.mount.clone(),
            pod: args.pod_name.clone(),
        },
        takeover_after: std::time::Duration::MAX,
        progress_every: args.progress_interval,
        metrics: Metrics::default(),
        running: Mutex::new(HashSet::new()),
        waiting: Mutex::new(HashMap::new()),
    };
    tracing::info!(session = %format!("{ns}/{}", args.session), kind = what, claim = %args.claim, instance = %ctx.instance, "job executor started");
    if super::work::run(&ctx, work).await {
        bail!("the item could not start (see its message)");
    }
    let phase = match kind {
        Kind::Backup => backups
            .get(&args.session)
            .await
            .map_err(|e| anyhow!(read(e)))?
            .status
            .and_then(|s| s.items.get(index).map(|i| i.common.phase)),
        Kind::Restore => restores
            .get(&args.session)
            .await
            .map_err(|e| anyhow!(read(e)))?
            .status
            .and_then(|s| s.items.get(index).map(|i| i.common.phase)),
    };
    Ok(if phase == Some(ItemPhase::Succeeded) {
        0
    } else {
        1
    })
}

fn no_item(what: &str, ns: &str, args: &JobArgs) -> String {
    format!(
        "{what} {ns}/{} has no Job item for PersistentVolumeClaim {}",
        args.session, args.claim
    )
}

fn pending(phase: ItemPhase, ns: &str, args: &JobArgs) -> Result<()> {
    if phase != ItemPhase::Pending {
        bail!(
            "the item of PersistentVolumeClaim {ns}/{} is {phase:?}, not Pending: a Job runs it only once",
            args.claim
        );
    }
    Ok(())
}
