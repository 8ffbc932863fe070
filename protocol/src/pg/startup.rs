//! The first packet of a connection: no type byte, a length, then a code
//! that says whether it is a StartupMessage, an SSLRequest, a
//! GSSENCRequest or a CancelRequest.

use bytes::{Bytes, BytesMut};

use super::error::ProtocolError;
use super::message::{read_cstr, read_i32};

/// Longest startup packet accepted, as PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`.
pub const MAX_STARTUP_LEN: u32 = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A decoded first packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// The client asks for TLS.
    SslRequest,
    /// The client asks for GSSAPI encryption (always declined).
    GssEncRequest,
    /// A query cancellation for another connection.
    Cancel {
        /// Backend process id.
        pid: i32,
        /// Secret key (4 bytes in protocol 3.0, longer in 3.2).
        secret: Bytes,
    },
    /// A StartupMessage.
    Startup(StartupParams),
}

/// The parameters of a StartupMessage, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupParams {
    /// Minor protocol version the client asked for (major is always 3).
    pub minor: u16,
    pairs: Vec<(String, String)>,
}

impl StartupParams {
    /// The value of `name`, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// All parameters as sent.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Protocol options (`_pq_.*`) we do not support, to be named in
    /// NegotiateProtocolVersion.
    pub fn unrecognized_options(&self) -> Vec<String> {
        self.pairs
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Takes one startup packet off the front of `buf`; `Ok(None)` when more
/// bytes are needed. Lengths are checked before anything is buffered.
pub fn parse_startup(buf: &mut BytesMut) -> Result<Option<StartupPacket>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < 8 {
        return Err(ProtocolError::StartupTooShort { len });
    }
    if len > MAX_STARTUP_LEN {
        return Err(ProtocolError::StartupTooLarge { len });
    }
    let len = len as usize;
    if buf.len() < len {
        buf.reserve(len - buf.len());
        return Ok(None);
    }
    let packet = buf.split_to(len).freeze();
    let mut body = &packet[4..];
    let code = read_i32(&mut body, "startup code")? as u32;
    match code {
        SSL_REQUEST if body.is_empty() => Ok(Some(StartupPacket::SslRequest)),
        GSSENC_REQUEST if body.is_empty() => Ok(Some(StartupPacket::GssEncRequest)),
        SSL_REQUEST | GSSENC_REQUEST => Err(ProtocolError::Malformed {
            what: "encryption request",
        }),
        CANCEL_REQUEST => {
            let pid = read_i32(&mut body, "CancelRequest")?;
            if body.len() < 4 || body.len() > 256 {
                return Err(ProtocolError::Malformed { what: "CancelRequest" });
            }
            let secret = packet.slice(packet.len() - body.len()..);
            Ok(Some(StartupPacket::Cancel { pid, secret }))
        }
        _ if code >> 16 == 3 => parse_params(body, (code & 0xffff) as u16).map(|p| Some(StartupPacket::Startup(p))),
        _ if code >> 16 == 1234 => Err(ProtocolError::UnknownStartupCode { code }),
        _ => Err(ProtocolError::UnsupportedVersion {
            major: (code >> 16) as u16,
            minor: (code & 0xffff) as u16,
        }),
    }
}

fn parse_params(mut body: &[u8], minor: u16) -> Result<StartupParams, ProtocolError> {
    const WHAT: &str = "startup parameters";
    let mut pairs = Vec::new();
    loop {
        let name = read_cstr(&mut body, WHAT)?;
        if name.is_empty() {
            break;
        }
        let value = read_cstr(&mut body, WHAT)?;
        pairs.push((name.to_owned(), value.to_owned()));
    }
    if !body.is_empty() {
        return Err(ProtocolError::Malformed { what: WHAT });
    }
    if !pairs.iter().any(|(k, _)| k == "user") {
        return Err(ProtocolError::Malformed {
            what: "startup packet: no \"user\" parameter",
        });
    }
    Ok(StartupParams { minor, pairs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn packet(code: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u32((8 + body.len()) as u32);
        b.put_u32(code);
        b.put_slice(body);
        b
    }

    #[test]
    fn reads_startup_parameters() {
        let mut buf = packet(196_608, b"user\0alice\0database\0orders@read\0\0");
        let Some(StartupPacket::Startup(p)) = parse_startup(&mut buf).expect("ok") else {
            panic!("not a startup");
        };
        assert_eq!(p.get("user"), Some("alice"));
        assert_eq!(p.get("database"), Some("orders@read"));
        assert_eq!(p.minor, 0);
        assert!(p.unrecognized_options().is_empty());
        assert!(buf.is_empty());
    }

    #[test]
    fn reads_ssl_and_cancel_requests() {
        let mut buf = packet(SSL_REQUEST, b"");
        assert_eq!(parse_startup(&mut buf), Ok(Some(StartupPacket::SslRequest)));
        let mut buf = packet(CANCEL_REQUEST, &[0, 0, 0, 42, 1, 2, 3, 4]);
        assert_eq!(
            parse_startup(&mut buf),
            Ok(Some(StartupPacket::Cancel {
                pid: 42,
                secret: Bytes::from_static(&[1, 2, 3, 4])
            }))
        );
    }

    #[test]
    fn waits_for_the_whole_packet() {
        let whole = packet(196_608, b"user\0a\0\0");
        let mut buf = BytesMut::from(&whole[..6]);
        assert_eq!(parse_startup(&mut buf), Ok(None));
    }

    #[test]
    fn refuses_bad_packets() {
        let mut huge = BytesMut::from(&[0x7f, 0, 0, 0][..]);
        assert!(matches!(
            parse_startup(&mut huge),
            Err(ProtocolError::StartupTooLarge { .. })
        ));
        let mut short = BytesMut::from(&[0, 0, 0, 2][..]);
        assert!(matches!(
            parse_startup(&mut short),
            Err(ProtocolError::StartupTooShort { len: 2 })
        ));
        let mut v2 = packet(2 << 16, b"");
        assert!(matches!(
            parse_startup(&mut v2),
            Err(ProtocolError::UnsupportedVersion { major: 2, .. })
        ));
        let mut no_user = packet(196_608, b"database\0x\0\0");
        assert!(parse_startup(&mut no_user).is_err());
        let mut unterminated = packet(196_608, b"user\0alice");
        assert!(parse_startup(&mut unterminated).is_err());
    }

    #[test]
    fn names_protocol_options() {
        let mut buf = packet((3 << 16) | 2, b"user\0a\0_pq_.foo\0x\0\0");
        let Some(StartupPacket::Startup(p)) = parse_startup(&mut buf).expect("ok") else {
            panic!("not a startup");
        };
        assert_eq!(p.minor, 2);
        assert_eq!(p.unrecognized_options(), vec!["_pq_.foo".to_owned()]);
    }
}
