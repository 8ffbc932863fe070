use std::sync::atomic::AtomicBool;
use std::time::Duration;

use portcullis_protocol::feed::Revocation;
use portcullis_protocol::sessions::SessionInfo;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::enforce::{Cut, enforce};
use crate::grants::check::tests::grant;
use crate::grants::check::{Denied, check};
use crate::sessions::SessionHandle;

const T0: UnixMillis = 1_800_000_000_000;
const HOUR: i64 = 3600 * 1000;

fn revoked(mut g: GrantEntry, at: UnixMillis) -> GrantEntry {
    g.revoked = Some(Revocation {
        by: "carol".into(),
        reason: Some("done".into()),
        at,
    });
    g
}

fn user(name: &str) -> UserEntry {
    let secret = ServerSecret::mock(b"seed", name);
    UserEntry {
        name: name.into(),
        scram_verifier: secret.to_verifier(),
        ssh_keys: Vec::new(),
    }
}

fn change(revision: u64, event: FeedEvent) -> FeedChange {
    FeedChange {
        revision,
        event,
        at: None,
    }
}

fn grant_ids(table: &GrantTable) -> Vec<String> {
    let mut ids: Vec<String> = table.lookup("alice", "orders").0.into_iter().map(|g| g.id).collect();
    ids.sort();
    ids
}

fn pending(id: &str, user: &str) -> PendingEntry {
    PendingEntry {
        request_id: id.into(),
        user: user.into(),
        resource: "orders".into(),
        role: "read".into(),
        reason: None,
    }
}

fn pending_ids(table: &GrantTable, user: &str) -> Vec<String> {
    let mut ids: Vec<String> = table
        .lookup(user, "orders")
        .1
        .into_iter()
        .map(|p| p.request_id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn pending_requests_are_kept_per_subject_and_closed_by_id() {
    let table = GrantTable::default();
    table.apply_at(change(1, FeedEvent::Pending(pending("r1", "alice"))), T0);
    table.apply_at(change(2, FeedEvent::Pending(pending("r2", "alice"))), T0);
    table.apply_at(change(3, FeedEvent::Pending(pending("r3", "bob"))), T0);
    // The same request again replaces, never duplicates.
    table.apply_at(change(4, FeedEvent::Pending(pending("r1", "alice"))), T0);
    assert_eq!(pending_ids(&table, "alice"), ["r1", "r2"]);
    assert_eq!(pending_ids(&table, "bob"), ["r3"]);
    table.apply_at(
        change(
            5,
            FeedEvent::PendingClosed {
                request_id: "r1".into(),
            },
        ),
        T0,
    );
    assert_eq!(pending_ids(&table, "alice"), ["r2"]);
    table.apply_snapshot_at(
        FeedSnapshot {
            revision: 6,
            epoch: String::new(),
            users: Vec::new(),
            grants: Vec::new(),
            pending: vec![pending("r3", "bob")],
        },
        T0,
    );
    assert!(pending_ids(&table, "alice").is_empty(), "the snapshot closed r2");
    assert_eq!(pending_ids(&table, "bob"), ["r3"]);
    assert_eq!(table.pending.len(), 1, "no empty subject lists are left behind");
}

#[test]
fn snapshot_never_hides_entries_present_on_both_sides() {
    let table = Arc::new(GrantTable::default());
    // Many entries ahead of alice's widen the window a clear-then-refill leaves open.
    let mut users: Vec<UserEntry> = (0..300).map(|i| user(&format!("u{i}"))).collect();
    users.push(user("alice"));
    let mut grants: Vec<GrantEntry> = (0..300)
        .map(|i| {
            let mut g = grant(&format!("g{i}"), "read", 0, i64::MAX);
            g.user = format!("u{i}");
            g
        })
        .collect();
    grants.push(grant("g_alice", "read", 0, i64::MAX));
    let snapshot = FeedSnapshot {
        revision: 1,
        epoch: String::new(),
        users,
        grants,
        pending: Vec::new(),
    };
    table.apply_snapshot_at(snapshot.clone(), T0);

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (table, stop) = (Arc::clone(&table), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut misses = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let (grants, pending) = table.lookup("alice", "orders");
                if table.user_secret("alice").is_none() || check(&grants, &pending, None, T0).is_err() {
                    misses += 1;
                }
            }
            misses
        })
    };
    for _ in 0..200 {
        table.apply_snapshot_at(snapshot.clone(), T0);
    }
    stop.store(true, Ordering::Relaxed);
    assert_eq!(reader.join().ok(), Some(0), "a reader saw alice or her grant vanish");
}

#[test]
fn snapshot_removes_what_it_no_longer_holds_and_keeps_channels() {
    let table = GrantTable::default();
    table.apply_snapshot_at(
        FeedSnapshot {
            revision: 1,
            epoch: String::new(),
            users: vec![user("alice"), user("bob")],
            grants: vec![grant("g1", "read", 0, T0 + HOUR), grant("g2", "admin", 0, T0 + HOUR)],
            pending: vec![PendingEntry {
                request_id: "req_p".into(),
                user: "alice".into(),
                resource: "orders".into(),
                role: "write".into(),
                reason: None,
            }],
        },
        T0,
    );
    let rx1 = table.watch("g1");
    let rx2 = table.watch("g2");
    let extended = grant("g1", "read", 0, T0 + 2 * HOUR);
    table.apply_snapshot_at(
        FeedSnapshot {
            revision: 2,
            epoch: String::new(),
            users: vec![user("alice")],
            grants: vec![extended.clone()],
            pending: Vec::new(),
        },
        T0,
    );
    assert!(table.user_secret("bob").is_none());
    assert!(table.user_secret("alice").is_some());
    assert_eq!(grant_ids(&table), vec!["g1".to_owned()]);
    assert!(table.lookup("alice", "orders").1.is_empty());
    let rx1 = rx1.map(|rx| (rx.has_changed().is_ok(), rx.borrow().clone()));
    assert_eq!(
        rx1,
        Some((true, extended.clone())),
        "g1's channel must survive the snapshot"
    );
    assert_eq!(
        rx2.map(|rx| rx.has_changed().is_err()),
        Some(true),
        "g2's channel must close"
    );
    assert_eq!(table.revision(), 2);
}

#[tokio::test]
async fn revoke_retires_the_channel_after_sessions_see_the_final_state() {
    let table = GrantTable::default();
    table.apply_at(change(1, FeedEvent::Grant(grant("g1", "read", 0, T0 + HOUR))), T0);
    let Some(mut rx) = table.watch("g1") else {
        panic!("no channel for a live grant");
    };
    let gone = revoked(grant("g1", "read", 0, T0 + HOUR), T0 + 10);
    table.apply_at(change(2, FeedEvent::Grant(gone.clone())), T0 + 10);

    assert!(table.grants.is_empty(), "the ended grant kept its channel");
    assert!(
        rx.changed().await.is_ok(),
        "the final state must arrive before the close"
    );
    assert_eq!(*rx.borrow_and_update(), gone);
    assert!(
        rx.changed().await.is_err(),
        "the channel must close once the grant is retired"
    );
    // Refusals still say why.
    let (grants, pending) = table.lookup("alice", "orders");
    assert!(matches!(
        check(&grants, &pending, None, T0 + 20),
        Err(Denied::Revoked { .. })
    ));
}

fn handle() -> SessionHandle {
    SessionHandle {
        info: SessionInfo {
            id: "ses_1".into(),
            user: "alice".into(),
            resource: "orders".into(),
            role: "read".into(),
            protocol: "postgres".into(),
            grant_id: "g1".into(),
            started_at: 0,
            bytes_in: 0,
            bytes_out: 0,
        },
        bytes_in: AtomicU64::new(0),
        bytes_out: AtomicU64::new(0),
        kill: CancellationToken::new(),
        killed_by: std::sync::Mutex::new(None),
        audit_lost: std::sync::OnceLock::new(),
    }
}

#[tokio::test]
async fn enforce_cuts_a_session_of_a_retired_grant_as_revoked() {
    let now = now_millis();
    let table = Arc::new(GrantTable::default());
    table.apply_at(change(1, FeedEvent::Grant(grant("g1", "read", 0, now + HOUR))), now);
    let Some(rx) = table.watch("g1") else {
        panic!("no channel for a live grant");
    };
    let (notices, _keep) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    let h = handle();
    let session = enforce(rx, &[], &h, notices);
    let revoke = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let gone = revoked(grant("g1", "read", 0, now + HOUR), now);
        table.apply_at(change(2, FeedEvent::Grant(gone)), now);
    };
    let (cut, ()) = tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(session, revoke) })
        .await
        .unwrap_or_else(|_| panic!("enforce did not return"));
    assert_eq!(
        cut,
        Cut::Revoked {
            grant_id: "g1".into(),
            by: "carol".into(),
            reason: Some("done".into())
        }
    );

    // A session admitted just before the end, watching afterwards, is cut the same way.
    let Some(late) = table.watch("g1") else {
        panic!("no final state for a just-ended grant");
    };
    let (notices, _keep) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
    assert!(matches!(enforce(late, &[], &h, notices).await, Cut::Revoked { .. }));
}

#[tokio::test]
async fn grants_that_ran_out_are_retired_after_the_grace() {
    let table = GrantTable::default();
    table.apply_at(change(1, FeedEvent::Grant(grant("g1", "read", 0, T0 + HOUR))), T0);
    let Some(mut rx) = table.watch("g1") else {
        panic!("no channel for a live grant");
    };
    table.prune(T0 + HOUR + EXPIRY_GRACE_MS - 1);
    assert_eq!(table.grants.len(), 1, "retired within the grace");
    // Any change once the next sweep is due retires it, no snapshot needed.
    table.apply_at(
        change(2, FeedEvent::UserRemoved { name: "nobody".into() }),
        T0 + HOUR + EXPIRY_GRACE_MS + SWEEP_EVERY_MS,
    );
    assert!(table.grants.is_empty());
    assert!(rx.changed().await.is_ok());
    assert!(rx.changed().await.is_err());
    let (grants, pending) = table.lookup("alice", "orders");
    assert!(matches!(
        check(&grants, &pending, None, T0 + 2 * HOUR),
        Err(Denied::Expired { .. })
    ));
}

#[test]
fn ended_grants_are_bounded_per_role_and_forgotten_after_a_day() {
    let table = GrantTable::default();
    let mut revision = 0;
    let mut next = || {
        revision += 1;
        revision
    };
    for i in 0..50 {
        let start = T0 + i * HOUR;
        let g = grant(&format!("r{i:02}"), "read", start, start + HOUR / 2);
        table.apply_at(change(next(), FeedEvent::Grant(g.clone())), start);
        // Revoked early, or let run out: either way it ended.
        let end = if i % 2 == 0 {
            revoked(g, start + 60_000)
        } else {
            GrantEntry {
                expires_at: start + 60_000,
                ..g
            }
        };
        table.apply_at(change(next(), FeedEvent::Grant(end)), start + 60_000);
    }
    table.apply_at(
        change(
            next(),
            FeedEvent::Grant(grant("w", "write", T0 + 49 * HOUR, T0 + 49 * HOUR + 1)),
        ),
        T0 + 50 * HOUR,
    );
    assert!(table.grants.is_empty());
    assert_eq!(grant_ids(&table), vec!["r49".to_owned(), "w".to_owned()]);
    let (grants, pending) = table.lookup("alice", "orders");
    assert!(matches!(
        check(&grants, &pending, Some("read"), T0 + 50 * HOUR),
        Err(Denied::Expired { grant_id, .. }) if grant_id == "r49"
    ));
    // An older end arriving late does not displace the latest.
    table.apply_at(
        change(
            next(),
            FeedEvent::Grant(revoked(grant("r00", "read", T0, T0 + HOUR), T0)),
        ),
        T0 + 50 * HOUR,
    );
    assert_eq!(grant_ids(&table), vec!["r49".to_owned(), "w".to_owned()]);
    table.prune(T0 + 50 * HOUR + ENDED_RETENTION_MS);
    assert!(grant_ids(&table).is_empty());
    assert!(table.by_subject.is_empty() && table.ended.is_empty());
}

#[test]
fn an_ended_grant_extended_is_live_again() {
    let table = GrantTable::default();
    let g = grant("g1", "read", T0, T0 + HOUR);
    table.apply_at(change(1, FeedEvent::Grant(g.clone())), T0 + 2 * HOUR);
    assert!(table.grants.is_empty());
    let extended = GrantEntry {
        expires_at: T0 + 3 * HOUR,
        ..g
    };
    table.apply_at(change(2, FeedEvent::Grant(extended)), T0 + 2 * HOUR);
    assert!(table.ended.is_empty());
    let (grants, pending) = table.lookup("alice", "orders");
    assert!(check(&grants, &pending, None, T0 + 2 * HOUR).is_ok());
    assert!(table.watch("g1").is_some_and(|rx| rx.has_changed().is_ok()));
}
