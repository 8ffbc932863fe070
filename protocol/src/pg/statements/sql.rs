//! Prepared statements made and dropped in SQL (`PREPARE`, `DEALLOCATE`,
//! `DISCARD ALL`) share one namespace with the extended protocol's Parse
//! and Close: a Bind may run what a `PREPARE` made, and an `EXECUTE` what
//! a Parse made. Reading SQL needs a parser this crate does not have, so
//! the audit, which has one, tells the tracker what such statements did
//! once they ran; the tracker answers what a name holds.

use std::sync::Arc;

use super::names::{Prepared, no_types, shared_name};
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

    /// `DISCARD ALL` ran: every named statement and every portal is gone.
    pub fn discarded_all(&mut self) {
        self.sql_deallocated(None);
        let freed: usize = self.portals.drain_all().map(|p| p.kept).sum();
        self.kept = self.kept.saturating_sub(freed);
    }
}
