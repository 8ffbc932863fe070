//! Every reason an SSH session is refused, with the line the engineer reads
//! on stderr and a short kind for metrics. Nothing here includes a secret.

use crate::clock::rfc3339;
use crate::grants::check::Denied;
use crate::postgres::refusal::request_command;

use super::target::SPELLING;

/// A refusal after the engineer's key was verified.
#[derive(Clone, Debug)]
pub enum Refusal {
    /// The login name names no resource.
    NoTarget,
    /// The login name names an unknown resource.
    UnknownResource {
        /// As typed.
        name: String,
    },
    /// The resource is not an SSH server.
    NotSsh {
        /// Resource name.
        name: String,
    },
    /// The login name names a role the resource does not have.
    UnknownRole {
        /// Resource name.
        resource: String,
        /// As typed.
        role: String,
        /// The roles it has.
        roles: Vec<String>,
    },
    /// The grant check said no.
    Denied {
        /// Why.
        denied: Box<Denied>,
        /// Resource name.
        resource: String,
        /// The role to put in the suggested request command, if one is needed.
        role_hint: Option<String>,
        /// User name.
        user: String,
    },
    /// The upstream server could not be reached, failed its host key check or refused the login.
    Upstream {
        /// Resource name.
        resource: String,
        /// What went wrong (never includes a secret).
        detail: String,
    },
}

impl Refusal {
    /// Short label for `portcullis_connections_total{outcome}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::NoTarget => "no_target",
            Refusal::UnknownResource { .. } => "unknown_resource",
            Refusal::NotSsh { .. } => "wrong_protocol",
            Refusal::UnknownRole { .. } => "unknown_role",
            Refusal::Denied { denied, .. } => denied.kind(),
            Refusal::Upstream { .. } => "upstream_error",
        }
    }

    /// The sentence the engineer reads.
    pub fn text(&self) -> String {
        match self {
            Refusal::NoTarget => format!("name the server in the login name: {SPELLING}"),
            Refusal::UnknownResource { name } => {
                format!("\"{name}\" is not a resource of this gateway; log in as {SPELLING}")
            }
            Refusal::NotSsh { name } => {
                format!("resource \"{name}\" is not an SSH server; connect to it with `portcullis connect {name}`")
            }
            Refusal::UnknownRole { resource, role, roles } => format!(
                "resource \"{resource}\" has no role \"{role}\"; its roles are: {}",
                roles.join(", ")
            ),
            Refusal::Denied {
                denied,
                resource,
                role_hint,
                user,
            } => denied_text(denied, resource, role_hint.as_deref(), user),
            Refusal::Upstream { resource, detail } => {
                format!("the gateway could not open a session on \"{resource}\": {detail}")
            }
        }
    }
}

fn denied_text(denied: &Denied, resource: &str, role: Option<&str>, user: &str) -> String {
    let ask = request_command(resource, role);
    match denied {
        Denied::NoGrant => format!("no grant for {user} on \"{resource}\"; request access with: {ask}"),
        Denied::Pending { request_id } => format!(
            "request {request_id} for \"{resource}\" is still pending approval; an approver can run: portcullis approve {request_id}"
        ),
        Denied::Scheduled { grant_id, starts_at } => {
            format!("grant {grant_id} on \"{resource}\" starts at {}", rfc3339(*starts_at))
        }
        Denied::Expired { grant_id, at } => format!(
            "grant {grant_id} on \"{resource}\" expired at {}; request access again with: {ask}",
            rfc3339(*at)
        ),
        Denied::Revoked { grant_id, revocation } => format!(
            "grant {grant_id} on \"{resource}\" was revoked by {} at {}{}; request access again with: {ask}",
            revocation.by,
            rfc3339(revocation.at),
            revocation
                .reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        ),
        Denied::ChooseRole { roles } => format!(
            "you hold grants for several roles on \"{resource}\" ({}); choose one in the login name, e.g. {user}+{resource}+{}",
            roles.join(", "),
            roles.first().map(String::as_str).unwrap_or("ROLE")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_grant_names_the_request_command() {
        let r = Refusal::Denied {
            denied: Box::new(Denied::NoGrant),
            resource: "web1".into(),
            role_hint: None,
            user: "alice".into(),
        };
        assert!(r.text().contains("portcullis request web1 --reason"), "{}", r.text());
        assert_eq!(r.kind(), "no_grant");
    }
}
