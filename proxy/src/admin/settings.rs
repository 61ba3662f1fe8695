//! `SHOW CONFIG`'s rows: every setting of the running configuration as
//! `key | value` text, secrets redacted.

use lagrouter_config::{AuthMethod, Config};

use super::views::Table;

/// Every setting of the running config. Passwords never appear: only
/// whether one is set.
pub fn config_rows(t: &mut Table, c: &Config) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "(unset)".into());
    let sv = &c.server;
    t.kv("server.listen", &sv.listen);
    t.kv("server.admin_database", &sv.admin_database);
    t.kv("server.metrics_listen", opt(sv.metrics_listen.clone()));
    t.kv("server.max_client_connections", sv.max_client_connections);
    let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
    t.kv("server.tls_cert", opt(path(&sv.tls_cert)));
    t.kv("server.tls_key", opt(path(&sv.tls_key)));
    t.kv(
        "server.client_login_timeout",
        format!("{:?}", sv.client_login_timeout),
    );
    t.kv(
        "server.shutdown_timeout",
        format!("{:?}", sv.shutdown_timeout),
    );
    let p = &c.pool;
    t.kv("pool.mode", snake(&format!("{:?}", p.mode)));
    t.kv("pool.size", p.size);
    t.kv("pool.max_waiters", p.max_waiters);
    t.kv("pool.checkout_timeout", format!("{:?}", p.checkout_timeout));
    t.kv("pool.connect_timeout", format!("{:?}", p.connect_timeout));
    t.kv("pool.idle_timeout", format!("{:?}", p.idle_timeout));
    for u in &c.users {
        let auth = match u.auth {
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
            AuthMethod::Trust => "trust",
        };
        let set = |b: bool| if b { "<redacted>" } else { "(unset)" };
        t.kv(
            &format!("users.{}", u.name),
            format!(
                "auth={auth} admin={} password={} server_password={}",
                u.admin,
                set(!u.password.is_empty()),
                set(u.server_password.is_some()),
            ),
        );
    }
    for n in &c.nodes {
        t.kv(
            &format!("nodes.{}", n.name),
            format!(
                "{}:{} role={}",
                n.host,
                n.port,
                snake(&format!("{:?}", n.role))
            ),
        );
    }
    let h = &c.health;
    t.kv("health.check_interval", format!("{:?}", h.check_interval));
    t.kv("health.check_timeout", format!("{:?}", h.check_timeout));
    t.kv("health.max_lag_bytes", h.max_lag_bytes);
    t.kv(
        "health.max_lag_time",
        opt(h.max_lag_time.map(|d| format!("{d:?}"))),
    );
    t.kv("health.recover_after_checks", h.recover_after_checks);
    t.kv(
        "health.heartbeat_interval",
        format!("{:?}", h.heartbeat_interval),
    );
    t.kv("health.heartbeat_table", &h.heartbeat_table);
    t.kv("health.user", opt(h.user.clone()));
    t.kv("health.database", &h.database);
    t.kv("health.prefer_highest_timeline", h.prefer_highest_timeline);
    let r = &c.routing;
    t.kv("routing.read_your_writes", r.read_your_writes);
    t.kv(
        "routing.read_your_writes_wait",
        format!("{:?}", r.read_your_writes_wait),
    );
    t.kv("routing.primary_read_cap", r.primary_read_cap);
    t.kv("routing.breaker_window", format!("{:?}", r.breaker_window));
    t.kv("routing.breaker_min_reads", r.breaker_min_reads);
    t.kv(
        "routing.breaker_cooldown",
        format!("{:?}", r.breaker_cooldown),
    );
    t.kv(
        "routing.on_breaker_open",
        snake(&format!("{:?}", r.on_breaker_open)),
    );
    t.kv("routing.balance", snake(&format!("{:?}", r.balance)));
    t.kv(
        "routing.read_only_functions",
        r.read_only_functions.join(", "),
    );
    for (i, rule) in r.rules.iter().enumerate() {
        t.kv(
            &format!("routing.rules.{i}"),
            format!(
                "{} -> {}",
                rule.pattern,
                snake(&format!("{:?}", rule.route))
            ),
        );
    }
    let sf = &c.safety;
    t.kv("safety.min_replicas_to_write", sf.min_replicas_to_write);
    t.kv(
        "safety.min_replicas_max_lag_bytes",
        sf.max_lag_bytes(&c.health),
    );
    t.kv(
        "safety.min_replicas_max_lag_time",
        sf.max_lag_time(&c.health)
            .map_or_else(|| "unset".to_string(), |d| format!("{d:?}")),
    );
}

/// `LeastConnections` → `least_connections`: enum names as the config
/// file spells them.
pub fn snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_as_in_the_config_file() {
        assert_eq!(snake("LeastConnections"), "least_connections");
        assert_eq!(snake("Primary"), "primary");
        assert_eq!(snake("ServeStale"), "serve_stale");
    }

    #[test]
    fn config_rows_redact_passwords() {
        let c = Config::from_toml_str(
            "[[users]]\nname = \"app\"\npassword = \"hunter2\"\nserver_password = \"s3cret\"\n\
             [[nodes]]\nname = \"primary\"\nhost = \"127.0.0.1\"\nrole = \"primary\"\n",
        )
        .unwrap();
        let mut t = Table::new(&["key", "value"]);
        config_rows(&mut t, &c);
        let text = format!("{:?}", t.rows);
        assert!(
            !text.contains("hunter2") && !text.contains("s3cret"),
            "{text}"
        );
        assert!(text.contains("password=<redacted>"), "{text}");
        assert!(text.contains("127.0.0.1:5432 role=primary"), "{text}");
    }
}
