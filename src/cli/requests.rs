//! `request` (also `--break-glass`), `requests`, `approve`, `deny`, `cancel`.

use std::io::Write;
use std::time::Duration;

use anyhow::anyhow;
use serde_json::{Map, Value, json};

use super::ListArgs;
use super::client::{Api, field, seg};
use super::output::{cell, duration, print_list};

/// How often `request --wait` asks whether the request was decided.
const POLL_EVERY: Duration = Duration::from_millis(500);

/// `request RESOURCE [--role R] [--for 30m] [--reason TEXT] [--start TIME] [--wait] [--break-glass]`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// Resource name, e.g. orders.
    pub resource: String,
    /// Role on the resource (needed when it has several).
    #[arg(long, value_name = "ROLE")]
    pub role: Option<String>,
    /// How long, e.g. 30m or 1h30m (default: the policy's).
    // Hyphen values reach the API, whose refusal names the field (`-5m`).
    #[arg(long = "for", value_name = "DURATION", allow_hyphen_values = true)]
    pub duration: Option<String>,
    /// Why you need access (required by most policies).
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// When the grant should start (RFC 3339), if not at approval.
    #[arg(long, value_name = "TIME")]
    pub start: Option<String>,
    /// Wait until the request is decided; exit non-zero unless approved.
    #[arg(long)]
    pub wait: bool,
    /// Grant yourself access at once (where the policy allows it); needs --reason.
    #[arg(long)]
    pub break_glass: bool,
}

/// Files the request and prints its id; with `--wait`, then its final state.
pub async fn request(api: &Api, args: RequestArgs) -> anyhow::Result<()> {
    let mut body = Map::new();
    body.insert("resource".into(), json!(args.resource));
    if args.break_glass {
        body.insert("break_glass".into(), json!(true));
    }
    for (key, value) in [
        ("role", args.role),
        ("duration", args.duration),
        ("reason", args.reason),
        ("start", args.start),
    ] {
        if let Some(v) = value {
            body.insert(key.into(), json!(v));
        }
    }
    let req = api.post("/v1/requests", Value::Object(body)).await?;
    let id = field(&req, "id")?.to_owned();
    println!("{id}");
    std::io::stdout().flush()?;
    if !args.wait {
        return Ok(());
    }
    let mut state = field(&req, "state")?.to_owned();
    while state == "pending" {
        tokio::time::sleep(POLL_EVERY).await;
        let now = api.get(&format!("/v1/requests/{}", seg(&id))).await?;
        state = field(&now, "state")?.to_owned();
    }
    println!("{state}");
    if state == "approved" {
        Ok(())
    } else {
        Err(anyhow!("request {id} was {state}"))
    }
}

/// `requests [--all] [--json]`.
pub async fn list(api: &Api, args: ListArgs) -> anyhow::Result<()> {
    let path = if args.all {
        "/v1/requests?all=true"
    } else {
        "/v1/requests"
    };
    let value = api.get(path).await?;
    print_list(
        &value,
        args.json,
        &[
            "ID",
            "USER",
            "RESOURCE",
            "ROLE",
            "FOR",
            "STATE",
            "APPROVALS",
            "CREATED",
            "REASON",
        ],
        |r| {
            let given = r.get("approvals").and_then(Value::as_array).map_or(0, Vec::len);
            vec![
                cell(r, "id"),
                cell(r, "user"),
                cell(r, "resource"),
                cell(r, "role"),
                duration(r, "duration_s"),
                cell(r, "state"),
                format!("{given}/{}", cell(r, "approvals_required")),
                cell(r, "created_at"),
                cell(r, "reason"),
            ]
        },
    )
}

/// `approve ID [--comment TEXT]`: prints the new state.
pub async fn approve(api: &Api, id: &str, comment: Option<String>) -> anyhow::Result<()> {
    let body = match comment {
        Some(c) => json!({ "comment": c }),
        None => json!({}),
    };
    let req = api.post(&format!("/v1/requests/{}/approve", seg(id)), body).await?;
    println!("{}", field(&req, "state")?);
    Ok(())
}

/// `deny ID --reason TEXT`: prints the new state.
pub async fn deny(api: &Api, id: &str, reason: &str) -> anyhow::Result<()> {
    let req = api
        .post(&format!("/v1/requests/{}/deny", seg(id)), json!({ "reason": reason }))
        .await?;
    println!("{}", field(&req, "state")?);
    Ok(())
}

/// `cancel ID`: prints the new state.
pub async fn cancel(api: &Api, id: &str) -> anyhow::Result<()> {
    let req = api.post(&format!("/v1/requests/{}/cancel", seg(id)), json!({})).await?;
    println!("{}", field(&req, "state")?);
    Ok(())
}
