//! The proxy's audit events on their way to the audit log: connections
//! refused, sessions started and ended, and every statement. They go through
//! one bounded queue to the audit thread (`pipeline`), which makes statements
//! out of the relays' copied messages, classifies and redacts them off the
//! relay path and hands events on to the log in the order they were queued.
//! When the queue is full the reporting session waits, and the wait is
//! counted; nothing is dropped.

pub mod classify;
pub mod command;
mod comments;
mod pipeline;
pub mod records;
pub mod redact;
pub mod spool;
mod sql_names;
pub mod statement;

use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_protocol::audit::AuditEvent;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::clock::now_millis;
pub use statement::{Batch, SessionAudit};

/// Items queued for the audit thread.
pub const QUEUE: usize = 4096;

/// What sessions hand to the audit thread.
pub enum Item {
    /// An event ready as it is.
    Event(Box<AuditEvent>),
    /// Messages of one session, to be made into statements, classified, redacted and recorded.
    Statements(Batch),
}

/// Where the proxy's audit events go.
pub struct AuditQueue {
    tx: Option<mpsc::Sender<Item>>,
    waits: IntCounter,
    depth: IntGauge,
    spare: records::Spare,
}

impl AuditQueue {
    /// A queue whose events end in `log`, through an audit thread started
    /// here; `None` records nothing (a proxy without an audit log).
    pub fn new(
        log: Option<mpsc::Sender<AuditEvent>>,
        waits: IntCounter,
        depth: IntGauge,
    ) -> std::io::Result<AuditQueue> {
        let spare = records::Spare::default();
        let tx = match log {
            Some(log) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                pipeline::spawn(rx, log, depth.clone(), spare.clone())?;
                Some(tx)
            }
            None => None,
        };
        Ok(AuditQueue {
            tx,
            waits,
            depth,
            spare,
        })
    }

    /// Queues `event`, waiting for room when the queue is full.
    pub async fn record(&self, event: AuditEvent) {
        if let Some(tx) = &self.tx {
            self.send(tx, Item::Event(Box::new(event))).await;
        }
    }

    async fn send(&self, tx: &mpsc::Sender<Item>, item: Item) {
        match tx.try_send(item) {
            Ok(()) => shows_full(tx, &self.depth),
            Err(TrySendError::Full(item)) => {
                full(&self.waits, &self.depth);
                let _ = tx.send(item).await;
            }
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// The queue for a session's statements; `None` when nothing is recorded.
    pub fn statements(&self) -> Option<StatementQueue> {
        self.tx.as_ref().map(|tx| StatementQueue {
            tx: tx.clone(),
            waits: self.waits.clone(),
            depth: self.depth.clone(),
            spare: self.spare.clone(),
            reserving: None,
        })
    }
}

/// A sender found the queue full: the wait is counted, and the depth shows
/// it even while the audit thread is stuck handing an event to the log (it
/// updates the depth only as it takes items).
fn full(waits: &IntCounter, depth: &IntGauge) {
    waits.inc();
    show_full(depth);
}

/// A send filled the queue's last slot: the depth shows it full. The audit
/// thread sets the depth it saw as it took an item, and a sender filling
/// the freed slot just after, with the thread then stuck on a stalled log,
/// would leave it one short of full for as long as the stall lasts.
fn shows_full(tx: &mpsc::Sender<Item>, depth: &IntGauge) {
    if tx.capacity() == 0 {
        show_full(depth);
    }
}

fn show_full(depth: &IntGauge) {
    depth.set(i64::try_from(QUEUE).unwrap_or(i64::MAX));
}

type Reserve = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<mpsc::OwnedPermit<Item>, mpsc::error::SendError<()>>> + Send>,
>;

/// One session's handle on the queue, polled from the relay: sending never
/// blocks the relay's task, and a full queue makes the relay wait for room.
pub struct StatementQueue {
    tx: mpsc::Sender<Item>,
    waits: IntCounter,
    depth: IntGauge,
    /// Where the sent batches' buffers come back from the audit thread.
    spare: records::Spare,
    /// Waiting for room, when the queue was full.
    reserving: Option<Reserve>,
}

impl StatementQueue {
    /// A queue straight into `tx`, with no audit thread: for tests that
    /// look at what a session sends.
    #[cfg(test)]
    pub(crate) fn bare(tx: mpsc::Sender<Item>) -> StatementQueue {
        StatementQueue {
            tx,
            waits: IntCounter::new("waits", "waits").unwrap_or_else(|_| unreachable!("a valid name")),
            depth: IntGauge::new("depth", "depth").unwrap_or_else(|_| unreachable!("a valid name")),
            spare: records::Spare::default(),
            reserving: None,
        }
    }

    /// The depth gauge it sets: for tests.
    #[cfg(test)]
    pub(crate) fn depth(&self) -> IntGauge {
        self.depth.clone()
    }

    /// A buffer for a session's batch.
    pub fn buffer(&self) -> Vec<u8> {
        self.spare.get()
    }

    /// Sends `batch` when there is room; `Pending` (woken when there is)
    /// hands the batch back untouched for the next try.
    pub fn poll_send(&mut self, cx: &mut std::task::Context<'_>, batch: &mut Batch) -> std::task::Poll<()> {
        use std::task::Poll;
        if self.reserving.is_none() {
            match self.tx.try_reserve() {
                Ok(permit) => {
                    permit.send(Item::Statements(batch.take(self.spare.get())));
                    shows_full(&self.tx, &self.depth);
                    return Poll::Ready(());
                }
                Err(TrySendError::Closed(())) => {
                    // The log is gone (shutdown): nothing more can be recorded.
                    batch.clear();
                    return Poll::Ready(());
                }
                Err(TrySendError::Full(())) => {
                    full(&self.waits, &self.depth);
                    self.reserving = Some(Box::pin(self.tx.clone().reserve_owned()));
                }
            }
        }
        let Some(reserving) = self.reserving.as_mut() else {
            return Poll::Ready(());
        };
        let Poll::Ready(permit) = reserving.as_mut().poll(cx) else {
            // Again, when polled while waiting (see `shows_full`).
            show_full(&self.depth);
            return Poll::Pending;
        };
        self.reserving = None;
        match permit {
            Ok(permit) => {
                permit.send(Item::Statements(batch.take(self.spare.get())));
                shows_full(&self.tx, &self.depth);
            }
            Err(_) => batch.clear(),
        }
        Poll::Ready(())
    }
}

/// A fresh event id: `evt_`, this process's random prefix, then a counter.
/// Ids must never repeat (the log keeps one event per id), and one is made
/// per statement: a counter costs nothing where a read of the system's
/// randomness per id is a syscall. The prefix (48 random bits, read once)
/// keeps ids of different processes and restarts apart.
fn next_id() -> String {
    let mut id = String::with_capacity(4 + 12 + 16);
    write_next_id(&mut id);
    id
}

/// Writes a fresh id (see `next_id`) over `id`: the audit thread reuses
/// one string for its statements' ids.
fn write_next_id(id: &mut String) {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        // Without randomness, the start time in nanoseconds tells processes apart.
        crate::random::hex(6).unwrap_or_else(|_| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{:012x}", nanos & 0xffff_ffff_ffff)
        })
    });
    id.clear();
    id.push_str("evt_");
    id.push_str(prefix);
    push_hex(id, COUNTER.fetch_add(1, Ordering::Relaxed));
}

/// Appends `n` in lowercase hex, at least 8 digits, as `{n:08x}` would: one
/// id is made per statement under load, and fmt's machinery cost more than
/// the rest of the id.
fn push_hex(out: &mut String, n: u64) {
    let digits = (u64::BITS - n.leading_zeros()).div_ceil(4).max(8);
    for shift in (0..digits).rev() {
        out.push(char::from(b"0123456789abcdef"[((n >> (shift * 4)) & 0xf) as usize]));
    }
}

/// A new event of `action` by `user`, now, with a fresh id.
pub fn event(action: &str, user: &str) -> AuditEvent {
    // A control plane takes no other action from a proxy: a new one must
    // join the list, or split mode would refuse it.
    debug_assert!(
        portcullis_protocol::audit::PROXY_ACTIONS.contains(&action),
        "{action} is not in PROXY_ACTIONS"
    );
    AuditEvent::new(next_id(), now_millis(), action, user)
}

#[cfg(test)]
mod tests {
    #[test]
    fn event_ids_share_the_process_prefix_and_never_repeat() {
        let ids: Vec<String> = (0..1000).map(|_| super::event("statement", "alice").id).collect();
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        assert!(ids.iter().all(|id| id.starts_with("evt_") && id[..16] == ids[0][..16]));
    }

    #[test]
    fn counters_are_written_as_eight_hex_digits_or_more() {
        for n in [0, 9, 0xabc, 0xffff_ffff, 0x1_0000_0000, u64::MAX] {
            let mut s = String::new();
            super::push_hex(&mut s, n);
            assert_eq!(s, format!("{n:08x}"));
        }
    }
}
