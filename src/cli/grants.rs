//! `grants`, `revoke`, `extend`.

use serde_json::{Value, json};

use super::ListArgs;
use super::client::{Api, field, seg};
use super::output::{cell, print_list};

/// `grants [--all] [--json]`.
pub async fn list(api: &Api, args: ListArgs) -> anyhow::Result<()> {
    let path = if args.all { "/v1/grants?all=true" } else { "/v1/grants" };
    let value = api.get(path).await?;
    print_list(
        &value,
        args.json,
        &[
            "ID", "USER", "RESOURCE", "ROLE", "STATE", "STARTS", "EXPIRES", "REQUEST",
        ],
        |g| {
            vec![
                cell(g, "id"),
                cell(g, "user"),
                cell(g, "resource"),
                cell(g, "role"),
                cell(g, "state"),
                cell(g, "starts_at"),
                cell(g, "expires_at"),
                cell(g, "request_id"),
            ]
        },
    )
}

/// `revoke GRANT_ID [--reason TEXT]`: prints `<state> <expires_at>`.
pub async fn revoke(api: &Api, id: &str, reason: Option<String>) -> anyhow::Result<()> {
    let body = match reason {
        Some(r) => json!({ "reason": r }),
        None => json!({}),
    };
    let grant = api.post(&format!("/v1/grants/{}/revoke", seg(id)), body).await?;
    print_state(&grant)
}

/// `extend GRANT_ID --by 15m`: prints `<state> <expires_at>`.
pub async fn extend(api: &Api, id: &str, by: &str) -> anyhow::Result<()> {
    let grant = api
        .post(&format!("/v1/grants/{}/extend", seg(id)), json!({ "by": by }))
        .await?;
    print_state(&grant)
}

fn print_state(grant: &Value) -> anyhow::Result<()> {
    println!("{} {}", field(grant, "state")?, field(grant, "expires_at")?);
    Ok(())
}
