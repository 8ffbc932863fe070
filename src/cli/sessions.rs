//! `sessions`, `kill`.

use serde_json::json;

use super::client::{Api, seg};
use super::output::{cell, print_list};

/// `sessions [--json]`.
pub async fn list(api: &Api, json: bool) -> anyhow::Result<()> {
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

/// `kill SESSION_ID`: prints `killed`.
pub async fn kill(api: &Api, id: &str) -> anyhow::Result<()> {
    api.post(&format!("/v1/sessions/{}/kill", seg(id)), json!({})).await?;
    println!("killed");
    Ok(())
}
