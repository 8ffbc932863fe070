//! Portcullis control plane: users, resources and policies, the request and
//! approval workflow, grants, history, the HTTP API (docs/API.md) and the
//! grant feed that proxies follow.
#![forbid(unsafe_code)]

mod api;
pub mod audit;
mod bootstrap;
mod catalog;
mod error;
mod feed;
mod ids;
mod metrics;
mod model;
mod notify;
mod proxies;
mod replicas;
mod settings;
mod store;
mod time;
mod token;
mod workflow;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use portcullis_protocol::sessions::SessionDirectory;

pub use api::metrics_response;
pub use error::ControlError;
pub use feed::FeedHub;
pub use notify::settings::{NotifyEvent, NotifySettings, SlackSettings, WebhookSettings};
pub use proxies::ProxyCredential;
pub use proxies::sessions::NoSessions;
pub use settings::{
    AutoApprove, BreakGlass, ControlSettings, DEFAULT_PENDING_TTL, Escalation, Policy, Principals, ReasonRule,
    ResourceKind, ResourceSettings,
};
pub use store::db::DbError;

use crate::audit::AuditLog;
use crate::audit::ship::Shipper;
use crate::catalog::Catalog;
use crate::metrics::Metrics;
use crate::proxies::ProxyAccess;
use crate::proxies::sessions::{RemoteSessions, Sessions};
use crate::store::Store;
use crate::workflow::Workflow;

/// The control plane of one process: the store, the workflow, the feed and
/// the audit log.
pub struct Control {
    workflow: Workflow,
    audit: AuditLog,
    shipper: Shipper,
    gateways: Arc<api::Gateways>,
    data_dir: PathBuf,
    proxies: Arc<ProxyAccess>,
    remote: Arc<RemoteSessions>,
    streams: tokio_util::sync::CancellationToken,
}

impl Control {
    /// Checks the resources, opens (or creates) the store and the audit log
    /// in `data_dir`, creates `admin` on first start, registers metrics on
    /// `registry`, and starts shipping workflow history to the audit log.
    pub async fn open(
        settings: ControlSettings,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Control>, ControlError> {
        let catalog = Arc::new(Catalog::new(settings.resources)?);
        let metrics = Metrics::register(registry)?;
        let data_dir = settings.data_dir;
        let dir = data_dir.clone();
        let postgres = settings.store_postgres;
        let (store, feed, audit) =
            tokio::task::spawn_blocking(move || open_blocking(&dir, postgres.as_ref())).await??;
        let audit = audit.with_metrics(metrics.audit.clone());
        let audit_wake = Arc::new(tokio::sync::Notify::new());
        let shipper = Shipper::new(store.clone(), audit.clone(), Arc::clone(&audit_wake));
        metrics
            .feed_revision
            .set(i64::try_from(feed.revision()).unwrap_or(i64::MAX));
        let workflow = Workflow {
            store,
            catalog,
            feed: Arc::new(feed),
            metrics,
            expiry: Arc::new(tokio::sync::Notify::new()),
            audit_wake,
            notify: Arc::new(notify::Notifier::new(settings.notifications)?),
        };
        // Pending requests are counted once here, then after every commit.
        workflow
            .metrics
            .pending
            .set(i64::try_from(workflow.feed.pending_count()).unwrap_or(i64::MAX));
        tokio::spawn(workflow.clone().run_expiry());
        tokio::spawn(shipper.clone().run());
        if let Some(url) = workflow.store.postgres_url() {
            replicas::spawn_follower(workflow.store.clone(), Arc::clone(&workflow.feed), url.clone());
        }
        let remote = Arc::new(RemoteSessions::new(workflow.store.clone(), Arc::clone(&workflow.feed)));
        remote.spawn_sync();
        Ok(Arc::new(Control {
            proxies: Arc::new(ProxyAccess::new(settings.proxies)),
            remote,
            streams: tokio_util::sync::CancellationToken::new(),
            workflow,
            audit,
            shipper,
            gateways: Arc::new(api::Gateways {
                postgres: settings.gateway_postgres,
                ssh: settings.gateway_ssh,
            }),
            data_dir,
        }))
    }

    /// The grant feed: a snapshot and the changes after it.
    pub fn feed(&self) -> &FeedHub {
        &self.workflow.feed
    }

    /// The audit log, for the writer that drains the proxy's queue into it.
    pub fn audit_log(&self) -> AuditLog {
        self.audit.clone()
    }

    /// Ships the workflow history not in the audit log yet (e.g. at
    /// shutdown); answers how many events were new.
    pub async fn flush_audit(&self) -> Result<usize, ControlError> {
        self.shipper.catch_up().await
    }

    /// Starts the task that delivers queued notifications (webhooks, Slack)
    /// until `shutdown`; what is still queued then is sent after the next start.
    pub fn spawn_notifier(&self, shutdown: tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.workflow.clone().run_sender(shutdown))
    }

    /// Where the built-in admin's token was written on first start.
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join(bootstrap::TOKEN_FILE)
    }

    /// Ends the feed streams of remote proxies (at shutdown: they would
    /// otherwise hold the API's graceful shutdown open for ever).
    pub fn end_feed_streams(&self) {
        self.streams.cancel();
    }

    /// The HTTP API of docs/API.md, with `/metrics` serving `registry`.
    /// `sessions` are the live sessions of a proxy in this process (`NoSessions`
    /// without one); sessions of remote proxies are added to them.
    pub fn router(&self, sessions: Arc<dyn SessionDirectory>, registry: prometheus::Registry) -> axum::Router {
        api::router(api::AppState {
            workflow: self.workflow.clone(),
            sessions: Arc::new(Sessions {
                local: sessions,
                remote: Arc::clone(&self.remote),
            }),
            proxies: Arc::clone(&self.proxies),
            remote: Arc::clone(&self.remote),
            streams: self.streams.clone(),
            registry,
            gateways: Arc::clone(&self.gateways),
            audit: self.audit.clone(),
            recordings: Arc::new(self.data_dir.join(portcullis_protocol::ssh::recording::DIR)),
        })
    }
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Creates the directory, opens the store, creates `admin` if needed, loads
/// what proxies need into a fresh feed, and opens the audit log.
fn open_blocking(
    data_dir: &Path,
    postgres: Option<&portcullis_protocol::secret::Secret<String>>,
) -> Result<(Store, FeedHub, AuditLog), ControlError> {
    std::fs::create_dir_all(data_dir).map_err(|source| ControlError::DataDir {
        path: data_dir.to_path_buf(),
        source,
    })?;
    let location = match postgres {
        Some(url) => store::Location::Postgres(url.clone()),
        None => store::Location::Sqlite(store::path_in(data_dir)),
    };
    let store = Store::open_blocking(&location)?;
    bootstrap::ensure_admin(&store, data_dir)?;
    if !store.shared() {
        // One process holds the embedded store: claims left by the last one are void.
        store.with_blocking(|conn| notify::outbox::release_all(conn).map_err(ControlError::from))?;
    }
    let feed = store.with_blocking(replicas::load_hub)?;
    let audit = AuditLog::open_in(data_dir, postgres)?;
    Ok((store, feed, audit))
}
