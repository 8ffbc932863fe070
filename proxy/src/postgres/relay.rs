//! The relay: bytes both ways while the enforcer decides. One task polls
//! both directions (no split halves, no locks), and each direction borrows a
//! read buffer only while bytes are moving. Message headers are followed,
//! never bodies, so that a warning or the final FATAL goes in between two of
//! the server's messages, the client's Terminate is kept from the server,
//! and the relay knows whether the server connection ended idle and can
//! serve the next session. With a `Recorder`, the relay also hands it each
//! chunk for the statement audit, and waits when the audit queue is full.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use portcullis_protocol::pg::backend::{Severity, error_response};
use portcullis_protocol::pg::boundary::Boundary;
use portcullis_protocol::pg::error::ProtocolError;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::buffers::Lease;
use super::recorder::Recorder;
use super::stream::Stream;
use crate::sessions::SessionHandle;

/// How long a cut may wait for the server's current message to end before
/// the connection is closed without the FATAL.
const CUT_GRACE: Duration = Duration::from_millis(200);

/// How the relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client sent Terminate; `idle` when the server had answered every
    /// query and stood between messages, so its connection can be reused.
    ClientQuit {
        /// The server connection is idle and clean.
        idle: bool,
    },
    /// The client closed its socket without Terminate.
    ClientClosed,
    /// The server closed its side.
    ServerClosed,
    /// The session was cut (FATAL delivered, or the grace period ran out).
    Cut,
    /// The client sent a message no PostgreSQL server would take (a length
    /// below 4): it was told so with a FATAL, as PostgreSQL tells it.
    Violation(String),
    /// An I/O or framing error on either side.
    Error(String),
}

impl RelayEnd {
    /// How the session ended, as the audit log spells it.
    pub fn label(&self) -> &'static str {
        match self {
            RelayEnd::ClientQuit { .. } => "client_quit",
            RelayEnd::ClientClosed => "client_closed",
            RelayEnd::ServerClosed => "server_closed",
            RelayEnd::Cut => "cut",
            RelayEnd::Violation(_) => "protocol_violation",
            RelayEnd::Error(_) => "error",
        }
    }

    /// What went wrong, for an end by error.
    pub fn error(&self) -> Option<&str> {
        match self {
            RelayEnd::Violation(e) | RelayEnd::Error(e) => Some(e),
            _ => None,
        }
    }
}

/// The FATAL a client gets for breaking the protocol: SQLSTATE 08P01, as PostgreSQL sends.
fn violation_fatal(what: &str) -> Bytes {
    error_response(
        Severity::Fatal,
        "08P01",
        &format!("portcullis: protocol violation: {what}; the session is closed"),
        None,
        None,
    )
}

/// Relays until one side closes or `cut` resolves to the reason and the
/// FATAL message to deliver; `notices` are inserted between server messages.
/// `recorder` sees every chunk relayed. Answers how it ended, the cut if
/// there was one, and whether the server had answered everything (if not,
/// a query may still be running there).
pub async fn relay<T>(
    client: &mut Stream,
    server: &mut Stream,
    first_to_server: Bytes,
    handle: &SessionHandle,
    notices: mpsc::Receiver<Bytes>,
    cut: impl Future<Output = (T, Bytes)>,
    recorder: Option<&mut Recorder>,
) -> (RelayEnd, Option<T>, bool) {
    let mut relay = Relay {
        client,
        server,
        handle,
        recorder,
        up: Pipe::default(),
        down: Pipe::default(),
        asked: 0,
        copy_syncs: CopySyncs::default(),
        answered: 0,
        quit: None,
        notices,
        notices_armed: false,
        own: None,
        own_pos: 0,
        fatal: None,
        ending: false,
        violation: None,
    };
    match relay.send_first(&first_to_server).await {
        None => {}
        Some(RelayEnd::Violation(text)) => relay.violate(text),
        Some(end) => {
            let idle = relay.server_idle();
            return (end, None, idle);
        }
    }
    drop(first_to_server);
    let mut cut = pin!(cut);
    let mut why = None;
    let mut grace: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let end = std::future::poll_fn(|cx| {
        // Once cut or violated, nothing more from the client reaches the
        // server, and the first FATAL is the one delivered.
        if why.is_none()
            && relay.violation.is_none()
            && let Poll::Ready((reason, fatal)) = cut.as_mut().poll(cx)
        {
            why = Some(reason);
            relay.fatal = Some(fatal);
        }
        if why.is_none()
            && relay.violation.is_none()
            && let Poll::Ready(end) = relay.poll_up(cx)
        {
            let RelayEnd::Violation(text) = end else {
                return Poll::Ready(end);
            };
            relay.violate(text);
        }
        if grace.is_none() && (why.is_some() || relay.violation.is_some()) {
            grace = Some(Box::pin(tokio::time::sleep(CUT_GRACE)));
        }
        if let Some(g) = grace.as_mut()
            && g.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(relay.cut_end());
        }
        relay.poll_down(cx)
    })
    .await;
    let idle = relay.server_idle();
    (end, why, idle)
}

/// One direction: the lent buffer, the part of it still to be written, and
/// where the stream stands between messages.
#[derive(Default)]
struct Pipe {
    lease: Lease,
    start: usize,
    end: usize,
    /// Bytes written since the last flush: over TLS they may sit in rustls
    /// until flushed, and the next write may never come.
    unflushed: bool,
    frames: Boundary,
    /// Offset in the buffer just past the last whole message in it.
    mark: Option<usize>,
}

struct Relay<'a> {
    client: &'a mut Stream,
    server: &'a mut Stream,
    handle: &'a SessionHandle,
    /// The statement audit, when on.
    recorder: Option<&'a mut Recorder>,
    /// Client to server.
    up: Pipe,
    /// Server to client.
    down: Pipe,
    /// Query, Sync and FunctionCall messages sent: each gets one
    /// ReadyForQuery (but the Syncs of `copy_syncs`).
    asked: u64,
    copy_syncs: CopySyncs,
    /// ReadyForQuery messages received.
    answered: u64,
    /// The client sent Terminate; true when it came whole, at a boundary.
    quit: Option<bool>,
    notices: mpsc::Receiver<Bytes>,
    /// Our waker is registered with `notices`: until a notice arrives (and
    /// wakes us), looking for one is a plain emptiness check.
    notices_armed: bool,
    /// A message of ours being written to the client, between two of the server's.
    own: Option<Bytes>,
    own_pos: usize,
    /// The cut's FATAL, waiting for the server's current message to end.
    fatal: Option<Bytes>,
    /// The FATAL is out: flush, close, done.
    ending: bool,
    /// The client broke the protocol: this is why the FATAL is out.
    violation: Option<String>,
}

/// What a chunk from the client holds for the relay.
struct ClientChunk {
    /// Bytes to forward: all of them, or those before Terminate.
    forward: usize,
    /// Terminate seen: true when its header lies whole in this chunk.
    quit: Option<bool>,
    /// Messages that each get one ReadyForQuery.
    asked: u64,
}

/// The client's Syncs the server ignores: it reads none during a COPY IN
/// (either protocol), and libpq and tokio-postgres send one right after
/// the Execute that starts it. A Sync the client follows with CopyData,
/// CopyDone or CopyFail, before any other message and while no CopyDone
/// or CopyFail came before it, may have been sent within a COPY IN; it is
/// uncounted only once the server completes a COPY IN (CommandComplete
/// after its CopyInResponse), which proves it read them all in the COPY.
/// Any other outcome leaves them counted: a count too high only delays
/// records and pooling, one too low would skip the cancel of a running
/// query when the session is cut.
#[derive(Default)]
struct CopySyncs {
    /// Syncs since the client's last other message.
    pending: u64,
    /// That message was a CopyDone or CopyFail: the COPY IN is over.
    ended: bool,
    /// Syncs the client sent within what may be a COPY IN.
    within: u64,
    /// The server sent CopyInResponse and has not yet ended that COPY.
    server_copying: bool,
}

impl CopySyncs {
    /// A server message `tag`: answers the Syncs now proven ignored.
    fn server(&mut self, tag: u8) -> u64 {
        match tag {
            b'G' => self.server_copying = true,
            b'C' if self.server_copying => {
                self.server_copying = false;
                return std::mem::take(&mut self.within);
            }
            // An error, or a ReadyForQuery: no COPY IN holds what came before.
            b'E' | b'Z' => {
                self.server_copying = false;
                self.within = 0;
            }
            _ => {}
        }
        0
    }
}

impl ClientChunk {
    /// Whether the bytes to forward end at a message's end (`frames` having
    /// scanned them): all of them, and no partial message after.
    fn ends_whole(&self, frames: &Boundary) -> bool {
        self.quit.is_none() && frames.at_boundary()
    }
}

fn scan_client(frames: &mut Boundary, syncs: &mut CopySyncs, chunk: &[u8]) -> Result<ClientChunk, ProtocolError> {
    let mut scan = ClientChunk {
        forward: chunk.len(),
        quit: None,
        asked: 0,
    };
    frames.advance_with(chunk, |tag, pos| {
        if scan.quit.is_some() {
            return;
        }
        match tag {
            b'S' => {
                scan.asked += 1;
                syncs.pending += 1;
                return;
            }
            b'd' | b'c' | b'f' if !syncs.ended => syncs.within += syncs.pending,
            b'Q' | b'F' => scan.asked += 1,
            b'X' => {
                scan.quit = Some(pos >= 5);
                scan.forward = pos.saturating_sub(5);
            }
            _ => {}
        }
        syncs.pending = 0;
        syncs.ended = matches!(tag, b'c' | b'f');
    })?;
    Ok(scan)
}

impl Relay<'_> {
    /// Forwards what the client sent right after authenticating.
    async fn send_first(&mut self, first: &[u8]) -> Option<RelayEnd> {
        if first.is_empty() {
            return None;
        }
        self.handle.bytes_in.fetch_add(first.len() as u64, Ordering::Relaxed);
        let scan = match scan_client(&mut self.up.frames, &mut self.copy_syncs, first) {
            Ok(s) => s,
            Err(e) => return Some(RelayEnd::Violation(e.to_string())),
        };
        self.asked += scan.asked;
        if let Some(r) = self.recorder.as_mut() {
            r.client(&first[..scan.forward], scan.ends_whole(&self.up.frames));
        }
        let sent = async {
            self.server.write_all(&first[..scan.forward]).await?;
            self.server.flush().await
        };
        if let Err(e) = sent.await {
            return Some(RelayEnd::Error(format!("server: {e}")));
        }
        scan.quit.map(|clean| self.quit_end(clean))
    }

    /// Whether the server has answered everything and stands between messages.
    fn server_idle(&self) -> bool {
        self.asked == self.answered && self.down.frames.at_boundary()
    }

    /// Stops reading the client and queues the FATAL that says why.
    fn violate(&mut self, what: String) {
        self.fatal = Some(violation_fatal(&what));
        self.violation = Some(what);
    }

    /// How a session ends once its FATAL is out (or its grace ran out).
    fn cut_end(&mut self) -> RelayEnd {
        self.violation.take().map_or(RelayEnd::Cut, RelayEnd::Violation)
    }

    fn quit_end(&self, clean: bool) -> RelayEnd {
        RelayEnd::ClientQuit {
            idle: clean && self.server_idle(),
        }
    }

    /// Client to server.
    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        loop {
            let up = &mut self.up;
            if up.start < up.end {
                match ready!(Pin::new(&mut *self.server).poll_write(cx, &up.lease.bytes()[up.start..up.end])) {
                    Ok(0) => return Poll::Ready(RelayEnd::Error("server: write returned zero".into())),
                    Ok(n) => {
                        up.start += n;
                        up.unflushed = true;
                        continue;
                    }
                    Err(e) => return Poll::Ready(RelayEnd::Error(format!("server: {e}"))),
                }
            }
            if up.unflushed {
                if let Err(e) = ready!(Pin::new(&mut *self.server).poll_flush(cx)) {
                    return Poll::Ready(RelayEnd::Error(format!("server: {e}")));
                }
                up.unflushed = false;
            }
            if let Some(clean) = self.quit {
                return Poll::Ready(self.quit_end(clean));
            }
            if let Some(r) = self.recorder.as_mut() {
                ready!(r.poll_room(cx, self.asked > self.answered));
            }
            let up = &mut self.up;
            let n = match ready!(up.lease.poll_read(&mut *self.client, cx)) {
                Ok(0) => return Poll::Ready(RelayEnd::ClientClosed),
                Ok(n) => n,
                Err(e) => return Poll::Ready(RelayEnd::Error(format!("client: {e}"))),
            };
            self.handle.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            let scan = match scan_client(&mut up.frames, &mut self.copy_syncs, &up.lease.bytes()[..n]) {
                Ok(s) => s,
                Err(e) => return Poll::Ready(RelayEnd::Violation(e.to_string())),
            };
            self.asked += scan.asked;
            self.quit = scan.quit;
            if let Some(r) = self.recorder.as_mut() {
                r.client(&up.lease.bytes()[..scan.forward], scan.ends_whole(&up.frames));
            }
            up.start = 0;
            up.end = scan.forward;
        }
    }

    /// Server to client, with our own messages slipped in at boundaries.
    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        loop {
            if let Some(own) = &self.own {
                while self.own_pos < own.len() {
                    match ready!(Pin::new(&mut *self.client).poll_write(cx, &own[self.own_pos..])) {
                        Ok(0) => return Poll::Ready(RelayEnd::Error("client: write returned zero".into())),
                        Ok(n) => self.own_pos += n,
                        Err(e) => return Poll::Ready(RelayEnd::Error(format!("client: {e}"))),
                    }
                }
                self.own = None;
                self.own_pos = 0;
                self.down.unflushed = true;
                continue;
            }
            if self.ending {
                let _ = ready!(Pin::new(&mut *self.client).poll_flush(cx));
                let _ = ready!(Pin::new(&mut *self.client).poll_shutdown(cx));
                return Poll::Ready(self.cut_end());
            }
            let down = &mut self.down;
            let at_boundary = down.mark == Some(down.start) || (down.start == down.end && down.frames.at_boundary());
            if at_boundary {
                if let Some(fatal) = self.fatal.take() {
                    self.own = Some(fatal);
                    self.ending = true;
                    continue;
                }
                if !self.notices_armed || !self.notices.is_empty() {
                    match self.notices.poll_recv(cx) {
                        Poll::Ready(Some(notice)) => {
                            self.notices_armed = false;
                            self.own = Some(notice);
                            continue;
                        }
                        // Pending leaves our waker registered; a closed channel has nothing more.
                        Poll::Pending | Poll::Ready(None) => self.notices_armed = true,
                    }
                }
            }
            if down.start < down.end {
                // Stop at the last boundary only when something waits to go in there.
                let waiting = self.fatal.is_some() || !self.notices.is_empty();
                let limit = match down.mark {
                    Some(m) if waiting && m > down.start => m,
                    _ => down.end,
                };
                match ready!(Pin::new(&mut *self.client).poll_write(cx, &down.lease.bytes()[down.start..limit])) {
                    Ok(0) => return Poll::Ready(RelayEnd::Error("client: write returned zero".into())),
                    Ok(n) => {
                        down.start += n;
                        down.unflushed = true;
                        continue;
                    }
                    Err(e) => return Poll::Ready(RelayEnd::Error(format!("client: {e}"))),
                }
            }
            if down.unflushed {
                if let Err(e) = ready!(Pin::new(&mut *self.client).poll_flush(cx)) {
                    return Poll::Ready(RelayEnd::Error(format!("client: {e}")));
                }
                down.unflushed = false;
            }
            if let Some(r) = self.recorder.as_mut() {
                ready!(r.poll_room(cx, self.asked > self.answered));
            }
            let down = &mut self.down;
            let n = match ready!(down.lease.poll_read(&mut *self.server, cx)) {
                Ok(0) => return Poll::Ready(RelayEnd::ServerClosed),
                Ok(n) => n,
                Err(e) => return Poll::Ready(RelayEnd::Error(format!("server: {e}"))),
            };
            self.handle.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            let (mut answered, mut ignored) = (0, 0);
            let copy_syncs = &mut self.copy_syncs;
            down.mark = match down.frames.advance_with(&down.lease.bytes()[..n], |tag, _| {
                if tag == b'Z' {
                    answered += 1;
                }
                ignored += copy_syncs.server(tag);
            }) {
                Ok(m) => m,
                Err(e) => return Poll::Ready(RelayEnd::Error(format!("server: {e}"))),
            };
            self.answered += answered;
            self.asked = self.asked.saturating_sub(ignored);
            if let Some(r) = self.recorder.as_mut() {
                r.server(&down.lease.bytes()[..n], down.frames.at_boundary());
            }
            down.start = 0;
            down.end = n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&u32::try_from(body.len() + 4).expect("small").to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// ReadyForQuery messages the server owes after the client sent
    /// `chunks` and the server answered with `server` (tags), in turn.
    fn owed(chunks: &[Vec<u8>], server: &[u8]) -> u64 {
        let (mut frames, mut syncs, mut asked) = (Boundary::new(), CopySyncs::default(), 0u64);
        for chunk in chunks {
            asked += scan_client(&mut frames, &mut syncs, chunk).expect("scan").asked;
        }
        for &tag in server {
            asked = asked.saturating_sub(syncs.server(tag));
            asked -= u64::from(tag == b'Z');
        }
        asked
    }

    #[test]
    fn syncs_sent_within_a_copy_in_are_owed_no_answer() {
        let (bind, exec, sync) = (msg(b'B', b"\0\0\0\0\0\0\0"), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b""));
        let (data, done, fail) = (msg(b'd', b"1\n"), msg(b'c', b""), msg(b'f', b"no\0"));
        // tokio-postgres's copy_in: Bind, Execute, Sync; the data; CopyDone, Sync.
        let copy = [
            [bind.clone(), exec.clone(), sync.clone()].concat(),
            data.clone(),
            [done.clone(), sync.clone()].concat(),
        ];
        assert_eq!(owed(&copy, b"2GCZ"), 0, "the first Sync was read within the COPY");
        // Split at every message, and a Sync among the data.
        let parts = [&bind, &exec, &sync, &data, &sync, &data, &done, &sync].map(Clone::clone);
        assert_eq!(owed(&parts, b"2GCZ"), 0);
        // The COPY failed before it began: both Syncs are answered.
        let failed = [
            [bind.clone(), exec.clone(), sync.clone()].concat(),
            [fail, sync.clone()].concat(),
        ];
        assert_eq!(owed(&failed, b"2EZ"), 1, "one answer still owed");
        assert_eq!(owed(&failed, b"2EZZ"), 0);
        // CopyData after a Sync, with no COPY at all: the Sync is answered,
        // and a query after it is owed its answer.
        let stray = [sync.clone(), data.clone(), msg(b'Q', b"SELECT pg_sleep(600)\0")];
        assert_eq!(owed(&stray, b"Z"), 1, "the running query is still owed");
        // No COPY: every Sync and Query is answered.
        assert_eq!(
            owed(&[bind, exec, sync.clone(), msg(b'Q', b"SELECT 1\0"), sync], b""),
            3
        );
    }
}
