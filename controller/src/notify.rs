//! Notifications of finished sessions: a generic JSON webhook, Slack-shaped
//! incoming webhooks and Alertmanager's `/api/v2/alerts`.
//!
//! A session reconciled in a final phase offers itself to the [`Notifier`];
//! the receivers its configuration (or RestoreSession) names that want that
//! outcome get one POST each, retried with backoff, from a bounded queue
//! drained by a few tasks, so a slow or dead receiver never holds back a
//! reconcile, let alone a backup. When every receiver has answered (or
//! given up), the session gets a `Notified` condition saying so; a session
//! without it is offered again when the controller restarts, so an outcome
//! is announced at least once (a receiver may, rarely, hear it twice).
//!
//! The receiver's address is tenant input: a URL in the spec or in a Secret
//! of the object's namespace. The controller resolves it itself and refuses
//! addresses that would make it a confused deputy: link-local (cloud
//! metadata services such as 169.254.169.254), unspecified, multicast and,
//! unless `--notifications-allow-loopback`, loopback (its own metrics and
//! webhook ports); it never follows redirects and pins the connection to
//! the addresses it checked.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::{json, Value};
use stash_api::time::to_time;
use stash_api::{
    BackupConfiguration, BackupSession, BackupSessionStatus, Notification, NotificationFormat,
    RestoreSession, RestoreSessionStatus, SessionPhase,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::kube_err;
use crate::events::publish;
use crate::status::{write_if_unchanged, Written};
use crate::{conditions, Context};

/// The condition a session gets once its receivers were told.
pub const CONDITION_NOTIFIED: &str = "Notified";

/// Sessions that finished longer ago than this are not announced any more
/// (a controller started on an old cluster does not replay history).
const REPLAY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(1);

/// Sessions waiting for delivery; beyond this, new ones are dropped (and
/// counted), never waited for.
const QUEUE: usize = 256;

/// Deliveries under way at once.
const PARALLEL: usize = 4;

/// How the notifier reaches receivers.
#[derive(Debug, Clone)]
pub struct NotifySettings {
    /// Whether receivers on loopback addresses are allowed (tests, dev).
    pub allow_loopback: bool,
    /// Attempts per receiver before giving up.
    pub attempts: u32,
    /// Wait after the first failed attempt; doubled after each.
    pub first_backoff: Duration,
    /// Limit of one attempt (connect, send, response head).
    pub timeout: Duration,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            allow_loopback: false,
            attempts: 6,
            first_backoff: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What a session is, for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Backup,
    Restore,
    /// A BackupConfiguration without a success for twice its interval.
    Stale,
}

/// One finished session to announce.
struct Job {
    kind: Kind,
    namespace: String,
    name: String,
    uid: String,
    phase: SessionPhase,
    receivers: Vec<Notification>,
    /// Stash's JSON document, also the source of the other formats.
    document: Value,
}

/// The queue of sessions to announce; see the module docs.
pub struct Notifier {
    tx: mpsc::Sender<Job>,
    rx: Mutex<Option<mpsc::Receiver<Job>>>,
    /// Sessions (by UID) queued or being delivered.
    pending: Mutex<HashSet<String>>,
}

impl Default for Notifier {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            rx: Mutex::new(Some(rx)),
            pending: Mutex::new(HashSet::new()),
        }
    }
}

impl Notifier {
    /// Offers a finished BackupSession: queued when its configuration has
    /// receivers for its phase and it was not announced yet.
    pub(crate) fn offer_backup(&self, ctx: &Context, s: &BackupSession) {
        let Some(status) = s.status.as_ref() else {
            return;
        };
        if !due(
            status.phase,
            &status.conditions,
            status.completion_time.as_ref(),
        ) {
            return;
        }
        let ns = s.namespace().unwrap_or_default();
        let Some(cfg) = ctx
            .configs
            .get(&ObjectRef::new(&s.spec.backup_configuration).within(&ns))
        else {
            return;
        };
        let receivers = &cfg.spec.notifications;
        self.queue(ctx, Kind::Backup, s, status.phase, receivers, || {
            backup_document(s, status)
        });
    }

    /// Offers a finished RestoreSession, as [`Self::offer_backup`].
    pub(crate) fn offer_restore(&self, ctx: &Context, rs: &RestoreSession) {
        let Some(status) = rs.status.as_ref() else {
            return;
        };
        if !due(
            status.phase,
            &status.conditions,
            status.completion_time.as_ref(),
        ) {
            return;
        }
        let receivers = &rs.spec.notifications;
        self.queue(ctx, Kind::Restore, rs, status.phase, receivers, || {
            restore_document(rs, status)
        });
    }

    /// Queues `obj`'s announcement to those of `receivers` that want
    /// `phase`, with the `document` it makes; nothing when none wants it.
    fn queue<K: Resource>(
        &self,
        ctx: &Context,
        kind: Kind,
        obj: &K,
        phase: SessionPhase,
        receivers: &[Notification],
        document: impl FnOnce() -> Value,
    ) {
        let receivers = wanted(receivers, phase);
        if receivers.is_empty() {
            return;
        }
        let job = Job {
            kind,
            namespace: obj.meta().namespace.clone().unwrap_or_default(),
            name: obj.meta().name.clone().unwrap_or_default(),
            uid: obj.meta().uid.clone().unwrap_or_default(),
            phase,
            receivers,
            document: document(),
        };
        self.enqueue(ctx, job);
    }

    /// Offers that configuration `cfg` went stale: no success since `since`
    /// (its creation when none ever succeeded), more than twice its
    /// schedule's `interval`. Sent once per stale spell (the caller offers
    /// it when the `Stale` condition turns True).
    pub(crate) fn offer_stale(
        &self,
        ctx: &Context,
        cfg: &BackupConfiguration,
        since: DateTime<Utc>,
        succeeded_once: bool,
        interval: chrono::TimeDelta,
        message: &str,
    ) {
        let receivers: Vec<Notification> = cfg
            .spec
            .notifications
            .iter()
            .filter(|n| n.wants_stale())
            .cloned()
            .collect();
        if receivers.is_empty() {
            return;
        }
        let ns = cfg.namespace().unwrap_or_default();
        let name = cfg.name_any();
        let job = Job {
            kind: Kind::Stale,
            namespace: ns.clone(),
            name: name.clone(),
            // One announcement per stale spell.
            uid: format!(
                "{}/stale/{}",
                cfg.uid().unwrap_or_default(),
                since.timestamp()
            ),
            phase: SessionPhase::Failed,
            receivers,
            document: json!({
                "version": 1,
                "kind": "BackupConfiguration",
                "namespace": ns,
                "name": name,
                "configuration": name,
                "phase": "Stale",
                "lastSuccessfulTime": succeeded_once.then(|| to_time(since)),
                "scheduleIntervalSeconds": interval.num_seconds(),
                "message": message,
                "items": [],
                "object": format!("/apis/stash.rs/v1alpha1/namespaces/{ns}/backupconfigurations/{name}"),
            }),
        };
        self.enqueue(ctx, job);
    }

    /// Queues `job` unless its object is queued already; drops it (counted)
    /// when the queue is full.
    fn enqueue(&self, ctx: &Context, job: Job) {
        let uid = job.uid.clone();
        if !self
            .pending
            .lock()
            .expect("not poisoned")
            .insert(uid.clone())
        {
            return;
        }
        let what = format!("{}/{}", job.namespace, job.name);
        if self.tx.try_send(job).is_err() {
            self.pending.lock().expect("not poisoned").remove(&uid);
            ctx.metrics
                .notifications
                .with_label_values(&["", "dropped"])
                .inc();
            tracing::warn!(
                object = %what,
                "notification queue full: this outcome is not announced"
            );
        }
    }
}

/// Whether a session in `phase` with `conditions` should be announced now.
fn due(
    phase: SessionPhase,
    conditions: &[Condition],
    completed: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> bool {
    phase.is_finished()
        && conditions::get(conditions, CONDITION_NOTIFIED).is_none()
        && completed.is_some_and(|t| Utc::now() - stash_api::time::from_time(t) < REPLAY_WINDOW)
}

fn wanted(receivers: &[Notification], phase: SessionPhase) -> Vec<Notification> {
    receivers
        .iter()
        .filter(|n| n.wants(phase))
        .cloned()
        .collect()
}

/// Stash's notification document for a BackupSession (the `Webhook` format,
/// documented in the README).
fn backup_document(s: &BackupSession, st: &BackupSessionStatus) -> Value {
    let ns = s.namespace().unwrap_or_default();
    let name = s.name_any();
    json!({
        "version": 1,
        "kind": "BackupSession",
        "namespace": ns,
        "name": name,
        "configuration": s.spec.backup_configuration,
        "phase": st.phase,
        "startTime": st.start_time,
        "completionTime": st.completion_time,
        "duration": st.duration,
        "message": conditions::get(&st.conditions, "Ready").map(|c| c.message.clone()),
        "items": st.items.iter().map(|i| json!({
            "pod": i.common.pod,
            "volume": i.common.volume,
            "node": i.common.node,
            "host": i.host,
            "phase": i.common.phase,
            "snapshotId": i.common.snapshot_id,
            "parentSnapshotId": i.parent_snapshot_id,
            "bytesDone": i.common.bytes_done,
            "bytesAdded": i.bytes_added,
            "filesDone": i.common.files_done,
            "error": i.common.error,
            "startTime": i.common.start_time,
            "endTime": i.common.end_time,
        })).collect::<Vec<_>>(),
        "object": format!("/apis/stash.rs/v1alpha1/namespaces/{ns}/backupsessions/{name}"),
    })
}

/// Stash's notification document for a RestoreSession.
fn restore_document(rs: &RestoreSession, st: &RestoreSessionStatus) -> Value {
    let ns = rs.namespace().unwrap_or_default();
    let name = rs.name_any();
    json!({
        "version": 1,
        "kind": "RestoreSession",
        "namespace": ns,
        "name": name,
        "phase": st.phase,
        "startTime": st.start_time,
        "completionTime": st.completion_time,
        "message": conditions::get(&st.conditions, "Ready").map(|c| c.message.clone()),
        "items": st.items.iter().map(|i| json!({
            "pod": i.common.pod,
            "volume": i.common.volume,
            "sourceVolume": i.source_volume,
            "node": i.common.node,
            "phase": i.common.phase,
            "snapshotId": i.common.snapshot_id,
            "bytesDone": i.common.bytes_done,
            "filesDone": i.common.files_done,
            "error": i.common.error,
            "startTime": i.common.start_time,
            "endTime": i.common.end_time,
        })).collect::<Vec<_>>(),
        "object": format!("/apis/stash.rs/v1alpha1/namespaces/{ns}/restoresessions/{name}"),
    })
}

/// One line a person reads (Slack's `text`, Alertmanager's summary).
fn summary(job: &Job) -> String {
    let what = match job.kind {
        Kind::Backup => format!(
            "Backup {}/{}",
            job.namespace,
            job.document["configuration"].as_str().unwrap_or("")
        ),
        Kind::Restore => format!("Restore {}/{}", job.namespace, job.name),
        Kind::Stale => {
            return format!(
                "Backup {}/{}: {}",
                job.namespace,
                job.name,
                job.document["message"]
                    .as_str()
                    .unwrap_or("no recent success")
            )
        }
    };
    let items = job.document["items"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let failed: Vec<String> = items
        .iter()
        .filter(|i| i["phase"] == "Failed")
        .map(|i| {
            format!(
                "{}/{}: {}",
                i["pod"].as_str().unwrap_or(""),
                i["volume"].as_str().unwrap_or(""),
                i["error"].as_str().unwrap_or("failed")
            )
        })
        .collect();
    let mut line = format!("{what} {:?} ({})", job.phase, job.name);
    if !items.is_empty() {
        line.push_str(&format!(
            ": {} of {} volume(s) failed",
            failed.len(),
            items.len()
        ));
    }
    if !failed.is_empty() {
        line.push_str(" — ");
        line.push_str(&failed.join("; "));
    } else if let Some(m) = job.document["message"].as_str() {
        line.push_str(" — ");
        line.push_str(m);
    }
    line
}

/// The request body for `format`.
fn body(job: &Job, format: NotificationFormat) -> Value {
    match format {
        NotificationFormat::Webhook => job.document.clone(),
        NotificationFormat::Slack => json!({ "text": summary(job) }),
        NotificationFormat::Alertmanager => {
            let (alertname, object_label) = match job.kind {
                Kind::Backup => ("StashBackupFailed", "configuration"),
                Kind::Restore => ("StashRestoreFailed", "restoresession"),
                Kind::Stale => ("StashBackupMissing", "configuration"),
            };
            let object = match job.kind {
                Kind::Backup | Kind::Stale => job.document["configuration"].clone(),
                Kind::Restore => json!(job.name),
            };
            let now = Utc::now();
            // A failure fires until the next success resolves it (at most a
            // week); a success resolves at once.
            let ends = if job.phase == SessionPhase::Succeeded {
                now
            } else {
                now + chrono::TimeDelta::days(7)
            };
            json!([{
                "labels": {
                    "alertname": alertname,
                    "namespace": job.namespace,
                    object_label: object,
                    "severity": if job.phase == SessionPhase::PartiallyFailed { "warning" } else { "critical" },
                },
                "annotations": {
                    "summary": summary(job),
                    "session": job.name,
                    "phase": job.document["phase"].clone(),
                },
                "startsAt": to_time(now),
                "endsAt": to_time(ends),
            }])
        }
    }
}

/// Drains the queue until `shutdown`, [`PARALLEL`] deliveries at a time.
pub async fn run(ctx: Arc<Context>, shutdown: CancellationToken) {
    let Some(rx) = ctx.notifier.rx.lock().expect("not poisoned").take() else {
        return;
    };
    let stop = shutdown.clone();
    let jobs = tokio_stream_from(rx).take_until(async move { stop.cancelled().await });
    jobs.for_each_concurrent(PARALLEL, |job| {
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        async move {
            let uid = job.uid.clone();
            // Shutdown cuts a delivery short: without its `Notified`
            // condition the session is offered again by the next leader.
            tokio::select! {
                () = deliver(&ctx, job) => {}
                () = shutdown.cancelled() => {}
            }
            ctx.notifier
                .pending
                .lock()
                .expect("not poisoned")
                .remove(&uid);
        }
    })
    .await;
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Sends `job` to each receiver, then records the outcome on the session.
async fn deliver(ctx: &Context, job: Job) {
    let mut failures = Vec::new();
    for n in &job.receivers {
        let format = format!("{:?}", n.format).to_lowercase();
        match send(ctx, &job, n).await {
            Ok(()) => {
                ctx.metrics
                    .notifications
                    .with_label_values(&[&format, "sent"])
                    .inc();
            }
            Err(e) => {
                ctx.metrics
                    .notifications
                    .with_label_values(&[&format, "failed"])
                    .inc();
                tracing::warn!(session = %format!("{}/{}", job.namespace, job.name), receiver = %n.name, error = %e, "notification not delivered");
                failures.push(format!("{}: {e}", n.name));
            }
        }
    }
    let names: Vec<&str> = job.receivers.iter().map(|n| n.name.as_str()).collect();
    let (ok, message) = if failures.is_empty() {
        (true, format!("told {}", names.join(", ")))
    } else {
        (false, failures.join("; "))
    };
    if let Err(e) = record(ctx, &job, ok, &message).await {
        tracing::warn!(session = %format!("{}/{}", job.namespace, job.name), error = %e, "cannot record the notification outcome");
    }
}

/// A session kind whose status carries conditions (for `Notified`).
trait Announced:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
{
    type Status: Default + Clone + serde::Serialize;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition>;
}

impl Announced for BackupSession {
    type Status = BackupSessionStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition> {
        &mut status.conditions
    }
}

impl Announced for RestoreSession {
    type Status = RestoreSessionStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
    fn conditions(status: &mut Self::Status) -> &mut Vec<Condition> {
        &mut status.conditions
    }
}

/// Writes the `Notified` condition (and, on failure, a Warning Event).
async fn record(ctx: &Context, job: &Job, ok: bool, message: &str) -> crate::Result<()> {
    match job.kind {
        Kind::Backup => record_on::<BackupSession>(ctx, job, ok, message).await,
        Kind::Restore => record_on::<RestoreSession>(ctx, job, ok, message).await,
        // The configuration's `Stale` condition says it; a failed delivery
        // is logged and counted.
        Kind::Stale => Ok(()),
    }
}

async fn record_on<K: Announced>(
    ctx: &Context,
    job: &Job,
    ok: bool,
    message: &str,
) -> crate::Result<()> {
    let reason = if ok { "Delivered" } else { "NotDelivered" };
    let now = to_time(Utc::now());
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &job.namespace);
    for _ in 0..5 {
        let Some(s) = api.get_opt(&job.name).await.map_err(kube_err(
            "get session",
            &job.namespace,
            &job.name,
        ))?
        else {
            return Ok(());
        };
        // Gone and made again under the same name: not the one announced.
        if s.meta().uid.as_deref() != Some(job.uid.as_str()) {
            return Ok(());
        }
        let old = s.status().cloned().unwrap_or_default();
        let mut new = old.clone();
        conditions::set(
            K::conditions(&mut new),
            CONDITION_NOTIFIED,
            ok,
            reason,
            message.to_owned(),
            s.meta().generation,
            now.clone(),
        );
        if write_if_unchanged(&api, &s, &old, &new, "record notification").await?
            != Written::Conflict
        {
            if !ok {
                publish(ctx, &s, EventType::Warning, "NotificationFailed", message).await;
            }
            return Ok(());
        }
    }
    Ok(())
}

/// Where and how to send: the URL and headers, from the spec or a Secret.
struct Receiver {
    url: reqwest::Url,
    headers: Vec<(String, String)>,
}

async fn receiver(ctx: &Context, ns: &str, n: &Notification) -> Result<Receiver, String> {
    let (url, headers) = match (&n.url, &n.secret) {
        (Some(url), None) => (url.clone(), Vec::new()),
        (None, Some(secret)) => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
            let s = api
                .get(secret)
                .await
                .map_err(|e| format!("cannot read Secret {ns}/{secret}: {e}"))?;
            let data = s.data.unwrap_or_default();
            let text = |k: &str, v: &k8s_openapi::ByteString| {
                String::from_utf8(v.0.clone())
                    .map(|s| s.trim().to_owned())
                    .map_err(|_| format!("Secret {ns}/{secret}: key {k} is not UTF-8"))
            };
            let url = data
                .get("url")
                .ok_or_else(|| format!("Secret {ns}/{secret} has no key \"url\""))
                .and_then(|v| text("url", v))?;
            let mut headers = Vec::new();
            for (k, v) in &data {
                if let Some(h) = k.strip_prefix("header.") {
                    headers.push((h.to_owned(), text(k, v)?));
                }
            }
            (url, headers)
        }
        _ => return Err("needs exactly one of url and secret".into()),
    };
    let url = reqwest::Url::parse(&url).map_err(|e| format!("invalid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "URL scheme {:?} is not http or https",
            url.scheme()
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL are not accepted: put them in a header.Authorization key of the Secret".into());
    }
    Ok(Receiver { url, headers })
}

/// Why the controller will not connect to `ip`, if it will not.
pub fn refused_address(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_unspecified() || v4.is_broadcast() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_link_local() {
                Some("link-local (cloud metadata services live there)")
            } else if o == [100, 100, 100, 200] {
                Some("a cloud metadata service")
            } else if v4.is_multicast() {
                Some("multicast")
            } else if v4.is_loopback() && !allow_loopback {
                Some("loopback (the controller's own ports)")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_unspecified() {
                Some("unspecified")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("link-local (cloud metadata services live there)")
            } else if s == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] {
                Some("a cloud metadata service")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if v6.is_loopback() && !allow_loopback {
                Some("loopback (the controller's own ports)")
            } else {
                None
            }
        }
    }
}

/// Resolves the URL's host and checks every address.
async fn vetted(url: &reqwest::Url, allow_loopback: bool) -> Result<Vec<SocketAddr>, String> {
    let host = url.host_str().ok_or("the URL has no host")?;
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    for a in &addrs {
        if let Some(why) = refused_address(a.ip(), allow_loopback) {
            return Err(format!("refused: {host} is {} ({why})", a.ip()));
        }
    }
    Ok(addrs)
}

/// Sends `job` to `n`, retrying transient failures with backoff.
async fn send(ctx: &Context, job: &Job, n: &Notification) -> Result<(), String> {
    let settings = &ctx.settings.notify;
    let r = receiver(ctx, &job.namespace, n).await?;
    let addrs = vetted(&r.url, settings.allow_loopback).await?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let host = r.url.host_str().unwrap_or_default().to_owned();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(settings.timeout)
        .resolve_to_addrs(&host, &addrs)
        .user_agent(concat!("stash-controller/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let mut headers = reqwest::header::HeaderMap::new();
    for (k, v) in &r.headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| format!("header name {k:?} is not valid"))?;
        let value = reqwest::header::HeaderValue::from_str(v)
            .map_err(|_| format!("the value of header {k} is not valid"))?;
        headers.insert(name, value);
    }
    let body = serde_json::to_vec(&body(job, n.format)).expect("JSON");
    let mut wait = settings.first_backoff;
    let mut last = String::new();
    for attempt in 1..=settings.attempts.max(1) {
        let res = client
            .post(r.url.clone())
            .headers(headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let transient = match res {
            Ok(resp) if resp.status().is_success() => return Ok(()),
            Ok(resp) => {
                let code = resp.status().as_u16();
                last = format!("HTTP {code}");
                matches!(code, 408 | 425 | 429) || code >= 500
            }
            Err(e) => {
                last = without_url(&e);
                true
            }
        };
        if !transient {
            return Err(format!("{last} (not retried)"));
        }
        if attempt < settings.attempts {
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(300));
        }
    }
    Err(format!(
        "{last} after {} attempt(s)",
        settings.attempts.max(1)
    ))
}

/// A reqwest error without the URL (which may hold a token, e.g. Slack's).
fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // The innermost cause says most ("connection refused"); reqwest's own
    // message would repeat the URL.
    let mut cause = None;
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = Some(s.to_string());
        source = s.source();
    }
    match cause {
        Some(c) => format!("{kind}: {c}"),
        None => kind.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_and_own_ports_are_refused_cluster_addresses_are_not() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for bad in [
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "fe80::1",
            "fd00:ec2::254",
            "::",
            "::ffff:169.254.169.254",
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(refused_address(ip(bad), false).is_some(), "{bad}");
        }
        assert!(refused_address(ip("127.0.0.1"), true).is_none());
        assert!(refused_address(ip("169.254.169.254"), true).is_some());
        for good in ["10.96.0.10", "192.168.1.5", "203.0.113.7", "2001:db8::1"] {
            assert!(refused_address(ip(good), false).is_none(), "{good}");
        }
    }
}
