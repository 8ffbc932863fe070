//! The `users` table: names, groups, the admin right, and the stored form of
//! each token (hash and SCRAM verifier), which never leaves this module except
//! as the verifier the feed carries to proxies.

use portcullis_protocol::feed::{UnixMillis, UserEntry};
use rusqlite::{Connection, OptionalExtension, params};

use crate::model::User;
use crate::store::{list_text, string_list};
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

fn row_to_user(row: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: row.get(0)?,
        groups: string_list(row, 1)?,
        admin: row.get(2)?,
        created_at: row.get(3)?,
    })
}

/// Inserts a user with the stored form of their token.
pub(crate) fn insert(conn: &Connection, user: &NewUser<'_>, token: &StoredToken) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO users (name, groups, admin, token_hash, scram_verifier, ssh_keys, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            user.name,
            list_text(user.groups),
            user.admin,
            token.hash,
            token.verifier,
            list_text(user.ssh_keys),
            user.created_at
        ],
    )?;
    Ok(())
}

/// How many users exist.
pub(crate) fn count(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
}

/// The user of this name.
pub(crate) fn get(conn: &Connection, name: &str) -> rusqlite::Result<Option<User>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE name = ?1"))?
        .query_row([name], row_to_user)
        .optional()
}

/// The user whose token hashes to `hash`.
pub(crate) fn by_token_hash(conn: &Connection, hash: &str) -> rusqlite::Result<Option<User>> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users WHERE token_hash = ?1"))?
        .query_row([hash], row_to_user)
        .optional()
}

/// All users by name.
pub(crate) fn list(conn: &Connection) -> rusqlite::Result<Vec<User>> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM users ORDER BY name"))?;
    let rows = stmt.query_map([], row_to_user)?;
    rows.collect()
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserEntry> {
    Ok(UserEntry {
        name: r.get(0)?,
        scram_verifier: r.get(1)?,
        ssh_keys: string_list(r, 2)?,
    })
}

/// Every user as proxies need them: name, SCRAM verifier and SSH keys.
pub(crate) fn entries(conn: &Connection) -> rusqlite::Result<Vec<UserEntry>> {
    let mut stmt = conn.prepare_cached("SELECT name, scram_verifier, ssh_keys FROM users ORDER BY name")?;
    let rows = stmt.query_map([], row_to_entry)?;
    rows.collect()
}

/// The feed entry of one user.
pub(crate) fn entry(conn: &Connection, name: &str) -> rusqlite::Result<Option<UserEntry>> {
    conn.prepare_cached("SELECT name, scram_verifier, ssh_keys FROM users WHERE name = ?1")?
        .query_row([name], row_to_entry)
        .optional()
}

/// The SSH key lines of `name`; `None` when there is no such user.
pub(crate) fn ssh_keys(conn: &Connection, name: &str) -> rusqlite::Result<Option<Vec<String>>> {
    conn.prepare_cached("SELECT ssh_keys FROM users WHERE name = ?1")?
        .query_row([name], |r| string_list(r, 0))
        .optional()
}

/// Replaces the SSH key lines of `name`.
pub(crate) fn set_ssh_keys(conn: &Connection, name: &str, keys: &[String]) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE users SET ssh_keys = ?2 WHERE name = ?1",
        params![name, list_text(keys)],
    )?;
    Ok(())
}
