//! Session threads. Each runs its own single-threaded runtime and keeps the
//! sessions it is handed from accept to close, as PgBouncer's one event loop
//! does, but one per core. No work stealing: a relayed message never wakes a
//! second thread (on two cores the multi-threaded scheduler spent more CPU
//! waking and parking its workers than relaying), and a session's sockets
//! stay on one thread's epoll.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio_util::sync::CancellationToken;

/// The session threads; they stop when this is dropped.
pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `count` threads (at least one).
    pub fn start(count: usize) -> io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        for i in 0..count.max(1) {
            let runtime = Builder::new_current_thread().enable_io().enable_time().build()?;
            handles.push(runtime.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("portcullis-pg-{i}"))
                .spawn(move || runtime.block_on(stop.cancelled()))?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// The next thread in turn: its index and runtime.
    pub fn next(&self) -> (usize, &Handle) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        (i, &self.handles[i])
    }

    /// Every thread: its index and runtime.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Handle)> {
        self.handles.iter().enumerate()
    }

    /// How many threads there are.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never true: there is always one thread.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Half the cores, at least one. A session thread that sleeps and wakes per
/// message is cheapest when it serves many sockets per wakeup; a second one
/// only pays once the first saturates its core. Measured on two cores with
/// pgbench beside it: one thread matched PgBouncer's CPU per transaction,
/// two spent 1.2-1.6x as much (twice the voluntary context switches).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}
