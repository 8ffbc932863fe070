//! Hostile or broken clients get a clear error where the protocol allows one
//! and cost nothing else: a healthy session keeps answering throughout.

use std::time::{Duration, Instant};

use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Gateway, GatewayOptions, Session, connect};

const PROTOCOL_3: u32 = 196_608;
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;

/// A gateway and a healthy tokio-postgres session through it.
async fn setup(opts: GatewayOptions) -> (Gateway, Session) {
    let gw = Gateway::start(opts);
    let alice = gw.add_user("alice", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    let s = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("healthy session");
    assert_healthy(&s).await;
    (gw, s)
}

async fn assert_healthy(s: &Session) {
    let row = tokio::time::timeout(
        Duration::from_secs(10),
        s.client.query_one("SELECT count(*) FROM items", &[]),
    )
    .await
    .expect("the healthy session should answer within 10 s")
    .expect("the healthy session should still work");
    assert_eq!(row.get::<_, i64>(0), 1000);
}

/// What the server sent before closing (or before `within` passed).
struct Answer {
    bytes: Vec<u8>,
    closed: bool,
    after: Duration,
}

async fn send_and_read(gw: &Gateway, bytes: &[u8], within: Duration) -> Answer {
    let mut sock = TcpStream::connect(("127.0.0.1", gw.pg_port)).await.expect("connect");
    // The server may close before we finish writing; what it answered is what matters.
    let _ = sock.write_all(bytes).await;
    read_all(&mut sock, within).await
}

async fn read_all(sock: &mut TcpStream, within: Duration) -> Answer {
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + within;
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Answer {
                    bytes,
                    closed: true,
                    after: start.elapsed(),
                };
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Err(_) => {
                return Answer {
                    bytes,
                    closed: false,
                    after: start.elapsed(),
                };
            }
        }
    }
}

/// Fields of the first ErrorResponse: (severity, SQLSTATE, message).
fn error_response(bytes: &[u8]) -> Option<(String, String, String)> {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let tag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len < 4 || rest.len() < 1 + len {
            return None;
        }
        let body = &rest[5..1 + len];
        if tag == b'E' {
            let (mut sev, mut code, mut msg) = (String::new(), String::new(), String::new());
            for field in body.split(|b| *b == 0) {
                let Some((&kind, value)) = field.split_first() else {
                    continue;
                };
                let value = String::from_utf8_lossy(value).into_owned();
                match kind {
                    b'S' => sev = value,
                    b'C' => code = value,
                    b'M' => msg = value,
                    _ => {}
                }
            }
            return Some((sev, code, msg));
        }
        rest = &rest[1 + len..];
    }
    None
}

/// Asserts the answer is a readable FATAL ErrorResponse followed by a close.
fn assert_refused(what: &str, a: &Answer) -> String {
    let (sev, code, msg) = error_response(&a.bytes).unwrap_or_else(|| {
        panic!(
            "{what}: expected an ErrorResponse, got {:?}",
            String::from_utf8_lossy(&a.bytes)
        )
    });
    assert_eq!(sev, "FATAL", "{what}: {msg}");
    assert!(
        code.starts_with("08") || code.starts_with("0A"),
        "{what}: SQLSTATE {code} ({msg})"
    );
    assert!(msg.len() > 10, "{what}: a readable message, got {msg:?}");
    assert!(a.closed, "{what}: the connection should be closed after the error");
    msg
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = PROTOCOL_3.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = u32::try_from(body.len() + 4).expect("small").to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// One frontend message: tag, length, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&u32::try_from(body.len() + 4).expect("small").to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// One backend message: its tag and body.
async fn read_message(sock: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut header = [0u8; 5];
    sock.read_exact(&mut header).await.expect("a message header");
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let mut body = vec![0u8; len.saturating_sub(4)];
    sock.read_exact(&mut body).await.expect("a message body");
    (header[0], body)
}

/// A session through the gateway on a bare socket, logged in by hand with
/// SCRAM (postgres-protocol's client, the one tokio-postgres uses) and
/// standing at its first ReadyForQuery: a client that can then send anything.
async fn raw_login(gw: &Gateway, user: &str, token: &str) -> TcpStream {
    let mut sock = TcpStream::connect(("127.0.0.1", gw.pg_port)).await.expect("connect");
    let hello = startup(&[("user", user), ("database", "orders")]);
    sock.write_all(&hello).await.expect("startup");
    let mut scram = ScramSha256::new(token.as_bytes(), ChannelBinding::unsupported());
    loop {
        let (tag, body) = tokio::time::timeout(Duration::from_secs(10), read_message(&mut sock))
            .await
            .expect("the login should go on within 10 s");
        let code = || u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        match tag {
            b'R' if code() == 10 => {
                let first = scram.message();
                let mut body = b"SCRAM-SHA-256\0".to_vec();
                body.extend_from_slice(&u32::try_from(first.len()).expect("small").to_be_bytes());
                body.extend_from_slice(first);
                sock.write_all(&message(b'p', &body)).await.expect("client-first");
            }
            b'R' if code() == 11 => {
                scram.update(&body[4..]).expect("server-first");
                sock.write_all(&message(b'p', scram.message()))
                    .await
                    .expect("client-final");
            }
            b'R' if code() == 12 => scram.finish(&body[4..]).expect("the server's signature"),
            b'E' => panic!("login refused: {:?}", String::from_utf8_lossy(&body)),
            b'Z' => return sock,
            _ => {}
        }
    }
}

fn code_packet(code: u32) -> Vec<u8> {
    let mut p = 8u32.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_startup_packet() {
    let (mut gw, s) = setup(GatewayOptions::default()).await;
    // Announce 20,000 bytes; send the start of a real startup packet.
    let mut packet = 20_000u32.to_be_bytes().to_vec();
    packet.extend_from_slice(&PROTOCOL_3.to_be_bytes());
    packet.extend_from_slice(b"user\0alice\0database\0orders\0options\0");
    packet.extend(std::iter::repeat_n(b'x', 2000));
    let a = send_and_read(&gw, &packet, Duration::from_secs(10)).await;
    let msg = assert_refused("a 20,000-byte startup packet", &a);
    eprintln!("oversized startup: {msg}");
    // A full 12,000-byte packet is refused too.
    let big = "y".repeat(12_000);
    let a = send_and_read(
        &gw,
        &startup(&[("user", "alice"), ("application_name", &big)]),
        Duration::from_secs(10),
    )
    .await;
    assert_refused("a 12,000-byte startup packet", &a);
    assert_healthy(&s).await;
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_length_under_4() {
    let (mut gw, s) = setup(GatewayOptions::default()).await;
    for len in [0u32, 2, 3] {
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&PROTOCOL_3.to_be_bytes());
        let a = send_and_read(&gw, &packet, Duration::from_secs(10)).await;
        let msg = assert_refused(&format!("a startup length of {len}"), &a);
        eprintln!("length {len}: {msg}");
    }
    assert_healthy(&s).await;
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_startup_length() {
    let (mut gw, s) = setup(GatewayOptions::default()).await;
    for len in [0x7fff_ffffu32, 0xffff_ffff, 1 << 30] {
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&PROTOCOL_3.to_be_bytes());
        packet.extend_from_slice(b"user\0alice\0");
        let a = send_and_read(&gw, &packet, Duration::from_secs(10)).await;
        let msg = assert_refused(&format!("a startup length of {len:#x}"), &a);
        eprintln!("length {len:#x}: {msg}");
    }
    assert_healthy(&s).await;
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bytes() {
    let (mut gw, s) = setup(GatewayOptions::default()).await;
    // An HTTP request on the Postgres port.
    let a = send_and_read(
        &gw,
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(10),
    )
    .await;
    eprintln!("http: {}", assert_refused("an HTTP request", &a));
    // A sane length with an unknown protocol code.
    let a = send_and_read(&gw, &code_packet(0x1234_5678), Duration::from_secs(10)).await;
    eprintln!("unknown code: {}", assert_refused("an unknown protocol code", &a));
    // Protocol 3.0 with parameters that are not NUL-terminated pairs.
    let mut broken = 20u32.to_be_bytes().to_vec();
    broken.extend_from_slice(&PROTOCOL_3.to_be_bytes());
    broken.extend_from_slice(b"user\0alice\0dat");
    let a = send_and_read(&gw, &broken, Duration::from_secs(10)).await;
    eprintln!("broken params: {}", assert_refused("malformed startup parameters", &a));
    // Startup without a user.
    let a = send_and_read(&gw, &startup(&[("database", "orders")]), Duration::from_secs(10)).await;
    let (sev, _, msg) = error_response(&a.bytes)
        .unwrap_or_else(|| panic!("no ErrorResponse for a startup without user: {:?}", a.bytes));
    assert_eq!(sev, "FATAL", "{msg}");
    assert!(a.closed);
    // GSSENCRequest is declined with 'N'; SSLRequest accepted with 'S', and
    // bytes that are not a TLS ClientHello end the connection.
    let mut sock = TcpStream::connect(("127.0.0.1", gw.pg_port)).await.expect("connect");
    sock.write_all(&code_packet(GSSENC_REQUEST)).await.expect("write");
    let mut one = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), sock.read_exact(&mut one))
        .await
        .expect("an answer to GSSENCRequest")
        .expect("read");
    assert_eq!(one[0], b'N', "GSSENCRequest");
    sock.write_all(&code_packet(SSL_REQUEST)).await.expect("write");
    tokio::time::timeout(Duration::from_secs(10), sock.read_exact(&mut one))
        .await
        .expect("an answer to SSLRequest")
        .expect("read");
    assert_eq!(one[0], b'S', "SSLRequest");
    let _ = sock.write_all(b"this is not a TLS ClientHello\r\n").await;
    let a = read_all(&mut sock, Duration::from_secs(10)).await;
    assert!(a.closed, "garbage instead of a ClientHello should end the connection");
    assert_healthy(&s).await;
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshake_is_closed_after_the_timeout() {
    let (mut gw, s) = setup(GatewayOptions {
        handshake_timeout: "1s".into(),
        ..GatewayOptions::default()
    })
    .await;
    // Nothing at all; half a length; a startup packet and then no password.
    let cases: [(&str, Vec<u8>); 3] = [
        ("silent client", Vec::new()),
        ("half a length", vec![0, 0]),
        (
            "no answer to the SASL challenge",
            startup(&[("user", "alice"), ("database", "orders")]),
        ),
    ];
    for (what, bytes) in cases {
        let a = send_and_read(&gw, &bytes, Duration::from_secs(15)).await;
        assert!(a.closed, "{what}: still open after 15 s with handshake_timeout 1s");
        assert!(
            a.after >= Duration::from_millis(700) && a.after <= Duration::from_secs(8),
            "{what}: closed after {:?}, expected about 1 s",
            a.after
        );
        if let Some((sev, code, msg)) = error_response(&a.bytes) {
            assert_eq!(sev, "FATAL", "{what}: {msg}");
            eprintln!("{what}: {code} {msg}");
        }
    }
    // The healthy session authenticated long ago; the timeout does not touch it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_healthy(&s).await;
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_login_flood_is_backed_off() {
    let (mut gw, s) = setup(GatewayOptions::default()).await;
    let mut messages = Vec::new();
    let started = Instant::now();
    for i in 0..30 {
        let cfg = gw.pg_config("alice", &format!("wrong-token-{i}"), "orders");
        match connect(&cfg).await {
            Ok(_) => panic!("login {i} with a wrong token succeeded"),
            Err(e) => {
                let db = e
                    .as_db_error()
                    .unwrap_or_else(|| panic!("failed login {i}: a bare error instead of an ErrorResponse: {e:?}"));
                assert_eq!(db.severity(), "FATAL");
                messages.push((db.code().code().to_owned(), db.message().to_owned()));
            }
        }
        if i % 10 == 9 {
            assert_healthy(&s).await;
        }
    }
    assert_eq!(messages[0].0, "28P01", "{:?}", messages[0]);
    let backed_off: Vec<_> = messages
        .iter()
        .filter(|(_, m)| m.to_lowercase().contains("too many"))
        .collect();
    assert!(
        !backed_off.is_empty(),
        "30 failed logins in {:?} and none was told to back off: {messages:?}",
        started.elapsed()
    );
    eprintln!("backoff: {:?}", backed_off[0]);
    assert_healthy(&s).await;
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_message_after_login_gets_a_fatal_and_ends_the_session_on_record() {
    let mut gw = Gateway::start(GatewayOptions::default());
    let (alice, dave) = (gw.add_user("alice", &[], false), gw.add_user("dave", &[], false));
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&alice, &carol, "orders", None, "1h");
    gw.grant(&dave, &carol, "orders", None, "1h");
    let s = connect(&gw.pg_config("alice", &alice, "orders"))
        .await
        .expect("healthy session");
    let mut sock = raw_login(&gw, "dave", &dave).await;
    // A whole query first, so the session has a statement on record; then a
    // Query whose length (2) is below the header's own 4 bytes.
    sock.write_all(&message(b'Q', b"SELECT 1\0")).await.expect("query");
    loop {
        if read_message(&mut sock).await.0 == b'Z' {
            break;
        }
    }
    let _ = sock.write_all(b"Q\0\0\0\x02").await;
    let a = read_all(&mut sock, Duration::from_secs(10)).await;
    let msg = assert_refused("a Query of length 2", &a);
    let (_, code, _) = error_response(&a.bytes).expect("an ErrorResponse");
    assert_eq!(code, "08P01", "{msg}");
    assert_eq!(
        msg,
        "portcullis: protocol violation: message 'Q' has an invalid length 2; the session is closed"
    );
    assert_healthy(&s).await;

    let ended = gw.audit_until(&["--user", "dave", "--action", "session.end"], |v| !v.is_empty());
    let ended = ended.first().expect("dave's session.end within 30 s");
    assert_eq!(ended["detail"]["ended"], "protocol_violation", "{ended}");
    assert_eq!(
        ended["detail"]["error"], "message 'Q' has an invalid length 2",
        "{ended}"
    );
    let statements = gw.audit_until(&["--user", "dave", "--action", "statement"], |v| !v.is_empty());
    assert_eq!(statements.len(), 1, "{statements:?}");
    assert_eq!(statements[0]["detail"]["text"], "SELECT 1", "{}", statements[0]);
    gw.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_pipelined_past_what_the_audit_follows_are_recorded_by_their_text() {
    let mut gw = Gateway::start(GatewayOptions::default());
    let dave = gw.add_user("dave", &[], false);
    let carol = gw.add_user("carol", &[], false);
    gw.grant(&dave, &carol, "orders", None, "1h");
    let mut sock = raw_login(&gw, "dave", &dave).await;
    // In one write: a Query still running when the audit stops following
    // (one prepared statement past the 10,000 it follows), then a Query
    // sent after: none may run off the record.
    let mut burst = message(b'Q', b"SELECT pg_sleep(0.3), 'still waiting'\0");
    for i in 0..=10_000 {
        burst.extend(message(b'P', format!("s{i}\0SELECT {i}\0\0\0").as_bytes()));
    }
    burst.extend(message(b'Q', b"SELECT 'sent after'\0"));
    let _ = sock.write_all(&burst).await;
    let a = read_all(&mut sock, Duration::from_secs(10)).await;
    let (_, code, msg) = error_response(&a.bytes).expect("an ErrorResponse");
    assert_eq!(code, "54000", "{msg}");

    let recorded = |v: &[serde_json::Value], text: &str| v.iter().any(|e| e["detail"]["text"] == text);
    let statements = gw.audit_until(&["--user", "dave", "--action", "statement"], |v| {
        recorded(v, "SELECT pg_sleep(0.3), 'still waiting'") && recorded(v, "SELECT 10000")
    });
    let outcome = |text: &str| {
        let e = statements.iter().find(|e| e["detail"]["text"] == text);
        e.map(|e| e["detail"]["outcome"].clone())
    };
    assert_eq!(
        outcome("SELECT pg_sleep(0.3), 'still waiting'"),
        Some("not_followed".into()),
        "{statements:#?}"
    );
    assert_eq!(
        outcome("SELECT 10000"),
        Some("not_followed".into()),
        "the Parse that stopped it"
    );
    // Relayed before the cut or not: recorded if it was.
    let sent_after = outcome("SELECT 'sent after'");
    assert!(
        sent_after.is_none() || sent_after == Some("not_followed".into()),
        "{sent_after:?}"
    );
    gw.assert_alive();
}
