//! The end-to-end harness: one PostgreSQL cluster per run (`pg`), one gateway
//! process per test (`gateway`, driven through `clients`), and a
//! tokio-postgres session that records notices, notifications and the
//! moment its connection closed.

pub mod clients;
pub mod gateway;
pub mod pg;
pub mod split;
pub mod sshd;

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::mpsc;
use tokio_postgres::error::DbError;
use tokio_postgres::{AsyncMessage, Client, NoTls, Notification};

pub use gateway::{Gateway, GatewayOptions, Role};

/// Something the connection task saw, outside any query's answer.
#[derive(Debug)]
pub enum Event {
    /// A NoticeResponse.
    Notice(DbError),
    /// A NotificationResponse (LISTEN/NOTIFY).
    Notification(Notification),
    /// The connection ended, with the error if any.
    Closed(Option<String>),
}

/// A tokio-postgres client whose connection task reports events.
pub struct Session {
    /// The client, shareable with tasks that run queries concurrently.
    pub client: Arc<Client>,
    /// Events with the wall-clock time they arrived.
    pub events: mpsc::UnboundedReceiver<(OffsetDateTime, Event)>,
}

/// Connects with `config` (plain TCP), bounded by 20 s.
pub async fn connect(config: &tokio_postgres::Config) -> Result<Session, tokio_postgres::Error> {
    let fut = config.connect(NoTls);
    let (client, mut conn) = match tokio::time::timeout(Duration::from_secs(20), fut).await {
        Ok(r) => r?,
        Err(_) => panic!("connecting through the gateway took over 20 s"),
    };
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let msg = std::future::poll_fn(|cx| conn.poll_message(cx)).await;
            let event = match msg {
                Some(Ok(AsyncMessage::Notice(n))) => Event::Notice(n),
                Some(Ok(AsyncMessage::Notification(n))) => Event::Notification(n),
                Some(Ok(_)) => continue,
                Some(Err(e)) => {
                    let _ = tx.send((now(), Event::Closed(Some(e.to_string()))));
                    return;
                }
                None => {
                    let _ = tx.send((now(), Event::Closed(None)));
                    return;
                }
            };
            let _ = tx.send((now(), event));
        }
    });
    Ok(Session {
        client: Arc::new(client),
        events,
    })
}

impl Session {
    /// The next event within `within`, if any.
    pub async fn next_event(&mut self, within: Duration) -> Option<(OffsetDateTime, Event)> {
        tokio::time::timeout(within, self.events.recv()).await.ok().flatten()
    }

    /// Every event until the connection closes or `within` passes; answers
    /// the events and when it closed.
    pub async fn until_closed(&mut self, within: Duration) -> (Vec<(OffsetDateTime, Event)>, Option<OffsetDateTime>) {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((at, Event::Closed(e)))) => {
                    seen.push((at, Event::Closed(e)));
                    return (seen, Some(at));
                }
                Ok(Some(ev)) => seen.push(ev),
                Ok(None) => return (seen, Some(now())),
                Err(_) => return (seen, None),
            }
        }
    }
}

/// Starts a `pg_sleep(30)` on `s`, cancels it through the gateway with
/// the session's own cancel key once it runs, and answers the SQLSTATE it
/// ended with.
pub async fn cancel_long_query(s: &Session) -> String {
    let token = s.client.cancel_token();
    let client = s.client.clone();
    let query = format!("SELECT pg_sleep(30) AS cancelled_{}", pg::random_hex());
    let sent = query.clone();
    let sleeper = tokio::spawn(async move { client.simple_query(&sent).await.map(drop) });
    running_upstream(&query, 1).await;
    token
        .cancel_query(NoTls)
        .await
        .expect("send CancelRequest through the gateway");
    let result = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the cancelled query should end within 10 s")
        .expect("join");
    let err = result.expect_err("pg_sleep(30) should be cancelled");
    db_error(&err).0
}

/// Waits (at most 10 s) until `n` backends run `query`: a cancel, revoke or
/// terminate sent sooner could reach the server before the query does.
pub async fn running_upstream(query: &str, n: usize) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = '{}'",
        query.replace('\'', "''")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sql = sql.clone();
        let count = tokio::task::spawn_blocking(move || pg::pg().sql("postgres", &sql))
            .await
            .expect("join");
        if count == n.to_string() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`{query}` never ran on {n} backends ({count})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The wall clock, as the API writes times.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Parses an RFC 3339 time from the API.
pub fn parse_time(s: &str) -> OffsetDateTime {
    OffsetDateTime::parse(s, &Rfc3339).unwrap_or_else(|e| panic!("not RFC 3339: {s:?} ({e})"))
}

/// Seconds from `a` to `b` (negative when `b` is earlier).
pub fn secs_between(a: OffsetDateTime, b: OffsetDateTime) -> f64 {
    (b - a).as_seconds_f64()
}

/// SQLSTATE and message of a server error, or panics with what it was.
pub fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => panic!("expected an error from the server, got: {e:?}"),
    }
}

/// stdout, lossy.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr, lossy.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a command succeeded; answers its stdout trimmed.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out).trim().to_owned()
}
