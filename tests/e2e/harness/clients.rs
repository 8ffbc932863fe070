//! How tests drive a gateway the way people do: the CLI, psql,
//! tokio-postgres and plain HTTP against its API; and any command run to
//! completion within a time bound.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::gateway::Gateway;

/// Bound on any CLI call.
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on any psql run.
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);

impl Gateway {
    /// Runs `portcullis ARGS` with PORTCULLIS_URL and PORTCULLIS_TOKEN set.
    pub fn cli(&self, token: &str, args: &[&str]) -> Output {
        self.cli_with(Some(token), args)
    }

    /// Like `cli`, but PORTCULLIS_TOKEN only when `token` is given.
    pub fn cli_with(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(args)
            .env("PORTCULLIS_URL", self.url())
            .env_remove("PORTCULLIS_TOKEN");
        if let Some(t) = token {
            cmd.env("PORTCULLIS_TOKEN", t);
        }
        run_bounded(&mut cmd, CLI_TIMEOUT)
    }

    /// Like `cli`, with `input` on stdin.
    pub fn cli_input(&self, token: &str, args: &[&str], input: &str) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.args(args)
            .env("PORTCULLIS_URL", self.url())
            .env("PORTCULLIS_TOKEN", token)
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGPASSFILE", "/dev/null");
        run_bounded_input(&mut cmd, Some(input.as_bytes()), CLI_TIMEOUT)
    }

    /// Runs a CLI verb that must succeed; answers its stdout, trimmed.
    pub fn cli_ok(&self, token: &str, args: &[&str]) -> String {
        let out = self.cli(token, args);
        assert!(
            out.status.success(),
            "portcullis {} failed ({}):\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `user add NAME [--group G].. [--admin]` as admin; answers the token.
    pub fn add_user(&self, name: &str, groups: &[&str], admin: bool) -> String {
        let mut args = vec!["user", "add", name];
        for g in groups {
            args.extend(["--group", g]);
        }
        if admin {
            args.push("--admin");
        }
        let token = self.cli_ok(&self.admin_token, &args);
        assert!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "user add should print the token alone, got {token:?}"
        );
        token
    }

    /// `request RESOURCE [--role R] --for D --reason ...`; answers the request id.
    pub fn request(&self, token: &str, resource: &str, role: Option<&str>, duration: &str) -> String {
        let mut args = vec!["request", resource, "--for", duration, "--reason", "e2e test"];
        if let Some(r) = role {
            args.extend(["--role", r]);
        }
        self.cli_ok(token, &args)
    }

    /// A request approved by `approver`: answers (request id, grant id).
    pub fn grant(
        &self,
        user_token: &str,
        approver_token: &str,
        resource: &str,
        role: Option<&str>,
        duration: &str,
    ) -> (String, String) {
        let id = self.request(user_token, resource, role, duration);
        let state = self.cli_ok(approver_token, &["approve", &id]);
        assert_eq!(state, "approved", "approving {id}");
        let req = self.api_json(user_token, &format!("/v1/requests/{id}"));
        let grant_id = req["grant_id"]
            .as_str()
            .unwrap_or_else(|| panic!("approved request without grant_id: {req}"))
            .to_owned();
        (id, grant_id)
    }

    /// The grant with this id, as the API shows it to `token`.
    pub fn grant_json(&self, token: &str, grant_id: &str) -> Value {
        let all = self.api_json(token, "/v1/grants?all=true");
        all.as_array()
            .and_then(|gs| gs.iter().find(|g| g["id"] == grant_id))
            .cloned()
            .unwrap_or_else(|| panic!("grant {grant_id} not in {all}"))
    }

    /// psql through the gateway with a keyword connection string.
    pub fn psql(&self, user: &str, token: &str, dbname: &str, sslmode: &str, sql: &str) -> Output {
        self.psql_conn_with(&self.conninfo(user, dbname, sslmode), token, &[], sql)
    }

    /// `psql` with more arguments (e.g. `-v FETCH_COUNT=2`), without TLS.
    pub fn psql_with(&self, user: &str, token: &str, dbname: &str, args: &[&str], sql: &str) -> Output {
        self.psql_conn_with(&self.conninfo(user, dbname, "disable"), token, args, sql)
    }

    fn conninfo(&self, user: &str, dbname: &str, sslmode: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname} sslmode={sslmode}",
            self.pg_port
        )
    }

    /// psql with any connection string or URL, the token as PGPASSWORD.
    pub fn psql_conn(&self, conninfo: &str, token: &str, sql: &str) -> Output {
        self.psql_conn_with(conninfo, token, &[], sql)
    }

    fn psql_conn_with(&self, conninfo: &str, token: &str, args: &[&str], sql: &str) -> Output {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo])
            .args(args)
            .args(["-c", sql])
            .env("PGPASSWORD", token)
            .env("PGCONNECT_TIMEOUT", "10");
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGSSLMODE",
            "PGSERVICE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PGPASSFILE", "/dev/null");
        run_bounded(&mut cmd, PSQL_TIMEOUT)
    }

    /// A tokio-postgres config for the gateway (plain TCP).
    pub fn pg_config(&self, user: &str, token: &str, dbname: &str) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.pg_port)
            .user(user)
            .password(token)
            .dbname(dbname)
            .ssl_mode(tokio_postgres::config::SslMode::Disable)
            .connect_timeout(Duration::from_secs(10));
        c
    }

    /// A plain HTTP/1.1 call to the API: (status, body).
    pub fn http(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
        self.try_http(method, path, token, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}; log:\n{}", self.log()))
    }

    /// `GET path` that must answer 200 with JSON.
    pub fn api_json(&self, token: &str, path: &str) -> Value {
        let (status, body) = self.http("GET", path, Some(token), None);
        assert_eq!(status, 200, "GET {path} answered {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// `portcullis audit ARGS --json` as admin: the array it printed.
    pub fn audit_json(&self, args: &[&str]) -> Vec<Value> {
        let mut all = vec!["audit"];
        all.extend_from_slice(args);
        all.push("--json");
        let out = self.cli_ok(&self.admin_token, &all);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{all:?} printed no JSON ({e}): {out}"));
        v.as_array()
            .cloned()
            .unwrap_or_else(|| panic!("{all:?}: not an array: {out}"))
    }

    /// `audit_json` again until `done` holds (events reach the log a moment
    /// after what caused them), for 30 s at most.
    pub fn audit_until(&self, args: &[&str], done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let events = self.audit_json(args);
            if done(&events) || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The events of `action`, once at least one is in the log (30 s at most).
    pub fn audit_seen(&self, action: &str) -> Vec<Value> {
        let events = self.audit_until(&["--action", action], |v| !v.is_empty());
        assert!(!events.is_empty(), "no {action} audit event within 30 s");
        events
    }

    /// One HTTP/1.1 request to the API; `Err` when it cannot be made or read
    /// (the gateway still starting, or gone).
    pub(super) fn try_http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.api_port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n",
            self.api_port
        );
        if let Some(t) = token {
            let _ = write!(req, "Authorization: Bearer {t}\r\n");
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method == "POST" {
            let _ = write!(
                req,
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            );
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let Some((head, rest)) = text.split_once("\r\n\r\n") else {
            return Err(std::io::Error::other(format!("no HTTP header in {text:?}")));
        };
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")
        });
        let body = if chunked { dechunk(rest) } else { rest.to_owned() };
        Ok((status, body))
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs `cmd` to completion with captured output, killing it after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    run_bounded_input(cmd, None, timeout)
}

/// Like `run_bounded`, with `input` written to stdin (else stdin is null).
pub fn run_bounded_input(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&bytes);
        });
    }
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stdout = out.join().unwrap_or_default();
            let stderr = err.join().unwrap_or_default();
            panic!(
                "{cmd:?} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
