//! First start: with an empty store, create the user `admin` (admin right, no
//! groups) and write its token, once, to `DATA_DIR/admin.token` (mode 0600).
//! The log names the file, never the token.

use std::io::Write;
use std::path::{Path, PathBuf};

use portcullis_protocol::secret::Secret;
use serde_json::json;

use crate::error::ControlError;
use crate::store::Store;
use crate::store::history::{self, Entry, SYSTEM_ACTOR};
use crate::store::users::{self, NewUser};
use crate::{time, token};

/// Name of the built-in admin.
pub(crate) const ADMIN: &str = "admin";
/// File name of the admin's token inside `data_dir`.
pub(crate) const TOKEN_FILE: &str = "admin.token";

/// Creates `admin` when the store has no users; answers whether it did.
/// Blocking: call from a blocking thread.
pub(crate) fn ensure_admin(store: &Store, data_dir: &Path) -> Result<bool, ControlError> {
    let path = data_dir.join(TOKEN_FILE);
    store.with_blocking(|conn| {
        if users::count(conn)? > 0 {
            return Ok(false);
        }
        // A leftover file belongs to another store; overwriting it silently
        // would hide that the store was lost.
        if path.symlink_metadata().is_ok() {
            return Err(ControlError::StaleAdminToken { path });
        }
        let token = token::new_token()?;
        let stored = token::stored(&token)?;
        let now = time::now();
        let mut tx = conn.transaction()?;
        let admin = NewUser {
            name: ADMIN,
            groups: &[],
            admin: true,
            ssh_keys: &[],
            created_at: now,
        };
        users::insert(&mut tx, &admin, &stored)?;
        history::record(
            &mut tx,
            &Entry {
                at: now,
                actor: SYSTEM_ACTOR.to_owned(),
                action: "user.create",
                subject: ADMIN.to_owned(),
                detail: json!({ "groups": [], "admin": true, "first_start": true }),
            },
        )?;
        // The file is written before the commit: a user whose token nobody
        // holds would be useless, and a failed commit removes the file.
        write_token(&path, &token)?;
        if let Err(e) = tx.commit() {
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        tracing::info!(path = %path.display(), "created the user admin; its token is in this file");
        Ok(true)
    })
}

/// Writes `token` and a newline to a new file readable by its owner only.
fn write_token(path: &Path, token: &Secret<String>) -> Result<(), ControlError> {
    let fail = |source| ControlError::AdminToken {
        path: PathBuf::from(path),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(fail)?;
    let written = file
        .write_all(format!("{}\n", token.expose()).as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(e) = written {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(fail(e));
    }
    Ok(())
}
