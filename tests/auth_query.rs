//! `[auth_query]`: users not in `[[users]]` are checked against the SCRAM
//! verifier a query on the primary returns, then log into the nodes by
//! pass-through. Uses the README's `SECURITY DEFINER` function, created
//! here as the superuser. One test, in steps, because later steps revoke
//! and restore the lookup user's right to call it.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// The function the README gives, verbatim in substance.
const GET_AUTH: &str = "\
CREATE SCHEMA IF NOT EXISTS lagrouter;
CREATE OR REPLACE FUNCTION lagrouter.get_auth(p_usename text)
RETURNS TABLE (usename name, passwd text)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS
$$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = p_usename $$;
REVOKE ALL ON FUNCTION lagrouter.get_auth(text) FROM PUBLIC;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_logs_in_unlisted_users_and_fails_cleanly() {
    within(Duration::from_secs(120), "auth_query", async {
        ensure_role("lr_lookup").await;
        ensure_role("lr_dyn").await;
        ensure_role("lr_dyn2").await;
        let grant = "GRANT USAGE ON SCHEMA lagrouter TO lr_lookup; \
                     GRANT EXECUTE ON FUNCTION lagrouter.get_auth(text) TO lr_lookup";
        blocking(move |c| {
            c.sql(c.primary_index(), GET_AUTH)?;
            c.sql(c.primary_index(), grant)
        })
        .await
        .expect("create get_auth");
        let proxy = ProxyBuilder::new()
            .user("name = \"lr_lookup\"\npassword = \"lr_lookup\"")
            .section("[auth_query]\nuser = \"lr_lookup\"\ndatabase = \"app\"\ncache_ttl = \"1h\"")
            .start()
            .await;

        // A user lagrouter's file does not list logs in, and its session
        // runs as itself on the primary and on a replica (pass-through).
        let c = connect_as(&proxy, "lr_dyn", "lr_dyn").await;
        assert_eq!(
            scalar(&c, "select current_user").await.as_deref(),
            Some("lr_dyn")
        );
        let primary_port = blocking(|c| c.port(c.primary_index())).await;
        let c_ref = &c;
        eventually(
            Duration::from_secs(20),
            "a read on a replica",
            || async move {
                let p: i32 = c_ref
                    .query_one("SELECT inet_server_port()", &[])
                    .await
                    .ok()?
                    .get(0);
                (p != i32::from(primary_port)).then_some(())
            },
        )
        .await;

        // Wrong password and unknown user: the same 28P01, the same words.
        let wrong = try_connect_as(&proxy, "lr_dyn", "nope").await;
        let wrong = expect_sqlstate(wrong.map(|_| ()), "28P01", "wrong password");
        let unknown = try_connect_as(&proxy, "lr_no_such_user", "nope").await;
        let unknown = expect_sqlstate(unknown.map(|_| ()), "28P01", "unknown user");
        assert_eq!(
            wrong.replace("lr_dyn", "X"),
            unknown.replace("lr_no_such_user", "X"),
            "an unknown user must look like a wrong password"
        );

        // The lookup user loses the right to call the function. Cached
        // answers (lr_dyn, and the unknown name) still serve; a name not
        // yet looked up gets 08006, and the proxy keeps serving.
        blocking(|c| {
            c.sql(
                c.primary_index(),
                "REVOKE EXECUTE ON FUNCTION lagrouter.get_auth(text) FROM lr_lookup",
            )
        })
        .await
        .unwrap();
        connect_as(&proxy, "lr_dyn", "lr_dyn").await;
        let again = try_connect_as(&proxy, "lr_no_such_user", "nope").await;
        expect_sqlstate(again.map(|_| ()), "28P01", "cached unknown user");
        let started = Instant::now();
        let failed = try_connect_as(&proxy, "lr_dyn2", "lr_dyn2").await;
        let msg = expect_sqlstate(failed.map(|_| ()), "08006", "failing auth_query");
        assert!(msg.contains("auth_query"), "{msg}");
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "took {:?}",
            started.elapsed()
        );
        connect(&proxy).await;

        // Restored: the next login of that user looks it up again.
        blocking(move |c| c.sql(c.primary_index(), grant))
            .await
            .unwrap();
        let c2 = connect_as(&proxy, "lr_dyn2", "lr_dyn2").await;
        assert_eq!(
            scalar(&c2, "select current_user").await.as_deref(),
            Some("lr_dyn2")
        );
    })
    .await
}
