//! The gateway's SSH client to the real server: it verifies the pinned host
//! key during key exchange, then logs in with the role's key or password.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Preferred, cipher, client};

use crate::settings::{Role, SshTarget};

/// Longest the upstream connect, key exchange and login may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the upstream session could not be opened; the text never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The server's host key is not the pinned one.
    #[error("the server's host key {seen} does not match the host_key pinned in the gateway's config")]
    HostKeyMismatch {
        /// Fingerprint of the key the server showed.
        seen: String,
    },
    /// The server refused the role's credentials.
    #[error("the server refused the login of upstream user \"{0}\"")]
    LoginRefused(String),
    /// The role has neither key nor password.
    #[error("the role has no key_file or password configured")]
    NoCredentials,
    /// No answer in time.
    #[error("no answer from the server within {}s", CONNECT_TIMEOUT.as_secs())]
    Timeout,
    /// Anything else the SSH layer reported (connection refused, protocol errors).
    #[error("{0}")]
    Ssh(#[from] russh::Error),
}

impl UpstreamError {
    /// Short label for metrics and audit.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::HostKeyMismatch { .. } => "host_key_mismatch",
            UpstreamError::LoginRefused(_) => "upstream_login_refused",
            UpstreamError::NoCredentials => "upstream_no_credentials",
            UpstreamError::Timeout => "upstream_timeout",
            UpstreamError::Ssh(_) => "upstream_error",
        }
    }
}

/// The client handler: checks the server's key against the pinned one, and
/// notes when the server ends the connection first.
pub struct Pinned {
    expected: PublicKey,
    /// How the session ended, as `session.end` spells it; set here only if
    /// nothing (the client leaving, a cut) set it before.
    ended: Arc<OnceLock<&'static str>>,
}

impl client::Handler for Pinned {
    type Error = UpstreamError;

    async fn disconnected(&mut self, reason: client::DisconnectReason<Self::Error>) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => {
                let _ = self.ended.set("server_closed");
                Ok(())
            }
            client::DisconnectReason::Error(e) => {
                let _ = self.ended.set("error");
                Err(e)
            }
        }
    }

    async fn check_server_key(&mut self, shown: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        match shown {
            PublicKeyOrCertificate::PublicKey { key, .. } if key.key_data() == self.expected.key_data() => Ok(true),
            PublicKeyOrCertificate::PublicKey { key, .. } => Err(UpstreamError::HostKeyMismatch {
                seen: key.fingerprint(HashAlg::Sha256).to_string(),
            }),
            // A certificate is not a pinned key: refuse it the same way.
            PublicKeyOrCertificate::Certificate(cert) => Err(UpstreamError::HostKeyMismatch {
                seen: format!("(a certificate for {})", cert.public_key().fingerprint(HashAlg::Sha256)),
            }),
        }
    }
}

/// An open, authenticated upstream connection.
pub type Upstream = client::Handle<Pinned>;

/// Connects to `target`, verifies its host key and logs in as `role`;
/// `ended` learns if the server later ends the connection first.
pub async fn connect(
    target: &SshTarget,
    role: &Role,
    ended: Arc<OnceLock<&'static str>>,
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(CONNECT_TIMEOUT, connect_inner(target, role, ended))
        .await
        .unwrap_or(Err(UpstreamError::Timeout))
}

/// Upstream ciphers, most preferred first.
const UPSTREAM_CIPHERS: &[cipher::Name] = &[
    cipher::AES_256_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
    cipher::AES_128_CTR,
];

async fn connect_inner(
    target: &SshTarget,
    role: &Role,
    ended: Arc<OnceLock<&'static str>>,
) -> Result<Upstream, UpstreamError> {
    let config = Arc::new(client::Config {
        nodelay: true,
        // The gateway's own limit applies, not russh's default idle timeout.
        inactivity_timeout: None,
        // The gateway picks the upstream cipher: AES-GCM runs in aws-lc with
        // the CPU's AES instructions, where russh's ChaCha20-Poly1305 (its
        // default first choice) is portable code; every byte relayed is
        // decrypted on one side and encrypted on the other.
        preferred: Preferred {
            cipher: Cow::Borrowed(UPSTREAM_CIPHERS),
            ..Preferred::default()
        },
        ..client::Config::default()
    });
    let pinned = Pinned {
        expected: target.host_key.clone(),
        ended,
    };
    let mut handle = client::connect(config, (target.host.as_str(), target.port), pinned).await?;
    if let Some(key) = &role.ssh_key {
        let key = Arc::clone(key.expose());
        let hash = if key.algorithm().is_rsa() {
            handle.best_supported_rsa_hash().await?.flatten()
        } else {
            None
        };
        let result = handle
            .authenticate_publickey(role.user.clone(), PrivateKeyWithHashAlg::new(key, hash))
            .await?;
        if result.success() {
            return Ok(handle);
        }
    }
    if let Some(password) = &role.password {
        let result = handle
            .authenticate_password(role.user.clone(), password.expose().clone())
            .await?;
        if result.success() {
            return Ok(handle);
        }
    }
    if role.ssh_key.is_none() && role.password.is_none() {
        return Err(UpstreamError::NoCredentials);
    }
    Err(UpstreamError::LoginRefused(role.user.clone()))
}
