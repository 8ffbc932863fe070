//! The control plane's data model: users, requests with their approvals, and
//! grants whose state is derived from the clock.

use std::fmt;

use portcullis_protocol::feed::{GrantEntry, PendingEntry, UnixMillis};

/// An engineer (or admin) as the control plane knows them; no secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct User {
    /// Login name.
    pub name: String,
    /// Group names.
    pub groups: Vec<String>,
    /// Holds the admin right.
    pub admin: bool,
    /// When the user was created.
    pub created_at: UnixMillis,
}

/// Where a request is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestState {
    /// Waiting for approvals.
    Pending,
    /// Approved; a grant exists.
    Approved,
    /// Denied by an approver.
    Denied,
    /// Left unanswered too long.
    Expired,
    /// Withdrawn by the requester.
    Cancelled,
}

impl RequestState {
    /// The API's and the store's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Approved => "approved",
            RequestState::Denied => "denied",
            RequestState::Expired => "expired",
            RequestState::Cancelled => "cancelled",
        }
    }

    /// Reads the store's spelling.
    pub fn parse(s: &str) -> Option<RequestState> {
        Some(match s {
            "pending" => RequestState::Pending,
            "approved" => RequestState::Approved,
            "denied" => RequestState::Denied,
            "expired" => RequestState::Expired,
            "cancelled" => RequestState::Cancelled,
            _ => return None,
        })
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One approver's approval of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Approval {
    /// Approver.
    pub by: String,
    /// Their comment, if any.
    pub comment: Option<String>,
    /// When.
    pub at: UnixMillis,
}

/// A request for access to one role of one resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    /// `req_` + 12 hex chars.
    pub id: String,
    /// Requester.
    pub user: String,
    /// Resource name.
    pub resource: String,
    /// Role name.
    pub role: String,
    /// Where it stands.
    pub state: RequestState,
    /// Why access is needed.
    pub reason: Option<String>,
    /// Length of the grant asked for, in milliseconds.
    pub duration_ms: i64,
    /// Requested start, if later than approval.
    pub start_at: Option<UnixMillis>,
    /// When it was made.
    pub created_at: UnixMillis,
    /// When it was approved, denied or cancelled.
    pub decided_at: Option<UnixMillis>,
    /// Who decided it (the last approver, the denier or the requester).
    pub decided_by: Option<String>,
    /// The denial reason, the last approver's comment, or a note on auto-approval.
    pub decision_reason: Option<String>,
    /// Approvals so far, oldest first.
    pub approvals: Vec<Approval>,
    /// Distinct approvals needed (the policy's, when the request was made).
    pub approvals_required: u32,
    /// The grant, once approved.
    pub grant_id: Option<String>,
    /// Approved at once by an auto-approve rule.
    pub auto_approved: bool,
    /// A break-glass self-grant.
    pub break_glass: bool,
    /// Escalation steps reached while pending (their approvers may approve).
    pub escalation_level: u32,
    /// When it expires if still unanswered; `None`: never.
    pub pending_until: Option<UnixMillis>,
}

impl Request {
    /// What proxies hold while the request waits.
    pub fn pending_entry(&self) -> PendingEntry {
        PendingEntry {
            request_id: self.id.clone(),
            user: self.user.clone(),
            resource: self.resource.clone(),
            role: self.role.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// A grant's state as of some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GrantState {
    /// Starts later.
    Scheduled,
    /// In force now.
    Active,
    /// Past its deadline.
    Expired,
    /// Ended early.
    Revoked,
}

impl GrantState {
    /// The API's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Scheduled => "scheduled",
            GrantState::Active => "active",
            GrantState::Expired => "expired",
            GrantState::Revoked => "revoked",
        }
    }

    /// Scheduled or active.
    pub fn is_live(self) -> bool {
        matches!(self, GrantState::Scheduled | GrantState::Active)
    }
}

impl fmt::Display for GrantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Time-boxed access of one user to one role of one resource: the very
/// entry proxies hold, so the store and the feed cannot drift apart.
pub(crate) type Grant = GrantEntry;

/// The clock's view of a grant.
pub(crate) trait GrantClock {
    /// The state at `now`: revoked wins, else the clock decides.
    fn state(&self, now: UnixMillis) -> GrantState;
}

impl GrantClock for Grant {
    fn state(&self, now: UnixMillis) -> GrantState {
        if self.revoked.is_some() {
            GrantState::Revoked
        } else if now < self.starts_at {
            GrantState::Scheduled
        } else if now >= self.expires_at {
            GrantState::Expired
        } else {
            GrantState::Active
        }
    }
}
