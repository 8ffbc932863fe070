//! The shipper: two threads around a spool. One takes events from the audit
//! thread's queue and appends them to the spool in batches; the other hands
//! the spool's oldest events to `deliver` and acknowledges them once it
//! accepted them, retrying with capped exponential backoff while it fails.
//! Appending goes on while delivery is down; once the spool is full the
//! first thread stops taking from the queue, so the bounded queue behind it
//! slows the sessions, as a slow audit log does in one process. A batch
//! the audit log refuses as it is is halved until the events refused are
//! found alone, and those are set aside (`refused`). Nothing is dropped.
//! `deliver` is where the network is; the spool knows none.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use portcullis_protocol::audit::AuditEvent;
use prometheus::{IntCounter, IntGauge};
use tokio::sync::{Notify, mpsc};

use super::Spool;

/// How long the first thread lets events gather before a write: a burst
/// shares one write and one sync.
const COALESCE: Duration = Duration::from_millis(5);
/// Events appended in one write at most.
const APPEND_BATCH: usize = 1024;
/// How often events the audit log refused are offered again.
const REOFFER: Duration = Duration::from_secs(3600);

/// How the shipper batches and retries.
#[derive(Clone, Copy, Debug)]
pub struct ShipOptions {
    /// Events handed to `deliver` at once, at most.
    pub batch_events: usize,
    /// Bytes (as JSON) handed to `deliver` at once, at most, unless one event alone is larger.
    pub batch_bytes: usize,
    /// The first wait after a failed delivery; it doubles with each failure.
    pub retry_first: Duration,
    /// The longest wait between attempts.
    pub retry_max: Duration,
}

impl Default for ShipOptions {
    fn default() -> ShipOptions {
        ShipOptions {
            batch_events: 512,
            batch_bytes: 1 << 20,
            retry_first: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }
}

/// Why `deliver` did not deliver a batch.
#[derive(Debug)]
pub enum Undelivered {
    /// Worth trying again as it is: the audit log was unreachable, failed,
    /// or refused the sender (its token), not the events.
    Retry(String),
    /// The audit log refused the events themselves: sending the same batch
    /// again would be refused again.
    Refused(String),
}

/// What the shipper shows: events in the spool, and events set aside.
#[derive(Clone)]
pub struct ShipMetrics {
    /// Events in the spool.
    pub depth: IntGauge,
    /// Events the audit log refused and the spool set aside.
    pub refused: IntCounter,
}

struct State {
    spool: Spool,
    /// Both threads are to end.
    stop: bool,
    /// The queue is closed and everything in it spooled.
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled on every append, acknowledgement, close and stop.
    changed: Condvar,
    /// Wakes the first thread from its wait on the queue.
    stop: Notify,
    metrics: ShipMetrics,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits `wait`, or until stopped; false when stopped.
    fn pause(&self, wait: Duration) -> bool {
        let st = self.lock();
        let (st, _) = self
            .changed
            .wait_timeout_while(st, wait, |s| !s.stop)
            .unwrap_or_else(PoisonError::into_inner);
        !st.stop
    }
}

/// The running shipper; dropping it stops both threads (after a delivery
/// under way returns) and closes the spool.
pub struct Shipper {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// Starts shipping: events from `rx` are spooled, then handed in order to
/// `deliver` (blocking; it should time out on its own), which accepts a
/// whole batch (`Ok`) or none (`Err`: retried, or halved when refused).
pub fn spawn_shipper<F>(
    spool: Spool,
    rx: mpsc::Receiver<AuditEvent>,
    deliver: F,
    metrics: ShipMetrics,
    options: ShipOptions,
) -> io::Result<Shipper>
where
    F: FnMut(&[AuditEvent]) -> Result<(), Undelivered> + Send + 'static,
{
    metrics.depth.set(i64::try_from(spool.depth()).unwrap_or(i64::MAX));
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            spool,
            stop: false,
            closed: false,
        }),
        changed: Condvar::new(),
        stop: Notify::new(),
        metrics,
    });
    // A runtime of its own lets the first thread wait on the queue and on stop at once.
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
    let mut shipper = Shipper {
        shared: shared.clone(),
        threads: Vec::with_capacity(2),
    };
    let input = shared.clone();
    shipper.threads.push(
        std::thread::Builder::new()
            .name("portcullis-audit-spool".into())
            .spawn(move || spool_input(&input, &rt, rx, options))?,
    );
    shipper.threads.push(
        std::thread::Builder::new()
            .name("portcullis-audit-ship".into())
            .spawn(move || ship(&shared, deliver, options))?,
    );
    Ok(shipper)
}

impl Shipper {
    /// Waits up to `within` for the queue to close (every sender dropped)
    /// and the spool to empty, then stops; whether everything was delivered.
    /// What is left stays in the spool for the next start.
    pub fn finish(self, within: Duration) -> bool {
        let st = self.shared.lock();
        let (st, _) = self
            .shared
            .changed
            .wait_timeout_while(st, within, |s| !(s.closed && s.spool.depth() == 0))
            .unwrap_or_else(PoisonError::into_inner);
        let done = st.closed && st.spool.depth() == 0;
        drop(st);
        done
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        self.shared.stop.notify_one();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The first thread: queue to spool.
fn spool_input(
    shared: &Shared,
    rt: &tokio::runtime::Runtime,
    mut rx: mpsc::Receiver<AuditEvent>,
    options: ShipOptions,
) {
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    loop {
        let first = rt.block_on(async {
            tokio::select! {
                biased;
                () = shared.stop.notified() => None,
                e = rx.recv() => e,
            }
        });
        let Some(first) = first else { break };
        batch.push(first);
        std::thread::sleep(COALESCE);
        while batch.len() < APPEND_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        if !append(shared, &mut batch, true, options) {
            break;
        }
    }
    // Closed or stopped: what is queued already is spooled too, past the
    // bound if need be (a queue's worth), rather than lost.
    rx.close();
    while let Ok(e) = rx.try_recv() {
        batch.push(e);
    }
    append(shared, &mut batch, false, options);
    shared.lock().closed = true;
    shared.changed.notify_all();
}

/// Appends `batch` to the spool, waiting while it is full (when `bounded`)
/// and retrying while the disk fails; false when stopped first.
fn append(shared: &Shared, batch: &mut Vec<AuditEvent>, bounded: bool, options: ShipOptions) -> bool {
    let mut wait = options.retry_first;
    let mut full_since: Option<std::time::Instant> = None;
    let mut st = shared.lock();
    while !batch.is_empty() {
        let result = st.spool.append_within(batch, bounded);
        match result {
            Ok(()) => {
                batch.clear();
                if let Some(since) = full_since {
                    tracing::info!(waited_ms = since.elapsed().as_millis(), "audit spool has room again");
                }
                shared
                    .metrics
                    .depth
                    .set(i64::try_from(st.spool.depth()).unwrap_or(i64::MAX));
                shared.changed.notify_all();
            }
            Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                if st.stop {
                    return false;
                }
                if full_since.is_none() {
                    tracing::warn!(
                        events = st.spool.depth(),
                        bytes = st.spool.bytes(),
                        "audit spool is full: holding new audit events (and the sessions that report them) until the audit log takes some"
                    );
                    full_since = Some(std::time::Instant::now());
                }
                st = shared.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
                // An event that cannot be encoded at all (too large): spool the
                // others one by one and name it, rather than stall every session.
                for event in batch.drain(..) {
                    let one = std::slice::from_ref(&event);
                    if let Err(e) = st.spool.append_within(one, false) {
                        tracing::error!(error = %e, id = %event.id, action = %event.action, "audit event cannot be spooled; skipped");
                    }
                }
                shared
                    .metrics
                    .depth
                    .set(i64::try_from(st.spool.depth()).unwrap_or(i64::MAX));
                shared.changed.notify_all();
            }
            Err(e) => {
                if st.stop {
                    tracing::error!(error = %e, events = batch.len(), "cannot write the audit spool while stopping; these events are not spooled");
                    return false;
                }
                tracing::error!(error = %e, events = batch.len(), retry_ms = wait.as_millis(), "cannot write the audit spool; retrying");
                drop(st);
                shared.pause(wait);
                wait = (wait * 2).min(options.retry_max);
                st = shared.lock();
            }
        }
    }
    !st.stop
}

/// The second thread: spool to `deliver`, oldest first.
fn ship<F>(shared: &Shared, mut deliver: F, options: ShipOptions)
where
    F: FnMut(&[AuditEvent]) -> Result<(), Undelivered>,
{
    let mut wait = options.retry_first;
    let mut failures = 0u32;
    // Events a batch holds: halved while the audit log refuses batches,
    // until the events it refuses are found alone.
    let mut events = options.batch_events.max(1);
    let mut offered = std::time::Instant::now();
    loop {
        if offered.elapsed() >= REOFFER {
            offered = std::time::Instant::now();
            let mut st = shared.lock();
            st.spool.offer_refused_again();
            shared
                .metrics
                .depth
                .set(i64::try_from(st.spool.depth()).unwrap_or(i64::MAX));
        }
        let batch = {
            let mut st = shared.lock();
            loop {
                if st.stop || (st.closed && st.spool.depth() == 0) {
                    return;
                }
                if st.spool.depth() > 0 {
                    break;
                }
                st = shared.changed.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.spool.peek(events, options.batch_bytes)
        };
        let delivered = match batch {
            Ok(batch) if batch.is_empty() => {
                // The count and the files disagree; never spin on it.
                tracing::error!("audit spool counts events it cannot read");
                false
            }
            Ok(batch) => match deliver(&batch) {
                Ok(()) => {
                    events = options.batch_events.max(1);
                    acknowledge(shared, batch.len())
                }
                Err(Undelivered::Refused(why)) if batch.len() > 1 => {
                    tracing::warn!(error = %why, events = batch.len(), "the audit log refused a batch of audit events; sending it in halves to find the events it refuses");
                    events = batch.len() / 2;
                    continue;
                }
                Err(Undelivered::Refused(why)) => set_aside(shared, &batch[0], &why),
                Err(Undelivered::Retry(e)) => {
                    tracing::warn!(error = %e, events = batch.len(), failures = failures + 1, retry_ms = wait.as_millis(), "cannot deliver audit events; they stay in the spool");
                    false
                }
            },
            Err(e) => {
                tracing::error!(error = %e, retry_ms = wait.as_millis(), "cannot read the audit spool");
                false
            }
        };
        if delivered {
            if failures > 0 {
                tracing::info!(failures, "audit events are delivered again");
            }
            failures = 0;
            wait = options.retry_first;
        } else {
            failures = failures.saturating_add(1);
            if !shared.pause(wait) {
                return;
            }
            wait = (wait * 2).min(options.retry_max);
        }
    }
}

/// Sets aside `event`, which the audit log refused (`why`), and takes it
/// off the queue; false when it could not be written (then it stays).
fn set_aside(shared: &Shared, event: &AuditEvent, why: &str) -> bool {
    let kept = shared.lock().spool.set_aside(event);
    match kept {
        Ok(()) => {
            tracing::error!(error = %why, id = %event.id, action = %event.action, file = super::REFUSED, "the audit log refused an audit event; set aside in the spool's directory, offered again every hour and at the next start");
            shared.metrics.refused.inc();
            acknowledge(shared, 1)
        }
        Err(e) => {
            tracing::error!(error = %e, id = %event.id, "cannot set aside a refused audit event; it stays in the spool");
            false
        }
    }
}

/// Acknowledges `n` delivered events; false when the cursor could not be
/// moved (they will be delivered again: at least once).
fn acknowledge(shared: &Shared, n: usize) -> bool {
    let mut st = shared.lock();
    match st.spool.ack(n) {
        Ok(()) => {
            shared
                .metrics
                .depth
                .set(i64::try_from(st.spool.depth()).unwrap_or(i64::MAX));
            shared.changed.notify_all();
            true
        }
        Err(e) => {
            tracing::error!(error = %e, events = n, "cannot move the audit spool's cursor; these events will be delivered again");
            false
        }
    }
}
