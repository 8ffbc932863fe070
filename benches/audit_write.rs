//! The audit log's write path: what one statement event costs to make durable.
//!
//! With statement audit on, every statement a proxied session runs becomes
//! one event, so at tens of thousands of statements a second the store's
//! writer thread is the largest cost outside the relay itself (a profile of
//! the load harness put it at ~40% of the proxy's CPU). This measures
//! `AuditLog::append` of batches the size the writer commits under load
//! (128 events, one transaction each: the writer coalesces ~10 ms of
//! events), into a log that already holds 100,000 events, so the indexes are
//! deep and the page cache is not empty-file fast. Events look like the
//! proxy's for a pgbench select: one user, resource and session, a short
//! statement text, its outcome and duration. Throughput is per event.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use portcullis_control::audit::AuditLog;
use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::audit::block::BlockBuilder;

const BATCH: usize = 128;
const PREFILL: usize = 100_000;
const BLOCK: usize = 128;

/// The `n`th statement event of one pgbench-like session.
fn statement(n: u64) -> AuditEvent {
    let detail: BTreeMap<String, String> = [
        ("flow", "simple".to_string()),
        ("class", "SELECT".to_string()),
        ("tables", "pgbench_accounts".to_string()),
        (
            "text",
            format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", n % 100_000),
        ),
        ("outcome", "ok".to_string()),
        ("tag", "SELECT 1".to_string()),
        ("rows", "1".to_string()),
        ("duration_us", (90 + n % 50).to_string()),
        ("protocol", "postgres".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    AuditEvent {
        id: format!("evt_{n:016x}"),
        at: 1_795_000_000_000 + i64::try_from(n / 20).unwrap_or(0),
        action: "statement".into(),
        user: "alice".into(),
        resource: Some("orders".into()),
        role: Some("readonly".into()),
        session_id: Some("ses_0123456789ab".into()),
        grant_id: Some("gr_0123456789ab".into()),
        request_id: Some("req_0123456789ab".into()),
        reason: Some("INC-42 checking balances".into()),
        approvers: vec!["carol".into()],
        detail,
    }
}

fn batch(from: u64) -> Vec<AuditEvent> {
    (from..from + BATCH as u64).map(statement).collect()
}

/// The same statements as `batch`, in blocks of `BLOCK`.
fn blocks(from: u64) -> Vec<AuditEvent> {
    batch(from)
        .chunks(BLOCK)
        .map(|chunk| {
            let mut session = chunk[0].clone();
            session.id = format!("blk_{}", chunk[0].id);
            session.detail = BTreeMap::from([("protocol".to_owned(), "postgres".to_owned())]);
            let mut b = BlockBuilder::new(session);
            for e in chunk {
                b.push(&e.id, e.at, e.detail.clone());
            }
            b.finish()
        })
        .collect()
}

fn audit_write(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let log = AuditLog::open_blocking(dir.path()).expect("open the audit log");
    let mut next = 0u64;
    while next < PREFILL as u64 {
        rt.block_on(log.append(batch(next))).expect("prefill");
        next += BATCH as u64;
    }

    let mut group = c.benchmark_group("audit_write");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("append_128_statements", |b| {
        b.iter_batched(
            || {
                let events = batch(next);
                next += BATCH as u64;
                events
            },
            |events| black_box(rt.block_on(log.append(events)).expect("append")),
            BatchSize::LargeInput,
        )
    });
    // As the proxy stores them: the same statements gathered into blocks of
    // one session's statements (32 here, what 8 busy sessions fill in the
    // proxy's 50 ms gathering window is more), one row and link per block.
    group.bench_function("append_128_statements_in_blocks_of_32", |b| {
        b.iter_batched(
            || {
                let events = blocks(next);
                next += BATCH as u64;
                events
            },
            |events| black_box(rt.block_on(log.append(events)).expect("append")),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, audit_write);
criterion_main!(benches);
