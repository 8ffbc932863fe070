//! Human durations as the config, the CLI and refusal texts spell them:
//! `90s`, `15m`, `4h`, `1h30m`, `2d`, `500ms`.

use std::time::Duration;

/// A duration text that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration \"{0}\": expected e.g. 90s, 15m, 4h or 1h30m")]
pub struct DurationError(pub String);

/// Parses a sequence of `<integer><unit>` parts, units `ms`, `s`, `m`, `h`, `d`.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_owned());
    let s = text.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let per_unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        let part = n.checked_mul(per_unit_ms).ok_or_else(err)?;
        total = total.checked_add(part).ok_or_else(err)?;
    }
    Ok(Duration::from_millis(total))
}

/// Formats with the largest units first, dropping zero parts: `1h30m`, `45s`, `0s`.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        let n = ms / size;
        if n > 0 {
            out.push_str(&n.to_string());
            out.push_str(unit);
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_units() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
    }

    #[test]
    fn refuses_bad_text_with_an_example() {
        for bad in ["", "10", "m", "1x", "1h 30m", "-5m", "99999999999999999999d"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.to_string().contains("expected e.g. 90s"), "{e}");
        }
    }

    #[test]
    fn formats_round_trip() {
        for s in ["1h30m", "45s", "2d", "500ms", "1h", "1m1s"] {
            assert_eq!(format(parse(s).expect(s)), s);
        }
        assert_eq!(format(Duration::ZERO), "0s");
        assert_eq!(format(Duration::from_secs(3600)), "1h");
    }
}
