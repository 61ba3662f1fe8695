//! Session effects are found on the classifier's tokens, not in raw text,
//! through a real driver (tokio-postgres, which names its prepared
//! statements): a string literal that says "discard all" forgets none of
//! the session's prepared statements, one that says "listen" pins nothing,
//! while a real `LISTEN` does pin.

mod support;

use std::time::Duration;

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
