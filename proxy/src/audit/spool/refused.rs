//! Events the audit log refuses as they are (an action a proxy may not
//! record, an event too large: a 4xx that sending again will not change)
//! are set aside, so that one bad event does not hold up every other
//! behind it. They go to `refused.jsonl` in the spool's directory, one
//! JSON event a line, and are offered again at the next open and every
//! hour: a control plane upgraded since may take them. Nothing is dropped:
//! past `MAX_REFUSED` bytes set aside, a refused event stays in the queue.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;

use portcullis_protocol::audit::AuditEvent;

use super::Spool;
use super::cursor::sync_dir;

/// The file of events set aside, in the spool's directory.
pub const REFUSED: &str = "refused.jsonl";
/// Bytes of events set aside at most.
pub const MAX_REFUSED: u64 = 64 << 20;
/// Lines of `REFUSED` that did not read as events when offered again,
/// kept for inspection.
const UNREADABLE: &str = "refused.unreadable";

impl Spool {
    /// Sets `event` aside durably, to be offered again; `StorageFull` past
    /// `MAX_REFUSED`.
    pub fn set_aside(&self, event: &AuditEvent) -> io::Result<()> {
        let mut line = serde_json::to_vec(event).map_err(io::Error::other)?;
        line.push(b'\n');
        let path = self.dir.join(REFUSED);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        if len + line.len() as u64 > MAX_REFUSED {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("{REFUSED} holds {MAX_REFUSED} bytes already"),
            ));
        }
        append(&path, len, &line)?;
        // The file may be new: its name must last as its bytes do.
        sync_dir(&self.dir)
    }

    /// Queues the events set aside again, if any, saying so; a failure is
    /// logged, and they stay aside for the next time.
    pub(super) fn offer_refused_again(&mut self) {
        if !self.dir.join(REFUSED).exists() {
            return;
        }
        match self.take_back_refused() {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                events = n,
                "audit spool: events the audit log refused before are offered again"
            ),
            Err(e) => {
                tracing::error!(error = %e, "audit spool: cannot queue the events set aside again; they stay aside")
            }
        }
    }

    /// Puts the events an earlier run set aside back in the queue, and
    /// answers how many. A line cut short by a crash was never acknowledged
    /// (the event is still in the spool); other lines that do not read as
    /// events are moved to `refused.unreadable`.
    pub(super) fn take_back_refused(&mut self) -> io::Result<usize> {
        let path = self.dir.join(REFUSED);
        let text = match std::fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            read => read?,
        };
        let mut events = Vec::new();
        let mut unreadable = Vec::new();
        for line in text.split_inclusive(|&b| b == b'\n') {
            match serde_json::from_slice::<AuditEvent>(line) {
                Ok(e) => events.push(e),
                Err(_) if line.ends_with(b"\n") => unreadable.extend_from_slice(line),
                Err(_) => {}
            }
        }
        if !unreadable.is_empty() {
            tracing::error!(kept = %self.dir.join(UNREADABLE).display(), "audit spool: set-aside events that no longer read as events");
            let path = self.dir.join(UNREADABLE);
            let len = std::fs::metadata(&path).map_or(0, |m| m.len());
            append(&path, len, &unreadable)?;
        }
        self.append_within(&events, false)?;
        std::fs::remove_file(&path)?;
        sync_dir(&self.dir)?;
        Ok(events.len())
    }
}

/// Appends `bytes` to the file at `path` (mode 0600), `len` bytes long,
/// and syncs it; a write that fails is cut off again, so that no partial
/// line runs into the next.
fn append(path: &std::path::Path, len: u64, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_data());
    if written.is_err() {
        let _ = f.set_len(len).and_then(|()| f.sync_data());
    }
    written
}
