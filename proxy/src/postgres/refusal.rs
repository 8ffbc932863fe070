//! Every reason a Postgres connection is refused or a session is cut, with
//! the SQLSTATE and the sentence the engineer reads in psql, and a short kind
//! for metrics. Nothing here ever includes a secret.

use std::time::Duration;

use bytes::Bytes;
use portcullis_protocol::duration;
use portcullis_protocol::pg::backend::{Severity, error_response};
use portcullis_protocol::pg::error::ProtocolError;

use crate::grants::check::Denied;
use crate::grants::wording::explain;

/// A refusal before the session starts.
#[derive(Debug)]
pub enum Refusal {
    /// The client went away; nothing to send.
    Gone,
    /// Malformed, oversized or unexpected bytes.
    Protocol(ProtocolError),
    /// The client did not finish the handshake in time.
    HandshakeTimeout,
    /// `require_tls` is on and the client did not negotiate TLS.
    TlsRequired,
    /// The TLS handshake failed.
    TlsFailed(String),
    /// Replication connections are not proxied.
    Replication,
    /// The client does not offer SCRAM-SHA-256.
    UnsupportedAuth(String),
    /// Wrong token, or an unknown user (the same words, on purpose).
    BadCredentials {
        /// The user name as typed.
        user: String,
    },
    /// Too many failed logins for this user or address.
    Backoff {
        /// How long until the next try is allowed.
        wait: Duration,
    },
    /// `dbname` names no resource.
    UnknownResource {
        /// As typed.
        name: String,
    },
    /// The resource is not a Postgres server.
    NotPostgres {
        /// Resource name.
        name: String,
    },
    /// `dbname=RESOURCE@ROLE` names a role the resource does not have.
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
        /// Why (boxed: the refusal travels in every `Result` of the login path).
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
        silent: Duration,
    },
    /// The upstream server could not be reached or refused the login.
    Upstream {
        /// Resource name.
        resource: String,
        /// What went wrong (never includes the password).
        detail: String,
    },
}

impl Refusal {
    /// Short label for `portcullis_connections_total{outcome}`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Gone => "client_gone",
            Refusal::Protocol(_) => "protocol_error",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::TlsRequired => "tls_required",
            Refusal::TlsFailed(_) => "tls_failed",
            Refusal::Replication => "replication",
            Refusal::UnsupportedAuth(_) => "unsupported_auth",
            Refusal::BadCredentials { .. } => "bad_credentials",
            Refusal::Backoff { .. } => "backoff",
            Refusal::UnknownResource { .. } => "unknown_resource",
            Refusal::NotPostgres { .. } => "wrong_protocol",
            Refusal::UnknownRole { .. } => "unknown_role",
            Refusal::Denied { denied, .. } => denied.kind(),
            Refusal::ControlPlaneSilent { .. } => "control_plane_stale",
            Refusal::Upstream { .. } => "upstream_error",
        }
    }

    /// SQLSTATE, message and hint as the client will show them.
    pub fn text(&self) -> (&'static str, String, Option<String>) {
        match self {
            Refusal::Gone => ("08006", "connection closed".into(), None),
            Refusal::Protocol(e) => ("08P01", format!("invalid startup or message: {e}"), None),
            Refusal::HandshakeTimeout => (
                "08006",
                "timed out waiting for the startup packet and authentication".into(),
                None,
            ),
            Refusal::TlsRequired => (
                "28000",
                "this gateway requires TLS".into(),
                Some("connect with sslmode=require".into()),
            ),
            Refusal::TlsFailed(e) => ("08006", format!("TLS handshake failed: {e}"), None),
            Refusal::Replication => (
                "0A000",
                "replication connections are not supported by Portcullis".into(),
                None,
            ),
            Refusal::UnsupportedAuth(what) => (
                "28000",
                format!("Portcullis authenticates with SCRAM-SHA-256; the client offered {what}"),
                Some("use a libpq 10+ or a driver with SCRAM-SHA-256 support; your token is the password".into()),
            ),
            Refusal::BadCredentials { user } => (
                "28P01",
                format!("password authentication failed for user \"{user}\""),
                Some("the password is your Portcullis token".into()),
            ),
            Refusal::Backoff { wait } => (
                "28000",
                format!(
                    "too many failed logins for this user or address; try again in {}",
                    duration::format(Duration::from_secs(wait.as_secs().max(1)))
                ),
                None,
            ),
            Refusal::UnknownResource { name } => (
                "3D000",
                format!("\"{name}\" is not a resource of this gateway"),
                Some("the database name is the resource name, e.g. dbname=orders or dbname=orders@read".into()),
            ),
            Refusal::NotPostgres { name } => (
                "3D000",
                format!("resource \"{name}\" is not a PostgreSQL database"),
                Some("connect to SSH resources with ssh".into()),
            ),
            Refusal::UnknownRole { resource, role, roles } => (
                "28000",
                format!(
                    "resource \"{resource}\" has no role \"{role}\"; its roles are: {}",
                    roles.join(", ")
                ),
                None,
            ),
            Refusal::Denied {
                denied,
                resource,
                role_hint,
                user,
                ..
            } => denied_text(denied, resource, role_hint.as_deref(), user),
            // 57P03 cannot_connect_now: drivers treat it as "try again later".
            Refusal::ControlPlaneSilent { silent } => ("57P03", crate::sync::contact::stale_text(*silent), None),
            Refusal::Upstream { resource, detail } => (
                "08006",
                format!("the gateway could not open a session on \"{resource}\": {detail}"),
                None,
            ),
        }
    }

    /// The ErrorResponse to send, if the client can still read one.
    pub fn to_message(&self) -> Option<Bytes> {
        if matches!(self, Refusal::Gone) {
            return None;
        }
        let (code, message, hint) = self.text();
        Some(error_response(Severity::Fatal, code, &message, None, hint.as_deref()))
    }
}

/// The grant check's refusal: SQLSTATE 28000, with the shared wording.
fn denied_text(
    denied: &Denied,
    resource: &str,
    role: Option<&str>,
    user: &str,
) -> (&'static str, String, Option<String>) {
    let (message, hint) = explain(denied, resource, role, user, |roles| {
        (
            format!(
                "you hold grants for several roles on \"{resource}\" ({}); choose one with dbname={resource}@ROLE",
                roles.join(", ")
            ),
            roles.first().map(|r| format!("for example: dbname={resource}@{r}")),
        )
    });
    ("28000", message, hint)
}
