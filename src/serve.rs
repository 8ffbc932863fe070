//! `portcullis serve`: wires the control plane and the proxy together in one
//! process. The proxy learns grants only through the control plane's feed,
//! followed here in-process; the control plane reaches live sessions only
//! through the `SessionDirectory` seam.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use portcullis_control::Control;
use portcullis_control::audit::spawn_writer;
use portcullis_protocol::sessions::SessionDirectory;
use portcullis_proxy::Proxy;
use portcullis_proxy::grants::table::GrantTable;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::config;
use crate::process::{DRAIN, ProxyListeners, bind, flush_workflow_audit, init_logs, spawn_api, wait_for_signal};

/// Audit events queued between the proxy and the audit log; past it sessions wait.
const AUDIT_QUEUE: usize = 10_000;

/// Runs until SIGINT or SIGTERM.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    init_logs();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let config = config::load(path)?;
    let proxy_settings = config::proxy_settings(&config).map_err(|m| anyhow!("{}: {m}", path.display()))?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;

    let registry = prometheus::Registry::new();
    // Remote proxies may follow this process's feed too (`proxies:`).
    let control_settings = config::control_plane(&config).map_err(|m| anyhow!("{}: {m}", path.display()))?;
    let control = Control::open(control_settings, &registry).await?;
    // The control plane owns the audit log (it also ships workflow history there).
    let (audit_tx, audit_rx) = tokio::sync::mpsc::channel(AUDIT_QUEUE);
    let audit_writer = spawn_writer(control.audit_log(), audit_rx).context("cannot start the audit writer")?;
    let proxy = Proxy::new(proxy_settings, &registry, Some(audit_tx))?;
    let shutdown = CancellationToken::new();
    follow_feed(Arc::clone(&control), Arc::clone(&proxy.grants), shutdown.clone());
    // Queued notifications (webhooks, Slack) are delivered from here; what is
    // still queued at shutdown stays in the store for the next start.
    let notifier = control.spawn_notifier(shutdown.clone());

    let api = bind(config.api.listen, "api.listen").await?;
    let listeners = ProxyListeners::bind(&config).await?;
    tracing::info!(api = %config.api.listen, postgres = %config.postgres.listen, ssh = ?config.ssh.as_ref().map(|s| s.listen), "portcullis is serving");

    let sessions: Arc<dyn SessionDirectory> = proxy.sessions.clone();
    let api_task = spawn_api(
        api,
        config.api.tls.as_ref(),
        &config.data_dir,
        control.router(sessions, registry.clone()),
        shutdown.clone(),
    )?;
    let listeners = ProxyListeners::serve(&proxy, listeners, &shutdown);

    wait_for_signal().await;
    tracing::info!(sessions = proxy.sessions.len(), "shutting down: closing sessions");
    shutdown.cancel();
    control.end_feed_streams();
    listeners.drain(&proxy).await;
    let _ = api_task.await;
    let _ = notifier.await;
    // The writer ends once the proxy (the queue's last sender) is gone and the queue is drained.
    drop(proxy);
    let joined = tokio::task::spawn_blocking(move || audit_writer.join());
    if tokio::time::timeout(DRAIN, joined).await.is_err() {
        tracing::warn!("some audit events were not written before exit");
    }
    flush_workflow_audit(&control).await;
    Ok(())
}

/// Applies the control plane's snapshot, then every change, to the proxy's table.
fn follow_feed(control: Arc<Control>, table: Arc<GrantTable>, shutdown: CancellationToken) {
    // Subscribe before the snapshot so no change falls between them.
    let mut changes = control.feed().subscribe();
    table.apply_snapshot(control.feed().snapshot());
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = changes.recv() => next,
            };
            match next {
                Ok(change) => table.apply(change),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "grant feed lagged; resyncing from a snapshot");
                    changes = changes.resubscribe();
                    table.apply_snapshot(control.feed().snapshot());
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
}
