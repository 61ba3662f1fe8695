//! The corpus: texts that must not pin or drop statements (literals,
//! comments, dollar quotes, identifiers that contain a keyword), and texts
//! that must.

use super::*;

/// Neither pins nor drops anything.
const INNOCENT: &[&str] = &[
    "select 'please discard all of these notes'",
    "select 'listen to this'",
    "SELECT 'deallocate all'",
    "SELECT 'set role admin'",
    "select 'create temp table t'",
    "select 'with hold'",
    "select 'prepare p as select 1'",
    "select 'pg_advisory_lock(1)'",
    "select E'it\\'s a listen'",
    "select $$discard all$$",
    "select $tag$ deallocate all; listen x $tag$",
    "select $a$ prepare p as select 1 $a$ as q",
    "select /* listen */ 1",
    "select 1 /* discard all */",
    "select 1 -- deallocate all",
    "-- set role admin\nselect 1",
    "select /* nested /* with hold */ still comment */ 2",
    "SELECT listen_count FROM t",
    "SELECT temp_reading FROM sensors",
    "SELECT * FROM holdings",
    "select hold from accounts",
    "SELECT role FROM members",
    "select authorization_code from payments",
    "select \"temp table\" from t",
    "select \"listen\" from t",
    "select \"discard all\" from t",
    "update t set listener = 1",
    "UPDATE t SET role = 'admin' WHERE id = 1",
    "SELECT pg_advisory_xact_lock(1)",
    "select pg_try_advisory_xact_lock(42)",
    "select pg_advisory_unlock_all()",
    "SET LOCAL role_x = 1",
    "SET LOCAL ROLE admin",
    "SET search_path = temp, public",
    "select * from prepared_orders",
    "select prepare_date from orders",
    "select deallocated from stats",
    "SELECT discarded FROM items",
    "insert into temp_log values (1)",
    "insert into temporary_things select 1",
    "create table temp (a int)",
    "create table t (hold int, listen int)",
    "select 1 as temp",
    "select x with_hold from t",
    "with hold_cte as (select 1) select * from hold_cte",
    "DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1",
    "DECLARE c CURSOR FOR SELECT 'with hold'",
    "discard plans",
    "DISCARD SEQUENCES",
    "select 'a'; select 'listen'",
    "select 1; select 'deallocate all'",
    "comment on table t is 'listen; prepare; discard all'",
    "select $1::text as \"set role\"",
    "explain select * from temp_tables",
    "select 'SET SESSION AUTHORIZATION x'",
];

/// Pins the session.
const PINS: &[&str] = &[
    "LISTEN chan",
    "listen \"Chan\"",
    "  listen chan",
    "/* why */ LISTEN chan",
    "select 1; listen chan",
    "select pg_advisory_lock(1)",
    "SELECT pg_try_advisory_lock_shared (1)",
    "select pg_advisory_lock_shared(1, 2)",
    "select pg_try_advisory_lock(k) from keys",
    "CREATE TEMP TABLE t (a int)",
    "create temporary table t as select 1",
    "CREATE LOCAL TEMP TABLE t (a int)",
    "create global temporary table t (a int)",
    "create temp view v as select 1",
    "create temporary sequence s",
    "SELECT 1 INTO TEMP t",
    "select * into temporary table t from x",
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "declare c no scroll cursor with hold for select 1",
    "PREPARE p AS SELECT 1",
    "select 1; prepare p as select 2",
    "SET ROLE other",
    "set session role other",
    "SET SESSION AUTHORIZATION other",
    "set session session authorization other",
];

#[test]
fn innocent_texts_neither_pin_nor_drop() {
    assert!(INNOCENT.len() >= 50, "{} texts", INNOCENT.len());
    for sql in INNOCENT {
        assert_eq!(server_effects(sql), ServerEffects::default(), "{sql}");
    }
}

#[test]
fn these_pin() {
    for sql in PINS {
        let fx = server_effects(sql);
        assert!(fx.pins, "{sql}");
        assert!(!fx.drops_statements && !fx.drops_all, "{sql}");
    }
}

#[test]
fn deallocate_drops_one_and_all_drops_all() {
    for sql in [
        "DEALLOCATE p",
        "deallocate prepare \"P\"",
        "select 1; deallocate x",
    ] {
        let fx = server_effects(sql);
        assert!(fx.drops_statements && !fx.drops_all, "{sql}");
    }
    for sql in [
        "DEALLOCATE ALL",
        "deallocate prepare all",
        "DISCARD ALL",
        "select 1; discard all",
    ] {
        assert!(server_effects(sql).drops_all, "{sql}");
    }
    assert_eq!(deallocated_names("DEALLOCATE Stmt1"), ["stmt1"]);
    assert_eq!(
        deallocated_names("deallocate prepare \"My\"\"S\""),
        ["My\"S"]
    );
    assert_eq!(
        deallocated_names("deallocate a; select 'deallocate b'; DEALLOCATE c"),
        ["a", "c"]
    );
    assert!(deallocated_names("DEALLOCATE ALL").is_empty());
}

#[test]
fn a_sole_deallocate_names_its_statement() {
    for (sql, name) in [
        ("DEALLOCATE s1", "s1"),
        ("deallocate prepare S1;", "s1"),
        ("/* rails */ DEALLOCATE \"a3\" -- evicted", "a3"),
        ("  DEALLOCATE \"My\"\"S\" ;; ", "My\"S"),
    ] {
        assert_eq!(sole_deallocated_name(sql).as_deref(), Some(name), "{sql}");
    }
    for sql in [
        "DEALLOCATE ALL",
        "deallocate prepare all",
        "DEALLOCATE a; DEALLOCATE b",
        "select 1; DEALLOCATE a",
        "DEALLOCATE a b",
        "DEALLOCATE",
        "DEALLOCATE 'a'",
        "select 'deallocate a'",
        "deallocate_names",
    ] {
        assert_eq!(sole_deallocated_name(sql), None, "{sql}");
    }
}

#[test]
fn text_the_lexer_cannot_cut_errs_towards_pinning() {
    let fx = server_effects("select 'unterminated listen");
    assert!(fx.pins);
    assert!(!fx.drops_all);
}

#[test]
fn a_backslash_read_both_ways() {
    // With standard_conforming_strings off, \' does not end the string,
    // and LISTEN is inside it; with it on, LISTEN is code. Both count.
    assert!(server_effects(r"select 'a\'; listen c; --'").pins);
}

#[test]
fn no_keyword_names_a_digit() {
    // Texts of the same shape share one cached analysis (crate::shape).
    for k in KEYWORDS.iter().chain(SESSION_LOCKS.iter()) {
        assert!(!k.bytes().any(|b| b.is_ascii_digit()), "{k}");
    }
}

#[test]
fn may_have_effects_finds_what_a_naive_search_finds() {
    let naive = |sql: &str| {
        KEYWORDS.iter().any(|k| {
            sql.as_bytes()
                .windows(k.len())
                .any(|w| w.eq_ignore_ascii_case(k.as_bytes()))
        })
    };
    let mut texts: Vec<String> = vec![
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1".into(),
        "select pg_advisory_lock(1)".into(),
        "CREATE TEMPORARY TABLE t (a int)".into(),
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1".into(),
        "SET ROLE app".into(),
        "set session authorization app".into(),
        "DISCARD ALL".into(),
        "deallocate p1".into(),
        "PREPARE p AS SELECT 1".into(),
        "LISTEN ch".into(),
        "".into(),
        "l".into(),
        "liste".into(),
        "x_listen".into(),
        "DEALLOCAT".into(),
        "ÄdvisoryÉ temp".into(),
        "te".into(),
        "a".into(),
        "UPDATE pgbench_tellers SET tbalance = tbalance + 1 WHERE tid = 2".into(),
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, now())"
            .into(),
    ];
    // Every keyword cut short and at the very end, in both cases.
    for k in KEYWORDS {
        texts.push(format!("select 1 {}", &k[..k.len() - 1]));
        texts.push(format!("select 1 {}", k.to_uppercase()));
    }
    for t in &texts {
        assert_eq!(may_have_effects(t), naive(t), "{t:?}");
    }
}

/// An inert text is no proxy command and has no effects; a text that is
/// not inert holds `lagrouter` or an effect word.
#[test]
fn inert_texts_are_neither_commands_nor_effects() {
    let pgbench = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
        "UPDATE pgbench_tellers SET tbalance = tbalance + -1234 WHERE tid = 12;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
         VALUES (12, 3, 56789, -1234, CURRENT_TIMESTAMP);",
        "BEGIN;",
        "END;",
    ];
    let commands = [
        "SET lagrouter.route = primary",
        "select lagrouter.wait_replicas('1s')",
        "SHOW LAGROUTER.last_write_lsn",
        "/* lagrouter:max_lag=1s */ select 1",
    ];
    let texts = INNOCENT.iter().chain(PINS).chain(&pgbench).chain(&commands);
    for sql in texts {
        let named = sql.to_ascii_lowercase().contains("lagrouter");
        assert_eq!(inert_text(sql), !named && !may_have_effects(sql), "{sql}");
        if inert_text(sql) {
            assert_eq!(crate::parse_proxy_command(sql), None, "{sql}");
            assert_eq!(server_effects(sql), ServerEffects::default(), "{sql}");
        }
    }
    for sql in pgbench {
        assert!(inert_text(sql), "{sql}");
    }
    for sql in commands.iter().chain(PINS) {
        assert!(!inert_text(sql), "{sql}");
    }
}
