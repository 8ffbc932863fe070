//! `portcullis proxy`: the proxy alone (Postgres and SSH listeners, grant
//! table, sessions, enforcement), following a control plane over the
//! network (`portcullis_proxy::sync`), shipping its audit events there, and
//! answering `/healthz`, `/readyz` and `/metrics` on `proxy.listen`.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use portcullis_proxy::Proxy;
use portcullis_proxy::audit::spool::{Limits, ShipMetrics, ShipOptions, Spool, spawn_shipper};
use portcullis_proxy::sync::client::ControlClient;
use portcullis_proxy::sync::contact::Contact;
use portcullis_proxy::sync::follow::{Follower, watch_staleness};
use portcullis_proxy::sync::metrics::FeedMetrics;
use portcullis_proxy::sync::{report, ship};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::process::{DRAIN, ProxyListeners, bind, init_logs, spawn_http, wait_for_signal};

/// Audit events queued between the proxy's audit thread and the shipper.
const AUDIT_QUEUE: usize = 10_000;

/// Runs until SIGINT or SIGTERM.
pub async fn run(path: &Path, control_urls: Vec<String>) -> anyhow::Result<()> {
    init_logs();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = config::load(path)?;
    let at = |m: String| anyhow!("{}: {m}", path.display());
    let link = config::proxy_link(&config).map_err(at)?.ok_or_else(|| {
        anyhow!(
            "{}: portcullis proxy needs a proxy: section (name, token_env or token_file)",
            path.display()
        )
    })?;
    let settings = config::proxy_settings(&config).map_err(at)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let client = Arc::new(ControlClient::new(control_urls, link.token, link.ca_file.as_deref()).map_err(at)?);

    let registry = prometheus::Registry::new();
    let feed_metrics = FeedMetrics::register(&registry)?;
    let (audit_tx, audit_rx) = tokio::sync::mpsc::channel(AUDIT_QUEUE);
    let proxy = Proxy::new(settings, &registry, Some(audit_tx))?;
    proxy.contact.set_staleness(link.staleness);
    // Audit events wait on disk (DATA_DIR/spool, docs/AUDIT.md) until the control plane has them.
    let spool_dir = config.data_dir.join("spool");
    let spool = Spool::open(&spool_dir, Limits::default())
        .with_context(|| format!("cannot open the audit spool {}", spool_dir.display()))?;
    let shipper = spawn_shipper(
        spool,
        audit_rx,
        ship::deliver(Arc::clone(&client), tokio::runtime::Handle::current()),
        ShipMetrics {
            depth: feed_metrics.spool_depth.clone(),
            refused: feed_metrics.audit_refused.clone(),
        },
        ShipOptions {
            batch_events: ship::BATCH,
            ..ShipOptions::default()
        },
    )
    .context("cannot start the audit shipper")?;

    let shutdown = CancellationToken::new();
    let follower = Follower {
        client: Arc::clone(&client),
        table: Arc::clone(&proxy.grants),
        sessions: Arc::clone(&proxy.sessions),
        contact: Arc::clone(&proxy.contact),
        metrics: feed_metrics.clone(),
    };
    let follow_task = tokio::spawn(follower.run(shutdown.clone()));
    tokio::spawn(watch_staleness(
        Arc::clone(&proxy.contact),
        feed_metrics,
        shutdown.clone(),
    ));
    let report_task = tokio::spawn(report::run(
        Arc::clone(&client),
        Arc::clone(&proxy.sessions),
        shutdown.clone(),
    ));

    let health = bind(link.listen, "proxy.listen").await?;
    let listeners = ProxyListeners::bind(&config).await?;
    tracing::info!(name = %link.name, control = %client.current_url(), health = %link.listen, postgres = %config.postgres.listen, ssh = ?config.ssh.as_ref().map(|s| s.listen), staleness = ?link.staleness, "portcullis proxy is serving");

    let health_task = spawn_http(
        health,
        health_router(Arc::clone(&proxy.contact), registry),
        shutdown.clone(),
    );
    let listeners = ProxyListeners::serve(&proxy, listeners, &shutdown);

    wait_for_signal().await;
    tracing::info!(sessions = proxy.sessions.len(), "shutting down: closing sessions");
    shutdown.cancel();
    listeners.drain(&proxy).await;
    let _ = health_task.await;
    let _ = follow_task.await;
    let _ = report_task.await;
    // The queue closes once the proxy's audit thread (its sender) is gone; what
    // is not delivered by then stays in the spool for the next start.
    drop(proxy);
    let finished = tokio::task::spawn_blocking(move || shipper.finish(DRAIN)).await;
    if !matches!(finished, Ok(true)) {
        tracing::warn!(spool = %spool_dir.display(), "some audit events wait in the spool for the next start");
    }
    Ok(())
}

/// What the health listener reads.
#[derive(Clone)]
struct HealthState {
    contact: Arc<Contact>,
    registry: prometheus::Registry,
}

/// `/healthz`, `/readyz` and `/metrics` of a split proxy.
fn health_router(contact: Arc<Contact>, registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { axum::Json(json!({ "status": "ok" })) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HealthState { contact, registry })
}

/// Ready once the feed's snapshot is applied, and while the control plane is not stale.
async fn readyz(State(s): State<HealthState>) -> Response {
    match s.contact.not_ready() {
        None => axum::Json(json!({ "status": "ready" })).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({ "status": "not ready", "error": reason })),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<HealthState>) -> Response {
    portcullis_control::metrics_response(&s.registry)
}
