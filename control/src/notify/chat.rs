//! A verified Slack button click, applied: the Slack user is mapped to a
//! Portcullis user by the config, then the very `approve` and `deny` the API
//! calls decide (approvers named in the policy, no self-approval, pending
//! only). Chat alone never approves a break-glass request or a role named
//! `admin` (or marked `chat_approval: false`): those need the CLI or API.

use crate::error::ApiError;
use crate::model::RequestState;
use crate::notify::slack::{Action, Decision};
use crate::store::{requests, users};
use crate::workflow::Workflow;

/// What the clicker reads, and the outcome's metric label.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    /// The sentence shown in Slack.
    pub text: String,
    /// `approved`, `denied`, `refused`, `unmapped` or `cli_only`.
    pub outcome: &'static str,
}

fn reply(outcome: &'static str, text: String) -> Reply {
    Reply { text, outcome }
}

impl Workflow {
    /// Applies one button click whose signature was verified.
    pub(crate) async fn chat_action(&self, action: Action) -> Result<Reply, ApiError> {
        let Some(chat) = self.notify.chat.as_ref() else {
            return Ok(reply("refused", "Slack interactivity is not configured".to_owned()));
        };
        let id = action.request_id.clone();
        let Some(name) = chat.users.get(&action.slack_user).cloned() else {
            return Ok(reply(
                "unmapped",
                format!(
                    "Your Slack user {} is not mapped to a Portcullis user (notifications.slack.users); use the CLI: portcullis approve {id}",
                    action.slack_user
                ),
            ));
        };
        let lookup = name.clone();
        let rid = id.clone();
        let (user, req) = self
            .store
            .call(move |conn| -> Result<_, ApiError> { Ok((users::get(conn, &lookup)?, requests::get(conn, &rid)?)) })
            .await?;
        let Some(user) = user else {
            return Ok(reply(
                "unmapped",
                format!("Your Slack user maps to {name}, who is not a Portcullis user"),
            ));
        };
        let Some(req) = req else {
            return Ok(reply("refused", format!("Not done: unknown request {id}")));
        };
        if action.decision == Decision::Approve {
            if req.break_glass {
                return Ok(reply(
                    "cli_only",
                    format!("{id} is a break-glass grant: chat never approves break-glass; use the CLI or API"),
                ));
            }
            if !chat.may_approve_role(&req.resource, &req.role) {
                return Ok(reply(
                    "cli_only",
                    format!(
                        "{id} asks for the admin-like role {} on {}: chat cannot approve it; use the CLI or API: portcullis approve {id}",
                        req.role, req.resource
                    ),
                ));
            }
        }
        let slack_user = &action.slack_user;
        let result = match action.decision {
            Decision::Approve => {
                self.approve(user, id.clone(), Some(format!("approved from Slack ({slack_user})")))
                    .await
            }
            Decision::Deny => {
                self.deny(user, id.clone(), Some(format!("denied from Slack ({slack_user})")))
                    .await
            }
        };
        Ok(match result {
            Ok(r) if action.decision == Decision::Deny => reply(
                "denied",
                format!("{name} denied {id} ({} on {} for {})", r.role, r.resource, r.user),
            ),
            Ok(r) if r.state == RequestState::Approved => reply(
                "approved",
                format!("{name} approved {id}: {} has {} on {}", r.user, r.role, r.resource),
            ),
            Ok(r) => {
                let needed = usize::try_from(r.approvals_required)
                    .unwrap_or(usize::MAX)
                    .saturating_sub(r.approvals.len());
                reply(
                    "approved",
                    format!("{name} approved {id}; it needs {needed} more approval(s)"),
                )
            }
            Err(ApiError::Internal(e)) => return Err(ApiError::Internal(e)),
            Err(e) => reply("refused", format!("Not done: {}", e.client_text())),
        })
    }
}
