//! Prepared statements made and dropped in SQL (`PREPARE`, `DEALLOCATE`,
//! `DISCARD ALL`) share one namespace with the extended protocol's Parse
//! and Close: a Bind may run what a `PREPARE` made, and an `EXECUTE` what
//! a Parse made. SQL cursors (`DECLARE`, `CLOSE`) are portals, as the
//! extended protocol's: a `FETCH` reads what a `DECLARE` named, and an
//! Execute of a cursor's name runs its query. Reading SQL needs a parser
//! this crate does not have, so the audit, which has one, tells the
//! tracker what such statements did once they ran; the tracker answers
//! what a name holds.

use std::sync::Arc;

use super::names::{Portal, Prepared, no_types, shared_name};
use super::record::no_params;
use super::transaction::{Ended, Hold};
use super::{StatementTracker, Text};

impl StatementTracker {
    /// The text the session's prepared statement `name` holds, from a
    /// Parse or a SQL `PREPARE`, as far as the tracker knows.
    pub fn prepared_text(&self, name: &str) -> Option<Arc<Text>> {
        self.prepared.get(name).map(|p| Arc::clone(&p.text))
    }

    /// A SQL `PREPARE name AS statement` ran. Past the session's bounds
    /// the name holds nothing known (tracking goes on: a SQL name is never
    /// worth cutting the session for).
    pub fn sql_prepared(&mut self, name: &str, statement: &str) {
        self.sql_deallocated(Some(name));
        if !self.prepared.has_room_for(name) {
            return;
        }
        let text = Arc::new(self.keep_text(Text::new(statement.as_bytes())));
        let prepared = Prepared {
            name: shared_name(name),
            text,
            types: no_types(),
        };
        self.prepared.insert(name.to_owned(), prepared);
    }

    /// A SQL `DEALLOCATE name` ran; `None`: `DEALLOCATE ALL`, which leaves
    /// the extended protocol's unnamed statement.
    pub fn sql_deallocated(&mut self, name: Option<&str>) {
        let freed: usize = match name {
            Some(name) => self.prepared.remove(name).map_or(0, |p| p.kept()),
            None => self.prepared.drain_named().map(|p| p.kept()).sum(),
        };
        self.kept = self.kept.saturating_sub(freed);
    }

    /// The query the session's cursor or portal `name` runs, as far as the
    /// tracker knows.
    pub fn cursor_text(&self, name: &str) -> Option<Arc<Text>> {
        self.portals.get(name).map(|p| Arc::clone(&p.text))
    }

    /// A SQL `DECLARE name CURSOR FOR query` ran; `hold`: declared `WITH
    /// HOLD`, it outlives its transaction if that commits. Past the
    /// session's bounds the name holds nothing known.
    pub fn sql_declared(&mut self, name: &str, query: &str, hold: bool) {
        self.sql_closed(Some(name));
        if !self.portals.has_room_for(name) {
            return;
        }
        let before = self.kept;
        let text = Arc::new(self.keep_text(Text::new(query.as_bytes())));
        self.bindings += 1;
        let portal = Portal {
            statement: shared_name(""),
            text,
            params: no_params(),
            param_count: 0,
            kept: self.kept - before,
            binding: self.bindings,
            hold: if hold { Hold::Declared } else { Hold::Not },
            cursor: true,
        };
        self.portals.insert(name.to_owned(), portal);
    }

    /// A SQL `CLOSE name` ran; `None`: `CLOSE ALL`.
    pub fn sql_closed(&mut self, name: Option<&str>) {
        let freed: usize = match name {
            Some(name) => self.portals.remove(name).map_or(0, |p| p.kept),
            None => self.portals.drain_all().map(|p| p.kept).sum(),
        };
        self.kept = self.kept.saturating_sub(freed);
    }

    /// Whether the session holds a cursor or a named portal (that the end
    /// of its transaction may take).
    pub fn has_cursors(&self) -> bool {
        self.portals.has_named()
    }

    /// A SQL `COMMIT` or `ROLLBACK` (`rolled_back`; also a COMMIT of a
    /// failed block) or `PREPARE TRANSACTION` ran: what the transaction
    /// held goes now, as the ReadyForQuery at its end would let it go.
    pub fn sql_transaction_ended(&mut self, rolled_back: bool) {
        self.release(Ended {
            rolled_back,
            portals_end: self.expect.is_empty(),
        });
    }

    /// `DISCARD ALL` ran: every named statement and every portal is gone.
    pub fn discarded_all(&mut self) {
        self.sql_deallocated(None);
        self.sql_closed(None);
    }
}
