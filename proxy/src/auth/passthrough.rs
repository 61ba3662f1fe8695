//! SCRAM pass-through: logging into a node with the client key recovered
//! from a client's SCRAM proof, for users whose `password` is a verifier
//! and who have no `server_password`.
//!
//! A SCRAM proof is `ClientKey XOR HMAC(StoredKey, AuthMessage)`; the
//! server knows StoredKey, so once the proof checks out it knows the
//! ClientKey, which is all a client needs to log into any server that
//! stores the same verifier (same salt and iterations, so the same keys).
//! The password itself is never known. postgres-protocol's SCRAM client
//! starts from the password, so this side is written here.
//!
//! A login with a plain-text password uses it too, with keys derived from
//! the password for the salt the node names ([`super::password`]): once
//! per salt, not once per connection.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use super::scram::{constant_time_eq, hmac};

/// What a pass-through login needs: the client key, and the verifier it
/// belongs to (to check the node uses the same one, and to check the
/// node's signature).
#[derive(Clone)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
    pub salt_b64: String,
    pub iterations: u32,
}

impl std::fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramKeys(<redacted>)")
    }
}

/// Why a pass-through login could not go on.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PassThroughError {
    /// The node's verifier has another salt or iteration count.
    #[error(
        "the node's SCRAM verifier for this user differs from the one in lagrouter's [[users]] \
         (salt or iterations differ), so the client's key cannot log in: copy the node's \
         rolpassword into password, or set server_password"
    )]
    VerifierDiffers,
    /// The node broke the SCRAM protocol.
    #[error("invalid SCRAM message from the node: {0}")]
    Protocol(&'static str),
    /// The node's signature does not match: it does not know the verifier.
    #[error("the node's SCRAM signature is wrong")]
    BadServerSignature,
}

/// `ClientKey XOR HMAC(H(ClientKey), AuthMessage)` (RFC 5802).
pub(crate) fn client_proof(keys: &ScramKeys, auth_message: &str) -> [u8; 32] {
    let stored_key: [u8; 32] = Sha256::digest(keys.client_key).into();
    let mut proof = hmac(&stored_key, auth_message.as_bytes());
    for (p, k) in proof.iter_mut().zip(keys.client_key) {
        *p ^= k;
    }
    proof
}

/// The client side of one SCRAM-SHA-256 exchange with a node, from keys
/// (known at the start, or set once the node named its salt).
pub struct PassThroughLogin {
    keys: Option<ScramKeys>,
    client_first_bare: String,
    nonce: String,
    auth_message: Option<String>,
}

impl PassThroughLogin {
    /// Starts the exchange; returns it and the client-first message.
    pub fn start(keys: ScramKeys) -> (PassThroughLogin, String) {
        let (mut login, first) = PassThroughLogin::start_without_keys();
        login.keys = Some(keys);
        (login, first)
    }

    /// Starts an exchange whose keys come with [`Self::set_keys`], once
    /// [`Self::offered`] told the node's salt and iteration count.
    pub fn start_without_keys() -> (PassThroughLogin, String) {
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        // The user name is in the startup message; PostgreSQL ignores n=.
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}");
        (
            PassThroughLogin {
                keys: None,
                client_first_bare,
                nonce,
                auth_message: None,
            },
            first,
        )
    }

    /// The salt (base64) and iteration count the node's server-first
    /// names, once it is checked to extend this exchange's nonce.
    pub fn offered(&self, data: &[u8]) -> Result<(String, u32), PassThroughError> {
        let (_, _, salt, iterations) = self.parse_server_first(data)?;
        Ok((salt.to_string(), iterations))
    }

    /// The keys, for an exchange started without them.
    pub fn set_keys(&mut self, keys: ScramKeys) {
        self.keys = Some(keys);
    }

    /// server-first's text, the node's nonce, the salt and the iteration
    /// count.
    fn parse_server_first<'d>(
        &self,
        data: &'d [u8],
    ) -> Result<(&'d str, &'d str, &'d str, u32), PassThroughError> {
        let msg = std::str::from_utf8(data)
            .map_err(|_| PassThroughError::Protocol("server-first is not UTF-8"))?;
        let attr = |name: &str| {
            msg.split(',')
                .find_map(|a| a.strip_prefix(name))
                .ok_or(PassThroughError::Protocol(
                    "server-first lacks an attribute",
                ))
        };
        let nonce = attr("r=")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(PassThroughError::Protocol(
                "server nonce does not extend ours",
            ));
        }
        let iterations = attr("i=")?
            .parse()
            .ok()
            .filter(|&i| i > 0)
            .ok_or(PassThroughError::Protocol("bad iteration count"))?;
        Ok((msg, nonce, attr("s=")?, iterations))
    }

    /// Handles server-first; returns client-final (with the proof).
    pub fn server_first(&mut self, data: &[u8]) -> Result<String, PassThroughError> {
        let (msg, nonce, salt, iterations) = self.parse_server_first(data)?;
        let keys = self
            .keys
            .as_ref()
            .ok_or(PassThroughError::Protocol("no keys for the exchange"))?;
        if salt != keys.salt_b64 || iterations != keys.iterations {
            return Err(PassThroughError::VerifierDiffers);
        }
        // c=biws is base64 of the GS2 header "n,,": no channel binding.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{msg},{without_proof}", self.client_first_bare);
        let proof = client_proof(keys, &auth_message);
        self.auth_message = Some(auth_message);
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final: the node proves it holds the same verifier.
    pub fn server_final(&self, data: &[u8]) -> Result<(), PassThroughError> {
        let auth_message = self
            .auth_message
            .as_ref()
            .ok_or(PassThroughError::Protocol(
                "server-final before server-first",
            ))?;
        let v = std::str::from_utf8(data)
            .ok()
            .and_then(|m| m.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(PassThroughError::Protocol("server-final has no signature"))?;
        let keys = self
            .keys
            .as_ref()
            .ok_or(PassThroughError::Protocol("no keys for the exchange"))?;
        let expected = hmac(&keys.server_key, auth_message.as_bytes());
        if constant_time_eq(&v, &expected) {
            Ok(())
        } else {
            Err(PassThroughError::BadServerSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scram::{ScramExchange, ScramSecret};
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// A client logs into "lagrouter" with its password; the recovered key
    /// then logs into a "node" holding `node_verifier`.
    fn relay(
        proxy_verifier: &str,
        node_verifier: &str,
        password: &str,
    ) -> Result<(), PassThroughError> {
        let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
        let secret = ScramSecret::parse(proxy_verifier).unwrap();
        let (ex, server_first) = ScramExchange::start(secret.clone(), client.message()).unwrap();
        client.update(server_first.as_bytes()).unwrap();
        let (_, client_key) = ex.finish(client.message()).expect("client logs in");
        let keys = secret.pass_through(client_key);

        let node = ScramSecret::parse(node_verifier).unwrap();
        let (mut login, first) = PassThroughLogin::start(keys);
        let (node_ex, node_first) = ScramExchange::start(node, first.as_bytes()).unwrap();
        let fin = login.server_first(node_first.as_bytes())?;
        let (node_final, _) = node_ex
            .finish(fin.as_bytes())
            .map_err(|_| PassThroughError::BadServerSignature)?;
        login.server_final(node_final.as_bytes())
    }

    fn keys_of(login: &PassThroughLogin) -> &ScramKeys {
        login.keys.as_ref().expect("started with keys")
    }

    #[test]
    fn the_recovered_key_logs_into_a_node_with_the_same_verifier() {
        let v = postgres_protocol::password::scram_sha_256(b"pencil");
        relay(&v, &v, "pencil").unwrap();
    }

    #[test]
    fn another_salt_is_named_before_any_proof_is_sent() {
        let ours = postgres_protocol::password::scram_sha_256(b"pencil");
        let theirs = postgres_protocol::password::scram_sha_256(b"pencil");
        assert_eq!(
            relay(&ours, &theirs, "pencil"),
            Err(PassThroughError::VerifierDiffers)
        );
    }

    #[test]
    fn a_node_that_does_not_know_the_key_cannot_sign() {
        let v = postgres_protocol::password::scram_sha_256(b"pencil");
        let secret = ScramSecret::parse(&v).unwrap();
        let keys = secret.pass_through([7; 32]);
        let (mut login, _) = PassThroughLogin::start(keys);
        let first = format!(
            "r={}xyz,s={},i={}",
            login.nonce,
            keys_of(&login).salt_b64,
            keys_of(&login).iterations
        );
        login.server_first(first.as_bytes()).unwrap();
        assert_eq!(
            login.server_final(format!("v={}", B64.encode([0u8; 32])).as_bytes()),
            Err(PassThroughError::BadServerSignature)
        );
        assert!(login.server_final(b"e=invalid-proof").is_err());
        let (mut fresh, _) = PassThroughLogin::start(keys_of(&login).clone());
        assert!(fresh.server_first(b"r=someone-elses,s=x,i=1").is_err());
    }
}
