//! Identifiers: `req_`/`grt_` + 12 lowercase hex characters from the system's
//! random source; notification ids (`ntf_`) carry 32, since receivers outside
//! this store use them as idempotency keys.

use crate::error::ControlError;

/// Prefix of request ids.
pub(crate) const REQUEST: &str = "req_";
/// Prefix of grant ids.
pub(crate) const GRANT: &str = "grt_";
/// Prefix of notification (outbox) ids.
pub(crate) const NOTIFICATION: &str = "ntf_";

/// A fresh id with this prefix, e.g. `req_3f9a1c2b7d4e`.
pub(crate) fn new_id(prefix: &str) -> Result<String, ControlError> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).map_err(ControlError::Random)?;
    Ok(format!("{prefix}{}", hex(&bytes)))
}

/// A fresh id with this prefix and 128 random bits, e.g. `ntf_` + 32 hex characters.
pub(crate) fn new_long_id(prefix: &str) -> Result<String, ControlError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(ControlError::Random)?;
    Ok(format!("{prefix}{}", hex(&bytes)))
}

/// Lowercase hex of some bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_documented_shape() {
        let id = new_id(REQUEST).expect("random");
        assert_eq!(id.len(), 16);
        assert!(id.starts_with("req_"));
        assert!(
            id[4..]
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(new_id(GRANT).expect("random"), new_id(GRANT).expect("random"));
        assert_eq!(hex(&[0x00, 0xab, 0xff]), "00abff");
    }
}
