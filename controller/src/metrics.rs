//! Prometheus metrics and the `/metrics` + `/healthz` server.

use std::net::SocketAddr;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// The controller's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    /// Where they are registered.
    pub registry: Registry,
    /// Reconciliations run, by kind.
    pub reconciles: IntCounterVec,
    /// Reconciliations failed, by kind and error label.
    pub reconcile_errors: IntCounterVec,
    /// BackupSessions created by the schedule.
    pub sessions_created: IntCounter,
    /// Ticks skipped by the concurrency policy, by namespace and
    /// configuration.
    pub ticks_skipped: IntCounterVec,
    /// Seconds the oldest unfinished session of a configuration has run
    /// (0 when none), by namespace and configuration.
    pub oldest_session_age: IntGaugeVec,
    /// Seconds from a schedule tick (plus jitter) to its session existing.
    pub schedule_latency: Histogram,
    /// 1 while this replica holds the leadership Lease.
    pub leader: IntGauge,
    /// Status writes refused because an agent wrote the object meanwhile.
    pub status_conflicts: IntCounter,
    /// Pod admissions the webhook answered, by outcome (`injected`,
    /// `skipped`, `error`).
    pub admissions: IntCounterVec,
    /// Notifications, by format and result (`sent`, `failed`, `dropped`).
    pub notifications: IntCounterVec,
    /// Unix time the last check of a Repository ended, by namespace and
    /// repository.
    pub check_time: IntGaugeVec,
    /// 1 when the last check of a Repository passed, 0 when it failed.
    pub check_passed: IntGaugeVec,
    /// Unix time of a configuration's last successful session (its
    /// creation when none succeeded yet), by namespace and configuration.
    pub last_success: IntGaugeVec,
    /// 1 when a configuration's last finished session succeeded, 0 when it
    /// failed or partially failed.
    pub last_session_succeeded: IntGaugeVec,
    /// Seconds between two ticks of a configuration's schedule.
    pub schedule_interval: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new_custom(Some("stash_controller".into()), None)
            .expect("a valid metric prefix");
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Reconciliations run"),
            &["kind"],
        )
        .expect("valid metric");
        let reconcile_errors = IntCounterVec::new(
            Opts::new("reconcile_errors_total", "Reconciliations that failed"),
            &["kind", "error"],
        )
        .expect("valid metric");
        let sessions_created = IntCounter::new(
            "sessions_created_total",
            "BackupSessions created by schedules",
        )
        .expect("valid metric");
        let ticks_skipped = IntCounterVec::new(
            Opts::new(
                "ticks_skipped_total",
                "Schedule ticks skipped because a session was still running (concurrencyPolicy Forbid)",
            ),
            &["namespace", "configuration"],
        )
        .expect("valid metric");
        let oldest_session_age = IntGaugeVec::new(
            Opts::new(
                "oldest_running_session_age_seconds",
                "Seconds the oldest unfinished BackupSession of a configuration has existed (0 when none)",
            ),
            &["namespace", "configuration"],
        )
        .expect("valid metric");
        let schedule_latency = Histogram::with_opts(
            HistogramOpts::new(
                "schedule_latency_seconds",
                "Seconds from a schedule tick to its BackupSession being created",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        let leader = IntGauge::new("leader", "1 while this replica holds the leadership Lease")
            .expect("valid metric");
        let status_conflicts = IntCounter::new(
            "status_conflicts_total",
            "Session status writes that found the object changed (by an agent) and decided again",
        )
        .expect("valid metric");
        let admissions = IntCounterVec::new(
            Opts::new(
                "webhook_admissions_total",
                "Pod creations the restore-wait webhook answered, by outcome",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let notifications = IntCounterVec::new(
            Opts::new(
                "notifications_total",
                "Session outcomes sent to receivers, by format and result (sent, failed, dropped)",
            ),
            &["format", "result"],
        )
        .expect("valid metric");
        let check_time = IntGaugeVec::new(
            Opts::new(
                "repository_last_check_timestamp_seconds",
                "Unix time the last check of a Repository ended",
            ),
            &["namespace", "repository"],
        )
        .expect("valid metric");
        let check_passed = IntGaugeVec::new(
            Opts::new(
                "repository_check_passed",
                "1 when the last check of a Repository found no damage, 0 when it failed",
            ),
            &["namespace", "repository"],
        )
        .expect("valid metric");
        let by_config = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["namespace", "configuration"])
                .expect("valid metric")
        };
        let last_success = by_config(
            "backup_last_success_timestamp_seconds",
            "Unix time the last successful BackupSession of a configuration finished (its creation when none has succeeded yet)",
        );
        let last_session_succeeded = by_config(
            "backup_last_session_succeeded",
            "1 when the last finished BackupSession of a configuration succeeded, 0 when it failed or partially failed",
        );
        let schedule_interval = by_config(
            "backup_schedule_interval_seconds",
            "Seconds between two ticks of a configuration's schedule",
        );
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(last_success.clone()),
            Box::new(last_session_succeeded.clone()),
            Box::new(schedule_interval.clone()),
            Box::new(check_time.clone()),
            Box::new(check_passed.clone()),
            Box::new(notifications.clone()),
            Box::new(admissions.clone()),
            Box::new(reconcile_errors.clone()),
            Box::new(sessions_created.clone()),
            Box::new(ticks_skipped.clone()),
            Box::new(oldest_session_age.clone()),
            Box::new(schedule_latency.clone()),
            Box::new(leader.clone()),
            Box::new(status_conflicts.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            reconciles,
            reconcile_errors,
            sessions_created,
            ticks_skipped,
            oldest_session_age,
            schedule_latency,
            leader,
            status_conflicts,
            admissions,
            notifications,
            check_time,
            check_passed,
            last_success,
            last_session_succeeded,
            schedule_interval,
        }
    }
}

impl Metrics {
    /// The metrics in Prometheus's text format.
    pub fn render(&self) -> String {
        stash_api::serve::render(&self.registry)
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<()> {
    let addr: SocketAddr = listener.local_addr().map_err(|source| Error::Serve {
        addr: "?".into(),
        source,
    })?;
    stash_api::serve::serve_metrics(listener, metrics.registry, shutdown)
        .await
        .map_err(|source| Error::Serve {
            addr: addr.to_string(),
            source,
        })
}
