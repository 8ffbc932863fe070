//! What the proxy is told at start: listeners, TLS, targets and their credentials.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use portcullis_protocol::secret::Secret;

/// The proxy's whole configuration.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Where a self-signed certificate is kept when none is configured.
    pub data_dir: PathBuf,
    /// The Postgres listener.
    pub postgres: PostgresListener,
    /// The SSH listener, when `ssh:` is configured.
    pub ssh: Option<SshListener>,
    /// Offsets before a deadline at which sessions are warned, e.g. 5m and 1m.
    pub warn_before: Vec<Duration>,
    /// Every resource, by name.
    pub resources: Vec<Resource>,
}

/// Settings of the client-facing Postgres listener.
#[derive(Clone, Debug)]
pub struct PostgresListener {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Refuse clients that do not negotiate TLS.
    pub require_tls: bool,
    /// Close clients that have not finished authenticating by then.
    pub handshake_timeout: Duration,
    /// Certificate and key; `None` makes a self-signed pair in `data_dir` once.
    pub tls: Option<TlsFiles>,
    /// Warm upstream connections kept between sessions.
    pub pool: crate::postgres::pool::PoolSettings,
    /// Threads sessions run on.
    pub workers: usize,
}

/// Settings of the client-facing SSH listener.
#[derive(Clone, Debug)]
pub struct SshListener {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Close clients that have not finished their version line and key exchange by then.
    pub handshake_timeout: Duration,
    /// Ciphers offered to clients (`ssh::listener::DEFAULT_CIPHERS` unless configured).
    pub ciphers: Vec<russh::cipher::Name>,
}

/// PEM files for a server certificate.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// A resource engineers may be granted.
#[derive(Clone, Debug)]
pub struct Resource {
    /// Name engineers type (`dbname=` for Postgres).
    pub name: String,
    /// Where it is and how to reach it.
    pub target: Target,
    /// Upstream credentials per role.
    pub roles: Vec<Role>,
}

impl Resource {
    /// The role called `name`.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }
}

/// The kind-specific part of a resource.
#[derive(Clone, Debug)]
pub enum Target {
    /// A PostgreSQL server.
    Postgres(PostgresTarget),
    /// An SSH server.
    Ssh(SshTarget),
}

/// How to reach an upstream SSH server.
#[derive(Clone, Debug)]
pub struct SshTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The upstream's pinned host key; any other key refuses the session.
    pub host_key: russh::keys::PublicKey,
}

/// How to reach an upstream PostgreSQL server.
#[derive(Clone, Debug)]
pub struct PostgresTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Upstream database name.
    pub database: String,
    /// TLS to upstream.
    pub tls: UpstreamTls,
    /// CA bundle for `verify-full` (default: the system bundle).
    pub ca_file: Option<PathBuf>,
}

/// libpq's sslmode, as far as the proxy honours it upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamTls {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unverified.
    Prefer,
    /// TLS or fail, unverified.
    Require,
    /// TLS with the certificate checked against the CA and the host name.
    VerifyFull,
}

/// One upstream role: a user name and its secret.
#[derive(Clone, Debug)]
pub struct Role {
    /// Role name engineers request (`read`, `admin`).
    pub name: String,
    /// Upstream user.
    pub user: String,
    /// Upstream password; `None` for trust authentication.
    pub password: Option<Secret<String>>,
    /// Bound parameter values are left out of statement audit events.
    pub redact_parameters: bool,
    /// SSH private key for upstream SSH logins (tried before the password).
    pub ssh_key: Option<Secret<std::sync::Arc<russh::keys::PrivateKey>>>,
    /// Port forwarding and environment an SSH session may use (none by default).
    pub ssh_policy: crate::ssh::policy::SshPolicy,
}
