//! `stash-controller`: flags, client, listener and shutdown signal; the
//! work is in the library ([`stash_controller::run`]).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use stash_controller::agent_secrets::AgentAccount;
use stash_controller::certs::CertSettings;
use stash_controller::webhook::{self, RestoreWaitImage, WebhookSettings};
use stash_controller::{metrics, HostPathAllowList, LeaseConfig, Metrics, Settings};

/// The Stash controller: schedules backups, resolves sessions into
/// per-volume work for the node agents.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// This replica's identity in the Lease and events (the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Namespace of the leadership Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "stash-system")]
    lease_namespace: String,
    /// Name of the leadership Lease.
    #[arg(long, default_value = "stash-controller")]
    lease_name: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration: u64,
    /// Seconds between renewals (and takeover attempts).
    #[arg(long, default_value_t = 2)]
    renew_period: u64,
    /// Address of the /metrics and /healthz server.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Host directory hostPath volumes may be backed up from and restored
    /// into: DIR for every namespace, NAMESPACE=DIR for one (repeatable).
    #[arg(long = "allow-host-path", value_name = "[NAMESPACE=]DIR")]
    allow_host_paths: Vec<String>,
    /// Objects of each kind reconciled at once.
    #[arg(long, default_value_t = 16)]
    concurrency: u16,
    /// Seconds an unfinished backup item may have its pod gone (deleted or
    /// replaced) or its node NotReady or gone before it fails (PodGone,
    /// NodeNotReady), so the session ends and the schedule goes on.
    #[arg(long, default_value_t = stash_controller::DEFAULT_LOST_ITEM_GRACE.as_secs())]
    lost_item_grace: u64,
    /// Address of the restore-wait admission webhook (HTTPS), served by
    /// every replica.
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// Do not serve the webhook: rollout restores then find their pods
    /// without restore-wait, and wait.
    #[arg(long)]
    no_webhook: bool,
    /// Image of the restore-wait init container; by default the image of
    /// the agent DaemonSet's container (--agent-daemonset).
    #[arg(long, env = "STASH_RESTORE_WAIT_IMAGE")]
    restore_wait_image: Option<String>,
    /// Image of the Jobs that back up claims no pod mounts (`stash job
    /// backup`); by default the restore-wait image, or the agent
    /// DaemonSet's.
    #[arg(long, env = "STASH_JOB_IMAGE")]
    job_image: Option<String>,
    /// The agent DaemonSet (in the controller's namespace) whose image the
    /// restore-wait init container runs, unless --restore-wait-image.
    #[arg(long, default_value = "stash-agent")]
    agent_daemonset: String,
    /// Secret (in the controller's namespace) holding the webhook's CA and
    /// serving certificate; generated when missing, or made by cert-manager.
    #[arg(long, default_value = "stash-webhook-tls")]
    webhook_secret: String,
    /// Service in front of the webhook: the DNS names of a generated
    /// certificate.
    #[arg(long, default_value = "stash-controller-webhook")]
    webhook_service: String,
    /// MutatingWebhookConfiguration whose caBundle the controller sets to
    /// the Secret's ca.crt; empty to leave it alone (cert-manager's CA
    /// injector sets it).
    #[arg(long, default_value = "stash-controller")]
    webhook_configuration: String,
    /// The node agents' ServiceAccount (in the controller's namespace): in
    /// each namespace with Repositories it is bound to a Role granting `get`
    /// on exactly the Secrets they name. Empty: make no such Roles (the
    /// admin grants the agents their Secrets otherwise).
    #[arg(long, default_value = "stash-agent")]
    agent_service_account: String,
    /// Let RestoreSessions with `spec.rollout` restart their workload (the
    /// controller then needs deploy/rollout/'s RBAC). Never in the
    /// controller's own namespace.
    #[arg(long)]
    rollout_restores: bool,
    /// Let notifications go to loopback addresses (development only: the
    /// controller's own metrics and webhook ports are there).
    #[arg(long)]
    notifications_allow_loopback: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("STASH_LOG")
                .unwrap_or_else(|_| "info,kube=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    anyhow::ensure!(
        args.renew_period > 0 && args.renew_period < args.lease_duration,
        "--renew-period ({}) must be positive and shorter than --lease-duration ({})",
        args.renew_period,
        args.lease_duration
    );
    let host_paths = HostPathAllowList::parse(args.allow_host_paths.iter().map(String::as_str))
        .map_err(|e| anyhow::anyhow!("--allow-host-path: {e}"))?;
    let identity = match args.identity {
        Some(i) => i,
        None => format!("stash-controller-{}", std::process::id()),
    };
    // kube's TLS uses ring; with aws-lc-rs also compiled in (feature
    // unification in the workspace) rustls needs to be told.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default()
        .await
        .context("cannot configure a Kubernetes client (in-cluster or KUBECONFIG)")?;
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;

    let shutdown = stash_api::serve::shutdown_on_signal("controller");

    let metrics = Metrics::default();
    let server = tokio::spawn(metrics::serve(listener, metrics.clone(), shutdown.clone()));
    let webhook = if args.no_webhook {
        None
    } else {
        let image = match args.restore_wait_image.clone() {
            Some(i) => RestoreWaitImage::Fixed(i),
            None => RestoreWaitImage::FromDaemonSet {
                namespace: args.lease_namespace.clone(),
                name: args.agent_daemonset.clone(),
            },
        };
        let listener = tokio::net::TcpListener::bind(args.webhook_addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.webhook_addr))?;
        let certs = CertSettings::new(
            &args.lease_namespace,
            &args.webhook_secret,
            &args.webhook_service,
            Some(args.webhook_configuration.clone()).filter(|c| !c.is_empty()),
        );
        let settings = WebhookSettings {
            restore_wait_image: image,
            host_paths: host_paths.clone(),
        };
        Some(tokio::spawn(webhook::run(
            client.clone(),
            certs,
            settings,
            metrics.clone(),
            listener,
            shutdown.clone(),
        )))
    };
    let settings = Settings {
        identity: identity.clone(),
        host_paths: host_paths.clone(),
        concurrency: args.concurrency.max(1),
        notify: stash_controller::notify::NotifySettings {
            allow_loopback: args.notifications_allow_loopback,
            ..Default::default()
        },
        lost_item_grace: Duration::from_secs(args.lost_item_grace.max(1)),
        agent_account: Some(args.agent_service_account)
            .filter(|a| !a.is_empty())
            .map(|name| AgentAccount {
                namespace: args.lease_namespace.clone(),
                name,
            }),
        rollout_restores: args.rollout_restores,
        own_namespace: args.lease_namespace.clone(),
        job_image: Some(
            match args.job_image.clone().or(args.restore_wait_image.clone()) {
                Some(i) => RestoreWaitImage::Fixed(i),
                None => RestoreWaitImage::FromDaemonSet {
                    namespace: args.lease_namespace.clone(),
                    name: args.agent_daemonset.clone(),
                },
            },
        ),
    };
    let lease = LeaseConfig {
        namespace: args.lease_namespace,
        name: args.lease_name,
        identity,
        lease_duration: Duration::from_secs(args.lease_duration),
        renew_period: Duration::from_secs(args.renew_period),
    };
    let result = stash_controller::run(client, settings, lease, metrics, shutdown.clone()).await;
    shutdown.cancel();
    server.await.context("metrics server task")??;
    if let Some(w) = webhook {
        w.await.context("webhook task")??;
    }
    result.context("controller stopped")
}
