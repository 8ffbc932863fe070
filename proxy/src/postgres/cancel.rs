//! CancelRequest routing. Sessions relay the real backend's BackendKeyData,
//! so a client's cancel carries the real (pid, secret); this map says which
//! upstream server that backend lives on, and only live sessions are in it.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use portcullis_protocol::pg::frontend::cancel_request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// How long sending one cancel may take.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// (pid, the session's own secret) of live sessions to the address their
/// server connection reached (not the host name: DNS may answer differently
/// by now) and the backend's real secret.
#[derive(Default)]
pub struct CancelMap {
    keys: DashMap<(i32, Bytes), (SocketAddr, Bytes)>,
}

impl CancelMap {
    /// Remembers a live session's backend key.
    pub fn insert(&self, pid: i32, secret: Bytes, server: SocketAddr, real_secret: Bytes) {
        self.keys.insert((pid, secret), (server, real_secret));
    }

    /// Forgets a backend key when its session ends.
    pub fn remove(&self, pid: i32, secret: &Bytes) {
        self.keys.remove(&(pid, secret.clone()));
    }

    /// Forwards a client's CancelRequest to the backend it names, if that backend is ours.
    pub async fn forward(&self, pid: i32, secret: Bytes) {
        let Some((server, real)) = self.keys.get(&(pid, secret)).map(|a| a.clone()) else {
            tracing::debug!(pid, "cancel request for an unknown backend key ignored");
            return;
        };
        send_cancel(server, pid, &real).await;
    }
}

/// Sends a CancelRequest for backend (pid, secret) to `server`, giving up
/// after a few seconds (an unreachable server must not hold a task).
pub async fn send_cancel(server: SocketAddr, pid: i32, secret: &[u8]) {
    // PostgreSQL reads cancel requests without TLS or authentication, as libpq sends them.
    let send = async {
        let mut s = TcpStream::connect(server).await?;
        s.write_all(&cancel_request(pid, secret)).await?;
        s.shutdown().await
    };
    match tokio::time::timeout(CANCEL_TIMEOUT, send).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(pid, %server, error = %e, "could not send a cancel request upstream"),
        Err(_) => tracing::warn!(pid, %server, "a cancel request upstream timed out"),
    }
}
