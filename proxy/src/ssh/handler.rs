//! The russh server handler, kept thin: each callback hands over to our own
//! functions (`auth`, `admission`, `conn`, `bridge`). Channel requests are
//! answered here, at once, because russh remembers only the latest request's
//! want-reply flag; the bridge forwards them and reports an upstream failure
//! of the command on stderr.

use std::net::SocketAddr;
use std::sync::Arc;

use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty};
use tokio_util::sync::CancellationToken;

use super::admission::admit;
use super::auth::key_registered;
use super::bridge;
use super::conn::{self, Live};
use super::target;
use crate::Proxy;

/// One client connection's handler.
pub struct SshHandler {
    proxy: Arc<Proxy>,
    peer: SocketAddr,
    shutdown: CancellationToken,
    /// The login name whose key was verified.
    login: Option<String>,
    live: Option<Live>,
}

impl SshHandler {
    /// A handler for a new connection from `peer`.
    pub fn new(proxy: Arc<Proxy>, peer: SocketAddr, shutdown: CancellationToken) -> Self {
        SshHandler {
            proxy,
            peer,
            shutdown,
            login: None,
            live: None,
        }
    }

    fn knows(&self, login: &str, key: &russh::keys::PublicKey) -> bool {
        key_registered(&self.proxy.grants, target::parse(login).user, key)
    }
}

fn publickey_only() -> Auth {
    Auth::Reject {
        proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
        partial_success: false,
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(publickey_only())
    }

    async fn auth_publickey_offered(&mut self, user: &str, offer: PublicKeyOffer<'_>) -> Result<Auth, Self::Error> {
        // Spares the client a signature for a key that cannot succeed.
        Ok(if self.knows(user, offer.public_key) {
            Auth::Accept
        } else {
            publickey_only()
        })
    }

    async fn auth_publickey(&mut self, user: &str, key: VerifiedPublicKey<'_>) -> Result<Auth, Self::Error> {
        if self.knows(user, key.public_key) {
            self.login = Some(user.to_owned());
            Ok(Auth::Accept)
        } else {
            tracing::info!(peer = %self.peer, login = user, "ssh key not registered for this user");
            Ok(publickey_only())
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
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
        let Some(live) = &self.live else {
            // Dropping `reply` refuses the channel.
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
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // No environment passes until policies name what may.
        session.channel_failure(channel)
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
        session.channel_success(channel)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }
}
