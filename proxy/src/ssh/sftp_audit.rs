//! One audit event per sftp operation of a channel: the requests the client
//! sends are matched by id with the server's answers (STATUS, HANDLE, DATA),
//! decoded by `portcullis_protocol::ssh::sftp` from the bytes the bridge
//! relays. An open file is one event, recorded when its handle is closed,
//! with the bytes read and written through it. Everything here runs under a
//! short lock and never waits: the bridge queues the events it returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::ssh::sftp::{Attrs, Framer, Garbled, Packet, Side, open_flags, status_name};

use crate::audit::SessionAudit;

/// Requests awaiting an answer, at most; past it the stream is not followed.
const MAX_PENDING: usize = 8192;
/// Open files followed at once, at most.
const MAX_OPEN: usize = 4096;

/// A request sent, waiting for its answer.
enum Pending {
    Open { path: String, pflags: u32 },
    Close { handle: Vec<u8> },
    Read { handle: Vec<u8> },
    Write { handle: Vec<u8>, len: u64 },
    Op(Op),
}

/// A path operation and what it named.
struct Op {
    op: &'static str,
    path: String,
    to: Option<String>,
    attrs: Option<Attrs>,
}

/// A file opened through a handle.
struct OpenFile {
    path: String,
    pflags: u32,
    read: u64,
    written: u64,
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
                open: HashMap::new(),
                stopped: false,
            }),
        }
    }

    /// Bytes the client sent; the events they complete.
    pub fn from_client(&self, data: &[u8]) -> Vec<AuditEvent> {
        self.feed(Side::Client, data)
    }

    /// Bytes the server sent; the events they complete.
    pub fn from_server(&self, data: &[u8]) -> Vec<AuditEvent> {
        self.feed(Side::Server, data)
    }

    fn feed(&self, side: Side, data: &[u8]) -> Vec<AuditEvent> {
        let mut events = Vec::new();
        let Ok(mut t) = self.state.lock() else {
            return events;
        };
        if t.stopped {
            return events;
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
                return events;
            }
        }
        if let Err(e) = parsed {
            self.stop(&mut t, side, &e, &mut events);
        }
        events
    }

    /// The stream cannot be followed: one event says so, and nothing more is parsed.
    fn stop(&self, t: &mut Tracker, side: Side, why: &Garbled, events: &mut Vec<AuditEvent>) {
        t.stopped = true;
        t.pending.clear();
        events.extend(t.leftovers(&self.session));
        let mut e = self.session.event("sftp");
        e.detail.insert("op".into(), "unparseable".into());
        let from = match side {
            Side::Client => "client",
            Side::Server => "server",
        };
        e.detail.insert("from".into(), from.into());
        e.detail.insert("why".into(), why.why.clone());
        tracing::info!(session = %self.session.session_id, from, why = %why.why, "sftp stream not followed");
        events.push(e);
    }

    /// The channel ended: files still open and requests never answered.
    pub fn finish(&self) -> Vec<AuditEvent> {
        let Ok(mut t) = self.state.lock() else {
            return Vec::new();
        };
        let mut events = Vec::new();
        for (_, p) in t.pending.drain() {
            match p {
                Pending::Op(op) => events.push(op_event(&self.session, &op, "interrupted", None)),
                Pending::Open { path, pflags } => {
                    let f = OpenFile {
                        path,
                        pflags,
                        read: 0,
                        written: 0,
                    };
                    events.push(open_event(&self.session, &f, "interrupted", None, false));
                }
                _ => {}
            }
        }
        events.extend(t.leftovers(&self.session));
        events
    }
}

impl Tracker {
    /// Files still open, as events that say they were never closed.
    fn leftovers(&mut self, session: &SessionAudit) -> Vec<AuditEvent> {
        self.open
            .drain()
            .map(|(_, f)| open_event(session, &f, "ok", None, false))
            .collect()
    }

    /// Follows one packet; an error when a limit is passed.
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
            } => (id, Pending::Op(Op { op, path, to, attrs })),
            Packet::FSetStat { id, handle, attrs } => {
                let path = self
                    .open
                    .get(&handle)
                    .map_or_else(|| "(unknown handle)".to_owned(), |f| f.path.clone());
                (
                    id,
                    Pending::Op(Op {
                        op: "fsetstat",
                        path,
                        to: None,
                        attrs: Some(attrs),
                    }),
                )
            }
            Packet::Status { id, code, message } => {
                self.answered(id, code, &message, session, events);
                return Ok(());
            }
            Packet::Handle { id, handle } => {
                if let Some(Pending::Open { path, pflags }) = self.pending.remove(&id) {
                    if self.open.len() >= MAX_OPEN {
                        return Err(Garbled {
                            why: format!("more than {MAX_OPEN} files open at once"),
                        });
                    }
                    self.open.insert(
                        handle,
                        OpenFile {
                            path,
                            pflags,
                            read: 0,
                            written: 0,
                        },
                    );
                }
                return Ok(());
            }
            Packet::Data { id, len } => {
                if let Some(Pending::Read { handle }) = self.pending.remove(&id)
                    && let Some(f) = self.open.get_mut(&handle)
                {
                    f.read = f.read.saturating_add(len);
                }
                return Ok(());
            }
        };
        if self.pending.len() >= MAX_PENDING {
            return Err(Garbled {
                why: format!("more than {MAX_PENDING} requests awaiting an answer"),
            });
        }
        self.pending.insert(id, pending);
        Ok(())
    }

    /// The server's STATUS for request `id`.
    fn answered(&mut self, id: u32, code: u32, message: &str, session: &SessionAudit, events: &mut Vec<AuditEvent>) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let outcome = status_name(code);
        let error = (code != 0).then_some(message);
        match p {
            Pending::Op(op) => events.push(op_event(session, &op, &outcome, error)),
            // An open answered by a STATUS failed.
            Pending::Open { path, pflags } => {
                let f = OpenFile {
                    path,
                    pflags,
                    read: 0,
                    written: 0,
                };
                events.push(open_event(session, &f, &outcome, error, true));
            }
            Pending::Close { handle } => {
                if let Some(f) = self.open.remove(&handle) {
                    events.push(open_event(session, &f, "ok", None, true));
                }
            }
            Pending::Write { handle, len } if code == 0 => {
                if let Some(f) = self.open.get_mut(&handle) {
                    f.written = f.written.saturating_add(len);
                }
            }
            Pending::Write { .. } | Pending::Read { .. } => {}
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
    d.insert("outcome".into(), outcome.into());
    if let Some(error) = error {
        d.insert("error".into(), error.into());
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
        let body = parts.concat();
        let mut p = ((body.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(kind);
        p.extend(body);
        p
    }

    fn s(v: &[u8]) -> Vec<u8> {
        let mut out = (v.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(v);
        out
    }

    fn session() -> Arc<SessionAudit> {
        Arc::new(SessionAudit {
            user: "alice".into(),
            resource: "web1".into(),
            role: "deploy".into(),
            session_id: "ses_1".into(),
            protocol: "ssh",
            grant_id: "grt_1".into(),
            request_id: "req_1".into(),
            reason: None,
            approvers: Vec::new(),
            break_glass: false,
            redact_parameters: false,
            wall: 0,
            since: std::time::Instant::now(),
            handle: None,
        })
    }

    fn ok(id: u32) -> Vec<u8> {
        packet(101, &[&id.to_be_bytes(), &0u32.to_be_bytes(), &s(b"Success"), &s(b"")])
    }

    #[test]
    fn an_upload_is_one_event_with_its_bytes_and_a_failed_remove_another() {
        let a = SftpAudit::new(session());
        let id = |n: u32| n.to_be_bytes();
        let mut events = a.from_client(&packet(
            3,
            &[&id(1), &s(b"/tmp/u"), &0x1au32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        events.extend(a.from_server(&packet(102, &[&id(1), &s(b"H")])));
        for (n, len) in [(2u32, 1000usize), (3, 500)] {
            events.extend(a.from_client(&packet(6, &[&id(n), &s(b"H"), &0u64.to_be_bytes(), &s(&vec![0; len])])));
        }
        events.extend(a.from_server(&[ok(2), ok(3)].concat()));
        events.extend(a.from_client(&packet(4, &[&id(4), &s(b"H")])));
        assert!(events.is_empty(), "nothing until the close is answered");
        events.extend(a.from_server(&ok(4)));
        events.extend(a.from_client(&packet(13, &[&id(5), &s(b"/nope")])));
        events.extend(a.from_server(&packet(
            101,
            &[&id(5), &2u32.to_be_bytes(), &s(b"No such file"), &s(b"")],
        )));
        assert_eq!(events.len(), 2, "{events:?}");
        let d = &events[0].detail;
        for (k, v) in [
            ("op", "open"),
            ("path", "/tmp/u"),
            ("flags", "write,create,truncate"),
            ("bytes_written", "1500"),
            ("bytes_read", "0"),
            ("outcome", "ok"),
            ("protocol", "ssh"),
        ] {
            assert_eq!(d.get(k).map(String::as_str), Some(v), "{k}");
        }
        let d = &events[1].detail;
        assert_eq!(
            (
                d["op"].as_str(),
                d["path"].as_str(),
                d["outcome"].as_str(),
                d["error"].as_str()
            ),
            ("remove", "/nope", "no_such_file", "No such file")
        );
    }

    #[test]
    fn garbage_is_one_event_then_silence() {
        let a = SftpAudit::new(session());
        let events = a.from_client(b"\xff\xff\xff\xff garbage");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].detail["op"], "unparseable");
        assert!(a.from_client(&[0u8; 64]).is_empty());
        assert!(a.from_server(&ok(1)).is_empty());
    }

    #[test]
    fn an_unanswered_open_file_is_recorded_at_the_end() {
        let a = SftpAudit::new(session());
        let _ = a.from_client(&packet(
            3,
            &[&1u32.to_be_bytes(), &s(b"/r"), &1u32.to_be_bytes(), &0u32.to_be_bytes()],
        ));
        let _ = a.from_server(&packet(102, &[&1u32.to_be_bytes(), &s(b"H")]));
        let _ = a.from_client(&packet(
            5,
            &[
                &2u32.to_be_bytes(),
                &s(b"H"),
                &0u64.to_be_bytes(),
                &4096u32.to_be_bytes(),
            ],
        ));
        let _ = a.from_server(&packet(103, &[&2u32.to_be_bytes(), &s(&[7; 100])]));
        let events = a.finish();
        assert_eq!(events.len(), 1);
        let d = &events[0].detail;
        assert_eq!(
            (d["bytes_read"].as_str(), d["closed"].as_str(), d["flags"].as_str()),
            ("100", "false", "read")
        );
    }
}
