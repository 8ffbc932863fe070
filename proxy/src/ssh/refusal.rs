//! Every reason an SSH session is refused, with the line the engineer reads
//! on stderr and a short kind for metrics. Nothing here includes a secret.

use crate::grants::check::Denied;
use crate::grants::wording::explain;

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
        /// The role the client asked for, if any (the audit event's `role`).
        asked: Option<String>,
        /// User name.
        user: String,
    },
    /// The control plane has been silent past the staleness: no new sessions.
    ControlPlaneSilent {
        /// How long it has been silent.
        silent: std::time::Duration,
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
            Refusal::ControlPlaneSilent { .. } => "control_plane_stale",
            Refusal::Upstream { .. } => "upstream_error",
        }
    }

    /// The configured resource it is about, if any (an unknown name is not one).
    pub fn resource(&self) -> Option<&str> {
        match self {
            Refusal::NoTarget | Refusal::UnknownResource { .. } | Refusal::ControlPlaneSilent { .. } => None,
            Refusal::NotSsh { name } => Some(name),
            Refusal::UnknownRole { resource, .. }
            | Refusal::Denied { resource, .. }
            | Refusal::Upstream { resource, .. } => Some(resource),
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
                ..
            } => denied_text(denied, resource, role_hint.as_deref(), user),
            Refusal::ControlPlaneSilent { silent } => crate::sync::contact::stale_text(*silent),
            Refusal::Upstream { resource, detail } => {
                format!("the gateway could not open a session on \"{resource}\": {detail}")
            }
        }
    }
}

/// The grant check's refusal in one line: the shared wording, its hint after it.
fn denied_text(denied: &Denied, resource: &str, role: Option<&str>, user: &str) -> String {
    let (message, hint) = explain(denied, resource, role, user, |roles| {
        (
            format!(
                "you hold grants for several roles on \"{resource}\" ({}); choose one in the login name, e.g. {user}+{resource}+{}",
                roles.join(", "),
                roles.first().map(String::as_str).unwrap_or("ROLE")
            ),
            None,
        )
    });
    match hint {
        Some(hint) => format!("{message}; {hint}"),
        None => message,
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
            asked: None,
            user: "alice".into(),
        };
        assert!(r.text().contains("portcullis request web1 --reason"), "{}", r.text());
        assert_eq!(r.kind(), "no_grant");
    }
}
