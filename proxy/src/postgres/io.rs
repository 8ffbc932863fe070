//! Reads with a deadline during the handshake phases: each read either fills
//! the buffer further, hits EOF, or runs out of time.

use bytes::BytesMut;
use portcullis_protocol::pg::message::{Message, parse_message};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::refusal::Refusal;
use super::stream::Stream;

/// Largest message accepted from a client before it is authenticated.
pub const MAX_HANDSHAKE_MESSAGE: usize = 8 * 1024;

/// Reads more bytes into `buf`, or fails with the refusal to send.
pub async fn fill(stream: &mut Stream, buf: &mut BytesMut, deadline: Instant) -> Result<(), Refusal> {
    match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
        Err(_) => Err(Refusal::HandshakeTimeout),
        Ok(Ok(0)) => Err(Refusal::Gone),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(_)) => Err(Refusal::Gone),
    }
}

/// Reads one whole message of at most `max` bytes.
pub async fn read_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
    max: usize,
    deadline: Instant,
) -> Result<Message, Refusal> {
    loop {
        if let Some(msg) = parse_message(buf, max).map_err(Refusal::Protocol)? {
            return Ok(msg);
        }
        fill(stream, buf, deadline).await?;
    }
}
