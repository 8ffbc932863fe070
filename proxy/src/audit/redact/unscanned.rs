//! Values in a text pg_query's scanner cannot read, most often strings
//! with backslash escapes (a session with `standard_conforming_strings`
//! off): found by a reading of our own, in both readings of a backslash.

use super::{REDACTED, says_password, spliced};
use crate::audit::comments::block_comment_end;

/// `text` with every value replaced by [`REDACTED`] in both readings of a
/// backslash in a string (an escape, as with `standard_conforming_strings`
/// off, or a plain character), so that no reading leaves a password out:
/// strings, dollar-quoted bodies, and after a name that says password the
/// word, quoted name or `$n` that follows (that parameter goes to
/// `params`). Names, keywords and comments stay. `None` when, read with
/// escapes, a string, quoted name or comment does not end. Taking out
/// every value is too much for a text that scans, and enough for one that
/// does not: what the statement does stays on record.
pub(super) fn every_value_redacted(text: &str, params: &mut Vec<usize>) -> Option<String> {
    let escaped = values(text, true).ok()?;
    // Read plainly, the text may not end its last string: all of it goes.
    let plain = values(text, false).unwrap_or_else(|cut| cut);
    let mut spans = escaped.spans;
    spans.extend(plain.spans);
    params.extend(escaped.params.into_iter().chain(plain.params));
    params.sort_unstable();
    params.dedup();
    Some(replaced(text, spans))
}

/// `text` without its values, read with backslash escapes (how a session
/// with `standard_conforming_strings` off reads it), for the parser.
pub(crate) fn without_values(text: &str) -> Option<String> {
    Some(replaced(text, values(text, true).ok()?.spans))
}

/// `text` with each of `spans` (byte ranges, in any order, overlapping or
/// not) replaced by one [`REDACTED`]: overlapping ones are merged first.
fn replaced(text: &str, mut spans: Vec<(usize, usize)>) -> String {
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize, &str)> = Vec::with_capacity(spans.len());
    for (start, end) in spans {
        match merged.last_mut() {
            Some(last) if start < last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end, REDACTED)),
        }
    }
    spliced(text, merged)
}

/// The values found in one reading of a text.
#[derive(Default)]
struct Values {
    /// Byte ranges to replace.
    spans: Vec<(usize, usize)>,
    /// Parameters written where a password goes.
    params: Vec<usize>,
}

/// Whether `c` continues a name (PostgreSQL allows `$` after its first character).
fn in_name(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// The values of `text`, its backslashes read as escapes or not. `Err`
/// when a string, quoted name or comment does not end: what was found,
/// and that one from its start to the end of the text.
fn values(text: &str, escapes: bool) -> Result<Values, Values> {
    let mut found = Values::default();
    match scan_values(text, escapes, &mut found) {
        Ok(()) => Ok(found),
        Err(start) => {
            found.spans.push((start, text.len()));
            Err(found)
        }
    }
}

/// Finds the values of `text` into `found`; `Err(start)` where a string,
/// quoted name or comment that does not end begins.
fn scan_values(text: &str, escapes: bool, found: &mut Values) -> Result<(), usize> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut after_password = false;
    while i < b.len() {
        let start = i;
        match b[i] {
            b'\'' => {
                // An `E` prefix escapes in either reading.
                let prefixed =
                    start > 0 && b[start - 1].eq_ignore_ascii_case(&b'e') && (start < 2 || !in_name(b[start - 2]));
                let escapes = escapes || prefixed;
                i += 1;
                loop {
                    match b.get(i).ok_or(start)? {
                        b'\\' if escapes => i += 2,
                        b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
                        b'\'' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                found.spans.push((if prefixed { start - 1 } else { start }, i));
                after_password = false;
            }
            b'"' => {
                i += 1;
                loop {
                    match b.get(i).ok_or(start)? {
                        b'"' if b.get(i + 1) == Some(&b'"') => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
                i += 1;
                if after_password {
                    found.spans.push((start, i));
                }
                after_password = says_password(&b[start..i]);
            }
            // A line comment ends at either line break.
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = memchr::memchr2(b'\n', b'\r', &b[i..]).map_or(b.len(), |n| i + n);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = block_comment_end(b, i).ok_or(start)?,
            b'$' => {
                // `$n`, or `$tag$ ... $tag$` (a tag may hold any letter).
                let tag_len = b[i + 1..].iter().take_while(|c| in_name(**c) && **c != b'$').count();
                let end = i + 1 + tag_len;
                let digits = tag_len > 0 && b[i + 1..end].iter().all(u8::is_ascii_digit);
                if digits {
                    if after_password && let Ok(n) = text[i + 1..end].parse() {
                        found.params.push(n);
                    }
                    i = end;
                    after_password = false;
                } else if b.get(end) == Some(&b'$') && !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    let tag = &text[i..=end];
                    let body = end + 1;
                    i = body + text[body..].find(tag).ok_or(start)? + tag.len();
                    found.spans.push((start, i));
                    after_password = false;
                } else {
                    i += 1;
                }
            }
            c if in_name(c) => {
                while i < b.len() && in_name(b[i]) {
                    i += 1;
                }
                let word = &b[start..i];
                // The prefix of an `E'...'` string.
                if word.eq_ignore_ascii_case(b"e") && b.get(i) == Some(&b'\'') {
                    continue;
                }
                if after_password && !word.eq_ignore_ascii_case(b"to") {
                    found.spans.push((start, i));
                    after_password = false;
                } else {
                    after_password = says_password(word);
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::redact;

    /// The redacted text alone.
    fn text(sql: &str) -> Option<String> {
        redact(sql).text
    }

    #[test]
    fn text_that_does_not_scan_keeps_what_it_does() {
        // standard_conforming_strings off: the server reads `'x\''` whole,
        // the scanner an unterminated string. Read without escapes, the
        // last string never ends: from there all of it goes.
        let sql = r"WITH d AS (DELETE FROM accounts RETURNING 1) SELECT count(*) FROM d WHERE 'x\'' <> '' -- password";
        assert_eq!(
            text(sql).as_deref(),
            Some("WITH d AS (DELETE FROM accounts RETURNING 1) SELECT count(*) FROM d WHERE '[redacted]'")
        );
        for (sql, want) in [
            (
                r"ALTER ROLE bob PASSWORD 'it\'s hunter2'",
                "ALTER ROLE bob PASSWORD '[redacted]'",
            ),
            (
                r"ALTER ROLE bob PASSWORD E'it\'s' VALID UNTIL 'it\'s'",
                "ALTER ROLE bob PASSWORD '[redacted]' VALID UNTIL '[redacted]'",
            ),
            (
                r#"SELECT "it's" /* 'not \' a string */, $q$ it's $q$ FROM t WHERE password = hunter2 AND x = 'y\''"#,
                r#"SELECT "it's" /* 'not \' a string */, '[redacted]' FROM t WHERE password = '[redacted]' AND x = '[redacted]'"#,
            ),
            // A line comment ends at a carriage return too.
            (
                "ALTER ROLE bob --\rPASSWORD 'it\\'s hunter2'",
                "ALTER ROLE bob --\rPASSWORD '[redacted]'",
            ),
            // A dollar quote's tag may hold any letter.
            (
                r"ALTER ROLE bob PASSWORD $é$correct horse$é$ VALID UNTIL 'x\''",
                "ALTER ROLE bob PASSWORD '[redacted]' VALID UNTIL '[redacted]'",
            ),
            (
                r#"ALTER ROLE bob PASSWORD "hunter2" VALID UNTIL 'x\''"#,
                "ALTER ROLE bob PASSWORD '[redacted]' VALID UNTIL '[redacted]'",
            ),
            // In either reading of the backslash, no string is left out.
            (
                r"ALTER ROLE bob PASSWORD 'x\' 'hunter2' '",
                "ALTER ROLE bob PASSWORD '[redacted]'",
            ),
            // `$` inside a name opens nothing; an `e` ending a word prefixes nothing.
            (
                r"SELECT a$q$ FROM t WHERE at = time'12:00' AND password = 'it\'s'",
                "SELECT a$q$ FROM t WHERE at = time'[redacted]' AND password = '[redacted]'",
            ),
        ] {
            assert_eq!(text(sql).as_deref(), Some(want), "{sql}");
        }
        // A parameter where a password goes: its value is hidden, the text kept.
        let found = redact(r"UPDATE users SET password = $1 WHERE note = 'it\'s'");
        assert_eq!(
            found.text.as_deref(),
            Some("UPDATE users SET password = $1 WHERE note = '[redacted]'")
        );
        assert_eq!(found.params, [1]);
        // A string that never ends: nothing of it can be told apart.
        assert_eq!(
            text("SELECT 'hunter2 -- password").as_deref(),
            Some("[redacted: the statement mentions a password and could not be scanned]")
        );
    }
}
