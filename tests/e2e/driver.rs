//! tokio-postgres through the gateway: the relay is faithful for the simple
//! and extended protocols, COPY both ways, LISTEN/NOTIFY, large results,
//! cancellation, and the client sees the real backend's key.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, TryStreamExt};
use tokio_postgres::{NoTls, SimpleQueryMessage};

use crate::harness::{Event, Gateway, GatewayOptions, Session, cancel_long_query, connect, db_error};

async fn session(gw: &Gateway, token: &str) -> Session {
    connect(&gw.pg_config("alice", token, "orders"))
        .await
        .expect("connect through the gateway")
}

fn setup() -> (Gateway, String) {
    let gw = Gateway::start(GatewayOptions::default());
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    (gw, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries() {
    let (gw, alice) = setup();
    let s = session(&gw, &alice).await;

    let msgs = s
        .client
        .simple_query("SELECT id, name FROM items WHERE id <= 3 ORDER BY id; SELECT 'two statements'")
        .await
        .expect("simple query");
    let rows: Vec<(String, String)> = msgs
        .iter()
        .filter_map(|m| match m {
            // The second statement's row has one column; `get(1)` would panic on it.
            SimpleQueryMessage::Row(r) if r.columns().len() == 2 => Some((
                r.get(0).unwrap_or_default().to_owned(),
                r.get(1).unwrap_or_default().to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        rows[..3],
        [
            ("1".into(), "item 1".into()),
            ("2".into(), "item 2".into()),
            ("3".into(), "item 3".into())
        ]
    );
    assert_eq!(
        msgs.iter()
            .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
            .count(),
        2
    );

    // Extended protocol: Parse/Bind/Execute with typed parameters, a reused statement.
    let stmt = s
        .client
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .expect("prepare");
    for id in [1i32, 42, 1000] {
        let row = s.client.query_one(&stmt, &[&id]).await.expect("query_one");
        assert_eq!(row.get::<_, String>(0), format!("item {id}"));
    }
    let rows = s
        .client
        .query(
            "SELECT count(*), sum(id)::bigint FROM items WHERE name LIKE $1 AND id > $2",
            &[&"item 1%", &100i32],
        )
        .await
        .expect("query with params");
    assert_eq!(rows[0].get::<_, i64>(0), 100, "ids 101..199 and 1000");
    // An error in the middle of a session leaves it usable.
    let err = s.client.query("SELECT 1/0", &[]).await.expect_err("division by zero");
    assert_eq!(db_error(&err).0, "22012");
    let row = s
        .client
        .query_one("SELECT $1::text || '!'", &[&"still here"])
        .await
        .expect("after an error");
    assert_eq!(row.get::<_, String>(0), "still here!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out() {
    let (gw, alice) = setup();
    let s = session(&gw, &alice).await;

    let out: Vec<u8> = s
        .client
        .copy_out("COPY (SELECT id, name FROM items ORDER BY id) TO STDOUT")
        .await
        .expect("copy out")
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await
        .expect("copy out data");
    let expected: String = (1..=1000).map(|i| format!("{i}\titem {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&out), expected);

    s.client
        .batch_execute("CREATE TEMP TABLE copied (id int, payload text)")
        .await
        .expect("temp table");
    let sink = s
        .client
        .copy_in::<_, std::io::Cursor<Vec<u8>>>("COPY copied FROM STDIN")
        .await
        .expect("copy in");
    let mut sink = std::pin::pin!(sink);
    let mut sent = 0u64;
    for batch in 0..20 {
        let chunk: String = (0..1000)
            .map(|i| {
                let id = batch * 1000 + i;
                format!("{id}\tpayload-{id}-{}\n", "y".repeat(50))
            })
            .collect();
        sent += 1000;
        sink.send(std::io::Cursor::new(chunk.into_bytes()))
            .await
            .expect("copy chunk");
    }
    let rows = sink.as_mut().finish().await.expect("copy finish");
    assert_eq!(rows, sent);
    let row = s
        .client
        .query_one(
            "SELECT count(*), count(DISTINCT id), sum(length(payload))::bigint FROM copied",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(row.get::<_, i64>(0), 20_000);
    assert_eq!(row.get::<_, i64>(1), 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_between_two_sessions() {
    let (gw, alice) = setup();
    let mut listener = session(&gw, &alice).await;
    let talker = session(&gw, &alice).await;
    listener
        .client
        .batch_execute("LISTEN portcullis_e2e")
        .await
        .expect("listen");
    talker
        .client
        .batch_execute("NOTIFY portcullis_e2e, 'hello through the gateway'")
        .await
        .expect("notify");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match listener.next_event(left).await {
            Some((_, Event::Notification(n))) => {
                assert_eq!(n.channel(), "portcullis_e2e");
                assert_eq!(n.payload(), "hello through the gateway");
                break;
            }
            Some((_, Event::Closed(e))) => panic!("the listening session closed: {e:?}"),
            Some(_) => continue,
            None => panic!("no notification within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_result_is_intact() {
    let (gw, alice) = setup();
    let s = session(&gw, &alice).await;
    // Every row is checkable on this side: a padded number and a run of one letter.
    let rows = s
        .client
        .query(
            "SELECT g, lpad(g::text, 32, '0') || repeat(chr(65 + g % 26), 200) AS wide FROM generate_series(1, 200000) g",
            &[],
        )
        .await
        .expect("large query");
    assert_eq!(rows.len(), 200_000);
    let mut bytes = 0usize;
    for (i, row) in rows.iter().enumerate() {
        let g: i32 = row.get(0);
        let wide: &str = row.get(1);
        assert_eq!(g as usize, i + 1, "row order");
        let letter = char::from(b'A' + (g % 26) as u8);
        let expected = format!("{g:0>32}{}", letter.to_string().repeat(200));
        assert_eq!(wide, expected, "row {g}");
        bytes += wide.len();
    }
    assert_eq!(bytes, 200_000 * 232);
    // The session is in a clean state after the big answer.
    let row = s
        .client
        .query_one("SELECT 'after'", &[])
        .await
        .expect("after a large result");
    assert_eq!(row.get::<_, &str>(0), "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_backend() {
    let (gw, alice) = setup();
    let s = session(&gw, &alice).await;
    let bystander = session(&gw, &alice).await;
    let started = Instant::now();
    assert_eq!(cancel_long_query(&s).await, "57014");
    assert!(started.elapsed() < Duration::from_secs(15));
    // The cancelled session and its neighbour both still work.
    let row = s.client.query_one("SELECT 7", &[]).await.expect("after cancel");
    assert_eq!(row.get::<_, i32>(0), 7);
    let row = bystander.client.query_one("SELECT 8", &[]).await.expect("bystander");
    assert_eq!(row.get::<_, i32>(0), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_key_data_is_the_real_backends() {
    let (gw, alice) = setup();
    let s = session(&gw, &alice).await;
    // tokio-postgres keeps BackendKeyData in the cancel token; let it write a
    // CancelRequest into a pipe and read the pid back out of it.
    let (ours, mut theirs) = tokio::io::duplex(64);
    s.client
        .cancel_token()
        .cancel_query_raw(ours, NoTls)
        .await
        .expect("write CancelRequest");
    let mut packet = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut packet)
        .await
        .expect("read CancelRequest");
    assert_eq!(packet.len(), 16, "{packet:?}");
    assert_eq!(packet[4..8], 80_877_102i32.to_be_bytes(), "cancel request code");
    let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
    let row = s.client.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid");
    assert_eq!(
        row.get::<_, i32>(0),
        pid,
        "BackendKeyData should carry the upstream backend's pid"
    );
}
