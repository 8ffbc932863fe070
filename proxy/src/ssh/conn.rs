//! One engineer's SSH connection after authentication: the admission
//! decision, the upstream connection (opened once, on the first channel),
//! the registered session and its enforcer, which cuts every channel with a
//! line on stderr and then ends the connection. The session's audit events
//! start here too: `connect.denied` for a refusal (at admission or from the
//! upstream server), `session.start` once the upstream login succeeded, and
//! `session.end` when the connection is gone, naming how it ended.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use portcullis_protocol::feed::GrantEntry;
use portcullis_protocol::sessions::SessionInfo;
use russh::Disconnect;
use tokio::sync::{OnceCell, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::admission::Admitted;
use super::refusal::Refusal;
use super::upstream::{Upstream, connect};
use crate::audit::SessionAudit;
use crate::clock::now_millis;
use crate::enforce::{Cut, Notice, enforce};
use crate::grants::check::Denied;
use crate::sessions::{Registration, SessionHandle};
use crate::{Proxy, audit};

/// Metric and session label of this protocol.
pub const PROTOCOL: &str = "ssh";
/// How long channels get to deliver the cut line before the connection ends.
const CUT_GRACE: Duration = Duration::from_secs(2);
/// How long a client whose channels were closed by a cut gets to hang up
/// before the gateway disconnects it.
const LEAVE_GRACE: Duration = Duration::from_secs(2);
/// Warnings a slow channel may fall behind by before it skips the oldest.
const NOTICE_BACKLOG: usize = 8;
/// How long the end of a connection waits for its channels' last audit
/// events (an exec's exit status, sftp operations) before `session.end`.
const DRAIN: Duration = Duration::from_secs(3);

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
    /// What every audit event of the session carries, when admitted.
    pub audit: Option<Arc<SessionAudit>>,
    /// How the session ended, as `session.end` spells it; the first to know sets it.
    pub ended: Arc<OnceLock<&'static str>>,
    /// Recordings of this session's pty channels (file names), for `session.end`.
    pub recordings: Mutex<Vec<String>>,
    /// Channels that asked for a pty so far, to name their recordings.
    pub ptys: AtomicU32,
    /// `session.start` was recorded, so `session.end` must be.
    started: AtomicBool,
    began: Instant,
    upstream: OnceCell<Result<Arc<Upstream>, Refusal>>,
}

/// What the handler keeps for the life of the connection; dropping it ends
/// the session's registration and its enforcer.
pub struct Live {
    /// Shared with the channels.
    pub conn: Arc<Conn>,
    _registration: Option<Registration>,
    _enforcer: Option<AbortOnDropHandle<()>>,
    /// The upstream login started as soon as the session was admitted.
    login: Option<JoinHandle<()>>,
}

impl Drop for Live {
    fn drop(&mut self) {
        // A cut, or the server hanging up, came first if either set it.
        let _ = self.conn.ended.set("client_quit");
        let login = self.login.take();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let conn = Arc::clone(&self.conn);
        // Tracked, so shutdown waits for the event to be queued; the handle is not needed.
        drop(conn.proxy.tracker.clone().spawn_on(
            async move {
                // A client that left while the upstream login ran was still
                // admitted: the login ends (bounded by its timeout) and its
                // session.start or connect.denied is recorded, then the end.
                if let Some(login) = login {
                    let _ = login.await;
                }
                conn.bridges.close();
                let _ = tokio::time::timeout(DRAIN, conn.bridges.wait()).await;
                if let Some(e) = conn.end_event() {
                    conn.proxy.audit.record(e).await;
                }
            },
            &runtime,
        ));
    }
}

impl Conn {
    /// Whether the session was cut; no new channel may open then.
    pub fn is_cut(&self) -> bool {
        self.cut.borrow().is_some()
    }

    /// The upstream connection, opened on first use; every channel shares it.
    /// Its outcome is audited once: `session.start`, or `connect.denied`
    /// naming why (e.g. `host_key_mismatch`).
    pub async fn upstream(&self) -> Result<Arc<Upstream>, Refusal> {
        let admitted = self.admission.as_ref().map_err(Clone::clone)?;
        self.upstream
            .get_or_init(|| async {
                let connected = connect(&admitted.target, &admitted.role, Arc::clone(&self.ended)).await;
                match connected {
                    Ok(up) => {
                        self.audit_start().await;
                        Ok(Arc::new(up))
                    }
                    Err(e) => {
                        tracing::info!(user = %self.user, resource = %admitted.resource.name, outcome = e.kind(), "upstream refused: {e}");
                        let refusal = Refusal::Upstream {
                            resource: admitted.resource.name.clone(),
                            detail: e.to_string(),
                        };
                        let mut denied =
                            denied_event(&self.user, Some(&admitted.resource.name), e.kind(), refusal.text(), self.peer);
                        denied.role = Some(admitted.role.name.clone());
                        denied.grant_id = Some(admitted.grant.id.clone());
                        denied.request_id = Some(admitted.grant.request_id.clone());
                        denied.reason.clone_from(&admitted.grant.reason);
                        denied.approvers.clone_from(&admitted.grant.approvers);
                        self.proxy.audit.record(denied).await;
                        Err(refusal)
                    }
                }
            })
            .await
            .clone()
    }

    /// Records `session.start`.
    async fn audit_start(&self) {
        let Some(audit) = &self.audit else { return };
        self.started.store(true, Ordering::SeqCst);
        let mut start = audit.event("session.start");
        start.detail.insert("peer".into(), self.peer.ip().to_string());
        self.proxy.audit.record(start).await;
    }

    /// `session.end`, when `session.start` was recorded.
    fn end_event(&self) -> Option<portcullis_protocol::audit::AuditEvent> {
        let audit = self.audit.as_ref().filter(|_| self.started.load(Ordering::SeqCst))?;
        let (bytes_in, bytes_out) = self.session.as_ref().map_or((0, 0), |s| {
            (s.bytes_in.load(Ordering::Relaxed), s.bytes_out.load(Ordering::Relaxed))
        });
        let mut e = audit.event("session.end");
        let d = &mut e.detail;
        d.insert("ended".into(), (*self.ended.get().unwrap_or(&"client_quit")).to_owned());
        d.insert("bytes_in".into(), bytes_in.to_string());
        d.insert("bytes_out".into(), bytes_out.to_string());
        d.insert("duration_ms".into(), self.began.elapsed().as_millis().to_string());
        let recordings = self.recordings.lock().map(|r| r.join(",")).unwrap_or_default();
        if !recordings.is_empty() {
            d.insert("recording".into(), recordings);
        }
        Some(e)
    }
}

/// Records a refused login (a token not accepted, a login backing off) as a
/// `connect.denied` of `outcome` (e.g. `bad_credentials`), without waiting.
/// The resource is named only when `login` names a configured one.
pub fn audit_login_refused(proxy: &Arc<Proxy>, login: &str, peer: SocketAddr, outcome: &str, why: &str) {
    let name = super::target::parse(login);
    let resource = name
        .resource
        .filter(|r| proxy.settings.resources.iter().any(|c| c.name == *r));
    let e = denied_event(name.user, resource, outcome, why.to_owned(), peer);
    let proxy = Arc::clone(proxy);
    proxy.tracker.clone().spawn(async move { proxy.audit.record(e).await });
}

/// A `connect.denied` event: who, where, and why in the words they read.
fn denied_event(
    user: &str,
    resource: Option<&str>,
    outcome: &str,
    why: String,
    peer: SocketAddr,
) -> portcullis_protocol::audit::AuditEvent {
    let mut e = audit::event("connect.denied", if user.is_empty() { "-" } else { user });
    e.resource = resource.map(str::to_owned);
    let d = &mut e.detail;
    d.insert("protocol".into(), PROTOCOL.into());
    d.insert("outcome".into(), outcome.into());
    d.insert("why".into(), why);
    d.insert("peer".into(), peer.ip().to_string());
    e
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
            asked: Some(a.role.name.clone()),
            user: user.to_owned(),
        });
    }
    let mut registration = None;
    let mut enforcer = None;
    let mut session = None;
    let mut session_audit = None;
    let ended: Arc<OnceLock<&'static str>> = Arc::new(OnceLock::new());
    match (&admission, grant_rx) {
        (Ok(a), Some(grant_rx)) => {
            proxy.metrics.connection(PROTOCOL, &resource, "allowed");
            let info = SessionInfo {
                id: crate::random::session_id(),
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
            session_audit = Some(Arc::new(session_audit_of(a, user, &handle)));
            enforcer = Some(spawn_enforcer(
                proxy,
                Arc::clone(&handle),
                grant_rx,
                CutTo {
                    notices: notices_tx.clone(),
                    bridges: bridges.clone(),
                    ended: Arc::clone(&ended),
                    tx: cut_tx,
                },
                server,
            ));
            session = Some(handle);
            registration = Some(reg);
        }
        (Ok(_), None) => {}
        (Err(refusal), _) => refused(proxy, peer, user, &resource, refusal),
    }
    let conn = Arc::new(Conn {
        proxy: Arc::clone(proxy),
        peer,
        user: user.to_owned(),
        admission,
        session,
        cut: cut_rx,
        notices: notices_tx,
        bridges,
        audit: session_audit,
        ended,
        recordings: Mutex::new(Vec::new()),
        ptys: AtomicU32::new(0),
        started: AtomicBool::new(false),
        began: Instant::now(),
        upstream: OnceCell::new(),
    });
    // The upstream login starts now rather than on the first channel: the
    // session is audited as started (or refused) even if the client opens
    // no channel, and the first command does not wait for the key exchange.
    let login = conn.session.is_some().then(|| {
        let conn = Arc::clone(&conn);
        tokio::spawn(async move {
            let _ = conn.upstream().await;
        })
    });
    Live {
        conn,
        _registration: registration,
        _enforcer: enforcer,
        login,
    }
}

/// Counts, logs and audits a refused session.
fn refused(proxy: &Arc<Proxy>, peer: SocketAddr, user: &str, resource: &str, refusal: &Refusal) {
    proxy.metrics.connection(PROTOCOL, resource, refusal.kind());
    tracing::info!(%peer, user, outcome = refusal.kind(), "ssh session refused: {}", refusal.text());
    let mut denied = denied_event(user, refusal.resource(), refusal.kind(), refusal.text(), peer);
    if let Refusal::Denied { denied: why, asked, .. } = refusal {
        why.annotate(asked.as_deref(), &mut denied);
    }
    let proxy = Arc::clone(proxy);
    proxy
        .tracker
        .clone()
        .spawn(async move { proxy.audit.record(denied).await });
}

/// Where a session's enforcer tells of warnings and of the cut.
struct CutTo {
    /// Warning lines for the open channels.
    notices: broadcast::Sender<String>,
    /// The channel bridges, closed at the cut.
    bridges: TaskTracker,
    /// How the session ended, for its audit.
    ended: Arc<OnceLock<&'static str>>,
    /// The cut's line, for channels opened later.
    tx: watch::Sender<Option<String>>,
}

/// The task that enforces the grant for `handle`'s session: it relays
/// warnings to the channels, and at the cut tells them why, closes them and
/// ends the connection through `server`.
fn spawn_enforcer(
    proxy: &Arc<Proxy>,
    handle: Arc<SessionHandle>,
    grant_rx: watch::Receiver<GrantEntry>,
    to: CutTo,
    server: russh::server::Handle,
) -> AbortOnDropHandle<()> {
    let warn_before = proxy.settings.warn_before.clone();
    let metrics = proxy.metrics.clone();
    AbortOnDropHandle::new(tokio::spawn(async move {
        let (notices, mut notices_rx) = mpsc::channel::<Notice>(NOTICE_BACKLOG);
        let relay_notices = async {
            while let Some(n) = notices_rx.recv().await {
                // No channel open yet is not an error: there is no one to tell.
                let _ = to.notices.send(notice_line(&n));
            }
            // The sender lives in `enforce`, so this point comes only after the cut.
            std::future::pending::<Cut>().await
        };
        let cut = tokio::select! {
            cut = enforce(grant_rx, &warn_before, &handle, notices) => cut,
            cut = relay_notices => cut,
        };
        let text = cut.text(&handle.info.resource, &handle.info.id);
        let _ = to.ended.set(cut.reason());
        metrics.cuts.with_label_values(&[PROTOCOL, cut.reason()]).inc();
        tracing::info!(session = %handle.info.id, reason = cut.reason(), "ssh session cut: {text}");
        let _ = to.tx.send(Some(text.clone()));
        to.bridges.close();
        let _ = tokio::time::timeout(CUT_GRACE, to.bridges.wait()).await;
        // A client whose channels are closed hangs up by itself, and this
        // task is dropped with the connection. Disconnecting at once would
        // race it: OpenSSH exits on a disconnect before writing the stderr
        // it has buffered, so the cut line and exit status would be lost.
        tokio::time::sleep(LEAVE_GRACE).await;
        let _ = server
            .disconnect(Disconnect::ByApplication, format!("portcullis: {text}"), String::new())
            .await;
    }))
}

/// What every audit event of an admitted session carries.
fn session_audit_of(a: &Admitted, user: &str, session: &Arc<SessionHandle>) -> SessionAudit {
    SessionAudit {
        user: user.to_owned(),
        resource: a.resource.name.clone(),
        role: a.role.name.clone(),
        session_id: session.info.id.clone(),
        protocol: PROTOCOL,
        grant_id: a.grant.id.clone(),
        request_id: a.grant.request_id.clone(),
        reason: a.grant.reason.clone(),
        approvers: a.grant.approvers.clone(),
        break_glass: a.grant.break_glass,
        redact_parameters: a.role.redact_parameters,
        wall: now_millis(),
        since: std::time::Instant::now(),
        // Through it the sftp audit cuts a session it can no longer follow.
        handle: Some(Arc::clone(session)),
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
