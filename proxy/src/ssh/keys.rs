//! SSH keys the gateway holds: the engineers' registered public keys and the
//! upstreams' pinned host keys (parsed from OpenSSH lines), the roles'
//! private keys, and the gateway's own host key, made once and kept in
//! `data_dir` like the TLS certificate.

use std::path::Path;
use std::sync::Arc;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::{PrivateKey, PublicKey};

/// File in `data_dir` holding the gateway's SSH host key.
pub const HOST_KEY_FILE: &str = "ssh_host_ed25519_key";

/// Parses one OpenSSH public key line, `TYPE BASE64 [COMMENT]`.
pub fn parse_public(line: &str) -> Result<PublicKey, String> {
    PublicKey::from_openssh(line.trim())
        .map_err(|e| format!("not an OpenSSH public key line such as \"ssh-ed25519 AAAA...\" ({e})"))
}

/// Reads an unencrypted OpenSSH private key file.
pub fn load_private(path: &Path) -> Result<Arc<PrivateKey>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let key = PrivateKey::from_openssh(text.trim())
        .map_err(|e| format!("{} is not an OpenSSH private key: {e}", path.display()))?;
    if key.is_encrypted() {
        return Err(format!(
            "{} is encrypted; give the gateway an unencrypted key",
            path.display()
        ));
    }
    Ok(Arc::new(key))
}

/// The gateway's host key from `data_dir`, made (ed25519, mode 0600) on first start.
pub fn load_or_create_host_key(data_dir: &Path) -> Result<PrivateKey, String> {
    let path = data_dir.join(HOST_KEY_FILE);
    if path.exists() {
        return load_private(&path).map(Arc::unwrap_or_clone);
    }
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no randomness for the SSH host key: {e}"))?;
    let pair = Ed25519Keypair::from_seed(&seed);
    let key = PrivateKey::new(KeypairData::Ed25519(pair), "portcullis gateway")
        .map_err(|e| format!("cannot make the SSH host key: {e}"))?;
    let text = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| format!("cannot encode the SSH host key: {e}"))?;
    std::fs::create_dir_all(data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    write_private(&path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    tracing::info!(path = %path.display(), "made the gateway's SSH host key");
    Ok(key)
}

/// Writes a new file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("portcullis-hostkey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create_host_key(&dir).expect("made");
        let again = load_or_create_host_key(&dir).expect("loaded");
        assert_eq!(first.public_key(), again.public_key());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(HOST_KEY_FILE)).map(|m| m.permissions().mode());
            assert_eq!(mode.ok().map(|m| m & 0o777), Some(0o600));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn public_lines_parse_or_say_what_is_expected() {
        let dir = std::env::temp_dir().join(format!("portcullis-pk-{}", std::process::id()));
        let key = load_or_create_host_key(&dir).expect("key");
        let _ = std::fs::remove_dir_all(&dir);
        // The comment is the gateway's own; a parsed line keeps the line's.
        let line = key.public_key().to_openssh().expect("line");
        let parsed = parse_public(&line).expect("parses");
        assert_eq!(parsed.key_data(), key.public_key().key_data());
        assert!(parse_public("not a key").is_err());
    }
}
