//! Webhook deliveries: the JSON document as it was built at the event, with
//! an idempotency key (the outbox id, the same on every retry), a timestamp,
//! and `X-Portcullis-Signature: sha256=HEX`, an HMAC-SHA256 over
//! `"{timestamp}.{body}"` keyed with the webhook's secret (README.md,
//! "Notifications", has the receiver's recipe).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::ids::hex;

/// Header with the signature.
pub(crate) const SIGNATURE: &str = "X-Portcullis-Signature";
/// Header with the Unix time in seconds the signature covers.
pub(crate) const TIMESTAMP: &str = "X-Portcullis-Timestamp";
/// Header with the event's name, e.g. `approved`.
pub(crate) const EVENT: &str = "X-Portcullis-Event";
/// Header with the outbox id: the same on every retry of one notification.
pub(crate) const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// HMAC-SHA256 keyed with `key`.
pub(crate) fn mac(key: &[u8]) -> Hmac<Sha256> {
    <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// `sha256=` and the lowercase hex HMAC-SHA256 of `"{timestamp}.{body}"`.
pub(crate) fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut m = mac(secret);
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    format!("sha256={}", hex(&m.finalize().into_bytes()))
}

/// The request of one attempt: `body` POSTed with its headers, signed at `timestamp`.
pub(crate) fn request(
    http: &reqwest::Client,
    url: &str,
    secret: &[u8],
    id: &str,
    event: &str,
    body: String,
    timestamp: i64,
) -> reqwest::RequestBuilder {
    let signature = signature(secret, timestamp, body.as_bytes());
    http.post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(IDEMPOTENCY_KEY, id)
        .header(EVENT, event)
        .header(TIMESTAMP, timestamp.to_string())
        .header(SIGNATURE, signature)
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_an_independent_hmac() {
        // python3: hmac.new(b"whsec_test", b'1700000000.{"event":"requested"}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"whsec_test", 1_700_000_000, br#"{"event":"requested"}"#),
            "sha256=fede589e469f429890aeb4a26c959fe0d5c44bf2d6be67c5199b39c5f114a566"
        );
    }

    #[test]
    fn signature_covers_timestamp_body_and_key() {
        let base = signature(b"k", 1, b"{}");
        assert_ne!(base, signature(b"k", 2, b"{}"));
        assert_ne!(base, signature(b"k", 1, b"{ }"));
        assert_ne!(base, signature(b"K", 1, b"{}"));
        // The separator keeps "1" + "2{}" apart from "12" + "{}".
        assert_ne!(signature(b"k", 1, b"2{}"), signature(b"k", 12, b"{}"));
    }
}
