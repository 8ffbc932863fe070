//! What the tracker records of one statement: its text (cut past
//! `MAX_TEXT`, with length and hash), bound values, COPY, outcome and timing.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::super::capture::TextDigest;
use super::MAX_TEXT;
use crate::audit::detail::Fields;

/// Statement text, cut to `MAX_TEXT` when longer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    /// The text, or its first `MAX_TEXT` bytes (cut on a character boundary).
    pub text: String,
    /// Length of the whole text in bytes.
    pub len: usize,
    /// SHA-256 (hex) of the whole text, when it was cut.
    pub sha256: Option<String>,
    /// What the audit makes of this text, worked out once however often a
    /// prepared statement runs.
    pub rendered: OnceLock<Rendered>,
}

/// What the audit makes of a statement's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// Its detail fields: class, tables, the text with passwords redacted.
    pub fields: Arc<Fields>,
    /// Whether a password was redacted.
    pub redacted: bool,
    /// Bound parameters (`$n`, from 1) written where a password goes:
    /// their values are never shown.
    pub secret_params: Box<[usize]>,
    /// Makes, uses or drops a prepared statement or cursor by name in SQL,
    /// which the audit follows per session.
    pub names: bool,
    /// Controls the transaction (a COMMIT, a savepoint), which may close
    /// the session's cursors and portals: followed while it holds some.
    pub transaction: bool,
}

impl Text {
    /// `raw` as statement text, cut past `MAX_TEXT` with its length and hash.
    pub fn new(raw: &[u8]) -> Text {
        if raw.len() <= MAX_TEXT {
            return Text {
                text: lossy(raw),
                len: raw.len(),
                sha256: None,
                rendered: OnceLock::new(),
            };
        }
        Text::cut(raw, raw.len(), Sha256::digest(raw).into())
    }

    /// The first bytes of a text of `len` bytes whose SHA-256 is `sha256`.
    pub(super) fn cut(first: &[u8], len: usize, sha256: [u8; 32]) -> Text {
        let first = &first[..first.len().min(MAX_TEXT)];
        // Cut before a character split in two; other invalid bytes are shown lossily.
        let end = match std::str::from_utf8(first) {
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            _ => first.len(),
        };
        Text {
            text: lossy(&first[..end]),
            len,
            sha256: Some(hex(&sha256)),
            rendered: OnceLock::new(),
        }
    }

    /// This text's first `keep` bytes (on a character boundary), with the
    /// whole text's length and hash.
    pub(super) fn shortened(self, keep: usize) -> Text {
        let sha256 = match self.sha256 {
            Some(sha) => sha,
            None => hex(&Sha256::digest(self.text.as_bytes()).into()),
        };
        let mut end = keep.min(self.text.len());
        while !self.text.is_char_boundary(end) {
            end -= 1;
        }
        let mut text = self.text;
        text.truncate(end);
        text.shrink_to_fit();
        Text {
            text,
            len: self.len,
            sha256: Some(sha256),
            rendered: OnceLock::new(),
        }
    }

    /// `Text::of(body, None)` written over this one, in its room.
    pub(super) fn refill(&mut self, body: &[u8]) {
        let sent = up_to_nul(body);
        if sent.len() > MAX_TEXT {
            *self = Text::new(sent);
            return;
        }
        self.text.clear();
        push_lossy(&mut self.text, sent);
        self.len = sent.len();
        self.sha256 = None;
        self.rendered = OnceLock::new();
    }

    /// Whether this is the whole text at the start of `body` (a
    /// NUL-terminated string), as it was sent.
    pub(super) fn is(&self, body: &[u8]) -> bool {
        let sent = up_to_nul(body);
        self.sha256.is_none() && self.len == sent.len() && self.text.as_bytes() == sent
    }

    /// The text of a message body that may have been cut: the whole
    /// NUL-terminated string at the start of `body`, or its first bytes and
    /// the digest of the whole.
    pub(super) fn of(body: &[u8], digest: Option<TextDigest>) -> Text {
        let sent = up_to_nul(body);
        match digest {
            Some(d) => Text::cut(sent, d.len, d.sha256),
            None => Text::new(sent),
        }
    }
}

/// A SHA-256 in hex.
fn hex(sha256: &[u8; 32]) -> String {
    sha256.iter().map(|b| format!("{b:02x}")).collect()
}

/// The NUL-terminated string at the start of `body` (all of it when cut
/// before its NUL).
fn up_to_nul(body: &[u8]) -> &[u8] {
    &body[..body.iter().position(|&b| b == 0).unwrap_or(body.len())]
}

/// `raw` as text, invalid bytes shown as U+FFFD. Valid text (nearly all)
/// takes `from_utf8`'s word-at-a-time check, where the lossy decoder goes a
/// byte at a time: this runs for every statement.
fn lossy(raw: &[u8]) -> String {
    let mut text = String::with_capacity(raw.len());
    push_lossy(&mut text, raw);
    text
}

/// Appends `raw` as `lossy` reads it.
pub(super) fn push_lossy(out: &mut String, raw: &[u8]) {
    match std::str::from_utf8(raw) {
        Ok(text) => out.push_str(text),
        Err(_) => out.push_str(&String::from_utf8_lossy(raw)),
    }
}

/// A bound parameter value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Param {
    /// SQL NULL.
    Null,
    /// A text-format value (cut to `MAX_PARAM` bytes).
    Text(String),
    /// A binary-format value of a type not decoded here: only its length is kept.
    /// (Values of common types become [`Param::Text`], in their text form.)
    Binary(usize),
    /// A value past the per-Bind budget: only its length is kept.
    Omitted(usize),
    /// A value in the part of an over-long Bind that was not kept (past
    /// [`MAX_BODY`](crate::pg::capture::MAX_BODY)): not even its length is known.
    Unseen,
}

/// One command's completion: its tag (`SELECT 3`, `INSERT 0 1`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The command tag as the server sent it (shared by the completions
    /// of one session that carry the same tag).
    pub tag: Arc<str>,
    /// Rows, when the tag carries a count.
    pub rows: Option<u64>,
}

/// How a statement ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed: one completion per command (a simple Query may hold several).
    Done(Vec<Completion>),
    /// The server reported an error.
    Failed {
        /// SQLSTATE.
        sqlstate: String,
        /// The server's message.
        message: String,
        /// Commands of a simple Query that completed before the error (a
        /// `DELETE` that committed before a later statement failed).
        done: Vec<Completion>,
    },
    /// A portal that stopped at an Execute's row limit (PortalSuspended)
    /// and was not run to its end: closed or bound again, its transaction
    /// or the session ended, or too many such runs waited.
    Suspended,
    /// Skipped by the server after an earlier error in the same pipeline.
    NotRun,
    /// The session ended (cut, or either side closed) before the outcome came.
    Interrupted,
    /// Sent after the audit stopped following the session's outcomes (see
    /// `StatementTracker::lost`), or awaiting its outcome then.
    NotFollowed,
}

/// Which protocol carried the statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Query.
    Simple,
    /// Parse, Bind, Execute.
    Extended,
    /// FunctionCall.
    Function,
}

/// COPY in a statement: which way and how many bytes of CopyData.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copy {
    /// True for COPY FROM STDIN (client to server).
    pub inbound: bool,
    /// CopyData payload bytes.
    pub bytes: u64,
}

/// One executed (or attempted) statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// Simple or extended protocol.
    pub flow: Flow,
    /// The SQL text.
    pub text: Arc<Text>,
    /// Prepared statement name (extended; empty for the unnamed one).
    pub statement: Arc<str>,
    /// Portal name (extended; empty for the unnamed one).
    pub portal: String,
    /// Bound parameters (extended).
    pub params: Arc<[Param]>,
    /// How many parameters the Bind carried: `params` holds none when the
    /// session's audit budget could not keep even their slots.
    pub param_count: usize,
    /// COPY, if the statement ran one.
    pub copy: Option<Copy>,
    /// How it ended.
    pub outcome: Outcome,
    /// When the client sent it (a portal run in pieces: its first Execute).
    pub started: Instant,
    /// From sending to its outcome.
    pub duration: Duration,
    /// The Execute's row limit (0: none).
    pub max_rows: u32,
    /// Which Bind of its portal ran: the pieces of one portal's run share it.
    pub binding: u64,
    /// Executes this record covers: more than one for a portal run in
    /// pieces (a driver's cursor, JDBC's fetch size), which is one record.
    pub executes: u32,
    /// Rows the portal's earlier Executes returned, each stopping at its
    /// limit; the outcome's tags count only the last one's.
    pub fetched: u64,
}

/// A statement of `flow` sent `now`, with no names, parameters or outcome yet.
pub(super) fn statement(flow: Flow, text: Arc<Text>, now: Instant) -> Statement {
    Statement {
        flow,
        text,
        statement: super::names::shared_name(""),
        portal: String::new(),
        params: no_params(),
        param_count: 0,
        copy: None,
        outcome: Outcome::Done(Vec::new()),
        started: now,
        duration: Duration::ZERO,
        max_rows: 0,
        binding: 0,
        executes: 1,
        fetched: 0,
    }
}

/// No parameters, shared: a statement of the simple protocol allocates none.
pub(super) fn no_params() -> Arc<[Param]> {
    static NONE: std::sync::LazyLock<Arc<[Param]>> = std::sync::LazyLock::new(|| Arc::from([]));
    Arc::clone(&NONE)
}
