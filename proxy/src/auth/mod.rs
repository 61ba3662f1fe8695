//! Client authentication done by the proxy itself, and the credentials it
//! checks against (prepared once per config load).

pub mod lookup;
pub mod passthrough;
pub mod password;
pub mod scram;

use std::collections::HashMap;
use std::sync::Arc;

use lagrouter_config::{AuthMethod, Config, UserConfig};
use md5::{Digest, Md5};

pub use lookup::{AuthQuery, LookupError};
pub use passthrough::{PassThroughError, PassThroughLogin, ScramKeys};
pub use password::PasswordLogin;
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

/// How the proxy logs into the nodes on a user's behalf.
#[derive(Clone)]
pub enum ServerLogin {
    /// A plain-text password: `server_password`, or `password` when it is
    /// not a verifier or hash; with the SCRAM keys derived from it, kept
    /// for the logins that follow.
    Password(Arc<PasswordLogin>),
    /// SCRAM pass-through, for a `password` that is a SCRAM verifier and
    /// no `server_password`: the client key from this session's client's
    /// proof (`None` in the directory, before any client logged in).
    PassThrough(Option<ScramKeys>),
}

impl ServerLogin {
    /// A login with the plain-text `password`.
    pub fn password(password: &str) -> ServerLogin {
        ServerLogin::Password(Arc::new(PasswordLogin::new(password)))
    }
}

/// A user as the proxy knows it: how to check the client and how to log
/// into nodes on its behalf.
#[derive(Clone)]
pub struct UserAuth {
    pub name: String,
    pub credential: Credential,
    pub server_login: ServerLogin,
    pub admin: bool,
}

impl UserAuth {
    /// This user as one session knows it once its client proved the
    /// password with `client_key`: pass-through users can log into nodes.
    pub fn logged_in(self: &Arc<Self>, client_key: [u8; 32]) -> Arc<UserAuth> {
        match (&self.server_login, &self.credential) {
            (ServerLogin::PassThrough(None), Credential::Scram(secret)) => Arc::new(UserAuth {
                server_login: ServerLogin::PassThrough(Some(secret.pass_through(client_key))),
                ..(**self).clone()
            }),
            _ => self.clone(),
        }
    }
}

/// All users, keyed by name. Rebuilt when the config changes.
#[derive(Clone, Default)]
pub struct UserDirectory {
    users: HashMap<String, Arc<UserAuth>>,
    /// Keys the mock salts of unknown users (see [`ScramSecret::impossible`]).
    mock_key: [u8; 32],
    /// The SCRAM secrets derived from plain-text passwords, by user, with
    /// the password: a reload that keeps a user's password keeps its secret
    /// (see [`UserDirectory::reloaded`]).
    derived: HashMap<String, (String, ScramSecret)>,
}

impl UserDirectory {
    /// Prepares every user's credential (SCRAM secrets are derived once here).
    pub fn from_config(config: &Config) -> UserDirectory {
        UserDirectory::build(config, rand::random(), &HashMap::new())
    }

    /// The directory for a reloaded `config`. A user whose plain-text
    /// password did not change keeps its secret: deriving one is 4096
    /// rounds of HMAC-SHA-256 (about a millisecond), on the thread that
    /// reloads, which also serves sessions; and a salt that changes at a
    /// reload would tell a prober which names exist. For the same reason
    /// unknown users keep their mock salts. A user whose password for the
    /// nodes did not change keeps the keys derived from it.
    pub fn reloaded(&self, config: &Config) -> UserDirectory {
        let mut dir = UserDirectory::build(config, self.mock_key, &self.derived);
        for (name, user) in &mut dir.users {
            if let (ServerLogin::Password(new), Some(old)) =
                (&user.server_login, self.users.get(name))
                && let ServerLogin::Password(kept) = &old.server_login
                && kept.password() == new.password()
            {
                Arc::make_mut(user).server_login = ServerLogin::Password(kept.clone());
            }
        }
        dir
    }

    fn build(
        config: &Config,
        mock_key: [u8; 32],
        previous: &HashMap<String, (String, ScramSecret)>,
    ) -> UserDirectory {
        let mut derived = HashMap::new();
        let users = config
            .users
            .iter()
            .map(|u| {
                let auth = user_auth(u, |password| {
                    let secret = match previous.get(&u.name) {
                        Some((p, s)) if p == password => s.clone(),
                        _ => ScramSecret::from_password(password),
                    };
                    derived.insert(u.name.clone(), (password.to_owned(), secret.clone()));
                    secret
                });
                (u.name.clone(), Arc::new(auth))
            })
            .collect();
        UserDirectory {
            users,
            mock_key,
            derived,
        }
    }

    /// The secret an unknown user's login runs against: it fails at the
    /// proof, after the same messages as a known user's.
    pub fn unknown(&self, name: &str) -> ScramSecret {
        ScramSecret::impossible(name, &self.mock_key)
    }

    /// The user, if configured.
    pub fn get(&self, name: &str) -> Option<Arc<UserAuth>> {
        self.users.get(name).cloned()
    }
}

/// `derive` makes the SCRAM secret of a plain-text password.
fn user_auth(u: &UserConfig, derive: impl FnOnce(&str) -> ScramSecret) -> UserAuth {
    let credential = match u.auth {
        AuthMethod::Trust => Credential::Trust,
        AuthMethod::ScramSha256 => match ScramSecret::parse(&u.password) {
            Some(s) => Credential::Scram(s),
            None => Credential::Scram(derive(&u.password)),
        },
        AuthMethod::Md5 => match u.password.strip_prefix("md5") {
            Some(h) if u.password.len() == 35 => Credential::Md5(h.to_string()),
            _ => Credential::Md5(md5_hex(&[u.password.as_bytes(), u.name.as_bytes()])),
        },
    };
    UserAuth {
        name: u.name.clone(),
        credential,
        server_login: match u.backend_password() {
            Some(p) => ServerLogin::password(p),
            None => ServerLogin::PassThrough(None),
        },
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

    fn users(b_password: &str) -> Config {
        Config::from_toml_str(&format!(
            "[[users]]\nname = \"a\"\npassword = \"x\"\n\
             [[users]]\nname = \"b\"\npassword = \"{b_password}\"\n\
             [[nodes]]\nname = \"primary\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n"
        ))
        .unwrap()
    }

    fn salt(d: &UserDirectory, name: &str) -> String {
        match &d.get(name).expect("configured").credential {
            Credential::Scram(s) => s.salt_b64().to_owned(),
            _ => panic!("{name} is a SCRAM user"),
        }
    }

    #[test]
    fn a_reload_derives_only_the_secrets_of_changed_passwords() {
        let first = UserDirectory::from_config(&users("y"));
        // A fresh directory draws new salts: what a reload would do without
        // the reuse.
        let fresh = UserDirectory::from_config(&users("y"));
        assert_ne!(salt(&first, "a"), salt(&fresh, "a"));
        assert_ne!(
            first.unknown("nobody").salt_b64(),
            fresh.unknown("nobody").salt_b64()
        );

        let same = first.reloaded(&users("y"));
        assert_eq!(salt(&first, "a"), salt(&same, "a"));
        assert_eq!(salt(&first, "b"), salt(&same, "b"));
        let changed = same.reloaded(&users("z"));
        assert_eq!(salt(&first, "a"), salt(&changed, "a"));
        assert_ne!(salt(&first, "b"), salt(&changed, "b"));
        // Unknown names keep their mock salts, as known ones keep theirs.
        assert_eq!(
            first.unknown("nobody").salt_b64(),
            changed.unknown("nobody").salt_b64()
        );
        // The kept secret still checks the password, the new one the new
        // password.
        let Credential::Scram(b) = &changed.get("b").unwrap().credential else {
            unreachable!()
        };
        scram::tests::login(b.clone(), "z").unwrap();
        assert!(scram::tests::login(b.clone(), "y").is_err());
        let Credential::Scram(a) = &changed.get("a").unwrap().credential else {
            unreachable!()
        };
        scram::tests::login(a.clone(), "x").unwrap();
    }

    #[test]
    fn a_reload_keeps_the_node_keys_of_unchanged_passwords() {
        let login = |d: &UserDirectory, name: &str| match &d.get(name).unwrap().server_login {
            ServerLogin::Password(p) => p.clone(),
            ServerLogin::PassThrough(_) => panic!("{name} logs in with its password"),
        };
        let first = UserDirectory::from_config(&users("y"));
        let node_salt = "W22ZaJ0SNY7soEsUEjb6gQ==";
        login(&first, "a").derive(node_salt, 16).unwrap();
        login(&first, "b").derive(node_salt, 16).unwrap();
        let changed = first.reloaded(&users("z"));
        assert!(login(&changed, "a").kept(node_salt, 16).is_some());
        assert!(login(&changed, "b").kept(node_salt, 16).is_none());
        assert_eq!(login(&changed, "b").password(), "z");
    }

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
