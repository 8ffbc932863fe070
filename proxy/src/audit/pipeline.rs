//! The audit thread: takes what sessions queue, makes statements out of the
//! messages the relays copied (each session's `StatementTracker` lives
//! here), turns them into events (classification and redaction run here,
//! off the relay path) and hands
//! every event to the audit log in queue order, waiting when the log's queue
//! is full, so backpressure reaches the sessions instead of events being lost.
//!
//! A session's statements are gathered into blocks (see
//! `portcullis_protocol::audit::block`) for up to `GATHER` before they go
//! to the log: a stored row per statement cost more than relaying it. A
//! session's other events (its end above all) wait for its open block, so
//! the log keeps each session's order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::audit::block::BlockBuilder;
use portcullis_protocol::audit::detail::{Detail, DetailJson};
use portcullis_protocol::feed::UnixMillis;
use prometheus::IntGauge;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;

use portcullis_protocol::pg::statements::{Lost, Statement, StatementTracker};

use super::classify::Classifier;
use super::statement::{Batch, SessionAudit, statement_detail};
use super::{Item, records};

/// While statements are open in blocks, the queue is looked at this often:
/// one wakeup of this thread per burst instead of one per statement. Under
/// `pgbench -C` blocks are always open, and waking every 2 ms cost this
/// thread 51 µs a connection where every 10 ms costs 21; under `pgbench -S`
/// 30 ms rather than 10 cut the audit threads' CPU from 1.72 to 1.54 µs a
/// transaction (each switch to a thread that a relay has just displaced
/// costs as much as a few statements).
const COALESCE: Duration = Duration::from_millis(30);
/// The wait instead of `COALESCE` once one wait's arrivals filled a quarter
/// of the queue (`QUEUE` items, about one a transaction), so that relays do
/// not wait on a full queue for want of this thread's waking: 10 ms of
/// 130,000 transactions a second fill a third of it.
const COALESCE_BUSY: Duration = Duration::from_millis(10);
/// How long a statement waits in an open block, at most, before the blocks
/// go to the log: what statement audit adds to the audit lag.
const GATHER: Duration = Duration::from_millis(50);

/// Starts the thread; it ends when every sender is gone and the queue is drained.
pub(super) fn spawn(
    rx: mpsc::Receiver<Item>,
    log: mpsc::Sender<AuditEvent>,
    depth: IntGauge,
    spare: records::Spare,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("portcullis-audit-sql".into())
        .spawn(move || {
            below_sessions();
            run(rx, &log, &depth, spare);
        })
        .map(drop)
}

fn run(mut rx: mpsc::Receiver<Item>, log: &mpsc::Sender<AuditEvent>, depth: &IntGauge, spare: records::Spare) {
    let mut blocks = Blocks {
        spare,
        ..Blocks::default()
    };
    // Items taken since this thread last slept.
    let mut taken = 0usize;
    loop {
        // Wait for work only when no block is open; else come back in time to close them.
        let next = if blocks.is_empty() {
            rx.blocking_recv().ok_or(TryRecvError::Disconnected)
        } else {
            rx.try_recv()
        };
        let sent = match next {
            Ok(item) => {
                taken += 1;
                // Before the hand-off that may block: a stalled log shows as depth.
                depth.set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
                blocks.take(item, log) && blocks.close_due(log)
            }
            Err(TryRecvError::Empty) => {
                let sent = blocks.close_due(log);
                std::thread::sleep(if taken > super::QUEUE / 4 {
                    COALESCE_BUSY
                } else {
                    COALESCE
                });
                taken = 0;
                sent
            }
            Err(TryRecvError::Disconnected) => {
                blocks.close_all(log);
                return;
            }
        };
        if !sent {
            return;
        }
    }
}

/// Lowers this thread's priority (nice 5) below the session threads': when
/// both want a core, statements are relayed first and the audit catches up
/// in larger batches. Backpressure still holds: a full queue slows the
/// sessions, so audit never falls behind for good. Best effort.
fn below_sessions() {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 5);
}

type BySession<T> = HashMap<String, T, foldhash::fast::RandomState>;

/// Each session's statement tracker and open block, by session id.
#[derive(Default)]
struct Blocks {
    classifier: Classifier,
    trackers: BySession<StatementTracker>,
    /// Statements a tracker just completed (kept for its room).
    done: Vec<Statement>,
    open: BySession<BlockBuilder>,
    /// When the oldest open block got its first statement.
    since: Option<Instant>,
    /// Where read batches' buffers go back to the relays.
    spare: records::Spare,
    /// The id of the statement being added, in a string kept for the next.
    id: String,
    /// The server's last FATAL in sessions whose recorder ended, for their
    /// `session.end` (which follows) to say why the server closed them.
    fatal: BySession<String>,
}

impl Blocks {
    fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Takes one queued item; false once the log is gone.
    fn take(&mut self, item: Item, log: &mpsc::Sender<AuditEvent>) -> bool {
        match item {
            Item::Event(mut e) => {
                if e.action == "session.end"
                    && let Some(id) = &e.session_id
                {
                    // Its recorder's end came first, unless the relay was torn down.
                    self.trackers.remove(id);
                    // Why the server closed it; a cut's FATAL is the proxy's own.
                    if let Some(fatal) = self.fatal.remove(id)
                        && e.detail.get("ended").is_some_and(|how| how == "server_closed")
                    {
                        e.detail.entry("error".into()).or_insert(fatal);
                    }
                }
                let open = e.session_id.as_ref().and_then(|id| self.open.remove(id));
                open.is_none_or(|b| log.blocking_send(b.finish()).is_ok()) && log.blocking_send(*e).is_ok()
            }
            Item::Statements(batch) => self.add(batch, log),
        }
    }

    /// Runs `batch`'s messages through its session's tracker and adds each
    /// statement to the session's block as it completes, sending the block
    /// on when it is full.
    fn add(&mut self, batch: Batch, log: &mpsc::Sender<AuditEvent>) -> bool {
        let Batch { session, records, end } = batch;
        let tracker = match self.trackers.get_mut(&session.session_id) {
            Some(t) => t,
            None => self.trackers.entry(session.session_id.clone()).or_default(),
        };
        let mut filling = Filling {
            open: Some(&mut self.open),
            block: None,
            session: &session,
            classifier: &mut self.classifier,
            id: &mut self.id,
            since: &mut self.since,
            log,
            sent: true,
        };
        let done = &mut self.done;
        // Each statement is written and handed back before the next message:
        // the tracker reuses its room (bound values above all) at once.
        records::each(&records, |from_server, at, m| {
            let now = session.since + Duration::from_nanos(at);
            if from_server {
                tracker.server_message(m, now, done);
                for s in done.drain(..) {
                    filling.push(&s, tracker);
                    tracker.recycle(s);
                }
            } else {
                let following = tracker.lost().is_none();
                tracker.client_message(m, now);
                if let Some(why) = tracker.lost() {
                    if following {
                        filling.push_lost(session.wall_at(now), why, tracker.unfollowed());
                        session.cut_for_audit(why.why());
                    }
                    // Until the cut, what the relay still sends is recorded by its text.
                    tracker.abandoned(done);
                    for s in done.drain(..) {
                        filling.push(&s, tracker);
                    }
                }
            }
        });
        self.spare.put(records);
        if let Some(end) = end {
            tracker.interrupt(end, done);
            for s in done.drain(..) {
                filling.push(&s, tracker);
            }
            if let Some(fatal) = tracker.fatal() {
                self.fatal.insert(session.session_id.clone(), fatal.to_owned());
            }
            self.trackers.remove(&session.session_id);
        }
        filling.sent
    }

    /// Sends every open block once the oldest has waited `GATHER`.
    fn close_due(&mut self, log: &mpsc::Sender<AuditEvent>) -> bool {
        match self.since {
            Some(since) if since.elapsed() >= GATHER => self.close_all(log),
            _ => true,
        }
    }

    /// Sends every open block; false once the log is gone.
    fn close_all(&mut self, log: &mpsc::Sender<AuditEvent>) -> bool {
        self.since = None;
        self.open
            .drain()
            .filter(|(_, b)| !b.is_empty())
            .all(|(_, b)| log.blocking_send(b.finish()).is_ok())
    }
}

/// One session's open block while a batch of its messages is read.
struct Filling<'a> {
    /// Every session's open block, until this session's is looked up.
    open: Option<&'a mut BySession<BlockBuilder>>,
    /// This session's, once a statement completed.
    block: Option<&'a mut BlockBuilder>,
    session: &'a Arc<SessionAudit>,
    classifier: &'a mut Classifier,
    id: &'a mut String,
    since: &'a mut Option<Instant>,
    log: &'a mpsc::Sender<AuditEvent>,
    /// False once the log is gone: nothing more is added.
    sent: bool,
}

impl Filling<'_> {
    /// Adds `s`, one of `tracker`'s, to the block, first sending the block
    /// on when `s` does not fit.
    fn push(&mut self, s: &Statement, tracker: &mut StatementTracker) {
        let session = self.session;
        self.push_with(session.at(s), |classifier, d| {
            statement_detail(session, s, classifier, Some(tracker), d);
        });
    }

    /// Records, at `at`, that the session's tracker stopped (`why`) with
    /// `unfollowed` statements awaiting their outcome: nothing after this
    /// is recorded statement by statement, and the session is cut.
    fn push_lost(&mut self, at: UnixMillis, why: Lost, unfollowed: usize) {
        self.push_with(at, |_, d| {
            d.put_plain("outcome", "not_followed");
            d.put("why", &why.why());
            d.put_number("unfollowed", unfollowed as u64);
        });
    }

    /// Adds an event at `at` whose detail `write` puts in, first sending the
    /// block on when it does not fit.
    fn push_with(&mut self, at: UnixMillis, write: impl FnOnce(&mut Classifier, &mut DetailJson<'_>)) {
        if !self.sent {
            return;
        }
        let session = self.session;
        if let Some(open) = self.open.take() {
            // Two lookups: `entry` would clone the id every batch.
            let id = &session.session_id;
            if !open.contains_key(id) {
                open.insert(id.clone(), block_of(session));
            }
            self.block = open.get_mut(id);
        }
        let Some(block) = self.block.as_deref_mut() else {
            return;
        };
        if !block.fits(at) {
            let full = std::mem::replace(block, block_of(session));
            if self.log.blocking_send(full.finish()).is_err() {
                self.sent = false;
                return;
            }
        }
        let classifier = &mut *self.classifier;
        super::write_next_id(self.id);
        block.push_with(self.id, at, |d| write(classifier, d));
        self.since.get_or_insert_with(Instant::now);
    }
}

/// An empty block of `session`'s statements, with a fresh id.
fn block_of(session: &Arc<SessionAudit>) -> BlockBuilder {
    BlockBuilder::new(session.event("statements"))
}

#[cfg(test)]
mod tests {
    use portcullis_protocol::pg::capture::Message;

    use super::*;

    #[test]
    fn a_session_s_tracker_lives_until_its_end_which_interrupts_what_is_unanswered() {
        let (log, mut events) = mpsc::channel(16);
        let mut blocks = Blocks::default();
        let mut batch = Batch::new(Arc::new(crate::audit::statement::tests::session(false)), Vec::new());
        records::push(
            &mut batch.records,
            false,
            1_000,
            &Message::whole(b'Q', b"SELECT pg_sleep(9)\0"),
        );
        assert!(blocks.take(Item::Statements(batch.take(Vec::new())), &log));
        assert_eq!(
            (blocks.trackers.len(), blocks.open.len()),
            (1, 0),
            "asked, not answered"
        );
        batch.end = Some(Instant::now());
        assert!(blocks.take(Item::Statements(batch.take(Vec::new())), &log));
        assert!(blocks.trackers.is_empty(), "the end lets the tracker go");
        assert!(blocks.close_all(&log));
        let block = events.try_recv().expect("the block");
        let statements = portcullis_protocol::audit::block::expand(1, block);
        let detail = &statements[0].1.detail;
        assert_eq!(
            (detail["text"].as_str(), detail["outcome"].as_str()),
            ("SELECT pg_sleep(9)", "interrupted")
        );
    }

    #[test]
    fn a_session_the_server_ended_says_why_in_its_end() {
        let (log, mut events) = mpsc::channel(16);
        let mut blocks = Blocks::default();
        let session = Arc::new(crate::audit::statement::tests::session(false));
        let mut idle = Batch::new(Arc::clone(&session), Vec::new());
        // Idle, then terminated (idle_session_timeout, pg_terminate_backend).
        let fatal = b"SFATAL\0VFATAL\0C57P05\0Mterminating connection due to idle-session timeout\0\0";
        records::push(&mut idle.records, true, 1_000, &Message::whole(b'E', fatal));
        let end = |how: &str| {
            let mut e = session.event("session.end");
            e.detail.insert("ended".into(), how.into());
            Item::Event(Box::new(e))
        };
        for (how, error) in [
            (
                "server_closed",
                Some("FATAL 57P05: terminating connection due to idle-session timeout"),
            ),
            // Cut by the proxy as the server's FATAL came: not why it ended.
            ("expired", None),
        ] {
            let mut batch = Batch::new(Arc::clone(&session), idle.records.clone());
            batch.end = Some(Instant::now());
            assert!(blocks.take(Item::Statements(batch), &log));
            assert!(blocks.take(end(how), &log));
            let ended = events.try_recv().expect("the end");
            assert_eq!(ended.detail.get("error").map(String::as_str), error, "{how}");
            assert!(blocks.fatal.is_empty(), "taken by the end");
        }
    }
}
