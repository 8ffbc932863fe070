//! A flood of statements only slows the session that sends them: when the
//! audit log stops taking events, the proxy's audit queue fills, the wait is
//! counted, the session's recorder stops the relay (`poll_room` is
//! `Pending`) instead of dropping or growing, and once the log drains every
//! statement arrives, once, in order (in blocks, read apart here).
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use portcullis_protocol::audit::AuditEvent;
use portcullis_protocol::audit::block::expand;
use portcullis_protocol::pg::boundary::Boundary;
use portcullis_proxy::audit::{AuditQueue, SessionAudit};
use portcullis_proxy::postgres::recorder::Recorder;
use tokio::sync::mpsc;

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    let len = i32::try_from(body.len() + 4).expect("a small message");
    m.extend(len.to_be_bytes());
    m.extend(body);
    m
}

fn depth() -> prometheus::IntGauge {
    prometheus::IntGauge::new("depth", "depth").expect("gauge")
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn session() -> Arc<SessionAudit> {
    session_named("ses_flood")
}

fn session_named(id: &str) -> Arc<SessionAudit> {
    Arc::new(SessionAudit {
        user: "alice".into(),
        resource: "orders".into(),
        role: "read".into(),
        session_id: id.into(),
        protocol: "postgres",
        grant_id: "grt_1".into(),
        request_id: "req_1".into(),
        reason: Some("INC-1".into()),
        approvers: vec!["carol".into()],
        break_glass: false,
        redact_parameters: false,
        wall: 1_000,
        since: Instant::now(),
        handle: None,
    })
}

/// One simple-protocol statement and its answer, as the relay forwards them.
fn run_statement(recorder: &mut Recorder, i: usize) {
    recorder.client(&message(b'Q', &cstr(&format!("SELECT {i}"))), true);
    let mut answer = message(b'C', &cstr("SELECT 1"));
    answer.extend(message(b'Z', b"I"));
    recorder.server(&answer, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_holds_the_session_back_and_loses_nothing() {
    let waits = prometheus::IntCounter::new("waits", "waits").expect("counter");
    // The audit log takes one event and then nothing until the test drains it.
    let (log_tx, mut log_rx) = mpsc::channel::<AuditEvent>(1);
    let depth = depth();
    let queue = AuditQueue::new(Some(log_tx), waits.clone(), depth.clone()).expect("audit thread");
    let mut recorder = Recorder::new(session(), queue.statements().expect("a statement queue"));

    // The relay's loop: forward a statement, then ask for room before reading more.
    // Past the queue, what the audit thread holds in open blocks, and the backlog.
    let total = 8_000;
    let mut cx = Context::from_waker(Waker::noop());
    let mut sent = 0;
    while sent < total {
        run_statement(&mut recorder, sent);
        sent += 1;
        if recorder.poll_room(&mut cx, false).is_pending() {
            break;
        }
    }
    assert!(sent < total, "the relay was never held back");
    assert!(waits.get() >= 1, "the wait for room is counted");
    // The audit thread may still take a few items before it is stuck on
    // the stalled log: the relay goes on whenever there is room, until the
    // queue stays full.
    let full = i64::try_from(portcullis_proxy::audit::QUEUE).expect("small");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut still = 0;
    // Until the queue reads full and no room came for 20 looks: on a busy
    // machine the audit thread can take longer than those looks to get stuck.
    while depth.get() < full || still < 20 {
        if recorder.poll_room(&mut cx, false).is_ready() {
            run_statement(&mut recorder, sent);
            sent += 1;
            still = 0;
        } else {
            still += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(Instant::now() < deadline, "the queue never stayed full");
    }
    assert!(sent < total, "the relay is held back for good");
    assert_eq!(depth.get(), full, "the queue shows full while the log stalls");

    // The log drains: the session goes on, and finishes.
    let drained = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(e) = log_rx.recv().await {
            all.push(e);
        }
        all
    });
    while sent < total {
        std::future::poll_fn(|cx| recorder.poll_room(cx, false)).await;
        run_statement(&mut recorder, sent);
        sent += 1;
    }
    recorder.finish().await;
    drop(queue);
    let blocks = drained.await.expect("join");
    assert_eq!(depth.get(), 0, "and empty once drained");
    assert!(
        blocks.len() < total / 10,
        "statements travel in blocks: {} events",
        blocks.len()
    );
    let all: Vec<AuditEvent> = blocks.into_iter().flat_map(|b| expand(0, b)).map(|(_, e)| e).collect();

    let texts: Vec<&str> = all
        .iter()
        .map(|e| e.detail.get("text").map_or("", String::as_str))
        .collect();
    let want: Vec<String> = (0..total).map(|i| format!("SELECT {i}")).collect();
    assert_eq!(texts.len(), total, "every statement, once");
    assert!(texts.iter().zip(&want).all(|(got, want)| got == want), "in order");
    assert!(
        all.iter()
            .all(|e| e.action == "statement" && e.session_id.as_deref() == Some("ses_flood"))
    );
    let ids: std::collections::HashSet<&str> = all.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), total, "distinct event ids");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_session_holds_back_itself_not_a_quiet_one() {
    let waits = prometheus::IntCounter::new("waits", "waits").expect("counter");
    let (log_tx, mut log_rx) = mpsc::channel::<AuditEvent>(1);
    let queue = AuditQueue::new(Some(log_tx), waits, depth()).expect("audit thread");
    let mut flood = Recorder::new(session(), queue.statements().expect("a statement queue"));
    let mut quiet = Recorder::new(
        session_named("ses_quiet"),
        queue.statements().expect("a statement queue"),
    );
    let mut cx = Context::from_waker(Waker::noop());

    // The flood runs until it is held back (the log stalls meanwhile).
    let mut flooded = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while flood.poll_room(&mut cx, false).is_ready() {
        run_statement(&mut flood, flooded);
        flooded += 1;
        assert!(Instant::now() < deadline, "the flood was never held back");
    }
    // The quiet session's statements go on: its own backlog is small.
    for i in 0..20 {
        run_statement(&mut quiet, i);
        assert!(quiet.poll_room(&mut cx, false).is_ready(), "statement {i} held back");
    }

    // The log drains: both finish, and every quiet statement is there.
    let drained = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(e) = log_rx.recv().await {
            all.push(e);
        }
        all
    });
    flood.finish().await;
    quiet.finish().await;
    drop(queue);
    let all: Vec<AuditEvent> = drained
        .await
        .expect("join")
        .into_iter()
        .flat_map(|b| expand(0, b))
        .map(|(_, e)| e)
        .collect();
    let quiet_texts: Vec<&str> = all
        .iter()
        .filter(|e| e.session_id.as_deref() == Some("ses_quiet"))
        .map(|e| e.detail.get("text").map_or("", String::as_str))
        .collect();
    let want: Vec<String> = (0..20).map(|i| format!("SELECT {i}")).collect();
    assert_eq!(quiet_texts, want);
    let flood_count = all
        .iter()
        .filter(|e| e.session_id.as_deref() == Some("ses_flood"))
        .count();
    assert_eq!(flood_count, flooded, "and every flooded one");
}

#[tokio::test]
async fn events_wait_for_room_and_are_counted() {
    let waits = prometheus::IntCounter::new("waits", "waits").expect("counter");
    let (log_tx, mut log_rx) = mpsc::channel::<AuditEvent>(1);
    let queue = Arc::new(AuditQueue::new(Some(log_tx), waits.clone(), depth()).expect("audit thread"));
    // More events than the queue and the log together hold: the sender waits.
    let total = portcullis_proxy::audit::QUEUE + 64;
    let sender = {
        let queue = Arc::clone(&queue);
        tokio::spawn(async move {
            for i in 0..total {
                let mut e = portcullis_proxy::audit::event("session.start", "alice");
                e.detail.insert("n".into(), i.to_string());
                queue.record(e).await;
            }
        })
    };
    // Until the sender is stuck on a full queue, nothing is read.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while waits.get() == 0 {
        assert!(Instant::now() < deadline, "the queue never filled");
        assert!(!sender.is_finished(), "every event was taken without a wait");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut got = Vec::new();
    while got.len() < total {
        match log_rx.recv().await {
            Some(e) => got.push(e.detail.get("n").cloned().unwrap_or_default()),
            None => break,
        }
    }
    sender.await.expect("join");
    let want: Vec<String> = (0..total).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every event, in order");
}

/// The recorder keeps what binary values need to be read as text: the
/// types a Parse declares, or the server's ParameterDescription answering a
/// Describe (tokio-postgres's prepare), as the relay forwards them.
#[tokio::test]
async fn binary_values_are_decoded_through_the_recorder() {
    let waits = prometheus::IntCounter::new("waits", "waits").expect("counter");
    let (log_tx, mut log_rx) = mpsc::channel::<AuditEvent>(16);
    let queue = AuditQueue::new(Some(log_tx), waits, depth()).expect("audit thread");
    let mut recorder = Recorder::new(session(), queue.statements().expect("a statement queue"));

    // prepare: Parse with no types, Describe, Sync; the server types it.
    let mut parse = cstr("s0");
    parse.extend(cstr("SELECT $1::int4 + 1"));
    parse.extend(0i16.to_be_bytes());
    let mut up = message(b'P', &parse);
    up.extend(message(b'D', &[b"S".as_slice(), &cstr("s0")].concat()));
    up.extend(message(b'S', b""));
    recorder.client(&up, true);
    let mut down = message(b'1', b"");
    down.extend(message(
        b't',
        &[1i16.to_be_bytes().as_slice(), &23u32.to_be_bytes()].concat(),
    ));
    down.extend(message(b'n', b""));
    down.extend(message(b'Z', b"I"));
    recorder.server(&down, true);

    // query: Bind with a binary int4, Execute, Sync.
    let mut bind = cstr("");
    bind.extend(cstr("s0"));
    bind.extend(1i16.to_be_bytes());
    bind.extend(1i16.to_be_bytes());
    bind.extend(1i16.to_be_bytes());
    bind.extend(4i32.to_be_bytes());
    bind.extend(41i32.to_be_bytes());
    bind.extend(0i16.to_be_bytes());
    let mut up = message(b'B', &bind);
    up.extend(message(b'E', &[cstr("").as_slice(), &0i32.to_be_bytes()].concat()));
    up.extend(message(b'S', b""));
    recorder.client(&up, true);
    let mut down = message(b'2', b"");
    down.extend(message(b'C', &cstr("SELECT 1")));
    down.extend(message(b'Z', b"I"));
    recorder.server(&down, true);
    recorder.finish().await;
    drop(queue);

    let block = log_rx.recv().await.expect("the statement's block");
    let (_, event) = expand(1, block).pop().expect("one statement");
    assert_eq!(event.detail.get("params").map(String::as_str), Some(r#"["41"]"#));
}

/// Feeds `stream` to `feed` in chunks of `size`, telling it, as the relay
/// does, whether each chunk ends at a message's end.
fn in_chunks(stream: &[u8], size: usize, mut feed: impl FnMut(&[u8], bool)) {
    let mut frames = Boundary::new();
    for chunk in stream.chunks(size) {
        frames.advance(chunk).expect("well-formed");
        feed(chunk, frames.at_boundary());
    }
}

/// A statement over the capture's limit is recorded (cut, with its length)
/// however the relay's reads split it, then the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_statement_is_recorded_at_any_chunking() {
    let huge = format!("SELECT length('{}')", "x".repeat(1 << 20));
    let query = message(b'Q', &cstr(&huge));
    let mut answer = message(b'C', &cstr("SELECT 1"));
    answer.extend(message(b'Z', b"I"));
    for size in [1 << 20, 65_536, 16_384, 8_191, 4_096, 1_000, 5, 1] {
        let waits = prometheus::IntCounter::new("waits", "waits").expect("counter");
        let (log_tx, mut log_rx) = mpsc::channel::<AuditEvent>(64);
        let queue = AuditQueue::new(Some(log_tx), waits, depth()).expect("audit thread");
        let mut recorder = Recorder::new(session(), queue.statements().expect("a statement queue"));
        in_chunks(&query, size, |chunk, whole| recorder.client(chunk, whole));
        in_chunks(&answer, size.min(answer.len()), |chunk, whole| {
            recorder.server(chunk, whole)
        });
        recorder.finish().await;
        drop(queue);
        let mut statements = Vec::new();
        while let Some(e) = log_rx.recv().await {
            statements.extend(expand(1, e).into_iter().map(|(_, e)| e));
        }
        assert_eq!(statements.len(), 1, "chunks of {size}");
        let len = statements[0].detail.get("text_len").map(String::as_str);
        assert_eq!(len, Some((huge.len()).to_string().as_str()), "chunks of {size}");
    }
}
