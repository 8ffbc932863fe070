//! Users: creating them (admins only; the token is shown once), looking the
//! caller up by token hash, and the spelling rules for names and groups.

use portcullis_protocol::feed::FeedEvent;
use portcullis_protocol::secret::Secret;
use serde_json::json;

use crate::error::{ApiError, ControlError};
use crate::model::User;
use crate::store::users::{self, NewUser};
use crate::time;
use crate::token::{self, StoredToken};
use crate::workflow::Workflow;
use crate::workflow::events::record;

/// Longest user or group name.
const MAX_NAME: usize = 63;
/// Most SSH keys one user may register.
pub(crate) const MAX_SSH_KEYS: usize = 16;
/// Longest SSH public key line.
const MAX_SSH_KEY: usize = 16 * 1024;

/// What an admin asked for in `POST /v1/users`.
#[derive(Clone, Debug, Default)]
pub(crate) struct UserAsk {
    /// Login name.
    pub name: String,
    /// Group names.
    pub groups: Vec<String>,
    /// Give the admin right.
    pub admin: bool,
    /// OpenSSH public key lines.
    pub ssh_keys: Vec<String>,
}

/// Whether `s` is a name: 1 to 63 of letters, digits, `_`, `.`, `-` (and `@`
/// when `at` is allowed), starting with a letter, digit or `_`.
fn well_spelled(s: &str, at: bool) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') || (at && c == '@');
    let first_ok = s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok && s.len() <= MAX_NAME && s.chars().all(ok_char)
}

/// Checks a user name.
pub(crate) fn check_user_name(name: &str) -> Result<(), ApiError> {
    if well_spelled(name, true) {
        Ok(())
    } else {
        Err(ApiError::BadUserName { name: name.to_owned() })
    }
}

/// Checks group names; drops repeats, keeping the first spelling's order.
pub(crate) fn check_groups(groups: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = Vec::with_capacity(groups.len());
    for g in groups {
        if !well_spelled(g, false) {
            return Err(ApiError::BadGroupName { name: g.clone() });
        }
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    Ok(out)
}

/// Checks SSH public keys: one line each, `TYPE BASE64 [COMMENT]`.
pub(crate) fn check_ssh_keys(keys: &[String]) -> Result<Vec<String>, ApiError> {
    if keys.len() > MAX_SSH_KEYS {
        return Err(ApiError::TooManySshKeys { max: MAX_SSH_KEYS });
    }
    let mut out = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        let key = key.trim();
        let mut parts = key.split_whitespace();
        let kind = parts.next().unwrap_or_default();
        let blob = parts.next().unwrap_or_default();
        let kind_ok = kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-");
        let blob_ok = !blob.is_empty()
            && blob
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
        if !kind_ok || !blob_ok || key.len() > MAX_SSH_KEY || key.contains(['\n', '\r']) {
            return Err(ApiError::BadSshKey { index: i + 1 });
        }
        out.push(key.to_owned());
    }
    Ok(out)
}

impl Workflow {
    /// Creates a user; answers them and their token, which is never kept.
    pub(crate) async fn add_user(&self, caller: User, ask: UserAsk) -> Result<(User, Secret<String>), ApiError> {
        if !caller.admin {
            return Err(ApiError::AdminOnly { action: "add users" });
        }
        check_user_name(&ask.name)?;
        let groups = check_groups(&ask.groups)?;
        let ssh_keys = check_ssh_keys(&ask.ssh_keys)?;
        // The SCRAM derivation is CPU-heavy: do it before taking the store.
        let (token, stored) = tokio::task::spawn_blocking(|| -> Result<(Secret<String>, StoredToken), ControlError> {
            let token = token::new_token()?;
            let stored = token::stored(&token)?;
            Ok((token, stored))
        })
        .await??;
        let this = self.clone();
        let user = self
            .store
            .call(move |conn| {
                let now = time::now();
                let mut tx = conn.transaction()?;
                if users::get(&mut tx, &ask.name)?.is_some() {
                    return Err(ApiError::UserExists { name: ask.name });
                }
                let new = NewUser {
                    name: &ask.name,
                    groups: &groups,
                    admin: ask.admin,
                    ssh_keys: &ssh_keys,
                    created_at: now,
                };
                users::insert(&mut tx, &new, &stored)?;
                record(
                    &mut tx,
                    now,
                    &caller.name,
                    "user.create",
                    &ask.name,
                    json!({ "groups": groups, "admin": ask.admin, "ssh_keys": ssh_keys.len() }),
                )?;
                let entry = users::entry(&mut tx, &ask.name)?;
                this.commit(tx, entry.map(FeedEvent::User).into_iter().collect())?;
                tracing::info!(user = %ask.name, admin = ask.admin, by = %caller.name, "user created");
                Ok(User {
                    name: ask.name,
                    groups,
                    admin: ask.admin,
                    created_at: now,
                })
            })
            .await?;
        Ok((user, token))
    }

    /// The user holding `token`.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<User, ApiError> {
        let hash = token::token_hash(token);
        self.store
            .call(move |conn| users::by_token_hash(conn, &hash)?.ok_or(ApiError::UnknownToken))
            .await
    }

    /// Every user (admins only).
    pub(crate) async fn list_users(&self, caller: &User) -> Result<Vec<User>, ApiError> {
        if !caller.admin {
            return Err(ApiError::AdminOnly { action: "list users" });
        }
        self.store.call(|conn| Ok(users::list(conn)?)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_spelling() {
        for good in ["alice", "a", "_svc", "alice.smith@example.com", "bob-2"] {
            assert!(check_user_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", "-x", ".x", "a b", "ä", "a/b", long.as_str()] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_groups(&["a@b".to_owned()]).is_err());
        assert_eq!(
            check_groups(&["eng".to_owned(), "web".to_owned(), "eng".to_owned()]).expect("groups"),
            vec!["eng".to_owned(), "web".to_owned()]
        );
    }

    #[test]
    fn ssh_keys_are_single_openssh_lines() {
        let ok = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG0= alice@laptop".to_owned();
        assert_eq!(
            check_ssh_keys(std::slice::from_ref(&ok)).expect("key"),
            vec![ok.clone()]
        );
        assert!(check_ssh_keys(&["not a key".to_owned()]).is_err());
        assert!(check_ssh_keys(&[format!("{ok}\nssh-rsa AAAA")]).is_err());
        assert!(check_ssh_keys(&vec![ok; MAX_SSH_KEYS + 1]).is_err());
    }
}
