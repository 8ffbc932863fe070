//! `ssh -L` (RFC 4254 section 7.2, direct-tcpip): a channel the engineer
//! opens to `HOST:PORT`, allowed only where the role's policy names the
//! destination, carried over a direct-tcpip channel of the session's own
//! upstream connection, so the server makes the TCP connection as it would
//! without the gateway. Bytes count in the session; each opening, each
//! failure to open upstream and each close (with its bytes and duration) is
//! audited, and the channel closes with the session's cut.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use portcullis_protocol::audit::AuditEvent;
use russh::server::{ChannelOpenHandle, Msg};
use russh::{Channel, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf, client};

use super::conn::Conn;

/// RFC 4254's "administratively prohibited".
pub const PROHIBITED: u32 = 1;
/// RFC 4254's "connect failed".
const CONNECT_FAILED: u32 = 2;

/// What the client asked to reach, and from where.
#[derive(Clone, Debug)]
pub struct Forward {
    /// Host as the client named it.
    pub host: String,
    /// Port.
    pub port: u32,
    /// The client-side address the connection came from (as the client tells it).
    pub originator: String,
    /// Its port.
    pub originator_port: u32,
}

impl Forward {
    /// `host:port`, bracketed for IPv6.
    pub fn destination(&self) -> String {
        host_port(&self.host, self.port)
    }
}

/// `host:port`, bracketed for IPv6.
pub fn host_port(host: &str, port: u32) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Why this forward may not open, in the words the client prints; `Ok` when it may.
pub fn check(conn: &Conn, fwd: &Forward) -> Result<(), String> {
    if conn.is_cut() {
        return Err("portcullis: the session has ended".to_owned());
    }
    let admitted = conn
        .admission
        .as_ref()
        .map_err(|r| format!("portcullis: {}", r.text()))?;
    if admitted.role.ssh_policy.forward_allowed(&fwd.host, fwd.port) {
        Ok(())
    } else {
        Err(format!(
            "portcullis: port forwarding to {} is not allowed by the policy of {}",
            fwd.destination(),
            admitted.resource.name
        ))
    }
}

/// Refuses the channel with `reason`, which OpenSSH prints after "open failed".
pub async fn refuse(reply: ChannelOpenHandle, code: u32, reason: String) {
    reply.reject(ChannelOpenFailure::Other { code, reason }).await;
}

/// Records a refusal by policy, and `why`, in the session's audit (a refused session has none).
pub async fn audit_refused(conn: &Conn, fwd: &Forward, why: &str) {
    if let Some(mut e) = event(conn, "forward.refused", fwd) {
        e.detail.insert("why".into(), why.to_owned());
        conn.proxy.audit.record(e).await;
    }
}

/// Why an `ssh -R` is refused: a listener on the server for the
/// engineer's side would open the server to the client's network.
pub const REMOTE_REFUSED: &str = "remote forwarding is never allowed";
/// Why a forward to or from a Unix socket is refused.
pub const SOCKET_REFUSED: &str = "forwarding of Unix sockets is never allowed";

/// Records a forward refused before any policy applies (`ssh -R`, Unix
/// sockets): `direction`, and the `key` (`listen` or `destination`) it named.
pub async fn audit_refused_outright(conn: &Conn, direction: &str, key: &str, named: String, why: &str) {
    if let Some(mut e) = base_event(conn, "forward.refused", direction, key, named) {
        e.detail.insert("why".into(), why.into());
        conn.proxy.audit.record(e).await;
    }
}

/// Opens the upstream side, then accepts the engineer's channel and relays
/// until either side closes it or the session is cut.
pub async fn run(conn: Arc<Conn>, channel: Channel<Msg>, fwd: Forward, reply: ChannelOpenHandle) {
    let upstream = match conn.upstream().await {
        Ok(up) => up,
        Err(refusal) => return refuse(reply, PROHIBITED, format!("portcullis: {}", refusal.text())).await,
    };
    let opened = upstream
        .channel_open_direct_tcpip(fwd.host.clone(), fwd.port, fwd.originator.clone(), fwd.originator_port)
        .await;
    let up = match opened {
        Ok(up) => up,
        Err(e) => {
            tracing::info!(user = %conn.user, destination = %fwd.destination(), error = %e, "ssh forward failed upstream");
            if let Some(mut failed) = event(&conn, "forward.failed", &fwd) {
                failed.detail.insert("error".into(), e.to_string());
                conn.proxy.audit.record(failed).await;
            }
            let reason = format!(
                "portcullis: the server could not open a connection to {}: {e}",
                fwd.destination()
            );
            return refuse(reply, CONNECT_FAILED, reason).await;
        }
    };
    if let Some(e) = event(&conn, "forward.open", &fwd) {
        conn.proxy.audit.record(e).await;
    }
    tracing::info!(user = %conn.user, destination = %fwd.destination(), "ssh forward opened");
    reply.accept().await;
    let since = Instant::now();
    let (bytes_in, bytes_out) = relay(&conn, channel, up).await;
    if let Some(mut closed) = event(&conn, "forward.close", &fwd) {
        let d = &mut closed.detail;
        d.insert("bytes_in".into(), bytes_in.to_string());
        d.insert("bytes_out".into(), bytes_out.to_string());
        d.insert("duration_ms".into(), since.elapsed().as_millis().to_string());
        conn.proxy.audit.record(closed).await;
    }
}

/// Relays until either side closes or the session is cut; answers the
/// bytes from the client and to it.
async fn relay(conn: &Conn, channel: Channel<Msg>, up: Channel<client::Msg>) -> (u64, u64) {
    let (from_client, to_client) = channel.split();
    let (from_up, to_up) = up.split();
    let mut cut = conn.cut.clone();
    let (sent, received) = (AtomicU64::new(0), AtomicU64::new(0));
    let count_in = |n: usize| {
        sent.fetch_add(n as u64, Ordering::Relaxed);
        count(conn, n, true);
    };
    let count_out = |n: usize| {
        received.fetch_add(n as u64, Ordering::Relaxed);
        count(conn, n, false);
    };
    tokio::select! {
        () = pump(from_client, &to_up, count_in) => {}
        () = pump(from_up, &to_client, count_out) => {}
        // A dropped sender means the connection is ending: close as for a cut.
        _ = cut.wait_for(Option::is_some) => {}
    }
    let _ = to_client.close().await;
    let _ = to_up.close().await;
    (sent.into_inner(), received.into_inner())
}

fn count(conn: &Conn, n: usize, inbound: bool) {
    if let Some(s) = &conn.session {
        let counter = if inbound { &s.bytes_in } else { &s.bytes_out };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Data and EOF one way; returns when that side closes the channel.
async fn pump<M: From<(russh::ChannelId, ChannelMsg)> + Send + Sync + 'static>(
    mut from: ChannelReadHalf,
    to: &ChannelWriteHalf<M>,
    count: impl Fn(usize),
) {
    while let Some(msg) = from.wait().await {
        let sent = match msg {
            ChannelMsg::Data { data } => {
                count(data.len());
                to.data_bytes(data).await
            }
            // Half-close: the other direction keeps flowing.
            ChannelMsg::Eof => to.eof().await,
            ChannelMsg::Close => return,
            _ => Ok(()),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// An audit event of this session about `fwd`; `None` for a refused session.
fn event(conn: &Conn, action: &str, fwd: &Forward) -> Option<AuditEvent> {
    let mut e = base_event(conn, action, "local", "destination", fwd.destination())?;
    e.detail.insert(
        "originator".into(),
        format!("{}:{}", fwd.originator, fwd.originator_port),
    );
    Some(e)
}

/// A forward event of this session: its `direction`, what it named under
/// `key` (`destination` or `listen`), and the client's address; `None` for
/// a refused session.
fn base_event(conn: &Conn, action: &str, direction: &str, key: &str, named: String) -> Option<AuditEvent> {
    let mut e = conn.audit.as_ref()?.event(action);
    e.detail.insert("direction".into(), direction.into());
    e.detail.insert(key.into(), named);
    e.detail.insert("peer".into(), conn.peer.ip().to_string());
    Some(e)
}
