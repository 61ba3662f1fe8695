//! The heartbeat writer: upserts this instance's row on the write target
//! every `heartbeat_interval`, over a dedicated connection.
//!
//! Every instance beats in a row of its own (a random id, drawn at start),
//! so instances do not queue on one row lock: when the primary's commits
//! stall, those that share a row wait for each other's, one after
//! another (0.3–1.5 s measured with two instances on a host whose disk
//! stalled). Rows of instances gone for a day are deleted when a writer
//! connects.
//!
//! Replicas read the age of the newest row back in their check (time
//! lag), and the
//! write keeps WAL moving while the application is idle, so a replica's
//! replay LSN keeps advancing past every read-your-writes token. It writes
//! only to the node the latest snapshot names as the single primary: never
//! during split brain. `heartbeat_interval = "0s"` stops it (checked every
//! `check_interval` so turning it back on by reload works).
//!
//! A user that may not create or write the table (PostgreSQL 15 lets only
//! the database owner create tables in `public`, and the default database
//! is `postgres`) still gets a heartbeat: the writer then commits a
//! transaction id (`SELECT txid_current()`, which any user may run), and
//! replicas' time lag is read from `pg_last_xact_replay_timestamp()` (see
//! `lag`). The log says, once per connection, what to grant to use the table.
//!
//! Writes are timed right after a round publishes, not on a free-running
//! timer: a timer drifts into phase with the rounds, and a heartbeat
//! committed between a replica's sample and the primary's shows as byte lag
//! on an idle, caught-up replica. Written just after a round, it has most
//! of a `check_interval` to replicate before the next one looks.

use std::time::Duration;

use lagrouter_config::ConfigHandle;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use tokio_util::sync::CancellationToken;

use crate::SharedSnapshot;
use crate::backoff::Backoff;
use crate::conn::{ConnTarget, connect};
use crate::error::describe_pg_error;

/// The statements of the heartbeat of instance `id`, for a validated table
/// name (see `check_sql`).
pub struct HeartbeatSql {
    pub create: String,
    /// Writes the instance's row.
    pub upsert: String,
    /// Deletes the rows of other instances that have not beaten for a day.
    pub prune: String,
}

/// [`HeartbeatSql`] for `table` and the row `id`.
pub fn heartbeat_sql(table: &str, id: i32) -> HeartbeatSql {
    HeartbeatSql {
        create: format!(
            "CREATE TABLE IF NOT EXISTS {table} (id integer PRIMARY KEY, ts timestamptz NOT NULL)"
        ),
        upsert: format!(
            "INSERT INTO {table} (id, ts) VALUES ({id}, clock_timestamp()) \
             ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts"
        ),
        prune: format!(
            "DELETE FROM {table} WHERE id <> {id} AND ts < clock_timestamp() - interval '1 day'"
        ),
    }
}

/// A row id for this instance's heartbeat, in `1..=i32::MAX`: random
/// (`RandomState` is seeded by the OS), so that instances on one host
/// with one config file get rows of their own.
fn instance_row() -> i32 {
    use std::hash::BuildHasher;
    let h = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    (h % i32::MAX as u64) as i32 + 1
}

/// How a connection beats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beat {
    /// Upsert the heartbeat row.
    Table,
    /// Commit a transaction id: no table, no privilege needed.
    Xid,
}

/// The heartbeat without a table.
const XID_BEAT: &str = "SELECT txid_current()";

/// What to tell an operator whose monitor user may not use the table.
fn grant_advice(user: Option<&str>, table: &str, database: &str, node: &str) -> String {
    let user = user.unwrap_or("the monitor user");
    format!(
        "user {user} may not create or write the heartbeat table {table} in database \
         {database} on {node}; beating with txid_current() instead (time lag from \
         pg_last_xact_replay_timestamp()). To use the table, run as a superuser in database \
         {database}: CREATE TABLE {table} (id integer PRIMARY KEY, ts timestamptz NOT NULL); \
         GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {user}; or set [health] database \
         to a database {user} owns"
    )
}

struct Writer {
    /// This instance's row.
    row: i32,
    client: Option<(ConnTarget, String, Client, Beat)>,
    backoff: Backoff,
    failing: bool,
}

/// Runs the heartbeat writer until `shutdown`. `rounds` ticks with every
/// published snapshot.
pub async fn run(
    config: ConfigHandle,
    snapshot: SharedSnapshot,
    mut rounds: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let mut w = Writer {
        row: instance_row(),
        client: None,
        backoff: Backoff::default(),
        failing: false,
    };
    let mut last_write: Option<Instant> = None;
    loop {
        let cfg = config.load_full();
        let h = &cfg.health;
        // Wait for the next round, but not forever: a stalled monitor must
        // not stop the heartbeat, which keeps WAL moving for routing.
        let wait = h.heartbeat_interval.max(h.check_interval);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = timeout(wait, rounds.changed()) => {}
        }
        if h.heartbeat_interval.is_zero() {
            w.client = None;
            continue;
        }
        // Beat on the round closest to the interval: with 500ms and rounds
        // every 250ms, every other round.
        let due = h.heartbeat_interval.saturating_sub(h.check_interval / 2);
        if last_write.is_some_and(|t| t.elapsed() < due) {
            continue;
        }
        let snap = snapshot.load();
        // Seq 0 is the unchecked initial snapshot: wait for a round to
        // confirm the primary before writing to it.
        let checked = snap.seq > 0;
        let target = snap.primary_index().filter(|_| checked).and_then(|i| {
            cfg.nodes
                .get(i)
                .filter(|n| snap.nodes.get(i).is_some_and(|s| s.name == n.name))
        });
        let Some(node) = target else {
            w.client = None;
            continue;
        };
        let t = ConnTarget::new(&cfg, node);
        last_write = Some(Instant::now());
        let r = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = w.beat(&node.name, t, &h.heartbeat_table, h.check_timeout, h.check_interval) => r,
        };
        w.report(&node.name, r);
    }
}

impl Writer {
    async fn beat(
        &mut self,
        node: &str,
        target: ConnTarget,
        table: &str,
        limit: Duration,
        interval: Duration,
    ) -> Result<(), String> {
        let sql = heartbeat_sql(table, self.row);
        if self
            .client
            .as_ref()
            .is_some_and(|(t, tb, c, _)| *t != target || tb != table || c.is_closed())
        {
            self.client = None;
        }
        if self.client.is_none() {
            if let Some(wait) = self.backoff.wait_left(Instant::now()) {
                return Err(format!("reconnecting to {node} in {wait:?}"));
            }
            self.backoff.failed(Instant::now(), interval);
            let client = timeout(limit, connect(&target))
                .await
                .map_err(|_| format!("connect to {node} timed out"))??;
            // CREATE TABLE IF NOT EXISTS needs CREATE on the schema even
            // when the table exists: look first.
            let exists = format!("SELECT to_regclass('{table}') IS NOT NULL");
            let found = timeout(limit, client.simple_query(&exists))
                .await
                .map_err(|_| format!("looking for {table} on {node} timed out"))?
                .map_err(|e| format!("looking for {table} on {node}: {}", describe_pg_error(&e)))?;
            let beat = if first_value(&found) == Some("t") {
                Beat::Table
            } else {
                match timeout(limit, client.simple_query(&sql.create)).await {
                    Err(_) => return Err(format!("creating {table} on {node} timed out")),
                    Ok(Ok(_)) => Beat::Table,
                    Ok(Err(e)) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
                        let advice =
                            grant_advice(target.user.as_deref(), table, &target.database, node);
                        tracing::warn!(node, "heartbeat: {advice}");
                        Beat::Xid
                    }
                    Ok(Err(e)) => {
                        return Err(format!(
                            "creating {table} on {node}: {}",
                            describe_pg_error(&e)
                        ));
                    }
                }
            };
            if beat == Beat::Table {
                // Best effort: a user granted no DELETE keeps the rows.
                match timeout(limit, client.simple_query(&sql.prune)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(
                        node,
                        "heartbeat: old rows of other instances kept: {}",
                        describe_pg_error(&e)
                    ),
                    Err(_) => tracing::debug!(node, "heartbeat: deleting old rows timed out"),
                }
            }
            self.backoff.succeeded();
            self.client = Some((target, table.to_string(), client, beat));
        }
        let Some((t, _, client, beat)) = &mut self.client else {
            return Err("no connection".into());
        };
        let sql = match beat {
            Beat::Table => sql.upsert.as_str(),
            Beat::Xid => XID_BEAT,
        };
        match timeout(limit, client.simple_query(sql)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e))
                if *beat == Beat::Table && e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) =>
            {
                let advice = grant_advice(t.user.as_deref(), table, &t.database, node);
                tracing::warn!(node, "heartbeat: {advice}");
                *beat = Beat::Xid;
                Ok(())
            }
            Ok(Err(e)) => {
                let msg = describe_pg_error(&e);
                if client.is_closed() {
                    self.client = None;
                }
                Err(format!("heartbeat on {node}: {msg}"))
            }
            Err(_) => {
                self.client = None;
                Err(format!("heartbeat on {node} timed out after {limit:?}"))
            }
        }
    }

    /// Logs the first failure and the recovery, not every beat in between.
    fn report(&mut self, node: &str, r: Result<(), String>) {
        match r {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(node, "heartbeat writes succeed again");
            }
            Ok(()) => {}
            Err(e) => {
                metrics::counter!("lagrouter_heartbeat_failures_total", "node" => node.to_string())
                    .increment(1);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(node, error = %e, "heartbeat write failed; time lag will grow until it succeeds");
                }
            }
        }
    }
}

/// The first column of the first row, as text.
fn first_value(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Option<&str> {
    msgs.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_upsert_the_instance_row_and_prune_only_others() {
        let sql = heartbeat_sql("lagrouter_heartbeat", 77);
        assert!(
            sql.create
                .starts_with("CREATE TABLE IF NOT EXISTS lagrouter_heartbeat")
        );
        assert!(sql.upsert.contains("VALUES (77, clock_timestamp())"));
        assert!(
            sql.upsert
                .contains("ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts")
        );
        assert!(
            sql.prune
                .contains("WHERE id <> 77 AND ts < clock_timestamp() - interval '1 day'")
        );
    }

    #[test]
    fn instance_rows_are_positive_integers_and_differ() {
        let rows: std::collections::HashSet<i32> = (0..64).map(|_| instance_row()).collect();
        assert!(rows.iter().all(|&r| r >= 1));
        assert!(rows.len() > 60, "{} distinct of 64", rows.len());
    }

    #[test]
    fn advice_names_the_statements_and_the_user() {
        let a = grant_advice(Some("app"), "lagrouter_heartbeat", "postgres", "primary");
        assert!(a.contains("GRANT SELECT, INSERT, UPDATE, DELETE ON lagrouter_heartbeat TO app"));
        assert!(a.contains("in database postgres"));
        assert!(a.contains("txid_current()"));
    }
}
