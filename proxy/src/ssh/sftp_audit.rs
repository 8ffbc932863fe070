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

    /// Bytes the client sent; the events they complete.
    pub fn from_client(&self, data: &[u8]) -> Vec<AuditEvent> {
        self.feed(Side::Client, data)
    }

    /// Whether the stream can no longer be followed: nothing more of the
    /// client's may reach the server.
    pub fn stopped(&self) -> bool {
        self.state.lock().map_or(true, |t| t.stopped)
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
                    let f = OpenFile {
                        path,
                        pflags,
                        read: 0,
                        written: 0,
                    };
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
                        let f = OpenFile {
                            path,
                            pflags,
                            read: 0,
                            written: 0,
                        };
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

    fn status(id: u32, code: u32, message: &[u8]) -> Vec<u8> {
        packet(101, &[&id.to_be_bytes(), &code.to_be_bytes(), &s(message), &s(b"")])
    }

    #[test]
    fn a_request_id_used_again_before_its_answer_stops_the_audit() {
        let a = SftpAudit::new(session());
        let mut events = a.from_client(&packet(13, &[&7u32.to_be_bytes(), &s(b"/a")]));
        events.extend(a.from_client(&packet(13, &[&7u32.to_be_bytes(), &s(b"/b")])));
        let ops: Vec<(&str, &str)> = events
            .iter()
            .map(|e| (e.detail["op"].as_str(), e.detail.get("path").map_or("", String::as_str)))
            .collect();
        assert_eq!(ops, [("remove", "/a"), ("unparseable", "")], "{events:?}");
        assert_eq!(events[0].detail["outcome"], "interrupted");
        assert_eq!(events[1].detail["why"], "request id 7 used again before its answer");
        assert!(a.from_server(&ok(7)).is_empty(), "nothing is followed after");
    }

    #[test]
    fn an_unfollowed_request_keeps_its_id_from_another_s_answer() {
        // An unknown extension, then a remove under the same id: the
        // extension's answer must not be taken for the remove's.
        let a = SftpAudit::new(session());
        let mut events = a.from_client(&packet(200, &[&9u32.to_be_bytes(), &s(b"x@example.com")]));
        events.extend(a.from_client(&packet(13, &[&9u32.to_be_bytes(), &s(b"/a")])));
        assert_eq!(events.last().map(|e| e.detail["op"].as_str()), Some("unparseable"));
    }

    #[test]
    fn looking_is_recorded_as_well_as_changing() {
        let a = SftpAudit::new(session());
        let id = |n: u32| n.to_be_bytes();
        let mut events = Vec::new();
        // opendir (a HANDLE), stat (ATTRS), realpath (NAME), readlink (a failure), statvfs.
        events.extend(a.from_client(&packet(11, &[&id(1), &s(b"/etc")])));
        events.extend(a.from_client(&packet(17, &[&id(2), &s(b"/etc/passwd")])));
        events.extend(a.from_client(&packet(16, &[&id(3), &s(b".")])));
        events.extend(a.from_client(&packet(19, &[&id(4), &s(b"/nope")])));
        events.extend(a.from_client(&packet(200, &[&id(5), &s(b"statvfs@openssh.com"), &s(b"/")])));
        events.extend(a.from_client(&packet(12, &[&id(6), &s(b"D")])));
        events.extend(a.from_server(&packet(102, &[&id(1), &s(b"D")])));
        events.extend(a.from_server(&packet(105, &[&id(2), &0u32.to_be_bytes()])));
        events.extend(a.from_server(&packet(104, &[&id(3), &1u32.to_be_bytes(), &s(b"/home/a")])));
        events.extend(a.from_server(&status(4, 2, b"No such file")));
        events.extend(a.from_server(&packet(201, &[&id(5), &[0; 88]])));
        events.extend(a.from_server(&packet(104, &[&id(6), &0u32.to_be_bytes()])));
        let seen: Vec<(&str, &str, &str)> = events
            .iter()
            .map(|e| {
                let d = &e.detail;
                (d["op"].as_str(), d["path"].as_str(), d["outcome"].as_str())
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("opendir", "/etc", "ok"),
                ("stat", "/etc/passwd", "ok"),
                ("realpath", ".", "ok"),
                ("readlink", "/nope", "no_such_file"),
                ("statvfs", "/", "ok"),
            ]
        );
    }

    #[test]
    fn a_server_side_copy_and_an_unknown_extension_are_recorded() {
        let a = SftpAudit::new(session());
        let id = |n: u32| n.to_be_bytes();
        let open =
            |n: u32, path: &[u8], flags: u32| packet(3, &[&id(n), &s(path), &flags.to_be_bytes(), &0u32.to_be_bytes()]);
        let mut events = a.from_client(&[open(1, b"/src", 1), open(2, b"/dst", 0x1a)].concat());
        events.extend(a.from_server(&[packet(102, &[&id(1), &s(b"R")]), packet(102, &[&id(2), &s(b"W")])].concat()));
        events.extend(a.from_client(&packet(
            200,
            &[
                &id(3),
                &s(b"copy-data"),
                &s(b"R"),
                &0u64.to_be_bytes(),
                &0u64.to_be_bytes(),
                &s(b"W"),
                &0u64.to_be_bytes(),
            ],
        )));
        events.extend(a.from_client(&packet(200, &[&id(4), &s(b"wipe@example.com"), &s(b"/")])));
        events.extend(a.from_server(&[ok(3), status(4, 8, b"Unsupported")].concat()));
        // A close the server fails still tells what went through the file.
        events.extend(a.from_client(&packet(4, &[&id(5), &s(b"W")])));
        events.extend(a.from_server(&status(5, 4, b"Failure")));
        assert_eq!(events.len(), 3, "{events:?}");
        let d = &events[0].detail;
        assert_eq!(
            (
                d["op"].as_str(),
                d["path"].as_str(),
                d["to"].as_str(),
                d["length"].as_str(),
                d["outcome"].as_str()
            ),
            ("copy-data", "/src", "/dst", "0", "ok")
        );
        let d = &events[1].detail;
        assert_eq!(
            (d["op"].as_str(), d["extension"].as_str(), d["outcome"].as_str()),
            ("extension", "wipe@example.com", "op_unsupported")
        );
        let d = &events[2].detail;
        assert_eq!(
            (
                d["op"].as_str(),
                d["path"].as_str(),
                d["outcome"].as_str(),
                d["bytes_written"].as_str()
            ),
            ("open", "/dst", "failure", "0")
        );
    }
}
