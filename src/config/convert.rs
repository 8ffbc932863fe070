//! From the file's shape to what each part needs: the control plane gets
//! resources and policies, the proxy gets listeners, targets and secrets.
//! Secrets are read here, from env or files, and wrapped so they never print.

use portcullis_control as control;
use portcullis_protocol::secret::Secret;
use portcullis_proxy::postgres::pool::PoolSettings;
use portcullis_proxy::settings as proxy;
use portcullis_proxy::ssh::keys as ssh_keys;
use portcullis_proxy::ssh::policy::{Destination, SshPolicy};

use super::notifications::EventName;
use super::schema::{Config, Kind, Policy, Pool, Principals, Reason, ReasonWord, Resource, Role, TlsMode};

/// What the control plane needs.
pub fn control_settings(config: &Config) -> control::ControlSettings {
    control::ControlSettings {
        data_dir: config.data_dir.clone(),
        // A URL may hold a password: `control_plane` reads it.
        store_postgres: None,
        resources: config.resources.iter().map(control_resource).collect(),
        gateway_postgres: Some(
            config
                .postgres
                .advertise
                .clone()
                .unwrap_or_else(|| config.postgres.listen.to_string()),
        ),
        gateway_ssh: config.ssh.as_ref().map(|s| s.listen.to_string()),
        // Secrets are read by `notify_settings`, which may fail; the caller sets this.
        notifications: control::NotifySettings::default(),
        // Tokens are read by `proxy_credentials`, which may fail; the caller sets this.
        proxies: Vec::new(),
    }
}

/// What the control plane needs, secrets read: notification secrets, the
/// remote proxies' tokens and the PostgreSQL store's URL.
pub fn control_plane(config: &Config) -> Result<control::ControlSettings, String> {
    let mut settings = control_settings(config);
    settings.notifications = notify_settings(config)?;
    settings.proxies = proxy_credentials(config)?;
    let store = &config.store;
    settings.store_postgres = match &store.postgres {
        Some(url) => Some(Secret::new(url.clone())),
        None => secret(store.postgres_env.as_deref(), store.postgres_file.as_deref())
            .map_err(|e| format!("store.postgres_{}", e.strip_prefix("secret_").unwrap_or(&e)))?,
    };
    Ok(settings)
}

fn control_resource(r: &Resource) -> control::ResourceSettings {
    control::ResourceSettings {
        name: r.name.clone(),
        kind: match r.kind {
            Kind::Postgres => control::ResourceKind::Postgres,
            Kind::Ssh => control::ResourceKind::Ssh,
        },
        roles: r.roles.keys().cloned().collect(),
        policy: control_policy(&r.policy),
        role_policies: r
            .roles
            .iter()
            .filter_map(|(name, role)| Some((name.clone(), control_policy(&role.policy.as_ref()?.over(&r.policy)))))
            .collect(),
    }
}

fn control_policy(p: &Policy) -> control::Policy {
    let defaults = control::Policy::default();
    let max_duration = p.max_duration.map_or(defaults.max_duration, |d| d.0);
    let default_duration = p
        .default_duration
        .map_or(defaults.default_duration.min(max_duration), |d| d.0);
    control::Policy {
        requesters: p.requesters.as_ref().map(principals),
        approvers: p.approvers.as_ref().map(principals),
        approvals_required: p.approvals_required.unwrap_or(defaults.approvals_required),
        min_duration: p.min_duration.map(|d| d.0),
        max_duration,
        default_duration,
        reason: match &p.reason {
            None | Some(Reason::Word(ReasonWord::Optional)) => control::ReasonRule::Optional,
            Some(Reason::Word(ReasonWord::Required)) => control::ReasonRule::Required,
            Some(Reason::Pattern { pattern }) => control::ReasonRule::Pattern(pattern.clone()),
        },
        auto_approve: p
            .auto_approve
            .iter()
            .flatten()
            .map(|a| control::AutoApprove {
                users: a.users.clone(),
                groups: a.groups.clone(),
                max_duration: a.max_duration.0,
            })
            .collect(),
        pending_ttl: Some(p.pending_ttl.map_or(control::DEFAULT_PENDING_TTL, |d| d.0)),
        escalation: p
            .escalation
            .iter()
            .flatten()
            .map(|e| control::Escalation {
                after: e.after.0,
                approvers: principals(&e.approvers),
            })
            .collect(),
        break_glass: p.break_glass.as_ref().map(|b| control::BreakGlass {
            who: control::Principals {
                users: b.users.clone(),
                groups: b.groups.clone(),
            },
            max_duration: b.max_duration.0,
        }),
    }
}

fn principals(p: &Principals) -> control::Principals {
    control::Principals {
        users: p.users.clone(),
        groups: p.groups.clone(),
    }
}

/// What the proxy needs; fails when a secret cannot be read.
pub fn proxy_settings(config: &Config) -> Result<proxy::ProxySettings, String> {
    let mut resources = Vec::new();
    for r in &config.resources {
        let target = match r.kind {
            Kind::Postgres => proxy::Target::Postgres(proxy::PostgresTarget {
                host: r.host.clone(),
                port: r.port.unwrap_or(5432),
                database: r.database.clone().unwrap_or_else(|| r.name.clone()),
                tls: match r.tls {
                    TlsMode::Disable => proxy::UpstreamTls::Disable,
                    TlsMode::Prefer => proxy::UpstreamTls::Prefer,
                    TlsMode::Require => proxy::UpstreamTls::Require,
                    TlsMode::VerifyFull => proxy::UpstreamTls::VerifyFull,
                },
                ca_file: r.ca_file.clone(),
            }),
            Kind::Ssh => proxy::Target::Ssh(proxy::SshTarget {
                host: r.host.clone(),
                port: r.port.unwrap_or(22),
                host_key: ssh_keys::parse_public(r.host_key.as_deref().unwrap_or_default())
                    .map_err(|e| format!("resources[{}].host_key: {e}", r.name))?,
            }),
        };
        let mut roles = Vec::new();
        for (name, role) in &r.roles {
            let policy = role
                .policy
                .as_ref()
                .map_or_else(|| r.policy.clone(), |p| p.over(&r.policy));
            roles.push(proxy::Role {
                name: name.clone(),
                user: role.user.clone(),
                password: password(role).map_err(|e| format!("resources[{}].roles.{name}: {e}", r.name))?,
                redact_parameters: policy.redact_parameters.unwrap_or(false),
                ssh_policy: ssh_policy(&policy),
                ssh_key: match &role.key_file {
                    Some(path) => {
                        Some(Secret::new(ssh_keys::load_private(path).map_err(|e| {
                            format!("resources[{}].roles.{name}.key_file: {e}", r.name)
                        })?))
                    }
                    None => None,
                },
            });
        }
        resources.push(proxy::Resource {
            name: r.name.clone(),
            target,
            roles,
        });
    }
    Ok(proxy::ProxySettings {
        data_dir: config.data_dir.clone(),
        postgres: proxy::PostgresListener {
            listen: config.postgres.listen,
            require_tls: config.postgres.require_tls,
            handshake_timeout: config.postgres.handshake_timeout.0,
            tls: config.postgres.tls.as_ref().map(|t| proxy::TlsFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
            }),
            pool: config.postgres.pool.as_ref().map(Pool::settings).unwrap_or_default(),
            workers: config
                .postgres
                .workers
                .unwrap_or_else(portcullis_proxy::workers::default_count),
        },
        ssh: match &config.ssh {
            Some(s) => Some(proxy::SshListener {
                listen: s.listen,
                handshake_timeout: s.handshake_timeout.0,
                ciphers: match &s.ciphers {
                    Some(names) => {
                        portcullis_proxy::ssh::listener::ciphers(names).map_err(|e| format!("ssh.ciphers: {e}"))?
                    }
                    None => portcullis_proxy::ssh::listener::DEFAULT_CIPHERS.to_vec(),
                },
            }),
            None => None,
        },
        warn_before: config.warn_before.iter().map(|w| w.0).collect(),
        resources,
    })
}

/// The SSH parts of a (merged) policy; validation has already parsed them.
fn ssh_policy(p: &Policy) -> SshPolicy {
    SshPolicy {
        port_forwarding: p
            .port_forwarding
            .iter()
            .flatten()
            .filter_map(|d| Destination::parse(d).ok())
            .collect(),
        env: p.env.clone().unwrap_or_default(),
    }
}

impl Pool {
    fn settings(&self) -> PoolSettings {
        let default = PoolSettings::default();
        PoolSettings {
            max_idle: self.max_idle.unwrap_or(default.max_idle),
            idle_timeout: self.idle_timeout.as_ref().map_or(default.idle_timeout, |d| d.0),
        }
    }
}

/// What notifications need; fails when a secret cannot be read. Secrets
/// (signing keys, the Slack URL) are wrapped so they never print.
pub fn notify_settings(config: &Config) -> Result<control::NotifySettings, String> {
    let defaults = control::NotifySettings::default();
    let Some(n) = &config.notifications else {
        return Ok(defaults);
    };
    let events = |e: &Option<Vec<EventName>>| e.as_ref().map(|e| e.iter().map(|n| n.0).collect());
    let mut webhooks = Vec::new();
    for (i, w) in n.webhooks.iter().enumerate() {
        let secret = secret(w.secret_env.as_deref(), w.secret_file.as_deref())
            .map_err(|e| format!("notifications.webhooks[{i}].{e}"))?
            .ok_or_else(|| format!("notifications.webhooks[{i}]: a signing secret is required"))?;
        webhooks.push(control::WebhookSettings {
            url: Secret::new(w.url.clone()),
            secret,
            events: events(&w.events),
        });
    }
    let slack = match &n.slack {
        None => None,
        Some(s) => {
            let url = match (&s.url, &s.url_env) {
                (Some(u), _) => Some(Secret::new(u.clone())),
                (None, Some(var)) => {
                    let url = std::env::var(var).map_err(|_| {
                        format!("notifications.slack.url_env: the environment variable {var} is not set")
                    })?;
                    // The value is a secret: the error names the variable, never the URL.
                    if !reqwest::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https")) {
                        return Err(format!(
                            "notifications.slack.url_env: {var} does not hold an http:// or https:// URL"
                        ));
                    }
                    Some(Secret::new(url))
                }
                (None, None) => None,
            };
            let signing_secret = secret(s.signing_secret_env.as_deref(), s.signing_secret_file.as_deref())
                .map_err(|e| format!("notifications.slack.signing_{e}"))?;
            let cli_only_roles = config
                .resources
                .iter()
                .flat_map(|r| {
                    r.roles
                        .iter()
                        .filter(|(_, role)| role.chat_approval == Some(false))
                        .map(|(name, _)| (r.name.clone(), name.clone()))
                })
                .collect();
            Some(control::SlackSettings {
                url,
                signing_secret,
                users: s.users.clone(),
                events: events(&s.events),
                cli_only_roles,
            })
        }
    };
    Ok(control::NotifySettings {
        webhooks,
        slack,
        timeout: n.timeout.map_or(defaults.timeout, |d| d.0),
        max_attempts: n.max_attempts.unwrap_or(defaults.max_attempts),
        backoff: n.backoff.map_or(defaults.backoff, |d| d.0),
        max_backoff: n.max_backoff.map_or(defaults.max_backoff, |d| d.0),
    })
}

/// The credentials of the remote proxies under `proxies:`; fails when a token cannot be read.
pub fn proxy_credentials(config: &Config) -> Result<Vec<control::ProxyCredential>, String> {
    let mut creds = Vec::new();
    for (i, p) in config.proxies.iter().enumerate() {
        let token = secret(p.token_env.as_deref(), p.token_file.as_deref())
            .map_err(|e| format!("proxies[{i}].token_{}", e.strip_prefix("secret_").unwrap_or(&e)))?
            .ok_or_else(|| format!("proxies[{i}]: a token is required"))?;
        creds.push(control::ProxyCredential::new(p.name.clone(), &token));
    }
    Ok(creds)
}

/// What `portcullis proxy` needs to reach its control plane, from `proxy:`.
#[derive(Debug)]
pub struct ProxyLink {
    /// This proxy's name.
    pub name: String,
    /// Its token, sent as a bearer.
    pub token: Secret<String>,
    /// Address of its health and metrics listener.
    pub listen: std::net::SocketAddr,
    /// Silence after which new sessions are refused.
    pub staleness: std::time::Duration,
    /// The CA the control plane's https certificate chains to, when private.
    pub ca_file: Option<std::path::PathBuf>,
}

/// `proxy:` with its token read; `None` without a `proxy:` section.
pub fn proxy_link(config: &Config) -> Result<Option<ProxyLink>, String> {
    let Some(p) = &config.proxy else {
        return Ok(None);
    };
    let token = secret(p.token_env.as_deref(), p.token_file.as_deref())
        .map_err(|e| format!("proxy.token_{}", e.strip_prefix("secret_").unwrap_or(&e)))?
        .ok_or_else(|| "proxy: a token is required".to_owned())?;
    Ok(Some(ProxyLink {
        name: p.name.clone(),
        token,
        listen: p.listen,
        staleness: p.staleness.0,
        ca_file: p.ca_file.clone(),
    }))
}

/// A secret from an env var or a file (trailing newline dropped); the error
/// starts with the key at fault (`secret_env: ...`).
fn secret(env: Option<&str>, file: Option<&std::path::Path>) -> Result<Option<Secret<String>>, String> {
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
            _ => Err(format!("secret_env: the environment variable {var} is not set")),
        };
    }
    if let Some(path) = file {
        return match std::fs::read_to_string(path) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(Secret::new(v.trim_end_matches(['\r', '\n']).to_owned()))),
            Ok(_) => Err(format!("secret_file: {} is empty", path.display())),
            Err(e) => Err(format!("secret_file: cannot read {}: {e}", path.display())),
        };
    }
    Ok(None)
}

fn password(role: &Role) -> Result<Option<Secret<String>>, String> {
    if let Some(var) = &role.password_env {
        return match std::env::var(var) {
            Ok(v) => Ok(Some(Secret::new(v))),
            Err(_) => Err(format!("password_env: the environment variable {var} is not set")),
        };
    }
    if let Some(path) = &role.password_file {
        return match std::fs::read_to_string(path) {
            Ok(v) => Ok(Some(Secret::new(v.trim_end_matches(['\r', '\n']).to_owned()))),
            Err(e) => Err(format!("password_file: cannot read {}: {e}", path.display())),
        };
    }
    Ok(None)
}
