//! What the agent and the controller both run beside their work: the
//! `/metrics` + `/healthz` server of their Prometheus registry, and the
//! shutdown signal. Behind the `serve` feature, so that a user of the API
//! types alone does not build an HTTP server.

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The metrics of `registry` in Prometheus's text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding into a Vec cannot fail");
    String::from_utf8(buf).expect("the text format is UTF-8")
}

/// Serves `registry` on `/metrics` and `ok` on `/healthz` on `listener`
/// until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Registry,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(r): State<Registry>| async move { render(&r) }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(registry);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// A token cancelled at the first SIGTERM or Ctrl-C, for `who` (`agent`,
/// `controller`) to stop on.
pub fn shutdown_on_signal(who: &'static str) -> CancellationToken {
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal(who).await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });
    shutdown
}

async fn wait_for_signal(who: &str) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the {who}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
