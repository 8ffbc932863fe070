//! Frontend messages the proxy reads during login or writes itself.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::ProtocolError;
use super::message::{read_cstr, read_i32};

/// SASLInitialResponse: the chosen mechanism and the client-first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaslInitial {
    /// Mechanism name, e.g. `SCRAM-SHA-256`.
    pub mechanism: String,
    /// Client-first message.
    pub data: Bytes,
}

/// Parses the body of a SASLInitialResponse (`p` during SASL).
pub fn parse_sasl_initial(body: Bytes) -> Result<SaslInitial, ProtocolError> {
    const WHAT: &str = "SASLInitialResponse";
    let mut b = &body[..];
    let mechanism = read_cstr(&mut b, WHAT)?.to_owned();
    let len = read_i32(&mut b, WHAT)?;
    if len < 0 || len as usize != b.len() {
        return Err(ProtocolError::Malformed { what: WHAT });
    }
    let data = body.slice(body.len() - b.len()..);
    Ok(SaslInitial { mechanism, data })
}

/// A CancelRequest packet for backend `pid` with its secret key.
pub fn cancel_request(pid: i32, secret: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(12 + secret.len());
    out.put_u32((12 + secret.len()) as u32);
    out.put_u32(80_877_102);
    out.put_i32(pid);
    out.put_slice(secret);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::startup::{StartupPacket, parse_startup};

    #[test]
    fn reads_sasl_initial() {
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&5i32.to_be_bytes());
        body.extend_from_slice(b"n,,ab");
        let s = parse_sasl_initial(Bytes::from(body)).expect("parse");
        assert_eq!(s.mechanism, "SCRAM-SHA-256");
        assert_eq!(&s.data[..], b"n,,ab");
        assert!(parse_sasl_initial(Bytes::from_static(b"SCRAM-SHA-256\0\0\0\0\x09ab")).is_err());
    }

    #[test]
    fn cancel_request_parses_back() {
        let mut buf = BytesMut::from(&cancel_request(7, &[1, 2, 3, 4])[..]);
        assert_eq!(
            parse_startup(&mut buf),
            Ok(Some(StartupPacket::Cancel {
                pid: 7,
                secret: Bytes::from_static(&[1, 2, 3, 4])
            }))
        );
    }
}
