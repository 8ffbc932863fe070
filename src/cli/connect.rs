//! `connect RESOURCE [--role R]`: looks up who you are and where the gateway's
//! Postgres listener is, then runs `psql` with a libpq keyword string and your
//! token as PGPASSWORD, handing it the terminal.

use std::process::Command;

use anyhow::{Context, anyhow};
use serde_json::Value;

use super::client::{Api, field};
use super::output::items;

/// Port of the gateway's Postgres listener when the API does not say.
const DEFAULT_PG_PORT: u16 = 6432;

/// Runs psql through the gateway; returns only if psql could not be started.
pub async fn connect(api: &Api, resource: &str, role: Option<&str>) -> anyhow::Result<()> {
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
    if kind != "postgres" {
        return Err(anyhow!(
            "resource \"{resource}\" is of kind {kind}; this client connects only to postgres resources"
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
    let (host, port) = gateway_address(api.base(), res, &resources);
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
    cmd.arg(conninfo).env("PGPASSWORD", api.token()?);
    run(cmd)
}

#[cfg(unix)]
fn run(mut cmd: Command) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    // exec: psql owns the terminal and its signals, and its exit status is ours.
    let err = cmd.exec();
    Err(err).context("cannot run psql (is it installed and on PATH?)")
}

#[cfg(not(unix))]
fn run(mut cmd: Command) -> anyhow::Result<()> {
    let status = cmd.status().context("cannot run psql (is it installed and on PATH?)")?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Where engineers reach the Postgres listener: from the resource entry (or
/// the answer) when the API says, else the API's host and port 6432.
fn gateway_address(base: &str, res: &Value, all: &Value) -> (String, u16) {
    for v in [res, all] {
        for key in ["gateway", "address", "endpoint", "connect", "listen", "postgres"] {
            match v.get(key) {
                Some(Value::String(s)) => {
                    if let Some(hp) = split_host_port(s) {
                        return hp;
                    }
                }
                Some(obj @ Value::Object(_)) => {
                    let host = obj.get("host").and_then(Value::as_str);
                    let port = obj
                        .get("port")
                        .and_then(Value::as_u64)
                        .and_then(|p| u16::try_from(p).ok());
                    if let (Some(h), Some(p)) = (host, port) {
                        return (h.to_owned(), p);
                    }
                }
                _ => {}
            }
        }
    }
    (api_host(base), DEFAULT_PG_PORT)
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
            gateway_address("http://x:8080", &res, &json!([])),
            ("10.0.0.5".into(), 6543)
        );
        let res = json!({"name": "orders"});
        assert_eq!(
            gateway_address("http://gw.example:8080", &res, &json!([])),
            ("gw.example".into(), 6432)
        );
        assert_eq!(
            gateway_address("https://[::1]:8080/", &res, &json!([])),
            ("::1".into(), 6432)
        );
    }

    #[test]
    fn values_are_quoted_for_libpq() {
        assert_eq!(quote("orders@read"), "orders@read");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), "'it\\'s'");
    }
}
