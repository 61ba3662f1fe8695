//! Server logins with a plain-text password, and the SCRAM keys derived
//! from it, kept per salt.
//!
//! A SCRAM login starts from `SaltedPassword = Hi(password, salt, i)`:
//! PBKDF2 with the node's iteration count (4096 by default), about a
//! millisecond of CPU, where the rest of the exchange is a few HMACs. The
//! salt and count are the role's on the node, the same for every
//! connection (and for every node of a streaming-replication cluster), so
//! the keys are derived once per salt and kept here; each login after the
//! first runs as a pass-through login does ([`super::PassThroughLogin`]).
//! A role whose password changes on the node gets a new salt, and so new
//! keys.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::passthrough::{PassThroughError, ScramKeys};
use super::scram::hmac;

/// Salts whose keys are kept: a user's role has one salt per cluster, so
/// more means nodes of different clusters behind one proxy.
const KEPT_SALTS: usize = 4;

/// A plain-text password for the nodes (`server_password`, or a `password`
/// that is not a verifier or hash), with the SCRAM keys derived from it.
pub struct PasswordLogin {
    password: String,
    /// Newest last.
    keys: Mutex<Vec<ScramKeys>>,
    /// Keys derived so far (each one a key stretching).
    derived: AtomicUsize,
    /// Held while keys are derived: connections opened together (a pool
    /// filling) wait for the first one's keys instead of each stretching
    /// the password.
    deriving: Mutex<()>,
}

impl PasswordLogin {
    pub fn new(password: impl Into<String>) -> PasswordLogin {
        PasswordLogin {
            password: password.into(),
            keys: Mutex::new(Vec::new()),
            derived: AtomicUsize::new(0),
            deriving: Mutex::new(()),
        }
    }

    /// How many times keys were derived (stretched) for this password.
    pub fn derivations(&self) -> usize {
        self.derived.load(Ordering::Relaxed)
    }

    /// The password, for a node that asks for it in clear text or md5.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The keys derived for `salt_b64` and `iterations`, if they were.
    pub fn kept(&self, salt_b64: &str, iterations: u32) -> Option<ScramKeys> {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.iter()
            .find(|k| k.salt_b64 == salt_b64 && k.iterations == iterations)
            .cloned()
    }

    /// The keys for `salt_b64` and `iterations`: derived (PBKDF2: call it
    /// off the event loop; it blocks while another call derives) and kept,
    /// unless another call kept them meanwhile.
    pub fn derive(&self, salt_b64: &str, iterations: u32) -> Result<ScramKeys, PassThroughError> {
        let _one_at_a_time = self.deriving.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(keys) = self.kept(salt_b64, iterations) {
            return Ok(keys);
        }
        let keys = derive_keys(&self.password, salt_b64, iterations)?;
        self.derived.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        kept.retain(|k| k.salt_b64 != salt_b64 || k.iterations != iterations);
        if kept.len() == KEPT_SALTS {
            kept.remove(0);
        }
        kept.push(keys.clone());
        Ok(keys)
    }
}

/// `ClientKey` and `ServerKey` of `password` for a salt and iteration
/// count (RFC 5802): `SaltedPassword = Hi(SASLprep(password), salt, i)`,
/// then an HMAC of it for each key. The password is prepared with SASLprep
/// as PostgreSQL and postgres-protocol do, and used as it is when that
/// fails (PostgreSQL does the same).
pub fn derive_keys(
    password: &str,
    salt_b64: &str,
    iterations: u32,
) -> Result<ScramKeys, PassThroughError> {
    let salt = B64
        .decode(salt_b64)
        .map_err(|_| PassThroughError::Protocol("the salt is not base64"))?;
    if iterations == 0 {
        return Err(PassThroughError::Protocol("bad iteration count"));
    }
    let prepared = stringprep::saslprep(password);
    let prepared = prepared.as_deref().unwrap_or(password);
    let mac = Hmac::<Sha256>::new_from_slice(prepared.as_bytes()).expect("HMAC takes any key");
    let mut m = mac.clone();
    m.update(&salt);
    m.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = m.finalize().into_bytes().into();
    let mut salted = u;
    for _ in 1..iterations {
        let mut m = mac.clone();
        m.update(&u);
        u = m.finalize().into_bytes().into();
        for (s, b) in salted.iter_mut().zip(u) {
            *s ^= b;
        }
    }
    Ok(ScramKeys {
        client_key: hmac(&salted, b"Client Key"),
        server_key: hmac(&salted, b"Server Key"),
        salt_b64: salt_b64.to_string(),
        iterations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::passthrough::PassThroughLogin;
    use crate::auth::scram::{ScramExchange, ScramSecret};

    /// A login with `password` into a node holding `node_verifier`, the
    /// keys taken from `login` (derived on first use).
    fn log_in(login: &PasswordLogin, node_verifier: &str) -> Result<(), PassThroughError> {
        let node = ScramSecret::parse(node_verifier).unwrap();
        let (mut client, first) = PassThroughLogin::start_without_keys();
        let (node_ex, node_first) = ScramExchange::start(node, first.as_bytes()).unwrap();
        let (salt, iterations) = client.offered(node_first.as_bytes())?;
        let keys = match login.kept(&salt, iterations) {
            Some(k) => k,
            None => login.derive(&salt, iterations)?,
        };
        client.set_keys(keys);
        let fin = client.server_first(node_first.as_bytes())?;
        let (node_final, _) = node_ex
            .finish(fin.as_bytes())
            .map_err(|_| PassThroughError::BadServerSignature)?;
        client.server_final(node_final.as_bytes())
    }

    #[test]
    fn derived_keys_log_in_where_postgres_protocols_verifier_is_stored() {
        let v = postgres_protocol::password::scram_sha_256(b"pencil");
        let login = PasswordLogin::new("pencil");
        log_in(&login, &v).unwrap();
        // The second login finds the keys kept.
        let secret = ScramSecret::parse(&v).unwrap();
        assert!(login.kept(secret.salt_b64(), 4096).is_some());
        log_in(&login, &v).unwrap();
        // A wrong password is refused by the node's check of the proof.
        assert_eq!(
            log_in(&PasswordLogin::new("pencils"), &v),
            Err(PassThroughError::BadServerSignature)
        );
    }

    #[test]
    fn the_rfc_7677_test_vector() {
        // RFC 7677, section 3: user "user", password "pencil".
        let keys = derive_keys("pencil", "W22ZaJ0SNY7soEsUEjb6gQ==", 4096).unwrap();
        let auth_message = "n=user,r=rOprNGfwEbeRWgbNEkqO,\
            r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,\
            c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        assert_eq!(
            B64.encode(crate::auth::passthrough::client_proof(&keys, auth_message)),
            "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            B64.encode(hmac(&keys.server_key, auth_message.as_bytes())),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn the_password_is_prepared_with_saslprep() {
        // A soft hyphen maps to nothing: "pen\u{ad}cil" logs in as "pencil".
        let v = postgres_protocol::password::scram_sha_256(b"pencil");
        log_in(&PasswordLogin::new("pen\u{ad}cil"), &v).unwrap();
    }

    #[test]
    fn a_bad_salt_or_count_is_a_protocol_error() {
        assert!(matches!(
            derive_keys("p", "not base64!", 4096),
            Err(PassThroughError::Protocol(_))
        ));
        assert!(matches!(
            derive_keys("p", "W22ZaJ0SNY7soEsUEjb6gQ==", 0),
            Err(PassThroughError::Protocol(_))
        ));
    }

    #[test]
    fn a_few_salts_are_kept() {
        let login = PasswordLogin::new("p");
        let salts: Vec<String> = (0..=KEPT_SALTS as u8)
            .map(|i| B64.encode([i; 16]))
            .collect();
        for s in &salts {
            login.derive(s, 1).unwrap();
        }
        assert!(login.kept(&salts[0], 1).is_none(), "the oldest went");
        assert!(salts[1..].iter().all(|s| login.kept(s, 1).is_some()));
        assert!(login.kept(&salts[1], 2).is_none(), "another count");
    }
}
