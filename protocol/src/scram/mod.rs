//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL
//! speaks it: no channel binding offered, the user name in the exchange is
//! ignored (the startup packet names the user), verifiers in PostgreSQL's
//! `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>` form. The client
//! side, for logging in upstream, is in [`client`].

pub mod client;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// PBKDF2 iterations for new verifiers, PostgreSQL's default.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message that is not SCRAM.
    #[error("malformed SCRAM {0}")]
    Malformed(&'static str),
    /// The client insists on channel binding, which we do not offer.
    #[error("channel binding is not supported")]
    ChannelBindingUnsupported,
    /// The client-final nonce is not the one agreed on.
    #[error("SCRAM nonce mismatch")]
    NonceMismatch,
    /// Wrong password (or unknown user).
    #[error("password authentication failed")]
    AuthFailed,
    /// Messages in the wrong order.
    #[error("SCRAM message out of order")]
    OutOfOrder,
    /// A stored verifier that does not parse.
    #[error("invalid SCRAM verifier")]
    BadVerifier,
}

impl ScramError {
    /// Short stable label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ScramError::Malformed(_) => "malformed",
            ScramError::ChannelBindingUnsupported => "channel_binding",
            ScramError::NonceMismatch => "nonce_mismatch",
            ScramError::AuthFailed => "auth_failed",
            ScramError::OutOfOrder => "out_of_order",
            ScramError::BadVerifier => "bad_verifier",
        }
    }
}

/// What the server keeps of a password: enough to check a proof, not to make one.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerSecret {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt.
    pub salt: Vec<u8>,
    /// SHA-256(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSecret")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl ServerSecret {
    /// Derives the secret of `password` (SASLprep'd when possible, as PostgreSQL does).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ServerSecret {
        let salted = salted_password(password, salt, iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        ServerSecret {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }

    /// Parses PostgreSQL's verifier text.
    pub fn parse(verifier: &str) -> Result<ServerSecret, ScramError> {
        let bad = |_| ScramError::BadVerifier;
        let rest = verifier.strip_prefix("SCRAM-SHA-256$").ok_or(ScramError::BadVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iter, salt) = params.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let key = |s: &str| -> Result<[u8; 32], ScramError> {
            STANDARD
                .decode(s)
                .map_err(bad)?
                .try_into()
                .map_err(|_| ScramError::BadVerifier)
        };
        let iterations: u32 = iter.parse().map_err(|_| ScramError::BadVerifier)?;
        if iterations == 0 {
            return Err(ScramError::BadVerifier);
        }
        Ok(ServerSecret {
            iterations,
            salt: STANDARD.decode(salt).map_err(bad)?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// PostgreSQL's verifier text.
    pub fn to_verifier(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }

    /// Whether `password` is the one this secret was derived from, compared
    /// in constant time (for logins that send the token itself, such as SSH
    /// keyboard-interactive). Costs one PBKDF2, like a SCRAM exchange.
    pub fn matches_password(&self, password: &str) -> bool {
        let salted = salted_password(password, &self.salt, self.iterations);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        bool::from(stored.ct_eq(&self.stored_key))
    }

    /// A stable, fake secret for an unknown user: the same user always gets
    /// the same salt, so probing cannot tell unknown users from known ones.
    pub fn mock(seed: &[u8], user: &str) -> ServerSecret {
        let salt = hmac(seed, &[b"salt\0", user.as_bytes()]);
        ServerSecret {
            iterations: DEFAULT_ITERATIONS,
            salt: salt[..16].to_vec(),
            stored_key: hmac(seed, &[b"stored\0", user.as_bytes()]),
            server_key: hmac(seed, &[b"server\0", user.as_bytes()]),
        }
    }
}

/// PBKDF2 of the SASLprep'd password (the raw one when SASLprep refuses it,
/// as PostgreSQL does): the expensive step, thousands of HMACs.
pub(crate) fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let prepped = stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .unwrap_or_else(|_| password.to_owned());
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(prepped.as_bytes(), salt, iterations, &mut salted);
    salted
}

enum State {
    Initial,
    SentFirst {
        gs2_header: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

/// One server-side exchange.
pub struct ServerExchange {
    secret: ServerSecret,
    server_nonce: String,
    mock: bool,
    state: State,
}

impl ServerExchange {
    /// Starts an exchange; with `mock`, it runs in full and then fails.
    pub fn new(secret: ServerSecret, server_nonce: String, mock: bool) -> ServerExchange {
        ServerExchange {
            secret,
            server_nonce,
            mock,
            state: State::Initial,
        }
    }

    /// Takes the client-first message; answers the server-first message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Initial) {
            return Err(ScramError::OutOfOrder);
        }
        self.state = State::Done;
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("client-first message"))?;
        let (gs2_header, bare) = split_gs2(msg)?;
        let mut nonce = None;
        for (i, attr) in bare.split(',').enumerate() {
            match (i, attr.split_once('=')) {
                (0, Some(("n", _))) => {}
                (0, _) => return Err(ScramError::Malformed("client-first message: no user")),
                (1, Some(("r", r))) if !r.is_empty() && r.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',') => {
                    nonce = Some(r)
                }
                (1, _) => return Err(ScramError::Malformed("client-first message: bad nonce")),
                (_, Some(("m", _))) => return Err(ScramError::Malformed("client-first message: mandatory extension")),
                _ => {}
            }
        }
        let client_nonce = nonce.ok_or(ScramError::Malformed("client-first message: no nonce"))?;
        let nonce = format!("{client_nonce}{}", self.server_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&self.secret.salt),
            self.secret.iterations
        );
        self.state = State::SentFirst {
            gs2_header: gs2_header.to_owned(),
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(server_first.into_bytes())
    }

    /// Takes the client-final message; answers the server-final message when the proof holds.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let State::SentFirst {
            gs2_header,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::OutOfOrder);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("client-final message"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("client-final message: no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("client-final message: no channel binding"))?;
        let final_nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("client-final message: no nonce"))?;
        if STANDARD.decode(binding).ok().as_deref() != Some(gs2_header.as_bytes()) {
            return Err(ScramError::Malformed("client-final message: channel binding differs"));
        }
        let proof: [u8; 32] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("client-final message: bad proof"))?;
        if final_nonce.as_bytes().ct_eq(nonce.as_bytes()).unwrap_u8() == 0 {
            return Err(ScramError::NonceMismatch);
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(&self.secret.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(signature.iter())) {
            *k = p ^ s;
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        let matches = bool::from(computed.ct_eq(&self.secret.stored_key));
        if self.mock || !matches {
            return Err(ScramError::AuthFailed);
        }
        let server_signature = hmac(&self.secret.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

/// Splits `n,,bare` / `y,,bare` into header (with trailing comma) and bare message.
fn split_gs2(msg: &str) -> Result<(&str, &str), ScramError> {
    let bytes = msg.as_bytes();
    match bytes.first() {
        Some(b'n') | Some(b'y') => {}
        Some(b'p') => return Err(ScramError::ChannelBindingUnsupported),
        _ => return Err(ScramError::Malformed("client-first message: bad GS2 header")),
    }
    if bytes.get(1) != Some(&b',') {
        return Err(ScramError::Malformed("client-first message: bad GS2 header"));
    }
    // PostgreSQL does not support an authorization identity either.
    if bytes.get(2) != Some(&b',') {
        return Err(ScramError::Malformed(
            "client-first message: authorization identity not supported",
        ));
    }
    Ok(msg.split_at(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

    fn rfc_secret() -> ServerSecret {
        ServerSecret::derive("pencil", &STANDARD.decode(SALT).expect("b64"), 4096)
    }

    #[test]
    fn rfc7677_test_vector() {
        let mut ex = ServerExchange::new(rfc_secret(), SERVER_NONCE.into(), false);
        let first = ex.client_first(CLIENT_FIRST.as_bytes()).expect("first");
        assert_eq!(
            String::from_utf8(first).expect("utf8"),
            format!("r=rOprNGfwEbeRWgbNEkqO{SERVER_NONCE},s={SALT},i=4096")
        );
        let fin = ex.client_final(CLIENT_FINAL.as_bytes()).expect("final");
        assert_eq!(fin, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    #[test]
    fn wrong_password_and_mock_fail() {
        let wrong = ServerSecret::derive("pencil2", &STANDARD.decode(SALT).expect("b64"), 4096);
        for (secret, mock) in [(wrong, false), (rfc_secret(), true)] {
            let mut ex = ServerExchange::new(secret, SERVER_NONCE.into(), mock);
            ex.client_first(CLIENT_FIRST.as_bytes()).expect("first");
            assert_eq!(ex.client_final(CLIENT_FINAL.as_bytes()), Err(ScramError::AuthFailed));
        }
    }

    #[test]
    fn nonce_and_order_are_checked() {
        let mut ex = ServerExchange::new(rfc_secret(), "other".into(), false);
        assert_eq!(ex.client_final(CLIENT_FINAL.as_bytes()), Err(ScramError::OutOfOrder));
        let mut ex = ServerExchange::new(rfc_secret(), "other".into(), false);
        ex.client_first(CLIENT_FIRST.as_bytes()).expect("first");
        assert_eq!(ex.client_final(CLIENT_FINAL.as_bytes()), Err(ScramError::NonceMismatch));
    }

    #[test]
    fn refuses_channel_binding_and_garbage() {
        let mut ex = ServerExchange::new(rfc_secret(), "x".into(), false);
        assert_eq!(
            ex.client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBindingUnsupported)
        );
        for bad in [
            &b""[..],
            b"n,",
            b"x,,n=,r=a",
            b"n,a=bob,n=,r=a",
            b"n,,r=a",
            b"n,,n=,r=",
            b"\xff\xfe",
        ] {
            let mut ex = ServerExchange::new(rfc_secret(), "x".into(), false);
            assert!(ex.client_first(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn matches_password_only_for_the_derived_password() {
        let secret = ServerSecret::derive("tok_right", b"salty salt", 4096);
        assert!(secret.matches_password("tok_right"));
        assert!(!secret.matches_password("tok_wrong"));
        assert!(!ServerSecret::mock(b"seed", "alice").matches_password("tok_right"));
    }

    #[test]
    fn verifier_round_trips_and_mock_is_stable() {
        let s = rfc_secret();
        assert_eq!(ServerSecret::parse(&s.to_verifier()), Ok(s));
        assert_eq!(ServerSecret::parse("md5abc"), Err(ScramError::BadVerifier));
        assert_eq!(ServerSecret::mock(b"seed", "bob"), ServerSecret::mock(b"seed", "bob"));
        assert_ne!(
            ServerSecret::mock(b"seed", "bob").salt,
            ServerSecret::mock(b"seed", "eve").salt
        );
    }
}
