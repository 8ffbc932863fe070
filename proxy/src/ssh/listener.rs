//! The SSH listener: accepts connections and runs each through russh's
//! server with our handler, tracked so shutdown can drain them.

use std::sync::Arc;
use std::time::Duration;

use russh::SshId;
use russh::server::{Config, run_stream};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::handler::{SshHandler, methods};
use crate::Proxy;

/// Every rejected authentication takes this long, whatever was wrong.
const AUTH_REJECTION: Duration = Duration::from_millis(300);
/// Connections that send no SSH version line by then are closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The russh server settings, with the gateway's host key.
pub fn config(host_key: russh::keys::PrivateKey) -> Config {
    Config {
        server_id: SshId::Standard("SSH-2.0-Portcullis".into()),
        methods: methods(),
        auth_rejection_time: AUTH_REJECTION,
        // OpenSSH probes with "none" first; answering it at once costs nothing.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        nodelay: true,
        inactivity_timeout: None,
        ..Config::default()
    }
}

/// Accepts until `shutdown` is cancelled.
pub async fn serve(proxy: Arc<Proxy>, config: Arc<Config>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let handler = SshHandler::new(Arc::clone(&proxy), peer, shutdown.child_token());
                let config = Arc::clone(&config);
                let token = shutdown.child_token();
                proxy.tracker.spawn(async move {
                    let session = match tokio::time::timeout(HANDSHAKE_TIMEOUT, run_stream(config, tcp, handler)).await {
                        Ok(Ok(session)) => session,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "ssh connection failed during setup");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "ssh connection timed out before its version line");
                            return;
                        }
                    };
                    let handle = session.handle();
                    tokio::select! {
                        result = session => {
                            if let Err(e) = result {
                                tracing::debug!(%peer, error = %e, "ssh connection ended with an error");
                            }
                        }
                        _ = token.cancelled() => {
                            let _ = handle
                                .disconnect(russh::Disconnect::ByApplication, "the Portcullis gateway is shutting down".into(), String::new())
                                .await;
                        }
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
