//! The workflow against a real store in a temp dir: admin bootstrap, history,
//! and the feed's revisions in commit order.

use std::sync::Arc;
use std::time::Duration;

use portcullis_protocol::feed::{FeedChange, FeedEvent};

use crate::model::{RequestState, User};
use crate::settings::{AutoApprove, ControlSettings, Policy, Principals, ReasonRule, ResourceKind, ResourceSettings};
use crate::store::history;
use crate::store::testing::TestStore;
use crate::workflow::policy::Ask;
use crate::workflow::users::UserAsk;
use crate::{Control, ControlError};

fn settings(store: &TestStore) -> ControlSettings {
    ControlSettings {
        data_dir: store.dir.path().join("data"),
        store_postgres: store.postgres(),
        resources: vec![
            ResourceSettings {
                name: "orders".to_owned(),
                kind: ResourceKind::Postgres,
                roles: vec!["read".to_owned()],
                policy: Policy {
                    approvers: Some(Principals {
                        users: vec!["carol".to_owned()],
                        groups: vec!["dba".to_owned()],
                    }),
                    approvals_required: 2,
                    max_duration: Duration::from_secs(4 * 3600),
                    reason: ReasonRule::Required,
                    auto_approve: vec![AutoApprove {
                        users: Vec::new(),
                        groups: vec!["oncall".to_owned()],
                        max_duration: Duration::from_secs(1800),
                    }],
                    ..Policy::default()
                },
                role_policies: Default::default(),
            },
            ResourceSettings {
                name: "bench".to_owned(),
                kind: ResourceKind::Postgres,
                roles: vec!["admin".to_owned()],
                policy: Policy {
                    approvers: Some(Principals {
                        users: vec!["carol".to_owned()],
                        groups: Vec::new(),
                    }),
                    ..Policy::default()
                },
                role_policies: Default::default(),
            },
        ],
        gateway_postgres: Some("127.0.0.1:6432".to_owned()),
        gateway_ssh: None,
        notifications: Default::default(),
        proxies: Vec::new(),
    }
}

async fn open(store: &TestStore) -> Arc<Control> {
    Control::open(settings(store), &prometheus::Registry::new())
        .await
        .expect("open")
}

async fn admin(c: &Control) -> User {
    let token = std::fs::read_to_string(c.admin_token_path()).expect("admin.token");
    c.workflow.authenticate(token.trim()).await.expect("admin token works")
}

async fn add(c: &Control, name: &str, groups: &[&str]) -> User {
    let ask = UserAsk {
        name: name.to_owned(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..UserAsk::default()
    };
    let (user, token) = c.workflow.add_user(admin(c).await, ask).await.expect("add user");
    let again = c.workflow.authenticate(token.expose()).await.expect("new token works");
    assert_eq!(again, user);
    user
}

fn ask(secs: u64) -> Ask {
    Ask {
        role: None,
        duration: Some(Duration::from_secs(secs)),
        reason: Some("INC-1 look".to_owned()),
        start_at: None,
        break_glass: false,
    }
}

async fn history_of(c: &Control, subject: &str) -> Vec<(String, String)> {
    let subject = subject.to_owned();
    c.workflow
        .store
        .call(move |conn| -> Result<_, ControlError> { Ok(history::about(conn, &subject)?) })
        .await
        .expect("history")
        .into_iter()
        .map(|(actor, action, _)| (actor, action))
        .collect()
}

#[tokio::test]
async fn admin_token_is_written_once_with_mode_0600() {
    for store in crate::store::testing::stores() {
        let c = open(&store).await;
        let path = c.admin_token_path();
        let first = std::fs::read_to_string(&path).expect("admin.token");
        assert!(first.starts_with("pc_") && first.ends_with('\n') && first.lines().count() == 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
        }
        let me = admin(&c).await;
        assert!(me.admin && me.groups.is_empty() && me.name == "admin");
        assert_eq!(
            history_of(&c, "admin").await,
            vec![("(portcullis)".to_owned(), "user.create".to_owned())]
        );
        drop(c);

        // A second start leaves the file and the user alone.
        let c = open(&store).await;
        assert_eq!(std::fs::read_to_string(&path).expect("admin.token"), first);
        assert_eq!(admin(&c).await, me);
        assert_eq!(c.feed().snapshot().users.len(), 1);
    }
}

#[tokio::test]
async fn a_leftover_admin_token_without_a_store_is_refused() {
    for store in crate::store::testing::stores() {
        let data = store.dir.path().join("data");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::write(data.join("admin.token"), "pc_old\n").expect("write");
        let err = Control::open(settings(&store), &prometheus::Registry::new())
            .await
            .expect_err("stale token file");
        assert!(matches!(err, ControlError::StaleAdminToken { .. }), "{err}");
        assert_eq!(
            std::fs::read_to_string(data.join("admin.token")).expect("kept"),
            "pc_old\n"
        );
    }
}

#[tokio::test]
async fn two_approvals_then_a_grant_whose_clock_starts_at_approval() {
    for store in crate::store::testing::stores() {
        let c = open(&store).await;
        let alice = add(&c, "alice", &[]).await;
        let carol = add(&c, "carol", &[]).await;
        let dave = add(&c, "dave", &["dba"]).await;
        let w = &c.workflow;

        let req = w
            .create_request(alice.clone(), "orders".into(), ask(3600))
            .await
            .expect("request");
        assert_eq!(req.state, RequestState::Pending);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let once = w
            .approve(carol.clone(), req.id.clone(), None)
            .await
            .expect("first approval");
        assert_eq!(once.state, RequestState::Pending);
        assert!(
            w.approve(carol.clone(), req.id.clone(), None).await.is_err(),
            "carol twice"
        );
        let done = w
            .approve(dave.clone(), req.id.clone(), Some("ok".into()))
            .await
            .expect("second");
        assert_eq!(done.state, RequestState::Approved);
        assert_eq!(done.approvals.len(), 2);
        assert_eq!(done.decided_by.as_deref(), Some("dave"));
        let gid = done.grant_id.clone().expect("grant id");

        let grants = w.list_grants(alice.clone(), false).await.expect("grants");
        let g = grants.iter().find(|g| g.id == gid).expect("alice sees her grant");
        let approved_at = done.decided_at.expect("decided_at");
        assert_eq!(g.starts_at, approved_at);
        assert!(
            g.starts_at > req.created_at,
            "the clock starts at approval, not at the request"
        );
        assert_eq!(g.expires_at - g.starts_at, 3_600_000);

        let actions: Vec<String> = history_of(&c, &req.id).await.into_iter().map(|(_, a)| a).collect();
        assert_eq!(actions, ["request.create", "request.approve", "request.approve"]);
        assert_eq!(
            history_of(&c, &gid).await,
            vec![("dave".to_owned(), "grant.create".to_owned())]
        );

        // Nobody else sees alice's request; the approvers do.
        let bob = add(&c, "bob", &[]).await;
        assert!(w.list_requests(bob.clone(), true).await.expect("list").is_empty());
        assert!(w.get_request(bob, req.id.clone()).await.is_err());
        assert_eq!(w.list_requests(carol, true).await.expect("list").len(), 1);
    }
}

#[tokio::test]
async fn auto_approval_is_recorded_as_such() {
    for store in crate::store::testing::stores() {
        let c = open(&store).await;
        let olga = add(&c, "olga", &["oncall"]).await;
        let req = c
            .workflow
            .create_request(olga.clone(), "orders".into(), ask(1800))
            .await
            .expect("request");
        assert_eq!(req.state, RequestState::Approved);
        assert!(req.auto_approved && req.approvals.is_empty());
        assert!(req.grant_id.is_some());
        let h = history_of(&c, &req.id).await;
        assert_eq!(
            h,
            vec![
                ("olga".to_owned(), "request.create".to_owned()),
                ("auto-approve rule 1".to_owned(), "request.auto_approve".to_owned())
            ]
        );
        let longer = c
            .workflow
            .create_request(olga, "orders".into(), ask(1801))
            .await
            .expect("request");
        assert_eq!(
            longer.state,
            RequestState::Pending,
            "over the rule's max waits for approvers"
        );
    }
}

fn kind(change: &FeedChange) -> &'static str {
    match change.event {
        FeedEvent::User(_) => "user",
        FeedEvent::UserRemoved { .. } => "user_removed",
        FeedEvent::Grant(_) => "grant",
        FeedEvent::Pending(_) => "pending",
        FeedEvent::PendingClosed { .. } => "pending_closed",
        FeedEvent::KillSession { .. } => "kill_session",
        FeedEvent::Unknown => "unknown",
    }
}

#[tokio::test]
async fn feed_revisions_follow_commit_order() {
    for store in crate::store::testing::stores() {
        let c = open(&store).await;
        let mut rx = c.feed().subscribe();
        let start = c.feed().snapshot().revision;
        let alice = add(&c, "alice", &[]).await;
        let carol = add(&c, "carol", &[]).await;
        add(&c, "dave", &["dba"]).await;
        let w = &c.workflow;
        // bench needs one approval: one approver may extend what one approver granted.
        let req = w
            .create_request(alice.clone(), "bench".into(), ask(600))
            .await
            .expect("request");
        let done = w.approve(carol.clone(), req.id.clone(), None).await.expect("approve");
        let gid = done.grant_id.expect("grant");
        w.extend(carol.clone(), gid.clone(), Duration::from_secs(60))
            .await
            .expect("extend");
        w.revoke(carol, gid.clone(), Some("done".into())).await.expect("revoke");
        let refused = w.create_request(alice, "orders".into(), ask(5 * 3600)).await;
        assert!(refused.is_err(), "refusals publish nothing");

        let changes: Vec<FeedChange> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        let kinds: Vec<&str> = changes.iter().map(kind).collect();
        assert_eq!(
            kinds,
            [
                "user",
                "user",
                "user",
                "pending",
                "pending_closed",
                "grant",
                "grant",
                "grant"
            ]
        );
        for (i, ch) in changes.iter().enumerate() {
            assert_eq!(ch.revision, start + 1 + u64::try_from(i).expect("small"));
        }
        let snap = c.feed().snapshot();
        assert_eq!(snap.revision, changes.last().expect("changes").revision);
        assert!(snap.pending.is_empty());
        let g = snap.grants.iter().find(|g| g.id == gid).expect("grant in snapshot");
        assert_eq!(g.revoked.as_ref().map(|r| r.by.as_str()), Some("carol"));
        assert_eq!(g.expires_at - g.starts_at, 660_000);
        let names: Vec<&str> = snap.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["admin", "alice", "carol", "dave"]);
        assert!(
            snap.users
                .iter()
                .all(|u| u.scram_verifier.starts_with("SCRAM-SHA-256$"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_subscribes_then_snapshots_misses_nothing() {
    for store in crate::store::testing::stores() {
        let c = open(&store).await;
        let alice = add(&c, "alice", &[]).await;
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let c = Arc::clone(&c);
                let alice = alice.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        c.workflow
                            .create_request(alice.clone(), "bench".into(), ask(60))
                            .await
                            .expect("request");
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut rx = c.feed().subscribe();
        let snap = c.feed().snapshot();
        for w in writers {
            w.await.expect("writer");
        }
        let mut pending: std::collections::BTreeSet<String> =
            snap.pending.iter().map(|p| p.request_id.clone()).collect();
        let mut last = snap.revision;
        while let Ok(change) = rx.try_recv() {
            if change.revision <= snap.revision {
                continue;
            }
            assert_eq!(change.revision, last + 1, "no gap after the snapshot");
            last = change.revision;
            if let FeedEvent::Pending(p) = change.event {
                pending.insert(p.request_id);
            }
        }
        let truth: std::collections::BTreeSet<String> =
            c.feed().snapshot().pending.into_iter().map(|p| p.request_id).collect();
        assert_eq!(truth.len(), 40);
        assert_eq!(pending, truth);
    }
}

/// Waits (at most 10 s) until `c`'s feed reaches `revision`.
async fn feed_reaches(c: &Control, revision: u64) {
    for _ in 0..200 {
        if c.feed().revision() >= revision {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the feed stayed at {} below {revision}", c.feed().revision());
}

/// Another replica of `first`'s store, with a data dir of its own (holding
/// `first`'s audit key, and no admin.token).
async fn open_replica(store: &TestStore, first: &Control) -> (tempfile::TempDir, Arc<Control>) {
    let dir = crate::store::testing::replica_dir(&first.data_dir);
    let mut settings = settings(store);
    settings.data_dir = dir.path().join("data");
    let replica = Control::open(settings, &prometheus::Registry::new())
        .await
        .expect("open a replica");
    (dir, replica)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_store_publish_one_history() {
    let store = crate::store::testing::postgres();
    let a = open(&store).await;
    let (_b_dir, b) = open_replica(&store, &a).await;
    assert_eq!(a.feed().epoch(), b.feed().epoch(), "one history, one name");
    let mut from_b = b.feed().subscribe();

    // A change through A reaches B's feed with the same revision, and the other way round.
    let alice = add(&a, "alice", &[]).await;
    let carol = add(&a, "carol", &[]).await;
    let req = b
        .workflow
        .create_request(alice, "bench".into(), ask(600))
        .await
        .expect("request through B");
    let done = a
        .workflow
        .approve(carol.clone(), req.id.clone(), None)
        .await
        .expect("approve through A");
    let gid = done.grant_id.expect("grant");
    feed_reaches(&b, a.feed().revision()).await;
    assert_eq!(a.feed().snapshot(), b.feed().snapshot());
    let seen: Vec<FeedChange> = std::iter::from_fn(|| from_b.try_recv().ok()).collect();
    let kinds: Vec<&str> = seen.iter().map(kind).collect();
    assert_eq!(kinds, ["user", "user", "pending", "pending_closed", "grant"]);
    assert!(seen.windows(2).all(|w| w[1].revision == w[0].revision + 1), "{seen:?}");

    // A revoke through B: A's feed has it too, so A's proxies cut the session.
    b.workflow
        .revoke(carol, gid.clone(), Some("done".into()))
        .await
        .expect("revoke through B");
    feed_reaches(&a, b.feed().revision()).await;
    let g = a
        .feed()
        .snapshot()
        .grants
        .into_iter()
        .find(|g| g.id == gid)
        .expect("grant");
    assert!(g.revoked.is_some(), "A's feed has the revoke");

    // A replica started later resumes the same history.
    let (_c_dir, c) = open_replica(&store, &a).await;
    assert_eq!(c.feed().snapshot(), a.feed().snapshot());
}

#[tokio::test]
async fn a_replica_with_another_audit_key_is_refused() {
    let store = crate::store::testing::postgres();
    let a = open(&store).await;
    let other = tempfile::tempdir().expect("tempdir");
    let mut settings = settings(&store);
    settings.data_dir = other.path().join("data");
    let err = Control::open(settings, &prometheus::Registry::new())
        .await
        .expect_err("another chain key");
    assert!(
        err.to_string().contains("every control replica holds the same one"),
        "{err}"
    );
    drop(a);
}
