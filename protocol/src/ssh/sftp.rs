//! SFTP version 3 (draft-ietf-secsh-filexfer-02, as OpenSSH speaks it),
//! decoded for audit from a copy of the byte stream of an `sftp` subsystem
//! channel. Only what an audit event names is kept: request ids, paths,
//! open flags, attributes, handles, status codes and byte counts. The data
//! of WRITE and DATA packets is skipped, never buffered, so memory per
//! stream stays under [`MAX_KEPT`] whatever the peers send.

mod packet;

use packet::garbled;
pub use packet::{Attrs, Garbled, Packet, Side, open_flags, status_name};

/// Longest packet accepted (OpenSSH's own limit is 256 KiB); anything
/// longer means the stream is not SFTP or is out of step.
pub const MAX_PACKET: u32 = 1 << 20;
/// Most bytes of one packet held at a time (paths, attributes, status text).
pub const MAX_KEPT: usize = 64 * 1024;
/// Longest handle accepted (the draft's limit).
pub const MAX_HANDLE: usize = 256;

const INIT: u8 = 1;
const OPEN: u8 = 3;
const CLOSE: u8 = 4;
const READ: u8 = 5;
const WRITE: u8 = 6;
const LSTAT: u8 = 7;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const REALPATH: u8 = 16;
const STAT: u8 = 17;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const SYMLINK: u8 = 20;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const DATA: u8 = 103;
const NAME: u8 = 104;
const ATTRS: u8 = 105;
const EXTENDED: u8 = 200;
const EXTENDED_REPLY: u8 = 201;

/// Where the framer is in the stream.
#[derive(Debug)]
enum State {
    /// Reading the length and type.
    Header { buf: [u8; 5], have: usize },
    /// Keeping the start of a body to decode.
    Body { kind: u8, body_len: usize, kept: Vec<u8> },
    /// Passing over the rest of a body.
    Skip { left: usize },
    /// Given up; nothing more is decoded.
    Broken,
}

/// Cuts one direction of an SFTP stream into packets and decodes the ones
/// audit follows. Feed it every byte of that direction, in order, in pieces
/// of any size.
#[derive(Debug)]
pub struct Framer {
    side: Side,
    state: State,
}

impl Framer {
    /// A framer for the stream `side` writes.
    pub fn new(side: Side) -> Framer {
        Framer {
            side,
            state: State::Header { buf: [0; 5], have: 0 },
        }
    }

    /// Takes the next bytes and appends the packets they complete to `out`.
    /// After an error every later call returns `Ok` and decodes nothing.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<Packet>) -> Result<(), Garbled> {
        while !data.is_empty() {
            match &mut self.state {
                State::Broken => return Ok(()),
                State::Header { buf, have } => {
                    let take = (buf.len() - *have).min(data.len());
                    let (head, rest) = data.split_at(take);
                    if let Some(slot) = buf.get_mut(*have..*have + take) {
                        slot.copy_from_slice(head);
                    }
                    *have += take;
                    data = rest;
                    if *have == buf.len() {
                        let [a, b, c, d, kind] = *buf;
                        let len = u32::from_be_bytes([a, b, c, d]);
                        if let Err(e) = self.start(len, kind, out) {
                            self.state = State::Broken;
                            return Err(e);
                        }
                    }
                }
                State::Body { kind, body_len, kept } => {
                    let want = want(self.side, *kind, *body_len, kept);
                    let want = match want {
                        Ok(w) => w,
                        Err(e) => {
                            self.state = State::Broken;
                            return Err(e);
                        }
                    };
                    let take = want.saturating_sub(kept.len()).min(data.len());
                    let (head, rest) = data.split_at(take);
                    kept.extend_from_slice(head);
                    data = rest;
                    if let Err(e) = self.advance(out) {
                        self.state = State::Broken;
                        return Err(e);
                    }
                }
                State::Skip { left } => {
                    let take = (*left).min(data.len());
                    *left -= take;
                    data = data.get(take..).unwrap_or_default();
                    if *left == 0 {
                        self.state = State::Header { buf: [0; 5], have: 0 };
                    }
                }
            }
        }
        Ok(())
    }

    /// Begins a packet of `len` bytes (type included) of type `kind`.
    fn start(&mut self, len: u32, kind: u8, out: &mut Vec<Packet>) -> Result<(), Garbled> {
        if len == 0 || len > MAX_PACKET {
            return Err(garbled(format!(
                "a packet length of {len} bytes (the limit is {MAX_PACKET})"
            )));
        }
        let body_len = len as usize - 1;
        self.state = State::Body {
            kind,
            body_len,
            kept: Vec::new(),
        };
        self.advance(out)
    }

    /// Decodes the kept bytes once there are enough, then skips the rest.
    fn advance(&mut self, out: &mut Vec<Packet>) -> Result<(), Garbled> {
        let State::Body { kind, body_len, kept } = &mut self.state else {
            return Ok(());
        };
        let want = want(self.side, *kind, *body_len, kept)?;
        if kept.len() < want {
            return Ok(());
        }
        if want > 0
            && let Some(p) = decode(self.side, *kind, *body_len, kept)?
        {
            out.push(p);
        }
        let left = *body_len - kept.len();
        self.state = if left == 0 {
            State::Header { buf: [0; 5], have: 0 }
        } else {
            State::Skip { left }
        };
        Ok(())
    }
}

/// How many bytes of a body to keep: all of a small request or response,
/// the header of WRITE and DATA, nothing of what audit does not follow.
fn want(side: Side, kind: u8, body_len: usize, kept: &[u8]) -> Result<usize, Garbled> {
    let whole = || {
        if body_len > MAX_KEPT {
            Err(garbled(format!(
                "a packet of type {kind} with {body_len} bytes (at most {MAX_KEPT} expected)"
            )))
        } else {
            Ok(body_len)
        }
    };
    match (side, kind) {
        (
            Side::Client,
            OPEN | CLOSE | READ | SETSTAT | FSETSTAT | REMOVE | MKDIR | RMDIR | RENAME | SYMLINK | OPENDIR | LSTAT
            | STAT | REALPATH | READLINK,
        ) => whole(),
        // Extension requests may be large and are mostly not followed: their start.
        (Side::Client, EXTENDED) => Ok(body_len.min(MAX_KEPT)),
        (Side::Client, WRITE) => {
            // id, then the handle's length; then the handle, offset and data length.
            if kept.len() < 8 {
                return Ok(body_len.min(8));
            }
            let handle_len = Reader::new(kept.get(4..8).unwrap_or_default()).u32()? as usize;
            if handle_len > MAX_HANDLE {
                return Err(garbled(format!("a handle of {handle_len} bytes")));
            }
            Ok(body_len.min(8 + handle_len + 12))
        }
        (Side::Server, STATUS | HANDLE) => whole(),
        (Side::Server, DATA) => Ok(body_len.min(8)),
        (Side::Server, NAME | ATTRS | EXTENDED_REPLY) => Ok(body_len.min(4)),
        // INIT and VERSION carry no request id.
        (Side::Client, INIT) | (Side::Server, _) => Ok(0),
        // Every other request has an id, and an answer to match it with.
        (Side::Client, _) => Ok(body_len.min(4)),
    }
}

/// Decodes a kept body; `None` for a packet audit does not follow.
fn decode(side: Side, kind: u8, body_len: usize, kept: &[u8]) -> Result<Option<Packet>, Garbled> {
    let mut r = Reader::new(kept);
    let id = r.u32()?;
    let p = match (side, kind) {
        (Side::Client, OPEN) => {
            let path = r.text()?;
            let pflags = r.u32()?;
            Packet::Open { id, path, pflags }
        }
        (Side::Client, CLOSE) => Packet::Close {
            id,
            handle: r.handle()?,
        },
        (Side::Client, READ) => Packet::Read {
            id,
            handle: r.handle()?,
        },
        (Side::Client, WRITE) => {
            let handle = r.handle()?;
            let _offset = r.u64()?;
            let len = r.u32()? as usize;
            let header = 8 + handle.len() + 12;
            if header + len != body_len {
                return Err(garbled("a WRITE whose data length disagrees with its packet length"));
            }
            Packet::Write {
                id,
                handle,
                len: len as u64,
            }
        }
        (Side::Client, FSETSTAT) => Packet::FSetStat {
            id,
            handle: r.handle()?,
            attrs: r.attrs()?,
        },
        (Side::Client, REMOVE | RMDIR | OPENDIR | LSTAT | STAT | REALPATH | READLINK) => {
            let op = match kind {
                REMOVE => "remove",
                RMDIR => "rmdir",
                OPENDIR => "opendir",
                LSTAT => "lstat",
                STAT => "stat",
                REALPATH => "realpath",
                _ => "readlink",
            };
            path_op(id, op, r.text()?, None, None)
        }
        (Side::Client, MKDIR | SETSTAT) => {
            let path = r.text()?;
            let attrs = r.attrs()?;
            if kind == MKDIR {
                path_op(id, "mkdir", path, None, Some(attrs))
            } else {
                path_op(id, "setstat", path, None, Some(attrs))
            }
        }
        (Side::Client, RENAME) => {
            let from = r.text()?;
            let to = r.text()?;
            path_op(id, "rename", from, Some(to), None)
        }
        (Side::Client, SYMLINK) => {
            // OpenSSH sends target first and link second (the draft's order reversed).
            let target = r.text()?;
            let link = r.text()?;
            path_op(id, "symlink", link, Some(target), None)
        }
        (Side::Client, EXTENDED) => {
            let name = r.bytes()?;
            let truncated = body_len > kept.len();
            let followed = matches!(
                name,
                b"posix-rename@openssh.com"
                    | b"hardlink@openssh.com"
                    | b"lsetstat@openssh.com"
                    | b"statvfs@openssh.com"
                    | b"expand-path@openssh.com"
                    | b"copy-data"
            );
            if !followed {
                // Asking, not acting: a handle's statvfs or fsync, the
                // server's limits, a home directory, names of ids.
                let harmless = matches!(
                    name,
                    b"fstatvfs@openssh.com"
                        | b"fsync@openssh.com"
                        | b"limits@openssh.com"
                        | b"home-directory"
                        | b"users-groups-by-id@openssh.com"
                );
                return Ok(Some(if harmless {
                    Packet::Request { id }
                } else {
                    Packet::Extension {
                        id,
                        name: String::from_utf8_lossy(name).chars().take(256).collect(),
                    }
                }));
            }
            if truncated {
                return Err(garbled(format!("an extension request of {body_len} bytes")));
            }
            match name {
                b"statvfs@openssh.com" => path_op(id, "statvfs", r.text()?, None, None),
                b"expand-path@openssh.com" => path_op(id, "realpath", r.text()?, None, None),
                b"copy-data" => {
                    let from = r.handle()?;
                    let _offset = r.u64()?;
                    let len = r.u64()?;
                    let to = r.handle()?;
                    Packet::CopyData { id, from, to, len }
                }
                b"lsetstat@openssh.com" => {
                    let path = r.text()?;
                    path_op(id, "setstat", path, None, Some(r.attrs()?))
                }
                b"hardlink@openssh.com" => {
                    let target = r.text()?;
                    let link = r.text()?;
                    path_op(id, "hardlink", link, Some(target), None)
                }
                _ => {
                    let from = r.text()?;
                    let to = r.text()?;
                    path_op(id, "rename", from, Some(to), None)
                }
            }
        }
        (Side::Server, STATUS) => {
            let code = r.u32()?;
            // Servers of the draft's version 1 and 2 send no message.
            let message = r.text().unwrap_or_default();
            Packet::Status {
                id,
                code,
                message: message.chars().take(256).collect(),
            }
        }
        (Side::Server, HANDLE) => Packet::Handle {
            id,
            handle: r.handle()?,
        },
        (Side::Server, DATA) => {
            let len = r.u32()? as usize;
            if len + 8 != body_len {
                return Err(garbled("a DATA whose length disagrees with its packet length"));
            }
            Packet::Data { id, len: len as u64 }
        }
        (Side::Server, NAME | ATTRS | EXTENDED_REPLY) => Packet::Answer { id },
        (Side::Client, _) => Packet::Request { id },
        _ => return Ok(None),
    };
    Ok(Some(p))
}

fn path_op(id: u32, op: &'static str, path: String, to: Option<String>, attrs: Option<Attrs>) -> Packet {
    Packet::PathOp {
        id,
        op,
        path,
        to,
        attrs,
    }
}

/// Big-endian fields from a kept body; running short is an error, never a panic.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Garbled> {
        if self.buf.len() < n {
            return Err(garbled("a packet shorter than its fields"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, Garbled> {
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| garbled("a short field"))?;
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, Garbled> {
        let hi = self.u32()?;
        let lo = self.u32()?;
        Ok((u64::from(hi) << 32) | u64::from(lo))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Garbled> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn text(&mut self) -> Result<String, Garbled> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    fn handle(&mut self) -> Result<Vec<u8>, Garbled> {
        let h = self.bytes()?;
        if h.len() > MAX_HANDLE {
            return Err(garbled(format!("a handle of {} bytes", h.len())));
        }
        Ok(h.to_vec())
    }

    fn attrs(&mut self) -> Result<Attrs, Garbled> {
        let flags = self.u32()?;
        let mut a = Attrs::default();
        if flags & 0x1 != 0 {
            a.size = Some(self.u64()?);
        }
        if flags & 0x2 != 0 {
            a.owner = Some((self.u32()?, self.u32()?));
        }
        if flags & 0x4 != 0 {
            a.mode = Some(self.u32()?);
        }
        if flags & 0x8 != 0 {
            a.times = Some((self.u32()?, self.u32()?));
        }
        // Extended attributes (0x80000000) follow; audit does not name them.
        Ok(a)
    }
}

#[cfg(test)]
mod tests;
