//! Engineer authentication: a public key is accepted only if it is one of the
//! user's registered keys, as the feed delivered them; failing that, the
//! person's Portcullis token through keyboard-interactive. Rejections are held
//! to russh's constant `auth_rejection_time`, unknown users are checked
//! against a mock secret, and failed tokens feed the same per-user and
//! per-address backoff as Postgres logins.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_protocol::scram::ServerSecret;
use russh::keys::PublicKey;
use tokio::time::Instant;

use crate::Proxy;
use crate::grants::table::GrantTable;

/// What the person reads when no key of theirs was accepted: the same words
/// whether the user or the key is unknown, so it tells a prober nothing.
pub const KEY_REFUSED: &str = "portcullis: none of the offered SSH keys is registered for this login. \
Log in as USER+RESOURCE (e.g. alice+web1) with a key registered by `portcullis user add NAME --ssh-key FILE`, \
or enter your Portcullis token below.";

/// The prompt for the token.
pub const TOKEN_PROMPT: &str = "Portcullis token: ";

/// Whether `key` is one of `user`'s registered SSH keys.
pub fn key_registered(grants: &GrantTable, user: &str, key: &PublicKey) -> bool {
    let keys = grants.ssh_keys(user);
    // Every key is compared, without stopping at the first match.
    keys.iter().fold(false, |hit, k| hit | (k.key_data() == key.key_data()))
}

/// The outcome of a token login.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenCheck {
    /// The token is the user's.
    Accepted,
    /// Wrong token, or no such user.
    Refused,
    /// Too many failures from this user or address; try again after this long.
    Backoff(Duration),
}

fn backoff_keys(user: &str, peer: IpAddr) -> [String; 2] {
    [format!("user:{user}"), format!("addr:{peer}")]
}

/// `Err(wait)` while `user` from `peer` is locked out by earlier failures.
pub fn backoff(proxy: &Proxy, user: &str, peer: IpAddr) -> Result<(), Duration> {
    proxy.backoff.check(&backoff_keys(user, peer), Instant::now())
}

/// Checks `token` (as the client sent it) against `user`'s secret; an unknown
/// user costs the same PBKDF2 against a mock secret. Never logs the token.
pub async fn check_token(proxy: &Proxy, user: &str, peer: IpAddr, token: &[u8]) -> TokenCheck {
    let keys = backoff_keys(user, peer);
    if let Err(wait) = proxy.backoff.check(&keys, Instant::now()) {
        return TokenCheck::Backoff(wait);
    }
    let (secret, known) = match proxy.grants.user_secret(user) {
        Some(secret) => (secret, true),
        None => (Arc::new(ServerSecret::mock(&proxy.mock_seed, user)), false),
    };
    // Not UTF-8 cannot be a token, but the work is done anyway for even timing.
    let token = String::from_utf8(token.to_vec()).ok();
    let matches = {
        let candidate = token.clone().unwrap_or_default();
        tokio::task::spawn_blocking(move || secret.matches_password(&candidate))
            .await
            .unwrap_or(false)
    };
    if known && token.is_some() && matches {
        proxy.backoff.success(&keys);
        TokenCheck::Accepted
    } else {
        proxy.backoff.failure(&keys, Instant::now());
        TokenCheck::Refused
    }
}
