//! The shipper over a real spool: delivery in order through failures and
//! restarts, and events the audit log refuses set aside.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntGauge};
use tokio::sync::mpsc;

use super::super::{MAX_REFUSED, REFUSED, ShipMetrics, ShipOptions, Undelivered, spawn_shipper};
use super::*;

fn metrics(depth: &IntGauge) -> ShipMetrics {
    ShipMetrics {
        depth: depth.clone(),
        refused: IntCounter::new("refused_test", "test").expect("counter"),
    }
}

fn fast() -> ShipOptions {
    ShipOptions {
        batch_events: 16,
        batch_bytes: 1 << 20,
        retry_first: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
    }
}

/// Waits up to 10 s for `done`.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_shipper_delivers_everything_once_in_order_through_failures() {
    let dir = Scratch::new();
    let spool = Spool::open(&dir.spool(), small()).expect("open");
    let delivered = Arc::new(Mutex::new(Vec::<String>::new()));
    let calls = Arc::new(Mutex::new(0u32));
    let (got, tries) = (delivered.clone(), calls.clone());
    let deliver = move |batch: &[AuditEvent]| {
        let mut n = tries.lock().expect("lock");
        *n += 1;
        // Down for the first five attempts, and again now and then.
        if *n <= 5 || *n % 4 == 0 {
            return Err(Undelivered::Retry(format!("control plane unreachable (attempt {n})")));
        }
        got.lock().expect("lock").extend(batch.iter().map(|e| e.id.clone()));
        Ok(())
    };
    let gauge = IntGauge::new("spool_depth_test", "test").expect("gauge");
    let metrics = metrics(&gauge);
    let (tx, rx) = mpsc::channel(64);
    let shipper = spawn_shipper(spool, rx, deliver, metrics.clone(), fast()).expect("spawn");
    let sender = std::thread::spawn(move || {
        for i in 0..500 {
            tx.blocking_send(event(i)).expect("send");
        }
    });
    wait_for("every event delivered", || delivered.lock().expect("lock").len() >= 500);
    sender.join().expect("sender");
    assert!(shipper.finish(Duration::from_secs(5)), "queue closed and spool empty");
    assert_eq!(
        *delivered.lock().expect("lock"),
        ids(&events(0..500)),
        "once each, in order"
    );
    assert!(*calls.lock().expect("lock") > 5);
    assert_eq!(gauge.get(), 0);
    let spool = Spool::open(&dir.spool(), small()).expect("reopen");
    assert_eq!(spool.depth(), 0);
}

#[test]
fn a_restarted_shipper_delivers_what_the_stopped_one_left() {
    let dir = Scratch::new();
    let delivered = Arc::new(Mutex::new(Vec::<String>::new()));
    let gauge = IntGauge::new("spool_depth_test", "test").expect("gauge");
    let metrics = metrics(&gauge);
    {
        let spool = Spool::open(&dir.spool(), small()).expect("open");
        let got = delivered.clone();
        // Takes two batches, then the control plane goes away for good.
        let deliver = move |batch: &[AuditEvent]| {
            let mut got = got.lock().expect("lock");
            if got.len() >= 32 {
                return Err(Undelivered::Retry("connection refused".to_owned()));
            }
            got.extend(batch.iter().map(|e| e.id.clone()));
            Ok(())
        };
        let (tx, rx) = mpsc::channel(512);
        let shipper = spawn_shipper(spool, rx, deliver, metrics.clone(), fast()).expect("spawn");
        for i in 0..300 {
            tx.blocking_send(event(i)).expect("send");
        }
        wait_for("the spool to hold the rest", || {
            let n = delivered.lock().expect("lock").len() as i64;
            n >= 32 && gauge.get() == 300 - n
        });
        // Stopped mid-way, with the queue still open.
        drop(shipper);
    }
    let before = delivered.lock().expect("lock").len() as u64;
    let spool = Spool::open(&dir.spool(), small()).expect("reopen");
    assert_eq!(spool.depth(), 300 - before);
    let got = delivered.clone();
    let deliver = move |batch: &[AuditEvent]| {
        got.lock().expect("lock").extend(batch.iter().map(|e| e.id.clone()));
        Ok(())
    };
    let (tx, rx) = mpsc::channel(512);
    let shipper = spawn_shipper(spool, rx, deliver, metrics.clone(), fast()).expect("respawn");
    for i in 300..350 {
        tx.blocking_send(event(i)).expect("send");
    }
    drop(tx);
    assert!(shipper.finish(Duration::from_secs(10)), "everything delivered");
    let delivered = delivered.lock().expect("lock").clone();
    // At least once: with ids deduplicated, every id, in the order first seen.
    let mut seen = HashSet::new();
    let first: Vec<String> = delivered
        .iter()
        .filter(|id| seen.insert((*id).clone()))
        .cloned()
        .collect();
    assert_eq!(first, ids(&events(0..350)));
    assert_eq!(gauge.get(), 0);
}

#[test]
fn events_the_audit_log_refuses_are_set_aside_and_the_rest_delivered() {
    let dir = Scratch::new();
    let spool = Spool::open(&dir.spool(), small()).expect("open");
    let delivered = Arc::new(Mutex::new(Vec::<String>::new()));
    let got = delivered.clone();
    // The audit log refuses any batch that holds event 7 or event 200.
    let bad = |e: &AuditEvent| e.id == "evt_00000007" || e.id == "evt_00000200";
    let deliver = move |batch: &[AuditEvent]| {
        if batch.iter().any(bad) {
            return Err(Undelivered::Refused("400: not an action a proxy records".to_owned()));
        }
        got.lock().expect("lock").extend(batch.iter().map(|e| e.id.clone()));
        Ok(())
    };
    let gauge = IntGauge::new("spool_depth_test", "test").expect("gauge");
    let metrics = metrics(&gauge);
    let (tx, rx) = mpsc::channel(512);
    let shipper = spawn_shipper(spool, rx, deliver, metrics.clone(), fast()).expect("spawn");
    for i in 0..300 {
        tx.blocking_send(event(i)).expect("send");
    }
    drop(tx);
    assert!(shipper.finish(Duration::from_secs(10)), "the spool emptied");
    let good: Vec<AuditEvent> = events(0..300).into_iter().filter(|e| !bad(e)).collect();
    assert_eq!(
        *delivered.lock().expect("lock"),
        ids(&good),
        "the others, once each, in order"
    );
    assert_eq!((metrics.refused.get(), gauge.get()), (2, 0));
    let aside = std::fs::read_to_string(dir.spool().join(REFUSED)).expect("refused.jsonl");
    let aside: Vec<AuditEvent> = aside
        .lines()
        .map(|l| serde_json::from_str(l).expect("an event a line"))
        .collect();
    assert_eq!(ids(&aside), ["evt_00000007", "evt_00000200"]);
    let mode = std::fs::metadata(dir.spool().join(REFUSED))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Offered again at the next open, a line cut short by a crash aside.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.spool().join(REFUSED))
        .expect("append");
    f.write_all(br#"{"id":"evt_torn","at":1,"act"#).expect("torn line");
    drop(f);
    let mut spool = Spool::open(&dir.spool(), small()).expect("reopen");
    assert_eq!(spool.depth(), 2);
    assert!(!dir.spool().join(REFUSED).exists());
    assert_eq!(
        ids(&spool.peek(10, 1 << 20).expect("peek")),
        ["evt_00000007", "evt_00000200"]
    );
}

#[test]
fn past_what_may_be_set_aside_a_refused_event_stays_in_the_queue() {
    let dir = Scratch::new();
    let spool = Spool::open(&dir.spool(), small()).expect("open");
    let full = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.spool().join(REFUSED))
        .expect("create");
    full.set_len(MAX_REFUSED - 10).expect("a sparse file near the bound");
    let err = spool.set_aside(&event(1)).expect_err("past the bound");
    assert_eq!(err.kind(), ErrorKind::StorageFull);
    assert_eq!(
        full.metadata().expect("meta").len(),
        MAX_REFUSED - 10,
        "nothing written"
    );
}
