//! The agent's Prometheus metrics, served on `/metrics` with `/healthz`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

/// Labels of every per-item metric: `kind` (backup, restore, retention),
/// `repository` (`namespace/name` of the Repository object) and `volume`
/// (the snapshot identity `<host>:<path>`, stable across pod restarts).
const LABELS: [&str; 3] = ["kind", "repository", "volume"];

/// The metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    /// Where they are registered (served by [`stash_api::serve`]).
    pub registry: Registry,
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
