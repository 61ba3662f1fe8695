//! Checks that a parsed configuration makes a working proxy.

use std::collections::HashSet;
use std::net::SocketAddr;

use crate::error::Problem;
use crate::schema::{AuthMethod, Config, NodeRole, is_password_hash};

/// Most `server.workers`.
const MAX_WORKERS: usize = 256;

impl Config {
    /// Every problem in the configuration, or `Ok` if there are none.
    /// Lines are filled in by the caller that has the text.
    pub fn validate(&self) -> Result<(), Vec<Problem>> {
        let mut p = Problems::default();
        self.validate_server(&mut p);
        self.validate_users(&mut p);
        self.validate_pool(&mut p);
        self.validate_nodes(&mut p);
        self.validate_health(&mut p);
        self.validate_routing(&mut p);
        self.validate_safety(&mut p);
        self.validate_server_tls(&mut p);
        self.validate_health_user(&mut p);
        self.validate_auth_query(&mut p);
        if p.0.is_empty() { Ok(()) } else { Err(p.0) }
    }

    fn validate_server(&self, p: &mut Problems) {
        let s = &self.server;
        if s.listen.parse::<SocketAddr>().is_err() {
            p.add(
                "server.listen",
                format!("`{}` is not an address like 127.0.0.1:6432", s.listen),
            );
        }
        if let Some(m) = &s.metrics_listen
            && m.parse::<SocketAddr>().is_err()
        {
            p.add(
                "server.metrics_listen",
                format!("`{m}` is not an address like 127.0.0.1:9187"),
            );
        }
        if s.admin_database.is_empty() {
            p.add("server.admin_database", "must not be empty");
        }
        if !(1..=MAX_WORKERS).contains(&s.workers) {
            p.add(
                "server.workers",
                format!("must be between 1 and {MAX_WORKERS}, got {}", s.workers),
            );
        }
        if s.max_client_connections == 0 {
            p.add("server.max_client_connections", "must be at least 1");
        }
        if !(10_000..=1 << 30).contains(&s.max_message_size) {
            p.add(
                "server.max_message_size",
                format!(
                    "must be between 10000 and 1073741824 (PostgreSQL's limit), got {}",
                    s.max_message_size
                ),
            );
        }
        p.both_or_neither(
            "server",
            ("tls_cert", s.tls_cert.is_some()),
            ("tls_key", s.tls_key.is_some()),
        );
        if s.client_login_timeout.is_zero() {
            p.add("server.client_login_timeout", "must be more than 0s");
        }
    }

    /// The health monitor (and `[auth_query]`) log in with tokio-postgres,
    /// which has no client whose SCRAM key it could pass through.
    fn validate_health_user(&self, p: &mut Problems) {
        // An unknown health.user is reported by validate_health.
        let Some(u) = self.health_user() else {
            return;
        };
        // An md5 hash without server_password is reported with the user.
        let pass_through =
            u.backend_password().is_none() && u.password.starts_with("SCRAM-SHA-256$");
        if pass_through && self.server_tls.sslcert.is_none() {
            p.add(
                if self.health.user.is_some() {
                    "health.user".to_string()
                } else {
                    "users[0].server_password".to_string()
                },
                format!(
                    "the health monitor connects as `{}`, whose password is a SCRAM verifier; \
                     SCRAM pass-through needs a client, which health checks do not have: give this \
                     user a server_password, name another user in health.user, or log in with a \
                     client certificate ([server_tls] sslcert)",
                    u.name
                ),
            );
        }
    }

    fn validate_auth_query(&self, p: &mut Problems) {
        let a = &self.auth_query;
        let Some(name) = &a.user else {
            return;
        };
        match self.users.iter().find(|u| &u.name == name) {
            None => p.add(
                "auth_query.user",
                format!("user `{name}` is not in [[users]]"),
            ),
            Some(u) if u.backend_password().is_none() && self.server_tls.sslcert.is_none() => p.add(
                "auth_query.user",
                format!(
                    "user `{name}` has only a SCRAM verifier; the lookup connection has no client \
                     whose key it could pass through: give it a server_password"
                ),
            ),
            Some(_) => {}
        }
        if !a.query.contains("$1") {
            p.add("auth_query.query", "must take the user name as $1");
        }
        if a.database.is_empty() {
            p.add("auth_query.database", "must not be empty");
        }
    }

    fn validate_server_tls(&self, p: &mut Problems) {
        let t = &self.server_tls;
        p.both_or_neither(
            "server_tls",
            ("sslcert", t.sslcert.is_some()),
            ("sslkey", t.sslkey.is_some()),
        );
        if t.sslrootcert.is_some() {
            return;
        }
        if t.sslmode.needs_root() {
            p.add(
                "server_tls.sslmode",
                format!(
                    "{} checks the nodes' certificates against sslrootcert; set it",
                    t.sslmode
                ),
            );
        }
        for (i, n) in self.nodes.iter().enumerate() {
            if let Some(m) = n.sslmode.filter(|m| m.needs_root()) {
                p.add(
                    format!("nodes[{i}].sslmode"),
                    format!(
                        "{m} checks the node's certificate against [server_tls] sslrootcert; set it"
                    ),
                );
            }
        }
    }

    fn validate_users(&self, p: &mut Problems) {
        if self.users.is_empty() {
            p.add("users", "at least one [[users]] entry is required");
        }
        let mut names = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            let key = |k: &str| format!("users[{i}].{k}");
            if u.name.is_empty() {
                p.add(key("name"), "must not be empty");
            } else if !names.insert(u.name.as_str()) {
                p.add(key("name"), format!("user `{}` is listed twice", u.name));
            }
            let scram_verifier = u.password.starts_with("SCRAM-SHA-256$");
            let md5_hash = is_password_hash(&u.password) && !scram_verifier;
            match u.auth {
                AuthMethod::Md5 if scram_verifier => p.add(
                    key("password"),
                    "a SCRAM verifier cannot check md5 logins; give the plain password or an md5 hash",
                ),
                AuthMethod::ScramSha256 if md5_hash => p.add(
                    key("password"),
                    "an md5 hash cannot check SCRAM logins; give the plain password or a SCRAM-SHA-256 verifier",
                ),
                _ => {}
            }
            if u.backend_password().is_none() && !scram_verifier {
                p.add(
                    key("server_password"),
                    "password is an md5 hash, so the proxy needs server_password to log into the nodes \
                     (a SCRAM verifier would log in by pass-through)",
                );
            }
            if u.name == self.server.admin_database && !u.admin {
                // Not an error: just unusual. Nothing to do.
            }
        }
    }

    fn validate_pool(&self, p: &mut Problems) {
        let c = &self.pool;
        if c.size == 0 {
            p.add("pool.size", "must be at least 1");
        }
        if c.checkout_timeout.is_zero() {
            p.add("pool.checkout_timeout", "must be more than 0s");
        }
        if c.connect_timeout.is_zero() {
            p.add("pool.connect_timeout", "must be more than 0s");
        }
    }

    fn validate_nodes(&self, p: &mut Problems) {
        if self.nodes.is_empty() {
            p.add("nodes", "at least one [[nodes]] entry is required");
            return;
        }
        let mut names = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty() {
                p.add(format!("nodes[{i}].name"), "must not be empty");
            } else if !names.insert(n.name.as_str()) {
                p.add(
                    format!("nodes[{i}].name"),
                    format!("node `{}` is listed twice", n.name),
                );
            }
            if n.host.is_empty() {
                p.add(format!("nodes[{i}].host"), "must not be empty");
            }
            if n.port == 0 {
                p.add(format!("nodes[{i}].port"), "must be between 1 and 65535");
            }
        }
        let primaries = self
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Primary)
            .count();
        let autos = self
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Auto)
            .count();
        if autos > 0 && autos != self.nodes.len() {
            p.add(
                "nodes",
                "role = \"auto\" must be used on every node or on none",
            );
        } else if autos == 0 && primaries != 1 {
            p.add(
                "nodes",
                format!("exactly one node must have role = \"primary\" (found {primaries}), or use role = \"auto\" on all"),
            );
        }
    }

    fn validate_health(&self, p: &mut Problems) {
        let h = &self.health;
        if h.check_interval.is_zero() {
            p.add("health.check_interval", "must be more than 0s");
        }
        if h.check_timeout.is_zero() {
            p.add("health.check_timeout", "must be more than 0s");
        }
        if h.timeouts_before_unreachable == 0 {
            p.add("health.timeouts_before_unreachable", "must be at least 1");
        }
        if h.recover_after_checks == 0 {
            p.add("health.recover_after_checks", "must be at least 1");
        }
        if h.max_lag_time.is_some_and(|t| t.is_zero()) {
            p.add(
                "health.max_lag_time",
                "must be more than 0s (leave it unset to not enforce time lag)",
            );
        }
        if h.max_lag_time.is_some() && h.heartbeat_interval.is_zero() {
            p.add(
                "health.max_lag_time",
                "needs the heartbeat: set heartbeat_interval above 0s",
            );
        }
        if !is_sql_name(&h.heartbeat_table) {
            p.add(
                "health.heartbeat_table",
                format!(
                    "`{}` is not a plain table name ([schema.]name of letters, digits, _)",
                    h.heartbeat_table
                ),
            );
        }
        if let Some(u) = &h.user
            && !self.users.iter().any(|x| &x.name == u)
        {
            p.add("health.user", format!("user `{u}` is not in [[users]]"));
        }
        if h.database.is_empty() {
            p.add("health.database", "must not be empty");
        }
    }

    fn validate_safety(&self, p: &mut Problems) {
        let s = &self.safety;
        if s.min_replicas_max_lag_time.is_some_and(|t| t.is_zero()) {
            p.add(
                "safety.min_replicas_max_lag_time",
                "must be more than 0s (leave it unset to use [health] max_lag_time)",
            );
        }
        if s.min_replicas_max_lag_time.is_some() && self.health.heartbeat_interval.is_zero() {
            p.add(
                "safety.min_replicas_max_lag_time",
                "needs the heartbeat: set [health] heartbeat_interval above 0s",
            );
        }
        // More than the configured replicas is allowed: it refuses every
        // write, which is what an operator who sets it asks for (and how
        // replicas being added later is prepared for).
    }

    fn validate_routing(&self, p: &mut Problems) {
        let r = &self.routing;
        if !(0.0..=1.0).contains(&r.primary_read_cap) {
            p.add("routing.primary_read_cap", "must be between 0.0 and 1.0");
        }
        if r.breaker_window.is_zero() {
            p.add("routing.breaker_window", "must be more than 0s");
        }
        for (i, f) in r.read_only_functions.iter().enumerate() {
            if !is_sql_name(f) {
                p.add(
                    format!("routing.read_only_functions[{i}]"),
                    format!("`{f}` is not a function name"),
                );
            }
        }
    }

    /// The user the health monitor connects as.
    pub fn health_user(&self) -> Option<&crate::UserConfig> {
        match &self.health.user {
            Some(name) => self.users.iter().find(|u| &u.name == name),
            None => self.users.first(),
        }
    }
}

/// `name` or `schema.name`, of ASCII letters, digits and underscores.
fn is_sql_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|p| {
            let mut c = p.chars();
            c.next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                && c.all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    /// Two keys of `section` that go together: the one missing is named.
    fn both_or_neither(&mut self, section: &str, a: (&str, bool), b: (&str, bool)) {
        let (missing, present) = match (a.1, b.1) {
            (true, false) => (b.0, a.0),
            (false, true) => (a.0, b.0),
            _ => return,
        };
        self.add(
            format!("{section}.{missing}"),
            format!("{present} is set but {missing} is not; set both or neither"),
        );
    }
}
