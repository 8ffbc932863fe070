//! The chain key: 32 random bytes made once, kept beside the log with mode
//! 0600, never in the database, so write access to the database alone cannot
//! re-link the chain after an edit.

use std::io::{Read, Write};
use std::path::Path;

use super::AuditError;

/// File name of the key inside `data_dir`.
pub(super) const FILE: &str = "audit.key";

/// Reads the key, or makes it when there is none (then `true`). A key
/// file of the wrong size is an error, never replaced: replacing it would
/// orphan the chain.
pub(super) fn load_or_create(path: &Path) -> Result<([u8; 32], bool), AuditError> {
    let fail = |detail: String| AuditError::Key {
        path: path.to_path_buf(),
        detail,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|e| fail(e.to_string()))?;
            file.write_all(&key).map_err(|e| fail(e.to_string()))?;
            file.sync_all().map_err(|e| fail(e.to_string()))?;
            Ok((key, true))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(33).read_to_end(&mut bytes))
                .map_err(|e| fail(e.to_string()))?;
            let key = bytes
                .try_into()
                .map_err(|b: Vec<u8>| fail(format!("{} bytes, expected 32; it is never replaced", b.len())))?;
            Ok((key, false))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}
