//! A user's registered SSH public keys after creation: list, add, remove
//! (admins only). Each change goes out on the feed as the user's entry, so
//! proxies accept a new key and refuse a removed one without a restart.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use portcullis_protocol::feed::FeedEvent;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::model::User;
use crate::store::{Tx, users};
use crate::time;
use crate::workflow::Workflow;
use crate::workflow::events::record;
use crate::workflow::users::{MAX_SSH_KEYS, check_ssh_keys};

/// One registered key as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub(crate) struct SshKey {
    /// `SHA256:...`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
    /// Key type, e.g. `ssh-ed25519`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The comment after the key, if any.
    pub comment: String,
    /// The whole OpenSSH public key line.
    pub key: String,
}

impl SshKey {
    /// Describes one stored key line (already checked when it was stored).
    pub(crate) fn of(line: &str) -> SshKey {
        let mut parts = line.splitn(3, char::is_whitespace);
        let kind = parts.next().unwrap_or_default().to_owned();
        let blob = parts.next().unwrap_or_default();
        let comment = parts.next().unwrap_or_default().trim().to_owned();
        SshKey {
            fingerprint: fingerprint(blob),
            kind,
            comment,
            key: line.to_owned(),
        }
    }
}

/// `SHA256:` and the unpadded base64 of the SHA-256 of the key blob.
fn fingerprint(blob_b64: &str) -> String {
    let blob = STANDARD.decode(blob_b64).unwrap_or_default();
    format!("SHA256:{}", STANDARD_NO_PAD.encode(Sha256::digest(&blob)))
}

/// Which key to remove: by fingerprint, or by its line (from a `.pub` file).
#[derive(Clone, Debug)]
pub(crate) enum KeyRef {
    /// `SHA256:...`.
    Fingerprint(String),
    /// An OpenSSH public key line.
    Line(String),
}

impl Workflow {
    /// `name`'s registered keys (admins only).
    pub(crate) async fn ssh_keys(&self, caller: &User, name: String) -> Result<Vec<SshKey>, ApiError> {
        admin(caller, "list ssh keys")?;
        self.store
            .call(move |conn| {
                let keys = users::ssh_keys(conn, &name)?.ok_or(ApiError::UnknownUser { name })?;
                Ok(keys.iter().map(|k| SshKey::of(k)).collect())
            })
            .await
    }

    /// Registers one more key for `name`; answers it.
    pub(crate) async fn add_ssh_key(&self, caller: User, name: String, line: String) -> Result<SshKey, ApiError> {
        admin(&caller, "add ssh keys")?;
        let line = check_ssh_keys(std::slice::from_ref(&line))?
            .pop()
            .ok_or(ApiError::BadSshKey { index: 1 })?;
        let added = SshKey::of(&line);
        let this = self.clone();
        self.store
            .call(move |conn| {
                let mut tx = conn.transaction()?;
                let mut keys =
                    users::ssh_keys(&mut tx, &name)?.ok_or_else(|| ApiError::UnknownUser { name: name.clone() })?;
                if keys.iter().any(|k| SshKey::of(k).fingerprint == added.fingerprint) {
                    return Err(ApiError::SshKeyExists {
                        user: name,
                        fingerprint: added.fingerprint,
                    });
                }
                if keys.len() >= MAX_SSH_KEYS {
                    return Err(ApiError::TooManySshKeys { max: MAX_SSH_KEYS });
                }
                keys.push(line);
                this.save_keys(tx, &caller.name, &name, &keys, "user.ssh_key.add", &added)?;
                tracing::info!(user = %name, fingerprint = %added.fingerprint, by = %caller.name, "ssh key added");
                Ok(added)
            })
            .await
    }

    /// Removes one of `name`'s keys; answers it.
    pub(crate) async fn remove_ssh_key(&self, caller: User, name: String, which: KeyRef) -> Result<SshKey, ApiError> {
        admin(&caller, "remove ssh keys")?;
        let wanted = match which {
            KeyRef::Fingerprint(f) => f.trim().to_owned(),
            KeyRef::Line(line) => {
                let line = check_ssh_keys(std::slice::from_ref(&line))?
                    .pop()
                    .ok_or(ApiError::BadSshKey { index: 1 })?;
                SshKey::of(&line).fingerprint
            }
        };
        let this = self.clone();
        self.store
            .call(move |conn| {
                let mut tx = conn.transaction()?;
                let mut keys =
                    users::ssh_keys(&mut tx, &name)?.ok_or_else(|| ApiError::UnknownUser { name: name.clone() })?;
                let Some(at) = keys.iter().position(|k| SshKey::of(k).fingerprint == wanted) else {
                    return Err(ApiError::UnknownSshKey {
                        user: name,
                        fingerprint: wanted,
                    });
                };
                let removed = SshKey::of(&keys.remove(at));
                this.save_keys(tx, &caller.name, &name, &keys, "user.ssh_key.remove", &removed)?;
                tracing::info!(user = %name, fingerprint = %removed.fingerprint, by = %caller.name, "ssh key removed");
                Ok(removed)
            })
            .await
    }

    /// Stores `name`'s keys, records `action` on `key` in history and sends
    /// the user's new entry on the feed, all in `tx`.
    fn save_keys(
        &self,
        mut tx: Tx<'_>,
        by: &str,
        name: &str,
        keys: &[String],
        action: &'static str,
        key: &SshKey,
    ) -> Result<(), ApiError> {
        users::set_ssh_keys(&mut tx, name, keys)?;
        record(
            &mut tx,
            time::now(),
            by,
            action,
            name,
            json!({ "fingerprint": key.fingerprint, "type": key.kind }),
        )?;
        let entry = users::entry(&mut tx, name)?;
        self.commit(tx, entry.map(FeedEvent::User).into_iter().collect())?;
        Ok(())
    }
}

fn admin(caller: &User, action: &'static str) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(ApiError::AdminOnly { action })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_match_ssh_keygen() {
        // `ssh-keygen -lf` of this key prints SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU.
        let line = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";
        let k = SshKey::of(line);
        assert_eq!(k.kind, "ssh-ed25519");
        assert_eq!(k.comment, "alice@laptop");
        assert_eq!(k.fingerprint, "SHA256:+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU");
        assert_eq!(
            SshKey::of("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl").comment,
            ""
        );
    }
}
