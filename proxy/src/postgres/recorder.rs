//! Records one session's statements from the bytes the relay forwards: the
//! relay hands over each chunk it read, `Capture` picks out the messages the
//! statement tracker reads, and those are copied as they are into the batch
//! for the audit thread (`audit::records`), which makes the statements. A
//! full queue holds the relay back (backpressure), never drops a statement.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use portcullis_protocol::pg::capture::{Capture, Keep};

use crate::audit::{Batch, SessionAudit, StatementQueue, records};

/// Bytes of messages waiting for room in the queue before the relay stops
/// reading (a couple of hundred short statements).
const BACKLOG: usize = 16 * 1024;

/// One session's statement recorder.
pub struct Recorder {
    up: Capture,
    down: Capture,
    batch: Batch,
    queue: StatementQueue,
}

/// What the tracker reads of the client's messages; the rest is not recorded.
fn client_keep(tag: u8) -> Keep {
    match tag {
        b'Q' => Keep::Text(0),
        b'P' => Keep::Text(1),
        // Describe too: the server's ParameterDescription that answers it
        // gives the types of a statement's binary values.
        b'B' | b'E' | b'C' | b'F' | b'D' => Keep::Body,
        b'S' | b'd' | b'c' | b'f' => Keep::Length,
        _ => Keep::Skip,
    }
}

/// What the tracker reads of the server's messages: never DataRow above
/// all, the bulk of any result.
fn server_keep(tag: u8) -> Keep {
    match tag {
        b'C' | b'E' | b't' => Keep::Body,
        b'I' | b's' | b'Z' | b'1' | b'2' | b'3' | b'T' | b'n' | b'G' | b'H' | b'W' | b'd' => Keep::Length,
        _ => Keep::Skip,
    }
}

impl Recorder {
    /// A recorder for `session`'s statements into `queue`.
    pub fn new(session: Arc<SessionAudit>, queue: StatementQueue) -> Recorder {
        Recorder {
            up: Capture::new(),
            down: Capture::new(),
            batch: Batch::new(session, queue.buffer()),
            queue,
        }
    }

    /// Now, as records count time: nanoseconds since the session's `since`.
    fn now(&self) -> u64 {
        u64::try_from(self.batch.session.since.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Bytes the client sent, as forwarded.
    pub fn client(&mut self, bytes: &[u8]) {
        let at = self.now();
        let out = &mut self.batch.records;
        // Framing errors end the relay on their own; nothing to record here.
        let _ = self.up.feed(bytes, client_keep, |m| records::push(out, false, at, &m));
    }

    /// Bytes the server sent, as forwarded.
    pub fn server(&mut self, bytes: &[u8]) {
        let at = self.now();
        let out = &mut self.batch.records;
        let _ = self.down.feed(bytes, server_keep, |m| records::push(out, true, at, &m));
    }

    /// Sends what was recorded; `Pending` while too much waits for room in
    /// the queue, and the relay then reads nothing more until there is.
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.batch.is_empty() || self.queue.poll_send(cx, &mut self.batch).is_ready() {
            return Poll::Ready(());
        }
        if self.batch.records.len() >= BACKLOG {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// At the session's end: sends everything, with the end's time, so that
    /// statements still waiting for an answer are recorded as interrupted.
    pub async fn finish(mut self) {
        self.batch.end = Some(Instant::now());
        let Recorder { batch, queue, .. } = &mut self;
        std::future::poll_fn(|cx| {
            if batch.is_empty() {
                return Poll::Ready(());
            }
            queue.poll_send(cx, batch)
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_rows_notices_and_terminate_are_not_recorded() {
        for tag in [b'D', b'N', b'S', b'A'] {
            assert_eq!(server_keep(tag), Keep::Skip, "{}", char::from(tag));
        }
        for tag in [b'X', b'p', b'H'] {
            assert_eq!(client_keep(tag), Keep::Skip, "{}", char::from(tag));
        }
        assert_eq!((server_keep(b'Z'), client_keep(b'S')), (Keep::Length, Keep::Length));
    }
}
