//! One record per statement a session runs, from both directions of its
//! stream: the simple protocol's Query, or the extended protocol's Parse,
//! Bind and Execute tied together, with the outcome (command tags and rows,
//! or the error's SQLSTATE), COPY direction and bytes, and the duration.
//! Sans-I/O: the caller hands it whole messages (`client`, `server`) with
//! the time they passed; it answers the statements that completed, in order.
//!
//! `client` reads what each client message asks and `server` what each
//! server message answers. Binary-format parameter values of common types
//! are shown in their text form (`binary`), typed by the Parse or the
//! server's ParameterDescription.
//! `names` keeps what the session prepared and bound; `bind` reads a Bind;
//! `record` is what one statement's record holds; `errors` what an error
//! fails and what the server skips after it; `copy` follows COPY;
//! `suspended` makes a portal run in pieces one record; `sql` learns from
//! the audit what SQL `PREPARE`s and cursors did; `transaction` lets go
//! what ends with a transaction; `lost` records by their text what runs
//! once tracking had to stop.
//!
//! Responses come back in request order, so the tracker keeps a queue of
//! what each client message expects; after an error in the extended
//! protocol the server skips everything up to the next Sync, and so does
//! the queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::capture::{Message, TextDigest};
use super::message::read_i32;

mod binary;
mod bind;
mod client;
mod copy;
mod errors;
mod lost;
mod names;
mod record;
mod server;
mod sql;
mod suspended;
mod transaction;

pub use lost::Lost;
use names::{Names, Portal, Prepared};
pub use record::{Completion, Copy, Flow, Outcome, Param, Rendered, Statement, Text};

/// Statement text kept per record; longer text is cut, with its length and hash.
pub const MAX_TEXT: usize = 64 * 1024;
/// Bytes kept of one parameter value.
pub const MAX_PARAM: usize = 1024;
/// Prepared statements and portals remembered per session.
const MAX_NAMES: usize = 10_000;
/// Bytes of statement text and parameters remembered per session; past it
/// new statements keep their first `KEPT_PAST_BUDGET` bytes, length and hash.
const MAX_KEPT: usize = 8 * 1024 * 1024;
/// Bytes of text a prepared statement keeps past the session's budget:
/// enough to tell what it is (at most `MAX_NAMES` of them).
const KEPT_PAST_BUDGET: usize = 256;
/// Bytes of parameter values kept per Bind.
const MAX_PARAMS_KEPT: usize = 64 * 1024;
/// Parameter types remembered per prepared statement; a statement with more
/// shows its binary values by length only.
const MAX_TYPES: usize = 1024;
/// Command tags a session's completions share.
const RECENT_TAGS: usize = 8;
/// Longest text whose room a session keeps for its next Query.
const RECYCLED_TEXT: usize = 4096;
/// Messages awaiting an answer; past it the tracker gives up on the session
/// (see [`StatementTracker::lost`]) rather than grow.
const MAX_EXPECT: usize = 100_000;

/// What a client message waits for.
enum Expect {
    Run(Statement),
    /// A Parse, applied to `prepared` as it was sent (so the Binds sent
    /// with it find it), with what it replaced: restored if the server
    /// refuses or skips it (a name that exists already fails with 42P05).
    Parse {
        name: String,
        old: Option<Prepared>,
    },
    /// A Close of a prepared statement, with what it removed, likewise.
    Close {
        name: String,
        old: Option<Prepared>,
    },
    /// A Bind of a named portal, likewise: a name that holds a portal (or
    /// a SQL cursor) already fails with 42P03, and the old one runs on.
    /// The unnamed portal's Binds are `Other`: the server replaces it.
    Bind {
        name: String,
        old: Option<Portal>,
        /// The new portal's `binding`.
        binding: u64,
    },
    /// Describe of a prepared statement: its ParameterDescription types
    /// it, if the name still holds that text when the answer comes.
    Describe(String, Option<Arc<Text>>),
    /// A Close of a portal (its run that stopped at a row limit ends
    /// there), with what it removed: back if the server skips it.
    ClosePortal {
        name: String,
        old: Option<Portal>,
    },
    Other,
    Sync,
    /// Where the client's CopyData began (after a statement that may be a
    /// COPY IN): a Sync before it was read within the COPY, if it is one.
    Data,
    /// Where the client ended a COPY IN (CopyDone or CopyFail).
    CopyEnd,
}

impl Expect {
    /// A place in the client's stream, answered by nothing.
    fn is_marker(&self) -> bool {
        matches!(self, Expect::Data | Expect::CopyEnd)
    }
}

/// Follows one session's statements.
#[derive(Default)]
pub struct StatementTracker {
    prepared: Names<Prepared>,
    portals: Names<Portal>,
    expect: VecDeque<Expect>,
    /// After an extended-protocol error, until its ReadyForQuery: the batch
    /// failed (a later error in it is not another statement's).
    skipping: bool,
    /// After an extended-protocol error, when the client had not yet sent
    /// the Sync that ends the batch: the server discards what the client
    /// sends up to that Sync. Messages sent after it (the client may have
    /// sent them before the error arrived) are read as usual.
    discarding: bool,
    /// In a COPY IN the server confirmed and the client has not ended:
    /// the server ignores Sync there.
    copy_in: bool,
    /// The server is in a COPY IN (from its CopyInResponse to the COPY's
    /// end).
    copying_in: bool,
    /// Text and parameter bytes held in `prepared` and `portals`.
    kept: usize,
    /// Tracking stopped, and why (see `Lost`).
    lost: Option<Lost>,
    /// Statements awaiting their outcome when tracking stopped.
    unfollowed: usize,
    /// Statements recorded without their outcome since tracking stopped,
    /// for the caller to take (`abandoned`).
    abandoned: Vec<Statement>,
    /// The last few command tags, shared by the completions that repeat
    /// them (a transaction's BEGIN, UPDATE 1, ..., COMMIT).
    tags: VecDeque<Arc<str>>,
    /// An empty list with room, from a statement handed back (`recycle`),
    /// for the next statement's completions.
    completions: Vec<Completion>,
    /// A simple Query's text handed back, whose room the next one takes.
    spare_text: Option<Arc<Text>>,
    /// Bound portals so far: each Bind's number (`Statement::binding`).
    bindings: u64,
    /// Runs of portals that stopped at an Execute's row limit, awaiting
    /// the portal's next Execute (see `suspended`).
    suspended: Vec<Statement>,
    /// The last FATAL (or PANIC) the server sent: why it ended the
    /// session, when it did (see `fatal`).
    fatal: Option<String>,
    /// The transaction so far, and whether one ended (see `transaction`).
    transaction: transaction::Transaction,
    /// The transaction's savepoints, oldest first, each with the bindings
    /// made before it (see `sql_savepoint`).
    savepoints: Vec<(Box<str>, u64)>,
}

impl StatementTracker {
    /// A tracker for a new session.
    pub fn new() -> StatementTracker {
        StatementTracker::default()
    }

    fn push(&mut self, e: Expect) {
        if self.lost.is_some() {
            return;
        }
        // The server discards everything but Sync after an error, and
        // ignores Sync during an extended COPY IN: so does the queue.
        if (self.discarding && !matches!(e, Expect::Sync)) || (self.copy_in && matches!(e, Expect::Sync)) {
            return;
        }
        if matches!(e, Expect::Sync) {
            self.discarding = false;
        }
        // A marker after nothing marks nothing.
        if e.is_marker() && self.expect.is_empty() {
            return;
        }
        if self.expect.len() >= MAX_EXPECT {
            return self.give_up(Lost::InFlight);
        }
        self.expect.push_back(e);
    }

    /// Takes back a statement the caller is done with: the room it holds
    /// goes to the next statements (its completion list and a Query's text
    /// here, its bound values to the next Bind of its portal), which then
    /// allocate nothing.
    pub fn recycle(&mut self, s: Statement) {
        if let Outcome::Done(mut list) = s.outcome
            && list.capacity() <= 4
        {
            list.clear();
            self.completions = list;
        }
        let mut text = s.text;
        if s.flow == Flow::Simple && text.text.capacity() <= RECYCLED_TEXT && Arc::get_mut(&mut text).is_some() {
            self.spare_text = Some(text);
        }
    }

    /// The text of a Query's `body`: in the room of a recycled one when
    /// there is one and the text came whole.
    fn query_text(&mut self, body: &[u8], digest: Option<TextDigest>) -> Arc<Text> {
        if digest.is_none()
            && let Some(mut spare) = self.spare_text.take()
            && let Some(text) = Arc::get_mut(&mut spare)
        {
            text.refill(body);
            return spare;
        }
        Arc::new(Text::of(body, digest))
    }

    /// A list for a statement's completions, with room when one was recycled.
    fn completion_list(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// A completion of `tag`, sharing the string of a recent one that had it.
    fn completion(&mut self, tag: &str) -> Completion {
        let shared = match self.tags.iter().find(|t| ***t == *tag) {
            Some(known) => Arc::clone(known),
            None => {
                if self.tags.len() == RECENT_TAGS {
                    self.tags.pop_front();
                }
                let new: Arc<str> = Arc::from(tag);
                self.tags.push_back(Arc::clone(&new));
                new
            }
        };
        Completion {
            tag: shared,
            rows: tag.rsplit(' ').next().and_then(|n| n.parse().ok()),
        }
    }

    /// Statement text as kept: whole, or past the session's budget its
    /// first bytes, length and hash.
    fn keep_text(&mut self, text: Text) -> Text {
        if self.kept + text.text.len() > MAX_KEPT {
            return text.shortened(KEPT_PAST_BUDGET);
        }
        self.kept += text.text.len();
        text
    }

    /// A whole message from the client. Malformed ones are ignored here: the
    /// server rejects them and its error is what gets recorded.
    pub fn client(&mut self, tag: u8, body: &[u8], now: Instant) {
        self.client_message(&Message::whole(tag, body), now);
    }

    /// A message from the client, as [`Capture`](super::capture::Capture)
    /// passes it: its body may be cut, with the digest of its text.
    pub fn client_message(&mut self, m: &Message<'_>, now: Instant) {
        self.settle();
        if self.lost.is_none() {
            self.followed_message(m, now);
        }
        // Also the message that made tracking stop.
        if self.lost.is_some() {
            self.unfollowed_message(m, now);
        }
    }

    /// The session ended: statements sent and not answered go to `out` as
    /// interrupted (a query the cut stopped is recorded all the same), or
    /// as failed when the server's error came first (a backend terminated
    /// under the session says why before it closes).
    pub fn interrupt(&mut self, now: Instant, out: &mut Vec<Statement>) {
        out.append(&mut self.abandoned);
        let expect = std::mem::take(&mut self.expect);
        for e in expect {
            if let Expect::Run(mut s) = e {
                self.answered(&mut s, out);
                if !matches!(s.outcome, Outcome::Failed { .. }) {
                    s.outcome = Outcome::Interrupted;
                }
                s.duration = now.saturating_duration_since(s.started);
                out.push(s);
            }
        }
        out.append(&mut self.suspended);
    }

    /// A whole message from the server; completed statements go to `out`.
    pub fn server(&mut self, tag: u8, body: &[u8], now: Instant, out: &mut Vec<Statement>) {
        self.server_message(&Message::whole(tag, body), now, out);
    }

    /// The front item, answered; markers that come to the front with no
    /// statement before them mark nothing and go too.
    fn pop_front(&mut self) -> Option<Expect> {
        let e = self.expect.pop_front();
        while self.expect.front().is_some_and(Expect::is_marker) {
            self.expect.pop_front();
        }
        e
    }

    /// A statement ended at `now`: the next one sent ahead (a pipeline)
    /// starts now at the server, not when it was sent, and its duration
    /// counts from here.
    fn next_starts(&mut self, now: Instant) {
        if let Some(Expect::Run(next)) = self.expect.iter_mut().find(|e| matches!(e, Expect::Run(_))) {
            next.started = next.started.max(now);
        }
    }

    /// `s`, a statement the server answered (`cursor_since`), which may go
    /// on with a run that stopped at a row limit (`resume`).
    fn answered(&mut self, s: &mut Statement, out: &mut Vec<Statement>) {
        self.cursor_since(s);
        self.resume(s, out);
    }

    /// `s`, an Execute the server answered or skipped, runs a SQL cursor
    /// of its portal's name declared after it was sent, if there is one:
    /// the DECLARE was pipelined ahead of it (the audit follows a DECLARE
    /// once it ran; bindings only grow). A Bind's portal newer than what
    /// the Execute found was sent after it.
    fn cursor_since(&self, s: &mut Statement) {
        if s.flow == Flow::Extended
            && let Some(p) = self.portals.get(&s.portal)
            && p.cursor
            && p.binding > s.binding
        {
            p.runs_in(s);
        }
    }

    fn finish(&mut self, outcome: Outcome, now: Instant, out: &mut Vec<Statement>) {
        if let Some(Expect::Run(mut s)) = self.pop_front() {
            self.next_starts(now);
            self.answered(&mut s, out);
            s.outcome = outcome;
            s.duration = now.saturating_duration_since(s.started);
            if matches!(s.outcome, Outcome::Suspended) {
                return self.suspend(s, out);
            }
            out.push(s);
        }
    }
}

/// The text a FunctionCall is recorded by (it carries no SQL): its
/// function's oid, read from the front of `b`.
fn function_text(b: &mut &[u8]) -> Arc<Text> {
    let oid = read_i32(b, "FunctionCall").unwrap_or_default();
    Arc::new(Text::new(format!("<function call, oid {oid}>").as_bytes()))
}

#[cfg(test)]
mod tests;
