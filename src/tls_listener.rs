//! The HTTP API over TLS (`api.tls`): accepted connections are handshaken
//! in tasks of their own, each bounded in time, and only finished ones are
//! handed to the server, so a client that stalls mid-handshake holds up no
//! other.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::task::AbortOnDropHandle;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them.
const READY: usize = 64;

/// A TCP listener whose connections come out TLS-wrapped.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    _accepting: AbortOnDropHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp`; handshakes run until the listener is dropped.
    pub(crate) fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(READY);
        let accepting = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors, say: wait rather than spin.
                        tracing::warn!(error = %e, "api: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "api: TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "api: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            ready,
            local,
            _accepting: AbortOnDropHandle::new(accepting),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accepting task holds a sender until the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use portcullis_protocol::secret::Secret;
    use portcullis_proxy::sync::client::ControlClient;
    use tokio::io::AsyncWriteExt;
    use tokio_util::sync::CancellationToken;

    use crate::config::TlsFiles;

    /// A private CA's certificate for 127.0.0.1, its key, and the CA file.
    fn private_ca(dir: &std::path::Path) -> (TlsFiles, std::path::PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .and_then(|p| p.self_signed(&key))
            .expect("certificate");
        let files = TlsFiles {
            cert: dir.join("api.crt"),
            key: dir.join("api.key"),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write cert");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        (files, dir.join("api.crt"))
    }

    #[tokio::test]
    async fn proxies_reach_an_https_api_through_their_private_ca_only() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::tempdir().expect("tempdir");
        let (files, ca) = private_ca(dir.path());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route(
                "/v1/json",
                axum::routing::get(|| async { axum::Json(serde_json::json!({ "ok": true })) }),
            );
        let shutdown = CancellationToken::new();
        let served = crate::process::spawn_api(listener, Some(&files), dir.path(), router, shutdown.clone())
            .expect("serve over TLS");

        // A client that stalls in the handshake holds up nobody.
        let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stalled
            .write_all(&[0x16, 0x03, 0x01])
            .await
            .expect("a first byte of a ClientHello");

        let url = format!("https://{addr}");
        let trusting = ControlClient::new(vec![url.clone()], Secret::new("pxt".to_owned()), Some(&ca)).expect("client");
        let answer = tokio::time::timeout(Duration::from_secs(5), trusting.get("/healthz"))
            .await
            .expect("answered while another handshake stalls")
            .expect("the private CA is trusted");
        assert_eq!(answer.status(), 200);

        // The CLI, given the same CA (`--ca-file`, PORTCULLIS_CA_FILE).
        let args = crate::cli::ClientArgs {
            url: url.clone(),
            token: Some("pc_token".to_owned()),
            ca_file: Some(ca.clone()),
        };
        let cli = crate::cli::client::Api::new(&args).expect("the CLI's client");
        assert_eq!(cli.get("/v1/json").await.expect("the CLI trusts the CA")["ok"], true);

        let system_roots = ControlClient::new(vec![url.clone()], Secret::new("pxt".to_owned()), None).expect("client");
        let refused = system_roots.get("/healthz").await.expect_err("an unknown CA");
        assert!(refused.to_string().contains(&url), "{refused}");
        let plain =
            ControlClient::new(vec![format!("http://{addr}")], Secret::new("pxt".to_owned()), None).expect("client");
        assert!(plain.get("/healthz").await.is_err(), "plain HTTP on the TLS port");

        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let Err(err) = ControlClient::new(vec![url], Secret::new("pxt".to_owned()), Some(&not_pem)) else {
            panic!("a CA file without a certificate was taken");
        };
        assert!(err.starts_with("proxy.ca_file:"), "{err}");
        shutdown.cancel();
        drop(stalled);
        let _ = served.await;
    }
}
