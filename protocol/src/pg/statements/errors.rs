//! An error and what follows it: the simple protocol's Query fails whole
//! (keeping the tags of the commands before the error); in the extended
//! protocol the error belongs to the first statement up to the Sync, the
//! server skips the rest of the batch, and every Parse and Close it
//! refused or skipped is undone.

use std::sync::Arc;
use std::time::Instant;

use super::super::backend::parse_error_notice;
use super::names::{Portal, shared_name};
use super::record::statement;
use super::{Expect, Flow, Outcome, Statement, StatementTracker, Text};

impl StatementTracker {
    /// An ErrorResponse: the statement it fails, and in the extended
    /// protocol what the server skips up to the next Sync.
    pub(super) fn error(&mut self, body: &[u8], now: Instant, out: &mut Vec<Statement>) {
        let (sqlstate, message) = match parse_error_notice(body) {
            Ok(e) => {
                if matches!(e.severity.as_str(), "FATAL" | "PANIC") {
                    // A statement it fails keeps the message, withheld
                    // where it may quote a password; here, its SQLSTATE.
                    let running = self.expect.iter().any(|x| matches!(x, Expect::Run(_)));
                    self.fatal = Some(if running {
                        format!("{} {}", e.severity, e.code)
                    } else {
                        format!("{} {}: {}", e.severity, e.code, e.message)
                    });
                }
                (e.code, e.message)
            }
            Err(_) => ("XX000".to_owned(), "unreadable error".to_owned()),
        };
        self.copy_in = false;
        self.copying_in = false;
        self.transaction.error();
        if let Some(Expect::Run(s)) = self.expect.front_mut()
            && s.flow != Flow::Extended
        {
            // The simple protocol goes on to ReadyForQuery; the commands of
            // the Query that completed before the error stay on record.
            let done = match std::mem::replace(&mut s.outcome, Outcome::NotRun) {
                Outcome::Done(list) => list,
                _ => Vec::new(),
            };
            s.outcome = Outcome::Failed {
                sqlstate,
                message,
                done,
            };
            return;
        }
        let failed = Outcome::Failed {
            sqlstate,
            message,
            done: Vec::new(),
        };
        match self.expect.front_mut() {
            // An error at Sync: the implicit commit of what ran before it failed.
            Some(Expect::Sync) if !self.skipping => {
                let text = Arc::new(Text::new(b"<implicit COMMIT at Sync>"));
                let mut s = statement(Flow::Extended, text, now);
                s.outcome = failed;
                out.push(s);
            }
            Some(_) if !self.skipping => {
                self.skipping = true;
                // Unless the batch's Sync is already queued, what the client
                // sends next is discarded up to it.
                self.discarding = !self.expect.iter().any(|e| matches!(e, Expect::Sync));
                // The error belongs to the first statement up to the Sync: a
                // failed Parse or Bind means its Execute never ran.
                // A Query or function call in between is not the batch's:
                // the server skips it (`not_run` at the ReadyForQuery).
                let failing = self.expect.iter().position(|e| match e {
                    Expect::Run(s) => s.flow == Flow::Extended,
                    e => matches!(e, Expect::Sync),
                });
                if let Some(i) = failing
                    && matches!(self.expect.get(i), Some(Expect::Run(_)))
                    && let Some(Expect::Run(mut s)) = self.expect.remove(i)
                {
                    self.answered(&mut s, out);
                    s.outcome = failed;
                    s.duration = now.saturating_duration_since(s.started);
                    out.push(s);
                    self.next_starts(now);
                } else if let Some(Expect::Parse { name, .. }) = self.expect.front() {
                    // A Parse that failed on its own: record its text.
                    let text = self.prepared.get(name).map(|p| Arc::clone(&p.text));
                    let mut s = statement(Flow::Extended, text.unwrap_or_else(|| Arc::new(Text::new(b""))), now);
                    s.statement = shared_name(name);
                    s.outcome = failed;
                    out.push(s);
                }
                self.undo_to_sync();
            }
            _ => {}
        }
    }

    /// The last FATAL the server sent (`FATAL 57P05: terminating connection
    /// due to idle-session timeout`): why the server ended the session,
    /// when it closed it. One that failed a statement is its SQLSTATE only
    /// (`FATAL 57P01`): the statement's record has the message.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.as_deref()
    }

    /// The server refused or skipped every Parse, Close and named Bind up
    /// to the next Sync: what they changed in `prepared` and `portals` is
    /// undone, the last first.
    fn undo_to_sync(&mut self) {
        let end = self.expect.iter().position(|e| matches!(e, Expect::Sync));
        let end = end.unwrap_or(self.expect.len());
        for i in (0..end).rev() {
            let (parse, name, mut old) = match self.expect.get_mut(i) {
                Some(Expect::Parse { name, old }) => (true, name.clone(), old.take()),
                Some(Expect::Close { name, old }) => (false, name.clone(), old.take()),
                Some(Expect::Bind { name, old, binding }) => {
                    let (name, old, binding) = (name.clone(), old.take(), *binding);
                    self.undo_bind(name, old, binding, end);
                    continue;
                }
                Some(Expect::ClosePortal { name, old }) => {
                    let Some(old) = old.take() else { continue };
                    let name = name.clone();
                    // A portal that a Bind skipped with the Close made never
                    // was: Executes sent after the Sync run what that Bind's
                    // undo leaves under the name (nothing, or the portal it
                    // replaced), which they are marked to take.
                    let skipped_bind = self.expect.iter().take(i).any(
                        |e| matches!(e, Expect::Bind { name: n, binding, .. } if *n == name && *binding == old.binding),
                    );
                    if skipped_bind {
                        for s in executes_after(&mut self.expect, end, &name, 0) {
                            s.binding = old.binding;
                        }
                    } else {
                        self.put_back(name, old, 0, end);
                    }
                    continue;
                }
                _ => continue,
            };
            if parse && let Some(new) = self.prepared.remove(&name) {
                self.kept = self.kept.saturating_sub(new.kept());
            }
            // The server drops the unnamed statement before it parses the
            // next: one whose Parse failed (the error's, at the front) is gone.
            if parse && i == 0 && name.is_empty() {
                old = None;
            }
            if let Some(old) = old {
                self.kept += old.kept();
                self.prepared.insert(name, old);
            }
        }
    }

    /// Undoes a named Bind the server refused or skipped: the portal it
    /// made goes (unless a DECLARE has taken the name since) and the one it
    /// replaced is back (`put_back`).
    fn undo_bind(&mut self, name: String, old: Option<Portal>, binding: u64, end: usize) {
        if self.portals.get(&name).is_some_and(|p| p.binding == binding)
            && let Some(new) = self.portals.remove(&name)
        {
            self.kept = self.kept.saturating_sub(new.kept);
        }
        if let Some(old) = old {
            self.put_back(name, old, binding, end);
        }
    }

    /// Puts `old` back under `name`, which a skipped Bind or Close took
    /// from it; so are Executes of it sent ahead, in batches after the Sync
    /// at `end`, that ran what the Bind made (`binding`; 0: nothing, after
    /// a Close): the server runs the old portal there. If a Bind sent
    /// after took the name again, the server refuses that Bind (the old
    /// portal is still there), and its undo puts `old` back; a DECLARE
    /// since keeps the name.
    fn put_back(&mut self, name: String, old: Portal, binding: u64, end: usize) {
        if let Some(now) = self.portals.get(&name) {
            let rebound = now.binding;
            let later = self.expect.iter_mut().skip(end).find_map(|e| match e {
                Expect::Bind {
                    name: n,
                    old: slot,
                    binding,
                } if *n == name && *binding == rebound => Some(slot),
                _ => None,
            });
            if let Some(slot) = later
                && slot.is_none()
            {
                *slot = Some(old);
            }
            return;
        }
        for s in executes_after(&mut self.expect, end, &name, binding) {
            old.runs_in(s);
        }
        self.kept += old.kept;
        self.portals.insert(name, old);
    }
}

/// The Executes of portal `name` queued after the Sync at `end` that ran
/// what `binding` made (0: nothing the tracker knew).
fn executes_after<'e>(
    expect: &'e mut std::collections::VecDeque<Expect>,
    end: usize,
    name: &'e str,
    binding: u64,
) -> impl Iterator<Item = &'e mut Statement> {
    expect.iter_mut().skip(end).filter_map(move |e| match e {
        // Queries and function calls have no portal, which reads as the unnamed one's.
        Expect::Run(s) if s.flow == Flow::Extended && s.portal == name && s.binding == binding => Some(s),
        _ => None,
    })
}
