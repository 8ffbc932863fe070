//! The TCP stream under russh. The version exchange (RFC 4253 section 4.2)
//! is done here rather than in russh, so a client that is not SSH (a browser,
//! `nc`, a port scanner) reads one line saying what this port is instead of a
//! silent close; then russh gets the stream with the client's bytes replayed
//! and its own version line (already sent) swallowed. A stop token makes the
//! stream fail, which ends a connection stalled anywhere in its handshake.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use russh::SshId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// RFC 4253: the version line is at most 255 bytes, CR LF included.
const MAX_VERSION_LINE: usize = 255;

/// What a client that does not speak SSH reads before the connection closes.
pub const NOT_SSH: &str = "portcullis: this is an SSH gateway and the client did not send an SSH-2.0 version line; \
connect with an SSH client, e.g. ssh -p PORT USER+RESOURCE@GATEWAY\r\n";

/// Why the version exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The first line was not `SSH-2.0-...` (or was too long); the client was told.
    #[error("the client sent no SSH version line")]
    NotSsh,
    /// The connection closed or failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// The stream russh runs on.
pub struct Wire {
    tcp: TcpStream,
    /// Client bytes read during the version exchange, handed to russh first.
    replay: Bytes,
    /// Bytes of russh's version line still to swallow (we sent it already).
    swallow: usize,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    /// `stop` fired (its future is not polled again).
    stopped: bool,
}

fn id_line(id: &SshId) -> String {
    match id {
        SshId::Standard(s) => format!("{s}\r\n"),
        SshId::Raw(s) => s.to_string(),
    }
}

/// Sends our version line, reads the client's, and answers a stream for
/// russh that fails once `stop` is cancelled.
pub async fn exchange(mut tcp: TcpStream, ours: &SshId, stop: CancellationToken) -> Result<Wire, VersionError> {
    let line = id_line(ours);
    tcp.write_all(line.as_bytes()).await?;
    let mut read = Vec::with_capacity(MAX_VERSION_LINE);
    let mut chunk = [0u8; MAX_VERSION_LINE];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        read.extend_from_slice(chunk.get(..n).unwrap_or_default());
        if let Some(end) = read.iter().position(|b| *b == b'\n') {
            let first = read.get(..end).unwrap_or_default();
            if first.starts_with(b"SSH-2.0-") || first.starts_with(b"SSH-1.99-") {
                break;
            }
            return refuse(tcp).await;
        }
        if read.len() >= MAX_VERSION_LINE {
            return refuse(tcp).await;
        }
    }
    Ok(Wire {
        tcp,
        replay: Bytes::from(read),
        swallow: line.len(),
        stop: Box::pin(stop.cancelled_owned()),
        stopped: false,
    })
}

async fn refuse(mut tcp: TcpStream) -> Result<Wire, VersionError> {
    let _ = tcp.write_all(NOT_SSH.as_bytes()).await;
    let _ = tcp.shutdown().await;
    Err(VersionError::NotSsh)
}

impl Wire {
    fn stopped(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.stopped {
            self.stopped = self.stop.as_mut().poll(cx).is_ready();
        }
        self.stopped
    }
}

fn stopped_error() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "the gateway ended the connection")
}

impl AsyncRead for Wire {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.stopped(cx) {
            return Poll::Ready(Err(stopped_error()));
        }
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(self.replay.get(..n).unwrap_or_default());
            self.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Wire {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.stopped(cx) {
            return Poll::Ready(Err(stopped_error()));
        }
        if self.swallow > 0 {
            let n = self.swallow.min(buf.len());
            self.swallow -= n;
            return Poll::Ready(Ok(n));
        }
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
