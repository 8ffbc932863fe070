//! What each client message asks, queued for its answer: a Query or an
//! Execute is a statement to record, a Parse, Bind or Close changes the
//! session's names at once (undone if the server refuses or skips it),
//! Sync ends a batch, COPY data is counted.

use std::sync::Arc;
use std::time::Instant;

use super::super::capture::Message;
use super::super::message::{read_cstr, read_i32};
use super::names::{Prepared, declared_types, no_types, shared_name};
use super::record::statement;
use super::{Expect, Flow, Lost, MAX_KEPT, Outcome, StatementTracker, Text, bind, function_text};

impl StatementTracker {
    pub(super) fn followed_message(&mut self, m: &Message<'_>, now: Instant) {
        let body = m.body;
        let mut b = body;
        match m.tag {
            b'Q' => {
                let text = self.query_text(body, m.text);
                let mut s = statement(Flow::Simple, text, now);
                s.outcome = Outcome::Done(self.completion_list());
                self.push(Expect::Run(s));
            }
            b'P' => {
                let Ok(name) = read_cstr(&mut b, "Parse") else {
                    return self.push(Expect::Other);
                };
                if m.text.is_none() && read_cstr(&mut &b[..], "Parse").is_err() {
                    return self.push(Expect::Other);
                }
                let name = name.to_owned();
                if !self.discarding {
                    if !self.prepared.has_room_for(&name) {
                        return self.give_up(Lost::Names);
                    }
                    let old = self.prepared.remove(&name);
                    if let Some(old) = &old {
                        self.kept = self.kept.saturating_sub(old.kept());
                    }
                    // The types follow the text, in a body that was not cut.
                    let types = match m.text {
                        None if body.len() == m.len => declared_types(b),
                        _ => no_types(),
                    };
                    let text = match &old {
                        // The same text again (drivers parse the unnamed
                        // statement before each run): shared, so the audit
                        // works it out once.
                        Some(old)
                            if m.text.is_none() && old.text.is(b) && self.kept + old.text.text.len() <= MAX_KEPT =>
                        {
                            self.kept += old.text.text.len();
                            Arc::clone(&old.text)
                        }
                        _ => Arc::new(self.keep_text(Text::of(b, m.text))),
                    };
                    // Past the session's budget, binary values show their length only.
                    let types = if self.kept + 4 * types.len() > MAX_KEPT {
                        no_types()
                    } else {
                        types
                    };
                    self.kept += 4 * types.len();
                    let shared = match &old {
                        Some(old) => Arc::clone(&old.name),
                        None => shared_name(&name),
                    };
                    self.prepared.insert(
                        name.clone(),
                        Prepared {
                            name: shared,
                            text,
                            types,
                        },
                    );
                    return self.push(Expect::Parse { name, old });
                }
                self.push(Expect::Parse { name, old: None });
            }
            b'B' => {
                if !self.discarding
                    && let Some((name, old)) = self.bind(b, body.len() < m.len)
                {
                    let binding = self.bindings;
                    return self.push(Expect::Bind { name, old, binding });
                }
                self.push(Expect::Other);
            }
            b'E' => {
                let portal = read_cstr(&mut b, "Execute").unwrap_or_default();
                let mut s = match self.portals.get(portal) {
                    Some(p) => {
                        let mut s = statement(Flow::Extended, Arc::clone(&p.text), now);
                        p.runs_in(&mut s);
                        s
                    }
                    // Maybe a cursor whose DECLARE is ahead of it: see `answered`.
                    None => statement(Flow::Extended, Arc::new(Text::new(b"")), now),
                };
                s.portal = portal.to_owned();
                s.max_rows = read_i32(&mut b, "Execute").map_or(0, |n| u32::try_from(n).unwrap_or(0));
                self.push(Expect::Run(s));
            }
            b'C' => match b.split_first() {
                Some((b'S', mut rest)) if !self.discarding => {
                    let name = read_cstr(&mut rest, "Close").unwrap_or_default().to_owned();
                    let old = self.prepared.remove(&name);
                    self.kept = self.kept.saturating_sub(old.as_ref().map_or(0, Prepared::kept));
                    self.push(Expect::Close { name, old });
                }
                Some((_, mut rest)) if !self.discarding => {
                    let name = read_cstr(&mut rest, "Close").unwrap_or_default().to_owned();
                    let old = self.portals.remove(&name);
                    self.kept = self.kept.saturating_sub(old.as_ref().map_or(0, |p| p.kept));
                    self.push(Expect::ClosePortal { name, old });
                }
                _ => self.push(Expect::Other),
            },
            b'D' => match b.split_first() {
                Some((b'S', mut rest)) => {
                    let name = read_cstr(&mut rest, "Describe").unwrap_or_default().to_owned();
                    let text = self.prepared.get(&name).map(|p| Arc::clone(&p.text));
                    self.push(Expect::Describe(name, text));
                }
                _ => self.push(Expect::Other),
            },
            b'S' => self.push(Expect::Sync),
            b'F' => {
                let mut s = statement(Flow::Function, function_text(&mut b), now);
                if let Some((args, n)) = bind::function_args(b, body.len() < m.len) {
                    (s.params, s.param_count) = (args, n);
                }
                self.push(Expect::Run(s));
            }
            b'd' => {
                self.copy_in_bytes(m.len);
                if !self.copy_in && !matches!(self.expect.back(), Some(Expect::Data)) {
                    self.push(Expect::Data);
                }
            }
            // CopyDone, CopyFail: the copy is over on the client's side.
            b'c' | b'f' => {
                self.copy_in = false;
                self.push(Expect::CopyEnd);
            }
            _ => {}
        }
    }
}
