use super::*;

const MINIMAL: &str = r#"
[[users]]
name = "app"
password = "secret"

[[nodes]]
name = "primary"
host = "127.0.0.1"
port = 5432
role = "primary"
"#;

#[test]
fn minimal_config_gets_documented_defaults() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.server.listen, "127.0.0.1:6432");
    assert_eq!(c.server.workers, 1);
    assert_eq!(c.pool.size, 20);
    assert_eq!(c.pool.mode, PoolMode::Transaction);
    assert_eq!(
        c.health.check_interval,
        std::time::Duration::from_millis(250)
    );
    assert_eq!(c.health.recover_after_checks, 3);
    assert_eq!(c.routing.primary_read_cap, 0.20);
    assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
    assert_eq!(c.users[0].backend_password(), Some("secret"));
}

#[test]
fn unknown_key_is_an_error_with_line_and_key() {
    let text = format!("{MINIMAL}\n[pool]\nsize = 4\nsizee = 5\n");
    let err = Config::from_toml_str(&text).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(
        p.line,
        Some(text.lines().position(|l| l.starts_with("sizee")).unwrap() + 1)
    );
    assert_eq!(p.key, "pool.sizee");
    assert!(p.message.contains("unknown field"), "{}", p.message);
}

#[test]
fn wrong_type_names_line_and_key() {
    let text = MINIMAL.replace("port = 5432", "port = \"x\"");
    let err = Config::from_toml_str(&text).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(p.key, "nodes.port");
    assert_eq!(p.line, Some(9));
}

#[test]
fn validation_reports_every_problem_with_lines() {
    let text = r#"
[server]
listen = "nope"

[pool]
size = 0

[[users]]
name = "app"
password = "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

[[nodes]]
name = "a"
host = "h"
role = "replica"

[[nodes]]
name = "a"
host = "h"
port = 0
role = "replica"

[routing]
primary_read_cap = 1.5
"#;
    let err = Config::from_toml_str(text).unwrap_err();
    let keys: Vec<_> = err
        .problems()
        .iter()
        .map(|p| (p.key.as_str(), p.line))
        .collect();
    assert!(keys.contains(&("server.listen", Some(3))), "{keys:?}");
    assert!(keys.contains(&("pool.size", Some(6))), "{keys:?}");
    assert!(keys.contains(&("users[0].password", Some(10))), "{keys:?}");
    assert!(
        keys.contains(&("users[0].server_password", Some(8))),
        "{keys:?}"
    );
    assert!(keys.contains(&("nodes[1].name", Some(18))), "{keys:?}");
    assert!(keys.contains(&("nodes[1].port", Some(20))), "{keys:?}");
    assert!(keys.iter().any(|(k, _)| *k == "nodes"), "{keys:?}");
    assert!(
        keys.contains(&("routing.primary_read_cap", Some(24))),
        "{keys:?}"
    );
}

#[test]
fn bad_rule_regex_is_a_parse_error_on_its_line() {
    let text =
        format!("{MINIMAL}\n[[routing.rules]]\npattern = \"(unclosed\"\nroute = \"primary\"\n");
    let err = Config::from_toml_str(&text).unwrap_err();
    let p = &err.problems()[0];
    assert!(p.message.contains("invalid pattern"), "{}", p.message);
    assert_eq!(p.key, "routing.rules.pattern");
}

#[test]
fn heartbeat_table_must_be_a_plain_name() {
    let text = format!("{MINIMAL}\n[health]\nheartbeat_table = \"x; drop table y\"\n");
    let err = Config::from_toml_str(&text).unwrap_err();
    assert_eq!(err.problems()[0].key, "health.heartbeat_table");
}

#[test]
fn auth_methods_use_the_documented_names() {
    for (name, want) in [
        ("scram-sha-256", AuthMethod::ScramSha256),
        ("md5", AuthMethod::Md5),
        ("trust", AuthMethod::Trust),
    ] {
        let text = MINIMAL.replace(
            "password = \"secret\"",
            &format!("password = \"secret\"\nauth = \"{name}\""),
        );
        assert_eq!(
            Config::from_toml_str(&text).unwrap().users[0].auth,
            want,
            "{name}"
        );
    }
}

#[test]
fn secrets_are_redacted_in_debug() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("secret"), "{dbg}");
}

#[test]
fn handle_swaps_whole_configs() {
    let h = ConfigHandle::new(Config::from_toml_str(MINIMAL).unwrap());
    let before = h.load_full();
    let mut next = (*before).clone();
    next.pool.size = 3;
    h.store(next);
    assert_eq!(before.pool.size, 20);
    assert_eq!(h.load().pool.size, 3);
}

#[test]
fn workers_must_be_between_1_and_256() {
    for (n, ok) in [(0, false), (1, true), (256, true), (257, false)] {
        let text = format!("[server]\nworkers = {n}\n{MINIMAL}");
        match Config::from_toml_str(&text) {
            Ok(c) => {
                assert!(ok, "workers = {n} accepted");
                assert_eq!(c.server.workers, n);
            }
            Err(e) => {
                assert!(!ok, "workers = {n} refused: {e}");
                assert_eq!(e.problems()[0].key, "server.workers");
                assert_eq!(e.problems()[0].line, Some(2));
            }
        }
    }
}

#[test]
fn server_tls_defaults_to_prefer_and_node_modes_override() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    let tls = c.node_tls(&c.nodes[0]);
    assert_eq!(tls.mode, SslMode::Prefer);
    assert!(tls.client.is_some(), "prefer needs a client config");
    let text = MINIMAL.replace(
        "role = \"primary\"",
        "role = \"primary\"\nsslmode = \"disable\"",
    );
    let c = Config::from_toml_str(&text).unwrap();
    let tls = c.node_tls(&c.nodes[0]);
    assert_eq!(tls.mode, SslMode::Disable);
    assert!(tls.client.is_none());
}

#[test]
fn server_tls_problems_name_their_key() {
    let keys = |text: &str| -> Vec<String> {
        match Config::from_toml_str(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().iter().map(|p| p.key.clone()).collect(),
        }
    };
    assert_eq!(
        keys(&format!(
            "{MINIMAL}\n[server_tls]\nsslmode = \"verify-full\"\n"
        )),
        ["server_tls.sslmode"]
    );
    assert_eq!(
        keys(&MINIMAL.replace(
            "role = \"primary\"",
            "role = \"primary\"\nsslmode = \"verify-ca\""
        )),
        ["nodes[0].sslmode"]
    );
    assert_eq!(
        keys(&format!("{MINIMAL}\n[server_tls]\nsslcert = \"/x.crt\"\n")),
        ["server_tls.sslkey"]
    );
    assert_eq!(
        keys(&format!(
            "{MINIMAL}\n[server_tls]\nsslmode = \"verfy-full\"\n"
        )),
        ["server_tls.sslmode"]
    );
    // A file that cannot be read rejects the configuration, naming it.
    let text = format!(
        "{MINIMAL}\n[server_tls]\nsslmode = \"verify-full\"\nsslrootcert = \"/nonexistent/ca.crt\"\n"
    );
    let err = Config::from_toml_str(&text).unwrap_err();
    let p = &err.problems()[0];
    assert_eq!(p.key, "server_tls.sslrootcert");
    assert!(p.message.contains("/nonexistent/ca.crt"), "{}", p.message);
    assert_eq!(p.line, Some(text.lines().count()));
}

#[test]
fn equal_tls_settings_compare_equal_across_loads() {
    let a = Config::from_toml_str(MINIMAL).unwrap();
    let b = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(a.node_tls(&a.nodes[0]), b.node_tls(&b.nodes[0]));
    let text = MINIMAL.replace(
        "role = \"primary\"",
        "role = \"primary\"\nsslmode = \"require\"",
    );
    let c = Config::from_toml_str(&text).unwrap();
    assert_ne!(a.node_tls(&a.nodes[0]), c.node_tls(&c.nodes[0]));
}

#[test]
fn a_scram_verifier_needs_no_server_password_unless_health_or_auth_query_log_in_with_it() {
    const VERIFIER: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$\
        7ulb3mFNI0PZbE8YmpXOnJhNLC+oE4EfFlBCsBlBF00=:Vy2bGbS7JjVn2zQdVPJMk3bQHZKWlRqfICgg2cRYKl4=";
    let keys = |text: &str| -> Vec<String> {
        match Config::from_toml_str(text) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems().iter().map(|p| p.key.clone()).collect(),
        }
    };
    let second = format!("{MINIMAL}\n[[users]]\nname = \"pt\"\npassword = \"{VERIFIER}\"\n");
    assert_eq!(keys(&second), Vec::<String>::new(), "pass-through user");
    assert_eq!(
        keys(&format!("{second}\n[health]\nuser = \"pt\"\n")),
        ["health.user"]
    );
    assert_eq!(
        keys(&format!("{second}\n[auth_query]\nuser = \"pt\"\n")),
        ["auth_query.user"]
    );
    assert_eq!(
        keys(&format!(
            "{MINIMAL}\n[auth_query]\nuser = \"app\"\nquery = \"SELECT 1\"\n"
        )),
        ["auth_query.query"]
    );
    assert_eq!(
        keys(&format!("{MINIMAL}\n[auth_query]\nuser = \"ghost\"\n")),
        ["auth_query.user"]
    );
    let md5 = MINIMAL.replace(
        "password = \"secret\"",
        "password = \"md5d41d8cd98f00b204e9800998ecf8427e\"\nauth = \"md5\"",
    );
    assert_eq!(keys(&md5), ["users[0].server_password"]);
}
