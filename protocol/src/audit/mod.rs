//! Audit events and the chain that makes their record tamper-evident.
//!
//! Each stored event carries a sequence number, the link of the event before
//! it and its own link: HMAC-SHA-256, under a key kept outside the store,
//! over the sequence number, the previous link and a fixed, length-prefixed
//! encoding of the event. Editing an event breaks its link; deleting one
//! leaves a gap in the sequence; moving one breaks the next event's
//! reference to its predecessor. The key means someone who can write the
//! store but not read the key cannot forge new links after an edit.

use std::collections::BTreeMap;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::feed::UnixMillis;

pub mod block;
pub mod detail;
pub mod json;

/// The actions a proxy records (docs/AUDIT.md, "From the proxy"): the
/// control plane takes no other from one, so no proxy can write a
/// workflow event (an approval, a revocation).
pub const PROXY_ACTIONS: &[&str] = &[
    "connect.denied",
    "session.start",
    "session.end",
    block::STATEMENT,
    block::BLOCK,
    "exec",
    "shell",
    "subsystem",
    "sftp",
    "forward.open",
    "forward.refused",
    "forward.failed",
    "forward.close",
];

/// The link before the first event.
pub const GENESIS: [u8; 32] = [0; 32];
/// Version tag of the link encoding, so a later format cannot be confused with this one.
const DOMAIN: &[u8] = b"portcullis-audit-v1\0";

/// One audit event: who did what, where, under which grant and request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Unique id, e.g. `evt_3f9a1c2b7d4e8a90`; the store deduplicates by it.
    pub id: String,
    /// When it happened.
    pub at: UnixMillis,
    /// What happened, e.g. `statement`, `session.end`, `request.approve`.
    pub action: String,
    /// Who did it (the engineer, or the approver for workflow actions).
    pub user: String,
    /// Resource, when there is one.
    pub resource: Option<String>,
    /// Role, when there is one.
    pub role: Option<String>,
    /// Proxied session, when there is one.
    pub session_id: Option<String>,
    /// Grant, when there is one.
    pub grant_id: Option<String>,
    /// Request, when there is one.
    pub request_id: Option<String>,
    /// The request's reason.
    pub reason: Option<String>,
    /// Who approved the request.
    pub approvers: Vec<String>,
    /// Action-specific fields (statement text, outcome, bytes, ...), sorted by name.
    pub detail: BTreeMap<String, String>,
}

fn put(out: &mut impl FnMut(&[u8]), bytes: &[u8]) {
    out(&(bytes.len() as u64).to_be_bytes());
    out(bytes);
}

fn put_opt(out: &mut impl FnMut(&[u8]), value: &Option<String>) {
    match value {
        None => out(&[0]),
        Some(v) => {
            out(&[1]);
            put(out, v.as_bytes());
        }
    }
}

impl AuditEvent {
    /// An event of `action` by `user` with nothing else set yet.
    pub fn new(id: String, at: UnixMillis, action: &str, user: &str) -> AuditEvent {
        AuditEvent {
            id,
            at,
            action: action.to_owned(),
            user: user.to_owned(),
            resource: None,
            role: None,
            session_id: None,
            grant_id: None,
            request_id: None,
            reason: None,
            approvers: Vec::new(),
            detail: BTreeMap::new(),
        }
    }

    /// The fixed encoding the link is computed over: every field, in order,
    /// each length-prefixed, so no two different events encode alike. It
    /// goes to `out` piece by piece, so a block's tens of KiB are hashed
    /// where they lie instead of copied first.
    pub fn encode(&self, out: &mut impl FnMut(&[u8])) {
        put(out, self.id.as_bytes());
        out(&self.at.to_be_bytes());
        put(out, self.action.as_bytes());
        put(out, self.user.as_bytes());
        for field in [
            &self.resource,
            &self.role,
            &self.session_id,
            &self.grant_id,
            &self.request_id,
            &self.reason,
        ] {
            put_opt(out, field);
        }
        out(&(self.approvers.len() as u64).to_be_bytes());
        for a in &self.approvers {
            put(out, a.as_bytes());
        }
        out(&(self.detail.len() as u64).to_be_bytes());
        for (k, v) in &self.detail {
            put(out, k.as_bytes());
            put(out, v.as_bytes());
        }
    }
}

/// The link of event `seq` that follows `prev`.
pub fn link(key: &[u8], seq: u64, prev: &[u8; 32], event: &AuditEvent) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(DOMAIN);
    mac.update(&seq.to_be_bytes());
    mac.update(prev);
    event.encode(&mut |bytes| mac.update(bytes));
    mac.finalize().into_bytes().into()
}

/// Where and how a chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// The event's content no longer matches its link.
    #[error("event {seq} ({id}) was edited: its content does not match its link")]
    Edited {
        /// Sequence number.
        seq: u64,
        /// Event id.
        id: String,
    },
    /// Sequence numbers skip: events were deleted.
    #[error("events {expected} to {} are missing (deleted)", found - 1)]
    Missing {
        /// The sequence number that should have come next.
        expected: u64,
        /// The one that came.
        found: u64,
    },
    /// The event does not follow the one before it: moved, inserted or re-linked.
    #[error("event {seq} ({id}) does not follow the event before it: events were reordered or inserted")]
    Relinked {
        /// Sequence number.
        seq: u64,
        /// Event id.
        id: String,
    },
}

/// Checks a chain event by event, in sequence order.
pub struct ChainCheck<'k> {
    key: &'k [u8],
    next_seq: u64,
    prev: [u8; 32],
}

impl<'k> ChainCheck<'k> {
    /// A check from the first event (sequence 1).
    pub fn new(key: &'k [u8]) -> ChainCheck<'k> {
        ChainCheck {
            key,
            next_seq: 1,
            prev: GENESIS,
        }
    }

    /// Events checked so far.
    pub fn checked(&self) -> u64 {
        self.next_seq - 1
    }

    /// Checks the next stored event: its sequence number, the link it names
    /// as its predecessor's, its own link, and its content.
    pub fn next(&mut self, seq: u64, event: &AuditEvent, prev: &[u8; 32], hash: &[u8; 32]) -> Result<(), ChainBreak> {
        if seq > self.next_seq {
            return Err(ChainBreak::Missing {
                expected: self.next_seq,
                found: seq,
            });
        }
        let relinked = ChainBreak::Relinked {
            seq,
            id: event.id.clone(),
        };
        if seq < self.next_seq || prev != &self.prev {
            return Err(relinked);
        }
        if link(self.key, seq, prev, event) != *hash {
            return Err(ChainBreak::Edited {
                seq,
                id: event.id.clone(),
            });
        }
        self.prev = *hash;
        // A block of statements holds one number per statement.
        self.next_seq += block::span(event);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"test key";

    fn event(i: u64) -> AuditEvent {
        AuditEvent {
            id: format!("evt_{i:016x}"),
            at: 1_700_000_000_000 + i as i64,
            action: "statement".into(),
            user: "alice".into(),
            resource: Some("orders".into()),
            role: Some("read".into()),
            session_id: Some("ses_1".into()),
            grant_id: Some("grt_1".into()),
            request_id: Some("req_1".into()),
            reason: Some("INC-1".into()),
            approvers: vec!["carol".into()],
            detail: BTreeMap::from([("text".to_owned(), format!("SELECT {i}"))]),
        }
    }

    /// (seq, event, prev, hash) rows as a store would keep them.
    fn chain(n: u64) -> Vec<(u64, AuditEvent, [u8; 32], [u8; 32])> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let e = event(seq);
                let hash = link(KEY, seq, &prev, &e);
                let row = (seq, e, prev, hash);
                prev = hash;
                row
            })
            .collect()
    }

    fn verify(rows: &[(u64, AuditEvent, [u8; 32], [u8; 32])]) -> Result<u64, ChainBreak> {
        let mut check = ChainCheck::new(KEY);
        for (seq, e, prev, hash) in rows {
            check.next(*seq, e, prev, hash)?;
        }
        Ok(check.checked())
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn an_edit_names_the_event() {
        let mut rows = chain(5);
        rows[2].1.detail.insert("text".into(), "SELECT nothing".into());
        assert_eq!(
            verify(&rows),
            Err(ChainBreak::Edited {
                seq: 3,
                id: event(3).id
            })
        );
        // The same for a field outside `detail`, however small the change.
        let mut rows = chain(5);
        rows[3].1.at += 1;
        assert!(matches!(verify(&rows), Err(ChainBreak::Edited { seq: 4, .. })));
    }

    #[test]
    fn a_deletion_leaves_a_gap() {
        let mut rows = chain(5);
        rows.remove(1);
        assert_eq!(verify(&rows), Err(ChainBreak::Missing { expected: 2, found: 3 }));
        // Deleting the newest events is only visible against a count kept elsewhere.
        assert_eq!(verify(&chain(5)[..3]), Ok(3));
    }

    #[test]
    fn a_reordering_or_renumbering_breaks_the_links() {
        let mut rows = chain(5);
        // Swap two events and their sequence numbers so the numbering looks whole.
        rows.swap(1, 2);
        rows[1].0 = 2;
        rows[2].0 = 3;
        assert!(matches!(verify(&rows), Err(ChainBreak::Relinked { seq: 2, .. })));
    }

    #[test]
    fn recomputing_links_without_the_key_does_not_help() {
        let mut rows = chain(3);
        rows[1].1.user = "mallory".into();
        rows[1].3 = link(b"guessed key", 2, &rows[1].2, &rows[1].1);
        assert!(matches!(verify(&rows), Err(ChainBreak::Edited { seq: 2, .. })));
    }

    #[test]
    fn the_encoding_separates_fields() {
        let mut a = event(1);
        let mut b = event(1);
        a.user = "ab".into();
        a.resource = Some("c".into());
        b.user = "a".into();
        b.resource = Some("bc".into());
        assert_ne!(link(KEY, 1, &GENESIS, &a), link(KEY, 1, &GENESIS, &b));
    }

    /// Chains already stored must keep verifying: the link is the HMAC of
    /// exactly these bytes, spelled out here apart from `encode`.
    #[test]
    fn the_link_covers_the_fixed_encoding() {
        fn put(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_be_bytes());
            out.extend(s.as_bytes());
        }
        let e = event(7);
        let mut bytes = DOMAIN.to_vec();
        bytes.extend(3u64.to_be_bytes());
        bytes.extend([9; 32]);
        put(&mut bytes, "evt_0000000000000007");
        bytes.extend(1_700_000_000_007i64.to_be_bytes());
        put(&mut bytes, "statement");
        put(&mut bytes, "alice");
        for field in ["orders", "read", "ses_1", "grt_1", "req_1", "INC-1"] {
            bytes.push(1);
            put(&mut bytes, field);
        }
        bytes.extend(1u64.to_be_bytes());
        put(&mut bytes, "carol");
        bytes.extend(1u64.to_be_bytes());
        put(&mut bytes, "text");
        put(&mut bytes, "SELECT 7");
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(KEY).expect("any key length");
        mac.update(&bytes);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(link(KEY, 3, &[9; 32], &e), expected);

        let mut absent = e;
        absent.role = None;
        assert_ne!(link(KEY, 3, &[9; 32], &absent), expected, "an absent field is a 0 byte");
    }
}
