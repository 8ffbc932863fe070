//! The admission check: may this user open a session on this resource and role, now?
//! Pure: it takes the user's grants and pending requests and the time.

use portcullis_protocol::feed::{GrantEntry, PendingEntry, Revocation, UnixMillis};

/// Why a session is refused; each knows the text the person reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denied {
    /// No grant and no pending request.
    NoGrant,
    /// A request is waiting for approval.
    Pending {
        /// The pending request.
        request_id: String,
    },
    /// The grant starts later.
    Scheduled {
        /// Grant id.
        grant_id: String,
        /// When it starts.
        starts_at: UnixMillis,
    },
    /// The latest grant ran out.
    Expired {
        /// Grant id.
        grant_id: String,
        /// When it ended.
        at: UnixMillis,
    },
    /// The latest grant was revoked.
    Revoked {
        /// Grant id.
        grant_id: String,
        /// Who, why and when.
        revocation: Revocation,
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
    pub fn request_id(&self) -> Option<&str> {
        match self {
            Denied::Pending { request_id } => Some(request_id),
            _ => None,
        }
    }

    /// Puts the grant or request the refusal is about, and the `role`
    /// asked for, on its `connect.denied` event: a search by grant or
    /// request then finds the refusals it caused.
    pub fn annotate(&self, role: Option<&str>, e: &mut portcullis_protocol::audit::AuditEvent) {
        e.grant_id = self.grant_id().map(str::to_owned);
        e.request_id = self.request_id().map(str::to_owned);
        e.role = role.map(str::to_owned);
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
        });
    }
    if let Some(p) = pending.iter().find(|p| role.is_none_or(|r| p.role == r)) {
        return Err(Denied::Pending {
            request_id: p.request_id.clone(),
        });
    }
    let ended_at = |g: &GrantEntry| g.revoked.as_ref().map_or(g.expires_at, |r| r.at);
    let last = grants.iter().filter(wanted).max_by_key(|g| ended_at(g));
    match last {
        Some(g) => match &g.revoked {
            Some(r) => Err(Denied::Revoked {
                grant_id: g.id.clone(),
                revocation: r.clone(),
            }),
            None => Err(Denied::Expired {
                grant_id: g.id.clone(),
                at: g.expires_at,
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
                at: 100
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
        }];
        assert_eq!(
            check(&[], &p, None, 50),
            Err(Denied::Pending {
                request_id: "req_1".into()
            })
        );
        assert_eq!(check(&[], &p, Some("admin"), 50), Err(Denied::NoGrant));
    }
}
