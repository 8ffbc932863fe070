//! The audit thread: takes what sessions queue, turns statements into events
//! (classification and redaction run here, off the relay path) and hands
//! every event to the audit log in queue order, waiting when the log's queue
//! is full, so backpressure reaches the sessions instead of events being lost.

use std::time::Duration;

use portcullis_protocol::audit::AuditEvent;
use prometheus::IntGauge;
use tokio::sync::mpsc;

use super::Item;
use super::classify::Classifier;
use super::statement::statement_event;

/// After a batch, what arrives within this long is handled together: one
/// wakeup of this thread per burst instead of one per statement.
const COALESCE: Duration = Duration::from_millis(2);

/// Starts the thread; it ends when every sender is gone and the queue is drained.
pub(super) fn spawn(
    mut rx: mpsc::Receiver<Item>,
    log: mpsc::Sender<AuditEvent>,
    depth: IntGauge,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("portcullis-audit-sql".into())
        .spawn(move || {
            below_sessions();
            let mut classifier = Classifier::default();
            while let Some(first) = rx.blocking_recv() {
                let mut next = Some(first);
                while let Some(item) = next {
                    // Before the hand-off that may block: a stalled log shows as depth.
                    depth.set(i64::try_from(rx.len()).unwrap_or(i64::MAX));
                    if !forward(item, &log, &mut classifier) {
                        return;
                    }
                    next = rx.try_recv().ok();
                }
                std::thread::sleep(COALESCE);
            }
        })
        .map(drop)
}

/// Lowers this thread's priority (nice 5) below the session threads': when
/// both want a core, statements are relayed first and the audit catches up
/// in larger batches. Backpressure still holds: a full queue slows the
/// sessions, so audit never falls behind for good. Best effort.
fn below_sessions() {
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 5);
}

/// Hands `item`'s events to the log; false once the log is gone.
fn forward(item: Item, log: &mpsc::Sender<AuditEvent>, classifier: &mut Classifier) -> bool {
    match item {
        Item::Event(e) => log.blocking_send(*e).is_ok(),
        Item::Statements(batch) => batch.statements.iter().all(|s| {
            log.blocking_send(statement_event(&batch.session, s, classifier))
                .is_ok()
        }),
    }
}
