//! Records one session's statements from the bytes the relay forwards: the
//! relay hands over each chunk it read, `Capture` picks out the messages the
//! statement tracker reads, and those are copied as they are into the batch
//! for the audit thread (`audit::records`), which makes the statements. A
//! small chunk of whole messages (a short statement, its answer) is copied
//! whole instead, and the audit thread picks its messages out. A full queue
//! holds the relay back (backpressure), never drops a statement.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use portcullis_protocol::pg::capture::Capture;

use crate::audit::records;
use crate::audit::{Batch, SessionAudit, StatementQueue};

/// Bytes of messages waiting for room in the queue before the relay stops
/// reading (a couple of hundred short statements).
const BACKLOG: usize = 16 * 1024;
/// Bytes of messages that wait for the server's answer before they are sent
/// anyway: a statement and its answer then go in one batch, one hand-off
/// to the audit thread per round trip instead of one per direction.
const DEFER: usize = 4 * 1024;
/// Chunks of whole messages up to this size are copied whole: one copy
/// instead of one per message, and no framing on the relay. pgbench -S -M
/// prepared: relay 6.4k -> 5.2k instructions a transaction, audit thread
/// 6.7k -> 7.0k; proxy CPU 20.4 -> 18.9 µs a transaction (PgBouncer 17.8).
/// Larger chunks are mostly rows, which the audit does not read.
const CHUNK: usize = 1024;

/// One session's statement recorder.
pub struct Recorder {
    up: Capture,
    down: Capture,
    batch: Batch,
    queue: StatementQueue,
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

    /// Bytes the client sent, as forwarded; `ends_whole` when they end
    /// at a message's end.
    pub fn client(&mut self, bytes: &[u8], ends_whole: bool) {
        let at = self.now();
        record(&mut self.up, &mut self.batch.records, false, at, bytes, ends_whole);
    }

    /// Bytes the server sent, as forwarded; `ends_whole` as for `client`.
    pub fn server(&mut self, bytes: &[u8], ends_whole: bool) {
        let at = self.now();
        record(&mut self.down, &mut self.batch.records, true, at, bytes, ends_whole);
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

/// Records one direction's `bytes`: whole when they are a small chunk of
/// whole messages, else message by message through `capture`.
fn record(capture: &mut Capture, out: &mut Vec<u8>, from_server: bool, at: u64, bytes: &[u8], ends_whole: bool) {
    if ends_whole && bytes.len() <= CHUNK && capture.at_boundary() {
        // `capture` stays at a boundary: the chunk ends where it began.
        records::push_chunk(out, from_server, at, bytes);
        return;
    }
    // Framing errors end the relay on their own; nothing to record here.
    let _ = capture.feed(bytes, records::keep(from_server), |m| {
        records::push(out, from_server, at, &m)
    });
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use tokio::sync::mpsc;

    use super::*;
    use crate::audit::Item;
    use crate::audit::records::tests::message;

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

        recorder.client(&message(b'Q', b"SELECT 1\0"), true);
        assert!(recorder.poll_room(&mut cx, true).is_ready());
        assert!(sent(&mut rx).is_empty(), "the answer is owed: nothing goes yet");
        let mut answer = message(b'C', b"SELECT 1\0");
        answer.extend(message(b'Z', b"I"));
        recorder.server(&answer, true);
        assert!(recorder.poll_room(&mut cx, false).is_ready());
        assert_eq!(sent(&mut rx), [3], "the query and its answer, in one batch");

        // A long pipeline of queries goes before its answers once DEFER bytes wait.
        let query = message(b'Q', format!("SELECT '{}'\0", "x".repeat(500)).as_bytes());
        let mut queued = 0;
        while sent(&mut rx).is_empty() {
            recorder.client(&query, true);
            queued += 1;
            assert!(recorder.poll_room(&mut cx, true).is_ready());
            assert!(queued * query.len() <= DEFER + query.len() + 64, "held past DEFER");
        }
        assert!(queued > 1);
    }

    #[test]
    fn a_full_queue_reads_full_while_the_session_waits_for_room() {
        let (tx, _rx) = mpsc::channel(1);
        let queue = StatementQueue::bare(tx);
        let depth = queue.depth();
        let session = Arc::new(crate::audit::statement::tests::session(false));
        let mut recorder = Recorder::new(session, queue);
        let mut cx = Context::from_waker(Waker::noop());
        let statement = message(b'Q', b"SELECT 1\0");
        recorder.client(&statement, true);
        assert!(recorder.poll_room(&mut cx, false).is_ready(), "the one slot");
        let full = i64::try_from(crate::audit::QUEUE).expect("small");
        assert_eq!(depth.get(), full, "the send that took the last slot says so");
        while recorder.batch.records.len() < BACKLOG {
            recorder.client(&statement, true);
            let _ = recorder.poll_room(&mut cx, false);
        }
        assert_eq!(depth.get(), full, "a sender found it full");
        // The audit thread took an item and set what it saw then, one
        // short; the session filled the slot and the thread got stuck.
        depth.set(full - 1);
        assert!(recorder.poll_room(&mut cx, false).is_pending());
        assert_eq!(depth.get(), full, "still waiting: full");
    }

    #[test]
    fn a_small_chunk_of_whole_messages_is_copied_whole_and_a_cut_one_message_by_message() {
        let (tx, _rx) = mpsc::channel(64);
        let session = Arc::new(crate::audit::statement::tests::session(false));
        let mut recorder = Recorder::new(session, StatementQueue::bare(tx));
        let mut stream = message(b'Q', b"SELECT 1\0");
        stream.extend(message(b'Q', b"SELECT 2\0"));
        recorder.client(&stream, true);
        assert_eq!(
            recorder.batch.records.len(),
            records::HEADER + stream.len(),
            "one record: the chunk"
        );
        // Cut inside the second query: message by message, the rest completing it.
        let cut = stream.len() - 4;
        recorder.client(&stream[..cut], false);
        recorder.client(&stream[cut..], true);
        let big = message(b'Q', format!("SELECT '{}'\0", "x".repeat(CHUNK)).as_bytes());
        recorder.client(&big, true);
        let mut texts = Vec::new();
        records::each(&recorder.batch.records, |_, _, m| texts.push(m.body.len()));
        assert_eq!(texts, [9, 9, 9, 9, big.len() - 5]);
    }
}
