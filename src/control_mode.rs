//! `portcullis control`: the control plane alone (API, store, workflow,
//! notifications, the grant feed over the network, audit ingestion), for
//! remote proxies (`portcullis proxy`) to follow. No proxy listeners.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use portcullis_control::{Control, NoSessions};
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::process::{bind, flush_workflow_audit, init_logs, spawn_api, wait_for_signal};

/// Runs until SIGINT or SIGTERM.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    init_logs();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = config::load(path)?;
    let at = |m: String| anyhow!("{}: {m}", path.display());
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let registry = prometheus::Registry::new();
    let settings = config::control_plane(&config).map_err(at)?;
    if settings.proxies.is_empty() {
        tracing::warn!("no proxies: are configured; no proxy can follow this control plane");
    }
    let proxies: Vec<String> = settings.proxies.iter().map(|p| p.name.clone()).collect();
    let control = Control::open(settings, &registry).await?;
    let shutdown = CancellationToken::new();
    let notifier = control.spawn_notifier(shutdown.clone());

    let api = bind(config.api.listen, "api.listen").await?;
    tracing::info!(api = %config.api.listen, ?proxies, "portcullis control plane is serving");
    let api_task = spawn_api(
        api,
        config.api.tls.as_ref(),
        &config.data_dir,
        control.router(Arc::new(NoSessions), registry),
        shutdown.clone(),
    )?;

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    control.end_feed_streams();
    let _ = api_task.await;
    let _ = notifier.await;
    flush_workflow_audit(&control).await;
    Ok(())
}
