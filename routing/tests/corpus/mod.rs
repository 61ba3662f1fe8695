//! The oracle corpus: hand-written tricky statements (`tricky.sql`, one
//! per `--@@` separator line) and generated combinations of function calls,
//! contexts, wrappers and disguised writes.

const TRICKY: &str = include_str!("tricky.sql");

const FUNCTIONS: &[&str] = &[
    "lower(b)",
    "count(*)",
    "nextval('s')",
    "setval('s', 1)",
    "pg_advisory_lock(1)",
    "pg_advisory_xact_lock_shared(1)",
    "set_config('a.b', 'c', true)",
    "my_func(a)",
    "app.calc(a)",
    "random()",
    "now()",
    "pg_catalog.upper(b)",
    "\"Weird\"(a)",
    "jsonb_build_object('k', a)",
    "coalesce(a, 0)",
    "abs(a)",
    "length(b)",
    "txid_current()",
    "pg_try_advisory_lock(2)",
    "dblink('x', 'y')",
];

const CONTEXTS: &[&str] = &[
    "SELECT {} FROM t",
    "SELECT * FROM t WHERE a = {}",
    "SELECT a FROM t ORDER BY {}",
    "WITH x AS (SELECT {} AS v FROM t) SELECT * FROM x",
    "SELECT (SELECT {}) AS sub",
    "SELECT * FROM t WHERE a IN (SELECT {} FROM u)",
    "VALUES ({})",
    "SELECT CASE WHEN a > 0 THEN {} END FROM t",
];

const READS: &[&str] = &[
    "SELECT 1",
    "SELECT a, b FROM t WHERE a > 1",
    "SELECT * FROM t JOIN u ON t.id = u.id",
    "SELECT a FROM t ORDER BY a LIMIT 10",
    "SELECT count(*) FROM t GROUP BY a HAVING count(*) > 1",
    "SELECT lower(b) FROM t WHERE b LIKE 'x%'",
    "SELECT * FROM t WHERE a IN (1, 2, 3)",
    "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)",
    "SELECT DISTINCT a FROM t",
    "SELECT a FROM t UNION SELECT b FROM u",
    "SELECT 'a;b', $$c;d$$, \"e;f\" FROM t",
    "SELECT j->>'k' FROM t WHERE j @> '{\"a\":1}'",
    "SELECT now() - interval '1 day'",
    "SELECT * FROM generate_series(1, 3) AS g(n)",
    "SELECT a::text, b::numeric(5,2) FROM t",
    "SELECT row_number() OVER (ORDER BY a) FROM t",
    "SELECT * FROM t WHERE a = $1 AND b = $2",
    "SELECT coalesce(max(a), 0) FROM t",
    "SELECT * FROM t /* a comment; DELETE */ WHERE a = 1",
    "SELECT * FROM t WHERE b = E'it\\'s'",
    "SELECT * FROM t WHERE b = 'it''s'",
    "SELECT * FROM (SELECT a FROM t) s",
    "SELECT t.a, u.b FROM t LEFT JOIN u USING (id)",
    "SELECT a FROM t WHERE a BETWEEN 1 AND 10",
    "SELECT array_agg(a) FROM t",
    "SELECT extract(year FROM now())",
    "SELECT * FROM t WHERE a IS NOT NULL",
    "SELECT string_agg(b, ',' ORDER BY b) FROM t",
    "SELECT date_trunc('hour', now())",
    "SELECT * FROM t WHERE b ~* '^x'",
];

const WRAPPERS: &[&str] = &[
    "{}",
    "/* c */ {}",
    "{} -- trailing",
    "{};",
    "EXPLAIN {}",
    "EXPLAIN ANALYZE {}",
    "BEGIN; {}; COMMIT",
    "BEGIN READ ONLY; {}",
    "{}; DELETE FROM t",
    "{} FOR UPDATE",
    "{} FOR SHARE",
    "WITH w AS ({}) SELECT * FROM w",
    "SELECT * FROM ({}) q",
    "{}; SELECT 'x'",
    "SELECT 1; {}",
];

const WRITES: &[&str] = &[
    "DELETE FROM t",
    "UPDATE t SET a = 1",
    "INSERT INTO t VALUES (1)",
    "TRUNCATE t",
    "DROP TABLE t",
];

const DISGUISES: &[&str] = &[
    "SELECT 1; {}",
    "/* {} */ SELECT 1; {}",
    "SELECT '{}'; {}",
    "SELECT $$x$$; {}",
    "SELECT E'\\''; {}",
    "WITH q AS ({} RETURNING 1) SELECT * FROM q",
    "SELECT 1 /* ; */; {}",
    "SELECT \"a;\" FROM t; {}",
    "SELECT $t$;$t$; {}",
    "EXPLAIN ANALYZE {}",
    "BEGIN READ ONLY; {}",
    "BEGIN; SELECT 1; COMMIT; {}",
];

/// Every statement of the corpus.
pub fn statements() -> Vec<String> {
    let mut out: Vec<String> = TRICKY.split("\n--@@\n").map(|s| s.to_string()).collect();
    for c in CONTEXTS {
        for f in FUNCTIONS {
            out.push(c.replace("{}", f));
        }
    }
    for w in WRAPPERS {
        for r in READS {
            out.push(w.replace("{}", r));
        }
    }
    for d in DISGUISES {
        for w in WRITES {
            out.push(d.replace("{}", w));
        }
    }
    out
}
