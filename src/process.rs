//! What the three process modes (`serve`, `control`, `proxy`) share: logs,
//! signals, listeners, the HTTP server task, and the order in which a proxy's
//! sessions are drained at shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use portcullis_control::Control;
use portcullis_proxy::Proxy;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config;

/// How long shutdown waits for sessions to close after telling them, and
/// for the last workflow history to reach the audit log.
pub(crate) const DRAIN: Duration = Duration::from_secs(5);

/// Listens on `addr`, the config key `what` (named in the error).
pub(crate) async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {what} {addr}"))
}

/// Serves `router` on `listener` until `shutdown`.
pub(crate) fn spawn_http<L: axum::serve::Listener>(
    listener: L,
    router: axum::Router,
    shutdown: CancellationToken,
) -> JoinHandle<std::io::Result<()>>
where
    L::Addr: std::fmt::Debug,
{
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    })
}

/// Serves the HTTP API on `listener`: over TLS when `api.tls` names a
/// certificate and key (the acceptor is built before anything is served).
pub(crate) fn spawn_api(
    listener: TcpListener,
    tls: Option<&config::TlsFiles>,
    data_dir: &std::path::Path,
    router: axum::Router,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<std::io::Result<()>>> {
    let Some(files) = tls else {
        return Ok(spawn_http(listener, router, shutdown));
    };
    let files = portcullis_proxy::settings::TlsFiles {
        cert: files.cert.clone(),
        key: files.key.clone(),
    };
    let acceptor = portcullis_proxy::tls::acceptor(&Some(files), data_dir).context("api.tls")?;
    let listener = crate::tls_listener::TlsListener::new(listener, acceptor)?;
    Ok(spawn_http(listener, router, shutdown))
}

/// A proxy's Postgres and (when configured) SSH listeners, serving.
pub(crate) struct ProxyListeners {
    postgres: JoinHandle<()>,
    ssh: Option<JoinHandle<()>>,
}

impl ProxyListeners {
    /// Binds `postgres.listen` and `ssh.listen`; nothing is served until `serve`.
    pub(crate) async fn bind(config: &config::Config) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
        let postgres = bind(config.postgres.listen, "postgres.listen").await?;
        let ssh = match &config.ssh {
            Some(s) => Some(bind(s.listen, "ssh.listen").await?),
            None => None,
        };
        Ok((postgres, ssh))
    }

    /// Starts accepting on both until `shutdown`.
    pub(crate) fn serve(
        proxy: &Arc<Proxy>,
        (postgres, ssh): (TcpListener, Option<TcpListener>),
        shutdown: &CancellationToken,
    ) -> ProxyListeners {
        ProxyListeners {
            postgres: tokio::spawn(Arc::clone(proxy).serve_postgres(postgres, shutdown.clone())),
            ssh: ssh.map(|l| tokio::spawn(Arc::clone(proxy).serve_ssh(l, shutdown.clone()))),
        }
    }

    /// After `shutdown` was cancelled: lets sessions close (for up to `DRAIN`)
    /// and the listeners end.
    pub(crate) async fn drain(self, proxy: &Proxy) {
        proxy.tracker.close();
        if tokio::time::timeout(DRAIN, proxy.tracker.wait()).await.is_err() {
            tracing::warn!("some sessions did not close in time");
        }
        let _ = self.postgres.await;
        if let Some(t) = self.ssh {
            let _ = t.await;
        }
    }
}

/// Ships the workflow actions of the last moments to the audit log; what is
/// left is shipped at the next start.
pub(crate) async fn flush_workflow_audit(control: &Control) {
    match tokio::time::timeout(DRAIN, control.flush_audit()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "workflow history not shipped to the audit log before exit"),
        Err(_) => tracing::warn!("workflow history not shipped to the audit log before exit"),
    }
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
