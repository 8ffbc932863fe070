//! CancelRequest routing. Sessions relay the real backend's BackendKeyData,
//! so a client's cancel carries the real (pid, secret); this map says which
//! upstream server that backend lives on, and only live sessions are in it.

use bytes::Bytes;
use dashmap::DashMap;
use portcullis_protocol::pg::frontend::cancel_request;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// (pid, secret) of live sessions' backends to their server's address.
#[derive(Default)]
pub struct CancelMap {
    keys: DashMap<(i32, Bytes), (String, u16)>,
}

impl CancelMap {
    /// Remembers a live session's backend key.
    pub fn insert(&self, pid: i32, secret: Bytes, host: String, port: u16) {
        self.keys.insert((pid, secret), (host, port));
    }

    /// Forgets a backend key when its session ends.
    pub fn remove(&self, pid: i32, secret: &Bytes) {
        self.keys.remove(&(pid, secret.clone()));
    }

    /// Forwards a client's CancelRequest to the backend it names, if that backend is ours.
    pub async fn forward(&self, pid: i32, secret: Bytes) {
        let Some((host, port)) = self.keys.get(&(pid, secret.clone())).map(|a| a.clone()) else {
            tracing::debug!(pid, "cancel request for an unknown backend key ignored");
            return;
        };
        send_cancel(&host, port, pid, &secret).await;
    }
}

/// Sends a CancelRequest for backend (pid, secret) on host:port.
pub async fn send_cancel(host: &str, port: u16, pid: i32, secret: &[u8]) {
    // PostgreSQL reads cancel requests without TLS or authentication, as libpq sends them.
    match TcpStream::connect((host, port)).await {
        Ok(mut s) => {
            let _ = s.write_all(&cancel_request(pid, secret)).await;
            let _ = s.shutdown().await;
        }
        Err(e) => tracing::warn!(pid, error = %e, "could not send a cancel request upstream"),
    }
}
