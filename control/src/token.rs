//! Personal tokens: `pc_` + 32 random bytes in unpadded base64url. A token is
//! shown once and stored only as its SHA-256 hash (bearer lookup) and as a
//! SCRAM-SHA-256 verifier (Postgres logins through the proxy).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use portcullis_protocol::scram::{DEFAULT_ITERATIONS, ServerSecret};
use portcullis_protocol::secret::Secret;
use sha2::{Digest, Sha256};

use crate::error::ControlError;
use crate::ids::hex;

/// What is kept of a token: never the token itself.
pub(crate) struct StoredToken {
    /// SHA-256 of the token, lowercase hex.
    pub hash: String,
    /// `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub verifier: String,
}

/// A fresh token.
pub(crate) fn new_token() -> Result<Secret<String>, ControlError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(ControlError::Random)?;
    Ok(Secret::new(format!("pc_{}", URL_SAFE_NO_PAD.encode(bytes))))
}

/// SHA-256 of a token, lowercase hex: the bearer lookup key.
pub(crate) fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Hash and SCRAM verifier of a token (CPU-heavy: call off the async threads).
pub(crate) fn stored(token: &Secret<String>) -> Result<StoredToken, ControlError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(ControlError::Random)?;
    let secret = ServerSecret::derive(token.expose(), &salt, DEFAULT_ITERATIONS);
    Ok(StoredToken {
        hash: token_hash(token.expose()),
        verifier: secret.to_verifier(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_prefixed_base64url() {
        let t = new_token().expect("random");
        let t = t.expose();
        assert!(t.starts_with("pc_"));
        assert_eq!(t.len(), 3 + 43);
        assert!(
            t[3..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn stored_form_holds_no_token() {
        let t = new_token().expect("random");
        let s = stored(&t).expect("derive");
        assert!(s.verifier.starts_with("SCRAM-SHA-256$"));
        assert!(!s.verifier.contains(t.expose().as_str()));
        assert_eq!(s.hash.len(), 64);
    }
}
