//! The relay: bytes both ways, unparsed, while the enforcer decides. The
//! server-to-client direction follows message boundaries (headers only) so a
//! warning or the final FATAL is only ever inserted between whole messages.

use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use portcullis_protocol::pg::boundary::Boundary;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use super::stream::Stream;
use crate::sessions::SessionHandle;

/// Relay buffer size per direction.
const BUF: usize = 8 * 1024;
/// How long a cut may wait for the current server message to finish.
const CUT_GRACE: Duration = Duration::from_secs(1);

/// How the relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// The client closed its side (Terminate or EOF).
    ClientClosed,
    /// The server closed its side.
    ServerClosed,
    /// The cut message was delivered (or the grace period ran out).
    Cut,
    /// An I/O or framing error on either side.
    Error(String),
}

/// Relays until one side closes or `cut` resolves to the reason and the
/// FATAL message to deliver; `notices` are inserted as they come.
pub async fn relay<T>(
    client: Stream,
    upstream: Stream,
    first_to_upstream: Bytes,
    handle: &SessionHandle,
    mut notices: mpsc::Receiver<Bytes>,
    cut: impl std::future::Future<Output = (T, Bytes)>,
) -> (RelayEnd, Option<T>) {
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let c2u = client_to_server(&mut cr, &mut uw, first_to_upstream, handle);
    let (cut_tx, mut cut_rx) = mpsc::channel::<Bytes>(1);
    let u2c = server_to_client(&mut ur, &mut cw, handle, &mut notices, &mut cut_rx);
    tokio::pin!(c2u, u2c, cut);
    tokio::select! {
        end = &mut c2u => (end, None),
        end = &mut u2c => (end, None),
        (why, fatal) = &mut cut => {
            let _ = cut_tx.send(fatal).await;
            match tokio::time::timeout(CUT_GRACE, &mut u2c).await {
                Ok(end) => (end, Some(why)),
                Err(_) => (RelayEnd::Cut, Some(why)),
            }
        }
    }
}

async fn client_to_server(
    from: &mut ReadHalf<Stream>,
    to: &mut WriteHalf<Stream>,
    first: Bytes,
    handle: &SessionHandle,
) -> RelayEnd {
    if !first.is_empty() && (to.write_all(&first).await.is_err() || to.flush().await.is_err()) {
        return RelayEnd::ServerClosed;
    }
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => return RelayEnd::ClientClosed,
            Ok(n) => n,
            Err(e) => return RelayEnd::Error(format!("client: {e}")),
        };
        handle.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        // Flush every chunk: over TLS a write may leave ciphertext buffered
        // in rustls until the next write, which may never come.
        if let Err(e) = write_chunk(to, &buf[..n]).await {
            return RelayEnd::Error(format!("server: {e}"));
        }
    }
}

/// At a message boundary: sends the final FATAL (which ends the relay) or
/// the queued notices.
async fn inject(to: &mut WriteHalf<Stream>, notices: &mut Vec<Bytes>, fatal: &mut Option<Bytes>) -> Option<RelayEnd> {
    if let Some(f) = fatal.take() {
        return Some(finish(to, notices, &f).await);
    }
    if !notices.is_empty() {
        if let Err(e) = write_all(to, notices).await {
            return Some(RelayEnd::Error(format!("client: {e}")));
        }
        notices.clear();
    }
    None
}

async fn server_to_client(
    from: &mut ReadHalf<Stream>,
    to: &mut WriteHalf<Stream>,
    handle: &SessionHandle,
    incoming: &mut mpsc::Receiver<Bytes>,
    cut: &mut mpsc::Receiver<Bytes>,
) -> RelayEnd {
    let mut buf = vec![0u8; BUF];
    let mut boundary = Boundary::new();
    let mut notices: Vec<Bytes> = Vec::new();
    let mut fatal: Option<Bytes> = None;
    loop {
        if boundary.at_boundary()
            && let Some(end) = inject(to, &mut notices, &mut fatal).await
        {
            return end;
        }
        let n = tokio::select! {
            biased;
            Some(f) = cut.recv(), if fatal.is_none() => { fatal = Some(f); continue; }
            Some(notice) = incoming.recv(), if fatal.is_none() => { notices.push(notice); continue; }
            read = from.read(&mut buf) => match read {
                Ok(0) => return RelayEnd::ServerClosed,
                Ok(n) => n,
                Err(e) => return RelayEnd::Error(format!("server: {e}")),
            },
        };
        let chunk = &buf[..n];
        let split = match boundary.advance(chunk) {
            Ok(s) => s,
            Err(e) => return RelayEnd::Error(format!("server: {e}")),
        };
        let (head, tail) = match split {
            Some(pos) if fatal.is_some() || !notices.is_empty() => chunk.split_at(pos),
            _ => (chunk, &[][..]),
        };
        handle.bytes_out.fetch_add(head.len() as u64, Ordering::Relaxed);
        if let Err(e) = to.write_all(head).await {
            return RelayEnd::Error(format!("client: {e}"));
        }
        if split.is_some()
            && let Some(end) = inject(to, &mut notices, &mut fatal).await
        {
            return end;
        }
        if !tail.is_empty() {
            handle.bytes_out.fetch_add(tail.len() as u64, Ordering::Relaxed);
            if let Err(e) = to.write_all(tail).await {
                return RelayEnd::Error(format!("client: {e}"));
            }
        }
        // See client_to_server: TLS may hold the last chunk until flushed.
        if let Err(e) = to.flush().await {
            return RelayEnd::Error(format!("client: {e}"));
        }
    }
}

async fn write_chunk(to: &mut WriteHalf<Stream>, chunk: &[u8]) -> io::Result<()> {
    to.write_all(chunk).await?;
    to.flush().await
}

async fn write_all(to: &mut WriteHalf<Stream>, parts: &[Bytes]) -> io::Result<()> {
    for p in parts {
        to.write_all(p).await?;
    }
    to.flush().await
}

async fn finish(to: &mut WriteHalf<Stream>, notices: &[Bytes], fatal: &Bytes) -> RelayEnd {
    let _ = write_all(to, notices).await;
    let _ = to.write_all(fatal).await;
    let _ = to.shutdown().await;
    RelayEnd::Cut
}
