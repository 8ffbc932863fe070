//! A block's statements as the SQLite log keeps them: its JSON list
//! LZ4-compressed, in the `body` column as a BLOB. Under load the writer's
//! cost is the bytes it writes: each page goes to the WAL and again to the
//! file at the checkpoint, which reads it back first. A block's statements
//! repeat their keys and most of their values, and shrink about eightfold,
//! for less CPU than the writes they save.
//!
//! A body stored as TEXT (a file written before, or the PostgreSQL log,
//! which compresses large values itself) reads as it is. The chain links the
//! JSON, not the bytes stored, so `verify` reads either the same way.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;

use crate::store::value::{FromValue, Value};

/// Bodies larger than this are kept as TEXT, and a stored size larger than
/// this is an edit: reading a BLOB never allocates more.
const MAX_PACKED: usize = 16 * 1024 * 1024;

/// The SQL function that reads a `body` as text, whichever way it is stored.
pub(super) const SQL_FUNCTION: &str = "audit_body";

/// `json` as the SQLite log stores it: LZ4 with its size before it, or the
/// text itself when it is too large to be read back compressed.
pub(super) fn pack(json: &str) -> Value {
    if json.len() > MAX_PACKED {
        return Value::Text(json.to_owned());
    }
    Value::Bytes(lz4_flex::compress_prepend_size(json.as_bytes()))
}

/// A byte of LZ4 decodes to at most this many bytes: a stored size past
/// what the stored bytes can hold is an edit, and reading allocates no more.
const MAX_RATIO: usize = 255;

/// The JSON of a stored BLOB body; `None` when it is not one `pack` made.
fn unpack(stored: &[u8]) -> Option<String> {
    let (size, compressed) = stored.split_first_chunk::<4>()?;
    let size = usize::try_from(u32::from_le_bytes(*size)).ok()?;
    if size > MAX_PACKED || size > compressed.len().saturating_mul(MAX_RATIO) {
        return None;
    }
    let json = lz4_flex::decompress(compressed, size).ok()?;
    if json.len() != size {
        return None;
    }
    String::from_utf8(json).ok()
}

/// A `body` column read back: the block's statements' JSON.
pub(super) struct Body(pub String);

impl FromValue for Body {
    const EXPECTED: &'static str = "a block's statements (JSON, or LZ4-compressed JSON)";
    fn from_value(v: &Value) -> Option<Body> {
        match v {
            Value::Text(json) => Some(Body(json.clone())),
            Value::Bytes(stored) => unpack(stored).map(Body),
            _ => None,
        }
    }
}

/// Gives `conn` the `audit_body(body)` function that searches, and tools
/// or tests reading the file, read bodies with: the JSON of either form;
/// NULL for NULL or a BLOB that does not unpack (which `verify` reports as
/// an edit).
pub fn register(conn: &rusqlite::Connection) -> rusqlite::Result<()> {
    conn.create_scalar_function(
        SQL_FUNCTION,
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            Ok(match ctx.get_raw(0) {
                ValueRef::Text(json) => Some(String::from_utf8_lossy(json).into_owned()),
                ValueRef::Blob(stored) => unpack(stored),
                _ => None,
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_body_reads_back_smaller_and_whole() {
        let json =
            r#"[{"id":"evt_1","detail":{"text":"SELECT abalance FROM pgbench_accounts WHERE aid = 1"}}]"#.repeat(50);
        let Value::Bytes(stored) = pack(&json) else {
            panic!("a block's body is compressed");
        };
        assert!(
            stored.len() * 4 < json.len(),
            "{} bytes for {}",
            stored.len(),
            json.len()
        );
        assert_eq!(unpack(&stored), Some(json));
    }

    #[test]
    fn an_edited_or_oversized_blob_does_not_unpack() {
        let Value::Bytes(mut stored) = pack("[\"SELECT 1\"]") else {
            panic!("compressed");
        };
        for size in [u32::MAX, 1 << 20] {
            let mut huge = stored.clone();
            huge[..4].copy_from_slice(&size.to_le_bytes());
            assert_eq!(
                unpack(&huge),
                None,
                "{size}: past what the bytes can hold, nothing is allocated"
            );
        }
        stored.truncate(stored.len() - 2);
        assert_eq!(unpack(&stored), None);
        assert_eq!(unpack(&[1, 0]), None);
    }

    #[test]
    fn the_sql_function_reads_both_forms() {
        let conn = rusqlite::Connection::open_in_memory().expect("memory");
        register(&conn).expect("register");
        let Value::Bytes(stored) = pack("[\"SELECT 1\"]") else {
            panic!("compressed");
        };
        let read = |v: &dyn rusqlite::ToSql| -> Option<String> {
            conn.query_row("SELECT audit_body(?1)", [v], |r| r.get(0))
                .expect("query")
        };
        assert_eq!(read(&stored).as_deref(), Some("[\"SELECT 1\"]"));
        assert_eq!(read(&"[\"as text\"]").as_deref(), Some("[\"as text\"]"));
        assert_eq!(read(&vec![9u8, 9]), None);
        assert_eq!(read(&rusqlite::types::Null), None);
    }
}
