//! Client authentication done by the proxy itself, and the credentials it
//! checks against (prepared once per config load).

pub mod scram;

use std::collections::HashMap;
use std::sync::Arc;

use lagrouter_config::{AuthMethod, Config, UserConfig};
use md5::{Digest, Md5};

pub use scram::{ScramExchange, ScramSecret};

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The password (or proof) was wrong, or the user is unknown.
    #[error("password authentication failed")]
    WrongPassword,
    /// The client broke the authentication protocol.
    #[error("invalid authentication message: {0}")]
    Protocol(&'static str),
}

/// How one user is checked.
#[derive(Clone)]
pub enum Credential {
    Scram(ScramSecret),
    /// The md5 hash `md5(password || user)` in hex, as PostgreSQL stores it.
    Md5(String),
    Trust,
}

/// A user as the proxy knows it: how to check the client and how to log
/// into nodes on its behalf.
#[derive(Clone)]
pub struct UserAuth {
    pub name: String,
    pub credential: Credential,
    pub backend_password: Option<String>,
    pub admin: bool,
}

/// All users, keyed by name. Rebuilt when the config changes.
#[derive(Clone, Default)]
pub struct UserDirectory {
    users: HashMap<String, Arc<UserAuth>>,
}

impl UserDirectory {
    /// Prepares every user's credential (SCRAM secrets are derived once here).
    pub fn from_config(config: &Config) -> UserDirectory {
        let users = config
            .users
            .iter()
            .map(|u| (u.name.clone(), Arc::new(user_auth(u))))
            .collect();
        UserDirectory { users }
    }

    /// The user, if configured.
    pub fn get(&self, name: &str) -> Option<Arc<UserAuth>> {
        self.users.get(name).cloned()
    }
}

fn user_auth(u: &UserConfig) -> UserAuth {
    let credential = match u.auth {
        AuthMethod::Trust => Credential::Trust,
        AuthMethod::ScramSha256 => match ScramSecret::parse(&u.password) {
            Some(s) => Credential::Scram(s),
            None => Credential::Scram(ScramSecret::from_password(&u.password)),
        },
        AuthMethod::Md5 => match u.password.strip_prefix("md5") {
            Some(h) if u.password.len() == 35 => Credential::Md5(h.to_string()),
            _ => Credential::Md5(md5_hex(&[u.password.as_bytes(), u.name.as_bytes()])),
        },
    };
    UserAuth {
        name: u.name.clone(),
        credential,
        backend_password: u.backend_password().map(str::to_string),
        admin: u.admin,
    }
}

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks an md5 password message: `"md5" + md5(md5(password || user) || salt)`.
pub fn check_md5(stored_hex: &str, salt: [u8; 4], response: &str) -> Result<(), AuthError> {
    let expected = format!("md5{}", md5_hex(&[stored_hex.as_bytes(), &salt]));
    if scram::constant_time_eq(expected.as_bytes(), response.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::WrongPassword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_libpq() {
        let salt = [1, 2, 3, 4];
        let client = postgres_protocol::authentication::md5_hash(b"app", b"secret", salt);
        let stored = md5_hex(&[b"secret", b"app"]);
        check_md5(&stored, salt, &client).unwrap();
        assert!(check_md5(&stored, [0, 0, 0, 0], &client).is_err());
        assert!(check_md5(&stored, salt, "md5").is_err());
    }
}
