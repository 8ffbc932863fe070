//! A portal run in pieces (an Execute with a row limit, then more on the
//! same portal: a driver's cursor, JDBC's fetch size) is one statement,
//! as it is one to the server: one record with the first Execute's start,
//! every piece's rows, and the outcome of the last.
//!
//! A piece that stops at its limit waits here for the portal's next
//! Execute. One that never comes leaves the run on record as `Suspended`
//! when the portal is closed or bound again, at the next ReadyForQuery out
//! of a transaction block, or when the session ends.

use super::{Flow, Statement, StatementTracker};

/// Runs kept waiting at once; past it, the one that waited longest is
/// recorded as it stands. Drivers read a cursor or two at a time.
pub(super) const MAX_SUSPENDED: usize = 16;

impl StatementTracker {
    /// `s`, an Execute the server answered, continues the run of its
    /// portal that stopped at a row limit, if there is one: it takes the
    /// run's start and rows. A run of an earlier Bind of the portal name
    /// ended unfinished and goes to `out`.
    pub(super) fn resume(&mut self, s: &mut Statement, out: &mut Vec<Statement>) {
        if self.suspended.is_empty() || s.flow != Flow::Extended {
            return;
        }
        let Some(i) = self.suspended.iter().position(|r| r.portal == s.portal) else {
            return;
        };
        // In order: the one that waited longest is first.
        let run = self.suspended.remove(i);
        if run.binding != s.binding {
            return out.push(run);
        }
        s.started = run.started;
        s.executes = run.executes.saturating_add(1);
        s.fetched = run.fetched;
    }

    /// `s` stopped at its row limit, having returned that many rows: it
    /// waits for the portal's next Execute.
    pub(super) fn suspend(&mut self, mut s: Statement, out: &mut Vec<Statement>) {
        s.fetched = s.fetched.saturating_add(u64::from(s.max_rows));
        if self.suspended.len() >= MAX_SUSPENDED {
            out.push(self.suspended.remove(0));
        }
        self.suspended.push(s);
    }

    /// The portal `name` was closed: its run, if one waits, ends as it stands.
    pub(super) fn end_run(&mut self, name: &str, out: &mut Vec<Statement>) {
        if let Some(i) = self.suspended.iter().position(|r| r.portal == name) {
            out.push(self.suspended.remove(i));
        }
    }
}
