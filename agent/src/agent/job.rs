//! `stash job backup`: the executor a controller-made Job runs for a
//! PersistentVolumeClaim that no pod mounts.
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

use anyhow::{bail, Context as _, Result};
use kube::{Api, Client};
use stash_api::{BackupSession, ItemPhase};

use super::claim::{Previous, Slot};
use super::metrics::Metrics;
use super::repository::{SecretSource, TenantPolicy};
use super::{Ctx, Scope, Work};
use crate::cli::JobArgs;

/// Runs the backup item of `args.claim` in `args.session`; exit status 0
/// when it succeeded, 1 when it failed (the item says why).
pub fn backup(args: JobArgs) -> Result<u8> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .context("starting the async runtime")?;
    rt.block_on(backup_async(args))
}

async fn backup_async(args: JobArgs) -> Result<u8> {
    super::note_start();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster)")?;
    let ns = args.namespace.clone();
    let sessions: Api<BackupSession> = Api::namespaced(client.clone(), &ns);
    let session = sessions
        .get(&args.session)
        .await
        .with_context(|| format!("reading BackupSession {ns}/{}", args.session))?;
    let (index, item) = session
        .status
        .iter()
        .flat_map(|s| s.items.iter().enumerate())
        .find(|(_, i)| {
            i.runs_in_job() && i.persistent_volume_claim.as_deref() == Some(args.claim.as_str())
        })
        .with_context(|| {
            format!(
                "BackupSession {ns}/{} has no Job item for PersistentVolumeClaim {}",
                args.session, args.claim
            )
        })?;
    if item.phase != ItemPhase::Pending {
        bail!(
            "the item of PersistentVolumeClaim {ns}/{} is {:?}, not Pending: a Job runs it only once",
            args.claim,
            item.phase
        );
    }
    let slot = Slot::Item {
        index,
        namespace: item.namespace.clone(),
        pod: item.pod.clone(),
        volume: item.volume.clone(),
    };
    let nonce = format!("{:08x}", super::rand_nonce());
    let ctx = Ctx {
        client: client.clone(),
        node: args.node_name.clone(),
        instance: format!("job/{}/{nonce}", args.pod_name),
        kubelet_root: Default::default(),
        host_root: Default::default(),
        host_paths: Default::default(),
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
    tracing::info!(session = %format!("{ns}/{}", args.session), claim = %args.claim, instance = %ctx.instance, "job executor started");
    let waits = super::work::run(
        &ctx,
        Work::Backup(Arc::new(session), slot, Previous::Pending),
    )
    .await;
    if waits {
        bail!("the item could not start (see its message)");
    }
    let after = sessions
        .get(&args.session)
        .await
        .with_context(|| format!("reading BackupSession {ns}/{}", args.session))?;
    let phase = after
        .status
        .as_ref()
        .and_then(|s| s.items.get(index))
        .map(|i| i.phase);
    Ok(if phase == Some(ItemPhase::Succeeded) {
        0
    } else {
        1
    })
}
