//! The life of one client connection, from accept to close: opening,
//! authentication, admission, upstream login, then the relay under the
//! enforcer. Every refusal is sent as an ErrorResponse and counted.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use portcullis_protocol::pg::backend::auth_ok;
use portcullis_protocol::sessions::SessionInfo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::admission::{Admitted, admit, split_dbname};
use super::auth::authenticate;
use super::cancel::send_cancel;
use super::enforce::enforce;
use super::refusal::Refusal;
use super::relay::{RelayEnd, relay};
use super::startup::{Opening, open};
use super::stream::Stream;
use super::upstream::{Upstream, connect};
use crate::Proxy;
use crate::clock::now_millis;

const PROTOCOL: &str = "postgres";

/// Handles one accepted TCP connection to the end.
pub async fn handle(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + proxy.settings.postgres.handshake_timeout;
    let (mut stream, params, mut buf) = match open(&proxy, Stream::Plain(tcp), deadline).await {
        Ok(Opening::Session { stream, params, buf }) => (stream, params, buf),
        Ok(Opening::Cancel { pid, secret }) => {
            proxy.cancels.forward(pid, secret).await;
            return;
        }
        Err((stream, refusal)) => {
            refuse(&proxy, stream, &refusal, "unknown", peer).await;
            return;
        }
    };
    let user = params.get("user").unwrap_or_default().to_owned();
    let dbname = params.get("database").unwrap_or(&user).to_owned();
    let resource_label = metric_resource(&proxy, &dbname);

    let admitted = async {
        authenticate(&proxy, &mut stream, &mut buf, &user, peer.ip(), deadline).await?;
        let admitted = admit(&proxy, &user, &dbname)?;
        let upstream = connect(&admitted.target, &admitted.role, &params)
            .await
            .map_err(|e| Refusal::Upstream {
                resource: admitted.resource.name.clone(),
                detail: e.to_string(),
            })?;
        Ok::<_, Refusal>((admitted, upstream))
    }
    .await;
    match admitted {
        Ok((admitted, upstream)) => {
            proxy.metrics.connection(PROTOCOL, &resource_label, "allowed");
            run(&proxy, stream, buf, &user, admitted, upstream, &shutdown).await;
        }
        Err(refusal) => {
            tracing::info!(%peer, user = %user, database = %dbname, outcome = refusal.kind(), "connection refused: {}", refusal.text().1);
            refuse(&proxy, Some(stream), &refusal, &resource_label, peer).await;
        }
    }
}

async fn refuse(proxy: &Proxy, stream: Option<Stream>, refusal: &Refusal, resource: &str, peer: SocketAddr) {
    proxy.metrics.connection(PROTOCOL, resource, refusal.kind());
    if matches!(refusal, Refusal::Protocol(_) | Refusal::HandshakeTimeout) {
        tracing::info!(%peer, outcome = refusal.kind(), "connection refused: {}", refusal.text().1);
    }
    if let (Some(mut stream), Some(msg)) = (stream, refusal.to_message()) {
        let send = async {
            let _ = stream.write_all(&msg).await;
            let _ = stream.shutdown().await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send).await;
    }
}

/// Resource names for metric labels: configured names only, so typos cannot grow the label set.
fn metric_resource(proxy: &Proxy, dbname: &str) -> String {
    let (name, _) = split_dbname(dbname);
    if proxy.settings.resources.iter().any(|r| r.name == name) {
        name.to_owned()
    } else {
        "unknown".to_owned()
    }
}

async fn run(
    proxy: &Proxy,
    mut client: Stream,
    pending_input: BytesMut,
    user: &str,
    admitted: Admitted,
    upstream: Upstream,
    shutdown: &CancellationToken,
) {
    let Admitted {
        resource,
        target,
        role,
        grant,
    } = admitted;
    let Upstream {
        stream: server,
        backend_key,
        greeting,
    } = upstream;
    let Some(grant_rx) = proxy.grants.watch(&grant.id) else {
        return;
    };
    let info = SessionInfo {
        id: new_session_id(),
        user: user.to_owned(),
        resource: resource.name.clone(),
        role: role.name.clone(),
        protocol: PROTOCOL.to_owned(),
        grant_id: grant.id.clone(),
        started_at: now_millis(),
        bytes_in: 0,
        bytes_out: 0,
    };
    let registration = proxy.sessions.register(info, shutdown);
    let handle = &registration.handle;
    let id = handle.info.id.clone();
    if let Some((pid, secret)) = &backend_key {
        proxy
            .cancels
            .insert(*pid, secret.clone(), target.host.clone(), target.port);
    }
    tracing::info!(session = %id, user, resource = %resource.name, role = %role.name, grant = %grant.id, "session started");

    let mut hello = BytesMut::from(&auth_ok()[..]);
    hello.extend_from_slice(&greeting);
    let started = Instant::now();
    let (end, cut) = if client.write_all(&hello).await.is_err() {
        (RelayEnd::ClientClosed, None)
    } else {
        let (notice_tx, notice_rx) = mpsc::channel(8);
        let cut = async {
            let cut = enforce(grant_rx, &proxy.settings.warn_before, handle, notice_tx).await;
            let msg = cut.message(&resource.name, &id);
            (cut, msg)
        };
        relay(client, server, pending_input.freeze(), handle, notice_rx, cut).await
    };

    if let Some((pid, secret)) = &backend_key {
        proxy.cancels.remove(*pid, secret);
        // Stop whatever the backend is running; it exits once it sees the closed socket.
        if cut.is_some() {
            send_cancel(&target.host, target.port, *pid, secret).await;
        }
    }
    let bytes_in = handle.bytes_in.load(std::sync::atomic::Ordering::Relaxed);
    let bytes_out = handle.bytes_out.load(std::sync::atomic::Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    match cut {
        Some(cut) => {
            proxy.metrics.cuts.with_label_values(&[PROTOCOL, cut.reason()]).inc();
            tracing::info!(session = %id, reason = cut.reason(), bytes_in, bytes_out, secs, "session cut: {}", cut.text(&resource.name, &id));
        }
        None => tracing::info!(session = %id, end = ?end, bytes_in, bytes_out, secs, "session ended"),
    }
}

fn new_session_id() -> String {
    let mut raw = [0u8; 6];
    let _ = getrandom::fill(&mut raw);
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    format!("ses_{hex}")
}
