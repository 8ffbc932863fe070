//! Records one session's statements from the bytes the relay forwards: the
//! relay hands over each chunk it read, `Capture` picks out the messages the
//! tracker reads, and completed statements go to the audit queue in batches.
//! A full queue holds the relay back (backpressure), never drops a statement.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use portcullis_protocol::pg::capture::{Capture, Keep};
use portcullis_protocol::pg::statements::StatementTracker;

use crate::audit::{Batch, SessionAudit, StatementQueue};

/// Statements waiting for room in the queue before the relay stops reading.
const BACKLOG: usize = 256;

/// One session's statement recorder.
pub struct Recorder {
    tracker: StatementTracker,
    up: Capture,
    down: Capture,
    batch: Batch,
    queue: StatementQueue,
}

/// What the tracker reads of the client's messages.
fn client_keep(tag: u8) -> Keep {
    match tag {
        b'Q' => Keep::Text(0),
        b'P' => Keep::Text(1),
        // Describe too: the server's ParameterDescription that answers it
        // gives the types of a statement's binary values.
        b'B' | b'E' | b'C' | b'F' | b'D' => Keep::Body,
        _ => Keep::Length,
    }
}

/// What the tracker reads of the server's messages.
fn server_keep(tag: u8) -> Keep {
    match tag {
        b'C' | b'E' | b't' => Keep::Body,
        _ => Keep::Length,
    }
}

impl Recorder {
    /// A recorder for `session`'s statements into `queue`.
    pub fn new(session: Arc<SessionAudit>, queue: StatementQueue) -> Recorder {
        Recorder {
            tracker: StatementTracker::new(),
            up: Capture::new(),
            down: Capture::new(),
            batch: Batch::new(session),
            queue,
        }
    }

    /// Bytes the client sent, as forwarded.
    pub fn client(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        let tracker = &mut self.tracker;
        // Framing errors end the relay on their own; nothing to record here.
        let _ = self.up.feed(bytes, client_keep, |m| tracker.client_message(&m, now));
    }

    /// Bytes the server sent, as forwarded.
    pub fn server(&mut self, bytes: &[u8]) {
        let now = Instant::now();
        let (tracker, out) = (&mut self.tracker, &mut self.batch.statements);
        let _ = self
            .down
            .feed(bytes, server_keep, |m| tracker.server_message(&m, now, out));
    }

    /// Sends what completed; `Pending` while too much waits for room in the
    /// queue, and the relay then reads nothing more until there is.
    pub fn poll_room(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.batch.statements.is_empty() || self.queue.poll_send(cx, &mut self.batch).is_ready() {
            return Poll::Ready(());
        }
        if self.batch.statements.len() >= BACKLOG {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// At the session's end: statements still waiting for an answer are
    /// recorded as interrupted, and everything is sent.
    pub async fn finish(mut self) {
        self.tracker.interrupt(Instant::now(), &mut self.batch.statements);
        let Recorder { batch, queue, .. } = &mut self;
        std::future::poll_fn(|cx| {
            if batch.statements.is_empty() {
                return Poll::Ready(());
            }
            queue.poll_send(cx, batch)
        })
        .await;
    }
}
