//! Binary-format values of common types in their text form, as PostgreSQL's
//! own output functions write them (`42`, `t`... see below), so a bound
//! value reads the same whichever format the driver chose. Types come from
//! the OIDs in `pg_type.dat`; anything else stays a length.

/// Appends the text form of `value` of type `oid` to `out`, at most `max`
/// bytes of it for text types; false, with nothing appended, for a type not
/// decoded here or a malformed value. Appending lets a tracker reuse one
/// string per parameter from Bind to Bind.
pub(super) fn text(oid: u32, value: &[u8], max: usize, out: &mut String) -> bool {
    let mut int = itoa::Buffer::new();
    let decoded: &str = match (oid, value) {
        // bool: any non-zero byte is true (boolrecv); written `t` / `f`.
        (16, [0]) => "f",
        (16, [_]) => "t",
        (20, &[a, b, c, d, e, f, g, h]) => int.format(i64::from_be_bytes([a, b, c, d, e, f, g, h])),
        (21, &[a, b]) => int.format(i16::from_be_bytes([a, b])),
        (23, &[a, b, c, d]) => int.format(i32::from_be_bytes([a, b, c, d])),
        (26, &[a, b, c, d]) => int.format(u32::from_be_bytes([a, b, c, d])),
        (700, &[a, b, c, d]) => return float(f64::from(f32::from_be_bytes([a, b, c, d])), out),
        (701, &[a, b, c, d, e, f, g, h]) => return float(f64::from_be_bytes([a, b, c, d, e, f, g, h]), out),
        (2950, v) => match <[u8; 16]>::try_from(v) {
            Ok(b) => return uuid(b, out),
            Err(_) => return false,
        },
        // name, text, bpchar, varchar, json: the text itself.
        (19 | 25 | 1042 | 1043 | 114, v) => return lossy(v, max, out),
        // jsonb: a version byte (1), then the text.
        (3802, [1, rest @ ..]) => return lossy(rest, max, out),
        _ => return false,
    };
    out.push_str(decoded);
    true
}

fn float(f: f64, out: &mut String) -> bool {
    use std::fmt::Write;
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        let _ = write!(out, "{f}");
    }
    true
}

fn uuid(b: [u8; 16], out: &mut String) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    true
}

/// The first `max` bytes as text, cut before a character split in two.
fn lossy(value: &[u8], max: usize, out: &mut String) -> bool {
    let first = &value[..value.len().min(max)];
    let end = match std::str::from_utf8(first) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => first.len(),
    };
    super::record::push_lossy(out, &first[..end]);
    true
}

#[cfg(test)]
mod tests {
    /// `text` into a fresh string.
    fn text(oid: u32, value: &[u8], max: usize) -> Option<String> {
        let mut out = String::new();
        super::text(oid, value, max, &mut out).then_some(out)
    }

    #[test]
    fn common_types_read_as_their_text_form() {
        let cases: &[(u32, &[u8], Option<&str>)] = &[
            (16, &[1], Some("t")),
            (16, &[0], Some("f")),
            (21, &(-7i16).to_be_bytes(), Some("-7")),
            (23, &42i32.to_be_bytes(), Some("42")),
            (20, &i64::MAX.to_be_bytes(), Some("9223372036854775807")),
            (26, &u32::MAX.to_be_bytes(), Some("4294967295")),
            (700, &1.5f32.to_be_bytes(), Some("1.5")),
            (701, &f64::NEG_INFINITY.to_be_bytes(), Some("-Infinity")),
            (701, &f64::NAN.to_be_bytes(), Some("NaN")),
            (25, "héllo".as_bytes(), Some("héllo")),
            (3802, b"\x01{\"a\":1}", Some("{\"a\":1}")),
            (
                2950,
                &[
                    0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
                ],
                Some("12345678-9abc-def0-0123-456789abcdef"),
            ),
            // Malformed or unknown: left as a length.
            (23, &[0, 1], None),
            (16, &[], None),
            (3802, b"\x02{}", None),
            (1700, &[0, 0, 0, 0, 0, 0, 0, 0], None),
        ];
        for (oid, value, want) in cases {
            assert_eq!(text(*oid, value, 1024).as_deref(), *want, "oid {oid}");
        }
        // Text types are cut to the limit, never inside a character.
        assert_eq!(text(25, "aé".as_bytes(), 2).as_deref(), Some("a"));
        // Appended to what the string held; nothing for a value not read.
        let mut out = String::from("x");
        assert!(super::text(23, &7i32.to_be_bytes(), 1024, &mut out) && out == "x7");
        assert!(!super::text(23, &[0], 1024, &mut out) && out == "x7");
    }
}
