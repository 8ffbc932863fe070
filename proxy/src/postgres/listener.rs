//! The Postgres listener: accepts connections and gives each its own task,
//! tracked so shutdown can drain them.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::session::handle;
use crate::Proxy;

/// How often idle pooled server connections are checked for their timeout.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Closes one session thread's idle pooled connections past their timeout.
async fn sweep(proxy: Arc<Proxy>, worker: usize, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        proxy.pool.sweep(worker).await;
        proxy.metrics.pool_idle.set(proxy.pool.idle_count() as i64);
    }
}

/// Accepts until `shutdown` is cancelled.
pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener, shutdown: CancellationToken) {
    for (worker, runtime) in proxy.workers.iter() {
        runtime.spawn(sweep(Arc::clone(&proxy), worker, shutdown.clone()));
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                // The socket moves to a session thread's own reactor.
                let tcp = match tcp.into_std() {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "cannot hand a connection to a session thread");
                        continue;
                    }
                };
                let proxy2 = Arc::clone(&proxy);
                let token = shutdown.child_token();
                let (worker, runtime) = proxy.workers.next();
                runtime.spawn(proxy.tracker.track_future(async move {
                    match TcpStream::from_std(tcp) {
                        Ok(tcp) => handle(proxy2, tcp, peer, worker, token).await,
                        Err(e) => tracing::warn!(%peer, error = %e, "cannot adopt a connection"),
                    }
                }));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
