//! The `users` table: names, groups, the admin right, and the stored form of
//! each token (hash and SCRAM verifier), which never leaves this module except
//! as the verifier the feed carries to proxies.

use portcullis_protocol::feed::{UnixMillis, UserEntry};

use crate::model::User;
use crate::store::{DbError, Row, Sql, args, list_text, string_list};
use crate::token::StoredToken;

/// A user about to be created.
pub(crate) struct NewUser<'a> {
    /// Login name, already checked.
    pub name: &'a str,
    /// Group names, already checked.
    pub groups: &'a [String],
    /// Holds the admin right.
    pub admin: bool,
    /// SSH public keys, one per entry.
    pub ssh_keys: &'a [String],
    /// When.
    pub created_at: UnixMillis,
}

const COLUMNS: &str = "name, groups, admin, created_at";

fn row_to_user(row: &Row) -> Result<User, DbError> {
    Ok(User {
        name: row.get(0)?,
        groups: string_list(row, 1)?,
        admin: row.get(2)?,
        created_at: row.get(3)?,
    })
}

/// Inserts a user with the stored form of their token.
pub(crate) fn insert(db: &mut dyn Sql, user: &NewUser<'_>, token: &StoredToken) -> Result<(), DbError> {
    db.execute(
        "INSERT INTO users (name, groups, admin, token_hash, scram_verifier, ssh_keys, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        args![
            user.name,
            list_text(user.groups),
            user.admin,
            &token.hash,
            &token.verifier,
            list_text(user.ssh_keys),
            user.created_at
        ],
    )?;
    Ok(())
}

/// How many users exist.
pub(crate) fn count(db: &mut dyn Sql) -> Result<i64, DbError> {
    db.query_one("SELECT COUNT(*) FROM users", &[])?.get(0)
}

/// The user of this name.
pub(crate) fn get(db: &mut dyn Sql, name: &str) -> Result<Option<User>, DbError> {
    db.query_opt(&format!("SELECT {COLUMNS} FROM users WHERE name = ?1"), args![name])?
        .map(|r| row_to_user(&r))
        .transpose()
}

/// The user whose token hashes to `hash`.
pub(crate) fn by_token_hash(db: &mut dyn Sql, hash: &str) -> Result<Option<User>, DbError> {
    db.query_opt(
        &format!("SELECT {COLUMNS} FROM users WHERE token_hash = ?1"),
        args![hash],
    )?
    .map(|r| row_to_user(&r))
    .transpose()
}

/// All users by name.
pub(crate) fn list(db: &mut dyn Sql) -> Result<Vec<User>, DbError> {
    db.query(&format!("SELECT {COLUMNS} FROM users ORDER BY name"), &[])?
        .iter()
        .map(row_to_user)
        .collect()
}

fn row_to_entry(r: &Row) -> Result<UserEntry, DbError> {
    Ok(UserEntry {
        name: r.get(0)?,
        scram_verifier: r.get(1)?,
        ssh_keys: string_list(r, 2)?,
    })
}

/// Every user as proxies need them: name, SCRAM verifier and SSH keys.
pub(crate) fn entries(db: &mut dyn Sql) -> Result<Vec<UserEntry>, DbError> {
    db.query("SELECT name, scram_verifier, ssh_keys FROM users ORDER BY name", &[])?
        .iter()
        .map(row_to_entry)
        .collect()
}

/// The feed entry of one user.
pub(crate) fn entry(db: &mut dyn Sql, name: &str) -> Result<Option<UserEntry>, DbError> {
    db.query_opt(
        "SELECT name, scram_verifier, ssh_keys FROM users WHERE name = ?1",
        args![name],
    )?
    .map(|r| row_to_entry(&r))
    .transpose()
}

/// The SSH key lines of `name`; `None` when there is no such user.
pub(crate) fn ssh_keys(db: &mut dyn Sql, name: &str) -> Result<Option<Vec<String>>, DbError> {
    db.query_opt("SELECT ssh_keys FROM users WHERE name = ?1", args![name])?
        .map(|r| string_list(&r, 0))
        .transpose()
}

/// Replaces the SSH key lines of `name`.
pub(crate) fn set_ssh_keys(db: &mut dyn Sql, name: &str, keys: &[String]) -> Result<(), DbError> {
    db.execute(
        "UPDATE users SET ssh_keys = ?2 WHERE name = ?1",
        args![name, list_text(keys)],
    )?;
    Ok(())
}
