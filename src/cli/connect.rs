//! `connect RESOURCE [--role R] [-- ARGS]`: looks up who you are and where the
//! gateway listens for the resource's kind, then hands the terminal to `psql`
//! (a libpq keyword string, your token as PGPASSWORD) or to `ssh` (the login
//! `USER+RESOURCE[+ROLE]`, your registered key or the token prompt). ARGS go
//! to the client after its own: a command for ssh, options for psql.

use std::process::Command;

use anyhow::{Context, anyhow};
use serde_json::Value;

use super::client::{Api, field};
use super::output::items;

/// Port of the gateway's Postgres listener when the API does not say.
const DEFAULT_PG_PORT: u16 = 6432;
/// Port of the gateway's SSH listener when the API does not say.
const DEFAULT_SSH_PORT: u16 = 2222;

/// Runs psql or ssh through the gateway; returns only if it could not be started.
pub async fn connect(api: &Api, resource: &str, role: Option<&str>, args: &[String]) -> anyhow::Result<()> {
    let me = api.get("/v1/whoami").await?;
    let user = field(&me, "name")?.to_owned();
    let resources = api.get("/v1/resources").await?;
    let Some(res) = items(&resources)
        .iter()
        .find(|r| r.get("name").and_then(Value::as_str) == Some(resource))
    else {
        let known: Vec<&str> = items(&resources)
            .iter()
            .filter_map(|r| r.get("name").and_then(Value::as_str))
            .collect();
        return Err(anyhow!(
            "\"{resource}\" is not a resource of this gateway; its resources are: {}",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ));
    };
    let kind = res.get("kind").and_then(Value::as_str).unwrap_or("postgres");
    if kind != "postgres" && kind != "ssh" {
        return Err(anyhow!(
            "resource \"{resource}\" is of kind {kind}; this client connects to postgres and ssh resources"
        ));
    }
    if let (Some(r), Some(roles)) = (role, res.get("roles").and_then(Value::as_array))
        && !roles.iter().any(|x| x.as_str() == Some(r))
    {
        let names: Vec<&str> = roles.iter().filter_map(Value::as_str).collect();
        return Err(anyhow!(
            "resource \"{resource}\" has no role \"{r}\"; its roles are: {}",
            names.join(", ")
        ));
    }
    if kind == "ssh" {
        let (host, port) = gateway_address(api.base(), res, &resources, DEFAULT_SSH_PORT);
        return run(ssh_command(&host, port, &user, resource, role, args), "ssh");
    }
    let (host, port) = gateway_address(api.base(), res, &resources, DEFAULT_PG_PORT);
    let dbname = match role {
        Some(r) => format!("{resource}@{r}"),
        None => resource.to_owned(),
    };
    let conninfo = [
        ("host", host),
        ("port", port.to_string()),
        ("user", user),
        ("dbname", dbname),
    ]
    .iter()
    .map(|(k, v)| format!("{k}={}", quote(v)))
    .collect::<Vec<_>>()
    .join(" ");
    let mut cmd = Command::new("psql");
    cmd.arg(conninfo).args(args).env("PGPASSWORD", api.token()?);
    run(cmd, "psql")
}

/// `ssh -p PORT -l USER+RESOURCE[+ROLE] HOST ARGS...`: the token is not
/// passed (ssh has no way to take it but the prompt, where it may be typed).
fn ssh_command(host: &str, port: u16, user: &str, resource: &str, role: Option<&str>, args: &[String]) -> Command {
    let login = match role {
        Some(r) => format!("{user}+{resource}+{r}"),
        None => format!("{user}+{resource}"),
    };
    let mut cmd = Command::new("ssh");
    cmd.arg("-p")
        .arg(port.to_string())
        .arg("-l")
        .arg(login)
        .arg(host)
        .args(args);
    cmd
}

#[cfg(unix)]
fn run(mut cmd: Command, program: &str) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    // exec: the client owns the terminal and its signals, and its exit status is ours.
    let err = cmd.exec();
    Err(err).with_context(|| format!("cannot run {program} (is it installed and on PATH?)"))
}

#[cfg(not(unix))]
fn run(mut cmd: Command, program: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {program} (is it installed and on PATH?)"))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Where engineers reach the resource's listener: from the resource entry (or
/// the answer) when the API says, else the API's host and `default_port`.
/// A wildcard listen address (`0.0.0.0`) means "the gateway's host".
fn gateway_address(base: &str, res: &Value, all: &Value, default_port: u16) -> (String, u16) {
    let (host, port) = named_address(res, all).unwrap_or_else(|| (api_host(base), default_port));
    let wildcard = host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified());
    if wildcard { (api_host(base), port) } else { (host, port) }
}

fn named_address(res: &Value, all: &Value) -> Option<(String, u16)> {
    for v in [res, all] {
        for key in ["gateway", "address", "endpoint", "connect", "listen", "postgres"] {
            match v.get(key) {
                Some(Value::String(s)) => {
                    if let Some(hp) = split_host_port(s) {
                        return Some(hp);
                    }
                }
                Some(obj @ Value::Object(_)) => {
                    let host = obj.get("host").and_then(Value::as_str);
                    let port = obj
                        .get("port")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok());
                    if let (Some(h), Some(p)) = (host, port) {
                        return Some((h.to_owned(), p));
                    }
                }
                _ => {}
            }
        }
    }
    None
}

fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

fn api_host(base: &str) -> String {
    let rest = base.split_once("://").map_or(base, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if authority.starts_with('[') {
        authority
            .split_once(']')
            .map_or(authority, |(h, _)| h)
            .trim_start_matches('[')
    } else {
        authority.split(':').next().unwrap_or(authority)
    };
    if host.is_empty() {
        "127.0.0.1".to_owned()
    } else {
        host.to_owned()
    }
}

/// A libpq keyword value, quoted when it needs to be.
fn quote(v: &str) -> String {
    if !v.is_empty() && !v.contains([' ', '\'', '\\', '\t', '\n', '=']) {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn address_from_the_resource_or_the_url() {
        let res = json!({"name": "orders", "gateway": "10.0.0.5:6543"});
        assert_eq!(
            gateway_address("http://x:8080", &res, &json!([]), DEFAULT_PG_PORT),
            ("10.0.0.5".into(), 6543)
        );
        let res = json!({"name": "orders"});
        assert_eq!(
            gateway_address("http://gw.example:8080", &res, &json!([]), DEFAULT_PG_PORT),
            ("gw.example".into(), 6432)
        );
        assert_eq!(
            gateway_address("https://[::1]:8080/", &res, &json!([]), DEFAULT_PG_PORT),
            ("::1".into(), 6432)
        );
        let res = json!({"name": "web1", "gateway": "0.0.0.0:2222"});
        assert_eq!(
            gateway_address("http://gw.example:8080", &res, &json!([]), DEFAULT_SSH_PORT),
            ("gw.example".into(), 2222)
        );
    }

    #[test]
    fn ssh_gets_port_login_host_then_the_extra_args() {
        let cmd = ssh_command(
            "gw",
            2222,
            "alice",
            "web1",
            Some("deploy"),
            &["uname".into(), "-a".into()],
        );
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["-p", "2222", "-l", "alice+web1+deploy", "gw", "uname", "-a"]);
    }

    #[test]
    fn values_are_quoted_for_libpq() {
        assert_eq!(quote("orders@read"), "orders@read");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it\\'s'");
    }
}
