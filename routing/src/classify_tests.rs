//! Unit tests of `classify` (kept apart to keep the module short).

use super::*;

fn class(sql: &str) -> Class {
    classify(
        sql,
        &FunctionCatalog::builtin(),
        &ReadOnlyFunctions::default(),
    )
}

fn assert_class(want: Class, sqls: &[&str]) {
    for sql in sqls {
        assert_eq!(class(sql), want, "{sql}");
    }
}

#[test]
fn plain_reads() {
    assert_class(
        Class::Read,
        &[
            "SELECT 1",
            "select * from t where a = $1 and b in (1, 2) order by c limit 10",
            "(SELECT 1) UNION ALL (SELECT 2)",
            "VALUES (1, 'a'), (2, 'b')",
            "TABLE users",
            "SHOW search_path",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "WITH RECURSIVE t(n) AS (VALUES (1) UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT sum(n) FROM t",
            "SELECT count(*) FILTER (WHERE a > 1) OVER (PARTITION BY b ORDER BY (c)) FROM t",
            "SELECT coalesce(a, 0), nullif(b, 1), greatest(1, 2), exists(select 1) FROM t",
            "SELECT a::numeric(10,2), CAST(b AS varchar(5)), c::character varying(3) FROM t",
            "SELECT * FROM a LEFT JOIN (SELECT 1 AS x) s ON true JOIN (b JOIN c ON true) ON true",
            "SELECT * FROM (VALUES (1)) AS v(a)",
            "SELECT lower(name), now(), date_trunc('day', ts) FROM t GROUP BY (1), 2",
            "SELECT 'INSERT INTO t VALUES (1)', $$DELETE FROM t$$, E'\\' UPDATE', \"update\" FROM t",
            "SELECT 1 /* DELETE FROM t; */ -- INSERT\n",
            "SELECT j->>'k', j #> '{a}', a || b, a !~* 'x' FROM t",
            "SELECT pg_catalog.lower('A')",
            "SELECT substring(s FROM 1 FOR 2), x AT TIME ZONE 'UTC' FROM t",
            "SELECT 1; SELECT 2;",
            "BEGIN; SELECT 1; COMMIT;",
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN (FORMAT JSON, COSTS off) DELETE FROM t",
            "EXPLAIN ANALYZE SELECT * FROM t",
        ],
    );
}

#[test]
fn writes() {
    assert_class(
        Class::Write,
        &[
            "INSERT INTO t VALUES (1)",
            "update t set a = 1",
            "DELETE FROM t",
            "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "WITH u AS (UPDATE t SET a = 1 RETURNING a) SELECT 1",
            "SELECT * FROM t FOR UPDATE",
            "SELECT * FROM (SELECT * FROM t FOR SHARE) s",
            "SELECT * FROM t FOR NO KEY UPDATE",
            "SELECT * FROM t FOR KEY SHARE SKIP LOCKED",
            "SELECT * INTO new_t FROM t",
            "SELECT 1INTO t",
            "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
            "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
            "EXPLAIN ANALYSE VERBOSE UPDATE t SET a = 1",
            "SELECT 1; DELETE FROM t",
            "COPY t FROM STDIN",
            "COPY (SELECT 1) TO STDOUT",
            "CALL proc()",
            "DO $$ BEGIN DELETE FROM t; END $$",
            "LOCK TABLE t",
            "CREATE TABLE t (a int)",
            "TRUNCATE t",
            "VACUUM",
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "LISTEN ch",
            "NOTIFY ch",
            "SET search_path = app",
            "COMMIT",
            "",
            "   -- just a comment",
            "SELECT 'unterminated",
            "SELECT 1 /* unterminated",
            "SELECT $tag$ unterminated",
            "BEGIN; SELECT 1; COMMIT PREPARED 'x'",
            "(INSERT INTO t VALUES (1))",
            "EXPLAIN EXECUTE p",
        ],
    );
}

#[test]
fn known_writers_are_writes_not_unknown() {
    assert_class(
        Class::Write,
        &[
            "SELECT nextval('s')",
            "SELECT setval('s', 1)",
            "select NEXTVAL('s')",
            "SELECT txid_current()",
            "SELECT pg_current_xact_id()",
            "SELECT pg_notify('c', 'x')",
            "SELECT lo_create(0)",
            "SELECT 1 FROM t WHERE a = nextval('s')",
        ],
    );
}

#[test]
fn blocks_closed_in_the_text_keep_their_needs() {
    for sql in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY; SELECT 1; COMMIT",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT 1; COMMIT",
        "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SELECT 1; COMMIT",
        "BEGIN READ WRITE; SELECT 1; COMMIT",
    ] {
        assert_eq!(class(sql), Class::Write, "{sql}");
    }
    assert_eq!(class("BEGIN READ ONLY; SELECT 1; COMMIT"), Class::Read);
}

#[test]
fn unknown_functions_and_operators() {
    assert_class(
        Class::Unknown,
        &[
            "SELECT pg_advisory_lock(1)",
            "SELECT set_config('a.b', 'c', false)",
            "SELECT my_func(1)",
            "SELECT app.lower('x')",
            "SELECT \"MyFunc\"()",
            "SELECT * FROM generate_series(1, 3) g, my_srf() AS (a int)",
            "SELECT a === b FROM t",
            "SELECT OPERATOR(pg_catalog.+)(1, 2)",
            "SELECT random()",
            "SELECT join(1)",
            "WITH x AS (SELECT 1) SELECT * FROM x, f() AS (a int)",
            "SELECT * FROM t x(a)",
        ],
    );
}

#[test]
fn config_and_catalog_change_function_verdicts() {
    let extra = ReadOnlyFunctions::new(["random", "app.f"]);
    let builtin = FunctionCatalog::builtin();
    assert_eq!(classify("SELECT random()", &builtin, &extra), Class::Read);
    assert_eq!(classify("SELECT app.f()", &builtin, &extra), Class::Read);
    let loaded = FunctionCatalog::from_rows([("calc", 's'), ("touch", 'v')]);
    let none = ReadOnlyFunctions::default();
    assert_eq!(
        classify("SELECT calc(1), app.calc(2)", &loaded, &none),
        Class::Read
    );
    assert_eq!(classify("SELECT touch(1)", &loaded, &none), Class::Unknown);
}

#[test]
fn transactions() {
    let ro = TxnMode {
        read_only: Some(true),
        serializable: false,
    };
    assert_class(
        Class::Begin(TxnMode::default()),
        &[
            "BEGIN",
            "START TRANSACTION",
            "begin work;",
            "BEGIN; SELECT 1",
        ],
    );
    assert_class(
        Class::Begin(ro),
        &[
            "BEGIN READ ONLY",
            "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            "BEGIN; SET TRANSACTION READ ONLY; SELECT 1",
            "BEGIN; SET transaction_read_only = on",
        ],
    );
    assert_eq!(
        class("BEGIN READ WRITE"),
        Class::Begin(TxnMode {
            read_only: Some(false),
            serializable: false
        })
    );
    let c = class("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE");
    assert!(
        matches!(c, Class::Begin(m) if !m.is_read_only(true)),
        "{c:?}"
    );
    assert!(TxnMode::default().is_read_only(true));
    assert!(!TxnMode::default().is_read_only(false));
    // A transaction that commits within the text is judged by its content.
    assert_eq!(class("BEGIN; SELECT 1; COMMIT; SELECT 2"), Class::Read);
    assert_eq!(
        class("BEGIN; SELECT 1; COMMIT AND CHAIN"),
        Class::Begin(TxnMode::default())
    );
    assert_eq!(class("BEGIN READ ONLY; SELECT nextval('s')"), Class::Write);
    assert_eq!(
        class("BEGIN; SAVEPOINT a; SELECT 1; ROLLBACK TO SAVEPOINT a; COMMIT"),
        Class::Read
    );
}

#[test]
fn class_write_flag() {
    assert!(!Class::Read.is_write());
    assert!(Class::Write.is_write() && Class::Unknown.is_write());
    assert!(Class::Begin(TxnMode::default()).is_write());
    assert!(
        !Class::Begin(TxnMode {
            read_only: Some(true),
            serializable: false
        })
        .is_write()
    );
}

#[test]
fn backslashes_in_plain_strings_are_read_both_ways() {
    // With standard_conforming_strings = off this is one string followed by
    // a DELETE; with it on, a string, then `; DELETE ...` inside a string.
    assert_eq!(class(r"SELECT 'x\' '; DELETE FROM t; --'"), Class::Write);
    // A backslash that hides nothing either way.
    assert_eq!(class(r"SELECT 'a\_b'"), Class::Read);
}

#[test]
fn hints_and_effects_are_collected() {
    let a = analyze(
        "/* lagrouter:route=primary min_lsn=0/10 */ SELECT 1",
        &FunctionCatalog::builtin(),
        &ReadOnlyFunctions::default(),
    );
    assert_eq!(a.class, Class::Read);
    assert_eq!(a.hints.route, Some(crate::hints::RouteOverride::Primary));
    assert_eq!(a.hints.min_lsn, Some(lagrouter_health::Lsn(0x10)));
    // Hints in string literals are not hints.
    let a = analyze(
        "SELECT '/* lagrouter:route=primary */'",
        &FunctionCatalog::builtin(),
        &ReadOnlyFunctions::default(),
    );
    assert!(a.hints.is_empty());

    let a = analyze(
        "SET lagrouter.min_lsn = '0/20'; SELECT 1",
        &FunctionCatalog::builtin(),
        &ReadOnlyFunctions::default(),
    );
    assert_eq!(a.class, Class::Read);
    assert_eq!(
        a.effects.as_ref(),
        &[SessionEffect::Proxy(ProxyCommand::SetMinLsn(Some(
            lagrouter_health::Lsn(0x20)
        )))]
    );
    let effects = |sql: &str| {
        analyze(
            sql,
            &FunctionCatalog::builtin(),
            &ReadOnlyFunctions::default(),
        )
        .effects
    };
    assert_eq!(
        effects("SET default_transaction_read_only = on").as_ref(),
        &[SessionEffect::DefaultReadOnly(true)]
    );
    assert_eq!(
        effects("set session default_transaction_read_only to 'off'").as_ref(),
        &[SessionEffect::DefaultReadOnly(false)]
    );
    assert_eq!(
        effects("SET LOCAL default_transaction_read_only = on").as_ref(),
        &[]
    );
    assert_eq!(
        effects("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").as_ref(),
        &[SessionEffect::DefaultReadOnly(true)]
    );
    assert_eq!(
        effects("RESET default_transaction_read_only").as_ref(),
        &[SessionEffect::DefaultReadOnly(false)]
    );
    assert_eq!(effects("DISCARD ALL").as_ref(), &[SessionEffect::ResetAll]);
    assert_eq!(effects("RESET ALL").as_ref(), &[SessionEffect::ResetAll]);
}

/// `writes`: what makes a transaction on the primary need its commit LSN.
#[test]
fn writes_is_set_by_statements_that_may_change_data_only() {
    let writes = |sql: &str| {
        analyze(
            sql,
            &FunctionCatalog::builtin(),
            &ReadOnlyFunctions::default(),
        )
        .writes
    };
    for sql in [
        "BEGIN",
        "BEGIN ISOLATION LEVEL REPEATABLE READ",
        "COMMIT",
        "END",
        "ROLLBACK",
        "SAVEPOINT a",
        "RELEASE a",
        "ROLLBACK TO SAVEPOINT a",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "SELECT lower(name), now() FROM t",
        "BEGIN; SELECT 1; COMMIT",
        "",
    ] {
        assert!(!writes(sql), "{sql:?} does not write");
    }
    for sql in [
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "INSERT INTO t VALUES (1)",
        "BEGIN; UPDATE t SET a = 1",
        "SELECT nextval('s')",
        "SELECT my_function(1)",
        "SELECT * FROM t FOR UPDATE",
        "SELECT 1 INTO t2",
        "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
        "CALL p()",
        "DO $$ BEGIN END $$",
        "COPY t FROM STDIN",
        "CREATE TABLE t (a int)",
        "COMMIT PREPARED 'x'",
        "SELECT 'unterminated",
    ] {
        assert!(writes(sql), "{sql:?} may write");
    }
}

#[test]
fn the_analysis_says_whether_a_proxy_command_may_be_in_the_text() {
    let catalog = FunctionCatalog::builtin();
    let extra = ReadOnlyFunctions::default();
    let names = |sql: &str| analyze(sql, &catalog, &extra).names_lagrouter;
    for sql in [
        "SHOW lagrouter.route",
        "set LagRouter.route = primary",
        "SELECT lagrouter.wait_replicas(1, 500)",
        "/* LAGROUTER:min_lsn=0/16B3748 */ SELECT 1",
        "SELECT 'lagrouter'",
    ] {
        assert!(names(sql), "{sql}");
    }
    for sql in [
        "SELECT 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = 7",
        "SHOW lag_router",
        "SET route = primary",
    ] {
        // A caller skips the proxy-command test for these.
        assert!(!names(sql), "{sql}");
        assert!(crate::parse_proxy_command(sql).is_none(), "{sql}");
    }
}
