//! The Postgres listener: accepts connections and gives each its own task,
//! tracked so shutdown can drain them.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::session::handle;
use crate::Proxy;

/// How often idle pooled server connections are checked for their timeout.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Accepts until `shutdown` is cancelled.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sweep.tick() => {
                proxy.pool.sweep().await;
                proxy.metrics.pool_idle.set(proxy.pool.idle_count() as i64);
                continue;
            }
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
