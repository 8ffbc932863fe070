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
/// Bytes of messages that wait for the server's answer before they are sent
/// anyway: a statement and its answer then go in one batch, one hand-off
/// to the audit thread per round trip instead of one per direction.
const DEFER: usize = 4 * 1024;

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

    /// Sends what was recorded, unless `answer_owed` (the server still owes
    /// a ReadyForQuery, whose arrival calls here again) and little waits;
    /// `Pending` while too much waits for room in the queue, and the relay
    /// then reads nothing more until there is.
    pub fn poll_room(&mut self, cx: &mut Context<'_>, answer_owed: bool) -> Poll<()> {
        if self.batch.is_empty()
            || (answer_owed && self.batch.records.len() < DEFER)
            || self.queue.poll_send(cx, &mut self.batch).is_ready()
        {
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
    use std::task::Waker;

    use tokio::sync::mpsc;

    use super::*;
    use crate::audit::Item;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend(u32::try_from(body.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
        m.extend(body);
        m
    }

    /// The records of each batch sent so far.
    fn sent(rx: &mut mpsc::Receiver<Item>) -> Vec<usize> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|item| match item {
                Item::Statements(b) => {
                    let mut n = 0;
                    records::each(&b.records, |_, _, _| n += 1);
                    n
                }
                Item::Event(_) => 0,
            })
            .collect()
    }

    #[test]
    fn a_statement_waits_for_its_answer_and_they_go_together_unless_much_waits() {
        let (tx, mut rx) = mpsc::channel(64);
        let session = Arc::new(crate::audit::statement::tests::session(false));
        let mut recorder = Recorder::new(session, StatementQueue::bare(tx));
        let mut cx = Context::from_waker(Waker::noop());

        recorder.client(&message(b'Q', b"SELECT 1\0"));
        assert!(recorder.poll_room(&mut cx, true).is_ready());
        assert!(sent(&mut rx).is_empty(), "the answer is owed: nothing goes yet");
        let mut answer = message(b'C', b"SELECT 1\0");
        answer.extend(message(b'Z', b"I"));
        recorder.server(&answer);
        assert!(recorder.poll_room(&mut cx, false).is_ready());
        assert_eq!(sent(&mut rx), [3], "the query and its answer, in one batch");

        // A long pipeline of queries goes before its answers once DEFER bytes wait.
        let query = message(b'Q', format!("SELECT '{}'\0", "x".repeat(500)).as_bytes());
        let mut queued = 0;
        while sent(&mut rx).is_empty() {
            recorder.client(&query);
            queued += 1;
            assert!(recorder.poll_room(&mut cx, true).is_ready());
            assert!(queued * query.len() <= DEFER + query.len() + 64, "held past DEFER");
        }
        assert!(queued > 1);
    }

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
