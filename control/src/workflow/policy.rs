//! The pure policy checks: who may request, approve, deny, extend or revoke,
//! and which role, duration and reason a request gets. No clock reads and no
//! I/O here; callers pass `now`.

use std::time::Duration;

use portcullis_protocol::feed::UnixMillis;

use crate::catalog::Resource;
use crate::error::ApiError;
use crate::model::{Grant, GrantClock, Request, RequestState, User};
use crate::settings::{Policy, Principals, ReasonRule};
use crate::time::{duration, millis};

/// Longest reason, comment or denial text kept, in characters.
pub(crate) const MAX_TEXT: usize = 2000;

/// What a requester asked for, parsed but not yet checked.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ask {
    /// Role, if named.
    pub role: Option<String>,
    /// Length, if named.
    pub duration: Option<Duration>,
    /// Why.
    pub reason: Option<String>,
    /// Requested start.
    pub start_at: Option<UnixMillis>,
    /// A break-glass self-grant.
    pub break_glass: bool,
}

/// A request the policy accepts, ready to store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The role granted.
    pub role: String,
    /// The grant's length.
    pub duration: Duration,
    /// The reason, trimmed; `None` when blank.
    pub reason: Option<String>,
    /// A start later than now, if one was asked for.
    pub start_at: Option<UnixMillis>,
    /// The auto-approve rule that matched, counted from 1.
    pub auto_rule: Option<usize>,
    /// Granted at once by break-glass.
    pub break_glass: bool,
}

/// Whether `user` is one of `p`, by name or by group.
pub(crate) fn is_in(p: &Principals, user: &User) -> bool {
    p.users.contains(&user.name) || p.groups.iter().any(|g| user.groups.contains(g))
}

/// Whether `user` may request access under `policy` (no `requesters`: anyone).
pub(crate) fn may_request(policy: &Policy, user: &User) -> bool {
    policy.requesters.as_ref().is_none_or(|p| is_in(p, user))
}

/// Whether `user` is one of `policy`'s named approvers. The admin right alone
/// is not enough: approvers must be named.
pub(crate) fn is_approver(policy: &Policy, user: &User) -> bool {
    policy.approvers.as_ref().is_some_and(|p| is_in(p, user))
}

/// Whether `user` approves a request that reached escalation step `level`:
/// a named approver, or one of the first `level` steps' approvers.
pub(crate) fn approves_at(policy: &Policy, level: u32, user: &User) -> bool {
    let reached = usize::try_from(level).unwrap_or(usize::MAX);
    is_approver(policy, user)
        || policy
            .escalation
            .iter()
            .take(reached)
            .any(|e| is_in(&e.approvers, user))
}

/// Whether `user` approves any role of `resource`.
pub(crate) fn approves_any(resource: &Resource, user: &User) -> bool {
    resource.policies().any(|p| is_approver(p, user))
}

/// Whether `user` may see (and kill sessions of) something of `owner`'s on `resource`:
/// admins, the owner, and the resource's approvers.
pub(crate) fn may_oversee(resource: Option<&Resource>, owner: &str, user: &User) -> bool {
    user.admin || owner == user.name || resource.is_some_and(|r| approves_any(r, user))
}

/// Whether `user` may see `req`: as `may_oversee`, plus the approvers of
/// the escalation steps it reached (they may approve it, so they must find it).
pub(crate) fn may_see_request(resource: Option<&Resource>, req: &Request, user: &User) -> bool {
    may_oversee(resource, &req.user, user)
        || resource.is_some_and(|r| approves_at(r.policy(&req.role), req.escalation_level, user))
}

/// Checks a new request against the policy of the resource and role asked for.
pub(crate) fn plan_request(resource: &Resource, user: &User, ask: &Ask, now: UnixMillis) -> Result<Plan, ApiError> {
    let role = pick_role(resource, ask.role.as_deref())?;
    let policy = resource.policy(&role);
    if ask.break_glass {
        return plan_break_glass(resource, policy, user, ask, role);
    }
    if !may_request(policy, user) {
        return Err(ApiError::NotRequester {
            resource: resource.name().to_owned(),
        });
    }
    let duration = pick_duration(resource, policy, ask.duration)?;
    let reason = check_reason(resource, policy, ask.reason.as_deref())?;
    Ok(Plan {
        role,
        duration,
        reason,
        start_at: ask.start_at.filter(|s| *s > now),
        auto_rule: auto_rule(policy, user, duration),
        break_glass: false,
    })
}

/// Break-glass: only those the policy names, a reason always, no later
/// start, and never longer than the break-glass cap.
fn plan_break_glass(
    resource: &Resource,
    policy: &Policy,
    user: &User,
    ask: &Ask,
    role: String,
) -> Result<Plan, ApiError> {
    let name = resource.name().to_owned();
    let Some(bg) = policy.break_glass.as_ref().filter(|bg| is_in(&bg.who, user)) else {
        return Err(ApiError::NoBreakGlass { resource: name, role });
    };
    if ask.start_at.is_some() {
        return Err(ApiError::BreakGlassStart);
    }
    // The break-glass cap never exceeds the policy's own max.
    let cap = bg.max_duration.min(policy.max_duration);
    let d = ask.duration.unwrap_or(policy.default_duration.min(cap));
    if d < Duration::from_secs(1) {
        return Err(ApiError::UnderOneSecond { requested: d });
    }
    if d > cap {
        return Err(ApiError::BreakGlassTooLong {
            resource: name,
            requested: d,
            max: cap,
        });
    }
    let reason = match check_reason(resource, policy, ask.reason.as_deref())? {
        Some(r) => r,
        None => return Err(ApiError::BreakGlassReason { resource: name }),
    };
    Ok(Plan {
        role,
        duration: d,
        reason: Some(reason),
        start_at: None,
        auto_rule: None,
        break_glass: true,
    })
}

/// The named role, or the only one; 400 naming the roles otherwise.
pub(crate) fn pick_role(resource: &Resource, role: Option<&str>) -> Result<String, ApiError> {
    let roles = &resource.settings.roles;
    match (role, roles.as_slice()) {
        (Some(r), _) if roles.iter().any(|x| x == r) => Ok(r.to_owned()),
        (Some(r), _) => Err(ApiError::UnknownRole {
            resource: resource.name().to_owned(),
            role: r.to_owned(),
            roles: roles.join(", "),
        }),
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(ApiError::RoleRequired {
            resource: resource.name().to_owned(),
            roles: roles.join(", "),
        }),
    }
}

/// The asked length or the default, within 1s, `min_duration` and `max_duration`.
pub(crate) fn pick_duration(
    resource: &Resource,
    policy: &Policy,
    asked: Option<Duration>,
) -> Result<Duration, ApiError> {
    let d = asked.unwrap_or(policy.default_duration);
    if d < Duration::from_secs(1) {
        return Err(ApiError::UnderOneSecond { requested: d });
    }
    if d > policy.max_duration {
        return Err(ApiError::TooLong {
            resource: resource.name().to_owned(),
            requested: d,
            max: policy.max_duration,
        });
    }
    if let Some(min) = policy.min_duration.filter(|min| d < *min) {
        return Err(ApiError::TooShort {
            resource: resource.name().to_owned(),
            requested: d,
            min,
        });
    }
    Ok(d)
}

/// The reason, trimmed, as the policy's rule wants it.
pub(crate) fn check_reason(
    resource: &Resource,
    policy: &Policy,
    reason: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    check_text("reason", reason)?;
    match (&policy.reason, reason) {
        (ReasonRule::Optional, r) => Ok(r.map(str::to_owned)),
        (ReasonRule::Required, Some(r)) => Ok(Some(r.to_owned())),
        (ReasonRule::Required, None) => Err(ApiError::ReasonRequired {
            resource: resource.name().to_owned(),
        }),
        (ReasonRule::Pattern(pattern), r) => match (resource.pattern(pattern), r) {
            (Some(re), Some(r)) if re.is_match(r) => Ok(Some(r.to_owned())),
            _ => Err(ApiError::ReasonMismatch {
                resource: resource.name().to_owned(),
                pattern: pattern.clone(),
            }),
        },
    }
}

/// Refuses free text longer than `MAX_TEXT` characters.
pub(crate) fn check_text(field: &'static str, text: Option<&str>) -> Result<(), ApiError> {
    match text {
        Some(t) if t.chars().count() > MAX_TEXT => Err(ApiError::TextTooLong { field, max: MAX_TEXT }),
        _ => Ok(()),
    }
}

/// The first auto-approve rule (counted from 1) that covers `user` asking for `duration`.
pub(crate) fn auto_rule(policy: &Policy, user: &User, duration: Duration) -> Option<usize> {
    policy
        .auto_approve
        .iter()
        .position(|rule| {
            let named = rule.users.contains(&user.name) || rule.groups.iter().any(|g| user.groups.contains(g));
            named && duration <= rule.max_duration
        })
        .map(|i| i + 1)
}

/// Checks one approval; `Ok(true)` when it is the last one needed.
pub(crate) fn check_approve(resource: &Resource, req: &Request, approver: &User) -> Result<bool, ApiError> {
    if req.user == approver.name {
        return Err(ApiError::SelfApproval);
    }
    check_decider(resource, req, approver)?;
    if req.approvals.iter().any(|a| a.by == approver.name) {
        return Err(ApiError::AlreadyApproved { id: req.id.clone() });
    }
    let distinct = req.approvals.len() + 1;
    Ok(distinct >= usize::try_from(req.approvals_required).unwrap_or(usize::MAX))
}

/// What approving and denying both need: an approver of this resource and
/// role (escalation included), and a pending request.
fn check_decider(resource: &Resource, req: &Request, approver: &User) -> Result<(), ApiError> {
    if !approves_at(resource.policy(&req.role), req.escalation_level, approver) {
        return Err(not_approver(resource, &req.role, approver));
    }
    if req.state != RequestState::Pending {
        return Err(ApiError::NotPending {
            id: req.id.clone(),
            state: req.state,
        });
    }
    Ok(())
}

/// Checks a denial; the reason is required.
pub(crate) fn check_deny(
    resource: &Resource,
    req: &Request,
    approver: &User,
    reason: Option<&str>,
) -> Result<String, ApiError> {
    if req.user == approver.name {
        return Err(ApiError::SelfDenial);
    }
    check_decider(resource, req, approver)?;
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    check_text("reason", reason)?;
    reason.map(str::to_owned).ok_or(ApiError::DenyReasonRequired)
}

/// Checks a cancellation: only the requester, only while pending.
pub(crate) fn check_cancel(req: &Request, user: &User) -> Result<(), ApiError> {
    if req.user != user.name {
        return Err(ApiError::NotRequestOwner { id: req.id.clone() });
    }
    if req.state != RequestState::Pending {
        return Err(ApiError::NotPending {
            id: req.id.clone(),
            state: req.state,
        });
    }
    Ok(())
}

/// A grant approved at `now`: it starts then (or at the requested start, if later).
pub(crate) fn grant_window(
    now: UnixMillis,
    start_at: Option<UnixMillis>,
    duration_ms: i64,
) -> (UnixMillis, UnixMillis) {
    let starts = start_at.map_or(now, |s| s.max(now));
    (starts, starts.saturating_add(duration_ms))
}

/// Checks an extension; answers the new deadline. One approver may extend
/// only a grant that one approver could grant (a grant that needed N
/// approvals needs a new request), and never past the policy's
/// `max_duration` in total (the break-glass cap for a break-glass grant).
pub(crate) fn check_extend(
    resource: &Resource,
    req: &Request,
    grant: &Grant,
    actor: &User,
    by: Duration,
    now: UnixMillis,
) -> Result<UnixMillis, ApiError> {
    if grant.user == actor.name {
        return Err(ApiError::SelfExtension);
    }
    let policy = resource.policy(&grant.role);
    if !is_approver(policy, actor) {
        return Err(not_approver(resource, &grant.role, actor));
    }
    if req.approvals_required > 1 {
        return Err(ApiError::ExtendNeedsApprovals {
            id: grant.id.clone(),
            required: req.approvals_required,
        });
    }
    let state = grant.state(now);
    if !state.is_live() {
        return Err(ApiError::GrantEnded {
            id: grant.id.clone(),
            state,
        });
    }
    if by < Duration::from_secs(1) {
        return Err(ApiError::EmptyExtension);
    }
    let max = match (&policy.break_glass, req.break_glass) {
        (Some(bg), true) => bg.max_duration.min(policy.max_duration),
        _ => policy.max_duration,
    };
    let expires = grant.expires_at.saturating_add(millis(by));
    let total = duration(expires.saturating_sub(grant.starts_at));
    if total > max {
        return Err(ApiError::ExtendPastMax {
            id: grant.id.clone(),
            resource: resource.name().to_owned(),
            by,
            total,
            max,
        });
    }
    Ok(expires)
}

/// The refusal of someone who is not an approver; it says why, since the
/// admin right alone is not enough.
fn not_approver(resource: &Resource, role: &str, user: &User) -> ApiError {
    let named = resource.policy(role).approvers.is_some();
    ApiError::NotApprover {
        resource: resource.name().to_owned(),
        why: match (named, user.admin) {
            (false, _) => "its policy names no approvers",
            (true, true) => "the admin right alone does not approve; approvers are named in the policy",
            (true, false) => "its policy does not name you or your groups as approvers",
        },
    }
}

/// Checks a revocation: the grant's user, an approver of its resource, or an admin.
pub(crate) fn check_revoke(
    resource: Option<&Resource>,
    grant: &Grant,
    actor: &User,
    now: UnixMillis,
) -> Result<(), ApiError> {
    if !may_oversee(resource, &grant.user, actor) {
        return Err(ApiError::NotRevoker {
            id: grant.id.clone(),
            resource: grant.resource.clone(),
        });
    }
    let state = grant.state(now);
    if !state.is_live() {
        return Err(ApiError::GrantEnded {
            id: grant.id.clone(),
            state,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
