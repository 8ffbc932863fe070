//! What each server message answers, in the order the client asked:
//! completions, errors and ReadyForQuery end statements, the other
//! replies take their item off the queue, and COPY responses start a copy.

use std::sync::Arc;
use std::time::Instant;

use super::super::capture::Message;
use super::super::message::read_cstr;
use super::names::declared_types_after_text;
use super::{Copy, Expect, Flow, MAX_KEPT, Outcome, Statement, StatementTracker};

impl StatementTracker {
    /// A message from the server, as [`Capture`](super::capture::Capture)
    /// passes it; completed statements go to `out`.
    pub fn server_message(&mut self, m: &Message<'_>, now: Instant, out: &mut Vec<Statement>) {
        if self.lost.is_some() {
            return;
        }
        self.settle();
        let (tag, body) = (m.tag, m.body);
        match tag {
            b'C' | b'I' => {
                let done = match tag {
                    b'C' => {
                        let tag = read_cstr(&mut &body[..], "CommandComplete").unwrap_or_default();
                        self.transaction.completed(tag);
                        Some(self.completion(tag))
                    }
                    _ => None,
                };
                if self.copying_in {
                    self.copy_in_done();
                }
                match self.expect.front_mut() {
                    Some(Expect::Run(s)) if s.flow == Flow::Simple => {
                        if let Outcome::Done(list) = &mut s.outcome {
                            list.extend(done);
                        }
                    }
                    Some(Expect::Run(_)) => {
                        let mut list = self.completion_list();
                        list.extend(done);
                        self.finish(Outcome::Done(list), now, out);
                    }
                    _ => {}
                }
            }
            b's' => {
                if matches!(self.expect.front(), Some(Expect::Run(_))) {
                    self.finish(Outcome::Suspended, now, out);
                }
            }
            b'E' => self.error(body, now, out),
            b'Z' => {
                while let Some(e) = self.pop_front() {
                    match e {
                        // The simple protocol's statement (or a function call)
                        // ends here, unless it came after an extended-protocol
                        // error: the server skipped it on the way to the Sync.
                        Expect::Run(mut s) if s.flow != Flow::Extended && !self.skipping => {
                            s.duration = now.saturating_duration_since(s.started);
                            out.push(s);
                            self.next_starts(now);
                            break;
                        }
                        Expect::Sync => {
                            self.next_starts(now);
                            break;
                        }
                        Expect::Run(mut s) => {
                            self.cursor_since(&mut s);
                            s.outcome = Outcome::NotRun;
                            out.push(s);
                        }
                        _ => {}
                    }
                }
                self.skipping = false;
                // Whatever the server skipped, it is reading as usual again.
                self.discarding = false;
                // Out of a transaction block no portal runs on: the server
                // drops them with their transaction (see `transaction`).
                // (In a failed block a portal of the outer transaction runs
                // on after ROLLBACK TO SAVEPOINT.)
                if body.first() == Some(&b'I') {
                    out.append(&mut self.suspended);
                }
                self.transaction.ready(body.first().copied(), self.expect.is_empty());
            }
            // ParseComplete, BindComplete, CloseComplete answer the front item.
            b'1' | b'2' | b'3' => {
                if let Some(Expect::ClosePortal { name, .. }) = self.pop_front() {
                    self.end_run(&name, out);
                }
            }
            b't' => {
                if let Some(Expect::Describe(name, Some(text))) = self.expect.front()
                    && let Some(p) = self.prepared.get_mut(name)
                    && Arc::ptr_eq(&p.text, text)
                    && p.types.iter().all(|&t| t == 0)
                {
                    let types = declared_types_after_text(body);
                    if !types.is_empty() && self.kept + 4 * types.len() <= MAX_KEPT {
                        self.kept = self.kept.saturating_sub(4 * p.types.len()) + 4 * types.len();
                        p.types = types;
                    }
                }
            }
            b'T' | b'n' => {
                if matches!(self.expect.front(), Some(Expect::Other | Expect::Describe(..))) {
                    self.pop_front();
                }
            }
            b'G' | b'H' | b'W' => {
                let inbound = tag == b'G';
                let running = match self.expect.front_mut() {
                    Some(Expect::Run(s)) => {
                        // Several COPYs of one Query add up; data the client
                        // sent ahead of this response was counted already.
                        if s.copy.is_none_or(|c| c.inbound != inbound) {
                            s.copy = Some(Copy { inbound, bytes: 0 });
                        }
                        true
                    }
                    _ => false,
                };
                if inbound && running {
                    self.copy_in_started();
                }
                self.copying_in = inbound && running;
            }
            b'd' => self.copy_bytes(false, m.len),
            _ => {}
        }
    }
}
