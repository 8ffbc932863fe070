//! The server side of SCRAM-SHA-256, as the proxy runs it for every engineer's login.
//!
//! Measured: one whole `ServerExchange` (new, with the secret cloned as the
//! proxy does, client-first -> server-first, client-final -> proof checked ->
//! server-final) against a secret made by `ServerSecret::derive` with
//! PostgreSQL's 4096 iterations. Then the two failures a prober can cause: a
//! known user with the wrong password, and an unknown user (a mock secret).
//! Those two must cost the same, so timing does not tell unknown users apart;
//! success costs one HMAC more (the server signature).
//!
//! The client messages come from an independent client, `postgres-protocol`'s
//! `ScramSha256` (the one tokio-postgres uses), not from our own client in
//! `scram::client`, so a bug shared by both sides cannot hide. That client
//! draws a random nonce and runs PBKDF2 inside `update`, with no way to feed
//! it a precomputed salted password, so it cannot be taken out of a timed
//! loop. Instead one exchange is recorded before timing (the server nonce is
//! ours to fix, so the server-first message is the same every time) and
//! replayed: the timed loop runs the server steps only. The recorded
//! server-final is checked with the client's `finish` once, so the replay is
//! a real login.
//!
//! For scale, `live_with_client_pbkdf2` runs that client and our server
//! together: the client's PBKDF2 (4096 x HMAC-SHA-256) is what a login costs
//! the engineer's side, and the server's share should be a tiny fraction of
//! it. Not in the timings: the server nonce (`getrandom`, in
//! `proxy/src/postgres/auth.rs`), the SASL message framing, and the socket
//! round trips.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_protocol::scram::{DEFAULT_ITERATIONS, ScramError, ServerExchange, ServerSecret};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

/// An engineer's token, their SCRAM password.
const TOKEN: &str = "ptk_4f1c9e2a7b3d5e8f0a1b2c3d4e5f6a7b8c9d0e1f2a3b";
/// 16 bytes, as PostgreSQL's verifiers use.
const SALT: &[u8] = b"\x8a\x1f\x03\x7c\x55\xe0\x9b\x42\x10\xd7\x6e\x31\xaa\x04\xc8\x9f";
/// 18 random bytes in hex, the shape the proxy's nonces have.
const SERVER_NONCE: &str = "5d0c6a1f9e27b8430c7d2e915fa6b0c4d81e";

/// The two client messages of one real login.
struct Recorded {
    client_first: Vec<u8>,
    client_final: Vec<u8>,
}

fn record(secret: &ServerSecret) -> Recorded {
    let mut client = ScramSha256::new(TOKEN.as_bytes(), ChannelBinding::unsupported());
    let client_first = client.message().to_vec();
    let mut server = ServerExchange::new(secret.clone(), SERVER_NONCE.to_owned(), false);
    let server_first = server.client_first(&client_first).expect("server-first");
    client.update(&server_first).expect("client accepts server-first");
    let client_final = client.message().to_vec();
    let server_final = server.client_final(&client_final).expect("proof holds");
    client
        .finish(&server_final)
        .expect("client accepts the server signature");
    Recorded {
        client_first,
        client_final,
    }
}

/// The server's steps of one login.
fn server_exchange(secret: &ServerSecret, mock: bool, rec: &Recorded) -> Result<Vec<u8>, ScramError> {
    let mut ex = ServerExchange::new(secret.clone(), SERVER_NONCE.to_owned(), mock);
    black_box(ex.client_first(black_box(&rec.client_first))?);
    ex.client_final(black_box(&rec.client_final))
}

fn scram(c: &mut Criterion) {
    let secret = ServerSecret::derive(TOKEN, SALT, DEFAULT_ITERATIONS);
    let wrong = ServerSecret::derive("not the token", SALT, DEFAULT_ITERATIONS);
    let unknown = ServerSecret::mock(&[7u8; 32], "nobody");
    let rec = record(&secret);

    let mut group = c.benchmark_group("scram");
    group.bench_function("server_exchange", |b| {
        b.iter(|| server_exchange(&secret, false, &rec).expect("login succeeds"))
    });
    for (name, secret, mock) in [
        ("server_exchange_wrong_password", &wrong, false),
        ("server_exchange_unknown_user", &unknown, true),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let out = server_exchange(secret, mock, &rec);
                assert_eq!(out, Err(ScramError::AuthFailed), "{name} fails");
                out
            })
        });
    }
    // About a millisecond an iteration: fewer samples keep a run short.
    group.sample_size(10);
    group.bench_function("live_with_client_pbkdf2", |b| {
        b.iter(|| {
            let mut client = ScramSha256::new(TOKEN.as_bytes(), ChannelBinding::unsupported());
            let mut server = ServerExchange::new(secret.clone(), SERVER_NONCE.to_owned(), false);
            let server_first = server.client_first(client.message()).expect("server-first");
            client.update(&server_first).expect("client accepts server-first");
            let server_final = server.client_final(client.message()).expect("proof holds");
            client
                .finish(&server_final)
                .expect("client accepts the server signature");
        })
    });
    group.finish();
}

criterion_group!(benches, scram);
criterion_main!(benches);
