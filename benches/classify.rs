//! Classifier benchmarks: the hot path of routing.
//!
//! Budgets: a cached statement at most 200 ns; a first-seen 200-byte
//! SELECT at most 1 µs (lex + classify + cache insert); a text with
//! inlined literals whose shape was seen before, a cached statement.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use lagrouter_routing::{Classifier, FunctionCatalog, ReadOnlyFunctions, analyze};

/// A typical ORM read, 200 bytes.
const SELECT_200: &str = "SELECT o.id, o.created_at, lower(c.name) AS name, o.total FROM orders o \
JOIN customers c ON c.id = o.customer_id WHERE o.customer_id = $1 AND o.status = 'open' \
ORDER BY o.created_at DESC LIMIT 20 /*x*/";

fn benches(c: &mut Criterion) {
    assert!(
        (195..=205).contains(&SELECT_200.len()),
        "{}",
        SELECT_200.len()
    );

    let classifier = Classifier::new(10_000);
    classifier.classify(SELECT_200);
    c.bench_function("classify/cached_200B", |b| {
        b.iter(|| classifier.classify(black_box(SELECT_200)))
    });

    let catalog = FunctionCatalog::builtin();
    let extra = ReadOnlyFunctions::default();
    c.bench_function("classify/uncached_analyze_200B", |b| {
        b.iter(|| analyze(black_box(SELECT_200), &catalog, &extra))
    });

    // First sight through the cache: a new text each time (a different
    // comment, in letters: texts that differ only in digits share an
    // entry), so every call lexes and classifies.
    let n = AtomicU64::new(0);
    c.bench_function("classify/first_seen_200B", |b| {
        b.iter_batched(
            || {
                let i = n.fetch_add(1, Ordering::Relaxed);
                let base = SELECT_200.strip_suffix(" /*x*/").unwrap();
                format!("{base} /*{}*/", letters(i % 1_000_000))
            },
            |sql| classifier.classify(&sql),
            BatchSize::SmallInput,
        )
    });

    // Inlined literals, as `pgbench -S` sends: a new text each time, but
    // of one shape, so a cache hit.
    let n = AtomicU64::new(0);
    c.bench_function("classify/inlined_literal", |b| {
        b.iter_batched(
            || {
                let i = n.fetch_add(1, Ordering::Relaxed);
                format!(
                    "SELECT abalance FROM pgbench_accounts WHERE aid = {};",
                    i % 1_000_000
                )
            },
            |sql| classifier.classify(&sql),
            BatchSize::SmallInput,
        )
    });

    // Every simple-protocol statement inside a transaction: the quick word
    // test finds none of the effect words in it.
    let update = "UPDATE pgbench_tellers SET tbalance = tbalance + -3127 WHERE tid = 7;";
    c.bench_function("server_effects/in_transaction_update", |b| {
        b.iter(|| classifier.server_effects(black_box(update)))
    });
    // pgbench's TPC-B statements with their varying numbers, one after the
    // other, as a session sends them (so branches do not learn one text).
    let tpcb: Vec<String> = (0..700u32).map(tpcb_statement).collect();
    let bytes: usize = tpcb.iter().map(String::len).sum();
    c.bench_function(
        &format!("server_effects/tpcb_700_statements_{bytes}B"),
        |b| {
            b.iter(|| {
                tpcb.iter()
                    .filter(|s| classifier.server_effects(black_box(s)).pins)
                    .count()
            })
        },
    );
}

/// Statement `i % 7` of pgbench's TPC-B script, with numbers from `i`.
fn tpcb_statement(i: u32) -> String {
    let (aid, tid, bid, delta) = (i * 7919 % 1_000_000, i % 100, i % 10, i as i64 * 13 - 5000);
    match i % 7 {
        0 => "BEGIN;".into(),
        1 => {
            format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};")
        }
        2 => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"),
        3 => format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};"),
        4 => {
            format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};")
        }
        5 => format!(
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
             VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);"
        ),
        _ => "END;".into(),
    }
}

/// `i` in base 26, as letters.
fn letters(mut i: u64) -> String {
    let mut s = String::new();
    loop {
        s.push((b'a' + (i % 26) as u8) as char);
        i /= 26;
        if i == 0 {
            return s;
        }
    }
}

criterion_group!(classify, benches);
criterion_main!(classify);
