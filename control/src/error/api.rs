//! `ApiError`: why an API call was refused, with the HTTP status it answers
//! with and the sentence the caller reads.

use std::time::Duration;

use axum::http::StatusCode;
use portcullis_protocol::duration;

use super::ControlError;
use crate::model::{GrantState, RequestState};
use crate::store::DbError;

/// Why an API call was refused; `Display` is the sentence the caller reads
/// (except for `Internal`, whose sentence goes to the log only).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No bearer token.
    #[error("missing token: send Authorization: Bearer TOKEN")]
    MissingToken,
    /// A token that belongs to nobody.
    #[error("unknown token")]
    UnknownToken,
    /// A proxy's token on a route for people.
    #[error(
        "this is a proxy's token: it may call only the proxy routes (/v1/feed/..., /v1/proxies/..., POST /v1/audit/events)"
    )]
    ProxyToken,
    /// A person's token on a route for proxies.
    #[error("only a proxy's token (configured under proxies:) may call this route")]
    NotAProxy,
    /// A feed cursor the control plane cannot resume from.
    #[error(
        "cannot resume the feed after revision {after}: this control plane holds changes after {oldest} up to {latest} (or the cursor is from another start); resync from GET /v1/feed/snapshot"
    )]
    CursorGone {
        /// The cursor asked for.
        after: u64,
        /// The oldest cursor that can resume.
        oldest: u64,
        /// The latest revision.
        latest: u64,
    },
    /// The caller lacks the admin right.
    #[error("only an admin may {action}")]
    AdminOnly {
        /// What they tried.
        action: &'static str,
    },
    /// The body is not the JSON expected.
    #[error("the request body is not valid: {detail}")]
    BadBody {
        /// What the parser said.
        detail: String,
    },
    /// The body is larger than the API accepts.
    #[error("the request body is larger than {max_kib} KiB")]
    BodyTooLarge {
        /// The limit, in KiB.
        max_kib: usize,
    },
    /// The query string does not parse.
    #[error("the query string is not valid: {detail}")]
    BadQuery {
        /// What is wrong.
        detail: String,
    },
    /// A path segment (an id) does not parse.
    #[error("the path is not valid: {detail}")]
    BadPath {
        /// What is wrong.
        detail: String,
    },
    /// An SSH public key that is not one OpenSSH key line.
    #[error("ssh key {index} is not an OpenSSH public key line such as \"ssh-ed25519 AAAA... comment\"")]
    BadSshKey {
        /// Its position in the list, from 1.
        index: usize,
    },
    /// More SSH keys than a user may register.
    #[error("a user may register at most {max} ssh keys")]
    TooManySshKeys {
        /// The limit.
        max: usize,
    },
    /// A duration field that does not parse.
    #[error("{field} \"{value}\" is not a duration; write it like 90s, 15m or 1h30m")]
    BadDuration {
        /// Field name.
        field: &'static str,
        /// What was sent.
        value: String,
    },
    /// A time field that does not parse.
    #[error("{field} \"{value}\" is not an RFC 3339 time such as 2026-11-23T10:15:00Z")]
    BadTime {
        /// Field name.
        field: &'static str,
        /// What was sent.
        value: String,
    },
    /// Free text over the length kept.
    #[error("{field} is longer than {max} characters")]
    TextTooLong {
        /// Field name.
        field: &'static str,
        /// The limit.
        max: usize,
    },
    /// A user name outside the allowed spelling.
    #[error(
        "\"{name}\" is not a valid user name: use 1 to 63 letters, digits, '_', '.', '-' or '@', starting with a letter, digit or '_'"
    )]
    BadUserName {
        /// What was sent.
        name: String,
    },
    /// A group name outside the allowed spelling.
    #[error(
        "\"{name}\" is not a valid group name: use 1 to 63 letters, digits, '_', '.' or '-', starting with a letter, digit or '_'"
    )]
    BadGroupName {
        /// What was sent.
        name: String,
    },
    /// No user of this name.
    #[error("unknown user {name}")]
    UnknownUser {
        /// What was asked for.
        name: String,
    },
    /// The key is registered for this user already.
    #[error("user {user} already has the ssh key {fingerprint}")]
    SshKeyExists {
        /// The user.
        user: String,
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// The user has no key of this fingerprint.
    #[error("user {user} has no ssh key {fingerprint}; `portcullis user key list {user}` shows the registered ones")]
    UnknownSshKey {
        /// The user.
        user: String,
        /// What was asked for.
        fingerprint: String,
    },
    /// The user already exists.
    #[error("user {name} already exists")]
    UserExists {
        /// The name.
        name: String,
    },
    /// No such resource in the config.
    #[error("unknown resource {name} (resources: {known})")]
    UnknownResource {
        /// What was asked for.
        name: String,
        /// Configured resources, comma-separated.
        known: String,
    },
    /// The resource of a stored request or grant is no longer configured.
    #[error("resource {name} is no longer configured")]
    ResourceGone {
        /// The resource.
        name: String,
    },
    /// No such role on the resource.
    #[error("resource {resource} has no role {role}; its roles are: {roles}")]
    UnknownRole {
        /// The resource.
        resource: String,
        /// What was asked for.
        role: String,
        /// Its roles, comma-separated.
        roles: String,
    },
    /// The resource has several roles and none was named.
    #[error("resource {resource} has several roles; name one of: {roles}")]
    RoleRequired {
        /// The resource.
        resource: String,
        /// Its roles, comma-separated.
        roles: String,
    },
    /// The caller is not among the resource's requesters.
    #[error("you may not request access to {resource}")]
    NotRequester {
        /// The resource.
        resource: String,
    },
    /// Under one second.
    #[error("duration {} is too short: a grant lasts at least 1s", duration::format(*.requested))]
    UnderOneSecond {
        /// What was asked for.
        requested: Duration,
    },
    /// Over the policy's `max_duration`.
    #[error("duration {} is longer than the {} allowed for {resource}", duration::format(*.requested), duration::format(*.max))]
    TooLong {
        /// The resource.
        resource: String,
        /// What was asked for.
        requested: Duration,
        /// The policy's max.
        max: Duration,
    },
    /// Under the policy's `min_duration`.
    #[error("duration {} is shorter than the {} required for {resource}", duration::format(*.requested), duration::format(*.min))]
    TooShort {
        /// The resource.
        resource: String,
        /// What was asked for.
        requested: Duration,
        /// The policy's min.
        min: Duration,
    },
    /// The policy needs a reason and none was given.
    #[error("reason: a reason is required to request access to {resource}")]
    ReasonRequired {
        /// The resource.
        resource: String,
    },
    /// The reason does not match the policy's pattern.
    #[error("reason: the reason must match the pattern \"{pattern}\" for {resource} (e.g. a ticket id)")]
    ReasonMismatch {
        /// The resource.
        resource: String,
        /// The policy's pattern.
        pattern: String,
    },
    /// No such request.
    #[error("unknown request {id}")]
    UnknownRequest {
        /// What was asked for.
        id: String,
    },
    /// The caller may not see this request.
    #[error("you may not see request {id}")]
    HiddenRequest {
        /// The request.
        id: String,
    },
    /// The caller is not an approver of the resource.
    #[error("you are not an approver of {resource}: {why}")]
    NotApprover {
        /// The resource.
        resource: String,
        /// Why not.
        why: &'static str,
    },
    /// The caller may not break the glass here.
    #[error("break-glass is not open to you on {resource} (role {role})")]
    NoBreakGlass {
        /// The resource.
        resource: String,
        /// The role.
        role: String,
    },
    /// Break-glass without a reason.
    #[error("reason: break-glass on {resource} needs a reason")]
    BreakGlassReason {
        /// The resource.
        resource: String,
    },
    /// Break-glass with a later start.
    #[error("start: break-glass grants start at once")]
    BreakGlassStart,
    /// Break-glass over its cap.
    #[error("duration {} is longer than the {} break-glass allows on {resource}", duration::format(*.requested), duration::format(*.max))]
    BreakGlassTooLong {
        /// The resource.
        resource: String,
        /// What was asked for.
        requested: Duration,
        /// The cap.
        max: Duration,
    },
    /// One approver extending a grant that needed several.
    #[error(
        "grant {id} needed {required} approvals; one approver may not extend it: ask for a new request starting when it ends"
    )]
    ExtendNeedsApprovals {
        /// The grant.
        id: String,
        /// Approvals its request needed.
        required: u32,
    },
    /// Self-approval, refused even for admins.
    #[error("you cannot approve your own request")]
    SelfApproval,
    /// Self-denial.
    #[error("you cannot deny your own request; cancel it instead")]
    SelfDenial,
    /// The approver already approved this request.
    #[error("you have already approved {id}; it needs another approver")]
    AlreadyApproved {
        /// The request.
        id: String,
    },
    /// The request is no longer pending.
    #[error("request {id} is {state}, not pending")]
    NotPending {
        /// The request.
        id: String,
        /// Its state.
        state: RequestState,
    },
    /// Denying needs a reason.
    #[error("a reason is required to deny a request")]
    DenyReasonRequired,
    /// Only the requester may cancel.
    #[error("only the user who made {id} may cancel it")]
    NotRequestOwner {
        /// The request.
        id: String,
    },
    /// No such grant.
    #[error("unknown grant {id}")]
    UnknownGrant {
        /// What was asked for.
        id: String,
    },
    /// The caller may not see this grant.
    #[error("you may not see grant {id}")]
    HiddenGrant {
        /// The grant.
        id: String,
    },
    /// The grant has already ended.
    #[error("grant {id} is already {state}")]
    GrantEnded {
        /// The grant.
        id: String,
        /// Its state.
        state: GrantState,
    },
    /// Extending one's own grant.
    #[error("you cannot extend your own grant")]
    SelfExtension,
    /// An extension of zero.
    #[error("an extension must be at least 1s")]
    EmptyExtension,
    /// An extension past the policy's `max_duration`.
    #[error("extending {id} by {} would make it {} long; the longest allowed for {resource} is {}", duration::format(*.by), duration::format(*.total), duration::format(*.max))]
    ExtendPastMax {
        /// The grant.
        id: String,
        /// Its resource.
        resource: String,
        /// The extension asked for.
        by: Duration,
        /// The grant's length after it.
        total: Duration,
        /// The policy's max.
        max: Duration,
    },
    /// The caller may not revoke this grant.
    #[error("you may not revoke {id}: only its user, an approver of {resource} or an admin may")]
    NotRevoker {
        /// The grant.
        id: String,
        /// Its resource.
        resource: String,
    },
    /// No live session with this id.
    #[error("unknown session {id}")]
    UnknownSession {
        /// What was asked for.
        id: String,
    },
    /// No recording with this id.
    #[error("unknown recording {id}")]
    UnknownRecording {
        /// What was asked for.
        id: String,
    },
    /// The caller may not end this session.
    #[error("you may not kill {id}: only its user, an approver of {resource} or an admin may")]
    NotSessionKiller {
        /// The session.
        id: String,
        /// Its resource.
        resource: String,
    },
    /// The caller may not see this session's record.
    #[error("you may not see session {id}: only its user, an approver of its resource or an admin may")]
    HiddenSession {
        /// The session.
        id: String,
    },
    /// No route here.
    #[error("no such route: {method} {path}")]
    NoRoute {
        /// HTTP method.
        method: String,
        /// Path.
        path: String,
    },
    /// The route exists but not with this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        /// HTTP method.
        method: String,
        /// Path.
        path: String,
    },
    /// A fault of the control plane; logged, never shown.
    #[error("{0}")]
    Internal(#[from] ControlError),
}

impl ApiError {
    /// The HTTP status this refusal answers with.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            MissingToken | UnknownToken => StatusCode::UNAUTHORIZED,
            AdminOnly { .. }
            | NotRequester { .. }
            | HiddenRequest { .. }
            | NotApprover { .. }
            | NoBreakGlass { .. }
            | ExtendNeedsApprovals { .. }
            | SelfApproval
            | SelfDenial
            | NotRequestOwner { .. }
            | HiddenGrant { .. }
            | SelfExtension
            | NotRevoker { .. }
            | NotSessionKiller { .. }
            | HiddenSession { .. }
            | ProxyToken
            | NotAProxy => StatusCode::FORBIDDEN,
            CursorGone { .. } => StatusCode::GONE,
            UnknownRequest { .. }
            | UnknownGrant { .. }
            | UnknownSession { .. }
            | UnknownRecording { .. }
            | UnknownUser { .. }
            | UnknownSshKey { .. }
            | NoRoute { .. } => StatusCode::NOT_FOUND,
            UserExists { .. }
            | SshKeyExists { .. }
            | ResourceGone { .. }
            | AlreadyApproved { .. }
            | NotPending { .. }
            | GrantEnded { .. } => StatusCode::CONFLICT,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BadBody { .. }
            | BadQuery { .. }
            | BadPath { .. }
            | BadSshKey { .. }
            | TooManySshKeys { .. }
            | BadDuration { .. }
            | BadTime { .. }
            | TextTooLong { .. }
            | BadUserName { .. }
            | BadGroupName { .. }
            | UnknownResource { .. }
            | UnknownRole { .. }
            | RoleRequired { .. }
            | UnderOneSecond { .. }
            | TooLong { .. }
            | TooShort { .. }
            | ReasonRequired { .. }
            | ReasonMismatch { .. }
            | DenyReasonRequired
            | EmptyExtension
            | BreakGlassReason { .. }
            | BreakGlassStart
            | BreakGlassTooLong { .. }
            | ExtendPastMax { .. } => StatusCode::BAD_REQUEST,
        }
    }

    /// The sentence the caller reads; internal faults say only where to look.
    pub fn client_text(&self) -> String {
        match self {
            ApiError::Internal(_) => "internal error in the control plane; its log has the details".to_owned(),
            other => other.to_string(),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        ApiError::Internal(ControlError::Store(e))
    }
}

impl From<crate::audit::AuditError> for ApiError {
    fn from(e: crate::audit::AuditError) -> Self {
        ApiError::Internal(ControlError::Audit(e))
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        ApiError::Internal(ControlError::Task(e))
    }
}
