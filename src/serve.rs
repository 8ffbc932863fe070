//! `portcullis serve`: wires the control plane and the proxy together in one
//! process. The proxy learns grants only through the control plane's feed,
//! followed here in-process; the control plane reaches live sessions only
//! through the `SessionDirectory` seam.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use portcullis_control::Control;
use portcullis_control::audit::spawn_writer;
use portcullis_protocol::sessions::SessionDirectory;
use portcullis_proxy::Proxy;
use portcullis_proxy::grants::table::GrantTable;
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::config;

/// How long shutdown waits for sessions to close after telling them.
const DRAIN: Duration = Duration::from_secs(5);
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
    let mut control_settings = config::control_settings(&config);
    control_settings.notifications =
        config::notify_settings(&config).map_err(|m| anyhow!("{}: {m}", path.display()))?;
    // Remote proxies may follow this process's feed too (`proxies:`).
    control_settings.proxies = config::proxy_credentials(&config).map_err(|m| anyhow!("{}: {m}", path.display()))?;
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

    let api = TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on api.listen {}", config.api.listen))?;
    let postgres = TcpListener::bind(config.postgres.listen)
        .await
        .with_context(|| format!("cannot listen on postgres.listen {}", config.postgres.listen))?;
    let ssh = match &config.ssh {
        Some(s) => Some(
            TcpListener::bind(s.listen)
                .await
                .with_context(|| format!("cannot listen on ssh.listen {}", s.listen))?,
        ),
        None => None,
    };
    tracing::info!(api = %config.api.listen, postgres = %config.postgres.listen, ssh = ?config.ssh.as_ref().map(|s| s.listen), "portcullis is serving");

    let sessions: Arc<dyn SessionDirectory> = proxy.sessions.clone();
    let router = control.router(sessions, registry.clone());
    let api_shutdown = shutdown.clone();
    let api_task = tokio::spawn(async move {
        axum::serve(api, router)
            .with_graceful_shutdown(async move { api_shutdown.cancelled().await })
            .await
    });
    let pg_task = tokio::spawn(Arc::clone(&proxy).serve_postgres(postgres, shutdown.clone()));
    let ssh_task = ssh.map(|l| tokio::spawn(Arc::clone(&proxy).serve_ssh(l, shutdown.clone())));

    wait_for_signal().await;
    tracing::info!(sessions = proxy.sessions.len(), "shutting down: closing sessions");
    shutdown.cancel();
    control.end_feed_streams();
    proxy.tracker.close();
    if tokio::time::timeout(DRAIN, proxy.tracker.wait()).await.is_err() {
        tracing::warn!("some sessions did not close in time");
    }
    let _ = pg_task.await;
    if let Some(t) = ssh_task {
        let _ = t.await;
    }
    let _ = api_task.await;
    let _ = notifier.await;
    // The writer ends once the proxy (the queue's last sender) is gone and the queue is drained.
    drop(proxy);
    let joined = tokio::task::spawn_blocking(move || audit_writer.join());
    if tokio::time::timeout(DRAIN, joined).await.is_err() {
        tracing::warn!("some audit events were not written before exit");
    }
    // Workflow actions of the last moments; what is left is shipped at the next start.
    match tokio::time::timeout(DRAIN, control.flush_audit()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "workflow history not shipped to the audit log before exit"),
        Err(_) => tracing::warn!("workflow history not shipped to the audit log before exit"),
    }
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

/// Completes on SIGINT or SIGTERM.
pub(crate) async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Logs to stderr, filtered by PORTCULLIS_LOG (or RUST_LOG), JSON with PORTCULLIS_LOG_FORMAT=json.
pub(crate) fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PORTCULLIS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("PORTCULLIS_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
