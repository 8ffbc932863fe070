//! Portcullis proxy: the Postgres and SSH listeners, engineer authentication, the
//! in-memory grant table fed by the control plane's feed, and the session
//! registry that cuts sessions at expiry, revocation or kill.
#![forbid(unsafe_code)]

pub mod audit;
pub mod backoff;
pub mod clock;
pub mod enforce;
pub mod grants;
pub mod metrics;
pub mod mock_seed;
pub mod postgres;
pub mod random;
pub mod sessions;
pub mod settings;
pub mod ssh;
pub mod sync;
pub mod tls;
pub mod workers;

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::AuditQueue;
use crate::backoff::LoginBackoff;
use crate::grants::table::GrantTable;
use crate::metrics::ProxyMetrics;
use crate::postgres::cancel::CancelMap;
use crate::postgres::pool::Pool;
use crate::postgres::upstream::ScramKeys;
use crate::sessions::SessionRegistry;
use crate::settings::ProxySettings;
use crate::workers::Workers;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The TLS certificate or key could not be loaded or created.
    #[error("TLS setup failed: {0}")]
    Tls(String),
    /// The session threads could not be started.
    #[error("cannot start the session threads: {0}")]
    Workers(std::io::Error),
    /// Metrics could not be registered.
    #[error("metrics registration failed: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The SSH host key in `data_dir` could not be read or created.
    #[error("SSH host key: {0}")]
    SshHostKey(String),
    /// The mock SCRAM seed in `data_dir` could not be read or created.
    #[error("mock SCRAM seed: {0}")]
    MockSeed(String),
}

/// Everything the listeners share: settings, grants, sessions, TLS, metrics.
pub struct Proxy {
    /// Settings as loaded at start.
    pub settings: ProxySettings,
    /// What the feed told us: users, grants, pending requests.
    pub grants: Arc<GrantTable>,
    /// Live sessions.
    pub sessions: Arc<SessionRegistry>,
    /// Backend keys of live sessions, for CancelRequest.
    pub cancels: CancelMap,
    /// Warm server connections between sessions.
    pub pool: Pool,
    /// Audit events on their way to the audit log.
    pub audit: AuditQueue,
    /// Salted SCRAM keys of upstream roles.
    pub scram_keys: ScramKeys,
    /// Failed-login backoff per (user, address) and per address.
    pub backoff: LoginBackoff,
    /// TLS for clients that send SSLRequest.
    pub tls: tokio_rustls::TlsAcceptor,
    /// Prometheus metrics.
    pub metrics: ProxyMetrics,
    /// Seed for mock SCRAM secrets of unknown users, kept in `data_dir` so fake salts survive restarts.
    pub mock_seed: [u8; 32],
    /// The threads sessions run on.
    pub workers: Workers,
    /// The SSH server settings with the gateway's host key, when `ssh:` is configured.
    pub ssh: Option<Arc<russh::server::Config>>,
    /// Tracks session tasks so shutdown can drain them.
    pub tracker: TaskTracker,
    /// When the control plane was last heard from; decides staleness (split mode).
    pub contact: Arc<sync::contact::Contact>,
}

impl Proxy {
    /// Builds the proxy: loads or creates the TLS certificate and the mock seed, and registers metrics.
    /// `audit` receives the proxy's audit events (none are kept without it).
    pub fn new(
        settings: ProxySettings,
        registry: &prometheus::Registry,
        audit: Option<tokio::sync::mpsc::Sender<portcullis_protocol::audit::AuditEvent>>,
    ) -> Result<Arc<Proxy>, ProxyError> {
        let tls = tls::acceptor(&settings.postgres.tls, &settings.data_dir)?;
        let metrics = ProxyMetrics::register(registry)?;
        let mock_seed = mock_seed::load_or_create(&settings.data_dir)?;
        let ssh = match &settings.ssh {
            Some(listener) => {
                let key = ssh::keys::load_or_create_host_key(&settings.data_dir).map_err(ProxyError::SshHostKey)?;
                Some(Arc::new(ssh::listener::config(key, &listener.ciphers)))
            }
            None => None,
        };
        Ok(Arc::new(Proxy {
            sessions: Arc::new(SessionRegistry::new(metrics.clone())),
            grants: Arc::new(GrantTable::default()),
            cancels: CancelMap::default(),
            pool: Pool::new(settings.postgres.pool),
            audit: AuditQueue::new(audit, metrics.audit_waits.clone(), metrics.audit_depth.clone())
                .map_err(ProxyError::Workers)?,
            scram_keys: ScramKeys::default(),
            backoff: LoginBackoff::default(),
            tls,
            metrics,
            mock_seed,
            ssh,
            tracker: TaskTracker::new(),
            contact: Arc::new(sync::contact::Contact::default()),
            workers: Workers::start(settings.postgres.workers).map_err(ProxyError::Workers)?,
            settings,
        }))
    }

    /// Serves Postgres clients on `listener` until `shutdown` is cancelled.
    pub async fn serve_postgres(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        postgres::listener::serve(self, listener, shutdown).await
    }

    /// Serves SSH clients on `listener` until `shutdown` is cancelled; returns at once without `ssh:`.
    pub async fn serve_ssh(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        if let Some(config) = self.ssh.clone() {
            ssh::listener::serve(self, config, listener, shutdown).await
        }
    }
}
