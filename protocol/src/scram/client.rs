//! The client side of SCRAM-SHA-256, for logging in to the upstream server.
//! The salted keys are a value of their own ([`ClientKeys`]) so the proxy can
//! keep them per (role, salt, iterations): only the first login of a role
//! pays PBKDF2, every later one costs a few HMACs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ScramError, hmac, salted_password};

/// GS2 header without channel binding, and its base64 for `c=`.
const GS2: &str = "n,,";
const GS2_B64: &str = "biws";

/// What a client derives from a password for one salt and iteration count.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientKeys {
    /// HMAC(SaltedPassword, "Client Key").
    client_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    server_key: [u8; 32],
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientKeys(..)")
    }
}

impl ClientKeys {
    /// Runs PBKDF2 for `password` (the expensive step).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> ClientKeys {
        let salted = salted_password(password, salt, iterations);
        ClientKeys {
            client_key: hmac(&salted, &[b"Client Key"]),
            server_key: hmac(&salted, &[b"Server Key"]),
        }
    }
}

/// The salt and iteration count the server asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SaltParams {
    /// Salt, decoded.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations.
    pub iterations: u32,
}

/// One client-side exchange: `first`, then `server_first` (which needs the
/// keys for the server's salt), then `server_final`.
pub struct ClientExchange {
    client_first_bare: String,
    client_nonce: String,
    /// Set after server-first: the keys and the AuthMessage to verify the server with.
    expect: Option<([u8; 32], String)>,
}

impl ClientExchange {
    /// Starts an exchange with a fresh printable `nonce` (PostgreSQL ignores the user name: it sends `n=`).
    pub fn new(nonce: &str) -> ClientExchange {
        ClientExchange {
            client_first_bare: format!("n=,r={nonce}"),
            client_nonce: nonce.to_owned(),
            expect: None,
        }
    }

    /// The client-first message.
    pub fn first(&self) -> String {
        format!("{GS2}{}", self.client_first_bare)
    }

    /// Reads the server-first message: the salt and iterations to derive keys for.
    pub fn salt_params(server_first: &[u8]) -> Result<SaltParams, ScramError> {
        let (_, salt, iterations) = parse_server_first(server_first)?;
        Ok(SaltParams { salt, iterations })
    }

    /// Takes the server-first message and the keys for its salt; answers the client-final message.
    pub fn server_first(&mut self, server_first: &[u8], keys: &ClientKeys) -> Result<String, ScramError> {
        let (nonce, _, _) = parse_server_first(server_first)?;
        if !nonce.starts_with(&self.client_nonce) || nonce.len() == self.client_nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let server_first = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed("server-first"))?;
        let without_proof = format!("c={GS2_B64},r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let stored_key: [u8; 32] = Sha256::digest(keys.client_key).into();
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let mut proof = keys.client_key;
        for (p, s) in proof.iter_mut().zip(signature) {
            *p ^= s;
        }
        self.expect = Some((keys.server_key, auth_message));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)))
    }

    /// Checks the server's signature: proof that it knew the password too.
    pub fn server_final(&mut self, server_final: &[u8]) -> Result<(), ScramError> {
        let (server_key, auth_message) = self.expect.take().ok_or(ScramError::OutOfOrder)?;
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed("server-final"))?;
        if text.starts_with("e=") {
            return Err(ScramError::AuthFailed);
        }
        let got = text
            .strip_prefix("v=")
            .and_then(|v| STANDARD.decode(v).ok())
            .ok_or(ScramError::Malformed("server-final"))?;
        let want = hmac(&server_key, &[auth_message.as_bytes()]);
        if bool::from(got.as_slice().ct_eq(&want)) {
            Ok(())
        } else {
            Err(ScramError::AuthFailed)
        }
    }
}

/// `r=NONCE,s=SALT,i=ITER` into its parts.
fn parse_server_first(msg: &[u8]) -> Result<(&str, Vec<u8>, u32), ScramError> {
    let bad = ScramError::Malformed("server-first");
    let msg = std::str::from_utf8(msg).map_err(|_| bad)?;
    let mut attrs = msg.split(',');
    let nonce = attrs.next().and_then(|a| a.strip_prefix("r=")).ok_or(bad)?;
    let salt = attrs
        .next()
        .and_then(|a| a.strip_prefix("s="))
        .and_then(|s| STANDARD.decode(s).ok())
        .ok_or(bad)?;
    let iterations = attrs
        .next()
        .and_then(|a| a.strip_prefix("i="))
        .and_then(|i| i.parse::<u32>().ok())
        .filter(|&i| i > 0)
        .ok_or(bad)?;
    Ok((nonce, salt, iterations))
}

#[cfg(test)]
mod tests {
    use super::super::{ServerExchange, ServerSecret};
    use super::*;

    const SALT: &str = "W22ZaJ0SNY7soEsUEjb6gQ==";
    const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";

    #[test]
    fn rfc7677_test_vector() {
        // The RFC's client names itself "user"; PostgreSQL clients send an empty name.
        let mut ex = ClientExchange::new("rOprNGfwEbeRWgbNEkqO");
        ex.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
        let params = ClientExchange::salt_params(SERVER_FIRST.as_bytes()).expect("params");
        assert_eq!(params.iterations, 4096);
        assert_eq!(STANDARD.encode(&params.salt), SALT);
        let keys = ClientKeys::derive("pencil", &params.salt, params.iterations);
        let fin = ex.server_first(SERVER_FIRST.as_bytes(), &keys).expect("final");
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        ex.server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .expect("the server's signature");
    }

    #[test]
    fn against_our_server_and_with_cached_keys() {
        let salt = b"0123456789abcdef";
        let secret = ServerSecret::derive("hunter2", salt, 4096);
        let keys = ClientKeys::derive("hunter2", salt, 4096);
        // The same keys serve any number of exchanges.
        for round in 0..3 {
            let mut server = ServerExchange::new(secret.clone(), format!("srv{round}"), false);
            let mut client = ClientExchange::new(&format!("cli{round}"));
            let server_first = server.client_first(client.first().as_bytes()).expect("server-first");
            let client_final = client.server_first(&server_first, &keys).expect("client-final");
            let server_final = server.client_final(client_final.as_bytes()).expect("proof accepted");
            client.server_final(&server_final).expect("server verified");
        }
    }

    #[test]
    fn a_wrong_password_or_a_forged_server_fails() {
        let salt = b"0123456789abcdef";
        let secret = ServerSecret::derive("hunter2", salt, 4096);
        let wrong = ClientKeys::derive("hunter3", salt, 4096);
        let mut server = ServerExchange::new(secret, "srv".into(), false);
        let mut client = ClientExchange::new("cli");
        let server_first = server.client_first(client.first().as_bytes()).expect("server-first");
        let client_final = client.server_first(&server_first, &wrong).expect("client-final");
        assert_eq!(
            server.client_final(client_final.as_bytes()),
            Err(ScramError::AuthFailed)
        );
        assert_eq!(
            client.server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::AuthFailed)
        );
        // A server that does not extend our nonce is not the one we spoke to.
        let mut client = ClientExchange::new("cli");
        assert_eq!(
            client.server_first(b"r=other,s=MDEy,i=4096", &wrong),
            Err(ScramError::NonceMismatch)
        );
        assert!(ClientExchange::salt_params(b"r=cli,s=!!,i=4096").is_err());
        assert!(ClientExchange::salt_params(b"r=cli,s=MDEy,i=0").is_err());
    }
}
