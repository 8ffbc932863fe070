//! What ends with a transaction: the server drops every portal when the
//! transaction that made it ends, but a SQL cursor declared `WITH HOLD`,
//! which outlives a commit and not a rollback. A ReadyForQuery out of a
//! transaction block (`I`) says one ended, and whether it was rolled back:
//! an error since the last ReadyForQuery (an implicit transaction, a
//! failed COMMIT), a failed block before it (`E`), or a `ROLLBACK` tag.
//! Where that says too little (a Query that ends its transaction amid
//! other commands, `COMMIT AND CHAIN`), the audit, which parses the SQL,
//! tells the tracker where the transaction ended (`sql_transaction_ended`).
//!
//! A `ROLLBACK TO SAVEPOINT` closes the cursors declared since the
//! savepoint: the audit tells the tracker of savepoint commands too.
//!
//! The names go at the session's next message, not at the ReadyForQuery
//! itself: the audit tells the tracker what a `DECLARE` in the statement
//! that ReadyForQuery ended did once it has the statement (`sql`), which
//! is after.

use super::StatementTracker;

/// A portal's life past its transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hold {
    /// Ends with its transaction (a Bind's, a plain cursor's).
    Not,
    /// A cursor `WITH HOLD` whose transaction has not ended yet.
    Declared,
    /// A cursor `WITH HOLD` whose transaction committed: it lives until
    /// closed.
    Committed,
}

/// A transaction that ended, for the next message to settle.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ended {
    pub rolled_back: bool,
    /// Nothing else was in flight: a Bind sent ahead is the next
    /// transaction's, and its portal stays.
    pub portals_end: bool,
}

/// What the messages since the last ReadyForQuery said of the transaction.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Transaction {
    /// An error came.
    failed: bool,
    /// The last command tag was `ROLLBACK` (also a COMMIT of a failed block).
    rolled_back: bool,
    /// The last ReadyForQuery said the block had failed (`E`).
    in_failed_block: bool,
    /// One ended, and its names are yet to be let go.
    pub ended: Option<Ended>,
}

impl Transaction {
    /// An ErrorResponse came.
    pub fn error(&mut self) {
        self.failed = true;
    }

    /// A command completed with `tag`.
    pub fn completed(&mut self, tag: &str) {
        self.rolled_back = tag == "ROLLBACK";
    }

    /// A ReadyForQuery with `status`; `idle_queue`: nothing else is in
    /// flight.
    pub fn ready(&mut self, status: Option<u8>, idle_queue: bool) {
        if status == Some(b'I') {
            self.ended = Some(Ended {
                rolled_back: self.failed || self.rolled_back || self.in_failed_block,
                portals_end: idle_queue,
            });
        }
        self.in_failed_block = status == Some(b'E');
        self.failed = false;
        self.rolled_back = false;
    }
}

impl StatementTracker {
    /// Lets go what a transaction that ended held, if one did: its portals
    /// (the unnamed one's slot stays, for the next Bind to reuse its room)
    /// and cursors, but those declared `WITH HOLD` in a transaction that
    /// committed, or before.
    pub(super) fn settle(&mut self) {
        if let Some(ended) = self.transaction.ended.take() {
            self.release(ended);
        }
    }

    /// Lets go what the transaction that `ended` held.
    pub(super) fn release(&mut self, ended: Ended) {
        self.savepoints.clear();
        if !self.portals.has_named() {
            return;
        }
        let freed = self.portals.release_named(
            |p| match p.hold {
                Hold::Committed => true,
                Hold::Declared if ended.rolled_back => false,
                Hold::Declared => {
                    p.hold = Hold::Committed;
                    true
                }
                // A cursor was declared before the end (the audit follows
                // each DECLARE once it ran); a Bind's portal may be the
                // next transaction's, sent ahead.
                Hold::Not => !p.cursor && !ended.portals_end,
            },
            |p| p.kept,
        );
        self.kept = self.kept.saturating_sub(freed);
    }
}

/// Savepoints a transaction keeps track of at most; past them the oldest
/// is forgotten, and a `ROLLBACK TO` it closes nothing.
const MAX_SAVEPOINTS: usize = 1024;

impl StatementTracker {
    /// A SQL `SAVEPOINT name` ran: a `ROLLBACK TO` it closes the cursors
    /// declared from now on (each takes a binding number when it ran).
    pub fn sql_savepoint(&mut self, name: &str) {
        if self.savepoints.len() >= MAX_SAVEPOINTS {
            self.savepoints.remove(0);
        }
        self.savepoints.push((name.into(), self.bindings));
    }

    /// A SQL `ROLLBACK TO SAVEPOINT name` ran: the server closed the
    /// cursors declared since, `WITH HOLD` or not, and the savepoints
    /// after it; it stays. A Bind's portal made since stays known: the
    /// binding numbers of Binds sent ahead of this do not tell whether
    /// they ran before it, and an Execute of a closed portal fails anyway.
    pub fn sql_rolled_back_to(&mut self, name: &str) {
        let Some(at) = self.savepoint(name) else {
            return;
        };
        self.savepoints.truncate(at + 1);
        let Some(&(_, mark)) = self.savepoints.last() else {
            return;
        };
        let freed = self
            .portals
            .release_named(|p| !(p.cursor && p.binding > mark), |p| p.kept);
        self.kept = self.kept.saturating_sub(freed);
    }

    /// A SQL `RELEASE SAVEPOINT name` ran: it and those after it are gone,
    /// and their cursors now belong to the savepoint before (or the
    /// transaction).
    pub fn sql_released(&mut self, name: &str) {
        if let Some(at) = self.savepoint(name) {
            self.savepoints.truncate(at);
        }
    }

    /// Where savepoint `name` is: the latest of that name, which is the one
    /// the server rolls back to or releases.
    fn savepoint(&self, name: &str) -> Option<usize> {
        self.savepoints.iter().rposition(|(n, _)| **n == *name)
    }

    /// Whether the transaction has a savepoint the tracker follows: its
    /// commands are then told to it (see `sql_savepoint`).
    pub fn has_savepoints(&self) -> bool {
        !self.savepoints.is_empty()
    }
}
