//! The agent's Prometheus metrics, served on `/metrics` with `/healthz`.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Labels of every per-item metric: `kind` (backup, restore, retention),
/// `repository` (`namespace/name` of the Repository object) and `volume`
/// (the snapshot identity `<host>:<path>`, stable across pod restarts).
const LABELS: [&str; 3] = ["kind", "repository", "volume"];

/// The metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Bytes read (backup) or written (restore).
    pub bytes: IntCounterVec,
    /// Files read or written.
    pub files: IntCounterVec,
    /// Items finished, by result.
    pub items: IntCounterVec,
    /// Per-file errors and failed items.
    pub errors: IntCounterVec,
    /// Seconds an item took.
    pub duration: HistogramVec,
    /// Items running now.
    pub in_flight: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry =
            Registry::new_custom(Some("stash_agent".into()), None).expect("valid registry prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("registered once");
            c
        };
        let bytes = counter(
            "bytes_total",
            "Bytes read by backups or written by restores",
            &LABELS,
        );
        let files = counter(
            "files_total",
            "Files read by backups or written by restores",
            &LABELS,
        );
        let items = counter(
            "items_finished_total",
            "Items finished, by result (succeeded, failed)",
            &["kind", "repository", "volume", "result"],
        );
        let errors = counter(
            "errors_total",
            "Files that could not be read or written, and failed items",
            &LABELS,
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "item_duration_seconds",
                "Seconds from claim to finish of an item",
            )
            .buckets(vec![
                1.0,
                5.0,
                15.0,
                60.0,
                300.0,
                900.0,
                3600.0,
                4.0 * 3600.0,
            ]),
            &LABELS,
        )
        .expect("valid metric");
        registry
            .register(Box::new(duration.clone()))
            .expect("registered once");
        let in_flight = IntGaugeVec::new(
            Opts::new("items_in_flight", "Items this agent works on now"),
            &["kind", "repository"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(in_flight.clone()))
            .expect("registered once");
        Self {
            registry,
            bytes,
            files,
            items,
            errors,
            duration,
            in_flight,
        }
    }
}

impl Metrics {
    /// The metrics in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<Metrics>| async move { m.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
