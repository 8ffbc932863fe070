//! What one session channel did, for the audit log: its exec command (one
//! `exec` event, with the secrets in it redacted), its shell (one `shell`
//! event) or a subsystem other than sftp (one `subsystem` event), each
//! recorded when the channel ends, with how it ended, its bytes and
//! duration; its sftp operations (`sftp_audit`) and the recording of a pty
//! channel (`recording`). Both pumps of the bridge share it; nothing here
//! holds a lock across an await.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use portcullis_protocol::feed::UnixMillis;
use portcullis_protocol::ssh::recording::{RecordingMeta, recording_id};

use super::conn::Conn;
use super::recording::{Recorder, Screen};
use super::sftp_audit::SftpAudit;
use crate::audit::command::redact_command;
use crate::clock::now_millis;

/// Longest command line recorded whole; a longer one keeps its start, and
/// `command_len` says how long it was.
const MAX_COMMAND: usize = 16 * 1024;

/// What the channel was asked to run, being followed.
struct Request {
    what: What,
    at: UnixMillis,
    since: Instant,
}

/// The kinds of request a session channel makes.
enum What {
    /// A command line.
    Exec(String),
    /// A login shell.
    Shell,
    /// A subsystem other than sftp (which is followed operation by operation).
    Subsystem(String),
}

/// How the command ended.
enum Exit {
    Status(u32),
    Signal(String),
}

/// The audit state of one channel.
pub struct ChannelAudit {
    conn: Arc<Conn>,
    request: Mutex<Option<Request>>,
    /// Bytes from the client, and from the server (stdout and stderr).
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    exit: Mutex<Option<Exit>>,
    pty: Mutex<Option<Screen>>,
    sftp: OnceLock<SftpAudit>,
    recorder: OnceLock<Recorder>,
}

impl ChannelAudit {
    /// Nothing seen yet on a channel of `conn`.
    pub fn new(conn: Arc<Conn>) -> ChannelAudit {
        ChannelAudit {
            conn,
            request: Mutex::new(None),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            exit: Mutex::new(None),
            pty: Mutex::new(None),
            sftp: OnceLock::new(),
            recorder: OnceLock::new(),
        }
    }

    /// The client asked for a pty.
    pub fn pty(&self, term: &str, width: u32, height: u32) {
        if let Ok(mut p) = self.pty.lock() {
            // A client without a terminal (`ssh -tt` from a script) sends 0x0.
            let (width, height) = if width == 0 || height == 0 {
                (80, 24)
            } else {
                (width, height)
            };
            *p = Some(Screen {
                term: term.to_owned(),
                width,
                height,
            });
        }
    }

    /// The client asked for a shell; with a pty, it is recorded.
    pub fn shell(&self) {
        self.follow(What::Shell);
        self.record_pty();
    }

    /// The client asked to run `command`.
    pub fn exec(&self, command: &[u8]) {
        let command = String::from_utf8_lossy(command).into_owned();
        // `sftp -s /usr/lib/openssh/sftp-server` runs the server as a
        // command: its operations are followed one by one all the same.
        if runs_sftp_server(&command) {
            self.follow_sftp();
        }
        self.follow(What::Exec(command));
        // `ssh -t host top` is as interactive as a shell.
        self.record_pty();
    }

    /// The client asked for a subsystem; sftp is followed operation by operation.
    pub fn subsystem(&self, name: &str) {
        if name == "sftp" {
            self.follow_sftp();
        } else {
            self.follow(What::Subsystem(name.to_owned()));
        }
    }

    fn follow_sftp(&self) {
        if let Some(session) = &self.conn.audit {
            let _ = self.sftp.set(SftpAudit::new(Arc::clone(session)));
        }
    }

    /// From now on the channel runs `what`.
    fn follow(&self, what: What) {
        if let Ok(mut r) = self.request.lock() {
            *r = Some(Request {
                what,
                at: now_millis(),
                since: Instant::now(),
            });
        }
    }

    /// Bytes from the client: sftp requests are followed (no copy is
    /// kept). `false` when the sftp stream can no longer be followed: then
    /// the bytes must not be relayed (the session is being cut).
    pub async fn from_client(&self, data: &[u8]) -> bool {
        self.bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
        let Some(sftp) = self.sftp.get() else { return true };
        let (events, followed) = sftp.from_client(data);
        for e in events {
            self.conn.proxy.audit.record(e).await;
        }
        followed
    }

    /// Bytes from the server: sftp answers followed, pty output recorded.
    pub async fn from_server(&self, data: &Bytes) {
        self.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(r) = self.recorder.get() {
            r.output(data).await;
        }
        if let Some(sftp) = self.sftp.get() {
            for e in sftp.from_server(data) {
                self.conn.proxy.audit.record(e).await;
            }
        }
    }

    /// Stderr from the server: shown on the terminal, so recorded, never sftp.
    pub async fn from_server_stderr(&self, data: &Bytes) {
        self.bytes_out.fetch_add(data.len() as u64, Ordering::Relaxed);
        if let Some(r) = self.recorder.get() {
            r.output(data).await;
        }
    }

    /// The window changed size.
    pub async fn resize(&self, cols: u32, rows: u32) {
        if let Some(r) = self.recorder.get() {
            r.resize(cols, rows).await;
        }
    }

    /// The server reported the command's exit status.
    pub fn exit_status(&self, status: u32) {
        if let Ok(mut x) = self.exit.lock() {
            *x = Some(Exit::Status(status));
        }
    }

    /// The server reported the signal that ended the command.
    pub fn exit_signal(&self, signal: String) {
        if let Ok(mut x) = self.exit.lock() {
            *x = Some(Exit::Signal(signal));
        }
    }

    /// The channel is over: its exec, shell or subsystem event and what
    /// sftp left open are recorded.
    pub async fn finish(&self) {
        let mut events = self.sftp.get().map(SftpAudit::finish).unwrap_or_default();
        if let Some(e) = self.request_event() {
            events.insert(0, e);
        }
        for e in events {
            self.conn.proxy.audit.record(e).await;
        }
    }

    fn request_event(&self) -> Option<portcullis_protocol::audit::AuditEvent> {
        let audit = self.conn.audit.as_ref()?;
        let request = self.request.lock().ok()?.take()?;
        let action = match &request.what {
            What::Exec(_) => "exec",
            What::Shell => "shell",
            What::Subsystem(_) => "subsystem",
        };
        let mut e = audit.event(action);
        e.at = request.at;
        let d = &mut e.detail;
        match request.what {
            What::Exec(command) => command_detail(command, d),
            What::Subsystem(name) => {
                d.insert("name".into(), name);
            }
            What::Shell => {}
        }
        let exit = self.exit.lock().ok().and_then(|mut x| x.take());
        match exit {
            Some(Exit::Status(status)) => {
                d.insert("outcome".into(), "exited".into());
                d.insert("exit_status".into(), status.to_string());
            }
            Some(Exit::Signal(signal)) => {
                d.insert("outcome".into(), "signal".into());
                d.insert("exit_signal".into(), signal);
            }
            None => {
                // Cut, or the connection went first.
                let how = self.conn.ended.get().copied().unwrap_or("interrupted");
                d.insert("outcome".into(), "interrupted".into());
                d.insert("ended".into(), how.into());
            }
        }
        if self.recorder.get().is_some() {
            d.insert("pty".into(), "true".into());
        }
        d.insert("bytes_in".into(), self.bytes_in.load(Ordering::Relaxed).to_string());
        d.insert("bytes_out".into(), self.bytes_out.load(Ordering::Relaxed).to_string());
        d.insert("duration_ms".into(), request.since.elapsed().as_millis().to_string());
        Some(e)
    }

    /// Starts the recording of this channel, if it has a pty and none started yet.
    fn record_pty(&self) {
        let Some(screen) = self.pty.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        let (Some(audit), Some(session)) = (&self.conn.audit, &self.conn.session) else {
            return;
        };
        let n = self.conn.ptys.fetch_add(1, Ordering::Relaxed) + 1;
        let meta = RecordingMeta {
            id: recording_id(&session.info.id, n),
            session_id: session.info.id.clone(),
            user: audit.user.clone(),
            resource: audit.resource.clone(),
            role: audit.role.clone(),
            started_at: now_millis(),
        };
        // Creates two small files, once per pty channel: cheap enough to do inline.
        match Recorder::start(&self.conn.proxy.settings.data_dir, &meta, &screen) {
            Ok(r) => {
                let _ = self.recorder.set(r);
                if let Ok(mut list) = self.conn.recordings.lock() {
                    list.push(format!("{}.cast", meta.id));
                }
            }
            Err(e) => {
                tracing::warn!(session = %meta.session_id, error = %e, "cannot record the pty session");
            }
        }
    }
}

/// Whether a command line starts an sftp server (`sftp-server`, by any
/// path, with any options): its stdin and stdout are then an sftp stream.
fn runs_sftp_server(command: &str) -> bool {
    let program = command.split_whitespace().next().unwrap_or_default();
    program.rsplit('/').next() == Some("sftp-server")
}

/// An exec event's command line: redacted, and cut past `MAX_COMMAND`.
fn command_detail(mut command: String, d: &mut std::collections::BTreeMap<String, String>) {
    if command.len() > MAX_COMMAND {
        d.insert("command_len".into(), command.len().to_string());
        let mut cut = MAX_COMMAND;
        while !command.is_char_boundary(cut) {
            cut -= 1;
        }
        command.truncate(cut);
    }
    match redact_command(&command) {
        Some(redacted) => {
            d.insert("command".into(), redacted);
            d.insert("redacted".into(), "true".into());
        }
        None => {
            d.insert("command".into(), command);
        }
    }
}
