//! When the tracker stops following a session (more names or messages in
//! flight than it keeps): what awaited its outcome, and every statement the
//! client sends until the cut, is still recorded by its text.

use std::sync::Arc;
use std::time::Instant;

use super::super::capture::Message;
use super::super::message::read_cstr;
use super::names::{Prepared, no_types, shared_name};
use super::record::statement;
use super::{Expect, Flow, MAX_EXPECT, MAX_NAMES, Outcome, Statement, StatementTracker, Text, function_text};

/// Why a tracker stopped following its session: what it would have had to
/// hold grew past its bound. The session must not go on unrecorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// More than `MAX_EXPECT` messages awaited the server's answer at once.
    InFlight,
    /// More than `MAX_NAMES` prepared statements or portals were kept at once.
    Names,
}

impl Lost {
    /// Why, as the event and the engineer read it.
    pub fn why(self) -> String {
        match self {
            Lost::InFlight => format!("more than {MAX_EXPECT} messages awaited the server's answer at once"),
            Lost::Names => format!("more than {MAX_NAMES} prepared statements or portals were kept at once"),
        }
    }
}

impl StatementTracker {
    /// Why tracking stopped, if it did: the client kept more messages in
    /// flight, or more names, than the tracker keeps. Nothing more is
    /// reported; the session should be cut.
    pub fn lost(&self) -> Option<Lost> {
        self.lost
    }

    /// Statements sent and not yet answered when tracking stopped: they
    /// are not reported one by one.
    pub fn unfollowed(&self) -> usize {
        self.unfollowed
    }

    /// Stops following outcomes: the statements awaiting theirs are
    /// recorded as they are (`NotFollowed`), and so is every statement the
    /// client sends from now on, by its text, until the session is cut. The
    /// names stay, for the texts of what runs under them; they grow no more.
    pub(super) fn give_up(&mut self, why: Lost) {
        if self.lost.is_some() {
            return;
        }
        self.lost = Some(why);
        for e in self.expect.drain(..) {
            if let Expect::Run(mut s) = e {
                s.outcome = Outcome::NotFollowed;
                self.abandoned.push(s);
            }
        }
        self.unfollowed = self.abandoned.len();
        // Portals that stopped at a row limit go on record as they stand.
        self.abandoned.append(&mut self.suspended);
    }

    /// Takes the statements recorded without their outcome since tracking
    /// stopped (see [`StatementTracker::lost`]).
    pub fn abandoned(&mut self, out: &mut Vec<Statement>) {
        out.append(&mut self.abandoned);
    }

    /// A client message once tracking stopped: what it would run is
    /// recorded by its text. A Bind names the statement whose text runs,
    /// and its portal is forgotten, so that no Execute finds an older one.
    pub(super) fn unfollowed_message(&mut self, m: &Message<'_>, now: Instant) {
        let mut b = m.body;
        let (flow, text, name) = match m.tag {
            b'Q' => (Flow::Simple, self.query_text(m.body, m.text), None),
            b'P' => {
                let Ok(name) = read_cstr(&mut b, "Parse") else { return };
                let text = Arc::new(Text::of(b, m.text));
                // A name that needs no room takes the text, for the Binds that follow.
                if name.is_empty() || self.prepared.get(name).is_some() {
                    let old = self.prepared.remove(name);
                    self.kept = self.kept.saturating_sub(old.as_ref().map_or(0, Prepared::kept));
                    let prepared = Prepared {
                        name: shared_name(name),
                        text: Arc::clone(&text),
                        types: no_types(),
                    };
                    self.kept += prepared.kept();
                    self.prepared.insert(name.to_owned(), prepared);
                }
                (Flow::Extended, text, Some(name.to_owned()))
            }
            b'B' => {
                let (Ok(portal), Ok(stmt)) = (read_cstr(&mut b, "Bind"), read_cstr(&mut b, "Bind")) else {
                    return;
                };
                if let Some(p) = self.portals.remove(portal) {
                    self.kept = self.kept.saturating_sub(p.kept);
                }
                let text = self.prepared.get(stmt).map(|p| Arc::clone(&p.text));
                (
                    Flow::Extended,
                    text.unwrap_or_else(|| Arc::new(Text::new(b""))),
                    Some(stmt.to_owned()),
                )
            }
            b'E' => {
                let portal = read_cstr(&mut b, "Execute").unwrap_or_default();
                let Some(p) = self.portals.get(portal) else { return };
                (Flow::Extended, Arc::clone(&p.text), Some((*p.statement).to_owned()))
            }
            b'F' => (Flow::Function, function_text(&mut b), None),
            _ => return,
        };
        let mut s = statement(flow, text, now);
        if let Some(name) = name {
            s.statement = shared_name(&name);
        }
        s.outcome = Outcome::NotFollowed;
        self.abandoned.push(s);
    }
}
