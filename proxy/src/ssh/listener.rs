//! The SSH listener: accepts connections and runs each through russh's
//! server with our handler, tracked so shutdown can drain them. A connection
//! gets `handshake_timeout` to send its version line and finish key exchange,
//! then `LOGIN_GRACE` (OpenSSH's LoginGraceTime) to log in, or it is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::server::{Config, run_stream};
use russh::{SshId, cipher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::PROTOCOL;
use super::handler::{SshHandler, methods};
use super::wire::{self, VersionError};
use crate::Proxy;

/// Every rejected authentication takes this long, whatever was wrong.
const AUTH_REJECTION: Duration = Duration::from_millis(300);
/// Version line and key exchange, when the config does not say.
const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// From the connection's start to a successful login: a person may be typing a token.
const LOGIN_GRACE: Duration = Duration::from_secs(120);

/// How far a connection's handshake got; only ever moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Version line and key exchange.
    Kex,
    /// The client has asked to authenticate.
    Login,
    /// Authenticated.
    Done,
}

/// What engineers' clients may encrypt with, unless `ssh.ciphers` says
/// otherwise: AES-GCM only. A client takes the first of its own ciphers
/// that the server offers, and OpenSSH lists ChaCha20-Poly1305 and AES-CTR
/// first; offered those, it would pick them. AES-GCM runs on the CPU's AES
/// instructions (aws-lc) on both sides of the gateway, which decrypts and
/// encrypts every byte relayed: scp through the gateway then keeps up with
/// scp straight to the server (docs/PERFORMANCE.md). Every OpenSSH since
/// 6.2, PuTTY since 0.76 and Go's x/crypto speak it.
pub const DEFAULT_CIPHERS: &[cipher::Name] = &[cipher::AES_256_GCM, cipher::AES_128_GCM];

/// Every cipher `ssh.ciphers` may name.
const KNOWN_CIPHERS: &[cipher::Name] = &[
    cipher::AES_256_GCM,
    cipher::AES_128_GCM,
    cipher::CHACHA20_POLY1305,
    cipher::AES_256_CTR,
    cipher::AES_192_CTR,
    cipher::AES_128_CTR,
];

/// The ciphers `names` (from `ssh.ciphers`) stand for; the error names the unknown one.
pub fn ciphers(names: &[String]) -> Result<Vec<cipher::Name>, String> {
    if names.is_empty() {
        return Err("give at least one cipher".into());
    }
    names
        .iter()
        .map(|n| {
            KNOWN_CIPHERS
                .iter()
                .find(|c| c.as_ref() == n.as_str())
                .copied()
                .ok_or_else(|| {
                    let known: Vec<&str> = KNOWN_CIPHERS.iter().map(AsRef::as_ref).collect();
                    format!("unknown cipher {n:?}; known: {}", known.join(", "))
                })
        })
        .collect()
}

/// The russh server settings, with the gateway's host key and the ciphers offered.
pub fn config(host_key: russh::keys::PrivateKey, ciphers: &[cipher::Name]) -> Config {
    Config {
        server_id: SshId::Standard("SSH-2.0-Portcullis".into()),
        methods: methods(),
        auth_rejection_time: AUTH_REJECTION,
        // OpenSSH probes with "none" first; answering it at once costs nothing.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        nodelay: true,
        inactivity_timeout: None,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Owned(ciphers.to_vec()),
            ..russh::Preferred::default()
        },
        ..Config::default()
    }
}

/// Accepts until `shutdown` is cancelled.
pub async fn serve(proxy: Arc<Proxy>, config: Arc<Config>, listener: TcpListener, shutdown: CancellationToken) {
    let handshake = proxy
        .settings
        .ssh
        .as_ref()
        .map_or(DEFAULT_HANDSHAKE_TIMEOUT, |s| s.handshake_timeout);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let conn = connection(
                    Arc::clone(&proxy),
                    Arc::clone(&config),
                    tcp,
                    peer,
                    shutdown.clone(),
                    handshake,
                );
                proxy.tracker.spawn(conn);
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// One connection, from its version line to its end.
async fn connection(
    proxy: Arc<Proxy>,
    config: Arc<Config>,
    tcp: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    handshake: Duration,
) {
    let started = Instant::now();
    let stop = CancellationToken::new();
    let token = shutdown.child_token();
    let exchanged = tokio::time::timeout_at(
        started + handshake,
        wire::exchange(tcp, &config.server_id, stop.clone()),
    );
    let stream = match exchanged.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(VersionError::NotSsh)) => {
            proxy.metrics.connection(PROTOCOL, "unknown", "bad_version");
            tracing::info!(%peer, "ssh client sent no SSH version line; told it and closed");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "ssh connection closed before its version line");
            return;
        }
        Err(_) => {
            proxy.metrics.connection(PROTOCOL, "unknown", "handshake_timeout");
            tracing::info!(%peer, "ssh connection timed out before its version line");
            return;
        }
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Kex);
    let handler = SshHandler::new(Arc::clone(&proxy), peer, shutdown.child_token(), phase_tx);
    let session = match run_stream(config, stream, handler).await {
        Ok(session) => session,
        Err(e) => {
            tracing::info!(%peer, error = %e, "ssh connection failed during setup");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    let why = tokio::select! {
        result = &mut session => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "ssh connection ended with an error");
            }
            return;
        }
        _ = token.cancelled() => "the Portcullis gateway is shutting down".to_owned(),
        stalled = stalled(phase_rx, started, handshake) => {
            proxy.metrics.connection(PROTOCOL, "unknown", "handshake_timeout");
            tracing::info!(%peer, "ssh connection dropped: {stalled}");
            format!("portcullis: {stalled}")
        }
    };
    let _ = handle
        .disconnect(russh::Disconnect::ByApplication, why, String::new())
        .await;
    // A client stalled in key exchange never reads the disconnect: the stop
    // fails the stream under russh, which ends its task and the socket.
    if tokio::time::timeout(Duration::from_secs(1), &mut session)
        .await
        .is_err()
    {
        stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut session).await;
    }
}

/// Resolves, with what happened, when the handshake misses a deadline;
/// never once the client has logged in.
async fn stalled(mut phase: watch::Receiver<Phase>, started: Instant, handshake: Duration) -> String {
    let steps = [
        (
            Phase::Login,
            started + handshake,
            format!("key exchange did not finish within {}s", handshake.as_secs_f32()),
        ),
        (
            Phase::Done,
            started + LOGIN_GRACE,
            format!("no login within {}s", LOGIN_GRACE.as_secs()),
        ),
    ];
    for (reached, deadline, missed) in steps {
        match tokio::time::timeout_at(deadline, phase.wait_for(|p| *p >= reached)).await {
            Ok(Ok(_)) => {}
            Err(_) => return missed,
            // The handler is gone: the connection is ending by itself.
            Ok(Err(_)) => break,
        }
    }
    std::future::pending().await
}
