//! Whole messages out of a relayed byte stream cut at arbitrary points, for
//! the statement audit. The relay forwards chunks as they come; this passes
//! on every message's tag and length, and the body only of those the caller
//! reads, reassembled when it spans chunks. A body longer than [`MAX_BODY`]
//! is passed as its first bytes and its length, and a statement text in it
//! is hashed whole as it streams by: a 100 MB query is never held.

use sha2::{Digest, Sha256};

use super::error::ProtocolError;

/// Bytes kept of one message body; longer bodies are passed cut.
pub const MAX_BODY: usize = 256 * 1024;

/// What of a message the caller reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Nothing: the message is stepped over unseen.
    Skip,
    /// Its tag and length only (CopyData, DataRow, ...).
    Length,
    /// Its body.
    Body,
    /// Its body, whose `n`-th NUL-terminated string (from 0) is a statement
    /// text: when the body is cut, that text's length and hash come along.
    Text(u8),
}

/// A statement text's length and SHA-256, for a body that was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextDigest {
    /// Bytes of the whole text.
    pub len: usize,
    /// SHA-256 of the whole text.
    pub sha256: [u8; 32],
}

/// One message, as far as it was kept.
#[derive(Debug)]
pub struct Message<'a> {
    /// The message type byte.
    pub tag: u8,
    /// The body: whole, empty for [`Keep::Length`], or its first
    /// [`MAX_BODY`] bytes when it is longer.
    pub body: &'a [u8],
    /// Length of the whole body.
    pub len: usize,
    /// For a cut body kept as [`Keep::Text`]: the whole text's digest.
    pub text: Option<TextDigest>,
}

impl Message<'_> {
    /// A message whose body is all there.
    pub fn whole(tag: u8, body: &[u8]) -> Message<'_> {
        Message {
            tag,
            body,
            len: body.len(),
            text: None,
        }
    }
}

/// Follows one direction of a stream. Idle, it holds no buffer.
#[derive(Default)]
pub struct Capture {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come.
    remaining: usize,
    /// The current message's body so far, when it spans chunks and is read.
    partial: Option<Box<Partial>>,
}

struct Partial {
    tag: u8,
    len: usize,
    body: Vec<u8>,
    text: Option<TextHasher>,
}

/// Hashes the `nth` NUL-terminated string of a body as it streams by.
struct TextHasher {
    nth: u8,
    nuls: u8,
    len: usize,
    sha: Sha256,
}

impl TextHasher {
    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.nuls <= self.nth {
            let (part, nul) = match bytes.iter().position(|&b| b == 0) {
                Some(i) => (&bytes[..i], true),
                None => (bytes, false),
            };
            if self.nuls == self.nth {
                self.sha.update(part);
                self.len += part.len();
            }
            bytes = &bytes[part.len() + usize::from(nul)..];
            self.nuls += u8::from(nul);
        }
    }
}

impl Partial {
    fn extend(&mut self, bytes: &[u8]) {
        let room = MAX_BODY.saturating_sub(self.body.len());
        self.body.extend_from_slice(&bytes[..bytes.len().min(room)]);
        if let Some(h) = self.text.as_mut() {
            h.update(bytes);
        }
    }

    fn message(&mut self) -> Message<'_> {
        Message {
            tag: self.tag,
            body: &self.body,
            len: self.len,
            text: self.text.take().map(|h| TextDigest {
                len: h.len,
                sha256: h.sha.finalize().into(),
            }),
        }
    }
}

impl Capture {
    /// A capture at the start of a stream.
    pub fn new() -> Capture {
        Capture::default()
    }

    /// Whether the bytes fed so far end exactly at a message end.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// Feeds the next chunk; `on` gets each message in order: those of
    /// [`Keep::Length`] as soon as their header is whole, those of
    /// [`Keep::Skip`] never, the others when their body ends.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        keep: impl Fn(u8) -> Keep,
        mut on: impl FnMut(Message<'_>),
    ) -> Result<(), ProtocolError> {
        let mut pos = 0;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(chunk.len() - pos);
                self.remaining -= take;
                if let Some(p) = self.partial.as_mut() {
                    p.extend(&chunk[pos..pos + take]);
                    if self.remaining == 0 {
                        on(p.message());
                        self.partial = None;
                    }
                }
                pos += take;
                continue;
            }
            let take = (5 - self.header_len).min(chunk.len() - pos);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[pos..pos + take]);
            self.header_len += take;
            pos += take;
            if self.header_len < 5 {
                continue;
            }
            self.header_len = 0;
            let tag = self.header[0];
            let declared = u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
            let len = (declared as usize).checked_sub(4).ok_or(ProtocolError::BadLength {
                tag,
                len: i64::from(declared),
            })?;
            let here = len.min(chunk.len() - pos);
            match keep(tag) {
                Keep::Skip => self.remaining = len - here,
                Keep::Length => {
                    on(Message {
                        tag,
                        body: &[],
                        len,
                        text: None,
                    });
                    self.remaining = len - here;
                }
                // Whole in this chunk: no copy.
                _ if here == len => on(Message::whole(tag, &chunk[pos..pos + len])),
                kept => {
                    let text = match kept {
                        Keep::Text(nth) if len > MAX_BODY => Some(TextHasher {
                            nth,
                            nuls: 0,
                            len: 0,
                            sha: Sha256::new(),
                        }),
                        _ => None,
                    };
                    let mut p = Box::new(Partial {
                        tag,
                        len,
                        body: Vec::with_capacity(len.min(MAX_BODY)),
                        text,
                    });
                    p.extend(&chunk[pos..pos + here]);
                    self.partial = Some(p);
                    self.remaining = len - here;
                }
            }
            pos += here;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn keep(tag: u8) -> Keep {
        match tag {
            b'Q' => Keep::Text(0),
            b'P' => Keep::Text(1),
            b'B' => Keep::Body,
            b'D' => Keep::Skip,
            _ => Keep::Length,
        }
    }

    /// (tag, body kept, whole length, digest) of each message, fed in chunks of `size`.
    fn run(stream: &[u8], size: usize) -> Vec<(u8, Vec<u8>, usize, Option<TextDigest>)> {
        let mut c = Capture::new();
        let mut got = Vec::new();
        for chunk in stream.chunks(size) {
            c.feed(chunk, keep, |m| got.push((m.tag, m.body.to_vec(), m.len, m.text)))
                .expect("well-formed");
        }
        got
    }

    #[test]
    fn every_chunking_gives_the_same_messages() {
        let mut stream = msg(b'Q', b"SELECT 1\0");
        stream.extend(msg(b'd', &[7; 300]));
        // Skipped: not passed on, and what follows is still found.
        stream.extend(msg(b'D', &[9; 200]));
        stream.extend(msg(b'P', b"s1\0SELECT $1\0\0\0"));
        stream.extend(msg(b'S', b""));
        stream.extend(msg(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x01x\0\0"));
        let whole = run(&stream, stream.len());
        assert_eq!(whole.len(), 5);
        assert_eq!(whole[0], (b'Q', b"SELECT 1\0".to_vec(), 9, None));
        assert_eq!(whole[1], (b'd', Vec::new(), 300, None));
        assert_eq!(whole[3], (b'S', Vec::new(), 0, None));
        for size in [1, 2, 3, 5, 7, 64, 301] {
            assert_eq!(run(&stream, size), whole, "chunks of {size}");
        }
    }

    #[test]
    fn a_huge_text_is_cut_with_its_length_and_hash() {
        let text = "x".repeat(MAX_BODY * 3 + 17);
        let mut body = b"big\0".to_vec();
        body.extend_from_slice(text.as_bytes());
        body.extend_from_slice(b"\0\0\0");
        let stream = msg(b'P', &body);
        // Whole in one chunk, it is passed as it is, uncopied.
        let one = run(&stream, stream.len());
        assert_eq!((one[0].1.len(), one[0].3), (body.len(), None));
        for size in [8192, 65536, MAX_BODY + 1] {
            let got = run(&stream, size);
            let (tag, kept, len, digest) = &got[0];
            assert_eq!((*tag, kept.len(), *len), (b'P', MAX_BODY, body.len()));
            assert!(kept.starts_with(b"big\0xxx"));
            let digest = digest.expect("cut text has a digest");
            assert_eq!(digest.len, text.len());
            assert_eq!(digest.sha256, <[u8; 32]>::from(Sha256::digest(text.as_bytes())));
        }
    }

    #[test]
    fn a_bad_length_is_an_error() {
        let mut c = Capture::new();
        assert!(c.feed(&[b'Q', 0, 0, 0, 3], keep, |_| {}).is_err());
    }

    #[test]
    fn idle_between_messages_it_holds_no_buffer() {
        let mut c = Capture::new();
        let stream = msg(b'B', &[1; 100]);
        c.feed(&stream[..50], keep, |_| {}).expect("ok");
        assert!(c.partial.is_some() && !c.at_boundary());
        c.feed(&stream[50..], keep, |_| {}).expect("ok");
        assert!(c.partial.is_none() && c.at_boundary());
        c.feed(&stream[..3], keep, |_| {}).expect("ok");
        assert!(!c.at_boundary(), "within a header");
    }
}
