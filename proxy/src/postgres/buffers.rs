//! Read buffers lent to a session only while bytes are moving. An idle
//! session holds no buffer: a read that would block hands its buffer back to
//! a small per-thread free list, so a thousand idle sessions cost a thousand
//! sockets, not a thousand pairs of 8 KiB buffers, and a busy session reuses
//! the same buffer without allocating per message.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Size of one read buffer.
pub const BUF: usize = 8 * 1024;
/// Free buffers kept per worker thread; more are freed.
const MAX_FREE: usize = 64;

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take() -> Box<[u8]> {
    FREE.try_with(|f| f.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0u8; BUF].into_boxed_slice())
}

fn give(buf: Box<[u8]>) {
    let _ = FREE.try_with(|f| {
        let mut free = f.borrow_mut();
        if free.len() < MAX_FREE {
            free.push(buf);
        }
    });
}

/// A buffer slot: full while a session is moving bytes, empty while it waits.
#[derive(Default)]
pub struct Lease(Option<Box<[u8]>>);

impl Lease {
    /// Reads into the lent buffer; when the read would block, the buffer goes
    /// back to the free list until data arrives.
    pub fn poll_read<R: AsyncRead + Unpin>(&mut self, from: &mut R, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let buf = self.0.get_or_insert_with(take);
        let mut rb = ReadBuf::new(buf);
        match Pin::new(from).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.release();
                Poll::Pending
            }
        }
    }

    /// The bytes of the buffer (empty when nothing is lent).
    pub fn bytes(&self) -> &[u8] {
        self.0.as_deref().unwrap_or_default()
    }

    /// Hands the buffer back.
    pub fn release(&mut self) {
        if let Some(b) = self.0.take() {
            give(b);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWrite;

    #[test]
    fn an_idle_read_holds_no_buffer() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let (mut a, mut b) = tokio::io::duplex(64);
        let mut lease = Lease::default();
        assert!(lease.poll_read(&mut a, &mut cx).is_pending());
        assert!(lease.bytes().is_empty(), "a blocked read keeps no buffer");
        let mut cx2 = Context::from_waker(waker);
        assert!(Pin::new(&mut b).poll_write(&mut cx2, b"hi").is_ready());
        match lease.poll_read(&mut a, &mut cx) {
            Poll::Ready(Ok(2)) => assert_eq!(&lease.bytes()[..2], b"hi"),
            other => panic!("expected two bytes, got {other:?}"),
        }
    }
}
