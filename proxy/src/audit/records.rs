//! The messages a session's statements are made of, as they travel from the
//! relay to the audit thread: the relay copies the few messages the
//! statement tracker reads into one byte buffer per burst, and the audit
//! thread runs the tracker over them. Copying bytes is all the relay does
//! per statement; making statements out of them (and the allocations that
//! takes) happens off the relay path, on the thread that also frees them.
//!
//! A record: flags (bit 0: from the server, bit 1: a text digest follows,
//! bit 2: a chunk), tag, time (u64 nanoseconds since the session's
//! `since`), the body's whole length (u32), the kept body's length (u32),
//! the digest if any (the text's length as u64 and its SHA-256), then the
//! kept body. Little-endian. A chunk record holds a few whole messages as
//! they were relayed (its tag is 0): a small chunk is copied at once, and
//! the audit thread picks out the messages it reads.

use std::sync::{Arc, Mutex};

use portcullis_protocol::pg::capture::{Keep, Message, TextDigest};

const SERVER: u8 = 1;
const DIGEST: u8 = 2;
const CHUNK: u8 = 4;
/// Bytes of a record before its body.
pub(crate) const HEADER: usize = 1 + 1 + 8 + 4 + 4;

/// What the tracker reads of the client's messages; the rest is not recorded.
pub fn client_keep(tag: u8) -> Keep {
    match tag {
        b'Q' => Keep::Text(0),
        b'P' => Keep::Text(1),
        // Describe too: the server's ParameterDescription that answers it
        // gives the types of a statement's binary values.
        b'B' | b'E' | b'C' | b'F' | b'D' => Keep::Body,
        b'S' | b'd' | b'c' | b'f' => Keep::Length,
        _ => Keep::Skip,
    }
}

/// What the tracker reads of the server's messages: never DataRow above
/// all, the bulk of any result.
pub fn server_keep(tag: u8) -> Keep {
    match tag {
        // ReadyForQuery's one byte says whether a transaction block is
        // open: the portals of one that ended are gone.
        b'C' | b'E' | b't' | b'Z' => Keep::Body,
        b'I' | b's' | b'1' | b'2' | b'3' | b'T' | b'n' | b'G' | b'H' | b'W' | b'd' => Keep::Length,
        _ => Keep::Skip,
    }
}

/// What the tracker reads of one direction's messages.
pub fn keep(from_server: bool) -> fn(u8) -> Keep {
    if from_server { server_keep } else { client_keep }
}

/// Appends `m`, seen `at` nanoseconds into the session, to `out`.
pub fn push(out: &mut Vec<u8>, from_server: bool, at: u64, m: &Message<'_>) {
    let flags = if from_server { SERVER } else { 0 } | if m.text.is_some() { DIGEST } else { 0 };
    // The header is put together on the stack and copied once: the relay
    // records a few messages per statement.
    let mut head = [0u8; HEADER];
    head[0] = flags;
    head[1] = m.tag;
    head[2..10].copy_from_slice(&at.to_le_bytes());
    head[10..14].copy_from_slice(&u32::try_from(m.len).unwrap_or(u32::MAX).to_le_bytes());
    head[14..18].copy_from_slice(&u32::try_from(m.body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.reserve(HEADER + m.body.len() + if m.text.is_some() { 40 } else { 0 });
    out.extend_from_slice(&head);
    if let Some(d) = &m.text {
        out.extend_from_slice(&(d.len as u64).to_le_bytes());
        out.extend_from_slice(&d.sha256);
    }
    out.extend_from_slice(m.body);
}

/// Appends `chunk`, whole messages relayed `at` nanoseconds into the
/// session, to `out` as they are; `each` reads out those the tracker reads.
pub fn push_chunk(out: &mut Vec<u8>, from_server: bool, at: u64, chunk: &[u8]) {
    let mut head = [0u8; HEADER];
    head[0] = if from_server { SERVER } else { 0 } | CHUNK;
    head[2..10].copy_from_slice(&at.to_le_bytes());
    let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX).to_le_bytes();
    head[10..14].copy_from_slice(&len);
    head[14..18].copy_from_slice(&len);
    out.reserve(HEADER + chunk.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(chunk);
}

/// Each message of `records` in order: whether it came from the server, its
/// time in nanoseconds, and the message. Stops at a record cut short (never
/// written so by `push`).
pub fn each(mut records: &[u8], mut on: impl FnMut(bool, u64, &Message<'_>)) {
    while let Some((record, chunk, rest)) = next(records) {
        let (from_server, at, m) = record;
        if chunk {
            each_kept(m.body, keep(from_server), |m| on(from_server, at, m));
        } else {
            on(from_server, at, &m);
        }
        records = rest;
    }
}

/// Each message of `chunk`, whole messages only, that `keep` reads, as
/// `Capture` would pass it on (a chunk is far below `MAX_BODY`). Simpler
/// than `Capture`, which must follow messages cut anywhere.
fn each_kept(mut chunk: &[u8], keep: fn(u8) -> Keep, mut on: impl FnMut(&Message<'_>)) {
    while let Some(&[tag, a, b, c, d]) = chunk.get(..5) {
        let Some(len) = (u32::from_be_bytes([a, b, c, d]) as usize).checked_sub(4) else {
            return;
        };
        let Some(body) = chunk.get(5..5 + len) else {
            return;
        };
        match keep(tag) {
            Keep::Skip => {}
            Keep::Length => on(&Message {
                tag,
                body: &[],
                len,
                text: None,
            }),
            Keep::Body | Keep::Text(_) => on(&Message::whole(tag, body)),
        }
        chunk = &chunk[5 + len..];
    }
}

type Record<'a> = (bool, u64, Message<'a>);

/// The next record, whether it is a chunk, and what follows it.
fn next(b: &[u8]) -> Option<(Record<'_>, bool, &[u8])> {
    let head = b.get(..HEADER)?;
    let flags = head[0];
    let tag = head[1];
    let at = u64::from_le_bytes(head[2..10].try_into().ok()?);
    let len = u32::from_le_bytes(head[10..14].try_into().ok()?) as usize;
    let kept = u32::from_le_bytes(head[14..18].try_into().ok()?) as usize;
    let mut rest = &b[HEADER..];
    let text = if flags & DIGEST != 0 {
        let d = rest.get(..40)?;
        rest = &rest[40..];
        Some(TextDigest {
            len: usize::try_from(u64::from_le_bytes(d[..8].try_into().ok()?)).ok()?,
            sha256: d[8..].try_into().ok()?,
        })
    } else {
        None
    };
    let body = rest.get(..kept)?;
    let m = Message { tag, body, len, text };
    Some(((flags & SERVER != 0, at, m), flags & CHUNK != 0, &rest[kept..]))
}

/// What a new buffer holds at first: a few statements' messages.
const START: usize = 512;
/// Buffers kept for reuse; more are freed.
const KEEP: usize = 256;
/// Larger buffers (a burst of long statements) are freed, not kept.
const LARGEST: usize = 4 * 1024;

/// Record buffers on their way back from the audit thread to the relays: a
/// burst's buffer is reused, instead of allocated on the relay and freed on
/// the audit thread for every burst (a free from another thread costs the
/// allocator more than the copying the buffer held).
#[derive(Clone, Default)]
pub struct Spare(Arc<Mutex<Vec<Vec<u8>>>>);

impl Spare {
    /// An empty buffer, reused when one is spare.
    pub fn get(&self) -> Vec<u8> {
        self.0
            .lock()
            .ok()
            .and_then(|mut spare| spare.pop())
            .unwrap_or_else(|| Vec::with_capacity(START))
    }

    /// Keeps `buf` for reuse, unless it grew large or enough are kept.
    pub fn put(&self, mut buf: Vec<u8>) {
        if buf.capacity() > LARGEST {
            return;
        }
        buf.clear();
        if let Ok(mut spare) = self.0.lock()
            && spare.len() < KEEP
        {
            spare.push(buf);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use portcullis_protocol::pg::capture::Capture;

    use super::*;

    #[test]
    fn records_read_back_as_they_were_written() {
        let digest = TextDigest {
            len: 300_000,
            sha256: [7; 32],
        };
        let mut out = Vec::new();
        push(&mut out, false, 5, &Message::whole(b'Q', b"SELECT 1\0"));
        let cut = Message {
            tag: b'P',
            body: b"\0SELECT",
            len: 300_010,
            text: Some(digest),
        };
        push(&mut out, false, 6, &cut);
        push(&mut out, true, u64::MAX, &Message::whole(b'Z', b"I"));
        let mut seen = Vec::new();
        each(&out, |server, at, m| {
            seen.push((server, at, m.tag, m.body.to_vec(), m.len, m.text));
        });
        assert_eq!(
            seen,
            [
                (false, 5, b'Q', b"SELECT 1\0".to_vec(), 9, None),
                (false, 6, b'P', b"\0SELECT".to_vec(), 300_010, Some(digest)),
                (true, u64::MAX, b'Z', b"I".to_vec(), 1, None),
            ]
        );
        let mut count = 0;
        each(&out[..out.len() - 1], |_, _, _| count += 1);
        assert_eq!(count, 2, "a record cut short is not read");
    }

    /// A message as it travels: tag, length, body.
    pub(crate) fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend(u32::try_from(body.len() + 4).unwrap_or(u32::MAX).to_be_bytes());
        m.extend(body);
        m
    }

    type Seen = (bool, u64, u8, Vec<u8>, usize);

    fn read(records: &[u8]) -> Vec<Seen> {
        let mut seen = Vec::new();
        each(records, |server, at, m| {
            seen.push((server, at, m.tag, m.body.to_vec(), m.len))
        });
        seen
    }

    #[test]
    fn a_chunk_reads_back_as_the_messages_the_tracker_reads() {
        let mut answer = message(b'2', b"");
        answer.extend(message(b'D', b"\0\x01\0\0\0\x011"));
        answer.extend(message(b'C', b"SELECT 1\0"));
        answer.extend(message(b'Z', b"I"));
        let mut ask = message(b'P', b"s1\0SELECT 1\0\0\0");
        ask.extend(message(b'B', b"\0s1\0\0\0\0\0\0\0"));
        ask.extend(message(b'E', b"\0\0\0\0\0"));
        ask.extend(message(b'S', b""));
        ask.extend(message(b'X', b""));

        let mut chunks = Vec::new();
        push_chunk(&mut chunks, false, 1, &ask);
        push_chunk(&mut chunks, true, 2, &answer);
        let mut kept = Vec::new();
        for (server, at, bytes) in [(false, 1, &ask), (true, 2, &answer)] {
            Capture::new()
                .feed(bytes, keep(server), |m| push(&mut kept, server, at, &m))
                .expect("framed");
        }
        let seen = read(&chunks);
        assert_eq!(seen, read(&kept), "a chunk reads as its messages recorded one by one");
        let tags: Vec<u8> = seen.iter().map(|s| s.2).collect();
        assert_eq!(tags, b"PBES2CZ", "DataRow and Terminate are not passed on");
    }

    #[test]
    fn data_rows_notices_and_terminate_are_not_recorded() {
        for tag in [b'D', b'N', b'S', b'A'] {
            assert_eq!(server_keep(tag), Keep::Skip, "{}", char::from(tag));
        }
        for tag in [b'X', b'p', b'H'] {
            assert_eq!(client_keep(tag), Keep::Skip, "{}", char::from(tag));
        }
        assert_eq!((server_keep(b'Z'), client_keep(b'S')), (Keep::Body, Keep::Length));
    }

    #[test]
    fn spare_buffers_come_back_empty_and_large_ones_are_let_go() {
        let spare = Spare::default();
        let mut used = spare.get();
        used.extend_from_slice(b"records");
        let at = used.as_ptr();
        spare.put(used);
        let again = spare.get();
        assert_eq!((again.as_ptr(), again.len()), (at, 0), "the same buffer, emptied");
        spare.put(Vec::with_capacity(LARGEST + 1));
        assert_eq!(
            spare.0.lock().map(|s| s.len()).ok(),
            Some(0),
            "a large buffer is not kept"
        );
        for _ in 0..KEEP + 10 {
            spare.put(Vec::with_capacity(START));
        }
        assert_eq!(spare.0.lock().map(|s| s.len()).ok(), Some(KEEP));
    }
}
