//! `history ID [--json]`: every transition of a request or grant (and of the
//! grant or request that goes with it), oldest first, with who, when and why.

use serde_json::Value;

use super::client::{Api, seg};
use super::output::{cell, print_list};

/// Prints the history of a request (`req_...`) or a grant (`grt_...`).
pub async fn show(api: &Api, id: &str, json: bool) -> anyhow::Result<()> {
    // Grant ids start `grt_`; anything else is looked up as a request.
    let path = if id.starts_with("grt_") {
        format!("/v1/grants/{}", seg(id))
    } else {
        format!("/v1/requests/{}", seg(id))
    };
    let answer = api.get(&path).await?;
    let history = answer.get("history").cloned().unwrap_or(Value::Array(Vec::new()));
    print_list(&history, json, &["AT", "ACTOR", "ACTION", "SUBJECT", "DETAIL"], |e| {
        vec![
            cell(e, "at"),
            cell(e, "actor"),
            cell(e, "action"),
            cell(e, "subject"),
            cell(e, "detail"),
        ]
    })
}
