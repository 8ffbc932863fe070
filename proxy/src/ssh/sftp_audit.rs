//! One audit event per sftp operation of a channel: the requests the client
//! sends are matched by id with the server's answers (STATUS, HANDLE, DATA),
//! decoded by `portcullis_protocol::ssh::sftp` from the bytes the bridge
//! relays. An open file is one event, recorded when its handle is closed,
//! with the bytes read and written through it. Everything here runs under a
//! short lock and never waits: the bridge queues the events it returns.
//!
//! A stream that can no longer be followed (garbled, a request id reused
//! while its answer is awaited, past a limit) is recorded as such and the
//! session is cut, as a Postgres session whose statements cannot be
//! followed is: no operation may run unrecorded.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::ssh::sftp::{Attrs, Framer, Garbled, Packet, Side, open_flags, status_name};

use crate::audit::SessionAudit;

/// Requests awaiting an answer, at most; past it the stream is not followed.
const MAX_PENDING: usize = 8192;
/// Bytes of paths held for requests awaiting an answer, at most.
const MAX_PENDING_BYTES: usize = 16 << 20;
/// Open files followed at once, at most.
const MAX_OPEN: usize = 4096;

/// A request sent, waiting for its answer.
enum Pending {
    Open {
        path: String,
        pflags: u32,
    },
    Close {
        handle: Vec<u8>,
    },
    Read {
        handle: Vec<u8>,
    },
    Write {
        handle: Vec<u8>,
        len: u64,
    },
    Op(Op),
    /// Followed only to match its answer.
    Other,
}

/// A path operation and what it named.
struct Op {
    op: &'static str,
    path: String,
    to: Option<String>,
    attrs: Option<Attrs>,
    /// More of the event's detail (an extension's name, a copy's length).
    extra: Option<(&'static str, String)>,
}

impl Op {
    fn new(op: &'static str, path: String) -> Op {
        Op {
            op,
            path,
            to: None,
            attrs: None,
            extra: None,
        }
    }

    /// Bytes it holds, against `MAX_PENDING_BYTES`.
    fn size(&self) -> usize {
        self.path.len() + self.to.as_ref().map_or(0, String::len)
    }
}

/// A file opened through a handle.
struct OpenFile {
    path: String,
    pflags: u32,
    read: u64,
    written: u64,
}

impl OpenFile {
    /// `path`, opened with `pflags`, nothing read or written yet.
    fn new(path: String, pflags: u32) -> OpenFile {
        OpenFile {
            path,
            pflags,
            read: 0,
            written: 0,
        }
    }
}

/// The sftp audit of one channel.
pub struct SftpAudit {
    session: Arc<SessionAudit>,
    state: Mutex<Tracker>,
}

struct Tracker {
    up: Framer,
    down: Framer,
    pending: HashMap<u32, Pending>,
    /// Bytes of the paths in `pending`.
    pending_bytes: usize,
    open: HashMap<Vec<u8>, OpenFile>,
    /// Gave up on the stream (garbled, or past a limit): nothing more is followed.
    stopped: bool,
}

impl SftpAudit {
    /// Follows a new sftp channel of `session`.
    pub fn new(session: Arc<SessionAudit>) -> SftpAudit {
        SftpAudit {
            session,
            state: Mutex::new(Tracker {
                up: Framer::new(Side::Client),
                down: Framer::new(Side::Server),
                pending: HashMap::new(),
                pending_bytes: 0,
                open: HashMap::new(),
                stopped: false,
            }),
        }
    }

    /// Bytes the client sent: the events they complete, and whether the
    /// stream is still followed (if not, nothing more of the client's may
    /// reach the server).
    pub fn from_client(&self, data: &[u8]) -> (Vec<AuditEvent>, bool) {
        self.feed(Side::Client, data)
    }

    /// Bytes the server sent; the events they complete.
    pub fn from_server(&self, data: &[u8]) -> Vec<AuditEvent> {
        self.feed(Side::Server, data).0
    }

    fn feed(&self, side: Side, data: &[u8]) -> (Vec<AuditEvent>, bool) {
        let mut events = Vec::new();
        let Ok(mut t) = self.state.lock() else {
            return (events, false);
        };
        if t.stopped {
            return (events, false);
        }
        let mut packets = Vec::new();
        let framer = match side {
            Side::Client => &mut t.up,
            Side::Server => &mut t.down,
        };
        let parsed = framer.push(data, &mut packets);
        for p in packets {
            if let Err(why) = t.take(p, &self.session, &mut events) {
                self.stop(&mut t, side, &why, &mut events);
                return (events, false);
            }
        }
        if let Err(e) = parsed {
            self.stop(&mut t, side, &e, &mut events);
        }
        (events, !t.stopped)
    }

    /// The stream cannot be followed: one event says so, nothing more is
    /// parsed, and the session is cut.
    fn stop(&self, t: &mut Tracker, side: Side, why: &Garbled, events: &mut Vec<AuditEvent>) {
        t.stopped = true;
        events.extend(t.unanswered(&self.session));
        events.extend(t.leftovers(&self.session));
        let mut e = self.session.event("sftp");
        e.detail.insert("op".into(), "unparseable".into());
        let from = match side {
            Side::Client => "client",
            Side::Server => "server",
        };
        e.detail.insert("from".into(), from.into());
        e.detail.insert("why".into(), why.why.clone());
        tracing::info!(session = %self.session.session_id, from, why = %why.why, "sftp stream not followed: cutting the session");
        events.push(e);
        self.session.cut_for_audit(format!("its sftp stream: {}", why.why));
    }

    /// The channel ended: files still open and requests never answered.
    pub fn finish(&self) -> Vec<AuditEvent> {
        let Ok(mut t) = self.state.lock() else {
            return Vec::new();
        };
        let mut events = t.unanswered(&self.session);
        events.extend(t.leftovers(&self.session));
        events
    }
}

impl Tracker {
    /// Requests never answered, as events that say so.
    fn unanswered(&mut self, session: &SessionAudit) -> Vec<AuditEvent> {
        self.pending_bytes = 0;
        let mut events = Vec::new();
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Op(op) => events.push(op_event(session, &op, "interrupted", None)),
                Pending::Open { path, pflags } => {
                    let f = OpenFile::new(path, pflags);
                    events.push(open_event(session, &f, "interrupted", None, false));
                }
                _ => {}
            }
        }
        events
    }

    /// Files still open, as events that say they were never closed.
    fn leftovers(&mut self, session: &SessionAudit) -> Vec<AuditEvent> {
        self.open
            .drain()
            .map(|(_, f)| open_event(session, &f, "ok", None, false))
            .collect()
    }

    /// The path a handle was opened with.
    fn path_of(&self, handle: &[u8]) -> String {
        self.open
            .get(handle)
            .map_or_else(|| "(unknown handle)".to_owned(), |f| f.path.clone())
    }

    /// Follows one packet; an error when it cannot be followed.
    fn take(&mut self, p: Packet, session: &SessionAudit, events: &mut Vec<AuditEvent>) -> Result<(), Garbled> {
        let (id, pending) = match p {
            Packet::Open { id, path, pflags } => (id, Pending::Open { path, pflags }),
            Packet::Close { id, handle } => (id, Pending::Close { handle }),
            Packet::Read { id, handle } => (id, Pending::Read { handle }),
            Packet::Write { id, handle, len } => (id, Pending::Write { handle, len }),
            Packet::PathOp {
                id,
                op,
                path,
                to,
                attrs,
            } => (
                id,
                Pending::Op(Op {
                    to,
                    attrs,
                    ..Op::new(op, path)
                }),
            ),
            Packet::FSetStat { id, handle, attrs } => (
                id,
                Pending::Op(Op {
                    attrs: Some(attrs),
                    ..Op::new("fsetstat", self.path_of(&handle))
                }),
            ),
            Packet::CopyData { id, from, to, len } => (
                id,
                Pending::Op(Op {
                    to: Some(self.path_of(&to)),
                    extra: Some(("length", len.to_string())),
                    ..Op::new("copy-data", self.path_of(&from))
                }),
            ),
            Packet::Extension { id, name } => (
                id,
                Pending::Op(Op {
                    extra: Some(("extension", name)),
                    ..Op::new("extension", String::new())
                }),
            ),
            Packet::Request { id } => (id, Pending::Other),
            Packet::Status { id, code, message } => {
                self.answered(id, code, &message, session, events);
                return Ok(());
            }
            Packet::Handle { id, handle } => {
                match self.remove(id) {
                    Some(Pending::Open { path, pflags }) => {
                        if self.open.len() >= MAX_OPEN {
                            return Err(Garbled {
                                why: format!("more than {MAX_OPEN} files open at once"),
                            });
                        }
                        let f = OpenFile::new(path, pflags);
                        self.open.insert(handle, f);
                    }
                    Some(Pending::Op(op)) => events.push(op_event(session, &op, "ok", None)),
                    _ => {}
                }
                return Ok(());
            }
            Packet::Data { id, len } => {
                if let Some(Pending::Read { handle }) = self.remove(id)
                    && let Some(f) = self.open.get_mut(&handle)
                {
                    f.read = f.read.saturating_add(len);
                }
                return Ok(());
            }
            Packet::Answer { id } => {
                if let Some(Pending::Op(op)) = self.remove(id) {
                    events.push(op_event(session, &op, "ok", None));
                }
                return Ok(());
            }
        };
        if self.pending.contains_key(&id) {
            // Its answer could be taken for the other's: one of them would go unrecorded.
            return Err(Garbled {
                why: format!("request id {id} used again before its answer"),
            });
        }
        if self.pending.len() >= MAX_PENDING {
            return Err(Garbled {
                why: format!("more than {MAX_PENDING} requests awaiting an answer"),
            });
        }
        if let Pending::Op(op) = &pending {
            self.pending_bytes += op.size();
            if self.pending_bytes > MAX_PENDING_BYTES {
                return Err(Garbled {
                    why: format!("more than {} MiB of paths awaiting an answer", MAX_PENDING_BYTES >> 20),
                });
            }
        }
        self.pending.insert(id, pending);
        Ok(())
    }

    /// The request `id` awaited, now answered.
    fn remove(&mut self, id: u32) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        if let Pending::Op(op) = &p {
            self.pending_bytes -= op.size();
        }
        Some(p)
    }

    /// The server's STATUS for request `id`.
    fn answered(&mut self, id: u32, code: u32, message: &str, session: &SessionAudit, events: &mut Vec<AuditEvent>) {
        let Some(p) = self.remove(id) else {
            return;
        };
        let outcome = status_name(code);
        let error = (code != 0).then_some(message);
        match p {
            Pending::Op(op) => events.push(op_event(session, &op, &outcome, error)),
            // An open answered by a STATUS failed.
            Pending::Open { path, pflags } => {
                let f = OpenFile::new(path, pflags);
                events.push(open_event(session, &f, &outcome, error, true));
            }
            Pending::Close { handle } => {
                if let Some(f) = self.open.remove(&handle) {
                    let mut e = open_event(session, &f, "ok", None, true);
                    if let Some(error) = error {
                        // The file was opened and used; its close failed.
                        e.detail.insert("outcome".into(), outcome);
                        e.detail.insert("error".into(), error.into());
                    }
                    events.push(e);
                }
            }
            Pending::Write { handle, len } if code == 0 => {
                if let Some(f) = self.open.get_mut(&handle) {
                    f.written = f.written.saturating_add(len);
                }
            }
            Pending::Write { .. } | Pending::Read { .. } | Pending::Other => {}
        }
    }
}

/// The event of one opened file (or of an open that failed).
fn open_event(session: &SessionAudit, f: &OpenFile, outcome: &str, error: Option<&str>, closed: bool) -> AuditEvent {
    let mut e = session.event("sftp");
    let d = &mut e.detail;
    d.insert("op".into(), "open".into());
    d.insert("path".into(), f.path.clone());
    d.insert("flags".into(), open_flags(f.pflags));
    d.insert("outcome".into(), outcome.into());
    if let Some(error) = error {
        d.insert("error".into(), error.into());
    }
    if outcome == "ok" {
        d.insert("bytes_read".into(), f.read.to_string());
        d.insert("bytes_written".into(), f.written.to_string());
        if !closed {
            // The channel ended with the handle still open.
            d.insert("closed".into(), "false".into());
        }
    }
    e
}

/// The event of one path operation.
fn op_event(session: &SessionAudit, op: &Op, outcome: &str, error: Option<&str>) -> AuditEvent {
    let mut e = session.event("sftp");
    let d = &mut e.detail;
    d.insert("op".into(), op.op.into());
    d.insert("path".into(), op.path.clone());
    if let Some(to) = &op.to {
        d.insert("to".into(), to.clone());
    }
    if let Some(attrs) = &op.attrs {
        let text = attrs.to_string();
        if !text.is_empty() {
            d.insert("attrs".into(), text);
        }
    }
    if let Some((k, v)) = &op.extra {
        d.insert((*k).into(), v.clone());
    }
    d.insert("outcome".into(), outcome.into());
    if let Some(error) = error {
        d.insert("error".into(), error.into());
    }
    e
}

#[cfg(test)]
mod tests;
