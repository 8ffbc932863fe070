//! Statements stored together. Under load every statement is an audit
//! event, and a row of the store per event (its indexes, its link, its
//! share of a commit) cost more CPU than relaying the statement. So the
//! statements one session ran within a short span travel and are stored as
//! ONE chained event, a block, and everyone who reads the log sees them
//! apart again: each keeps its own id, time, detail and sequence number
//! (the block takes as many numbers as it holds statements), and the
//! session's who, where and why come from the block. The block's link
//! covers every statement in it, so an edit to any of them breaks the chain.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::AuditEvent;
use crate::feed::UnixMillis;

/// The action of a block as stored; its statements read as `statement`.
pub const BLOCK: &str = "statements";
/// The action of one statement.
pub const STATEMENT: &str = "statement";
/// Statements in one block at most: readers look this far back for the
/// block that holds a sequence number.
pub const MAX_STATEMENTS: u64 = 512;
/// How far apart in time a block's statements may be, at most: a search
/// by time looks this much earlier for blocks that start before its range.
pub const MAX_SPAN_MS: UnixMillis = 1_000;
/// A block is closed once its statements' JSON reaches this size, which
/// bounds what a queue of blocks can hold.
const MAX_BYTES: usize = 32 * 1024;
/// What a new block's JSON is given at first: a few dozen statements.
const INITIAL_BYTES: usize = 4 * 1024;
/// Detail keys of a block that are not shared by its statements: how many
/// it holds, and their list (JSON), which a store may keep apart.
pub const COUNT: &str = "count";
/// See `COUNT`.
pub const LIST: &str = "statements";

/// One statement as a block holds it.
#[derive(Deserialize)]
struct Member<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    at: UnixMillis,
    detail: BTreeMap<String, String>,
}

/// Where an event's detail is written, one key and value at a time: a map,
/// or straight into a block's JSON with no map in between (the audit thread
/// writes every statement this way).
pub trait Detail {
    /// Adds `key` with `value`; each key once.
    fn put(&mut self, key: &str, value: &str);

    /// Adds `key` with a number, written as a string as every detail value is.
    fn put_number(&mut self, key: &str, n: u64) {
        self.put(key, itoa::Buffer::new().format(n));
    }
}

impl Detail for BTreeMap<String, String> {
    fn put(&mut self, key: &str, value: &str) {
        self.insert(key.to_owned(), value.to_owned());
    }
}

/// A statement's detail being written into its block's JSON object.
pub struct DetailJson<'a> {
    json: &'a mut Vec<u8>,
    first: bool,
}

impl DetailJson<'_> {
    fn string(&mut self, s: &str) {
        json_string(self.json, s);
    }
}

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it.
/// Runs for every key and value of every
/// statement: 8-byte words that need no escape (nearly all of any
/// statement, and the whole of most values) are checked at once and copied
/// in one piece; only a word holding a byte to escape goes byte by byte.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut i = 0;
    loop {
        let clean = i + clean_prefix(&bytes[i..]);
        out.extend_from_slice(&bytes[i..clean]);
        if clean == bytes.len() {
            break;
        }
        let end = (clean + 8).min(bytes.len());
        for &b in &bytes[clean..end] {
            escape(out, b);
        }
        i = end;
    }
    out.push(b'"');
}

/// How many leading bytes of `bytes` need no escape, in whole 8-byte words
/// (the last word padded with spaces): all of them, or up to the start of
/// the first word holding one that does.
fn clean_prefix(bytes: &[u8]) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut at = 0;
    for word in &mut words {
        let mut w = [0; 8];
        w.copy_from_slice(word);
        if word_needs_escape(u64::from_le_bytes(w)) {
            return at;
        }
        at += 8;
    }
    // The last bytes over spaces, shifted in one by one: a copy of a few
    // bytes costs more as a call to memcpy.
    let w = words
        .remainder()
        .iter()
        .enumerate()
        .fold(u64::from_ne_bytes([b' '; 8]), |w, (k, &b)| {
            (w & !(0xff << (8 * k))) | (u64::from(b) << (8 * k))
        });
    if word_needs_escape(w) { at } else { bytes.len() }
}

/// Appends one byte, escaped as serde_json escapes it when it must be.
fn escape(out: &mut Vec<u8>, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match b {
        b'"' => out.extend_from_slice(b"\\\""),
        b'\\' => out.extend_from_slice(b"\\\\"),
        b'\n' => out.extend_from_slice(b"\\n"),
        b'\r' => out.extend_from_slice(b"\\r"),
        b'\t' => out.extend_from_slice(b"\\t"),
        0x08 => out.extend_from_slice(b"\\b"),
        0x0c => out.extend_from_slice(b"\\f"),
        b if b < 0x20 => out.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[usize::from(b >> 4)],
            HEX[usize::from(b & 0xf)],
        ]),
        b => out.push(b),
    }
}

/// Whether any byte of `w` is a control character, `"` or `\\` (the
/// classic SWAR tests for a zero byte and a byte below n; exact as to
/// whether there is one, which is all this asks).
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    let below_space = w.wrapping_sub(ONES * 0x20) & !w & HIGH != 0;
    below_space || has_zero(w ^ (ONES * u64::from(b'"'))) || has_zero(w ^ (ONES * u64::from(b'\\')))
}

impl Detail for DetailJson<'_> {
    fn put(&mut self, key: &str, value: &str) {
        if !std::mem::take(&mut self.first) {
            self.json.push(b',');
        }
        self.string(key);
        self.json.push(b':');
        self.string(value);
    }
}

/// A block being filled, one session's statements in the order they completed.
pub struct BlockBuilder {
    block: AuditEvent,
    /// The members' JSON array so far, without its closing bracket: UTF-8,
    /// as `json_string` and the ASCII punctuation around it write it.
    json: Vec<u8>,
    count: u64,
    first: UnixMillis,
    last: UnixMillis,
}

impl BlockBuilder {
    /// An empty block of `session`, an event whose id, user, resource, role,
    /// session, grant, request, reason and approvers are the block's and
    /// whose detail holds what every statement shares (e.g. the protocol).
    pub fn new(mut session: AuditEvent) -> BlockBuilder {
        session.action = BLOCK.to_owned();
        let mut json = Vec::with_capacity(INITIAL_BYTES);
        json.push(b'[');
        BlockBuilder {
            block: session,
            json,
            count: 0,
            first: UnixMillis::MAX,
            last: UnixMillis::MIN,
        }
    }

    /// Statements so far.
    pub fn len(&self) -> u64 {
        self.count
    }

    /// Whether no statement was added yet.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether a statement at `at` may join, or the block must be closed first.
    pub fn fits(&self, at: UnixMillis) -> bool {
        self.count == 0
            || (self.count < MAX_STATEMENTS
                && self.json.len() < MAX_BYTES
                && self.last.max(at).saturating_sub(self.first.min(at)) <= MAX_SPAN_MS)
    }

    /// Adds a statement; call `fits` first.
    pub fn push(&mut self, id: &str, at: UnixMillis, detail: BTreeMap<String, String>) {
        self.push_with(id, at, |d| {
            for (k, v) in &detail {
                d.put(k, v);
            }
        });
    }

    /// Adds a statement whose detail `write` puts straight into the block's
    /// JSON, as `Member` reads it back; call `fits` first.
    pub fn push_with(&mut self, id: &str, at: UnixMillis, write: impl FnOnce(&mut DetailJson<'_>)) {
        if self.count > 0 {
            self.json.push(b',');
        }
        let mut d = DetailJson {
            json: &mut self.json,
            first: true,
        };
        d.json.extend_from_slice(b"{\"id\":");
        d.string(id);
        d.json.extend_from_slice(b",\"at\":");
        d.json.extend_from_slice(itoa::Buffer::new().format(at).as_bytes());
        d.json.extend_from_slice(b",\"detail\":{");
        write(&mut d);
        self.json.extend_from_slice(b"}}");
        self.count += 1;
        self.first = self.first.min(at);
        self.last = self.last.max(at);
    }

    /// The block as one event, dated by its earliest statement.
    pub fn finish(mut self) -> AuditEvent {
        self.json.push(b']');
        // Whole strs and ASCII only are written: the fallback never runs.
        let json = String::from_utf8(self.json).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        self.block.at = if self.count == 0 { self.block.at } else { self.first };
        self.block.detail.insert(COUNT.to_owned(), self.count.to_string());
        self.block.detail.insert(LIST.to_owned(), json);
        self.block
    }
}

/// Sequence numbers `event` takes in the chain: a block one per statement.
pub fn span(event: &AuditEvent) -> u64 {
    if event.action != BLOCK {
        return 1;
    }
    event
        .detail
        .get(COUNT)
        .and_then(|c| c.parse::<u64>().ok())
        .unwrap_or(1)
        .clamp(1, MAX_STATEMENTS)
}

/// The statements of a block stored at `seq`, each with its own sequence
/// number; any other event as it is. A block that does not read back (only
/// ever an edited one, which `verify` reports) is shown as stored.
pub fn expand(seq: u64, event: AuditEvent) -> Vec<(u64, AuditEvent)> {
    if event.action != BLOCK {
        return vec![(seq, event)];
    }
    let members: Vec<Member<'_>> = match event.detail.get(LIST).map(|l| serde_json::from_str(l)) {
        Some(Ok(members)) => members,
        _ => return vec![(seq, event)],
    };
    let shared: Vec<(&String, &String)> = event
        .detail
        .iter()
        .filter(|(k, _)| k.as_str() != COUNT && k.as_str() != LIST)
        .collect();
    members
        .into_iter()
        .zip(seq..)
        .map(|(m, seq)| {
            let mut detail = m.detail;
            for (k, v) in &shared {
                detail.entry((*k).clone()).or_insert_with(|| (*v).clone());
            }
            let statement = AuditEvent {
                id: m.id.into_owned(),
                at: m.at,
                action: STATEMENT.to_owned(),
                user: event.user.clone(),
                resource: event.resource.clone(),
                role: event.role.clone(),
                session_id: event.session_id.clone(),
                grant_id: event.grant_id.clone(),
                request_id: event.request_id.clone(),
                reason: event.reason.clone(),
                approvers: event.approvers.clone(),
                detail,
            };
            (seq, statement)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> AuditEvent {
        let mut e = AuditEvent::new("evt_block".into(), 0, "statement", "alice");
        e.resource = Some("orders".into());
        e.session_id = Some("ses_1".into());
        e.reason = Some("INC-1".into());
        e.approvers = vec!["carol".into()];
        e.detail.insert("protocol".into(), "postgres".into());
        e
    }

    fn detail(text: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("text".to_owned(), text.to_owned()),
            ("class".to_owned(), "SELECT".to_owned()),
        ])
    }

    #[test]
    fn statements_come_back_apart_with_the_session_and_their_own_numbers() {
        let mut b = BlockBuilder::new(session());
        b.push("evt_a", 1_000, detail("SELECT 1"));
        b.push("evt_b", 1_200, detail("SELECT \"quoted\" \\ 2"));
        let block = b.finish();
        assert_eq!((block.action.as_str(), block.at, span(&block)), (BLOCK, 1_000, 2));
        let out = expand(41, block);
        let seqs: Vec<u64> = out.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [41, 42]);
        let (_, second) = &out[1];
        assert_eq!(
            (second.id.as_str(), second.at, second.action.as_str()),
            ("evt_b", 1_200, STATEMENT)
        );
        assert_eq!(second.detail["text"], "SELECT \"quoted\" \\ 2");
        assert_eq!(second.detail["protocol"], "postgres");
        assert!(!second.detail.contains_key(COUNT) && !second.detail.contains_key(LIST));
        assert_eq!(
            (
                second.reason.as_deref(),
                second.approvers.clone(),
                second.session_id.as_deref()
            ),
            (Some("INC-1"), vec!["carol".to_owned()], Some("ses_1"))
        );
    }

    #[test]
    fn a_detail_written_straight_into_the_block_reads_back_whole() {
        let text = "SELECT '\u{e9}\n\"x\"\\'";
        let mut b = BlockBuilder::new(session());
        b.push_with("evt_a", 7, |d| {
            d.put("text", text);
            d.put_number("rows", u64::MAX);
        });
        let out = expand(1, b.finish());
        let detail = &out[0].1.detail;
        assert_eq!(detail["text"], text);
        assert_eq!(detail["rows"], u64::MAX.to_string());
        assert_eq!(detail["protocol"], "postgres");
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        let long = format!("{} \"x\" {}\n", "a".repeat(40), "\u{e9}".repeat(20));
        for s in [
            "",
            "plain",
            "\"q\" \\ /",
            "caf\u{e9} \u{1f600}",
            "\u{7f}\u{2028}",
            &every_control,
            &long,
        ] {
            let mut out = Vec::new();
            json_string(&mut out, s);
            assert_eq!(String::from_utf8(out).ok(), serde_json::to_string(s).ok(), "{s:?}");
        }
        // Each byte that needs an escape, at each place of strings from one
        // word's part to three words: the padded last word included.
        for len in 1..=24 {
            for at in 0..len {
                for special in ['\0', '\u{1f}', '\n', '"', '\\'] {
                    let s: String = (0..len).map(|i| if i == at { special } else { 'x' }).collect();
                    let mut out = Vec::new();
                    json_string(&mut out, &s);
                    assert_eq!(String::from_utf8(out).ok(), serde_json::to_string(&s).ok(), "{s:?}");
                }
            }
        }
    }

    #[test]
    fn a_word_needs_escape_exactly_when_one_of_its_bytes_does() {
        for fill in [b'a', 0xc3, 0xff, b' '] {
            for pos in 0..8 {
                for b in 0..=255u8 {
                    let mut w = [fill; 8];
                    w[pos] = b;
                    let want = w.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                    assert_eq!(word_needs_escape(u64::from_le_bytes(w)), want, "{w:?}");
                }
            }
        }
    }

    #[test]
    fn a_block_closes_at_its_count_its_span_or_its_size() {
        let mut b = BlockBuilder::new(session());
        assert!(b.fits(0));
        b.push("evt_0", 5_000, detail("x"));
        assert!(b.fits(5_000 + MAX_SPAN_MS) && b.fits(5_000 - MAX_SPAN_MS));
        assert!(!b.fits(5_000 + MAX_SPAN_MS + 1) && !b.fits(5_000 - MAX_SPAN_MS - 1));
        for i in 1..MAX_STATEMENTS {
            assert!(b.fits(5_000), "statement {i}");
            b.push(&format!("evt_{i}"), 5_000, BTreeMap::new());
        }
        assert!(!b.fits(5_000));
        let mut big = BlockBuilder::new(session());
        big.push("evt_big", 0, detail(&"x".repeat(MAX_BYTES)));
        assert!(!big.fits(0));
    }

    #[test]
    fn other_events_and_unreadable_blocks_read_as_stored() {
        let plain = session();
        assert_eq!(span(&plain), 1);
        assert_eq!(expand(7, plain.clone()), vec![(7, plain)]);
        let mut broken = BlockBuilder::new(session()).finish();
        broken.detail.insert(LIST.into(), "[{not json".into());
        assert_eq!(expand(9, broken.clone()), vec![(9, broken)]);
    }
}
