//! Backend messages: the ones the proxy writes itself (authentication,
//! errors, notices) and the ones it reads from the upstream during login.

use bytes::{BufMut, Bytes, BytesMut};

use super::error::ProtocolError;
use super::message::{encode, read_cstr, read_i32};

/// Severity of an ErrorResponse or NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// Ends the session.
    Fatal,
    /// Ends the statement.
    Error,
    /// Something the person should act on.
    Warning,
    /// Information.
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
        }
    }
}

/// An ErrorResponse (`E`).
pub fn error_response(sev: Severity, code: &str, message: &str, detail: Option<&str>, hint: Option<&str>) -> Bytes {
    fields(b'E', sev, code, message, detail, hint)
}

/// A NoticeResponse (`N`).
pub fn notice_response(sev: Severity, code: &str, message: &str, detail: Option<&str>, hint: Option<&str>) -> Bytes {
    fields(b'N', sev, code, message, detail, hint)
}

fn fields(tag: u8, sev: Severity, code: &str, message: &str, detail: Option<&str>, hint: Option<&str>) -> Bytes {
    let mut body = BytesMut::new();
    let mut field = |t: u8, v: &str| {
        body.put_u8(t);
        // A NUL inside would end the field early and desynchronize the client.
        body.put_slice(v.replace('\0', " ").as_bytes());
        body.put_u8(0);
    };
    field(b'S', sev.as_str());
    field(b'V', sev.as_str());
    field(b'C', code);
    field(b'M', message);
    if let Some(d) = detail {
        field(b'D', d);
    }
    if let Some(h) = hint {
        field(b'H', h);
    }
    body.put_u8(0);
    let mut out = BytesMut::new();
    encode(tag, &body, &mut out);
    out.freeze()
}

fn auth(code: i32, data: &[u8]) -> Bytes {
    let mut body = BytesMut::with_capacity(4 + data.len());
    body.put_i32(code);
    body.put_slice(data);
    let mut out = BytesMut::new();
    encode(b'R', &body, &mut out);
    out.freeze()
}

/// AuthenticationOk.
pub fn auth_ok() -> Bytes {
    auth(0, &[])
}

/// AuthenticationSASL offering `mechanisms`.
pub fn auth_sasl(mechanisms: &[&str]) -> Bytes {
    let mut data = Vec::new();
    for m in mechanisms {
        data.extend_from_slice(m.as_bytes());
        data.push(0);
    }
    data.push(0);
    auth(10, &data)
}

/// AuthenticationSASLContinue.
pub fn auth_sasl_continue(data: &[u8]) -> Bytes {
    auth(11, data)
}

/// AuthenticationSASLFinal.
pub fn auth_sasl_final(data: &[u8]) -> Bytes {
    auth(12, data)
}

/// NegotiateProtocolVersion: the newest minor version we speak and the
/// protocol options we do not know.
pub fn negotiate_protocol_version(minor: u16, unrecognized: &[String]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_i32((3 << 16) | i32::from(minor));
    body.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        body.put_slice(o.as_bytes());
        body.put_u8(0);
    }
    let mut out = BytesMut::new();
    encode(b'v', &body, &mut out);
    out.freeze()
}

/// The one-byte answer to SSLRequest or GSSENCRequest.
pub fn ssl_response(accept: bool) -> Bytes {
    Bytes::from_static(if accept { b"S" } else { b"N" })
}

/// The fields of an ErrorResponse or NoticeResponse that matter to us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorNotice {
    /// Severity (non-localized when the server sent `V`).
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Detail, if any.
    pub detail: Option<String>,
    /// Hint, if any.
    pub hint: Option<String>,
}

/// Parses the body of an ErrorResponse or NoticeResponse.
pub fn parse_error_notice(mut body: &[u8]) -> Result<ErrorNotice, ProtocolError> {
    const WHAT: &str = "ErrorResponse";
    let mut e = ErrorNotice::default();
    loop {
        let Some((&t, rest)) = body.split_first() else {
            return Err(ProtocolError::Malformed { what: WHAT });
        };
        body = rest;
        if t == 0 {
            return Ok(e);
        }
        let v = read_cstr(&mut body, WHAT)?.to_owned();
        match t {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
}

/// An authentication request from the upstream server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// Logged in.
    Ok,
    /// Send the password in clear.
    CleartextPassword,
    /// Send the md5 hash with this salt.
    Md5Password {
        /// Salt.
        salt: [u8; 4],
    },
    /// Start SASL with one of these mechanisms.
    Sasl {
        /// Mechanism names.
        mechanisms: Vec<String>,
    },
    /// SASL server-first message.
    SaslContinue(Bytes),
    /// SASL server-final message.
    SaslFinal(Bytes),
    /// A method we do not implement (Kerberos, GSS, SSPI).
    Unsupported(i32),
}

/// Parses the body of an Authentication (`R`) message.
pub fn parse_auth_request(body: Bytes) -> Result<AuthRequest, ProtocolError> {
    const WHAT: &str = "authentication request";
    let mut b = &body[..];
    let code = read_i32(&mut b, WHAT)?;
    Ok(match code {
        0 => AuthRequest::Ok,
        3 => AuthRequest::CleartextPassword,
        5 => {
            let salt: [u8; 4] = b.try_into().map_err(|_| ProtocolError::Malformed { what: WHAT })?;
            AuthRequest::Md5Password { salt }
        }
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let m = read_cstr(&mut b, WHAT)?;
                if m.is_empty() {
                    break;
                }
                mechanisms.push(m.to_owned());
            }
            AuthRequest::Sasl { mechanisms }
        }
        11 => AuthRequest::SaslContinue(body.slice(4..)),
        12 => AuthRequest::SaslFinal(body.slice(4..)),
        other => AuthRequest::Unsupported(other),
    })
}

/// Replaces the secret of the BackendKeyData among `messages` (whole
/// backend messages) with `secret` of the same length; answers whether one was found.
pub fn set_backend_key_secret(messages: &mut [u8], secret: &[u8]) -> bool {
    let mut pos = 0;
    while let Some(header) = messages.get(pos..pos + 5) {
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let Ok(len) = usize::try_from(len) else {
            return false;
        };
        let end = pos + 1 + len;
        if header[0] == b'K'
            && len == 8 + secret.len()
            && let Some(body) = messages.get_mut(pos + 5..end)
        {
            body[4..].copy_from_slice(secret);
            return true;
        }
        pos = end;
    }
    false
}

/// Parses BackendKeyData: process id and secret key.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, Bytes), ProtocolError> {
    let mut b = body;
    let pid = read_i32(&mut b, "BackendKeyData")?;
    if b.len() < 4 || b.len() > 256 {
        return Err(ProtocolError::Malformed { what: "BackendKeyData" });
    }
    Ok((pid, Bytes::copy_from_slice(b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::message::parse_message;

    #[test]
    fn the_backend_key_secret_is_replaced_in_place() {
        let mut m = BytesMut::new();
        encode(b'S', b"a\0b\0", &mut m);
        encode(b'K', &[0, 0, 0, 7, 1, 2, 3, 4], &mut m);
        encode(b'Z', b"I", &mut m);
        assert!(set_backend_key_secret(&mut m, &[9, 9, 9, 9]));
        let k = &m[9..];
        assert_eq!(
            parse_backend_key_data(&k[5..13]),
            Ok((7, Bytes::from_static(&[9, 9, 9, 9])))
        );
        assert!(!set_backend_key_secret(&mut m[..9], &[9, 9, 9, 9]), "no K there");
        assert!(
            !set_backend_key_secret(&mut m, &[9, 9]),
            "a secret of another length is refused"
        );
    }

    #[test]
    fn error_response_round_trips() {
        let bytes = error_response(
            Severity::Fatal,
            "28000",
            "no grant",
            None,
            Some("run portcullis request"),
        );
        let mut buf = BytesMut::from(&bytes[..]);
        let m = parse_message(&mut buf, 1 << 16).expect("ok").expect("whole");
        assert_eq!(m.tag, b'E');
        let e = parse_error_notice(&m.body).expect("parse");
        assert_eq!(
            (e.severity.as_str(), e.code.as_str(), e.message.as_str()),
            ("FATAL", "28000", "no grant")
        );
        assert_eq!(e.hint.as_deref(), Some("run portcullis request"));
    }

    #[test]
    fn reads_auth_requests() {
        let sasl = auth_sasl(&["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]);
        assert_eq!(
            parse_auth_request(sasl.slice(5..)),
            Ok(AuthRequest::Sasl {
                mechanisms: vec!["SCRAM-SHA-256".into(), "SCRAM-SHA-256-PLUS".into()]
            })
        );
        let md5 = auth(5, &[1, 2, 3, 4]);
        assert_eq!(
            parse_auth_request(md5.slice(5..)),
            Ok(AuthRequest::Md5Password { salt: [1, 2, 3, 4] })
        );
        assert_eq!(parse_auth_request(auth_ok().slice(5..)), Ok(AuthRequest::Ok));
        assert_eq!(
            parse_auth_request(Bytes::from_static(&[0, 0, 0, 7])),
            Ok(AuthRequest::Unsupported(7))
        );
        assert!(parse_auth_request(Bytes::from_static(&[0, 0])).is_err());
    }

    #[test]
    fn reads_backend_key_data() {
        assert_eq!(
            parse_backend_key_data(&[0, 0, 1, 0, 9, 9, 9, 9]),
            Ok((256, Bytes::from_static(&[9, 9, 9, 9])))
        );
        assert!(parse_backend_key_data(&[0, 0, 1]).is_err());
    }
}
