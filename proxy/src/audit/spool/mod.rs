//! The proxy's durable audit spool: a first-in, first-out queue of audit
//! events on disk, for a proxy whose audit log is across a network (split
//! mode). Events are appended to segment files (`frame`), read back oldest
//! first, and forgotten only once acknowledged: the cursor (`cursor`) moves
//! past them and fully acknowledged segments are deleted. A crash loses
//! nothing `append` returned for; what was delivered but not yet
//! acknowledged is delivered again (the log keeps one event per id). The
//! shipper (`shipper`) drives it from the audit thread's queue to a
//! delivery function; events the audit log refuses as they are wait apart
//! (`refused`). See docs/AUDIT.md, "Spool".

mod cursor;
mod frame;
mod refused;
mod shipper;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use portcullis_protocol::audit::AuditEvent;

use cursor::{Pos, sync_dir};
use frame::{HEADER, Next, START};
pub use refused::{MAX_REFUSED, REFUSED};
pub use shipper::{ShipMetrics, ShipOptions, Shipper, Undelivered, spawn_shipper};

/// Default bound on the bytes of unacknowledged events.
pub const MAX_BYTES: u64 = 1 << 30;
/// Default size at which a new segment is started.
pub const SEGMENT_BYTES: u64 = 8 << 20;
/// Suffix of segment files; their names are the segment id, 20 digits.
const SEGMENT: &str = ".seg";
/// Suffix of bytes set aside from a damaged segment, kept for inspection.
const DAMAGED: &str = ".damaged";

/// How large the spool may grow.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes of unacknowledged events beyond which `append` reports the spool full.
    pub max_bytes: u64,
    /// A segment is closed, and a new one started, once it reaches this size.
    pub segment_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_bytes: MAX_BYTES,
            segment_bytes: SEGMENT_BYTES,
        }
    }
}

/// One segment file: its id, how far its records are whole, and the
/// damaged stretches between them that reading steps over.
struct Segment {
    id: u64,
    len: u64,
    holes: Vec<(u64, u64)>,
}

/// A durable FIFO of audit events in one directory; one process at a time.
pub struct Spool {
    dir: PathBuf,
    limits: Limits,
    /// Holds the directory's lock while the spool is open.
    _lock: File,
    /// Segments at or after the cursor's, oldest first.
    segments: VecDeque<Segment>,
    /// The newest segment, open for appending; `None` starts a new one.
    writer: Option<File>,
    /// The first unacknowledged record.
    cursor: Pos,
    depth: u64,
    bytes: u64,
    /// For each event the last `peek` returned: where it ends and its bytes.
    peeked: VecDeque<(Pos, u64)>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SEGMENT}"))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Takes the lock of the spool in `dir`, held as long as the file is open.
fn lock(dir: &Path) -> io::Result<File> {
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("lock"))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("audit spool {} is in use by another process", dir.display()),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The ids of the segments in `dir`, oldest first.
fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name.to_str().and_then(|n| n.strip_suffix(SEGMENT));
        if let Some(id) = id.filter(|id| id.len() == 20).and_then(|id| id.parse::<u64>().ok()) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

impl Spool {
    /// Opens (or creates, mode 0700) the spool in `dir`, recovering from a
    /// crash: a torn last record is cut off and set aside in `ID.damaged`,
    /// and a damaged record with whole ones after it is copied to
    /// `ID.OFFSET.damaged` and stepped over, with an error in the log.
    /// Events an earlier run set aside as refused are queued again.
    pub fn open(dir: &Path, limits: Limits) -> io::Result<Spool> {
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        std::fs::set_permissions(dir, Permissions::from_mode(0o700))?;
        let lock = lock(dir)?;
        let ids = segment_ids(dir)?;
        let stored = cursor::load(dir)?;
        let mut cursor = stored.unwrap_or(Pos {
            seg: ids.first().copied().unwrap_or(0),
            off: START,
        });
        let mut spool = Spool {
            dir: dir.to_owned(),
            limits,
            _lock: lock,
            segments: VecDeque::new(),
            writer: None,
            cursor,
            depth: 0,
            bytes: 0,
            peeked: VecDeque::new(),
        };
        let newest = ids.last().copied();
        for id in ids {
            if id < cursor.seg {
                // Acknowledged; its deletion was cut short.
                spool.remove_segment(id)?;
                continue;
            }
            let Some(scan) = spool.recover(id, Some(id) == newest)? else {
                continue;
            };
            let ends = &scan.ends;
            if id == cursor.seg {
                // The cursor is a record boundary (a record's end, or a
                // hole's); were it not, the boundary before it redelivers
                // rather than loses or misreads.
                let starts = ends.iter().chain(scan.holes.iter().map(|h| &h.1));
                let at = starts.copied().filter(|e| *e <= cursor.off).max().unwrap_or(START);
                if at != cursor.off {
                    tracing::error!(
                        segment = id,
                        cursor = cursor.off,
                        at,
                        "audit spool cursor is not at a record; delivering from the record before it"
                    );
                    cursor.off = at;
                }
            }
            let from = if id == cursor.seg { cursor.off } else { START };
            spool.depth += ends.iter().filter(|e| **e > from).count() as u64;
            spool.bytes += scan.bytes_after(from);
            spool.segments.push_back(Segment {
                id,
                len: scan.valid,
                holes: scan.holes,
            });
        }
        spool.cursor = cursor;
        if let Some(last) = spool.segments.back() {
            let path = segment_path(dir, last.id);
            spool.writer = Some(OpenOptions::new().append(true).open(path)?);
        }
        let settled = spool.settled(cursor);
        if Some(settled) != stored {
            cursor::store(dir, settled)?;
        }
        spool.cursor = settled;
        spool.drop_acknowledged()?;
        spool.offer_refused_again();
        Ok(spool)
    }

    /// Reads segment `id` through and cuts off what is not whole records;
    /// `None` when the segment was only begun (removed).
    fn recover(&mut self, id: u64, newest: bool) -> io::Result<Option<frame::Scan>> {
        let path = segment_path(&self.dir, id);
        let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
        let len = file.metadata()?.len();
        let mut head = [0u8; HEADER.len()];
        if len < START {
            if newest {
                // Created, and the crash came before its first write was synced.
                self.remove_segment(id)?;
                return Ok(None);
            }
            return Err(invalid(format!("{}: not an audit spool segment", path.display())));
        }
        file.read_exact(&mut head)?;
        if newest && head == [0; HEADER.len()] {
            // Its size reached the disk but not its first write: only begun.
            self.remove_segment(id)?;
            return Ok(None);
        }
        if &head != HEADER {
            return Err(invalid(format!("{}: not an audit spool segment", path.display())));
        }
        let scan = frame::scan(&file, len)?;
        for &(start, end) in &scan.holes {
            // Named by where it was, so a later start keeps the one copy.
            let aside = self.dir.join(format!("{id:020}.{start}{DAMAGED}"));
            tracing::error!(segment = %path.display(), at = start, bytes = end - start, kept = %aside.display(), "audit spool: a damaged record set aside; the records after it are delivered");
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&aside) {
                Ok(mut out) => {
                    file.seek(SeekFrom::Start(start))?;
                    io::copy(&mut (&mut file).take(end - start), &mut out)?;
                    out.sync_all()?;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(why) = scan.bad {
            let cut = len - scan.valid;
            // Set aside, never deleted: at the end of the newest segment it
            // is most likely a write the crash tore (`append` never returned
            // for it), but damage there looks the same.
            let aside = self.dir.join(format!("{id:020}{DAMAGED}"));
            if newest {
                tracing::warn!(segment = %path.display(), bytes = cut, why, kept = %aside.display(), "audit spool: a torn last write (or damage) set aside");
            } else {
                tracing::error!(segment = %path.display(), bytes = cut, why, kept = %aside.display(), "audit spool: damaged records set aside");
            }
            // Appended: what an earlier start set aside from this segment stays.
            let mut out = OpenOptions::new().append(true).create(true).mode(0o600).open(&aside)?;
            file.seek(SeekFrom::Start(scan.valid))?;
            io::copy(&mut (&mut file).take(cut), &mut out)?;
            out.sync_all()?;
            file.set_len(scan.valid)?;
            file.sync_all()?;
        }
        Ok(Some(scan))
    }

    /// Events not yet acknowledged.
    pub fn depth(&self) -> u64 {
        self.depth
    }

    /// Bytes on disk of the events not yet acknowledged (what `Limits::max_bytes` bounds).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether `append` would refuse a batch now.
    pub fn is_full(&self) -> bool {
        self.depth > 0 && self.bytes >= self.limits.max_bytes
    }

    /// Appends `events` durably (one write, one sync): when this returns
    /// `Ok`, a crash loses none of them. A batch that would take the spool
    /// past `max_bytes` is refused whole with `ErrorKind::StorageFull`
    /// (nothing written), unless the spool is empty.
    pub fn append(&mut self, events: &[AuditEvent]) -> io::Result<()> {
        self.append_within(events, true)
    }

    /// `append`, past the bound when `bounded` is false.
    fn append_within(&mut self, events: &[AuditEvent], bounded: bool) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(events.len() * 512);
        for e in events {
            frame::encode(e, &mut buf)?;
        }
        let size = buf.len() as u64;
        if bounded && self.depth > 0 && self.bytes + size > self.limits.max_bytes {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "audit spool is full"));
        }
        let current = self.segments.back().filter(|s| s.len < self.limits.segment_bytes);
        match (current.map(|s| s.len), self.writer.as_mut()) {
            (Some(len), Some(file)) => {
                if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_data()) {
                    // Never leave a partial batch where the next one would follow it.
                    if file.set_len(len).and_then(|()| file.sync_data()).is_err() {
                        self.writer = None;
                    }
                    return Err(e);
                }
                if let Some(s) = self.segments.back_mut() {
                    s.len += size;
                }
            }
            _ => self.start_segment(&buf)?,
        }
        self.depth += events.len() as u64;
        self.bytes += size;
        Ok(())
    }

    /// Starts a new segment holding `records`, and lets go of the old ones
    /// when everything in them was acknowledged.
    fn start_segment(&mut self, records: &[u8]) -> io::Result<()> {
        let last = self.segments.back().map_or(0, |s| s.id);
        let id = last.max(self.cursor.seg) + 1;
        let path = segment_path(&self.dir, id);
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let mut buf = Vec::with_capacity(HEADER.len() + records.len());
        buf.extend_from_slice(HEADER);
        buf.extend_from_slice(records);
        if let Err(e) = file
            .write_all(&buf)
            .and_then(|()| file.sync_all())
            .and_then(|()| sync_dir(&self.dir))
        {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.segments.push_back(Segment {
            id,
            len: buf.len() as u64,
            holes: Vec::new(),
        });
        self.writer = Some(file);
        let settled = self.settled(self.cursor);
        if settled != self.cursor {
            // The cursor's segment was finished and fully acknowledged; an
            // error here leaves it for later (the cursor on disk is still valid).
            if cursor::store(&self.dir, settled).is_ok() {
                self.cursor = settled;
                let _ = self.drop_acknowledged();
            }
        }
        Ok(())
    }

    /// The oldest unacknowledged events, in order, without removing them:
    /// at most `max_events`, and no more than `max_bytes` of them (as JSON)
    /// unless the first alone is larger. `ack` then takes them off.
    pub fn peek(&mut self, max_events: usize, max_bytes: usize) -> io::Result<Vec<AuditEvent>> {
        self.peeked.clear();
        let mut out = Vec::new();
        let mut taken = 0usize;
        for seg in &self.segments {
            let from = if seg.id == self.cursor.seg {
                self.cursor.off
            } else {
                START
            };
            if from >= seg.len {
                continue;
            }
            let path = segment_path(&self.dir, seg.id);
            let mut file = File::open(&path)?;
            file.seek(SeekFrom::Start(from))?;
            let mut r = BufReader::with_capacity(64 << 10, file);
            let mut at = from;
            while out.len() < max_events {
                if let Some(&(_, end)) = seg.holes.iter().find(|h| h.0 == at) {
                    // Set aside at open.
                    at = end;
                    r.seek(SeekFrom::Start(at))?;
                }
                match frame::read(&mut r, at, seg.len)? {
                    Next::Record(payload, size) => {
                        if !out.is_empty() && taken + payload.len() > max_bytes {
                            return Ok(out);
                        }
                        taken += payload.len();
                        out.push(frame::decode(&payload)?);
                        at += size;
                        self.peeked.push_back((Pos { seg: seg.id, off: at }, size));
                    }
                    Next::End => break,
                    Next::Bad(why) => {
                        // Bytes that were whole when written: damage since. The
                        // next open sets them aside; until then delivery stops here.
                        return Err(invalid(format!("{} at {at}: {why}", path.display())));
                    }
                }
            }
            if out.len() >= max_events {
                break;
            }
        }
        Ok(out)
    }

    /// Acknowledges the first `n` events the last `peek` returned: the
    /// cursor moves past them (durably) and segments left behind are deleted.
    pub fn ack(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let Some(&(end, _)) = self.peeked.get(n - 1) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("ack of {n} events, but {} were peeked", self.peeked.len()),
            ));
        };
        let next = self.settled(end);
        cursor::store(&self.dir, next)?;
        let freed: u64 = self.peeked.drain(..n).map(|(_, size)| size).sum();
        self.cursor = next;
        self.depth -= n as u64;
        self.bytes -= freed;
        self.drop_acknowledged()
    }

    /// `pos`, moved past the ends of segments that are finished, so the
    /// cursor names the segment its next record is in.
    fn settled(&self, mut pos: Pos) -> Pos {
        let count = self.segments.len();
        for (i, seg) in self.segments.iter().enumerate() {
            if seg.id < pos.seg {
                continue;
            }
            if seg.id > pos.seg {
                // The cursor's segment was finished, or is gone: this one is next.
                pos = Pos {
                    seg: seg.id,
                    off: START,
                };
            }
            if pos.off < seg.len || i + 1 == count {
                break;
            }
        }
        pos
    }

    /// Deletes the segments before the cursor's.
    fn drop_acknowledged(&mut self) -> io::Result<()> {
        while let Some(seg) = self.segments.front() {
            if seg.id >= self.cursor.seg {
                break;
            }
            let id = seg.id;
            self.segments.pop_front();
            self.remove_segment(id)?;
        }
        Ok(())
    }

    fn remove_segment(&self, id: u64) -> io::Result<()> {
        match std::fs::remove_file(segment_path(&self.dir, id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
