//! The spool's segment files: an 8-byte header naming the format, then
//! records, each `len (u32, big-endian) | check (8 bytes) | payload` where
//! the payload is one `AuditEvent` as JSON and `check` is the first 8 bytes
//! of SHA-256 over `len` and the payload. A record cut short by a crash, or
//! bytes that are not a record, fail the length or the check: they are
//! never read as an event.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use portcullis_protocol::audit::AuditEvent;
use sha2::{Digest, Sha256};

/// First bytes of every segment: the format, so a later one cannot be misread.
pub(super) const HEADER: &[u8; 8] = b"pcspool1";
/// Where a segment's first record starts.
pub(super) const START: u64 = HEADER.len() as u64;
/// Bytes before each record's payload.
const FRAME: usize = 12;

/// What reading at a position found.
pub(super) enum Next {
    /// A whole record: its payload, and the bytes it took with its frame.
    Record(Vec<u8>, u64),
    /// The end of the valid bytes.
    End,
    /// Bytes that are not a whole record (a torn write, or damage).
    Bad(&'static str),
}

fn check(len: &[u8; 4], payload: &[u8]) -> [u8; 8] {
    let mut h = Sha256::new();
    h.update(len);
    h.update(payload);
    let digest = h.finalize();
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

/// Appends `event` as one record to `out`; the bytes it took.
pub(super) fn encode(event: &AuditEvent, out: &mut Vec<u8>) -> io::Result<u64> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    serde_json::to_writer(&mut *out, event).map_err(io::Error::other)?;
    let Ok(len) = u32::try_from(out.len() - start - FRAME) else {
        out.truncate(start);
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("audit event {} is too large to spool", event.id),
        ));
    };
    let len = len.to_be_bytes();
    let sum = check(&len, &out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&len);
    out[start + 4..start + FRAME].copy_from_slice(&sum);
    Ok((out.len() - start) as u64)
}

/// Reads the record at `at` from `r` (positioned there), where the valid
/// bytes end at `end`. Lengths are checked against `end` before anything
/// is allocated.
pub(super) fn read(r: &mut impl Read, at: u64, end: u64) -> io::Result<Next> {
    if at >= end {
        return Ok(Next::End);
    }
    let room = end - at;
    if room < FRAME as u64 {
        return Ok(Next::Bad("a record header cut short"));
    }
    let mut head = [0u8; FRAME];
    r.read_exact(&mut head)?;
    let mut len = [0u8; 4];
    len.copy_from_slice(&head[..4]);
    let size = u64::from(u32::from_be_bytes(len));
    if size > room - FRAME as u64 {
        return Ok(Next::Bad("a record cut short"));
    }
    let mut payload = vec![0u8; usize::try_from(size).map_err(io::Error::other)?];
    r.read_exact(&mut payload)?;
    if check(&len, &payload)[..] != head[4..] {
        return Ok(Next::Bad("a record whose checksum does not match"));
    }
    Ok(Next::Record(payload, FRAME as u64 + size))
}

/// The event in a record's payload.
pub(super) fn decode(payload: &[u8]) -> io::Result<AuditEvent> {
    serde_json::from_slice(payload).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A segment read through: where each record ends, which stretches of it
/// are not records, and how far it holds records at all.
pub(super) struct Scan {
    /// End offset of each whole record, in order.
    pub ends: Vec<u64>,
    /// Damaged stretches (`start..end`) with whole records after them.
    pub holes: Vec<(u64, u64)>,
    /// End of the last whole record (`START` when there is none).
    pub valid: u64,
    /// Why the bytes after `valid` are not records, if any are left.
    pub bad: Option<&'static str>,
}

impl Scan {
    /// Bytes of the records after `from` (a record boundary).
    pub fn bytes_after(&self, from: u64) -> u64 {
        let holes: u64 = self.holes.iter().filter(|h| h.0 >= from).map(|h| h.1 - h.0).sum();
        self.valid.saturating_sub(from) - holes
    }
}

/// Reads every record of `file`, `len` bytes whose header was checked.
/// Damage inside is stepped over: reading goes on at the next place where a
/// whole record starts (its length fits and its checksum matches, a chance
/// of 2^-64 for bytes that are not one), so one bad record never costs the
/// records after it.
pub(super) fn scan(file: &File, len: u64) -> io::Result<Scan> {
    let mut scan = Scan {
        ends: Vec::new(),
        holes: Vec::new(),
        valid: START,
        bad: None,
    };
    let mut at = START;
    let mut r = BufReader::with_capacity(64 << 10, file);
    r.seek(SeekFrom::Start(at))?;
    loop {
        match read(&mut r, at, len)? {
            Next::Record(_, size) => {
                at += size;
                scan.ends.push(at);
                scan.valid = at;
            }
            Next::End => return Ok(scan),
            Next::Bad(why) => match next_record(file, at + 1, len)? {
                Some(next) => {
                    scan.holes.push((at, next));
                    at = next;
                    r.seek(SeekFrom::Start(at))?;
                }
                None => {
                    scan.bad = Some(why);
                    return Ok(scan);
                }
            },
        }
    }
}

/// The first offset at or after `from` where a whole record starts.
/// Payloads are JSON, whose bytes are never zero, and a length that fits a
/// segment begins with a zero byte: only a record's own frame passes the
/// cheap test, so the checksum is computed almost only where one is.
fn next_record(file: &File, from: u64, end: u64) -> io::Result<Option<u64>> {
    const WINDOW: usize = 1 << 20;
    let mut buf = vec![0u8; WINDOW + FRAME];
    let mut base = from;
    while base + FRAME as u64 <= end {
        let want = usize::try_from((end - base).min(buf.len() as u64)).map_err(io::Error::other)?;
        file.read_exact_at(&mut buf[..want], base)?;
        let last = want.saturating_sub(FRAME);
        for i in 0..=last {
            let room = end - (base + i as u64) - FRAME as u64;
            let head = &buf[i..i + FRAME];
            let size = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
            if size == 0 || size > room {
                continue;
            }
            // A payload is a JSON object: look at its first byte before reading it whole.
            let at = base + (i + FRAME) as u64;
            let mut first = [0u8];
            file.read_exact_at(&mut first, at)?;
            if first != *b"{" {
                continue;
            }
            let mut payload = vec![0u8; usize::try_from(size).map_err(io::Error::other)?];
            file.read_exact_at(&mut payload, at)?;
            if payload.first() == Some(&b'{') && check(&[head[0], head[1], head[2], head[3]], &payload)[..] == head[4..]
            {
                return Ok(Some(base + i as u64));
            }
        }
        base += last as u64 + 1;
    }
    Ok(None)
}
