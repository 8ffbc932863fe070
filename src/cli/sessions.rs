//! `sessions`, `sessions --all`, `sessions show`, `kill`.

use std::io::{BufWriter, Write};

use anyhow::anyhow;
use serde_json::{Value, json};

use super::audit::event_line;
use super::client::{Api, seg};
use super::output::{JsonArray, cell, is_broken_pipe, items, print_list, table};

/// `sessions [--all] [--json]`, or `sessions show SESSION_ID [--json]`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct SessionsArgs {
    /// `show`, or nothing to list.
    #[command(subcommand)]
    pub command: Option<SessionsCommand>,
    /// Past sessions too (from the audit log), with how and when they ended.
    #[arg(long)]
    pub all: bool,
    /// Print a JSON array.
    #[arg(long)]
    pub json: bool,
}

/// `sessions show`.
#[derive(Debug, clap::Subcommand)]
pub enum SessionsCommand {
    /// Show one session, live or past, and its statements, oldest first.
    Show {
        /// Session id.
        session_id: String,
        /// Print JSON: `{"session": {...}, "statements": [...]}`.
        #[arg(long)]
        json: bool,
    },
}

/// Sessions or events fetched per page.
const PAGE: usize = 1000;

/// Runs `sessions ...`.
pub async fn run(api: &Api, args: SessionsArgs) -> anyhow::Result<()> {
    let result = match args.command {
        Some(SessionsCommand::Show { session_id, json }) => show(api, &session_id, json).await,
        None if args.all => history(api, args.json).await,
        None => list(api, args.json).await,
    };
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// `sessions [--json]`: live sessions.
async fn list(api: &Api, json: bool) -> anyhow::Result<()> {
    let value = api.get("/v1/sessions").await?;
    print_list(
        &value,
        json,
        &[
            "ID",
            "USER",
            "RESOURCE",
            "ROLE",
            "PROTOCOL",
            "GRANT",
            "STARTED",
            "BYTES_IN",
            "BYTES_OUT",
        ],
        |s| {
            vec![
                cell(s, "id"),
                cell(s, "user"),
                cell(s, "resource"),
                cell(s, "role"),
                cell(s, "protocol"),
                cell(s, "grant_id"),
                cell(s, "started_at"),
                cell(s, "bytes_in"),
                cell(s, "bytes_out"),
            ]
        },
    )
}

/// One page of `path`, which takes `limit` and `after` and answers `next`.
async fn page(api: &Api, path: &str, after: Option<u64>) -> anyhow::Result<Value> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
    api.get(&format!("{path}{sep}limit={PAGE}{cursor}")).await
}

/// Calls `f` on each element of the `key` array of `first` and of every
/// page of `path` after it: one page in memory at a time.
async fn each(
    api: &Api,
    path: &str,
    first: Value,
    key: &str,
    mut f: impl FnMut(&Value) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut current = first;
    loop {
        for item in items(current.get(key).unwrap_or(&Value::Null)) {
            f(item)?;
        }
        match current.get("next").and_then(Value::as_u64) {
            Some(after) => current = page(api, path, Some(after)).await?,
            None => return Ok(()),
        }
    }
}

/// `sessions --all [--json]`: past and live sessions, oldest first.
async fn history(api: &Api, json: bool) -> anyhow::Result<()> {
    let path = "/v1/sessions/history";
    let first = page(api, path, None).await?;
    if json {
        let mut array = JsonArray::new(BufWriter::new(std::io::stdout()));
        each(api, path, first, "sessions", |s| array.push(s)).await?;
        array.finish()?;
        return Ok(());
    }
    let mut rows = Vec::new();
    each(api, path, first, "sessions", |s| {
        rows.push(vec![
            cell(s, "id"),
            cell(s, "user"),
            cell(s, "resource"),
            cell(s, "role"),
            cell(s, "started_at"),
            cell(s, "ended_at"),
            cell(s, "state"),
            cell(s, "ended"),
            cell(s, "bytes_in"),
            cell(s, "bytes_out"),
        ]);
        Ok(())
    })
    .await?;
    let headers = [
        "ID",
        "USER",
        "RESOURCE",
        "ROLE",
        "STARTED",
        "ENDED",
        "STATE",
        "HOW",
        "BYTES_IN",
        "BYTES_OUT",
    ];
    std::io::stdout().write_all(table(&headers, &rows).as_bytes())?;
    Ok(())
}

/// `sessions show ID [--json]`: the session, then what it did: a Postgres
/// session's statements, an SSH session's commands, shells, file
/// operations and forwards (its events but its start and end).
async fn show(api: &Api, id: &str, json: bool) -> anyhow::Result<()> {
    let statements = format!("/v1/sessions/{}/events?action=statement", seg(id));
    let mut first = page(api, &statements, None).await?;
    let session = first
        .get("session")
        .cloned()
        .ok_or_else(|| anyhow!("the API's answer has no \"session\" field"))?;
    let ssh = cell(&session, "protocol") == "ssh";
    let (path, heading, key) = if ssh {
        let all = format!("/v1/sessions/{}/events", seg(id));
        first = page(api, &all, None).await?;
        (all, "ACTIVITY", "events")
    } else {
        (statements, "STATEMENTS", "statements")
    };
    // An SSH session's own start and end are the session's fields already.
    let shown = |e: &Value| !matches!(cell(e, "action").as_str(), "session.start" | "session.end");
    let mut out = BufWriter::new(std::io::stdout());
    if json {
        write!(
            out,
            "{{\n\"session\": {},\n\"{key}\": ",
            serde_json::to_string(&session)?
        )?;
        let mut array = JsonArray::new(&mut out);
        each(api, &path, first, "events", |e| {
            if shown(e) { array.push(e) } else { Ok(()) }
        })
        .await?;
        array.finish()?;
        writeln!(out, "}}")?;
        out.flush()?;
        return Ok(());
    }
    write_session(&mut out, &session)?;
    let mut listed = 0usize;
    each(api, &path, first, "events", |e| {
        if !shown(e) {
            return Ok(());
        }
        if listed == 0 {
            writeln!(out, "\n{heading}")?;
        }
        listed += 1;
        writeln!(out, "{}", statement_line(e))?;
        Ok(())
    })
    .await?;
    if listed == 0 {
        writeln!(out, "\nno {} recorded", heading.to_lowercase())?;
    }
    out.flush()?;
    Ok(())
}

/// The session's fields, one per line.
fn write_session(out: &mut impl Write, s: &Value) -> anyhow::Result<()> {
    let ended = match (cell(s, "state").as_str(), cell(s, "ended_at"), cell(s, "ended")) {
        ("ended", at, how) => format!("{at} ({how})"),
        ("live", _, _) => "- (live)".to_owned(),
        (_, _, _) => "- (no end recorded: the gateway stopped before it could record one)".to_owned(),
    };
    for (name, value) in [
        ("session", cell(s, "id")),
        ("user", cell(s, "user")),
        ("resource", cell(s, "resource")),
        ("role", cell(s, "role")),
        ("protocol", cell(s, "protocol")),
        ("grant", cell(s, "grant_id")),
        ("request", cell(s, "request_id")),
        ("from", cell(s, "peer")),
        ("started", cell(s, "started_at")),
        ("ended", ended),
        ("bytes in", cell(s, "bytes_in")),
        ("bytes out", cell(s, "bytes_out")),
    ] {
        writeln!(out, "{name:<10}{value}")?;
    }
    Ok(())
}

/// One statement: when, outcome, rows, duration and text; an event of
/// another kind reads as `audit` prints it.
fn statement_line(e: &Value) -> String {
    let detail = e.get("detail").unwrap_or(&Value::Null);
    if cell(e, "action") != "statement" {
        return event_line(e);
    }
    let outcome = match (
        cell(detail, "outcome").as_str(),
        cell(detail, "tag"),
        cell(detail, "sqlstate"),
    ) {
        ("error", _, state) => format!("error {state}"),
        (_, tag, _) if tag != "-" => tag,
        (outcome, _, _) => outcome.to_owned(),
    };
    let duration = detail
        .get("duration_us")
        .and_then(Value::as_str)
        .and_then(|us| us.parse::<f64>().ok())
        .map_or_else(|| "-".to_owned(), |us| format!("{:.1}ms", us / 1000.0));
    let mut line = format!(
        "{}  {}  rows={}  {}  {}",
        cell(e, "at"),
        outcome,
        cell(detail, "rows"),
        duration,
        cell(detail, "text")
    );
    // An EXECUTE's or a FETCH's text alone says nothing of what it ran.
    for (key, label) in [("prepared", "ran"), ("cursor", "cursor")] {
        if let Some(text) = detail.get(key).and_then(Value::as_str) {
            line.push_str(&format!("  [{label}: {text}]"));
        }
    }
    line
}

/// `kill SESSION_ID`: prints `killed`.
pub async fn kill(api: &Api, id: &str) -> anyhow::Result<()> {
    api.post(&format!("/v1/sessions/{}/kill", seg(id)), json!({})).await?;
    println!("killed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statement_line_says_what_an_execute_ran_and_a_fetch_read() {
        let e = json!({
            "at": "2026-11-24T17:00:00.000Z", "action": "statement",
            "detail": {
                "outcome": "ok", "tag": "DELETE 1", "rows": "1", "duration_us": "1500",
                "text": "EXECUTE del(5)", "prepared": "PREPARE del (int) AS DELETE FROM orders WHERE id = $1"
            }
        });
        assert_eq!(
            statement_line(&e),
            "2026-11-24T17:00:00.000Z  DELETE 1  rows=1  1.5ms  EXECUTE del(5)  \
             [ran: PREPARE del (int) AS DELETE FROM orders WHERE id = $1]"
        );
        let e = json!({
            "at": "2026-11-24T17:00:00.000Z", "action": "statement",
            "detail": {
                "outcome": "ok", "tag": "FETCH 100", "rows": "100", "duration_us": "900",
                "text": "FETCH FORWARD 100 FROM _psql_cursor", "cursor": "SELECT * FROM orders"
            }
        });
        assert_eq!(
            statement_line(&e),
            "2026-11-24T17:00:00.000Z  FETCH 100  rows=100  0.9ms  FETCH FORWARD 100 FROM _psql_cursor  \
             [cursor: SELECT * FROM orders]"
        );
    }
}
