//! SCRAM-SHA-256 (RFC 5802/7677) as the server side of client logins.
//!
//! Secrets are PostgreSQL verifiers (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`):
//! configured as such, or made once from a plain password by
//! postgres-protocol. Channel binding is not offered, so clients use the
//! `n`/`y` GS2 flags.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::AuthError;
use super::passthrough::ScramKeys;

/// What the proxy stores to check a SCRAM login.
#[derive(Clone)]
pub struct ScramSecret {
    iterations: u32,
    salt_b64: String,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl ScramSecret {
    /// Parses a PostgreSQL SCRAM-SHA-256 verifier.
    pub fn parse(verifier: &str) -> Option<ScramSecret> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iter, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let iterations = iter.parse().ok().filter(|&i| i > 0)?;
        B64.decode(salt).ok()?;
        Some(ScramSecret {
            iterations,
            salt_b64: salt.to_string(),
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
        })
    }

    /// The salt, base64 as in the verifier.
    #[cfg(test)]
    pub(crate) fn salt_b64(&self) -> &str {
        &self.salt_b64
    }

    /// A secret for a plain-text password (PBKDF2 with a random salt; done
    /// once per config load, not per login).
    pub fn from_password(password: &str) -> ScramSecret {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        ScramSecret::parse(&verifier).expect("postgres-protocol makes valid verifiers")
    }

    /// A secret no password matches, for unknown users: the exchange runs
    /// as usual and fails at the proof, so user names cannot be probed.
    /// The salt is derived from the name and `mock_key` (random, once per
    /// process), so asking twice for one name gets the same salt, as for a
    /// user who exists (PostgreSQL's mock salt does the same).
    pub fn impossible(user: &str, mock_key: &[u8; 32]) -> ScramSecret {
        let salt = &hmac(mock_key, user.as_bytes())[..16];
        ScramSecret {
            iterations: 4096,
            salt_b64: B64.encode(salt),
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }

    /// The keys a pass-through login needs, given the client key a
    /// client's proof against this secret revealed.
    pub fn pass_through(&self, client_key: [u8; 32]) -> ScramKeys {
        ScramKeys {
            client_key,
            server_key: self.server_key,
            salt_b64: self.salt_b64.clone(),
            iterations: self.iterations,
        }
    }
}

/// A SCRAM exchange after the server-first message.
pub struct ScramExchange {
    secret: ScramSecret,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

fn invalid(detail: &'static str) -> AuthError {
    AuthError::Protocol(detail)
}

impl ScramExchange {
    /// Handles the client-first message; returns the exchange and the
    /// server-first message to send.
    pub fn start(
        secret: ScramSecret,
        client_first: &[u8],
    ) -> Result<(ScramExchange, String), AuthError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| invalid("client-first is not UTF-8"))?;
        let (flag, rest) = msg
            .split_once(',')
            .ok_or(invalid("client-first has no GS2 header"))?;
        match flag {
            "n" | "y" => {}
            _ => return Err(invalid("channel binding is not supported")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(invalid("client-first has no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(invalid("authorization identities are not supported"));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(invalid("client-first has no nonce"))?;
        let server_nonce: [u8; 18] = rand::random();
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={}", secret.salt_b64, secret.iterations);
        let gs2_header = format!("{flag},{authzid},");
        let ex = ScramExchange {
            secret,
            gs2_header,
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((ex, server_first))
    }

    /// Checks the client-final message; returns the server-final message
    /// (`v=…`) and the client key the proof revealed, when it is right.
    pub fn finish(self, client_final: &[u8]) -> Result<(String, [u8; 32]), AuthError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| invalid("client-final is not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(invalid("client-final has no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(invalid("client-final has no binding"))?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(invalid("channel binding does not match"));
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(invalid("client-final has no nonce"))?;
        if nonce != self.nonce {
            return Err(invalid("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(invalid("proof is not 32 bytes of base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&self.secret.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ signature[i];
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&stored, &self.secret.stored_key) {
            return Err(AuthError::WrongPassword);
        }
        let server_signature = hmac(&self.secret.server_key, auth_message.as_bytes());
        Ok((format!("v={}", B64.encode(server_signature)), client_key))
    }
}

pub(crate) fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// Compares without an early exit, so timing says nothing about where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A whole SCRAM exchange of postgres-protocol's client against `secret`.
    pub(crate) fn login(secret: ScramSecret, password: &str) -> Result<(), AuthError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let (ex, server_first) = ScramExchange::start(secret, client.message())?;
        client.update(server_first.as_bytes()).unwrap();
        let (server_final, _) = ex.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| AuthError::Protocol("client rejected server"))
    }

    #[test]
    fn right_password_logs_in_and_server_proves_itself() {
        login(ScramSecret::from_password("pencil"), "pencil").unwrap();
        let v = postgres_protocol::password::scram_sha_256(b"pencil");
        login(ScramSecret::parse(&v).unwrap(), "pencil").unwrap();
    }

    #[test]
    fn wrong_password_and_unknown_user_fail_the_same_way() {
        assert!(matches!(
            login(ScramSecret::from_password("pencil"), "pen"),
            Err(AuthError::WrongPassword)
        ));
        assert!(matches!(
            login(ScramSecret::impossible("app", &[1; 32]), "pencil"),
            Err(AuthError::WrongPassword)
        ));
    }

    #[test]
    fn an_unknown_name_gets_the_same_salt_every_time() {
        let salt = |user: &str, key| ScramSecret::impossible(user, key).salt_b64;
        assert_eq!(salt("nobody", &[1; 32]), salt("nobody", &[1; 32]));
        assert_ne!(salt("nobody", &[1; 32]), salt("someone", &[1; 32]));
        assert_ne!(salt("nobody", &[1; 32]), salt("nobody", &[2; 32]));
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let s = ScramSecret::from_password("x");
        for first in [
            &b""[..],
            b"n",
            b"p=tls-server-end-point,,n=,r=abc",
            b"n,a=b,n=,r=x",
            b"n,,n=",
            b"\xff\xfe",
        ] {
            assert!(ScramExchange::start(s.clone(), first).is_err(), "{first:?}");
        }
        let (ex, _) = ScramExchange::start(s.clone(), b"n,,n=,r=abc").unwrap();
        assert!(ex.finish(b"c=biws,r=abc,p=AAAA").is_err());
        let (ex, _) = ScramExchange::start(s, b"n,,n=,r=abc").unwrap();
        assert!(ex.finish(b"garbage").is_err());
        assert!(ScramSecret::parse("SCRAM-SHA-256$x:y$z:w").is_none());
        assert!(ScramSecret::parse("md5abc").is_none());
    }
}
