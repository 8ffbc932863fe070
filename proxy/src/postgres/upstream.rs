//! Logging in to the real server with the role's credentials: TCP, TLS per
//! the resource's `tls:` mode, StartupMessage, then cleartext, md5 or
//! SCRAM-SHA-256 (client side from postgres-protocol) or trust. Everything the
//! server says after AuthenticationOk up to ReadyForQuery is kept to be
//! relayed verbatim, so the engineer sees the real server's parameters and
//! backend key.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use dashmap::DashMap;
use portcullis_protocol::pg::backend::{AuthRequest, parse_auth_request, parse_backend_key_data, parse_error_notice};
use portcullis_protocol::pg::message::{Message, parse_message};
use portcullis_protocol::pg::startup::StartupParams;
use portcullis_protocol::scram::client::{ClientExchange, ClientKeys, SaltParams};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::SCRAM_SHA_256;
use postgres_protocol::message::frontend;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::stream::Stream;
use crate::settings::{PostgresTarget, Role, UpstreamTls};
use crate::tls;

/// How long logging in upstream may take.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest message accepted from upstream during login.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;
/// Startup parameters never forwarded: the proxy sets them, or they are not proxied.
const NOT_FORWARDED: [&str; 3] = ["user", "database", "replication"];

/// Most salted keys kept; past it the cache starts over (salts change only
/// when a role's password does).
const MAX_CACHED_KEYS: usize = 1024;

/// Most PBKDF2 iterations a server may ask for (PostgreSQL's default is
/// 4096): past it a hostile server could stall a session thread.
const MAX_ITERATIONS: u32 = 100_000;

/// What one set of salted keys is good for: this server, this user, this
/// password (by hash), this salt and iteration count. A salt alone is
/// public, so keying on it alone would let one resource's server obtain a
/// proof made with another's password.
#[derive(Clone, PartialEq, Eq, Hash)]
struct KeyId {
    server: String,
    user: String,
    password: [u8; 32],
    salt: SaltParams,
}

/// SCRAM keys per server, user, password, salt and iterations, so only a
/// role's first login pays PBKDF2 (thousands of HMACs, milliseconds of CPU).
#[derive(Default)]
pub struct ScramKeys {
    keys: DashMap<KeyId, ClientKeys>,
}

impl ScramKeys {
    /// The keys for `salt`, derived on a blocking thread the first time.
    async fn get(
        &self,
        target: &PostgresTarget,
        user: &str,
        password: &str,
        salt: SaltParams,
    ) -> Result<ClientKeys, UpstreamError> {
        if salt.iterations > MAX_ITERATIONS {
            return Err(UpstreamError::Auth(format!(
                "the server asks for {} SCRAM iterations, more than the gateway's limit of {MAX_ITERATIONS}",
                salt.iterations
            )));
        }
        let id = KeyId {
            server: format!("{}:{}", target.host, target.port),
            user: user.to_owned(),
            password: Sha256::digest(password.as_bytes()).into(),
            salt,
        };
        if let Some(keys) = self.keys.get(&id) {
            return Ok(keys.clone());
        }
        let (password, salt) = (password.to_owned(), id.salt.clone());
        let keys = tokio::task::spawn_blocking(move || ClientKeys::derive(&password, &salt.salt, salt.iterations))
            .await
            .map_err(|e| UpstreamError::Auth(format!("SCRAM key derivation failed: {e}")))?;
        if self.keys.len() >= MAX_CACHED_KEYS {
            self.keys.clear();
        }
        self.keys.insert(id, keys.clone());
        Ok(keys)
    }
}

/// A logged-in upstream connection.
pub struct Upstream {
    /// The connection.
    pub stream: Stream,
    /// The address the connection reached, where cancels go.
    pub server: std::net::SocketAddr,
    /// The real backend's (pid, secret), for cancels.
    pub backend_key: Option<(i32, Bytes)>,
    /// ParameterStatus, BackendKeyData, notices and ReadyForQuery, verbatim.
    pub greeting: BytesMut,
}

/// Why the upstream login failed; the text never includes a secret.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP or TLS trouble.
    #[error("cannot reach {addr}: {detail}")]
    Connect {
        /// host:port.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// The server said no.
    #[error("the server refused the login as \"{user}\": {message} (SQLSTATE {code})")]
    Refused {
        /// Upstream user.
        user: String,
        /// The server's message.
        message: String,
        /// The server's SQLSTATE.
        code: String,
    },
    /// The server wants a password and none is configured, or an unsupported method.
    #[error("{0}")]
    Auth(String),
    /// The server broke the protocol or closed the connection.
    #[error("protocol error from the server: {0}")]
    Protocol(String),
    /// Login took too long.
    #[error("the server did not complete the login within {0:?}")]
    Timeout(Duration),
}

/// The client's startup parameters that reach the server (sorted, so equal
/// sessions compare equal for the pool).
pub fn forwarded_params(client: &StartupParams) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = client
        .iter()
        .filter(|(k, _)| !NOT_FORWARDED.contains(k) && !k.starts_with("_pq_."))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    params.sort();
    params
}

/// Connects and logs in as `role` with the client's forwarded parameters.
pub async fn connect(
    target: &PostgresTarget,
    role: &Role,
    params: &[(String, String)],
    keys: &ScramKeys,
) -> Result<Upstream, UpstreamError> {
    tokio::time::timeout(LOGIN_TIMEOUT, login(target, role, params, keys))
        .await
        .map_err(|_| UpstreamError::Timeout(LOGIN_TIMEOUT))?
}

async fn login(
    target: &PostgresTarget,
    role: &Role,
    forwarded: &[(String, String)],
    keys: &ScramKeys,
) -> Result<Upstream, UpstreamError> {
    let (mut stream, server) = open(target).await?;
    let mut out = BytesMut::new();
    let params = [("user", role.user.as_str()), ("database", target.database.as_str())]
        .into_iter()
        .chain(forwarded.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(params, &mut out).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
    send(&mut stream, &mut out).await?;

    let mut buf = BytesMut::with_capacity(1024);
    let mut scram: Option<ClientExchange> = None;
    // Only a server whose certificate was checked may see a cleartext password.
    let verified = target.tls == UpstreamTls::VerifyFull && stream.is_tls();
    let mut greeting = BytesMut::new();
    let mut backend_key = None;
    loop {
        let msg = read(&mut stream, &mut buf).await?;
        match msg.tag {
            b'R' => {
                let request = parse_auth_request(msg.body).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                // The salted keys for the server's salt, before the (synchronous) answer.
                let salted = match &request {
                    AuthRequest::SaslContinue(data) => {
                        let salt = ClientExchange::salt_params(data)
                            .map_err(|e| UpstreamError::Auth(format!("SCRAM with the server failed: {e}")))?;
                        let password = role.password.as_ref().map(|p| p.expose().as_str()).unwrap_or_default();
                        Some(keys.get(target, &role.user, password, salt).await?)
                    }
                    _ => None,
                };
                answer_auth(request, role, salted, verified, &mut scram, &mut out)?;
                if !out.is_empty() {
                    send(&mut stream, &mut out).await?;
                }
            }
            b'E' => {
                let e = parse_error_notice(&msg.body).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                return Err(UpstreamError::Refused {
                    user: role.user.clone(),
                    message: e.message,
                    code: e.code,
                });
            }
            b'K' => {
                backend_key = parse_backend_key_data(&msg.body).ok();
                append(&mut greeting, &msg);
            }
            b'Z' => {
                append(&mut greeting, &msg);
                // Anything the server sent after ReadyForQuery (a ParameterStatus
                // on reload, say) belongs to the greeting too, as whole messages.
                while !buf.is_empty() {
                    append(&mut greeting, &read(&mut stream, &mut buf).await?);
                }
                return Ok(Upstream {
                    server,
                    stream,
                    backend_key,
                    greeting,
                });
            }
            // ParameterStatus, NoticeResponse, NegotiateProtocolVersion: the client sees them as the server sent them.
            _ => append(&mut greeting, &msg),
        }
    }
}

fn answer_auth(
    request: AuthRequest,
    role: &Role,
    salted: Option<ClientKeys>,
    verified: bool,
    scram: &mut Option<ClientExchange>,
    out: &mut BytesMut,
) -> Result<(), UpstreamError> {
    let password = || {
        role.password.as_ref().map(|p| p.expose().as_str()).ok_or_else(|| {
            UpstreamError::Auth(format!(
                "the server asks a password for \"{}\" and none is configured",
                role.user
            ))
        })
    };
    let io = |e: std::io::Error| UpstreamError::Protocol(e.to_string());
    match request {
        // After SASL began, only a verified SASLFinal (which clears `scram`) may lead here.
        AuthRequest::Ok if scram.is_some() => Err(UpstreamError::Auth(
            "the server ended SCRAM without proving it knows the password".into(),
        )),
        AuthRequest::Ok => Ok(()),
        AuthRequest::CleartextPassword if !verified => Err(UpstreamError::Auth(format!(
            "the server asks for \"{}\"'s password in cleartext, which the gateway sends only over TLS with \
             a verified certificate: set tls: verify-full on the resource, or use scram-sha-256 in pg_hba.conf",
            role.user
        ))),
        AuthRequest::CleartextPassword => frontend::password_message(password()?.as_bytes(), out).map_err(io),
        AuthRequest::Md5Password { salt } => {
            let hash = md5_hash(role.user.as_bytes(), password()?.as_bytes(), salt);
            frontend::password_message(hash.as_bytes(), out).map_err(io)
        }
        AuthRequest::Sasl { mechanisms } => {
            if !mechanisms.iter().any(|m| m == SCRAM_SHA_256) {
                return Err(UpstreamError::Auth(format!(
                    "unsupported SASL mechanisms: {}",
                    mechanisms.join(", ")
                )));
            }
            password()?;
            let client = ClientExchange::new(&nonce()?);
            frontend::sasl_initial_response(SCRAM_SHA_256, client.first().as_bytes(), out).map_err(io)?;
            *scram = Some(client);
            Ok(())
        }
        AuthRequest::SaslContinue(data) => {
            let client = scram
                .as_mut()
                .ok_or_else(|| UpstreamError::Protocol("SASL continue before start".into()))?;
            let failed = |e| UpstreamError::Auth(format!("SCRAM with the server failed: {e}"));
            password()?;
            let keys = salted.ok_or_else(|| UpstreamError::Protocol("SASL continue without keys".into()))?;
            let reply = client.server_first(&data, &keys).map_err(failed)?;
            frontend::sasl_response(reply.as_bytes(), out).map_err(io)
        }
        AuthRequest::SaslFinal(data) => {
            let client = scram
                .as_mut()
                .ok_or_else(|| UpstreamError::Protocol("SASL final before start".into()))?;
            client
                .server_final(&data)
                .map_err(|e| UpstreamError::Auth(format!("the server's SCRAM signature is wrong: {e}")))?;
            *scram = None;
            Ok(())
        }
        AuthRequest::Unsupported(code) => Err(UpstreamError::Auth(format!(
            "unsupported authentication request {code}"
        ))),
    }
}

/// How long resetting a connection for the pool may take.
const RESET_TIMEOUT: Duration = Duration::from_secs(5);

/// Returns a connection to its state at login with `DISCARD ALL` (as
/// PgBouncer's `server_reset_query`): session settings, prepared statements,
/// temporary tables, LISTENs and advisory locks go. Fails unless the server
/// answers cleanly and is idle outside any transaction.
pub async fn reset(stream: &mut Stream) -> Result<(), UpstreamError> {
    let check = async {
        let mut out = BytesMut::new();
        frontend::query("DISCARD ALL", &mut out).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        send(stream, &mut out).await?;
        let mut buf = BytesMut::new();
        let mut failed = None;
        loop {
            let msg = read(stream, &mut buf).await?;
            match msg.tag {
                b'E' => {
                    let e = parse_error_notice(&msg.body).map_err(|e| UpstreamError::Protocol(e.to_string()))?;
                    failed = Some(e.message);
                }
                b'Z' if failed.is_none() && msg.body.first() == Some(&b'I') && buf.is_empty() => return Ok(()),
                b'Z' => {
                    return Err(UpstreamError::Protocol(
                        failed.unwrap_or_else(|| "the server was not idle after DISCARD ALL".to_owned()),
                    ));
                }
                // CommandComplete, and the ParameterStatus of every reset setting.
                _ => {}
            }
        }
    };
    tokio::time::timeout(RESET_TIMEOUT, check)
        .await
        .map_err(|_| UpstreamError::Timeout(RESET_TIMEOUT))?
}

/// Tells the server the session is over, so it logs no lost connection.
pub async fn terminate(stream: &mut Stream) {
    let mut out = BytesMut::new();
    frontend::terminate(&mut out);
    let bye = async {
        let _ = stream.write_all(&out).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
}

/// A fresh printable SCRAM nonce; no randomness, no login.
fn nonce() -> Result<String, UpstreamError> {
    crate::random::hex(18).map_err(|e| UpstreamError::Auth(format!("no randomness for a SCRAM nonce: {e}")))
}

/// TCP (and TLS per the resource's mode) to the server; answers the stream
/// and the address it reached.
async fn open(target: &PostgresTarget) -> Result<(Stream, std::net::SocketAddr), UpstreamError> {
    let addr = format!("{}:{}", target.host, target.port);
    let fail = |detail: String| UpstreamError::Connect {
        addr: addr.clone(),
        detail,
    };
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| fail(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let server = tcp.peer_addr().map_err(|e| fail(e.to_string()))?;
    if target.tls == UpstreamTls::Disable {
        return Ok((Stream::Plain(tcp), server));
    }
    let mut tcp = tcp;
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    tcp.write_all(&req).await.map_err(|e| fail(e.to_string()))?;
    let answer = tcp.read_u8().await.map_err(|e| fail(e.to_string()))?;
    if answer != b'S' {
        return match target.tls {
            UpstreamTls::Prefer => Ok((Stream::Plain(tcp), server)),
            _ => Err(fail(
                "the server does not offer TLS and the resource requires it".into(),
            )),
        };
    }
    let config = tls::upstream_config(target.tls, target.ca_file.as_deref()).map_err(|e| fail(e.to_string()))?;
    let name = tls::server_name(&target.host).map_err(|e| fail(e.to_string()))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS: {e}")))?;
    Ok((Stream::Client(Box::new(tls)), server))
}

async fn send(stream: &mut Stream, out: &mut BytesMut) -> Result<(), UpstreamError> {
    let io = |e: std::io::Error| UpstreamError::Protocol(e.to_string());
    stream.write_all(out).await.map_err(io)?;
    // Over TLS the message may otherwise wait in rustls.
    stream.flush().await.map_err(io)?;
    out.clear();
    Ok(())
}

async fn read(stream: &mut Stream, buf: &mut BytesMut) -> Result<Message, UpstreamError> {
    loop {
        if let Some(msg) = parse_message(buf, MAX_LOGIN_MESSAGE).map_err(|e| UpstreamError::Protocol(e.to_string()))? {
            return Ok(msg);
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| UpstreamError::Protocol(e.to_string()))?;
        if n == 0 {
            return Err(UpstreamError::Protocol(
                "the server closed the connection during login".into(),
            ));
        }
    }
}

fn append(out: &mut BytesMut, msg: &Message) {
    out.put_u8(msg.tag);
    out.put_u32((msg.body.len() + 4) as u32);
    out.put_slice(&msg.body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: u16) -> PostgresTarget {
        PostgresTarget {
            host: "127.0.0.1".into(),
            port,
            database: "orders".into(),
            tls: UpstreamTls::Disable,
            ca_file: None,
        }
    }

    fn salt(s: &[u8], iterations: u32) -> SaltParams {
        SaltParams {
            salt: s.to_vec(),
            iterations,
        }
    }

    #[tokio::test]
    async fn salted_keys_are_kept_per_server_user_password_and_salt() {
        let cache = ScramKeys::default();
        let a = target(5432);
        let first = cache
            .get(&a, "orders_ro", "pw", salt(b"s1", 4096))
            .await
            .expect("derive");
        // The same login again is served from the cache, not PBKDF2.
        assert_eq!(
            cache
                .get(&a, "orders_ro", "pw", salt(b"s1", 4096))
                .await
                .expect("cached"),
            first
        );
        assert_eq!(cache.keys.len(), 1);
        // Another password with the same (public) salt never gets these keys.
        let other = cache
            .get(&a, "orders_ro", "other", salt(b"s1", 4096))
            .await
            .expect("derive");
        assert_ne!(other, first);
        // Nor does another server or user, nor a new salt.
        cache
            .get(&target(5433), "orders_ro", "pw", salt(b"s1", 4096))
            .await
            .expect("derive");
        cache
            .get(&a, "orders_admin", "pw", salt(b"s1", 4096))
            .await
            .expect("derive");
        cache
            .get(&a, "orders_ro", "pw", salt(b"s2", 4096))
            .await
            .expect("derive");
        assert_eq!(cache.keys.len(), 5);
    }

    #[tokio::test]
    async fn a_server_asking_for_too_many_iterations_is_refused() {
        let cache = ScramKeys::default();
        let err = cache
            .get(&target(5432), "orders_ro", "pw", salt(b"s1", u32::MAX))
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("iterations"), "{err}");
    }
}
