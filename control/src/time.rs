//! Clock and time spelling: Unix milliseconds inside, RFC 3339 UTC with
//! exactly three fractional digits and `Z` in answers (`2026-11-23T10:15:00.123Z`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::time::OffsetDateTime;
use ::time::format_description::well_known::Rfc3339;
use ::time::macros::format_description;
use portcullis_protocol::feed::UnixMillis;

/// Now, by the system clock. The one place the control plane reads it.
pub(crate) fn now() -> UnixMillis {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => millis(d),
        Err(_) => 0,
    }
}

/// A duration in milliseconds, saturating.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds as a duration (negative counts as zero).
pub(crate) fn duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// `2026-11-23T10:15:00.123Z`.
pub(crate) fn rfc3339(ms: UnixMillis) -> String {
    let spelling = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(spelling).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00.000Z".to_owned())
}

/// Reads an RFC 3339 time with any offset; `None` when it is not one.
pub(crate) fn parse_rfc3339(s: &str) -> Option<UnixMillis> {
    let t = OffsetDateTime::parse(s.trim(), &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_fractional_digits_and_z() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_429_700_123), "2026-11-23T10:28:20.123Z");
    }

    #[test]
    fn parses_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T01:00:01+01:00"), Some(1000));
        assert_eq!(parse_rfc3339("2026-11-23T10:28:20.123Z"), Some(1_795_429_700_123));
        assert_eq!(parse_rfc3339("tomorrow"), None);
    }
}
