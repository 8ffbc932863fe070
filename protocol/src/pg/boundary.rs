//! Follows message boundaries in a relayed byte stream without buffering it,
//! so the proxy can slip its own message (a warning, the final FATAL) in
//! between two of the server's, never inside one.

use super::error::ProtocolError;

/// Where the stream stands relative to message boundaries.
#[derive(Debug, Clone, Default)]
pub struct Boundary {
    /// Header bytes of the current message seen so far (0..5).
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to come, once its header is whole.
    remaining: usize,
}

impl Boundary {
    /// At the start of a stream, i.e. at a boundary.
    pub fn new() -> Boundary {
        Boundary::default()
    }

    /// Whether the bytes seen so far end exactly at a message end.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0
    }

    /// Feeds the next chunk; answers the offset just past the last message
    /// that ended inside it, if any did.
    pub fn advance(&mut self, chunk: &[u8]) -> Result<Option<usize>, ProtocolError> {
        self.advance_with(chunk, |_, _| {})
    }

    /// As [`Boundary::advance`], and calls `on_header(tag, pos)` for each
    /// message whose header completes in `chunk`, `pos` being the offset just
    /// past that header (so the header began at `pos - 5`, possibly in an
    /// earlier chunk).
    #[inline]
    pub fn advance_with(
        &mut self,
        chunk: &[u8],
        mut on_header: impl FnMut(u8, usize),
    ) -> Result<Option<usize>, ProtocolError> {
        let mut pos = 0;
        let mut last_end = None;
        while pos < chunk.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(chunk.len() - pos);
                self.remaining -= take;
                pos += take;
                if self.remaining == 0 {
                    last_end = Some(pos);
                }
                continue;
            }
            let take = (5 - self.header_len).min(chunk.len() - pos);
            self.header[self.header_len..self.header_len + take].copy_from_slice(&chunk[pos..pos + take]);
            self.header_len += take;
            pos += take;
            if self.header_len == 5 {
                let h = self.header;
                let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
                if len < 4 {
                    return Err(ProtocolError::BadLength {
                        tag: h[0],
                        len: i64::from(len),
                    });
                }
                self.header_len = 0;
                self.remaining = len as usize - 4;
                on_header(h[0], pos);
                if self.remaining == 0 {
                    last_end = Some(pos);
                }
            }
        }
        Ok(last_end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::message::encode;
    use bytes::BytesMut;

    fn stream() -> BytesMut {
        let mut b = BytesMut::new();
        encode(b'T', b"0123456789", &mut b);
        encode(b'C', b"SELECT 1\0", &mut b);
        encode(b'Z', b"I", &mut b);
        b
    }

    #[test]
    fn finds_the_last_end_in_each_chunk() {
        let s = stream();
        let mut b = Boundary::new();
        assert!(b.at_boundary());
        assert_eq!(b.advance(&s[..3]), Ok(None));
        assert!(!b.at_boundary());
        assert_eq!(b.advance(&s[3..15]), Ok(Some(12)));
        assert!(b.at_boundary());
        assert_eq!(b.advance(&s[15..]), Ok(Some(s.len() - 15)));
        assert!(b.at_boundary());
    }

    #[test]
    fn any_split_agrees_with_whole() {
        let s = stream();
        for cut in 1..s.len() {
            let mut b = Boundary::new();
            let _ = b.advance(&s[..cut]).expect("ok");
            let end = b.advance(&s[cut..]).expect("ok");
            assert_eq!(end, Some(s.len() - cut), "cut at {cut}");
            assert!(b.at_boundary());
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let s = stream();
        let mut b = Boundary::new();
        let ends: Vec<usize> = (0..s.len())
            .filter(|&i| b.advance(&s[i..i + 1]).expect("ok").is_some())
            .collect();
        assert_eq!(ends, vec![14, 28, s.len() - 1]);
    }

    #[test]
    fn reports_each_header_once_whatever_the_split() {
        let s = stream();
        for cut in 1..s.len() {
            let mut b = Boundary::new();
            let mut seen = Vec::new();
            let _ = b.advance_with(&s[..cut], |t, p| seen.push((t, p))).expect("ok");
            let _ = b.advance_with(&s[cut..], |t, p| seen.push((t, p + cut))).expect("ok");
            assert_eq!(seen, vec![(b'T', 5), (b'C', 20), (b'Z', 34)], "cut at {cut}");
        }
    }

    #[test]
    fn refuses_bad_length() {
        assert!(Boundary::new().advance(&[b'Z', 0, 0, 0, 1]).is_err());
    }
}
