//! The config file's shape. Every struct refuses unknown keys, so a typo is
//! an error that names its line rather than a silently ignored setting.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use portcullis_proxy::ssh::policy::Destination;

use super::notifications::Notifications;

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
    /// Where the control plane keeps its data; absent: the embedded store in `data_dir`.
    #[serde(default)]
    pub store: StoreSection,
    /// The HTTP API.
    #[serde(default)]
    pub api: Api,
    /// The Postgres listener.
    #[serde(default)]
    pub postgres: Postgres,
    /// The SSH listener; absent: no SSH gateway.
    pub ssh: Option<Ssh>,
    /// In-band warnings before a cut.
    #[serde(default = "default_warn_before")]
    pub warn_before: Vec<Dur>,
    /// What engineers may request.
    #[serde(default)]
    pub resources: Vec<Resource>,
    /// Webhooks and Slack.
    pub notifications: Option<Notifications>,
    /// Remote proxies that may follow this control plane (`portcullis control`, `serve`).
    #[serde(default)]
    pub proxies: Vec<ProxyPeer>,
    /// This process as a remote proxy (`portcullis proxy`).
    pub proxy: Option<ProxySection>,
}

/// `store:`: a PostgreSQL store, which several control replicas can share.
/// At most one way to give its URL (it may hold a password).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The connection URL itself, e.g. `postgres://portcullis@db1/portcullis`.
    pub postgres: Option<String>,
    /// Environment variable holding the URL.
    pub postgres_env: Option<String>,
    /// File holding the URL.
    pub postgres_file: Option<PathBuf>,
}

/// One entry of `proxies:`: a remote proxy's name and where its token is.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyPeer {
    /// Its name, e.g. `eu1` (as its own `proxy.name`).
    pub name: String,
    /// Environment variable holding its token.
    pub token_env: Option<String>,
    /// File holding its token.
    pub token_file: Option<PathBuf>,
}

/// `proxy:`: what `portcullis proxy` needs beyond the listeners.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxySection {
    /// This proxy's name, as the control plane's `proxies:` lists it.
    pub name: String,
    /// Environment variable holding its token.
    pub token_env: Option<String>,
    /// File holding its token.
    pub token_file: Option<PathBuf>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[serde(default = "default_proxy_listen")]
    pub listen: SocketAddr,
    /// Past this long without a word from the control plane, new sessions are refused.
    #[serde(default = "default_staleness")]
    pub staleness: Dur,
    /// PEM certificates the control plane's https certificate must chain to
    /// (a private CA); absent: the system's roots.
    pub ca_file: Option<PathBuf>,
}

fn default_proxy_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9091))
}

fn default_staleness() -> Dur {
    Dur(Duration::from_secs(60))
}

/// A proxy name: what labels its sessions and logs.
fn check_proxy_name(at: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!("{at}.name: expected letters, digits, '-' or '_' (up to 64)"));
    }
    Ok(())
}

/// Exactly one of `token_env` and `token_file`.
fn check_token_source(at: &str, env: Option<&String>, file: Option<&PathBuf>) -> Result<(), String> {
    match (env, file) {
        (Some(_), Some(_)) => Err(format!("{at}: give token_env or token_file, not both")),
        (None, None) => Err(format!("{at}: a token is required: give token_env or token_file")),
        _ => Ok(()),
    }
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
    /// Certificate and key: the API is then served over TLS only (https).
    pub tls: Option<TlsFiles>,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: None,
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
    /// Close clients that have not sent their version line and finished key
    /// exchange by then (default 10s).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
    /// Ciphers offered to clients, e.g. `[aes256-gcm@openssh.com,
    /// chacha20-poly1305@openssh.com]` for clients without AES-GCM; absent: AES-GCM only.
    pub ciphers: Option<Vec<String>>,
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
    /// Pinned upstream SSH host key (`ssh-ed25519 AAAA...`), required for `kind: ssh`.
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
    /// SSH private key file (OpenSSH format, unencrypted) for `kind: ssh`.
    pub key_file: Option<PathBuf>,
    /// Policy fields this role overrides; the rest come from the resource's `policy`.
    pub policy: Option<Policy>,
    /// `false`: requests for this role are never approved from chat (a role
    /// named `admin` never is); they need the CLI or API.
    pub chat_approval: Option<bool>,
}

/// `policy:` of a resource, or the fields a role overrides. Every field is
/// optional so a role's policy can name only what differs.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Who may request; absent: any user.
    pub requesters: Option<Principals>,
    /// Who may approve; absent: nobody (the admin right alone does not approve).
    pub approvers: Option<Principals>,
    /// Distinct approvals needed (default 1).
    pub approvals_required: Option<u32>,
    /// Shortest grant.
    pub min_duration: Option<Dur>,
    /// Longest grant.
    pub max_duration: Option<Dur>,
    /// Length when the request names none.
    pub default_duration: Option<Dur>,
    /// Whether a reason is needed.
    pub reason: Option<Reason>,
    /// Requests approved at once.
    pub auto_approve: Option<Vec<AutoApprove>>,
    /// How long a request waits for an answer before it expires (default 24h).
    pub pending_ttl: Option<Dur>,
    /// Further approvers who may approve after a wait, in order.
    pub escalation: Option<Vec<EscalationStep>>,
    /// Self-grants at once, with a reason and a short cap.
    pub break_glass: Option<BreakGlass>,
    /// Leave bound parameter values out of statement audit events (default false).
    pub redact_parameters: Option<bool>,
    /// SSH: where `ssh -L` may connect, `HOST:PORT` with `*` for any (default: nowhere).
    pub port_forwarding: Option<Vec<String>>,
    /// SSH: environment variables a client may pass, `LANG` or `LC_*` (default: none).
    pub env: Option<Vec<String>>,
}

impl Policy {
    /// This role's fields where set, `base`'s elsewhere.
    pub fn over(&self, base: &Policy) -> Policy {
        Policy {
            requesters: self.requesters.clone().or_else(|| base.requesters.clone()),
            approvers: self.approvers.clone().or_else(|| base.approvers.clone()),
            approvals_required: self.approvals_required.or(base.approvals_required),
            min_duration: self.min_duration.or(base.min_duration),
            max_duration: self.max_duration.or(base.max_duration),
            default_duration: self.default_duration.or(base.default_duration),
            reason: self.reason.clone().or_else(|| base.reason.clone()),
            auto_approve: self.auto_approve.clone().or_else(|| base.auto_approve.clone()),
            pending_ttl: self.pending_ttl.or(base.pending_ttl),
            escalation: self.escalation.clone().or_else(|| base.escalation.clone()),
            break_glass: self.break_glass.clone().or_else(|| base.break_glass.clone()),
            redact_parameters: self.redact_parameters.or(base.redact_parameters),
            port_forwarding: self.port_forwarding.clone().or_else(|| base.port_forwarding.clone()),
            env: self.env.clone().or_else(|| base.env.clone()),
        }
    }

    /// Checks what the types alone cannot; `at` names the policy in errors.
    fn validate(&self, at: &str) -> Result<(), String> {
        if self.approvals_required == Some(0) {
            return Err(format!("{at}.approvals_required: expected 1 or more"));
        }
        if let (Some(d), Some(m)) = (self.default_duration, self.max_duration)
            && d.0 > m.0
        {
            return Err(format!("{at}.default_duration: {d} is longer than max_duration {m}"));
        }
        if let (Some(min), Some(m)) = (self.min_duration, self.max_duration)
            && min.0 > m.0
        {
            return Err(format!("{at}.min_duration: {min} is longer than max_duration {m}"));
        }
        for d in self.port_forwarding.iter().flatten() {
            Destination::parse(d).map_err(|e| format!("{at}.port_forwarding: {e}"))?;
        }
        let env_name = |n: &str| {
            let n = n.strip_suffix('*').unwrap_or(n);
            !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if let Some(bad) = self.env.iter().flatten().find(|n| !env_name(n)) {
            return Err(format!(
                "{at}.env: \"{bad}\": expected a variable name such as LANG, or a prefix such as LC_*"
            ));
        }
        let steps = self.escalation.as_deref().unwrap_or_default();
        if steps.windows(2).any(|w| matches!(w, [a, b] if a.after.0 >= b.after.0)) {
            return Err(format!("{at}.escalation: list the steps with growing `after` times"));
        }
        Ok(())
    }
}

/// One step of `escalation`: after this long unanswered, these approvers may approve too.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EscalationStep {
    /// Time since the request was made.
    pub after: Dur,
    /// The next approvers.
    pub approvers: Principals,
}

/// `break_glass:`: who may grant themselves access at once, and for how long.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    /// Users who may.
    #[serde(default)]
    pub users: Vec<String>,
    /// Groups whose members may.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Longest self-grant.
    pub max_duration: Dur,
}

/// Users and groups.
#[derive(Clone, Debug, Default, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
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
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReasonWord {
    /// A reason must be given.
    Required,
    /// A reason may be given.
    Optional,
}

/// One `auto_approve` rule.
#[derive(Clone, Debug, Deserialize)]
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

/// What an SSH resource needs beyond the common fields.
fn ssh_resource(r: &Resource, at: &str) -> Result<(), String> {
    // `+` separates user, resource and role in the SSH login name (USER+RESOURCE[+ROLE]).
    if r.name.contains('+') {
        return Err(format!("{at}.name: an ssh resource name cannot contain '+'"));
    }
    if r.host_key.is_none() {
        return Err(format!(
            "{at}.host_key: an ssh resource needs the upstream's pinned host key, e.g. the line of ssh-keyscan -t ed25519 HOST without the host name"
        ));
    }
    for (name, role) in &r.roles {
        if role.key_file.is_none() && role.password_env.is_none() && role.password_file.is_none() {
            return Err(format!(
                "{at}.roles.{name}: an ssh role needs key_file, password_env or password_file"
            ));
        }
    }
    Ok(())
}

impl Config {
    /// Checks what the types alone cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.warn_before.iter().any(|w| w.0.is_zero()) {
            return Err("warn_before: offsets must be longer than 0s".into());
        }
        if let Some(n) = &self.notifications {
            n.validate()?;
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.proxies.iter().enumerate() {
            let at = format!("proxies[{i}]");
            check_proxy_name(&at, &p.name)?;
            check_token_source(&at, p.token_env.as_ref(), p.token_file.as_ref())?;
            if !names.insert(p.name.as_str()) {
                return Err(format!("{at}.name: \"{}\" is listed twice", p.name));
            }
        }
        let store = &self.store;
        let given = [
            store.postgres.is_some(),
            store.postgres_env.is_some(),
            store.postgres_file.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err("store: give one of postgres, postgres_env and postgres_file".into());
        }
        if let Some(p) = &self.proxy {
            check_proxy_name("proxy", &p.name)?;
            check_token_source("proxy", p.token_env.as_ref(), p.token_file.as_ref())?;
            if p.staleness.0.is_zero() {
                return Err("proxy.staleness: expected more than 0s".into());
            }
        }
        if self.ssh.as_ref().is_some_and(|s| s.handshake_timeout.0.is_zero()) {
            return Err("ssh.handshake_timeout: expected more than 0s".into());
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
            if r.kind == Kind::Ssh {
                ssh_resource(r, &at)?;
            } else if r.policy.port_forwarding.is_some() || r.policy.env.is_some() {
                return Err(format!(
                    "{at}.policy: port_forwarding and env apply to kind: ssh resources only"
                ));
            }
            for (name, role) in &r.roles {
                if name == "admin" && role.chat_approval == Some(true) {
                    return Err(format!(
                        "{at}.roles.admin.chat_approval: a role named admin is never approved from chat"
                    ));
                }
                if role.password_env.is_some() && role.password_file.is_some() {
                    return Err(format!(
                        "{at}.roles.{name}: give password_env or password_file, not both"
                    ));
                }
            }
            r.policy.validate(&format!("{at}.policy"))?;
            for (name, role) in &r.roles {
                if let Some(p) = &role.policy {
                    p.over(&r.policy).validate(&format!("{at}.roles.{name}.policy"))?;
                }
            }
        }
        Ok(())
    }
}
