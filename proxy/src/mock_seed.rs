//! The seed behind unknown users' mock SCRAM secrets. It is made once and kept
//! in `data_dir` (owner-only), so an unknown user's fake salt is the same
//! across restarts: a salt that changed at every restart would tell an
//! attacker which user names are not real.

use std::io::{Read, Write};
use std::path::Path;

use crate::ProxyError;

/// Where the seed lives inside `data_dir`.
pub const SEED_FILE: &str = "scram_mock_seed";
/// Seed length in bytes.
const SEED_LEN: usize = 32;

/// Reads the seed from `data_dir`, creating it (mode 0600) on first start.
pub fn load_or_create(data_dir: &Path) -> Result<[u8; SEED_LEN], ProxyError> {
    let path = data_dir.join(SEED_FILE);
    match read(&path) {
        Ok(seed) => return Ok(seed),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(&path, e)),
    }
    let mut seed = [0u8; SEED_LEN];
    getrandom::fill(&mut seed).map_err(|e| ProxyError::MockSeed(format!("no randomness: {e}")))?;
    std::fs::create_dir_all(data_dir).map_err(|e| fail(data_dir, e))?;
    // Written whole under a temporary name, then linked into place: a crash
    // never leaves a short seed, and if another process won the race its seed
    // is the one both use.
    let tmp = data_dir.join(format!("{SEED_FILE}.{}.tmp", std::process::id()));
    let written = write_private(&tmp, &seed).and_then(|()| std::fs::hard_link(&tmp, &path));
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            tracing::info!(path = %path.display(), "created the seed for unknown users' SCRAM salts");
            Ok(seed)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&path).map_err(|e| fail(&path, e)),
        Err(e) => Err(fail(&path, e)),
    }
}

fn fail(path: &Path, e: std::io::Error) -> ProxyError {
    ProxyError::MockSeed(format!("{}: {e}", path.display()))
}

/// The seed in `path`; a file of another length is an error, never replaced,
/// since replacing it would change every fake salt.
fn read(path: &Path) -> std::io::Result<[u8; SEED_LEN]> {
    let file = std::fs::File::open(path)?;
    restrict(&file, path)?;
    let mut bytes = Vec::with_capacity(SEED_LEN + 1);
    // One byte past the length is enough to tell a longer file apart.
    Read::take(&file, SEED_LEN as u64 + 1).read_to_end(&mut bytes)?;
    <[u8; SEED_LEN]>::try_from(bytes.as_slice()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "expected {SEED_LEN} bytes, found {}; restore it or delete it to make a new one",
                bytes.len()
            ),
        )
    })
}

/// Tightens a seed file others may read back to owner-only.
#[cfg(unix)]
fn restrict(file: &std::fs::File, path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = file.metadata()?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "mock seed was readable by others; setting mode 0600");
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn restrict(_file: &std::fs::File, _path: &Path) -> std::io::Result<()> {
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let mut tag = [0u8; 8];
            let _ = getrandom::fill(&mut tag);
            let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
            TempDir(std::env::temp_dir().join(format!("portcullis-{name}-{}-{hex}", std::process::id())))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn seed_is_created_once_owner_only_and_survives_restarts() -> Result<(), ProxyError> {
        let dir = TempDir::new("seed");
        let first = load_or_create(&dir.0)?;
        let again = load_or_create(&dir.0)?;
        assert_eq!(first, again, "a restart must not change the seed");
        let path = dir.0.join(SEED_FILE);
        assert_eq!(std::fs::read(&path).ok(), Some(first.to_vec()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok();
            assert_eq!(mode, Some(0o600));
        }
        // No temporary file is left behind.
        let entries = std::fs::read_dir(&dir.0).map(|d| d.count()).ok();
        assert_eq!(entries, Some(1));
        Ok(())
    }

    #[test]
    fn a_damaged_seed_is_an_error_not_replaced() -> Result<(), ProxyError> {
        let dir = TempDir::new("seed-short");
        std::fs::create_dir_all(&dir.0).map_err(|e| fail(&dir.0, e))?;
        let path = dir.0.join(SEED_FILE);
        std::fs::write(&path, b"short").map_err(|e| fail(&path, e))?;
        assert!(matches!(load_or_create(&dir.0), Err(ProxyError::MockSeed(_))));
        assert_eq!(std::fs::read(&path).ok(), Some(b"short".to_vec()));
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_seed_readable_by_others_is_tightened() -> Result<(), ProxyError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new("seed-mode");
        let seed = load_or_create(&dir.0)?;
        let path = dir.0.join(SEED_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).map_err(|e| fail(&path, e))?;
        assert_eq!(load_or_create(&dir.0)?, seed);
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777).ok();
        assert_eq!(mode, Some(0o600));
        Ok(())
    }
}
