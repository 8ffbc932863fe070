//! `audit`: search the audit log and print what matched, oldest first: a
//! readable line per event, `--json` a JSON array, `--jsonl` JSON lines for
//! SIEMs. Everything streams from `GET /v1/audit/export`, so an export of any
//! size takes little memory. `audit verify` checks the hash chain.

use std::io::{BufWriter, Write};

use anyhow::anyhow;
use serde_json::Value;

use super::client::{Api, seg};
use super::output::{JsonArray, cell, is_broken_pipe, print_json};

/// `audit [filters] [--json | --jsonl]`, or `audit verify`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    /// `verify`, or nothing to search.
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// What to look for.
    #[command(flatten)]
    pub search: SearchArgs,
}

/// `audit verify`.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Check the audit chain: whether it is intact, and the first event where an
    /// edit, deletion or reordering breaks it (exit status 1 when broken).
    Verify {
        /// Print the API's JSON answer.
        #[arg(long)]
        json: bool,
    },
}

/// Filters, order and output of `audit`.
#[derive(Debug, clap::Args)]
pub struct SearchArgs {
    /// Events of this user (who acted: the engineer, or the approver of a workflow action).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Events on this resource.
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Option<String>,
    /// Events of this action, e.g. statement, session.end, request.approve.
    #[arg(long, value_name = "ACTION")]
    pub action: Option<String>,
    /// Events of this session.
    #[arg(long, value_name = "SESSION_ID")]
    pub session: Option<String>,
    /// At or after: an RFC 3339 time, or a duration meaning that long ago (e.g. 1h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Before: an RFC 3339 time, or a duration meaning that long ago.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Text anywhere in the event (statement, reason, names, ids), case-insensitive.
    #[arg(long, value_name = "TEXT")]
    pub grep: Option<String>,
    /// Newest first.
    #[arg(long)]
    pub newest: bool,
    /// At most this many events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
    /// Print a JSON array.
    #[arg(long, conflicts_with = "jsonl")]
    pub json: bool,
    /// Print one JSON object per line (for SIEMs).
    #[arg(long)]
    pub jsonl: bool,
}

/// Runs `audit ...`.
pub async fn run(api: &Api, args: AuditArgs) -> anyhow::Result<()> {
    let result = match args.command {
        Some(AuditCommand::Verify { json }) => verify(api, json).await,
        None => search(api, &args.search).await,
    };
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

/// The query string of `s`'s filters.
fn query(s: &SearchArgs) -> String {
    let mut q: Vec<String> = Vec::new();
    for (key, value) in [
        ("user", &s.user),
        ("resource", &s.resource),
        ("action", &s.action),
        ("session_id", &s.session),
        ("since", &s.since),
        ("until", &s.until),
        ("grep", &s.grep),
    ] {
        if let Some(v) = value {
            q.push(format!("{key}={}", seg(v)));
        }
    }
    if s.newest {
        q.push("order=newest".to_owned());
    }
    if let Some(n) = s.limit {
        q.push(format!("limit={n}"));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn parse(line: &[u8]) -> anyhow::Result<Value> {
    serde_json::from_slice(line).map_err(|e| anyhow!("the API sent an audit event that is not JSON: {e}"))
}

async fn search(api: &Api, s: &SearchArgs) -> anyhow::Result<()> {
    let path = format!("/v1/audit/export{}", query(s));
    let stdout = BufWriter::new(std::io::stdout());
    if s.json {
        let mut array = JsonArray::new(stdout);
        api.get_lines(&path, |l| array.push(&parse(l)?)).await?;
        array.finish()?;
    } else if s.jsonl {
        let mut out = stdout;
        api.get_lines(&path, |l| {
            // Checked before it is passed on: a SIEM gets whole objects only.
            parse(l)?;
            out.write_all(l)?;
            out.write_all(b"\n")?;
            Ok(())
        })
        .await?;
        out.flush()?;
    } else {
        let mut out = stdout;
        writeln!(out, "{}", columns(["TIME", "ACTION", "USER", "RESOURCE", "DETAIL"]))?;
        api.get_lines(&path, |l| {
            writeln!(out, "{}", event_line(&parse(l)?))?;
            Ok(())
        })
        .await?;
        out.flush()?;
    }
    Ok(())
}

/// Width of the time, action, user and resource columns of the readable lines.
const WIDTHS: [usize; 4] = [24, 18, 12, 14];

fn columns(cells: [&str; 5]) -> String {
    let mut line = String::new();
    for (i, c) in cells.iter().enumerate() {
        line.push_str(c);
        if let Some(w) = WIDTHS.get(i) {
            line.push_str(&" ".repeat(w.saturating_sub(c.chars().count())));
        }
        line.push_str("  ");
    }
    line.trim_end().to_owned()
}

/// Longest value shown whole on a readable line; `--json` has it all.
const SHOWN: usize = 200;

/// `key=value`, the value quoted when it has spaces, cut when long.
fn pair(key: &str, value: &str) -> String {
    let mut v: String = value.split_whitespace().collect::<Vec<_>>().join(" ");
    if v.chars().count() > SHOWN {
        v = v.chars().take(SHOWN).collect::<String>() + "...";
    }
    if v.is_empty() || v.contains(' ') || v.contains('"') {
        format!("{key}={v:?}")
    } else {
        format!("{key}={v}")
    }
}

/// One event on one line: when, what, who, where, then the ids, the reason,
/// the approvers and the details.
pub fn event_line(e: &Value) -> String {
    let resource = match (cell(e, "resource").as_str(), cell(e, "role").as_str()) {
        ("-", _) => "-".to_owned(),
        (r, "-") => r.to_owned(),
        (r, role) => format!("{r}@{role}"),
    };
    let mut detail: Vec<String> = Vec::new();
    for (key, name) in [
        ("session_id", "session"),
        ("grant_id", "grant"),
        ("request_id", "request"),
        ("reason", "reason"),
        ("approvers", "approvers"),
    ] {
        let v = cell(e, key);
        if v != "-" {
            detail.push(pair(name, &v));
        }
    }
    if let Some(Value::Object(map)) = e.get("detail") {
        for (k, v) in map {
            detail.push(pair(k, v.as_str().unwrap_or_default()));
        }
    }
    let (at, action, user) = (cell(e, "at"), cell(e, "action"), cell(e, "user"));
    columns([&at, &action, &user, &resource, &detail.join(" ")])
}

async fn verify(api: &Api, json: bool) -> anyhow::Result<()> {
    let v = api.get("/v1/audit/verify").await?;
    if json {
        print_json(&v)?;
    }
    let (events, checked) = (cell(&v, "events"), cell(&v, "checked"));
    if v.get("intact").and_then(Value::as_bool) == Some(true) {
        if !json {
            println!("intact: {events} events, every link verified");
        }
        return Ok(());
    }
    let broken = v.get("break").unwrap_or(&Value::Null);
    let (seq, id) = (cell(broken, "seq"), cell(broken, "id"));
    if !json {
        println!("broken: {}", cell(broken, "message"));
        println!("first broken event: seq {seq}, id {id} ({})", cell(broken, "kind"));
        println!("{checked} of {events} events verified before it");
    }
    Err(anyhow!(
        "the audit chain is broken at event {seq} ({id}): {}",
        cell(broken, "kind")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_reads_on_one_line() {
        let e = json!({
            "seq": 3, "id": "wf_3_1", "at": "2026-11-23T10:15:00.123Z", "action": "request.approve",
            "user": "carol", "resource": "orders", "role": "read", "session_id": null,
            "grant_id": "grt_1", "request_id": "req_1", "reason": "INC-42 slow\norders",
            "approvers": ["carol"], "detail": {"comment": "ok", "granted": "true"}
        });
        assert_eq!(
            event_line(&e),
            "2026-11-23T10:15:00.123Z  request.approve     carol         orders@read     \
             grant=grt_1 request=req_1 reason=\"INC-42 slow orders\" approvers=carol comment=ok granted=true"
        );
    }

    #[test]
    fn filters_become_the_query() {
        let s = SearchArgs {
            user: Some("alice".into()),
            resource: None,
            action: None,
            session: Some("ses_1".into()),
            since: Some("1h".into()),
            until: None,
            grep: Some("slow orders".into()),
            newest: true,
            limit: Some(5),
            json: false,
            jsonl: false,
        };
        assert_eq!(
            query(&s),
            "?user=alice&session_id=ses_1&since=1h&grep=slow%20orders&order=newest&limit=5"
        );
    }
}
