//! Remote proxies as the control plane knows them: who they are (a name and
//! the hash of their token, checked in constant time) and the live sessions
//! each last reported (`sessions.rs`). A proxy token opens only the proxy
//! routes (the feed, session reports, audit shipping); a user's token never does.

pub mod sessions;

use portcullis_protocol::secret::Secret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// One configured proxy: its name and the SHA-256 of its token (the token itself is not kept).
#[derive(Clone)]
pub struct ProxyCredential {
    /// The proxy's name, e.g. `eu1`; it labels its sessions and its log lines.
    pub name: String,
    hash: [u8; 32],
}

impl ProxyCredential {
    /// A credential for `name`, keeping only the hash of `token`.
    pub fn new(name: String, token: &Secret<String>) -> ProxyCredential {
        ProxyCredential {
            name,
            hash: Sha256::digest(token.expose().as_bytes()).into(),
        }
    }
}

impl std::fmt::Debug for ProxyCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyCredential")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The configured proxies' credentials.
#[derive(Debug, Default)]
pub(crate) struct ProxyAccess {
    creds: Vec<ProxyCredential>,
}

impl ProxyAccess {
    /// Access for these proxies.
    pub(crate) fn new(creds: Vec<ProxyCredential>) -> ProxyAccess {
        ProxyAccess { creds }
    }

    /// The name of the proxy whose token this is. Every credential is
    /// compared, each in constant time, so timing says nothing about which matched.
    pub(crate) fn identify(&self, token: &str) -> Option<&str> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for c in &self.creds {
            if bool::from(c.hash.ct_eq(&hash)) {
                found = Some(c.name.as_str());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_by_token_and_never_prints_it() {
        let access = ProxyAccess::new(vec![
            ProxyCredential::new("eu1".into(), &Secret::new("tok-eu1".to_owned())),
            ProxyCredential::new("us1".into(), &Secret::new("tok-us1".to_owned())),
        ]);
        assert_eq!(access.identify("tok-us1"), Some("us1"));
        assert_eq!(access.identify("tok-eu1"), Some("eu1"));
        assert_eq!(access.identify("tok-eu"), None);
        assert!(!format!("{access:?}").contains("tok-"));
    }
}
