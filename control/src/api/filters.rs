//! The query string of the audit and session-history routes: filters,
//! order, paging. Every refusal names the parameter at fault; unknown
//! parameters are refused, so a misspelt filter never widens a search.

use portcullis_protocol::duration;
use portcullis_protocol::feed::UnixMillis;

use crate::error::ApiError;
use crate::time::{millis, parse_rfc3339};

/// Page size when `limit` is not given.
pub(crate) const DEFAULT_LIMIT: usize = 100;
/// Largest page.
pub(crate) const MAX_LIMIT: usize = 1000;
/// Longest text a filter may hold.
const MAX_TEXT: usize = 1000;

/// What a query string asked for; absent parameters are `None`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Filters {
    /// `user=`.
    pub user: Option<String>,
    /// `resource=`.
    pub resource: Option<String>,
    /// `action=`.
    pub action: Option<String>,
    /// `session_id=`.
    pub session_id: Option<String>,
    /// `since=`: at or after.
    pub since: Option<UnixMillis>,
    /// `until=`: before.
    pub until: Option<UnixMillis>,
    /// `grep=`.
    pub grep: Option<String>,
    /// `order=newest`.
    pub newest_first: bool,
    /// `after=`: the paging cursor.
    pub after: Option<u64>,
    /// `limit=`.
    pub limit: Option<usize>,
}

impl Filters {
    /// The page size: `limit`, or the default, refused past `MAX_LIMIT`.
    pub(crate) fn page(&self) -> Result<usize, ApiError> {
        match self.limit {
            None => Ok(DEFAULT_LIMIT),
            Some(n) if n > MAX_LIMIT => Err(bad("limit", format!("{n} is over the largest page, {MAX_LIMIT}"))),
            Some(n) => Ok(n),
        }
    }
}

fn bad(key: &str, why: String) -> ApiError {
    ApiError::BadQuery {
        detail: format!("{key}: {why}"),
    }
}

/// Parses `query`, accepting only the parameters in `allowed`; times written
/// as durations (`1h`) count back from `now`.
pub(crate) fn parse(query: &str, allowed: &[&str], now: UnixMillis) -> Result<Filters, ApiError> {
    let mut f = Filters::default();
    let mut seen: Vec<String> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = decode(raw_key, "a parameter name")?;
        if !allowed.contains(&key.as_str()) {
            return Err(ApiError::BadQuery {
                detail: format!(
                    "unknown parameter \"{key}\"; the parameters are: {}",
                    allowed.join(", ")
                ),
            });
        }
        if seen.contains(&key) {
            return Err(bad(&key, "given twice".to_owned()));
        }
        let value = decode(raw_value, &key)?;
        if value.chars().count() > MAX_TEXT {
            return Err(bad(&key, format!("longer than {MAX_TEXT} characters")));
        }
        match key.as_str() {
            "user" => f.user = Some(text(&key, value)?),
            "resource" => f.resource = Some(text(&key, value)?),
            "action" => f.action = Some(text(&key, value)?),
            "session_id" => f.session_id = Some(text(&key, value)?),
            "grep" => f.grep = Some(text(&key, value)?),
            "since" => f.since = Some(time(&key, &value, now)?),
            "until" => f.until = Some(time(&key, &value, now)?),
            "order" => {
                f.newest_first = match value.as_str() {
                    "oldest" => false,
                    "newest" => true,
                    _ => return Err(bad(&key, format!("\"{value}\": write oldest or newest"))),
                }
            }
            "after" => {
                let n = value.parse::<u64>().map_err(|_| {
                    bad(
                        &key,
                        format!("\"{value}\" is not a cursor (the `next` of a previous page)"),
                    )
                })?;
                f.after = Some(n);
            }
            "limit" => {
                let n = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(&key, format!("\"{value}\" is not a whole number of 1 or more")))?;
                f.limit = Some(n);
            }
            _ => return Err(bad(&key, "is not supported here".to_owned())),
        }
        seen.push(key);
    }
    if let (Some(since), Some(until)) = (f.since, f.until)
        && until <= since
    {
        return Err(bad("until", "must be later than since".to_owned()));
    }
    Ok(f)
}

/// A text filter: not empty.
fn text(key: &str, value: String) -> Result<String, ApiError> {
    if value.trim().is_empty() {
        return Err(bad(
            key,
            "is empty; leave the parameter out to match everything".to_owned(),
        ));
    }
    Ok(value)
}

/// An RFC 3339 time, or a duration meaning that long before `now`.
fn time(key: &str, value: &str, now: UnixMillis) -> Result<UnixMillis, ApiError> {
    if let Some(t) = parse_rfc3339(value) {
        return Ok(t);
    }
    if let Ok(ago) = duration::parse(value.trim()) {
        return Ok(now.saturating_sub(millis(ago)));
    }
    Err(bad(
        key,
        format!(
            "\"{value}\" is neither an RFC 3339 time such as 2026-11-23T10:15:00Z nor a duration such as 1h (that long ago)"
        ),
    ))
}

/// Percent-decodes one part of a query string (`+` is a space).
fn decode(raw: &str, what: &str) -> Result<String, ApiError> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next(), bytes.next()];
                let byte = match hex {
                    [Some(h), Some(l)] => std::str::from_utf8(&[h, l])
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok()),
                    _ => None,
                };
                out.push(byte.ok_or_else(|| bad(what, "a % not followed by two hex digits".to_owned()))?);
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| bad(what, "not UTF-8 once decoded".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[&str] = &[
        "user",
        "resource",
        "action",
        "session_id",
        "since",
        "until",
        "grep",
        "order",
        "after",
        "limit",
    ];
    const NOW: UnixMillis = 1_795_429_700_000;

    fn refusal(query: &str) -> String {
        parse(query, ALL, NOW).expect_err(query).to_string()
    }

    #[test]
    fn every_filter_parses() {
        let f = parse(
            "user=alice&resource=orders&action=request.approve&session_id=ses_1&since=1h&until=2026-11-23T10:28:20.123Z\
             &grep=INC-42+slow%20orders&order=newest&after=17&limit=5",
            ALL,
            NOW,
        )
        .expect("parse");
        assert_eq!(
            f,
            Filters {
                user: Some("alice".into()),
                resource: Some("orders".into()),
                action: Some("request.approve".into()),
                session_id: Some("ses_1".into()),
                since: Some(NOW - 3_600_000),
                until: Some(1_795_429_700_123),
                grep: Some("INC-42 slow orders".into()),
                newest_first: true,
                after: Some(17),
                limit: Some(5),
            }
        );
        assert_eq!(parse("", ALL, NOW).expect("empty"), Filters::default());
    }

    #[test]
    fn refusals_name_the_parameter() {
        assert!(refusal("since=yesterday").starts_with("the query string is not valid: since:"));
        assert!(refusal("until=soon").contains("until:"));
        assert!(refusal("limit=0").contains("limit:"));
        assert!(refusal("limit=many").contains("limit:"));
        assert!(refusal("order=random").contains("order:"));
        assert!(refusal("after=-1").contains("after:"));
        assert!(refusal("grep=%zz").contains("grep:"));
        assert!(refusal("user=").contains("user:"));
        assert!(refusal("user=a&user=b").contains("given twice"));
        assert!(refusal("usr=alice").contains("unknown parameter \"usr\""));
        assert!(refusal("since=1h&until=2h").contains("until: must be later"));
        let f = parse("limit=5000", ALL, NOW).expect("parse");
        assert!(f.page().expect_err("too big").to_string().contains("limit:"));
        assert!(parse("grep=x", &["user"], NOW).is_err(), "only the parameters allowed");
    }
}
