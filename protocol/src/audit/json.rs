//! JSON strings written as serde_json writes them, fast: every key and
//! value of every audited statement passes through here. 8-byte words that
//! need no escape (nearly all of any statement, and the whole of most
//! values) are checked at once and copied in one piece; only a word holding
//! a byte to escape goes byte by byte.

/// Appends `s` as a JSON string, escaped exactly as serde_json escapes it.
pub fn json_string(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    escaped_with(out, s.as_bytes(), |out, b| out.extend_from_slice(escape(b).bytes()));
    out.push(b'"');
}

/// Appends, without the outer quotes, the JSON string of the JSON string of
/// `s`: what `json_string` writes for a value that is itself the JSON
/// string of `s` (e.g. a list of values kept as one detail string), in one
/// pass and with no string in between.
pub fn json_string_twice(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 4);
    out.extend_from_slice(b"\\\"");
    escaped_with(out, s.as_bytes(), |out, b| {
        for &inner in escape(b).bytes() {
            out.extend_from_slice(escape(inner).bytes());
        }
    });
    out.extend_from_slice(b"\\\"");
}

/// Appends `bytes`, clean words as they are and each byte of a word that
/// needs an escape through `dirty`.
fn escaped_with(out: &mut Vec<u8>, bytes: &[u8], dirty: impl Fn(&mut Vec<u8>, u8)) {
    let mut i = 0;
    loop {
        let clean = i + clean_prefix(&bytes[i..]);
        out.extend_from_slice(&bytes[i..clean]);
        if clean == bytes.len() {
            return;
        }
        let end = (clean + 8).min(bytes.len());
        for &b in &bytes[clean..end] {
            dirty(out, b);
        }
        i = end;
    }
}

/// Whether `s` needs no escape at all: it is its own JSON string's content.
pub fn is_plain(s: &str) -> bool {
    clean_prefix(s.as_bytes()) == s.len()
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

/// One byte as serde_json writes it in a string: itself, or its escape.
struct Escaped {
    bytes: [u8; 6],
    len: u8,
}

impl Escaped {
    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

fn escape(b: u8) -> Escaped {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let two = |c: u8| Escaped {
        bytes: [b'\\', c, 0, 0, 0, 0],
        len: 2,
    };
    match b {
        b'"' => two(b'"'),
        b'\\' => two(b'\\'),
        b'\n' => two(b'n'),
        b'\r' => two(b'r'),
        b'\t' => two(b't'),
        0x08 => two(b'b'),
        0x0c => two(b'f'),
        b if b < 0x20 => Escaped {
            bytes: [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ],
            len: 6,
        },
        b => Escaped {
            bytes: [b, 0, 0, 0, 0, 0],
            len: 1,
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings with every kind of byte that needs an escape, at every place
    /// of strings from one word's part to three words.
    fn samples() -> Vec<String> {
        let every_control: String = (0u8..0x20).map(char::from).collect();
        let long = format!("{} \"x\" {}\n", "a".repeat(40), "\u{e9}".repeat(20));
        let mut all: Vec<String> = [
            "",
            "plain",
            "\"q\" \\ /",
            "caf\u{e9} \u{1f600}",
            "\u{7f}\u{2028}",
            &every_control,
            &long,
        ]
        .map(str::to_owned)
        .into();
        for len in 1..=24 {
            for at in 0..len {
                for special in ['\0', '\u{1f}', '\n', '"', '\\'] {
                    all.push((0..len).map(|i| if i == at { special } else { 'x' }).collect());
                }
            }
        }
        all
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        for s in samples() {
            let mut out = Vec::new();
            json_string(&mut out, &s);
            assert_eq!(String::from_utf8(out).ok(), serde_json::to_string(&s).ok(), "{s:?}");
            assert_eq!(is_plain(&s), serde_json::to_string(&s).ok() == Some(format!("\"{s}\"")));
        }
    }

    #[test]
    fn a_string_escaped_twice_is_the_json_of_its_json() {
        for s in samples() {
            let mut out = vec![b'"'];
            json_string_twice(&mut out, &s);
            out.push(b'"');
            let once = serde_json::to_string(&s).unwrap_or_default();
            assert_eq!(String::from_utf8(out).ok(), serde_json::to_string(&once).ok(), "{s:?}");
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
}
