//! COPY: the bytes each way, and the Syncs a client sends within a COPY
//! IN, which the server ignores and so does the queue.

use super::{Copy, Expect, StatementTracker};

impl StatementTracker {
    /// CopyData from the client: it belongs to the statement sent last,
    /// whether or not the server's CopyInResponse came yet, when that one
    /// can be a COPY (the server ignores CopyData sent anywhere else).
    pub(super) fn copy_in_bytes(&mut self, n: usize) {
        let last = self.expect.iter_mut().rev().find_map(|e| match e {
            Expect::Run(s) => Some(s),
            _ => None,
        });
        let says_copy = |t: &str| t.as_bytes().windows(4).any(|w| w.eq_ignore_ascii_case(b"copy"));
        if let Some(s) = last
            && (s.copy.is_some() || says_copy(&s.text.text))
        {
            let copy = s.copy.get_or_insert(Copy {
                inbound: true,
                bytes: 0,
            });
            if copy.inbound {
                copy.bytes += n as u64;
            }
        }
    }

    pub(super) fn copy_bytes(&mut self, inbound: bool, n: usize) {
        if let Some(Expect::Run(s)) = self.expect.front_mut()
            && let Some(c) = s.copy.as_mut()
            && c.inbound == inbound
        {
            c.bytes += n as u64;
        }
    }

    /// A COPY IN began (the front statement's): the server ignores every
    /// Sync it reads until the COPY ends. Those sent before any CopyData
    /// certainly were, and leave the queue now; those among the data leave
    /// when the COPY completes (`copy_in_done`), since an error in the data
    /// ends it early. Until the client ends it, its Syncs are not queued.
    pub(super) fn copy_in_started(&mut self) {
        let first_mark = self.expect.iter().skip(1).position(Expect::is_marker);
        let upto = first_mark.map_or(self.expect.len(), |p| p + 1);
        let mut i = 0;
        self.expect.retain(|e| {
            i += 1;
            !(i > 1 && i <= upto && matches!(e, Expect::Sync))
        });
        self.copy_in = !self.expect.iter().any(|e| matches!(e, Expect::CopyEnd));
    }

    /// A COPY IN completed: every Sync the client sent within it was read
    /// there, and leaves the queue with the COPY's markers.
    pub(super) fn copy_in_done(&mut self) {
        self.copying_in = false;
        let Some(end) = self.expect.iter().position(|e| matches!(e, Expect::CopyEnd)) else {
            return;
        };
        let mut i = 0;
        self.expect.retain(|e| {
            i += 1;
            !(i > 1 && i <= end + 1 && matches!(e, Expect::Sync | Expect::Data | Expect::CopyEnd))
        });
    }
}
