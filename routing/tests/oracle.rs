//! The classifier checked against PostgreSQL's own parser (libpg_query).
//!
//! For every statement of the corpus, the oracle decides from the parse
//! tree whether the text is certainly read-only; the lexer-based
//! classifier may be more conservative than the oracle, never less. The
//! oracle shares only the function volatility table with the classifier
//! (function verdicts are a catalog question, not a parsing one); what it
//! checks is that the lexer finds every write, locking clause, `INTO`,
//! data-modifying CTE and function call the parser finds.

use pg_query::protobuf::{CoercionForm, TransactionStmtKind, VariableSetKind};
use pg_query::{NodeEnum, ParserOptions};
use serde_json::Value;

use lagrouter_routing::{Class, FunctionCatalog, ReadOnlyFunctions, classify};

mod corpus;

/// Whether the parse trees prove `sql` read-only (the spec, applied to the
/// real grammar) whatever the server's `standard_conforming_strings`: the
/// default reading must parse and be read-only, and the
/// `standard_conforming_strings = off` reading must be read-only or fail
/// to parse (then the server would reject it).
fn oracle_read_only(sql: &str) -> bool {
    let scs_off = ParserOptions::DISABLE_STANDARD_CONFORMING_STRINGS
        | ParserOptions::DISABLE_ESCAPE_STRING_WARNING;
    parse_read_only(sql, ParserOptions::DEFAULT) == Some(true)
        && parse_read_only(sql, scs_off) != Some(false)
}

fn parses(sql: &str) -> bool {
    pg_query::parse(sql, ParserOptions::DEFAULT).is_ok()
}

/// `None` if the text does not parse with `options`.
fn parse_read_only(sql: &str, options: ParserOptions) -> Option<bool> {
    let parsed = pg_query::parse(sql, options).ok()?;
    Some(tree_is_read_only(&parsed))
}

fn tree_is_read_only(parsed: &pg_query::ParseResult) -> bool {
    let mut any_read = false;
    // (read_only, serializable) of a transaction left open.
    let mut open: Option<(Option<bool>, bool)> = None;
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            return false;
        };
        match node {
            NodeEnum::SelectStmt(_) => {
                if !tree_read_only(&serde_json::to_value(node).unwrap()) {
                    return false;
                }
                any_read = true;
            }
            NodeEnum::VariableShowStmt(_) => any_read = true,
            NodeEnum::ExplainStmt(e) => {
                let analyze = e.options.iter().any(|o| match &o.node {
                    Some(NodeEnum::DefElem(d)) => d.defname == "analyze",
                    _ => false,
                });
                let Some(inner) = e.query.as_ref().and_then(|q| q.node.as_ref()) else {
                    return false;
                };
                let ok = if analyze {
                    matches!(inner, NodeEnum::SelectStmt(_))
                        && tree_read_only(&serde_json::to_value(inner).unwrap())
                } else {
                    matches!(
                        inner,
                        NodeEnum::SelectStmt(_)
                            | NodeEnum::InsertStmt(_)
                            | NodeEnum::UpdateStmt(_)
                            | NodeEnum::DeleteStmt(_)
                            | NodeEnum::MergeStmt(_)
                    )
                };
                if !ok {
                    return false;
                }
                any_read = true;
            }
            NodeEnum::TransactionStmt(t) => match TransactionStmtKind::try_from(t.kind) {
                Ok(TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart) => {
                    if open.is_none() {
                        open = Some(modes(&t.options));
                    }
                }
                Ok(
                    TransactionStmtKind::TransStmtCommit | TransactionStmtKind::TransStmtRollback,
                ) => {
                    if !t.chain {
                        open = None;
                    }
                }
                Ok(
                    TransactionStmtKind::TransStmtSavepoint
                    | TransactionStmtKind::TransStmtRelease
                    | TransactionStmtKind::TransStmtRollbackTo,
                ) => {}
                _ => return false,
            },
            NodeEnum::VariableSetStmt(v) => {
                let multi = v.kind == VariableSetKind::VarSetMulti as i32;
                if multi && v.name == "TRANSACTION" {
                    let (ro, ser) = modes(&v.args);
                    if let Some(o) = open.as_mut() {
                        o.0 = ro.or(o.0);
                        o.1 |= ser;
                    }
                } else if !v.name.starts_with("lagrouter.") {
                    return false;
                }
            }
            _ => return false,
        }
    }
    match open {
        Some((ro, serializable)) => ro == Some(true) && !serializable,
        None => any_read,
    }
}

fn modes(options: &[pg_query::protobuf::Node]) -> (Option<bool>, bool) {
    let mut ro = None;
    let mut serializable = false;
    for o in options {
        if let Some(NodeEnum::DefElem(d)) = &o.node {
            let arg = serde_json::to_string(&d.arg).unwrap();
            match d.defname.as_str() {
                "transaction_read_only" => ro = Some(arg.contains("\"ival\":1")),
                "transaction_isolation" => serializable |= arg.contains("serializable"),
                _ => {}
            }
        }
    }
    (ro, serializable)
}

/// Walks the whole JSON form of a parse tree, so no node kind is skipped.
fn tree_read_only(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.iter().all(tree_read_only),
        Value::Object(o) => {
            for (k, child) in o {
                match k.as_str() {
                    "InsertStmt" | "UpdateStmt" | "DeleteStmt" | "MergeStmt" | "LockingClause" => {
                        return false;
                    }
                    "into_clause" if !child.is_null() => return false,
                    "locking_clause" if child.as_array().is_some_and(|a| !a.is_empty()) => {
                        return false;
                    }
                    "FuncCall" if !call_read_only(child) => return false,
                    _ => {}
                }
                if !tree_read_only(child) {
                    return false;
                }
            }
            true
        }
        _ => true,
    }
}

fn call_read_only(f: &Value) -> bool {
    // Grammar-produced calls (EXTRACT, SUBSTRING ... FROM, AT TIME ZONE)
    // are pg_catalog built-ins.
    if f["funcformat"].as_i64() == Some(CoercionForm::CoerceSqlSyntax as i64) {
        return true;
    }
    let names: Vec<&str> = f["funcname"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["node"]["String"]["sval"].as_str())
        .collect();
    let (name, schema) = match names.as_slice() {
        [n] => (*n, None),
        [.., s, n] => (*n, Some(*s)),
        [] => return false,
    };
    FunctionCatalog::builtin().is_read_only_call(&ReadOnlyFunctions::default(), schema, name)
}

fn lexer_read_only(sql: &str) -> bool {
    match classify(
        sql,
        &FunctionCatalog::builtin(),
        &ReadOnlyFunctions::default(),
    ) {
        Class::Read => true,
        Class::Begin(m) => m.is_read_only(false),
        Class::Unknown | Class::Write => false,
    }
}

#[test]
fn oracle_sanity() {
    assert!(oracle_read_only("SELECT lower('a') FROM t"));
    assert!(oracle_read_only("SELECT extract(year FROM now())"));
    assert!(!oracle_read_only("SELECT * FROM t FOR UPDATE"));
    assert!(!oracle_read_only(
        "WITH d AS (DELETE FROM t RETURNING 1) SELECT * FROM d"
    ));
    assert!(!oracle_read_only("SELECT 1 INTO t"));
    assert!(!oracle_read_only("SELECT nextval('s')"));
    assert!(oracle_read_only("BEGIN READ ONLY; SELECT 1"));
    assert!(!oracle_read_only("BEGIN; SELECT 1"));
    assert!(oracle_read_only("BEGIN; SELECT 1; COMMIT"));
    assert!(!oracle_read_only("SELECT (((("));
}

#[test]
fn lexer_is_never_less_conservative_than_the_parser() {
    let corpus = corpus::statements();
    assert!(
        corpus.len() >= 500,
        "corpus has {} statements",
        corpus.len()
    );
    let mut violations = Vec::new();
    let (mut both_read, mut oracle_read, mut both_write, mut parse_errors) = (0, 0, 0, 0);
    for sql in &corpus {
        let (lexer, oracle) = (lexer_read_only(sql), oracle_read_only(sql));
        if !parses(sql) {
            parse_errors += 1;
        }
        match (lexer, oracle) {
            (true, false) => violations.push(sql.clone()),
            (true, true) => both_read += 1,
            (false, true) => oracle_read += 1,
            (false, false) => both_write += 1,
        }
    }
    println!(
        "corpus {}: both read-only {both_read}, only the oracle read-only {oracle_read}, \
         both not read-only {both_write}, unparsable {parse_errors}, violations {}",
        corpus.len(),
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "lexer says read-only, parser disagrees:\n{}",
        violations.join("\n")
    );
    // Conservative, but still useful: most provable reads are recognised.
    let recall = both_read as f64 / (both_read + oracle_read) as f64;
    assert!(
        recall > 0.85,
        "lexer recognises only {:.0}% of reads",
        recall * 100.0
    );
}
