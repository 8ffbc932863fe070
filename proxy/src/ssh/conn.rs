//! One engineer's SSH connection after authentication: the admission
//! decision, the upstream connection (opened once, on the first channel),
//! the registered session and its enforcer, which cuts every channel with a
//! line on stderr and then ends the connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_protocol::sessions::SessionInfo;
use russh::Disconnect;
use tokio::sync::{OnceCell, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::admission::Admitted;
use super::refusal::Refusal;
use super::upstream::{Upstream, connect};
use crate::Proxy;
use crate::clock::now_millis;
use crate::enforce::{Cut, Notice, enforce};
use crate::grants::check::Denied;
use crate::sessions::{Registration, SessionHandle};

/// Metric and session label of this protocol.
pub const PROTOCOL: &str = "ssh";
/// How long channels get to deliver the cut line before the connection ends.
const CUT_GRACE: Duration = Duration::from_secs(2);
/// How long a client whose channels were closed by a cut gets to hang up
/// before the gateway disconnects it.
const LEAVE_GRACE: Duration = Duration::from_secs(2);
/// Warnings a slow channel may fall behind by before it skips the oldest.
const NOTICE_BACKLOG: usize = 8;

/// What the channels of one connection share.
pub struct Conn {
    /// The proxy.
    pub proxy: Arc<Proxy>,
    /// The engineer's address.
    pub peer: SocketAddr,
    /// The engineer.
    pub user: String,
    /// Whether the session may start, and if not why.
    pub admission: Result<Admitted, Refusal>,
    /// The session's shared state, when admitted.
    pub session: Option<Arc<SessionHandle>>,
    /// The line channels print when the session is cut; `None` while it lives.
    pub cut: watch::Receiver<Option<String>>,
    /// Warnings before the cut and news of a moved deadline, for every open channel's stderr.
    pub notices: broadcast::Sender<String>,
    /// The channels' bridge tasks, so a cut can wait for them.
    pub bridges: TaskTracker,
    upstream: OnceCell<Result<Arc<Upstream>, Refusal>>,
}

/// What the handler keeps for the life of the connection; dropping it ends
/// the session's registration and its enforcer.
pub struct Live {
    /// Shared with the channels.
    pub conn: Arc<Conn>,
    _registration: Option<Registration>,
    _enforcer: Option<AbortOnDropHandle<()>>,
}

impl Conn {
    /// Whether the session was cut; no new channel may open then.
    pub fn is_cut(&self) -> bool {
        self.cut.borrow().is_some()
    }

    /// The upstream connection, opened on first use; every channel shares it.
    pub async fn upstream(&self) -> Result<Arc<Upstream>, Refusal> {
        let admitted = self.admission.as_ref().map_err(Clone::clone)?;
        self.upstream
            .get_or_init(|| async {
                connect(&admitted.target, &admitted.role).await.map(Arc::new).map_err(|e| {
                    tracing::info!(user = %self.user, resource = %admitted.resource.name, outcome = e.kind(), "upstream refused: {e}");
                    Refusal::Upstream {
                        resource: admitted.resource.name.clone(),
                        detail: e.to_string(),
                    }
                })
            })
            .await
            .clone()
    }
}

/// Sets up the connection's state once the engineer is authenticated:
/// registers the session when admitted and starts its enforcer, which ends
/// the connection through `server` when the grant does.
pub fn start(
    proxy: &Arc<Proxy>,
    peer: SocketAddr,
    user: &str,
    admission: Result<Admitted, Refusal>,
    server: russh::server::Handle,
    shutdown: &CancellationToken,
) -> Live {
    let (cut_tx, cut_rx) = watch::channel(None);
    let (notices_tx, _) = broadcast::channel(NOTICE_BACKLOG);
    let bridges = TaskTracker::new();
    let resource = match &admission {
        Ok(a) => a.resource.name.clone(),
        Err(_) => "unknown".to_owned(),
    };
    let mut admission = admission;
    let grant_rx = admission.as_ref().ok().and_then(|a| proxy.grants.watch(&a.grant.id));
    if let (Ok(a), None) = (&admission, &grant_rx) {
        // Gone between the check and now: no session may run without its grant's watch.
        admission = Err(Refusal::Denied {
            denied: Box::new(Denied::NoGrant),
            resource: a.resource.name.clone(),
            role_hint: None,
            user: user.to_owned(),
        });
    }
    let mut registration = None;
    let mut enforcer = None;
    let mut session = None;
    match (&admission, grant_rx) {
        (Ok(a), Some(grant_rx)) => {
            proxy.metrics.connection(PROTOCOL, &resource, "allowed");
            {
                let info = SessionInfo {
                    id: format!("ses_{}", crate::random::hex(6).unwrap_or_default()),
                    user: user.to_owned(),
                    resource: resource.clone(),
                    role: a.role.name.clone(),
                    protocol: PROTOCOL.to_owned(),
                    grant_id: a.grant.id.clone(),
                    started_at: now_millis(),
                    bytes_in: 0,
                    bytes_out: 0,
                };
                let reg = proxy.sessions.register(info, shutdown);
                let handle = Arc::clone(&reg.handle);
                tracing::info!(session = %handle.info.id, user, resource = %resource, role = %a.role.name, grant = %a.grant.id, %peer, "ssh session started");
                let warn_before = proxy.settings.warn_before.clone();
                let tracker = bridges.clone();
                let metrics = proxy.metrics.clone();
                let to_channels = notices_tx.clone();
                enforcer = Some(AbortOnDropHandle::new(tokio::spawn({
                    let handle = Arc::clone(&handle);
                    async move {
                        let (notices, mut notices_rx) = mpsc::channel::<Notice>(NOTICE_BACKLOG);
                        let relay_notices = async {
                            while let Some(n) = notices_rx.recv().await {
                                // No channel open yet is not an error: there is no one to tell.
                                let _ = to_channels.send(notice_line(&n));
                            }
                            // The sender lives in `enforce`, so this point comes only after the cut.
                            std::future::pending::<Cut>().await
                        };
                        let cut = tokio::select! {
                            cut = enforce(grant_rx, &warn_before, &handle, notices) => cut,
                            cut = relay_notices => cut,
                        };
                        let text = cut.text(&handle.info.resource, &handle.info.id);
                        metrics.cuts.with_label_values(&[PROTOCOL, cut.reason()]).inc();
                        tracing::info!(session = %handle.info.id, reason = cut.reason(), "ssh session cut: {text}");
                        let _ = cut_tx.send(Some(text.clone()));
                        tracker.close();
                        let _ = tokio::time::timeout(CUT_GRACE, tracker.wait()).await;
                        // A client whose channels are closed hangs up by itself, and this
                        // task is dropped with the connection. Disconnecting at once would
                        // race it: OpenSSH exits on a disconnect before writing the stderr
                        // it has buffered, so the cut line and exit status would be lost.
                        tokio::time::sleep(LEAVE_GRACE).await;
                        let _ = server
                            .disconnect(Disconnect::ByApplication, format!("portcullis: {text}"), String::new())
                            .await;
                    }
                })));
                session = Some(handle);
                registration = Some(reg);
            }
        }
        (Ok(_), None) => {}
        (Err(refusal), _) => {
            proxy.metrics.connection(PROTOCOL, &resource, refusal.kind());
            tracing::info!(%peer, user, outcome = refusal.kind(), "ssh session refused: {}", refusal.text());
        }
    }
    Live {
        conn: Arc::new(Conn {
            proxy: Arc::clone(proxy),
            peer,
            user: user.to_owned(),
            admission,
            session,
            cut: cut_rx,
            notices: notices_tx,
            bridges,
            upstream: OnceCell::new(),
        }),
        _registration: registration,
        _enforcer: enforcer,
    }
}

/// The stderr text of a warning: the sentence, then what can be done.
fn notice_line(n: &Notice) -> String {
    let lead = if n.warning { "warning: " } else { "" };
    match &n.hint {
        Some(hint) => format!("{lead}{}; {hint}", n.text),
        None => format!("{lead}{}", n.text),
    }
}
