//! Statements stored together. Under load every statement is an audit
//! event, and a row of the store per event (its indexes, its link, its
//! share of a commit) cost more CPU than relaying the statement. So the
//! statements one session ran within a short span travel and are stored as
//! ONE chained event, a block, and everyone who reads the log sees them
//! apart again: each keeps its own id, time, detail and sequence number
//! (the block takes as many numbers as it holds statements), and the
//! session's who, where and why come from the block. The block's link
//! covers every statement in it, so an edit to any of them breaks the chain.
//!
//! Fields that many statements of a block share (a prepared statement's
//! class, tables and text) are stored once, as an entry `{"shared":{...}}`
//! after the statements, which name it by its place among those entries
//! (`"with":0`): what the log writes per statement is a third smaller.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::AuditEvent;
use super::detail::{DetailJson, Fields, ascii_or_utf8};
use super::json::json_string;
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

/// Shared field groups in one block at most; past them a statement's
/// fields are written whole.
const MAX_SHARED: usize = 64;

/// One entry of a block's list: a statement (`id`, `at`, `detail` and
/// maybe `with`), or fields its statements share (`shared`).
#[derive(Deserialize)]
struct Entry {
    id: Option<String>,
    at: Option<UnixMillis>,
    detail: Option<BTreeMap<String, String>>,
    with: Option<usize>,
    shared: Option<BTreeMap<String, String>>,
}

/// A block being filled, one session's statements in the order they completed.
pub struct BlockBuilder {
    block: AuditEvent,
    /// The members' JSON array so far, without its closing bracket: UTF-8,
    /// as `json` and the ASCII punctuation around it write it.
    json: Vec<u8>,
    /// Field groups the statements name, written after them at the end.
    shared: Vec<Arc<Fields>>,
    /// Their JSON's size.
    shared_bytes: usize,
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
            shared: Vec::new(),
            shared_bytes: 0,
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
                && self.json.len() + self.shared_bytes < MAX_BYTES
                && self.last.max(at).saturating_sub(self.first.min(at)) <= MAX_SPAN_MS)
    }

    /// Adds a statement; call `fits` first.
    pub fn push(&mut self, id: &str, at: UnixMillis, detail: BTreeMap<String, String>) {
        self.push_with(id, at, |d| {
            for (k, v) in &detail {
                d.put_any(k, v);
            }
        });
    }

    /// Adds a statement whose detail `write` puts straight into the block's
    /// JSON, as `Member` reads it back; call `fits` first.
    pub fn push_with(&mut self, id: &str, at: UnixMillis, write: impl FnOnce(&mut DetailJson<'_>)) {
        if self.count > 0 {
            self.json.push(b',');
        }
        self.json.extend_from_slice(b"{\"id\":");
        json_string(&mut self.json, id);
        self.json.extend_from_slice(b",\"at\":");
        self.json.extend_from_slice(itoa::Buffer::new().format(at).as_bytes());
        self.json.extend_from_slice(b",\"detail\":{");
        let groups = self.shared.len();
        let mut d = DetailJson::in_block(&mut self.json, &mut self.shared, MAX_SHARED);
        write(&mut d);
        let with = d.with();
        if let Some(added) = self.shared.get(groups) {
            self.shared_bytes += added.json().len() + b",{\"shared\":{}}".len();
        }
        self.json.push(b'}');
        if let Some(i) = with {
            self.json.extend_from_slice(b",\"with\":");
            self.json.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
        }
        self.json.push(b'}');
        self.count += 1;
        self.first = self.first.min(at);
        self.last = self.last.max(at);
    }

    /// The block as one event, dated by its earliest statement.
    pub fn finish(mut self) -> AuditEvent {
        for fields in &self.shared {
            self.json.extend_from_slice(b",{\"shared\":{");
            self.json.extend_from_slice(fields.json());
            self.json.extend_from_slice(b"}}");
        }
        self.json.push(b']');
        let json = ascii_or_utf8(self.json);
        self.block.at = if self.count == 0 { self.block.at } else { self.first };
        self.block.detail.insert(COUNT.to_owned(), self.count.to_string());
        self.block.detail.insert(LIST.to_owned(), json);
        self.block
    }
}

/// Fields several statements of a block share.
type Group = BTreeMap<String, String>;

/// One statement read out of a block: its own fields, and which group of
/// shared ones it names.
struct Member {
    id: String,
    at: UnixMillis,
    detail: BTreeMap<String, String>,
    with: Option<usize>,
}

/// A block's statements and the field groups they share; `None` when the
/// list does not read as one (only ever an edited block).
fn read_members(list: &str) -> Option<(Vec<Member>, Vec<Group>)> {
    let entries: Vec<Entry> = serde_json::from_str(list).ok()?;
    let (shared, statements): (Vec<Entry>, Vec<Entry>) = entries.into_iter().partition(|e| e.shared.is_some());
    let shared: Vec<Group> = shared.into_iter().filter_map(|e| e.shared).collect();
    let members = statements
        .into_iter()
        .map(|e| match (e.id, e.at, e.detail) {
            (Some(id), Some(at), Some(detail)) if e.with.is_none_or(|i| i < shared.len()) => Some(Member {
                id,
                at,
                detail,
                with: e.with,
            }),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()?;
    Some((members, shared))
}

/// Detail keys the control plane sets on a block it takes from a proxy,
/// which no statement or shared group may carry: theirs would win when the
/// block is read back.
pub const HEADER_ONLY: &[&str] = &["proxy"];

/// Why a block sent from elsewhere (a remote proxy) may not be stored: its
/// count must be its statements' (it decides the sequence numbers they
/// take), each statement's id of a proxy's form (`evt_`) and its own in the
/// block, each statement's time within the block's span (searches by time
/// find a block by it), and no statement may carry a `HEADER_ONLY` key.
pub fn check(event: &AuditEvent) -> Result<(), String> {
    if event.action != BLOCK {
        return Ok(());
    }
    let count = event.detail.get(COUNT).and_then(|c| c.parse::<u64>().ok());
    let Some((members, shared)) = event.detail.get(LIST).and_then(|l| read_members(l)) else {
        return Err(format!("block {}: its statements do not read as a list", event.id));
    };
    if count != Some(members.len() as u64) || members.is_empty() || members.len() as u64 > MAX_STATEMENTS {
        return Err(format!(
            "block {}: a count of {} for {} statements (1 to {MAX_STATEMENTS})",
            event.id,
            event.detail.get(COUNT).map_or("none", String::as_str),
            members.len()
        ));
    }
    let mut ids = std::collections::HashSet::new();
    let span = event.at..=event.at.saturating_add(MAX_SPAN_MS);
    for m in &members {
        let why = if !m.id.starts_with("evt_") {
            "does not start with evt_"
        } else if !ids.insert(m.id.as_str()) {
            "is given twice"
        } else if !span.contains(&m.at) {
            "has a time outside the block's span"
        } else {
            continue;
        };
        return Err(format!("block {}: statement id {:?} {why}", event.id, m.id));
    }
    let fields = members.iter().map(|m| &m.detail).chain(&shared);
    if let Some(key) = fields
        .flat_map(|d| d.keys())
        .find(|k| HEADER_ONLY.contains(&k.as_str()))
    {
        return Err(format!("block {}: a statement may not set {key:?}", event.id));
    }
    Ok(())
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
    expand_lazily(seq, event).collect()
}

/// `expand`, one event at a time, from either end: the fields a block's
/// statements share (a prepared statement's text) are copied into each
/// statement only as it is taken, so a reader that stops early, or keeps
/// few, never holds the whole block written out.
pub fn expand_lazily(seq: u64, mut event: AuditEvent) -> Expanded {
    let read = match event.action == BLOCK {
        true => event.detail.get(LIST).and_then(|l| read_members(l)),
        false => None,
    };
    let Some((members, shared)) = read else {
        return Expanded {
            seq,
            plain: Some(event),
            header: None,
            shared: Vec::new(),
            members: Vec::new().into_iter().enumerate(),
        };
    };
    event.detail.remove(COUNT);
    event.detail.remove(LIST);
    Expanded {
        seq,
        plain: None,
        header: Some(event),
        shared,
        members: members.into_iter().enumerate(),
    }
}

/// The events stored in one row (see `expand_lazily`).
pub struct Expanded {
    seq: u64,
    /// An event that is not a block, given once.
    plain: Option<AuditEvent>,
    /// A block's own fields: who, where, and what all its statements share.
    header: Option<AuditEvent>,
    shared: Vec<Group>,
    members: std::iter::Enumerate<std::vec::IntoIter<Member>>,
}

impl Expanded {
    /// The `i`th statement of the block, written out whole.
    fn statement(&self, i: usize, m: Member) -> Option<(u64, AuditEvent)> {
        let header = self.header.as_ref()?;
        let mut detail = m.detail;
        let group = m.with.and_then(|g| self.shared.get(g));
        for (k, v) in group.into_iter().flatten().chain(&header.detail) {
            detail.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let statement = AuditEvent {
            id: m.id,
            at: m.at,
            action: STATEMENT.to_owned(),
            user: header.user.clone(),
            resource: header.resource.clone(),
            role: header.role.clone(),
            session_id: header.session_id.clone(),
            grant_id: header.grant_id.clone(),
            request_id: header.request_id.clone(),
            reason: header.reason.clone(),
            approvers: header.approvers.clone(),
            detail,
        };
        Some((self.seq + i as u64, statement))
    }
}

impl Iterator for Expanded {
    type Item = (u64, AuditEvent);

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.plain.take() {
            return Some((self.seq, e));
        }
        let (i, m) = self.members.next()?;
        self.statement(i, m)
    }
}

impl DoubleEndedIterator for Expanded {
    fn next_back(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.plain.take() {
            return Some((self.seq, e));
        }
        let (i, m) = self.members.next_back()?;
        self.statement(i, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::detail::Detail;

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
    fn a_block_from_elsewhere_must_count_its_statements_and_name_them_as_a_proxy_does() {
        let mut b = BlockBuilder::new(session());
        b.push("evt_a", 1, detail("SELECT 1"));
        b.push("evt_b", 2, detail("SELECT 2"));
        let block = b.finish();
        assert_eq!(check(&block), Ok(()));
        let mut forged = block.clone();
        forged.detail.insert(COUNT.into(), "5".into());
        assert!(check(&forged).is_err_and(|e| e.contains("a count of 5 for 2 statements")));
        let renamed = AuditEvent {
            detail: block
                .detail
                .iter()
                .map(|(k, v)| (k.clone(), v.replace("evt_b", "wf_b")))
                .collect(),
            ..block.clone()
        };
        assert!(check(&renamed).is_err_and(|e| e.contains("\"wf_b\"")));
        let edited = |from: &str, to: &str| AuditEvent {
            detail: block
                .detail
                .iter()
                .map(|(k, v)| (k.clone(), v.replace(from, to)))
                .collect(),
            ..block.clone()
        };
        let twice = edited("evt_b", "evt_a");
        assert!(check(&twice).is_err_and(|e| e.contains("\"evt_a\" is given twice")));
        let late = edited("\"at\":2", &format!("\"at\":{}", 2 + MAX_SPAN_MS));
        assert!(
            check(&late).is_err_and(|e| e.contains("outside the block's span")),
            "{late:?}"
        );
        let early = edited("\"at\":2", "\"at\":0");
        assert!(check(&early).is_err_and(|e| e.contains("outside the block's span")));
        let posing = edited("\"text\":\"SELECT 2\"", "\"text\":\"SELECT 2\",\"proxy\":\"p0\"");
        assert!(
            check(&posing).is_err_and(|e| e.contains("may not set \"proxy\"")),
            "{posing:?}"
        );
        let mut unreadable = block;
        unreadable.detail.insert(LIST.into(), "[".into());
        assert!(check(&unreadable).is_err());
        assert_eq!(check(&session()), Ok(()), "not a block: nothing to check");
    }

    #[test]
    fn a_block_is_read_from_either_end_one_statement_at_a_time() {
        let mut b = BlockBuilder::new(session());
        for (id, at) in [("evt_a", 1), ("evt_b", 2), ("evt_c", 3)] {
            b.push(id, at, detail(id));
        }
        let block = b.finish();
        let ids = |v: Vec<(u64, AuditEvent)>| v.into_iter().map(|(s, e)| (s, e.id)).collect::<Vec<_>>();
        let mut back = expand_lazily(10, block.clone()).rev().collect::<Vec<_>>();
        back.reverse();
        assert_eq!(ids(back), ids(expand(10, block.clone())));
        let newest = expand_lazily(10, block.clone()).next_back().map(|(s, e)| (s, e.id));
        assert_eq!(newest, Some((12, "evt_c".to_owned())));
        let mut plain = expand_lazily(5, session());
        assert_eq!(plain.next_back().map(|(s, _)| s), Some(5));
        assert!(plain.next().is_none(), "a plain event comes once");
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

    fn shared(text: &str) -> Arc<Fields> {
        let mut f = Fields::default();
        f.put("class", "SELECT");
        f.put("text", text);
        Arc::new(f)
    }

    #[test]
    fn shared_fields_are_stored_once_and_read_back_into_every_statement() {
        let (a, b) = (shared("SELECT \"a\" $1"), shared("SELECT b"));
        let mut block = BlockBuilder::new(session());
        for (i, group) in [&a, &b, &a, &a].into_iter().enumerate() {
            block.push_with(&format!("evt_{i}"), 1, |d| {
                d.put_shared(group);
                d.put_number("rows", i as u64);
            });
        }
        // A second group in one statement is written whole.
        let mut tables = Fields::default();
        tables.put("tables", "t");
        block.push_with("evt_4", 1, |d| {
            d.put_shared(&a);
            d.put_shared(&Arc::new(tables));
        });
        let event = block.finish();
        assert_eq!(event.detail[LIST].matches("SELECT b").count(), 1);
        assert_eq!(event.detail[LIST].matches("SELECT \\\"a\\\" $1").count(), 1);
        let out = expand(1, event);
        let texts: Vec<&str> = out.iter().map(|(_, e)| e.detail["text"].as_str()).collect();
        assert_eq!(
            texts,
            [
                "SELECT \"a\" $1",
                "SELECT b",
                "SELECT \"a\" $1",
                "SELECT \"a\" $1",
                "SELECT \"a\" $1"
            ]
        );
        let (_, third) = &out[2];
        assert_eq!(
            (
                third.id.as_str(),
                third.detail["class"].as_str(),
                third.detail["rows"].as_str()
            ),
            ("evt_2", "SELECT", "2")
        );
        assert_eq!(out[4].1.detail["tables"], "t");
        assert_eq!(out.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn past_the_groups_a_block_takes_fields_are_written_whole() {
        let groups: Vec<Arc<Fields>> = (0..=MAX_SHARED).map(|i| shared(&format!("SELECT {i}"))).collect();
        let mut block = BlockBuilder::new(session());
        for (i, g) in groups.iter().enumerate() {
            block.push_with(&format!("evt_{i}"), 1, |d| d.put_shared(g));
        }
        let out = expand(1, block.finish());
        assert_eq!(out.len(), MAX_SHARED + 1);
        for (i, (_, e)) in out.iter().enumerate() {
            assert_eq!(e.detail["text"], format!("SELECT {i}"));
        }
    }

    #[test]
    fn a_block_naming_a_group_it_lacks_reads_as_stored() {
        let mut block = BlockBuilder::new(session());
        block.push_with("evt_0", 1, |d| d.put_shared(&shared("SELECT 1")));
        let mut event = block.finish();
        let list = event.detail[LIST].replace("\"with\":0", "\"with\":1");
        event.detail.insert(LIST.into(), list);
        assert_eq!(expand(9, event.clone()), vec![(9, event)]);
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
        // Shared fields count too, though written at the end.
        let mut big = BlockBuilder::new(session());
        big.push_with("evt_big", 0, |d| d.put_shared(&shared(&"x".repeat(MAX_BYTES))));
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
