//! The admission check: may this user open a session on this resource and role, now?
//! Pure: it takes the user's grants and pending requests and the time.

use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::feed::{GrantEntry, PendingEntry, Revocation, UnixMillis};

/// The request a refusal is about: its id, reason and approvers go on the
/// refusal's audit event, as on every event of its grant's sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    /// Request id.
    pub request_id: String,
    /// Its reason.
    pub reason: Option<String>,
    /// Who approved it (none while it is pending).
    pub approvers: Vec<String>,
}

impl Requested {
    fn of(g: &GrantEntry) -> Requested {
        Requested {
            request_id: g.request_id.clone(),
            reason: g.reason.clone(),
            approvers: g.approvers.clone(),
        }
    }
}

/// Why a session is refused; each knows the text the person reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No grant and no pending request.
    NoGrant,
    /// A request is waiting for approval.
    Pending {
        /// The pending request.
        request: Box<Requested>,
    },
    /// The grant starts later.
    Scheduled {
        /// Grant id.
        grant_id: String,
        /// When it starts.
        starts_at: UnixMillis,
        /// Its request, for the audit.
        request: Box<Requested>,
    },
    /// The latest grant ran out.
    Expired {
        /// Grant id.
        grant_id: String,
        /// When it ended.
        at: UnixMillis,
        /// Its request, for the audit.
        request: Box<Requested>,
    },
    /// The latest grant was revoked.
    Revoked {
        /// Grant id.
        grant_id: String,
        /// Who, why and when.
        revocation: Revocation,
        /// Its request, for the audit.
        request: Box<Requested>,
    },
    /// Several roles are granted and none was named.
    ChooseRole {
        /// The roles with live grants.
        roles: Vec<String>,
    },
}

impl Denied {
    /// Short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Denied::NoGrant => "no_grant",
            Denied::Pending { .. } => "pending",
            Denied::Scheduled { .. } => "scheduled",
            Denied::Expired { .. } => "expired",
            Denied::Revoked { .. } => "revoked",
            Denied::ChooseRole { .. } => "choose_role",
        }
    }

    /// The grant the refusal is about, when one is.
    pub fn grant_id(&self) -> Option<&str> {
        match self {
            Denied::Scheduled { grant_id, .. }
            | Denied::Expired { grant_id, .. }
            | Denied::Revoked { grant_id, .. } => Some(grant_id),
            _ => None,
        }
    }

    /// The request the refusal is about, when one is.
    pub fn request(&self) -> Option<&Requested> {
        match self {
            Denied::Pending { request, .. }
            | Denied::Scheduled { request, .. }
            | Denied::Expired { request, .. }
            | Denied::Revoked { request, .. } => Some(request),
            Denied::NoGrant | Denied::ChooseRole { .. } => None,
        }
    }

    /// Puts the grant and request the refusal is about (with the request's
    /// reason and approvers), and the `role` asked for, on its
    /// `connect.denied` event: a search by grant or request then finds the
    /// refusals it caused.
    pub fn annotate(&self, role: Option<&str>, e: &mut AuditEvent) {
        e.grant_id = self.grant_id().map(str::to_owned);
        e.role = role.map(str::to_owned);
        if let Some(r) = self.request() {
            e.request_id = Some(r.request_id.clone());
            e.reason.clone_from(&r.reason);
            e.approvers.clone_from(&r.approvers);
        }
    }
}

/// Picks the grant that admits `role` (or the only granted role when `role` is `None`) at `now`.
pub fn check(
    grants: &[GrantEntry],
    pending: &[PendingEntry],
    role: Option<&str>,
    now: UnixMillis,
) -> Result<GrantEntry, Denied> {
    let wanted = |g: &&GrantEntry| role.is_none_or(|r| g.role == r);
    let live = |g: &&GrantEntry| g.revoked.is_none() && g.starts_at <= now && now < g.expires_at;

    let mut active: Vec<&GrantEntry> = grants.iter().filter(wanted).filter(live).collect();
    if role.is_none() {
        let mut roles: Vec<String> = active.iter().map(|g| g.role.clone()).collect();
        roles.sort();
        roles.dedup();
        if roles.len() > 1 {
            return Err(Denied::ChooseRole { roles });
        }
    }
    // The longest-lived grant wins when several cover the same role.
    active.sort_by_key(|g| g.expires_at);
    if let Some(best) = active.last() {
        return Ok((*best).clone());
    }

    let later = grants
        .iter()
        .filter(wanted)
        .filter(|g| g.revoked.is_none() && g.starts_at > now)
        .min_by_key(|g| g.starts_at);
    if let Some(g) = later {
        return Err(Denied::Scheduled {
            grant_id: g.id.clone(),
            starts_at: g.starts_at,
            request: Box::new(Requested::of(g)),
        });
    }
    if let Some(p) = pending.iter().find(|p| role.is_none_or(|r| p.role == r)) {
        return Err(Denied::Pending {
            request: Box::new(Requested {
                request_id: p.request_id.clone(),
                reason: p.reason.clone(),
                approvers: Vec::new(),
            }),
        });
    }
    let ended_at = |g: &GrantEntry| g.revoked.as_ref().map_or(g.expires_at, |r| r.at);
    let last = grants.iter().filter(wanted).max_by_key(|g| ended_at(g));
    match last {
        Some(g) => match &g.revoked {
            Some(r) => Err(Denied::Revoked {
                grant_id: g.id.clone(),
                revocation: r.clone(),
                request: Box::new(Requested::of(g)),
            }),
            None => Err(Denied::Expired {
                grant_id: g.id.clone(),
                at: g.expires_at,
                request: Box::new(Requested::of(g)),
            }),
        },
        None => Err(Denied::NoGrant),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// alice's grant `id` on orders, for tests here and in the table's.
    pub(crate) fn grant(id: &str, role: &str, starts: i64, expires: i64) -> GrantEntry {
        GrantEntry {
            id: id.into(),
            request_id: format!("req_{id}"),
            user: "alice".into(),
            resource: "orders".into(),
            role: role.into(),
            starts_at: starts,
            expires_at: expires,
            revoked: None,
            reason: None,
            approvers: Vec::new(),
            break_glass: false,
        }
    }

    #[test]
    fn live_grant_admits() {
        let g = [grant("g1", "read", 0, 100)];
        assert_eq!(check(&g, &[], None, 50).map(|g| g.id), Ok("g1".into()));
        assert_eq!(check(&g, &[], Some("read"), 50).map(|g| g.id), Ok("g1".into()));
    }

    #[test]
    fn deadline_is_exclusive() {
        let g = [grant("g1", "read", 0, 100)];
        assert_eq!(
            check(&g, &[], None, 100),
            Err(Denied::Expired {
                grant_id: "g1".into(),
                at: 100,
                request: Box::new(Requested {
                    request_id: "req_g1".into(),
                    ..Requested::default()
                }),
            })
        );
    }

    #[test]
    fn wrong_role_is_no_grant() {
        let g = [grant("g1", "read", 0, 100)];
        assert_eq!(check(&g, &[], Some("admin"), 50), Err(Denied::NoGrant));
    }

    #[test]
    fn two_roles_need_a_choice() {
        let g = [grant("g1", "read", 0, 100), grant("g2", "admin", 0, 100)];
        assert_eq!(
            check(&g, &[], None, 50),
            Err(Denied::ChooseRole {
                roles: vec!["admin".into(), "read".into()]
            })
        );
        assert_eq!(check(&g, &[], Some("admin"), 50).map(|g| g.id), Ok("g2".into()));
    }

    #[test]
    fn revoked_says_so() {
        let mut g = grant("g1", "read", 0, 100);
        g.revoked = Some(Revocation {
            by: "carol".into(),
            reason: None,
            at: 40,
        });
        assert!(matches!(check(&[g], &[], None, 50), Err(Denied::Revoked { .. })));
    }

    #[test]
    fn scheduled_and_pending() {
        let g = [grant("g1", "read", 80, 100)];
        assert!(matches!(check(&g, &[], None, 50), Err(Denied::Scheduled { .. })));
        let p = [PendingEntry {
            request_id: "req_1".into(),
            user: "alice".into(),
            resource: "orders".into(),
            role: "read".into(),
            reason: None,
        }];
        assert_eq!(
            check(&[], &p, None, 50),
            Err(Denied::Pending {
                request: Box::new(Requested {
                    request_id: "req_1".into(),
                    ..Requested::default()
                }),
            })
        );
        assert_eq!(check(&[], &p, Some("admin"), 50), Err(Denied::NoGrant));
    }
}
