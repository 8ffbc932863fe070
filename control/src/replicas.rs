//! Several control replicas on one PostgreSQL store. Every change proxies
//! follow is stored in the store's `feed` table by the transaction that
//! made it (`store::feed`); each replica publishes that table, in revision
//! order, on its own feed hub: at once for its own commits, and for other
//! replicas' when PostgreSQL's NOTIFY says there is more (and every second
//! regardless, should a notification be lost with its connection). So a
//! proxy following any replica sees every change, with the same revision
//! numbers, and can move to another replica without a resync. On the
//! embedded store (one process) changes go to the hub directly.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use portcullis_protocol::feed::FeedEvent;
use portcullis_protocol::secret::Secret;
use tokio::sync::Notify;

use crate::error::ControlError;
use crate::feed::{self, FeedHub};
use crate::store::db::Engine;
use crate::store::feed as table;
use crate::store::{Conn, DbError, Sql, Store, Tx, grants, requests, users};
use crate::time;

/// How often a replica reads what other replicas shared (the feed table,
/// proxies' session reports) without being notified.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// Longest a background loop (expiry, the notification sender) may sleep on
/// a shared store: other replicas make requests and queue notifications
/// (or leave them claimed when they die) that this one hears of only by
/// looking; a look is one short transaction.
const SHARED_SLEEP: Duration = Duration::from_secs(2);

/// The longest sleep of a background loop on `store`: `alone` when this
/// process is the store's only writer, else at most `SHARED_SLEEP`.
pub(crate) fn longest_sleep(store: &Store, alone: Duration) -> Duration {
    if store.shared() { alone.min(SHARED_SLEEP) } else { alone }
}

/// What a proxy needs, as the store holds it now: users, grants that ended
/// less than `feed::RECENT_MS` ago or not yet, and pending requests.
type Snapshot = (
    Vec<portcullis_protocol::feed::UserEntry>,
    Vec<portcullis_protocol::feed::GrantEntry>,
    Vec<portcullis_protocol::feed::PendingEntry>,
);

fn snapshot(db: &mut dyn Sql) -> Result<Snapshot, DbError> {
    let since = time::now().saturating_sub(feed::RECENT_MS);
    let grants = grants::ended_after(db, since)?;
    Ok((users::entries(db)?, grants, requests::pending_entries(db)?))
}

/// The feed hub of a control plane starting on `conn`'s store. On
/// PostgreSQL the snapshot and its revision are read under the write lock,
/// so no change falls between them.
pub(crate) fn load_hub(conn: &mut Conn) -> Result<FeedHub, ControlError> {
    if conn.engine() == Engine::Sqlite {
        let (users, grants, pending) = snapshot(conn)?;
        return Ok(FeedHub::new(users, grants, pending));
    }
    let mut tx = conn.transaction()?;
    let epoch = table::epoch(&mut tx, &feed::new_epoch())?;
    let revision = table::latest(&mut tx)?;
    let (users, grants, pending) = snapshot(&mut tx)?;
    tx.commit()?;
    Ok(FeedHub::at(revision, epoch, users, grants, pending))
}

/// Commits `tx` and publishes `events` on `hub`, in commit order. On
/// PostgreSQL they go through the feed table, and changes other replicas
/// committed before are published first.
pub(crate) fn commit(mut tx: Tx<'_>, events: Vec<FeedEvent>, hub: &FeedHub) -> Result<(), DbError> {
    if tx.engine() == Engine::Sqlite {
        tx.commit()?;
        hub.publish(events);
        return Ok(());
    }
    table::append(&mut tx, &events, time::now())?;
    let stored = table::after(&mut tx, hub.revision(), feed::RING)?;
    tx.commit()?;
    if !hub.publish_stored(stored) {
        // Only a hub that fell behind what the table keeps; the next catch-up resets it.
        tracing::error!("this replica's feed fell behind the store's; it resyncs");
    }
    Ok(())
}

/// Publishes what other replicas stored since the hub's revision; a hub
/// that fell behind what the table keeps is reloaded from the store.
pub(crate) fn catch_up(conn: &mut Conn, hub: &FeedHub) -> Result<(), ControlError> {
    loop {
        let stored = table::after(conn, hub.revision(), feed::RING)?;
        let more = stored.len() == feed::RING;
        if !hub.publish_stored(stored) {
            let mut tx = conn.transaction()?;
            let revision = table::latest(&mut tx)?;
            let (users, grants, pending) = snapshot(&mut tx)?;
            tx.commit()?;
            tracing::warn!(revision, "this replica's feed fell behind the store's; reloaded it");
            hub.reset(revision, users, grants, pending);
            return Ok(());
        }
        if !more {
            return Ok(());
        }
    }
}

/// Announces `events` that change nothing in the store (a kill): on the
/// hub directly, or through the feed table for every replica's proxies.
pub(crate) fn announce(store: &Store, hub: &Arc<FeedHub>, events: Vec<FeedEvent>) {
    if !store.shared() {
        hub.publish(events);
        return;
    }
    let (store, hub) = (store.clone(), Arc::clone(hub));
    tokio::spawn(async move {
        let done = store
            .call(move |conn| -> Result<(), ControlError> {
                let tx = conn.transaction()?;
                Ok(commit(tx, events, &hub)?)
            })
            .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "cannot store a feed event; proxies miss it");
        }
    });
}

/// Keeps `hub` following the store's feed table: LISTEN on a connection of
/// its own (made again when it breaks), and a read every `POLL` regardless.
pub(crate) fn spawn_follower(store: Store, hub: Arc<FeedHub>, url: Secret<String>) {
    tokio::spawn(async move {
        let wake = Arc::new(Notify::new());
        loop {
            let listener = listen(url.expose(), Arc::clone(&wake)).await;
            if let Err(e) = &listener {
                tracing::warn!(error = %e, "cannot LISTEN for feed changes; reading the store every second");
            }
            // Until the listening connection ends (or at once, without one).
            loop {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(POLL) => {}
                }
                let hub = Arc::clone(&hub);
                if let Err(e) = store.call(move |conn| catch_up(conn, &hub)).await {
                    tracing::warn!(error = %e, "cannot read the feed from the store");
                }
                match &listener {
                    Ok((_, task)) if !task.is_finished() => {}
                    _ => break,
                }
            }
        }
    });
}

/// A connection that LISTENs on the feed channel and wakes `wake` at each
/// notification; the task driving it ends when the connection does.
async fn listen(
    url: &str,
    wake: Arc<Notify>,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let config: tokio_postgres::Config = url.parse()?;
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let task = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(_)) => wake.notify_one(),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the feed's LISTEN connection broke");
                    break;
                }
            }
        }
        // Whatever came in before the break is read at once.
        wake.notify_one();
    });
    client.batch_execute(&format!("LISTEN {}", table::CHANNEL)).await?;
    Ok((client, task))
}
