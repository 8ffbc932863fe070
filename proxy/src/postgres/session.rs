//! The life of one client connection, from accept to close: opening,
//! authentication, admission, upstream login, then the relay under the
//! enforcer. Every refusal is sent as an ErrorResponse and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use portcullis_protocol::pg::backend::{auth_ok, set_backend_key_secret};
use portcullis_protocol::sessions::SessionInfo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::admission::{Admitted, admit, split_dbname};
use super::auth::authenticate;
use super::cancel::send_cancel;
use super::pool::PoolKey;
use super::recorder::Recorder;
use super::refusal::Refusal;
use super::relay::{RelayEnd, relay};
use super::startup::{Opening, open};
use super::stream::Stream;
use super::upstream::{Upstream, connect, forwarded_params, terminate};
use crate::audit::SessionAudit;
use crate::clock::now_millis;
use crate::enforce::{Cut, enforce};
use crate::{Proxy, audit};

const PROTOCOL: &str = "postgres";

/// Handles one accepted TCP connection to the end.
pub async fn handle(proxy: Arc<Proxy>, tcp: TcpStream, peer: SocketAddr, worker: usize, shutdown: CancellationToken) {
    let _ = tcp.set_nodelay(true);
    let deadline = Instant::now() + proxy.settings.postgres.handshake_timeout;
    let (mut stream, params, mut buf) = match open(&proxy, Stream::Plain(tcp), deadline).await {
        Ok(Opening::Session { stream, params, buf }) => (stream, params, buf),
        Ok(Opening::Cancel { pid, secret }) => {
            proxy.cancels.forward(pid, secret).await;
            return;
        }
        Err((stream, refusal)) => {
            refuse(&proxy, stream, &refusal, "unknown", peer, "").await;
            return;
        }
    };
    let user = params.get("user").unwrap_or_default().to_owned();
    let dbname = params.get("database").unwrap_or(&user).to_owned();
    let resource_label = metric_resource(&proxy, &dbname);

    let admitted = async {
        // A split proxy that never had the feed's snapshot knows no users:
        // say why before a password check that could only fail.
        if !proxy.contact.is_synced()
            && let Some(silent) = proxy.contact.refusal()
        {
            return Err(Refusal::ControlPlaneSilent { silent });
        }
        authenticate(&proxy, &mut stream, &mut buf, &user, peer.ip(), deadline).await?;
        let admitted = admit(&proxy, &user, &dbname)?;
        let key = PoolKey {
            worker,
            resource: admitted.resource.name.clone(),
            role: admitted.role.name.clone(),
            params: forwarded_params(&params),
        };
        let upstream = match proxy.pool.take(&key) {
            Some(warm) => {
                proxy.metrics.pool_idle.set(proxy.pool.idle_count() as i64);
                proxy.metrics.upstream.with_label_values(&[&key.resource, "pool"]).inc();
                warm
            }
            None => {
                let fresh = connect(&admitted.target, &admitted.role, &key.params, &proxy.scram_keys)
                    .await
                    .map_err(|e| Refusal::Upstream {
                        resource: admitted.resource.name.clone(),
                        detail: e.to_string(),
                    })?;
                proxy
                    .metrics
                    .upstream
                    .with_label_values(&[&key.resource, "login"])
                    .inc();
                fresh
            }
        };
        Ok::<_, Refusal>((admitted, key, upstream))
    }
    .await;
    drop(params);
    match admitted {
        Ok((admitted, key, upstream)) => {
            proxy.metrics.connection(PROTOCOL, &resource_label, "allowed");
            let client = Client {
                stream,
                pending: buf,
                user: &user,
                peer,
            };
            if let Some(idle) = run(&proxy, client, admitted, upstream, &shutdown).await {
                proxy.pool.put(key, idle).await;
                proxy.metrics.pool_idle.set(proxy.pool.idle_count() as i64);
            }
        }
        Err(refusal) => {
            tracing::info!(%peer, user = %user, database = %dbname, outcome = refusal.kind(), "connection refused: {}", refusal.text().1);
            refuse(&proxy, Some(stream), &refusal, &resource_label, peer, &user).await;
        }
    }
}

async fn refuse(
    proxy: &Proxy,
    stream: Option<Stream>,
    refusal: &Refusal,
    resource: &str,
    peer: SocketAddr,
    user: &str,
) {
    proxy.metrics.connection(PROTOCOL, resource, refusal.kind());
    // A client that left before asking anything (a port probe) got no decision to record.
    if !matches!(refusal, Refusal::Gone) {
        let mut denied = audit::event("connect.denied", if user.is_empty() { "-" } else { user });
        denied.resource = (resource != "unknown").then(|| resource.to_owned());
        denied.detail.insert("protocol".into(), PROTOCOL.into());
        denied.detail.insert("outcome".into(), refusal.kind().into());
        denied.detail.insert("why".into(), refusal.text().1);
        denied.detail.insert("peer".into(), peer.ip().to_string());
        if let Refusal::Denied { denied: why, asked, .. } = refusal {
            why.annotate(asked.as_deref(), &mut denied);
        }
        proxy.audit.record(denied).await;
    }
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

/// The engineer's side of an admitted session.
struct Client<'a> {
    stream: Stream,
    /// What the client sent after authenticating, before the relay started.
    pending: BytesMut,
    user: &'a str,
    peer: SocketAddr,
}

/// Runs an admitted session to its end; answers the server connection when
/// it ended idle and may serve the next session.
async fn run(
    proxy: &Proxy,
    client: Client<'_>,
    admitted: Admitted,
    mut upstream: Upstream,
    shutdown: &CancellationToken,
) -> Option<Upstream> {
    let Admitted {
        resource, role, grant, ..
    } = admitted;
    let Client {
        stream: mut client,
        pending: pending_input,
        user,
        peer,
    } = client;
    let Some(grant_rx) = proxy.grants.watch(&grant.id) else {
        // Revoked or expired since admission: refused, with why, as a new
        // attempt would be (never a bare disconnect).
        tracing::info!(user, grant = %grant.id, "grant vanished between admission and session start");
        let dbname = format!("{}@{}", resource.name, role.name);
        if let Err(refusal) = admit(proxy, user, &dbname) {
            refuse(proxy, Some(client), &refusal, &resource.name, peer, user).await;
        }
        return None;
    };
    let backend_key = upstream.backend_key.clone();
    let info = SessionInfo {
        id: crate::random::session_id(),
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
    // The client sees the real backend pid with a secret of this session's
    // own: a pooled backend's next user cannot be cancelled by its last one.
    let client_secret = backend_key.as_ref().map(|(_, real)| random_bytes(real.len()));
    if let (Some((pid, real)), Some(ours)) = (&backend_key, &client_secret) {
        proxy.cancels.insert(*pid, ours.clone(), upstream.server, real.clone());
    }
    tracing::info!(session = %id, user, resource = %resource.name, role = %role.name, grant = %grant.id, "session started");
    let audit = Arc::new(SessionAudit {
        user: user.to_owned(),
        resource: resource.name.clone(),
        role: role.name.clone(),
        session_id: id.clone(),
        protocol: PROTOCOL,
        grant_id: grant.id.clone(),
        request_id: grant.request_id.clone(),
        reason: grant.reason.clone(),
        approvers: grant.approvers.clone(),
        break_glass: grant.break_glass,
        redact_parameters: role.redact_parameters,
        wall: now_millis(),
        since: std::time::Instant::now(),
        handle: Some(Arc::clone(&registration.handle)),
    });
    let session_event = |action: &str| audit.event(action);
    let mut start = session_event("session.start");
    start.detail.insert("peer".into(), peer.ip().to_string());
    start.detail.insert("tls".into(), client.is_tls().to_string());
    proxy.audit.record(start).await;

    let mut hello = BytesMut::from(&auth_ok()[..]);
    let greeting_at = hello.len();
    hello.extend_from_slice(&upstream.greeting);
    if let Some(ours) = &client_secret {
        set_backend_key_secret(&mut hello[greeting_at..], ours);
    }
    handle.bytes_out.fetch_add(hello.len() as u64, Ordering::Relaxed);
    let started = Instant::now();
    let hello_sent = async {
        client.write_all(&hello).await?;
        client.flush().await
    };
    let (end, cut, server_idle) = if hello_sent.await.is_err() {
        (RelayEnd::ClientClosed, None, true)
    } else {
        drop(hello);
        let (notice_tx, notice_rx) = mpsc::channel(8);
        // The enforcer is a task of its own, so the relay's many wakeups
        // never poll its timer, watch and kill token; it reports once.
        let (cut_tx, cut_rx) = oneshot::channel();
        let _enforcer = {
            let handle = Arc::clone(&registration.handle);
            let warn_before = proxy.settings.warn_before.clone();
            AbortOnDropHandle::new(tokio::spawn(async move {
                let _ = cut_tx.send(enforce(grant_rx, &warn_before, &handle, notice_tx).await);
            }))
        };
        let cut = async {
            let cut = cut_rx.await.unwrap_or(Cut::Shutdown);
            let msg = cut.message(&resource.name, &id);
            (cut, msg)
        };
        let mut recorder = proxy
            .audit
            .statements()
            .map(|queue| Recorder::new(Arc::clone(&audit), queue));
        let relayed = relay(
            &mut client,
            &mut upstream.stream,
            pending_input.freeze(),
            handle,
            notice_rx,
            cut,
            recorder.as_mut(),
        )
        .await;
        if let Some(r) = recorder {
            r.finish().await;
        }
        relayed
    };

    if let (Some((pid, _)), Some(ours)) = (&backend_key, &client_secret) {
        proxy.cancels.remove(*pid, ours);
    }
    let bytes_in = handle.bytes_in.load(Ordering::Relaxed);
    let bytes_out = handle.bytes_out.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    match &cut {
        Some(cut) => {
            proxy.metrics.cuts.with_label_values(&[PROTOCOL, cut.reason()]).inc();
            tracing::info!(session = %id, reason = cut.reason(), bytes_in, bytes_out, secs, "session cut: {}", cut.text(&resource.name, &id));
        }
        None => tracing::info!(session = %id, end = ?end, bytes_in, bytes_out, secs, "session ended"),
    }
    let mut ended = session_event("session.end");
    let how = cut.as_ref().map_or_else(|| end.label(), |c| c.reason());
    for (k, v) in [
        ("ended", how.to_owned()),
        ("bytes_in", bytes_in.to_string()),
        ("bytes_out", bytes_out.to_string()),
        ("duration_ms", started.elapsed().as_millis().to_string()),
    ] {
        ended.detail.insert(k.into(), v);
    }
    if let (None, Some(error)) = (&cut, end.error()) {
        ended.detail.insert("error".into(), error.to_owned());
    }
    proxy.audit.record(ended).await;
    match end {
        RelayEnd::ClientQuit { idle: true } => Some(upstream),
        // However the session ended, a query still running upstream is stopped:
        // the backend would otherwise finish it, grant or no grant.
        _ if !server_idle => {
            if let Some((pid, secret)) = &backend_key {
                send_cancel(upstream.server, *pid, secret).await;
            }
            None
        }
        // An idle server needs no cancel (each one costs PostgreSQL a fork): Terminate is enough.
        RelayEnd::ClientQuit { .. } | RelayEnd::Cut => {
            terminate(&mut upstream.stream).await;
            None
        }
        _ => None,
    }
}

fn random_bytes(n: usize) -> Bytes {
    let mut raw = vec![0u8; n];
    let _ = getrandom::fill(&mut raw);
    Bytes::from(raw)
}
