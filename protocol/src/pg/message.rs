//! Framing of regular messages: a type byte, a big-endian i32 length that
//! counts itself, then the body.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::error::ProtocolError;

/// One whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Type byte, e.g. `b'Q'`.
    pub tag: u8,
    /// Body, without type byte and length.
    pub body: Bytes,
}

/// Takes one whole message off the front of `buf`; `Ok(None)` when more bytes
/// are needed. A declared length over `max` is refused before it is buffered.
pub fn parse_message(buf: &mut BytesMut, max: usize) -> Result<Option<Message>, ProtocolError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let tag = buf[0];
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(ProtocolError::BadLength {
            tag,
            len: i64::from(len),
        });
    }
    let len = len as usize;
    if len > max {
        return Err(ProtocolError::MessageTooLarge { tag, len, max });
    }
    if buf.len() < 1 + len {
        buf.reserve(1 + len - buf.len());
        return Ok(None);
    }
    buf.advance(5);
    let body = buf.split_to(len - 4).freeze();
    Ok(Some(Message { tag, body }))
}

/// Appends `tag`, length and `body` to `out`.
pub fn encode(tag: u8, body: &[u8], out: &mut BytesMut) {
    out.reserve(5 + body.len());
    out.put_u8(tag);
    out.put_u32((body.len() + 4) as u32);
    out.put_slice(body);
}

/// Reads a NUL-terminated string from the front of `body`.
pub(crate) fn read_cstr<'a>(body: &mut &'a [u8], what: &'static str) -> Result<&'a str, ProtocolError> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(ProtocolError::Malformed { what })?;
    let s = std::str::from_utf8(&body[..end]).map_err(|_| ProtocolError::Malformed { what })?;
    *body = &body[end + 1..];
    Ok(s)
}

/// Reads a big-endian i32 from the front of `body`.
pub(crate) fn read_i32(body: &mut &[u8], what: &'static str) -> Result<i32, ProtocolError> {
    if body.len() < 4 {
        return Err(ProtocolError::Malformed { what });
    }
    let v = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    *body = &body[4..];
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads() {
        let mut whole = BytesMut::new();
        encode(b'Q', b"select 1\0", &mut whole);
        encode(b'X', b"", &mut whole);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&whole[..7]);
        assert_eq!(parse_message(&mut buf, 1024), Ok(None));
        buf.extend_from_slice(&whole[7..]);
        let m = parse_message(&mut buf, 1024).expect("ok").expect("whole");
        assert_eq!((m.tag, &m.body[..]), (b'Q', &b"select 1\0"[..]));
        let m = parse_message(&mut buf, 1024).expect("ok").expect("whole");
        assert_eq!((m.tag, m.body.len()), (b'X', 0));
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_bad_and_huge_lengths() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
        assert_eq!(
            parse_message(&mut buf, 1024),
            Err(ProtocolError::BadLength { tag: b'Q', len: 3 })
        );
        let mut buf = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            parse_message(&mut buf, 1024),
            Err(ProtocolError::MessageTooLarge { .. })
        ));
        let mut buf = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            parse_message(&mut buf, 1024),
            Err(ProtocolError::BadLength { len: -1, .. })
        ));
    }
}
