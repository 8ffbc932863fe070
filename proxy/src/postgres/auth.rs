//! SCRAM-SHA-256 with the engineer, their token being the password (RFC 7677,
//! PostgreSQL docs "SASL Authentication"). Unknown users run the same exchange
//! against a mock secret, and failures feed the per-user and per-address backoff.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::BytesMut;
use portcullis_protocol::pg::backend::{auth_sasl, auth_sasl_continue, auth_sasl_final};
use portcullis_protocol::pg::error::ProtocolError;
use portcullis_protocol::pg::frontend::parse_sasl_initial;
use portcullis_protocol::pg::message::Message;
use portcullis_protocol::scram::{ScramError, ServerExchange, ServerSecret};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::io::{MAX_HANDSHAKE_MESSAGE, read_message};
use super::refusal::Refusal;
use super::stream::Stream;
use crate::Proxy;

const MECHANISM: &str = "SCRAM-SHA-256";

/// Authenticates `user`; on success the client has received SASLFinal (not yet AuthenticationOk).
pub async fn authenticate(
    proxy: &Proxy,
    stream: &mut Stream,
    buf: &mut BytesMut,
    user: &str,
    peer: IpAddr,
    deadline: Instant,
) -> Result<(), Refusal> {
    let keys = [format!("user:{user}"), format!("addr:{peer}")];
    if let Err(wait) = proxy.backoff.check(&keys, Instant::now()) {
        return Err(Refusal::Backoff { wait });
    }
    let (secret, mock) = match proxy.grants.user_secret(user) {
        Some(secret) => (secret, false),
        None => (Arc::new(ServerSecret::mock(&proxy.mock_seed, user)), true),
    };
    let mut exchange = ServerExchange::new(ServerSecret::clone(&secret), server_nonce()?, mock);

    send(stream, &auth_sasl(&[MECHANISM])).await?;
    let first = expect_password_message(stream, buf, deadline).await?;
    let initial = parse_sasl_initial(first.body).map_err(Refusal::Protocol)?;
    if initial.mechanism != MECHANISM {
        return Err(Refusal::UnsupportedAuth(initial.mechanism));
    }
    let outcome = match exchange.client_first(&initial.data) {
        Ok(server_first) => {
            send(stream, &auth_sasl_continue(&server_first)).await?;
            let last = expect_password_message(stream, buf, deadline).await?;
            exchange.client_final(&last.body)
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok(server_final) => {
            proxy.backoff.success(&keys);
            send(stream, &auth_sasl_final(&server_final)).await
        }
        Err(e) => {
            proxy.backoff.failure(&keys, Instant::now());
            Err(match e {
                ScramError::AuthFailed | ScramError::NonceMismatch => Refusal::BadCredentials { user: user.to_owned() },
                _ => Refusal::Protocol(ProtocolError::Malformed { what: "SCRAM message" }),
            })
        }
    }
}

async fn expect_password_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
    deadline: Instant,
) -> Result<Message, Refusal> {
    let msg = read_message(stream, buf, MAX_HANDSHAKE_MESSAGE, deadline).await?;
    match msg.tag {
        b'p' => Ok(msg),
        b'X' => Err(Refusal::Gone),
        _ => Err(Refusal::Protocol(ProtocolError::Malformed {
            what: "expected a SASL response during authentication",
        })),
    }
}

async fn send(stream: &mut Stream, bytes: &[u8]) -> Result<(), Refusal> {
    stream.write_all(bytes).await.map_err(|_| Refusal::Gone)?;
    stream.flush().await.map_err(|_| Refusal::Gone)
}

/// 18 random bytes as hex: printable and comma-free, as SCRAM requires.
fn server_nonce() -> Result<String, Refusal> {
    crate::random::hex(18).map_err(|e| Refusal::Upstream {
        resource: String::new(),
        detail: format!("no randomness: {e}"),
    })
}
