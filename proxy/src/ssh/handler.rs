//! The russh server handler, kept thin: each callback hands over to our own
//! functions (`auth`, `admission`, `conn`, `bridge`). A key that is not
//! registered leads to keyboard-interactive, whose instructions say why and
//! whose one prompt takes the Portcullis token instead. Channel requests are
//! answered here, at once, because russh remembers only the latest request's
//! want-reply flag; the bridge forwards them and reports an upstream failure
//! of the command on stderr. `ssh -L` goes to `forward`, where the role's
//! policy allows it; remote forwarding (`-R`), agent forwarding (`-A`) and X11
//! are refused. Each step of the handshake is reported to the listener, which
//! holds the connection to its deadlines.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::admission::admit;
use super::auth::{KEY_REFUSED, TOKEN_PROMPT, TokenCheck, backoff, check_token, key_registered};
use super::bridge;
use super::conn::{self, Live};
use super::forward::{self, Forward};
use super::listener::Phase;
use super::target;
use crate::Proxy;
use crate::sync::contact::stale_text;

/// One client connection's handler.
pub struct SshHandler {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    shutdown: CancellationToken,
    /// The login name whose key (or token) was verified.
    login: Option<String>,
    live: Option<Live>,
    /// Why the last token try failed, told with the next prompt.
    token_refused: Option<TokenCheck>,
    /// The login a key was refused for, last: recorded if nothing else is.
    key_refused: Option<String>,
    /// Whether a refusal of this connection's login is on record.
    refusal_recorded: bool,
    /// How far the handshake got, for the listener's deadlines.
    phase: watch::Sender<Phase>,
    /// Channels that asked for a shell, command or subsystem.
    programs: HashSet<ChannelId>,
}

impl SshHandler {
    /// A handler for a new connection from `peer`.
    pub fn new(proxy: Arc<Proxy>, peer: SocketAddr, shutdown: CancellationToken, phase: watch::Sender<Phase>) -> Self {
        SshHandler {
            proxy,
            peer,
            shutdown,
            login: None,
            live: None,
            token_refused: None,
            key_refused: None,
            refusal_recorded: false,
            phase,
            programs: HashSet::new(),
        }
    }

    /// Key exchange is over once the client asks to authenticate.
    fn logging_in(&self) {
        self.phase.send_if_modified(|p| {
            let was = *p;
            *p = (*p).max(Phase::Login);
            *p != was
        });
    }

    /// Whether the admitted role's policy lets the client set `name`.
    fn env_allowed(&self, name: &str) -> bool {
        self.live
            .as_ref()
            .and_then(|l| l.conn.admission.as_ref().ok())
            .is_some_and(|a| a.role.ssh_policy.env_allowed(name))
    }

    /// A shell, exec or subsystem request: the first of a channel succeeds
    /// (the bridge runs it), any later one fails, as sshd answers it (the
    /// bridge never sends it on: the audit records one program a channel).
    fn program_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), russh::Error> {
        if self.programs.insert(channel) {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }

    /// Records a refused login as `connect.denied` of `outcome`.
    fn record_refusal(&mut self, login: &str, outcome: &str, why: &str) {
        self.refusal_recorded = true;
        conn::audit_login_refused(&self.proxy, login, self.peer, outcome, why);
    }

    fn knows(&self, login: &str, key: &russh::keys::PublicKey) -> bool {
        key_registered(&self.proxy.grants, target::parse(login).user, key)
    }
}

impl Drop for SshHandler {
    /// A connection that ends on refused keys alone, without a login or
    /// another refusal on record, is one `connect.denied`: a client tries
    /// each of its keys in turn, so a refused key alone is not.
    fn drop(&mut self) {
        if self.live.is_some() || self.refusal_recorded {
            return;
        }
        let Some(login) = self.key_refused.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let why = "none of the offered SSH keys is registered for this login";
            conn::audit_login_refused(&self.proxy, &login, self.peer, "bad_credentials", why);
        }
    }
}

/// The methods offered: registered keys first, the token as the fallback
/// (which also carries the reason line: russh sends its banner only before
/// the user is known, so the token prompt's instructions are where a refused
/// key is explained; OpenSSH's BatchMode skips them).
pub fn methods() -> MethodSet {
    MethodSet::from(&[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..])
}

fn reject() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(methods()),
        partial_success: false,
    }
}

/// Why a login backing off is refused.
fn backoff_text(wait: std::time::Duration) -> String {
    format!(
        "too many failed logins for this user or address; try again in {}s",
        wait.as_secs().max(1)
    )
}

/// The keyboard-interactive challenge: the reason line, and the token prompt
/// unless no login can succeed now (`blocked`, why: backing off, or no
/// snapshot of the grant feed yet); then no prompt, nothing would be checked.
fn token_challenge(last: Option<TokenCheck>, blocked: Option<String>) -> Auth {
    let mut instructions = String::new();
    if last == Some(TokenCheck::Refused) {
        instructions.push_str("portcullis: that token was not accepted.\n");
    }
    let prompts: Vec<(Cow<'static, str>, bool)> = match blocked {
        Some(why) => {
            instructions.push_str(&format!("portcullis: {why}."));
            Vec::new()
        }
        None => {
            instructions.push_str(KEY_REFUSED);
            vec![(Cow::Borrowed(TOKEN_PROMPT), false)]
        }
    };
    Auth::Partial {
        name: Cow::Borrowed(""),
        instructions: Cow::Owned(instructions),
        prompts: Cow::Owned(prompts),
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        self.logging_in();
        Ok(reject())
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        self.logging_in();
        // Spares the client a signature for a key that cannot succeed.
        Ok(if self.knows(user, offer.public_key) {
            Auth::Accept
        } else {
            self.key_refused = Some(user.to_owned());
            reject()
        })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if self.knows(user, key.public_key) {
            self.login = Some(user.to_owned());
            Ok(Auth::Accept)
        } else {
            tracing::info!(peer = %self.peer, login = user, "ssh key not registered for this user");
            self.key_refused = Some(user.to_owned());
            Ok(reject())
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        login: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        self.logging_in();
        let user = target::parse(login).user;
        let Some(mut answers) = response else {
            let contact = &self.proxy.contact;
            // A split proxy without the feed's snapshot knows no users yet.
            let stale = contact.refusal().filter(|_| !contact.is_synced()).map(stale_text);
            let blocked = match stale {
                Some(why) => Some(("control_plane_stale", why)),
                None => backoff(&self.proxy, user, self.peer.ip())
                    .err()
                    .map(|wait| ("backoff", backoff_text(wait))),
            };
            if let Some((outcome, why)) = &blocked {
                self.record_refusal(login, outcome, why);
            }
            return Ok(token_challenge(self.token_refused, blocked.map(|(_, why)| why)));
        };
        let Some(token) = answers.next() else {
            // The backoff challenge had no prompt; nothing to check.
            return Ok(reject());
        };
        match check_token(&self.proxy, user, self.peer.ip(), &token).await {
            TokenCheck::Accepted => {
                self.login = Some(login.to_owned());
                Ok(Auth::Accept)
            }
            refused => {
                tracing::info!(peer = %self.peer, login, outcome = ?refused, "ssh token login refused");
                let (outcome, why) = match refused {
                    TokenCheck::Backoff(wait) => ("backoff", backoff_text(wait)),
                    _ => ("bad_credentials", "that token was not accepted".to_owned()),
                };
                self.record_refusal(login, outcome, &why);
                self.token_refused = Some(refused);
                Ok(reject())
            }
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.phase.send_replace(Phase::Done);
        let login = self.login.clone().unwrap_or_default();
        let name = target::parse(&login);
        // Refusals are decided now but told on the first channel, on stderr,
        // where every OpenSSH client shows them.
        let admission = admit(&self.proxy, &name);
        self.live = Some(conn::start(
            &self.proxy,
            self.peer,
            name.user,
            admission,
            session.handle(),
            &self.shutdown,
        ));
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(live) = self.live.as_ref().filter(|l| !l.conn.is_cut()) else {
            // Dropping `reply` refuses the channel: before authentication, or
            // after a cut, while the connection waits to end.
            return Ok(());
        };
        reply.accept().await;
        let conn = Arc::clone(&live.conn);
        conn.bridges
            .spawn(bridge::run(Arc::clone(&conn), channel, session.handle()));
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _cols: u32,
        _rows: u32,
        _px_w: u32,
        _px_h: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only names the role's policy lists pass; the bridge checks again
        // before it forwards one upstream. The value is never logged.
        if self.env_allowed(name) {
            session.channel_success(channel)
        } else {
            tracing::debug!(peer = %self.peer, variable = name, "ssh env refused by policy");
            session.channel_failure(channel)
        }
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        originator_address: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Some(live) = self.live.as_ref() else {
            return Ok(());
        };
        let fwd = Forward {
            host: host_to_connect.to_owned(),
            port: port_to_connect,
            originator: originator_address.to_owned(),
            originator_port,
        };
        let conn = Arc::clone(&live.conn);
        if let Err(reason) = forward::check(&conn, &fwd) {
            tracing::info!(peer = %self.peer, user = %conn.user, destination = %fwd.destination(), "ssh forward refused");
            forward::audit_refused(&conn, &fwd, reason.trim_start_matches("portcullis: ")).await;
            forward::refuse(reply, forward::PROHIBITED, reason).await;
            return Ok(());
        }
        // Off the handler: opening upstream must not hold up the connection's other channels.
        conn.bridges.spawn(forward::run(Arc::clone(&conn), channel, fwd, reply));
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Remote forwarding (`ssh -R`) would open the server's ports to the engineer's side: never.
        tracing::info!(peer = %self.peer, address, port = *port, "ssh remote forwarding refused");
        if let Some(live) = &self.live {
            let listen = forward::host_port(address, *port);
            forward::audit_refused_outright(&live.conn, "remote", "listen", listen, forward::REMOTE_REFUSED).await;
        }
        Ok(false)
    }

    async fn streamlocal_forward(&mut self, socket_path: &str, _session: &mut Session) -> Result<bool, Self::Error> {
        tracing::info!(peer = %self.peer, "ssh remote socket forwarding refused");
        if let Some(live) = &self.live {
            let path = socket_path.to_owned();
            forward::audit_refused_outright(&live.conn, "remote", "listen", path, forward::SOCKET_REFUSED).await;
        }
        Ok(false)
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        tracing::info!(peer = %self.peer, "ssh socket forwarding refused");
        if let Some(live) = &self.live {
            let path = socket_path.to_owned();
            forward::audit_refused_outright(&live.conn, "local", "destination", path, forward::SOCKET_REFUSED).await;
        }
        let why = format!("portcullis: {}", forward::SOCKET_REFUSED);
        forward::refuse(reply, forward::PROHIBITED, why).await;
        Ok(())
    }

    async fn agent_request(&mut self, channel: ChannelId, _session: &mut Session) -> Result<bool, Self::Error> {
        // No agent channel is ever opened back to the client, and none is asked for upstream.
        tracing::debug!(peer = %self.peer, ?channel, "ssh agent forwarding refused");
        Ok(false)
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single: bool,
        _protocol: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)
    }

    async fn shell_request(&mut self, channel: ChannelId, session: &mut Session) -> Result<(), Self::Error> {
        self.program_request(channel, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.program_request(channel, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.program_request(channel, session)
    }

    async fn channel_close(&mut self, channel: ChannelId, _session: &mut Session) -> Result<(), Self::Error> {
        self.programs.remove(&channel);
        Ok(())
    }
}
