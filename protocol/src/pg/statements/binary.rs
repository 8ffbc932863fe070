//! Binary-format values of common types in their text form, as PostgreSQL's
//! own output functions write them (`42`, `t`... see below), so a bound
//! value reads the same whichever format the driver chose. Types come from
//! the OIDs in `pg_type.dat`; anything else stays a length.

/// The text form of `value` of type `oid`, at most `max` bytes of it for
/// text types; `None` for a type not decoded here or a malformed value.
pub(super) fn text(oid: u32, value: &[u8], max: usize) -> Option<String> {
    Some(match oid {
        // bool: any non-zero byte is true (boolrecv); written `t` / `f`.
        16 => match value {
            [0] => "f".to_owned(),
            [_] => "t".to_owned(),
            _ => return None,
        },
        20 => i64::from_be_bytes(value.try_into().ok()?).to_string(),
        21 => i16::from_be_bytes(value.try_into().ok()?).to_string(),
        23 => i32::from_be_bytes(value.try_into().ok()?).to_string(),
        26 => u32::from_be_bytes(value.try_into().ok()?).to_string(),
        700 => float(f64::from(f32::from_be_bytes(value.try_into().ok()?))),
        701 => float(f64::from_be_bytes(value.try_into().ok()?)),
        2950 => uuid(value.try_into().ok()?),
        // name, text, bpchar, varchar, json: the text itself.
        19 | 25 | 1042 | 1043 | 114 => lossy(value, max),
        // jsonb: a version byte (1), then the text.
        3802 => match value.split_first() {
            Some((1, rest)) => lossy(rest, max),
            _ => return None,
        },
        _ => return None,
    })
}

fn float(f: f64) -> String {
    if f.is_nan() {
        "NaN".to_owned()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        f.to_string()
    }
}

fn uuid(b: [u8; 16]) -> String {
    let hex: String = b.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The first `max` bytes as text, cut before a character split in two.
fn lossy(value: &[u8], max: usize) -> String {
    let first = &value[..value.len().min(max)];
    let end = match std::str::from_utf8(first) {
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        _ => first.len(),
    };
    String::from_utf8_lossy(&first[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::text;

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
    }
}
