//! Wall-clock helpers: the feed speaks Unix milliseconds, sessions sleep on tokio instants.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_protocol::feed::UnixMillis;
use tokio::time::Instant;

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> UnixMillis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The tokio instant at which the wall clock reads `at`, as seen from `now`.
pub fn instant_at(at: UnixMillis, now: UnixMillis) -> Instant {
    let base = Instant::now();
    if at <= now {
        base
    } else {
        base + Duration::from_millis((at - now) as u64)
    }
}

/// RFC 3339 UTC with milliseconds, as the API prints times.
pub fn rfc3339(at: UnixMillis) -> String {
    let nanos = i128::from(at) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        Err(_) => at.to_string(),
    }
}
