//! The config file's shape. Every struct refuses unknown keys, so a typo is
//! an error that names its line rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration written `90s`, `15m`, `4h` or `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A visitor, not `String::deserialize` then parse: an error raised
        // inside `visit_str` carries the value's own line and column.
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 90s, 15m, 4h or 1h30m")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Dur, E> {
                portcullis_protocol::duration::parse(v).map(Dur).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&portcullis_protocol::duration::format(self.0))
    }
}

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Embedded store, TLS key and cert, admin.token.
    pub data_dir: PathBuf,
    /// The HTTP API.
    #[serde(default)]
    pub api: Api,
    /// The Postgres listener.
    #[serde(default)]
    pub postgres: Postgres,
    /// The SSH listener (accepted now, served by a later release).
    pub ssh: Option<Ssh>,
    /// In-band warnings before a cut.
    #[serde(default = "default_warn_before")]
    pub warn_before: Vec<Dur>,
    /// What engineers may request.
    #[serde(default)]
    pub resources: Vec<Resource>,
}

fn default_warn_before() -> Vec<Dur> {
    vec![Dur(Duration::from_secs(300)), Dur(Duration::from_secs(60))]
}

/// `api:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Address of the HTTP API.
    pub listen: SocketAddr,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

/// `postgres:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Postgres {
    /// Address engineers' clients connect to.
    pub listen: SocketAddr,
    /// Refuse clients that do not negotiate TLS.
    #[serde(default)]
    pub require_tls: bool,
    /// Close clients that have not authenticated by then.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
    /// Certificate and key; absent: a self-signed pair kept in data_dir.
    pub tls: Option<TlsFiles>,
    /// host:port engineers should use, when it differs from `listen` (used by `portcullis connect`).
    pub advertise: Option<String>,
    /// Warm server connections kept between sessions (PgBouncer's session mode).
    pub pool: Option<Pool>,
    /// Threads that run sessions; default one per core.
    pub workers: Option<usize>,
}

/// `postgres.pool:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// Idle server connections kept per resource, role and client parameters; 0 turns pooling off.
    pub max_idle: Option<usize>,
    /// Idle connections older than this are closed.
    pub idle_timeout: Option<Dur>,
}

fn default_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

impl Default for Postgres {
    fn default() -> Self {
        Postgres {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            require_tls: false,
            handshake_timeout: default_handshake_timeout(),
            tls: None,
            pool: None,
            workers: None,
            advertise: None,
        }
    }
}

/// `postgres.tls:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `ssh:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// Address of the SSH gateway.
    pub listen: SocketAddr,
}

/// Kind of resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A PostgreSQL server.
    Postgres,
    /// An SSH server.
    Ssh,
}

/// TLS to a Postgres upstream, libpq's sslmode names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if offered.
    #[default]
    Prefer,
    /// TLS, unverified.
    Require,
    /// TLS, certificate and host name verified.
    VerifyFull,
}

/// One entry of `resources:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resource {
    /// What engineers type.
    pub name: String,
    /// `postgres` or `ssh`.
    pub kind: Kind,
    /// Upstream host.
    pub host: String,
    /// Upstream port (default 5432 or 22).
    pub port: Option<u16>,
    /// Upstream database (default: the resource name).
    pub database: Option<String>,
    /// TLS to upstream.
    #[serde(default)]
    pub tls: TlsMode,
    /// CA bundle for `verify-full`.
    pub ca_file: Option<PathBuf>,
    /// Pinned upstream SSH host key.
    #[expect(dead_code, reason = "accepted now so configs stay valid; the SSH gateway reads it")]
    pub host_key: Option<String>,
    /// Upstream credentials per role.
    pub roles: BTreeMap<String, Role>,
    /// Who may request and approve, and for how long.
    #[serde(default)]
    pub policy: Policy,
}

/// One upstream role.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    /// Upstream user name.
    pub user: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password.
    pub password_file: Option<PathBuf>,
    /// SSH private key file.
    #[expect(dead_code, reason = "accepted now so configs stay valid; the SSH gateway reads it")]
    pub key_file: Option<PathBuf>,
}

/// `policy:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Who may request; absent: any user.
    pub requesters: Option<Principals>,
    /// Who may approve; absent: admins.
    pub approvers: Option<Principals>,
    /// Distinct approvals needed.
    #[serde(default = "one")]
    pub approvals_required: u32,
    /// Shortest grant.
    pub min_duration: Option<Dur>,
    /// Longest grant.
    pub max_duration: Option<Dur>,
    /// Length when the request names none.
    pub default_duration: Option<Dur>,
    /// Whether a reason is needed.
    pub reason: Option<Reason>,
    /// Requests approved at once.
    #[serde(default)]
    pub auto_approve: Vec<AutoApprove>,
}

fn one() -> u32 {
    1
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            requesters: None,
            approvers: None,
            approvals_required: 1,
            min_duration: None,
            max_duration: None,
            default_duration: None,
            reason: None,
            auto_approve: Vec::new(),
        }
    }
}

/// Users and groups.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Principals {
    /// User names.
    #[serde(default)]
    pub users: Vec<String>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `reason: required`, `reason: optional` or `reason: { pattern: "^[A-Z]+-[0-9]+" }`.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "`required`, `optional` or { pattern: REGEX }")]
pub enum Reason {
    /// A word.
    Word(ReasonWord),
    /// A ticket pattern.
    Pattern {
        /// Regular expression the reason must match.
        pattern: String,
    },
}

/// `required` or `optional`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasonWord {
    /// A reason must be given.
    Required,
    /// A reason may be given.
    Optional,
}

/// One `auto_approve` rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoApprove {
    /// Users it applies to.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups it applies to.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Longest grant approved this way.
    pub max_duration: Dur,
}

impl Config {
    /// Checks what the types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.warn_before.iter().any(|w| w.0.is_zero()) {
            return Err("warn_before: offsets must be longer than 0s".into());
        }
        let mut seen = std::collections::HashSet::new();
        for r in &self.resources {
            let at = format!("resources[{}]", r.name);
            if r.name.is_empty() || r.name.contains(['@', ' ', '/']) {
                return Err(format!(
                    "{at}.name: expected a non-empty name without '@', '/' or spaces"
                ));
            }
            if !seen.insert(r.name.as_str()) {
                return Err(format!("{at}: the name \"{}\" is used twice", r.name));
            }
            if r.roles.is_empty() {
                return Err(format!("{at}.roles: expected at least one role"));
            }
            for (name, role) in &r.roles {
                if role.password_env.is_some() && role.password_file.is_some() {
                    return Err(format!(
                        "{at}.roles.{name}: give password_env or password_file, not both"
                    ));
                }
            }
            let p = &r.policy;
            if p.approvals_required == 0 {
                return Err(format!("{at}.policy.approvals_required: expected 1 or more"));
            }
            if let (Some(d), Some(m)) = (p.default_duration, p.max_duration)
                && d.0 > m.0
            {
                return Err(format!(
                    "{at}.policy.default_duration: {d} is longer than max_duration {m}"
                ));
            }
            if let (Some(min), Some(m)) = (p.min_duration, p.max_duration)
                && min.0 > m.0
            {
                return Err(format!(
                    "{at}.policy.min_duration: {min} is longer than max_duration {m}"
                ));
            }
        }
        Ok(())
    }
}
