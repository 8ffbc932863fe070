//! The admission-time grant check against a table of 1,000,000 grants.
//!
//! Every new session asks the in-memory `GrantTable` for the user's grants and
//! pending requests on the resource (`GrantTable::lookup`), then runs the pure
//! `grants::check::check` on them (`proxy/src/postgres/admission.rs`). This
//! runs on the connection path with no call to the control plane, so it must
//! stay flat as the table grows.
//!
//! The table is filled the way the feed fills it (`apply_snapshot`, then
//! `apply` for pending requests): 100,000 users on 4 resources each (of
//! 1,000), 1,000,000 grants in all, every one on its own (user, resource,
//! role) so the table keeps them all (it keeps only the latest ended grant of
//! each, for a day, so refusals can say "expired"); about a third ended in
//! the last day, the rest live, scheduled or revoked. The build checks that
//! lookups find all 1,000,000. A handful of named subjects give the cases
//! measured: allowed, allowed on a named role among several, refused as
//! expired, refused as revoked, and refused with no grant at all. `admit` is
//! lookup + check, what a connection pays; `lookup` and `check` are its two
//! halves, the main cases with 1,000 pending requests in the table. `lookup`
//! scans every pending request, so `lookup_vs_pending` shows how it grows
//! with their number (0, 1,000, 10,000).
//!
//! The table prunes by the wall clock, so grant times are set around the
//! clock read once at the start, and that reading is the "now" every check
//! uses; reading the clock is not in the timings.

use std::collections::HashSet;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_protocol::feed::{
    FeedChange, FeedEvent, FeedSnapshot, GrantEntry, PendingEntry, Revocation, UnixMillis, UserEntry,
};
use portcullis_protocol::scram::ServerSecret;
use portcullis_proxy::clock::now_millis;
use portcullis_proxy::grants::check::{Denied, check};
use portcullis_proxy::grants::table::GrantTable;

const GRANTS: usize = 1_000_000;
const USERS: u64 = 100_000;
const RESOURCES: u64 = 1_000;
const ROLES: [&str; 3] = ["read", "write", "admin"];
/// Pending requests for the main cases.
const PENDING: usize = 1_000;

const HOUR: UnixMillis = 3_600_000;

/// A deterministic stream of pseudo-random numbers (splitmix64).
struct Mix(u64);

impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn user_name(u: u64) -> String {
    format!("user{u:06}")
}

fn resource_name(r: u64) -> String {
    format!("db{r:04}")
}

fn grant(
    n: usize,
    user: &str,
    resource: &str,
    role: &str,
    starts_at: UnixMillis,
    expires_at: UnixMillis,
) -> GrantEntry {
    GrantEntry {
        id: format!("grt_{n:012x}"),
        request_id: format!("req_{n:012x}"),
        user: user.to_owned(),
        resource: resource.to_owned(),
        role: role.to_owned(),
        starts_at,
        expires_at,
        revoked: None,
        reason: None,
        approvers: Vec::new(),
        break_glass: false,
    }
}

/// Live from an hour ago for two more hours.
fn live(n: usize, now: UnixMillis, user: &str, role: &str) -> GrantEntry {
    grant(n, user, "orders", role, now - HOUR, now + 2 * HOUR)
}

/// Ended `ago` hours before now.
fn ended(n: usize, now: UnixMillis, user: &str, role: &str, ago: i64) -> GrantEntry {
    grant(n, user, "orders", role, now - (ago + 1) * HOUR, now - ago * HOUR)
}

/// The named subjects the cases probe, all on resource `orders`.
fn probes(now: UnixMillis) -> Vec<GrantEntry> {
    let mut revoked = live(6, now, "dan", "write");
    revoked.revoked = Some(Revocation {
        by: "carol".into(),
        reason: Some("incident closed".into()),
        at: now - HOUR / 2,
    });
    vec![
        live(0, now, "alice", "read"),
        live(1, now, "bob", "read"),
        live(2, now, "bob", "admin"),
        ended(3, now, "bob", "write", 5),
        ended(4, now, "carol", "read", 2),
        ended(5, now, "carol", "write", 1),
        revoked,
    ]
}

/// Random grant `n`: user `n % USERS`, and for the `n / USERS`th grant of
/// that user one of its resources and a role, so no two share (user,
/// resource, role); a random state.
fn random_grant(n: usize, now: UnixMillis, mix: &mut Mix) -> GrantEntry {
    let u = n as u64 % USERS;
    let k = n as u64 / USERS;
    let r = (u * 7 + k / 3) % RESOURCES;
    let role = ROLES[(k % 3) as usize];
    // Up to 20 hours, in half hours: ended grants stay within the day kept.
    let offset = mix.below(41) as i64 * HOUR / 2;
    let kind = mix.below(100);
    let mut g = grant(n, &user_name(u), &resource_name(r), role, now, now);
    match kind {
        0..35 => (g.starts_at, g.expires_at) = (now - offset - 2 * HOUR, now - offset - 1),
        35..85 => (g.starts_at, g.expires_at) = (now - offset - 1, now + offset + HOUR),
        85..93 => (g.starts_at, g.expires_at) = (now + offset + HOUR, now + offset + 4 * HOUR),
        _ => {
            (g.starts_at, g.expires_at) = (now - offset - HOUR, now + offset + HOUR);
            g.revoked = Some(Revocation {
                by: "admin".into(),
                reason: Some("rotation".into()),
                at: now - offset,
            });
        }
    }
    g
}

/// Users that only the probes use.
const PROBE_USERS: [&str; 5] = ["alice", "bob", "carol", "dan", "zoe"];

/// The table, and the subjects of its grants.
fn build_table(now: UnixMillis) -> (GrantTable, HashSet<(String, String)>) {
    let mut mix = Mix(42);
    let seed = [3u8; 32];
    let names = (0..USERS).map(user_name).chain(PROBE_USERS.map(str::to_owned));
    let users: Vec<UserEntry> = names
        .map(|name| UserEntry {
            scram_verifier: ServerSecret::mock(&seed, &name).to_verifier(),
            name,
            ssh_keys: Vec::new(),
        })
        .collect();
    let mut grants = probes(now);
    let first_random = grants.len();
    grants.extend((first_random..GRANTS).map(|n| random_grant(n, now, &mut mix)));
    assert_eq!(grants.len(), GRANTS);
    let subjects = grants.iter().map(|g| (g.user.clone(), g.resource.clone())).collect();
    let table = GrantTable::default();
    table.apply_snapshot(FeedSnapshot {
        revision: 1,
        epoch: String::new(),
        users,
        grants,
        pending: Vec::new(),
    });
    (table, subjects)
}

/// Adds pending requests (none of them for the probes) until there are `total`.
fn grow_pending(table: &GrantTable, have: &mut usize, total: usize) {
    let mut mix = Mix(7 + *have as u64);
    while *have < total {
        let u = mix.below(USERS);
        table.apply(FeedChange {
            revision: table.revision() + 1,
            event: FeedEvent::Pending(PendingEntry {
                request_id: format!("req_p{:011x}", *have),
                user: user_name(u),
                resource: resource_name((u * 7 + 4) % RESOURCES),
                role: "read".into(),
                reason: None,
            }),
            at: None,
        });
        *have += 1;
    }
}

/// (case, user, role asked for, expected outcome kind)
const CASES: [(&str, &str, Option<&str>, &str); 5] = [
    ("allow", "alice", None, "allow"),
    ("allow_named_role", "bob", Some("admin"), "allow"),
    ("refuse_expired", "carol", None, "expired"),
    ("refuse_revoked", "dan", None, "revoked"),
    ("refuse_no_grant", "zoe", None, "no_grant"),
];

fn admit(
    table: &GrantTable,
    user: &str,
    resource: &str,
    role: Option<&str>,
    now: UnixMillis,
) -> Result<GrantEntry, Denied> {
    let (grants, pending) = table.lookup(user, resource);
    check(&grants, &pending, role, now)
}

fn outcome(r: &Result<GrantEntry, Denied>) -> &'static str {
    match r {
        Ok(_) => "allow",
        Err(d) => d.kind(),
    }
}

fn grant_check(c: &mut Criterion) {
    let now = now_millis();
    let (table, subjects) = build_table(now);
    let held: usize = subjects.iter().map(|(u, r)| table.lookup(u, r).0.len()).sum();
    assert_eq!(held, GRANTS, "the table holds every grant");
    drop(subjects);

    let mut pending = 0;
    lookup_vs_pending(c, &table, pending);
    grow_pending(&table, &mut pending, PENDING);
    lookup_vs_pending(c, &table, pending);
    cases(c, &table, now);
    grow_pending(&table, &mut pending, 10 * PENDING);
    lookup_vs_pending(c, &table, pending);
}

/// `lookup` of the allowed case with `pending` pending requests in the table.
fn lookup_vs_pending(c: &mut Criterion, table: &GrantTable, pending: usize) {
    c.bench_function(&format!("grant_check/lookup_vs_pending/{pending}"), |b| {
        b.iter(|| table.lookup(black_box("alice"), black_box("orders")))
    });
}

/// The cases, with `PENDING` pending requests in the table.
fn cases(c: &mut Criterion, table: &GrantTable, now: UnixMillis) {
    let mut group = c.benchmark_group("grant_check/admit");
    for (name, user, role, expected) in CASES {
        assert_eq!(outcome(&admit(table, user, "orders", role, now)), expected, "{name}");
        group.bench_function(name, |b| {
            b.iter(|| {
                admit(
                    table,
                    black_box(user),
                    black_box("orders"),
                    black_box(role),
                    black_box(now),
                )
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("grant_check/lookup");
    for (name, user, _, _) in CASES {
        group.bench_function(name, |b| b.iter(|| table.lookup(black_box(user), black_box("orders"))));
    }
    group.finish();

    let mut group = c.benchmark_group("grant_check/check");
    for (name, user, role, _) in CASES {
        let (grants, pending) = table.lookup(user, "orders");
        group.bench_function(name, |b| {
            b.iter(|| check(black_box(&grants), black_box(&pending), black_box(role), black_box(now)))
        });
    }
    group.finish();
}

criterion_group!(benches, grant_check);
criterion_main!(benches);
