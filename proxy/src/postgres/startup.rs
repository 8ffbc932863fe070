//! The opening of a client connection: SSLRequest (TLS), GSSENCRequest
//! (declined), CancelRequest, and the StartupMessage. See the PostgreSQL docs,
//! "Message Flow: Start-up" and "SSL Session Encryption".

use bytes::{Bytes, BytesMut};
use portcullis_protocol::pg::backend::{negotiate_protocol_version, ssl_response};
use portcullis_protocol::pg::error::ProtocolError;
use portcullis_protocol::pg::startup::{StartupPacket, StartupParams, parse_startup};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::io::fill;
use super::refusal::Refusal;
use super::stream::Stream;
use crate::Proxy;

/// What the client opened with.
pub enum Opening {
    /// A session: the (possibly TLS) stream, its parameters, and bytes already read past them.
    Session {
        /// The client stream, upgraded to TLS if asked.
        stream: Stream,
        /// StartupMessage parameters.
        params: StartupParams,
        /// Bytes read after the StartupMessage.
        buf: BytesMut,
    },
    /// A CancelRequest for a running query.
    Cancel {
        /// Backend process id from BackendKeyData.
        pid: i32,
        /// Secret key from BackendKeyData.
        secret: Bytes,
    },
}

/// Reads until a StartupMessage or CancelRequest. On a refusal the stream is
/// handed back so the caller can send the ErrorResponse.
pub async fn open(proxy: &Proxy, mut stream: Stream, deadline: Instant) -> Result<Opening, (Option<Stream>, Refusal)> {
    let mut buf = BytesMut::with_capacity(512);
    loop {
        let packet = match parse_startup(&mut buf) {
            Ok(Some(p)) => p,
            Ok(None) => match fill(&mut stream, &mut buf, deadline).await {
                Ok(()) => continue,
                Err(r) => return Err((Some(stream), r)),
            },
            Err(e) => return Err((Some(stream), Refusal::Protocol(e))),
        };
        match packet {
            StartupPacket::SslRequest => {
                // Bytes after SSLRequest would be read as if encrypted (CVE-2021-23214).
                if stream.is_tls() || !buf.is_empty() {
                    return Err((
                        Some(stream),
                        Refusal::Protocol(ProtocolError::Malformed {
                            what: "data after SSLRequest",
                        }),
                    ));
                }
                stream = match upgrade(proxy, stream, deadline).await {
                    Ok(s) => s,
                    Err(r) => return Err((None, r)),
                };
            }
            StartupPacket::GssEncRequest => {
                if let Err(r) = write(&mut stream, &ssl_response(false)).await {
                    return Err((Some(stream), r));
                }
            }
            StartupPacket::Cancel { pid, secret } => return Ok(Opening::Cancel { pid, secret }),
            StartupPacket::Startup(params) => {
                if proxy.settings.postgres.require_tls && !stream.is_tls() {
                    return Err((Some(stream), Refusal::TlsRequired));
                }
                if params
                    .get("replication")
                    .is_some_and(|v| !matches!(v, "false" | "off" | "no" | "0"))
                {
                    return Err((Some(stream), Refusal::Replication));
                }
                let unrecognized = params.unrecognized_options();
                if (params.minor > 0 || !unrecognized.is_empty())
                    && let Err(r) = write(&mut stream, &negotiate_protocol_version(0, &unrecognized)).await
                {
                    return Err((Some(stream), r));
                }
                return Ok(Opening::Session { stream, params, buf });
            }
        }
    }
}

async fn upgrade(proxy: &Proxy, mut stream: Stream, deadline: Instant) -> Result<Stream, Refusal> {
    write(&mut stream, &ssl_response(true)).await?;
    let Stream::Plain(tcp) = stream else {
        return Err(Refusal::Protocol(ProtocolError::Malformed {
            what: "second SSLRequest",
        }));
    };
    match tokio::time::timeout_at(deadline, proxy.tls.accept(tcp)).await {
        Err(_) => Err(Refusal::HandshakeTimeout),
        Ok(Err(e)) => Err(Refusal::TlsFailed(e.to_string())),
        Ok(Ok(tls)) => Ok(Stream::Server(Box::new(tls))),
    }
}

async fn write(stream: &mut Stream, bytes: &[u8]) -> Result<(), Refusal> {
    stream.write_all(bytes).await.map_err(|_| Refusal::Gone)?;
    stream.flush().await.map_err(|_| Refusal::Gone)
}
