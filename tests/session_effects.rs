//! Session effects are found on the classifier's tokens, not in raw text,
//! through a real driver (tokio-postgres, which names its prepared
//! statements): a string literal that says "discard all" forgets none of
//! the session's prepared statements, one that says "listen" pins nothing,
//! while a real `LISTEN` does pin. A simple-query `DEALLOCATE name` (what
//! Rails and PHP's PDO send when they evict a statement) forgets that one
//! statement, as it would directly.

mod support;

use std::time::Duration;

use support::raw::{RawConn, message, query};
use support::*;

async fn pinned_sessions(proxy: &TestProxy) -> u64 {
    let admin = try_connect_str(&format!(
        "host=127.0.0.1 port={} user=lradmin password=adminpw dbname=lagrouter connect_timeout=10",
        proxy.port()
    ))
    .await
    .unwrap_or_else(|e| panic!("admin console: {}", describe(&e)));
    console_rows(&admin, "SHOW STATS")
        .await
        .into_iter()
        .find(|r| r["stat"] == "pinned_sessions")
        .and_then(|r| r["value"].parse().ok())
        .expect("pinned_sessions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_and_comments_have_no_session_effects() {
    within(Duration::from_secs(120), "session effects", async {
        let proxy = ProxyBuilder::new()
            .user("name = \"lradmin\"\npassword = \"adminpw\"\nadmin = true")
            .start()
            .await;
        let c = connect(&proxy).await;
        let st = c.prepare("select $1::int + 1").await.expect("prepare");
        for text in [
            "select 'please discard all of these notes'",
            "select 1 /* deallocate all */",
            "select $$DISCARD ALL$$",
            "select 'listen to this'",
            "select 'create temp table x'",
        ] {
            c.simple_query(text)
                .await
                .unwrap_or_else(|e| panic!("{text}: {}", describe(&e)));
            let v: i32 = c
                .query_one(&st, &[&41i32])
                .await
                .unwrap_or_else(|e| panic!("the prepared statement after {text}: {}", describe(&e)))
                .get(0);
            assert_eq!(v, 42, "after {text}");
        }
        assert_eq!(pinned_sessions(&proxy).await, 0, "no literal pinned");
        c.simple_query("LISTEN lr_effects").await.expect("listen");
        assert_eq!(pinned_sessions(&proxy).await, 1, "LISTEN pins");
        let v: i32 = c
            .query_one(&st, &[&1i32])
            .await
            .expect("still prepared")
            .get(0);
        assert_eq!(v, 2);
    })
    .await
}

/// Parse `name` as `sql` (one int parameter) and Sync.
fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [name, sql] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&23i32.to_be_bytes());
    let mut out = message(b'P', &body);
    out.extend(message(b'S', &[]));
    out
}

/// Bind statement `name` to the text parameter `arg`, Execute, Sync.
fn run(name: &str, arg: &str) -> Vec<u8> {
    let mut body = vec![0u8];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&(arg.len() as i32).to_be_bytes());
    body.extend_from_slice(arg.as_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    let mut out = message(b'B', &body);
    out.extend(message(b'E', &[0, 0, 0, 0, 0]));
    out.extend(message(b'S', &[]));
    out
}

/// Sends `bytes`, reads to ReadyForQuery: the first DataRow's text or the
/// error's SQLSTATE, and the transaction status.
async fn answer(c: &mut RawConn, bytes: &[u8]) -> (Result<String, String>, u8) {
    c.send(bytes).await.expect("send");
    let msgs = c.until_ready(Duration::from_secs(15)).await;
    let status = msgs.last().map_or(0, |m| m.body[0]);
    if let Some(e) = msgs.iter().find(|m| m.tag == b'E') {
        return (Err(e.code()), status);
    }
    let row = msgs.iter().find(|m| m.tag == b'D').map(|m| {
        let len = i32::from_be_bytes(m.body[2..6].try_into().unwrap()) as usize;
        String::from_utf8_lossy(&m.body[6..6 + len]).into_owned()
    });
    let tag = msgs
        .iter()
        .find(|m| m.tag == b'C')
        .map(|m| String::from_utf8_lossy(&m.body[..m.body.len() - 1]).into_owned());
    (Ok(row.or(tag).unwrap_or_default()), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_deallocate_forgets_one_protocol_statement() {
    within(Duration::from_secs(120), "DEALLOCATE name", async {
        ensure_role("lr_effects").await;
        let proxy = ProxyBuilder::new()
            .user("name = \"lr_effects\"\npassword = \"lr_effects\"\nauth = \"trust\"")
            .start()
            .await;
        let mut c = RawConn::login_trust(proxy.addr, "lr_effects").await;
        for (name, sql) in [("a1", "select $1 + 1"), ("a2", "select $1 * 2")] {
            assert_eq!(answer(&mut c, &parse(name, sql)).await.1, b'I');
        }
        assert_eq!(answer(&mut c, &run("a1", "41")).await.0, Ok("42".into()));
        // What Rails sends when it evicts a statement.
        let (got, status) = answer(&mut c, &query("DEALLOCATE a1")).await;
        assert_eq!((got, status), (Ok("DEALLOCATE".into()), b'I'));
        assert_eq!(
            answer(&mut c, &run("a1", "1")).await.0,
            Err("26000".into()),
            "a deallocated statement is gone"
        );
        assert_eq!(answer(&mut c, &run("a2", "21")).await.0, Ok("42".into()));
        // Inside a transaction: answered in it, and the transaction goes on.
        assert_eq!(answer(&mut c, &query("BEGIN")).await.1, b'T');
        let (got, status) =
            answer(&mut c, &query("/* evicted */ deallocate prepare \"a2\";")).await;
        assert_eq!((got, status), (Ok("DEALLOCATE".into()), b'T'));
        assert_eq!(
            answer(&mut c, &query("select 7")).await,
            (Ok("7".into()), b'T')
        );
        assert_eq!(answer(&mut c, &query("COMMIT")).await.1, b'I');
        assert_eq!(answer(&mut c, &run("a2", "1")).await.0, Err("26000".into()));
        // A name the client never prepared: the server's own answer, as
        // directly; and in a failed transaction, the server's 25P02.
        assert_eq!(
            answer(&mut c, &query("DEALLOCATE never_prepared")).await.0,
            Err("26000".into())
        );
        assert_eq!(answer(&mut c, &parse("a3", "select $1")).await.1, b'I');
        assert_eq!(answer(&mut c, &query("BEGIN")).await.1, b'T');
        assert_eq!(
            answer(&mut c, &query("select 1/0")).await.0,
            Err("22012".into())
        );
        assert_eq!(
            answer(&mut c, &query("DEALLOCATE a3")).await,
            (Err("25P02".into()), b'E')
        );
        assert_eq!(answer(&mut c, &query("ROLLBACK")).await.1, b'I');
        assert_eq!(answer(&mut c, &run("a3", "5")).await.0, Ok("5".into()));
    })
    .await
}
