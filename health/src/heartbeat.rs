//! The heartbeat writer: upserts one row on the write target every
//! `heartbeat_interval`, over a dedicated connection.
//!
//! Replicas read the row's age back in their check (time lag), and the
//! write keeps WAL moving while the application is idle, so a replica's
//! replay LSN keeps advancing past every read-your-writes token. It writes
//! only to the node the latest snapshot names as the single primary: never
//! during split brain. `heartbeat_interval = "0s"` stops it (checked every
//! `check_interval` so turning it back on by reload works).
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
use tokio_util::sync::CancellationToken;

use crate::SharedSnapshot;
use crate::backoff::Backoff;
use crate::conn::{ConnTarget, connect};
use crate::error::describe_pg_error;

/// The two statements, for a validated table name (see `check_sql`).
pub fn heartbeat_sql(table: &str) -> (String, String) {
    (
        format!(
            "CREATE TABLE IF NOT EXISTS {table} (id integer PRIMARY KEY, ts timestamptz NOT NULL)"
        ),
        format!(
            "INSERT INTO {table} (id, ts) VALUES (1, clock_timestamp()) \
             ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts"
        ),
    )
}

struct Writer {
    client: Option<(ConnTarget, String, Client)>,
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
        let (create, upsert) = heartbeat_sql(table);
        if self
            .client
            .as_ref()
            .is_some_and(|(t, tb, c)| *t != target || tb != table || c.is_closed())
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
            timeout(limit, client.simple_query(&create))
                .await
                .map_err(|_| format!("creating {table} on {node} timed out"))?
                .map_err(|e| format!("creating {table} on {node}: {}", describe_pg_error(&e)))?;
            self.backoff.succeeded();
            self.client = Some((target, table.to_string(), client));
        }
        let Some((_, _, client)) = &self.client else {
            return Err("no connection".into());
        };
        match timeout(limit, client.simple_query(&upsert)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                let msg = describe_pg_error(&e);
                if client.is_closed() {
                    self.client = None;
                }
                Err(format!("upsert on {node}: {msg}"))
            }
            Err(_) => {
                self.client = None;
                Err(format!("upsert on {node} timed out after {limit:?}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_upsert_one_row() {
        let (create, upsert) = heartbeat_sql("lagrouter_heartbeat");
        assert!(create.starts_with("CREATE TABLE IF NOT EXISTS lagrouter_heartbeat"));
        assert!(upsert.contains("ON CONFLICT (id) DO UPDATE SET ts = EXCLUDED.ts"));
    }
}
