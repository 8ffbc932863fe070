//! The policy rules, checked without a store or a clock.

use std::time::Duration;

use super::*;
use crate::model::Approval;
use crate::settings::{AutoApprove, ResourceKind, ResourceSettings};

const NOW: UnixMillis = 1_795_429_700_000;

fn user(name: &str, groups: &[&str], admin: bool) -> User {
    User {
        name: name.to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        admin,
        created_at: 0,
    }
}

fn resource(policy: Policy) -> Resource {
    Resource::new(ResourceSettings {
        name: "orders".to_owned(),
        kind: ResourceKind::Postgres,
        roles: vec!["read".to_owned(), "admin".to_owned()],
        policy,
        role_policies: Default::default(),
    })
    .expect("valid resource")
}

fn orders() -> Resource {
    resource(Policy {
        approvers: Some(Principals {
            users: vec!["carol".to_owned()],
            groups: vec!["dba".to_owned()],
        }),
        max_duration: Duration::from_secs(4 * 3600),
        default_duration: Duration::from_secs(3600),
        ..Policy::default()
    })
}

fn pending(requester: &str, approvals_required: u32) -> Request {
    Request {
        id: "req_000000000001".to_owned(),
        user: requester.to_owned(),
        resource: "orders".to_owned(),
        role: "read".to_owned(),
        state: RequestState::Pending,
        reason: None,
        duration_ms: 3_600_000,
        start_at: None,
        created_at: NOW,
        decided_at: None,
        decided_by: None,
        decision_reason: None,
        approvals: Vec::new(),
        approvals_required,
        grant_id: None,
        auto_approved: false,
        break_glass: false,
        escalation_level: 0,
        pending_until: None,
    }
}

fn grant(user: &str, starts_at: UnixMillis, len: Duration) -> Grant {
    Grant {
        id: "grt_000000000001".to_owned(),
        request_id: "req_000000000001".to_owned(),
        user: user.to_owned(),
        resource: "orders".to_owned(),
        role: "read".to_owned(),
        starts_at,
        expires_at: starts_at + millis(len),
        revoked: None,
        reason: None,
        approvers: Vec::new(),
        break_glass: false,
    }
}

fn ask(role: &str, secs: u64, reason: &str) -> Ask {
    Ask {
        role: Some(role.to_owned()),
        duration: Some(Duration::from_secs(secs)),
        reason: Some(reason.to_owned()),
        start_at: None,
        break_glass: false,
    }
}

#[test]
fn self_approval_is_refused_even_for_an_admin_approver() {
    let r = orders();
    let carol = user("carol", &["dba"], true);
    let err = check_approve(&r, &pending("carol", 1), &carol).expect_err("self-approval");
    assert!(matches!(err, ApiError::SelfApproval));
    assert_eq!(err.to_string(), "you cannot approve your own request");
    assert_eq!(err.status(), axum::http::StatusCode::FORBIDDEN);
}

#[test]
fn the_admin_right_alone_never_approves() {
    let admin = user("admin", &[], true);
    let named = check_approve(&orders(), &pending("alice", 1), &admin).expect_err("not named");
    assert!(
        named.to_string().contains("the admin right alone does not approve"),
        "{named}"
    );
    let open = resource(Policy::default());
    let none = check_approve(&open, &pending("alice", 1), &admin).expect_err("no approvers named");
    assert!(none.to_string().contains("names no approvers"), "{none}");
    let bob = user("bob", &[], false);
    assert!(check_approve(&open, &pending("alice", 1), &bob).is_err());
}

#[test]
fn a_role_overrides_the_resource_policy() {
    let base = Policy {
        approvers: Some(Principals {
            users: vec!["carol".to_owned(), "dave".to_owned()],
            groups: Vec::new(),
        }),
        ..Policy::default()
    };
    let strict = Policy {
        approvals_required: 2,
        max_duration: Duration::from_secs(1800),
        default_duration: Duration::from_secs(900),
        ..base.clone()
    };
    let r = Resource::new(ResourceSettings {
        name: "orders".to_owned(),
        kind: ResourceKind::Postgres,
        roles: vec!["read".to_owned(), "admin".to_owned()],
        policy: base,
        role_policies: [("admin".to_owned(), strict)].into_iter().collect(),
    })
    .expect("valid");
    let alice = user("alice", &[], false);
    assert!(plan_request(&r, &alice, &ask("read", 3600, "x"), NOW).is_ok());
    let err = plan_request(&r, &alice, &ask("admin", 3600, "x"), NOW).expect_err("admin role caps at 30m");
    assert!(err.to_string().contains("30m"), "{err}");
    assert_eq!(r.policy("admin").approvals_required, 2);
    assert_eq!(r.policy("read").approvals_required, 1);
}

#[test]
fn escalation_steps_add_approvers_once_reached() {
    let r = resource(Policy {
        approvers: Some(Principals {
            users: vec!["carol".to_owned()],
            groups: Vec::new(),
        }),
        escalation: vec![crate::settings::Escalation {
            after: Duration::from_secs(60),
            approvers: Principals {
                users: Vec::new(),
                groups: vec!["managers".to_owned()],
            },
        }],
        ..Policy::default()
    });
    let mia = user("mia", &["managers"], false);
    let mut req = pending("alice", 1);
    assert!(check_approve(&r, &req, &mia).is_err(), "not before the step");
    req.escalation_level = 1;
    assert!(check_approve(&r, &req, &mia).expect("escalated approver"));
}

#[test]
fn break_glass_needs_the_right_a_reason_and_stays_under_the_cap() {
    let r = resource(Policy {
        break_glass: Some(crate::settings::BreakGlass {
            who: Principals {
                users: Vec::new(),
                groups: vec!["oncall".to_owned()],
            },
            max_duration: Duration::from_secs(900),
        }),
        ..Policy::default()
    });
    let olga = user("olga", &["oncall"], false);
    let mut a = ask("read", 600, "prod down");
    a.break_glass = true;
    let plan = plan_request(&r, &olga, &a, NOW).expect("break-glass");
    assert!(plan.break_glass && plan.auto_rule.is_none());
    let err = plan_request(&r, &user("bob", &[], false), &a, NOW).expect_err("not oncall");
    assert!(matches!(err, ApiError::NoBreakGlass { .. }));
    a.reason = Some("  ".to_owned());
    let err = plan_request(&r, &olga, &a, NOW).expect_err("no reason");
    assert!(err.to_string().starts_with("reason:"), "{err}");
    a.reason = Some("prod down".to_owned());
    a.duration = Some(Duration::from_secs(901));
    let err = plan_request(&r, &olga, &a, NOW).expect_err("over the cap");
    assert!(err.to_string().contains("15m"), "{err}");
}

#[test]
fn one_approver_does_not_extend_what_two_approved() {
    let r = orders();
    let g = grant("alice", NOW, Duration::from_secs(600));
    let err = check_extend(
        &r,
        &pending("alice", 2),
        &g,
        &user("carol", &[], false),
        Duration::from_secs(60),
        NOW,
    )
    .expect_err("needs two");
    assert!(
        matches!(err, ApiError::ExtendNeedsApprovals { required: 2, .. }),
        "{err}"
    );
}

#[test]
fn two_approvals_need_two_distinct_approvers() {
    let r = orders();
    let carol = user("carol", &[], false);
    let dave = user("dave", &["dba"], false);
    let mut req = pending("alice", 2);
    assert!(
        !check_approve(&r, &req, &carol).expect("first approval"),
        "one of two is not enough"
    );
    req.approvals.push(Approval {
        by: "carol".to_owned(),
        comment: None,
        at: NOW,
    });
    let again = check_approve(&r, &req, &carol).expect_err("carol twice");
    assert!(matches!(again, ApiError::AlreadyApproved { .. }));
    assert!(
        check_approve(&r, &req, &dave).expect("second approver"),
        "two of two grants"
    );
}

#[test]
fn decided_requests_are_not_approved_again() {
    let mut req = pending("alice", 1);
    req.state = RequestState::Denied;
    let err = check_approve(&orders(), &req, &user("carol", &[], false)).expect_err("decided");
    assert_eq!(err.status(), axum::http::StatusCode::CONFLICT);
}

#[test]
fn over_max_is_refused_naming_the_max() {
    let r = orders();
    let alice = user("alice", &[], false);
    let err = plan_request(&r, &alice, &ask("read", 5 * 3600, "x"), NOW).expect_err("too long");
    assert!(err.to_string().contains("4h"), "{err}");
    assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
    let plan = plan_request(&r, &alice, &ask("read", 4 * 3600, "x"), NOW).expect("at max");
    assert_eq!(plan.duration, Duration::from_secs(4 * 3600));
}

#[test]
fn under_min_and_under_a_second_are_refused() {
    let r = resource(Policy {
        min_duration: Some(Duration::from_secs(600)),
        ..Policy::default()
    });
    let alice = user("alice", &[], false);
    let err = plan_request(&r, &alice, &ask("read", 300, "x"), NOW).expect_err("too short");
    assert!(err.to_string().contains("10m"), "{err}");
    let mut tiny = ask("read", 0, "x");
    tiny.duration = Some(Duration::from_millis(500));
    assert!(plan_request(&resource(Policy::default()), &alice, &tiny, NOW).is_err());
}

#[test]
fn default_duration_and_role_choice() {
    let alice = user("alice", &[], false);
    let r = orders();
    let mut a = Ask::default();
    let err = plan_request(&r, &alice, &a, NOW).expect_err("two roles, none named");
    assert!(err.to_string().contains("read, admin"), "{err}");
    a.role = Some("root".to_owned());
    assert!(matches!(
        plan_request(&r, &alice, &a, NOW),
        Err(ApiError::UnknownRole { .. })
    ));
    a.role = Some("admin".to_owned());
    let plan = plan_request(&r, &alice, &a, NOW).expect("default duration");
    assert_eq!(plan.duration, Duration::from_secs(3600));
    assert_eq!(plan.role, "admin");
}

#[test]
fn reason_rules() {
    let alice = user("alice", &[], false);
    let required = resource(Policy {
        reason: ReasonRule::Required,
        ..Policy::default()
    });
    let err = plan_request(&required, &alice, &ask("read", 60, "   "), NOW).expect_err("blank reason");
    assert!(matches!(err, ApiError::ReasonRequired { .. }));

    let pattern = resource(Policy {
        reason: ReasonRule::Pattern("^[A-Z]+-[0-9]+".to_owned()),
        ..Policy::default()
    });
    let err = plan_request(&pattern, &alice, &ask("read", 60, "fixing things"), NOW).expect_err("no ticket");
    assert!(
        err.to_string().contains("\"^[A-Z]+-[0-9]+\""),
        "the refusal quotes the pattern: {err}"
    );
    let plan = plan_request(&pattern, &alice, &ask("read", 60, "  INC-42 slow orders "), NOW).expect("ticket");
    assert_eq!(plan.reason.as_deref(), Some("INC-42 slow orders"));

    let long = "x".repeat(MAX_TEXT + 1);
    assert!(matches!(
        plan_request(&resource(Policy::default()), &alice, &ask("read", 60, &long), NOW),
        Err(ApiError::TextTooLong { .. })
    ));
}

#[test]
fn requesters_limit_who_may_ask() {
    let r = resource(Policy {
        requesters: Some(Principals {
            users: Vec::new(),
            groups: vec!["eng".to_owned()],
        }),
        ..Policy::default()
    });
    let err = plan_request(&r, &user("bob", &["ops"], false), &ask("read", 60, "x"), NOW).expect_err("not eng");
    assert!(matches!(err, ApiError::NotRequester { .. }));
    assert!(plan_request(&r, &user("alice", &["eng"], false), &ask("read", 60, "x"), NOW).is_ok());
}

#[test]
fn auto_approve_rules_match_group_and_duration() {
    let r = resource(Policy {
        auto_approve: vec![AutoApprove {
            users: Vec::new(),
            groups: vec!["oncall".to_owned()],
            max_duration: Duration::from_secs(1800),
        }],
        ..Policy::default()
    });
    let oncall = user("olga", &["oncall"], false);
    assert!(
        plan_request(&r, &oncall, &ask("read", 1800, "x"), NOW)
            .expect("plan")
            .auto_rule
            .is_some()
    );
    assert!(
        plan_request(&r, &oncall, &ask("read", 1801, "x"), NOW)
            .expect("plan")
            .auto_rule
            .is_none()
    );
    let other = user("bob", &[], false);
    assert!(
        plan_request(&r, &other, &ask("read", 60, "x"), NOW)
            .expect("plan")
            .auto_rule
            .is_none()
    );
}

#[test]
fn grant_clock_starts_at_approval_or_the_later_start() {
    assert_eq!(grant_window(NOW, None, 1000), (NOW, NOW + 1000));
    assert_eq!(grant_window(NOW, Some(NOW - 5000), 1000), (NOW, NOW + 1000));
    assert_eq!(grant_window(NOW, Some(NOW + 5000), 1000), (NOW + 5000, NOW + 6000));
}

#[test]
fn extend_within_and_beyond_max() {
    let r = orders();
    let carol = user("carol", &[], false);
    let g = grant("alice", NOW, Duration::from_secs(3600));
    let to = check_extend(&r, &pending("alice", 1), &g, &carol, Duration::from_secs(1800), NOW).expect("within max");
    assert_eq!(to, g.expires_at + 1_800_000);
    let err = check_extend(
        &r,
        &pending("alice", 1),
        &g,
        &carol,
        Duration::from_secs(3 * 3600 + 1),
        NOW,
    )
    .expect_err("past max");
    assert!(matches!(err, ApiError::ExtendPastMax { .. }));
    assert!(
        err.to_string().contains("the longest allowed for orders is 4h"),
        "{err}"
    );
    assert!(matches!(
        check_extend(
            &r,
            &pending("alice", 1),
            &g,
            &user("alice", &["dba"], false),
            Duration::from_secs(60),
            NOW
        ),
        Err(ApiError::SelfExtension)
    ));
    assert!(matches!(
        check_extend(
            &r,
            &pending("alice", 1),
            &g,
            &user("bob", &[], false),
            Duration::from_secs(60),
            NOW
        ),
        Err(ApiError::NotApprover { .. })
    ));
    let ended = check_extend(
        &r,
        &pending("alice", 1),
        &g,
        &carol,
        Duration::from_secs(60),
        g.expires_at,
    )
    .expect_err("expired");
    assert!(matches!(ended, ApiError::GrantEnded { .. }));
}

#[test]
fn revoke_by_owner_approver_or_admin() {
    let r = orders();
    let g = grant("alice", NOW, Duration::from_secs(3600));
    for who in [
        user("alice", &[], false),
        user("carol", &[], false),
        user("root", &[], true),
    ] {
        assert!(check_revoke(Some(&r), &g, &who, NOW).is_ok(), "{}", who.name);
    }
    assert!(matches!(
        check_revoke(Some(&r), &g, &user("bob", &[], false), NOW),
        Err(ApiError::NotRevoker { .. })
    ));
    let mut revoked = g.clone();
    revoked.revoked = Some(portcullis_protocol::feed::Revocation {
        by: "carol".to_owned(),
        reason: None,
        at: NOW,
    });
    assert!(matches!(
        check_revoke(Some(&r), &revoked, &user("carol", &[], false), NOW + 1),
        Err(ApiError::GrantEnded { .. })
    ));
}

#[test]
fn cancel_and_deny_rules() {
    let req = pending("alice", 1);
    assert!(check_cancel(&req, &user("alice", &[], false)).is_ok());
    assert!(matches!(
        check_cancel(&req, &user("carol", &[], true)),
        Err(ApiError::NotRequestOwner { .. })
    ));
    let r = orders();
    let carol = user("carol", &[], false);
    assert!(matches!(
        check_deny(&r, &req, &carol, Some("  ")),
        Err(ApiError::DenyReasonRequired)
    ));
    assert_eq!(check_deny(&r, &req, &carol, Some(" freeze ")).expect("deny"), "freeze");
    assert!(matches!(
        check_deny(&r, &req, &user("alice", &["dba"], false), Some("x")),
        Err(ApiError::SelfDenial)
    ));
}
