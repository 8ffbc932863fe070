//! Engineer authentication: a public key is accepted only if it is one of the
//! user's registered keys, as the feed delivered them. Rejections are held to
//! russh's constant `auth_rejection_time`, so timing does not tell an unknown
//! user from a wrong key.

use russh::keys::PublicKey;

use crate::grants::table::GrantTable;

/// Whether `key` is one of `user`'s registered SSH keys.
pub fn key_registered(grants: &GrantTable, user: &str, key: &PublicKey) -> bool {
    let keys = grants.ssh_keys(user);
    // Every key is compared, without stopping at the first match.
    keys.iter().fold(false, |hit, k| hit | (k.key_data() == key.key_data()))
}
