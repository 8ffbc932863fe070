//! The spool's segment files: an 8-byte header naming the format, then
//! records, each `len (u32, big-endian) | check (8 bytes) | payload` where
//! the payload is one `AuditEvent` as JSON and `check` is the first 8 bytes
//! of SHA-256 over `len` and the payload. A record cut short by a crash, or
//! bytes that are not a record, fail the length or the check: they are
//! never read as an event.

use std::io::{self, Read};

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

/// A segment read through: where each record ends, how far the records are
/// whole, and what stopped the reading early, if anything.
pub(super) struct Scan {
    /// End offset of each whole record, in order.
    pub ends: Vec<u64>,
    /// End of the last whole record (`START` when there is none).
    pub valid: u64,
    /// Why the bytes after `valid` are not records.
    pub bad: Option<&'static str>,
}

/// Reads every record of a segment of `len` bytes whose header was checked
/// (`r` positioned at `START`).
pub(super) fn scan(r: &mut impl Read, len: u64) -> io::Result<Scan> {
    let mut scan = Scan {
        ends: Vec::new(),
        valid: START,
        bad: None,
    };
    loop {
        match read(r, scan.valid, len)? {
            Next::Record(_, size) => {
                scan.valid += size;
                scan.ends.push(scan.valid);
            }
            Next::End => return Ok(scan),
            Next::Bad(why) => {
                scan.bad = Some(why);
                return Ok(scan);
            }
        }
    }
}
