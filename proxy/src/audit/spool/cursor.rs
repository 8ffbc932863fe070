//! The spool's cursor: where the first unacknowledged record starts
//! (segment and offset), in a 32-byte file `cursor` (a format tag, the two
//! numbers, a checksum) replaced atomically: written to `cursor.tmp`,
//! synced, renamed over `cursor`, and the directory synced.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// The cursor's file name in the spool directory.
const FILE: &str = "cursor";
/// Where it is written before the rename.
const TEMP: &str = "cursor.tmp";
const TAG: &[u8; 8] = b"pccursr1";

/// A place in the spool: a segment and a byte offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Pos {
    /// Segment id.
    pub seg: u64,
    /// Byte offset in the segment.
    pub off: u64,
}

fn encode(pos: Pos) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(TAG);
    out[8..16].copy_from_slice(&pos.seg.to_be_bytes());
    out[16..24].copy_from_slice(&pos.off.to_be_bytes());
    let digest = Sha256::digest(&out[..24]);
    out[24..].copy_from_slice(&digest[..8]);
    out
}

fn decode(bytes: &[u8]) -> Option<Pos> {
    let bytes: &[u8; 32] = bytes.try_into().ok()?;
    if &bytes[..8] != TAG || Sha256::digest(&bytes[..24])[..8] != bytes[24..] {
        return None;
    }
    let mut seg = [0u8; 8];
    let mut off = [0u8; 8];
    seg.copy_from_slice(&bytes[8..16]);
    off.copy_from_slice(&bytes[16..24]);
    Some(Pos {
        seg: u64::from_be_bytes(seg),
        off: u64::from_be_bytes(off),
    })
}

/// The cursor in `dir`; `None` when there is none, or it is unreadable (then
/// the spool starts over from its oldest record: at least once, never lost).
pub(super) fn load(dir: &Path) -> io::Result<Option<Pos>> {
    let _ = std::fs::remove_file(dir.join(TEMP));
    match std::fs::read(dir.join(FILE)) {
        Ok(bytes) => {
            let pos = decode(&bytes);
            if pos.is_none() {
                tracing::error!(dir = %dir.display(), "audit spool cursor is damaged; delivering the spool from its start");
            }
            Ok(pos)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces the cursor in `dir` with `pos`, durably.
pub(super) fn store(dir: &Path, pos: Pos) -> io::Result<()> {
    let temp = dir.join(TEMP);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(&encode(pos))?;
    file.sync_all()?;
    std::fs::rename(&temp, dir.join(FILE))?;
    sync_dir(dir)
}

/// Makes `dir`'s entries (a rename, a new or removed file) durable.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_damage_is_noticed() {
        let pos = Pos { seg: 7, off: 1234 };
        let bytes = encode(pos);
        assert_eq!(decode(&bytes), Some(pos));
        for i in 0..bytes.len() {
            let mut bad = bytes;
            bad[i] ^= 0x01;
            assert_eq!(decode(&bad), None, "byte {i}");
        }
        assert_eq!(decode(&bytes[..31]), None);
    }
}
