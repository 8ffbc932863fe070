//! The Postgres listener: accepts connections and gives each its own task,
//! tracked so shutdown can drain them.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::session::handle;
use crate::Proxy;

/// Accepts until `shutdown` is cancelled.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let proxy2 = Arc::clone(&proxy);
                let token = shutdown.child_token();
                proxy.tracker.spawn(handle(proxy2, tcp, peer, token));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
