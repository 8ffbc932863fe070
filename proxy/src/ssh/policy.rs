//! What an SSH role's policy lets a session do beyond a shell: the
//! destinations `ssh -L` may reach through the server (`port_forwarding`)
//! and the environment variables a client may pass (`env`). Both default to
//! nothing: a resource allows only what its policy names.

use std::fmt;

/// The SSH parts of a role's policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SshPolicy {
    /// Where `ssh -L` may connect, as seen from the server; empty: nowhere.
    pub port_forwarding: Vec<Destination>,
    /// Variable names a client may set (`LANG`), or prefixes ending in `*` (`LC_*`).
    pub env: Vec<String>,
}

impl SshPolicy {
    /// Whether a direct-tcpip channel to `host:port` is allowed.
    pub fn forward_allowed(&self, host: &str, port: u32) -> bool {
        self.port_forwarding.iter().any(|d| d.matches(host, port))
    }

    /// Whether the client may set the variable `name`.
    pub fn env_allowed(&self, name: &str) -> bool {
        self.env.iter().any(|pattern| match pattern.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == pattern,
        })
    }
}

/// One allowed forwarding destination: `HOST:PORT`, `HOST:*`, `*:PORT` or `*:*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// Host name or address as the client names it (compared without case); `None`: any.
    pub host: Option<String>,
    /// Port; `None`: any.
    pub port: Option<u16>,
}

impl Destination {
    /// Parses `HOST:PORT` (`[::1]:5432` for IPv6), with `*` for any host or port.
    pub fn parse(text: &str) -> Result<Destination, String> {
        let expected = || {
            format!("\"{text}\": expected HOST:PORT such as \"127.0.0.1:5432\" or \"db.internal:*\" (\"*\" for any)")
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(expected());
        }
        let port = match port {
            "*" => None,
            p => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(expected)?),
        };
        Ok(Destination {
            host: (host != "*").then(|| host.to_ascii_lowercase()),
            port,
        })
    }

    fn matches(&self, host: &str, port: u32) -> bool {
        let host_ok = self.host.as_deref().is_none_or(|h| h.eq_ignore_ascii_case(host));
        let port_ok = self.port.is_none_or(|p| u32::from(p) == port);
        host_ok && port_ok
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.host.as_deref().unwrap_or("*");
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => write!(f, "{host}:*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(dests: &[&str], env: &[&str]) -> SshPolicy {
        SshPolicy {
            port_forwarding: dests.iter().map(|d| Destination::parse(d).expect("parses")).collect(),
            env: env.iter().map(|e| (*e).to_owned()).collect(),
        }
    }

    #[test]
    fn forwarding_is_refused_unless_named() {
        assert!(!SshPolicy::default().forward_allowed("127.0.0.1", 5432));
        let p = policy(&["127.0.0.1:5432", "DB.internal:*", "[::1]:80"], &[]);
        assert!(p.forward_allowed("127.0.0.1", 5432));
        assert!(!p.forward_allowed("127.0.0.1", 5433));
        assert!(!p.forward_allowed("localhost", 5432), "names are not resolved");
        assert!(p.forward_allowed("db.INTERNAL", 1));
        assert!(p.forward_allowed("::1", 80));
        assert!(policy(&["*:22"], &[]).forward_allowed("anything", 22));
        assert!(policy(&["*:*"], &[]).forward_allowed("anything", 1));
    }

    #[test]
    fn destinations_parse_or_say_what_is_expected() {
        for bad in ["", "host", "host:", ":22", "host:0", "host:70000", "a b:1", "host:x"] {
            let err = Destination::parse(bad).expect_err(bad);
            assert!(err.contains("expected HOST:PORT"), "{err}");
        }
        let d = Destination::parse("[::1]:5432").expect("v6");
        assert_eq!(d.to_string(), "[::1]:5432");
        assert_eq!(Destination::parse("db:*").expect("any port").to_string(), "db:*");
    }

    #[test]
    fn env_names_and_prefixes() {
        let p = policy(&[], &["LANG", "LC_*"]);
        assert!(p.env_allowed("LANG"));
        assert!(p.env_allowed("LC_ALL"));
        assert!(!p.env_allowed("LANGUAGE"));
        assert!(!p.env_allowed("LD_PRELOAD"));
        assert!(!SshPolicy::default().env_allowed("LANG"));
    }
}
