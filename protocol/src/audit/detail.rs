//! An event's detail written one field at a time: into a map, or straight
//! into a block's JSON with no map in between (the audit thread writes
//! every statement this way), or into `Fields` rendered once and added to
//! many statements.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use super::json::{is_plain, json_string, json_string_twice};

/// Where an event's detail is written, one key and value at a time. Keys
/// are plain words (letters, digits, `_`), each put once.
pub trait Detail {
    /// Adds `key` with `value`.
    fn put(&mut self, key: &'static str, value: &str);

    /// Adds `key` with a value that needs no JSON escape (a fixed word, a
    /// number): written as it is.
    fn put_plain(&mut self, key: &'static str, value: &str) {
        self.put(key, value);
    }

    /// Adds `key` with a number, written as a string as every detail value is.
    fn put_number(&mut self, key: &'static str, n: u64) {
        self.put_plain(key, itoa::Buffer::new().format(n));
    }

    /// Adds `key` with, as its value, the JSON array of `items` (a string
    /// each, `None` as null) as serde_json writes it.
    fn put_list<'a>(&mut self, key: &'static str, items: impl IntoIterator<Item = Option<Cow<'a, str>>>) {
        let mut list = vec![b'['];
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                list.push(b',');
            }
            match item {
                Some(s) => json_string(&mut list, &s),
                None => list.extend_from_slice(b"null"),
            }
        }
        list.push(b']');
        self.put(key, &ascii_or_utf8(list));
    }

    /// Adds every field of `fields`.
    fn put_fields(&mut self, fields: &Fields);

    /// Adds every field of `fields`, which many events share: a block
    /// stores them once, and this event names them.
    fn put_shared(&mut self, fields: &Arc<Fields>) {
        self.put_fields(fields);
    }
}

impl Detail for BTreeMap<String, String> {
    fn put(&mut self, key: &'static str, value: &str) {
        self.insert(key.to_owned(), value.to_owned());
    }

    fn put_fields(&mut self, fields: &Fields) {
        self.extend(fields.to_map());
    }
}

/// A statement's detail being written into its block's JSON object.
pub struct DetailJson<'a> {
    json: &'a mut Vec<u8>,
    first: bool,
    /// The block's shared field groups, and how many it takes at most.
    shared: Option<(&'a mut Vec<Arc<Fields>>, usize)>,
    /// The group this statement names.
    with: Option<usize>,
}

impl<'a> DetailJson<'a> {
    /// An object's fields, written into `json` (the caller writes the
    /// braces) after those already there unless `first`; shared fields are
    /// written whole.
    fn appending(json: &'a mut Vec<u8>, first: bool) -> DetailJson<'a> {
        DetailJson {
            json,
            first,
            shared: None,
            with: None,
        }
    }

    /// An empty object's fields, written into `json`.
    #[cfg(test)]
    fn new(json: &'a mut Vec<u8>) -> DetailJson<'a> {
        DetailJson::appending(json, true)
    }

    /// A statement's fields, written into its block's `json`; the groups it
    /// shares go to `shared` (up to `max` of them), to be written once.
    pub(super) fn in_block(json: &'a mut Vec<u8>, shared: &'a mut Vec<Arc<Fields>>, max: usize) -> DetailJson<'a> {
        DetailJson {
            json,
            first: true,
            shared: Some((shared, max)),
            with: None,
        }
    }

    /// The place of the shared group the statement names, if any.
    pub(super) fn with(&self) -> Option<usize> {
        self.with
    }

    /// A comma before every field but the first.
    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.json.push(b',');
        }
    }

    /// `"key":`, after a comma unless first.
    fn key(&mut self, key: &str) {
        debug_assert!(is_plain(key), "{key:?}");
        self.separate();
        self.json.push(b'"');
        self.json.extend_from_slice(key.as_bytes());
        self.json.extend_from_slice(b"\":");
    }

    /// Adds a field whose key is anyone's: escaped like its value.
    pub(super) fn put_any(&mut self, key: &str, value: &str) {
        self.separate();
        json_string(self.json, key);
        self.json.push(b':');
        json_string(self.json, value);
    }
}

impl Detail for DetailJson<'_> {
    fn put(&mut self, key: &'static str, value: &str) {
        self.key(key);
        json_string(self.json, value);
    }

    fn put_plain(&mut self, key: &'static str, value: &str) {
        debug_assert!(is_plain(value), "{value:?}");
        self.key(key);
        self.json.push(b'"');
        self.json.extend_from_slice(value.as_bytes());
        self.json.push(b'"');
    }

    fn put_list<'b>(&mut self, key: &'static str, items: impl IntoIterator<Item = Option<Cow<'b, str>>>) {
        self.key(key);
        self.json.extend_from_slice(b"\"[");
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.json.push(b',');
            }
            match item {
                Some(s) => json_string_twice(self.json, &s),
                None => self.json.extend_from_slice(b"null"),
            }
        }
        self.json.extend_from_slice(b"]\"");
    }

    fn put_fields(&mut self, fields: &Fields) {
        if fields.json.is_empty() {
            return;
        }
        self.separate();
        self.json.extend_from_slice(&fields.json);
    }

    fn put_shared(&mut self, fields: &Arc<Fields>) {
        let place = match &mut self.shared {
            Some((groups, max)) if self.with.is_none() => match groups.iter().position(|g| Arc::ptr_eq(g, fields)) {
                Some(i) => Some(i),
                None if groups.len() < *max => {
                    groups.push(Arc::clone(fields));
                    Some(groups.len() - 1)
                }
                None => None,
            },
            _ => None,
        };
        match place {
            Some(i) => self.with = Some(i),
            None => self.put_fields(fields),
        }
    }
}

/// Detail fields rendered once, to be added to many events: e.g. the
/// class, tables and text of a prepared statement, whatever the number of
/// times it runs. Kept as JSON only, what blocks take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    /// The fields as the inside of a JSON object.
    json: Vec<u8>,
}

impl Fields {
    fn writer(&mut self) -> DetailJson<'_> {
        let first = self.json.is_empty();
        DetailJson::appending(&mut self.json, first)
    }

    /// The fields as the inside of a JSON object.
    pub(super) fn json(&self) -> &[u8] {
        &self.json
    }

    /// The fields as a map.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut object = Vec::with_capacity(self.json.len() + 2);
        object.push(b'{');
        object.extend_from_slice(&self.json);
        object.push(b'}');
        // Written as JSON strings only: it always reads back.
        serde_json::from_slice(&object).unwrap_or_default()
    }
}

impl Detail for Fields {
    fn put(&mut self, key: &'static str, value: &str) {
        self.writer().put(key, value);
    }

    fn put_plain(&mut self, key: &'static str, value: &str) {
        self.writer().put_plain(key, value);
    }

    fn put_list<'a>(&mut self, key: &'static str, items: impl IntoIterator<Item = Option<Cow<'a, str>>>) {
        self.writer().put_list(key, items);
    }

    fn put_fields(&mut self, fields: &Fields) {
        self.writer().put_fields(fields);
    }
}

/// Bytes that `json_string` and ASCII punctuation wrote, as a String.
pub(super) fn ascii_or_utf8(json: Vec<u8>) -> String {
    // Whole strs and ASCII only are written: the fallback never runs.
    String::from_utf8(json).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(d: &mut impl Detail, shared: &Fields) {
        d.put("text", "SELECT \"x\" FROM t WHERE a = '\u{e9}\n'");
        d.put_plain("flow", "extended");
        d.put_number("rows", u64::MAX);
        d.put_list(
            "params",
            [
                Some(Cow::Borrowed("a\"b\\c\n")),
                None,
                Some(Cow::Owned("\u{1}".to_owned())),
            ],
        );
        d.put_fields(shared);
    }

    #[test]
    fn a_map_fields_and_json_hold_the_same_detail() {
        let mut shared = Fields::default();
        shared.put("class", "SELECT");
        shared.put("tables", "a,\"b\"");
        let mut map = BTreeMap::new();
        fill(&mut map, &shared);
        assert_eq!(map["params"], r#"["a\"b\\c\n",null,"\u0001"]"#);
        assert_eq!(map["rows"], u64::MAX.to_string());
        assert_eq!(map["tables"], "a,\"b\"");

        let mut json = vec![b'{'];
        fill(&mut DetailJson::new(&mut json), &shared);
        json.push(b'}');
        let read: BTreeMap<String, String> = serde_json::from_slice(&json).unwrap_or_default();
        assert_eq!(read, map);

        let mut fields = Fields::default();
        fill(&mut fields, &shared);
        assert_eq!(fields.to_map(), map);
        let mut json = vec![b'{'];
        DetailJson::new(&mut json).put_fields(&fields);
        json.push(b'}');
        assert_eq!(
            serde_json::from_slice::<BTreeMap<String, String>>(&json).ok(),
            Some(map)
        );
    }

    #[test]
    fn empty_fields_add_nothing() {
        let mut json = vec![b'{'];
        let mut d = DetailJson::new(&mut json);
        d.put_fields(&Fields::default());
        d.put_plain("a", "1");
        d.put_fields(&Fields::default());
        json.push(b'}');
        assert_eq!(json, br#"{"a":"1"}"#);
    }
}
