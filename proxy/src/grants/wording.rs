//! What a refused grant check tells the person: the same words over Postgres
//! and SSH, each protocol only framing them (a FATAL with a hint, a line on
//! stderr). Nothing here includes a secret.

use crate::clock::rfc3339;
use crate::grants::check::Denied;
use crate::settings::Resource;

/// The exact command that asks for access.
pub fn request_command(resource: &str, role: Option<&str>) -> String {
    match role {
        Some(r) => format!("portcullis request {resource} --role {r} --reason \"...\""),
        None => format!("portcullis request {resource} --reason \"...\""),
    }
}

/// The role for the suggested request command: the one asked for, else,
/// where the resource has several, its first (one must be named).
pub fn role_hint(resource: &Resource, asked: Option<&str>) -> Option<String> {
    asked.map(str::to_owned).or_else(|| {
        (resource.roles.len() > 1)
            .then(|| resource.roles.first().map(|r| r.name.clone()))
            .flatten()
    })
}

/// Why `user` may not open a session on `resource`, and a hint where one
/// helps. `role` goes into the suggested request command. Choosing among
/// several granted roles is spelled in each protocol's own terms, so
/// `choose_role` words that case from the roles held.
pub fn explain(
    denied: &Denied,
    resource: &str,
    role: Option<&str>,
    user: &str,
    choose_role: impl FnOnce(&[String]) -> (String, Option<String>),
) -> (String, Option<String>) {
    let ask = request_command(resource, role);
    match denied {
        Denied::NoGrant => (
            format!("no grant for {user} on \"{resource}\"; request access with: {ask}"),
            None,
        ),
        Denied::Pending { request } => (
            format!(
                "request {} for \"{resource}\" is still pending approval",
                request.request_id
            ),
            Some(format!(
                "an approver can run: portcullis approve {}",
                request.request_id
            )),
        ),
        Denied::Scheduled {
            grant_id, starts_at, ..
        } => (
            format!("grant {grant_id} on \"{resource}\" starts at {}", rfc3339(*starts_at)),
            None,
        ),
        Denied::Expired { grant_id, at, .. } => (
            format!(
                "grant {grant_id} on \"{resource}\" expired at {}; request access again with: {ask}",
                rfc3339(*at)
            ),
            None,
        ),
        Denied::Revoked {
            grant_id, revocation, ..
        } => (
            format!(
                "grant {grant_id} on \"{resource}\" was revoked by {} at {}{}; request access again with: {ask}",
                revocation.by,
                rfc3339(revocation.at),
                revocation
                    .reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            None,
        ),
        Denied::ChooseRole { roles } => choose_role(roles),
    }
}
