//! The demo's script: half-way through, replica1 stops replaying WAL while
//! the primary takes a burst of writes, so lagrouter must demote it; after
//! a fifth of the run it replays again and must be re-admitted.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::timeline::{Timeline, bytes};
use crate::pgcluster::Cluster;

/// The replica the script pauses.
pub const PAUSED_NODE: usize = 1;

/// Rows of ~1 kB each (under the TOAST threshold, so not compressed): about
/// twice `max_lag_bytes` of WAL, enough to demote on bytes alone even before
/// the heartbeat's age crosses `max_lag_time`.
const BULK_SQL: &str = "INSERT INTO demo_bulk (payload) \
     SELECT repeat(md5(g::text), 32) FROM generate_series(1, 2000) g";
const BULK_BYTES: u64 = 2000 * 1024;

/// When the script acts, from the start of the workload.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub pause_at: Duration,
    pub resume_at: Duration,
}

impl Plan {
    /// Pause at 50% of the run, resume at 70%.
    pub fn for_duration(total: Duration) -> Plan {
        Plan {
            pause_at: total / 2,
            resume_at: total * 7 / 10,
        }
    }
}

/// Runs the script; returns early (leaving replay as it is) on `stop`.
/// Failures are recorded in the timeline: the verdict then shows that the
/// demotion was not observed, which is the honest outcome.
pub async fn run(
    cluster: Arc<Cluster>,
    conn_str: String,
    plan: Plan,
    timeline: Timeline,
    stop: CancellationToken,
) {
    let name = cluster.node_name(PAUSED_NODE).to_owned();
    if !sleep_until(&timeline, plan.pause_at, &stop).await {
        return;
    }
    let c = cluster.clone();
    match tokio::task::spawn_blocking(move || c.pause_replay(PAUSED_NODE)).await {
        Ok(Ok(())) => timeline.note(format!("{name} replay paused")),
        Ok(Err(e)) => timeline.note(format!("could not pause {name}: {e}")),
        Err(e) => timeline.note(format!("could not pause {name}: {e}")),
    }
    // Through lagrouter, like any application write.
    match bulk_write(&conn_str).await {
        Ok(()) => timeline.note(format!(
            "bulk insert of ~{} on the primary",
            bytes(BULK_BYTES)
        )),
        Err(e) => timeline.note(format!("bulk insert failed: {e}")),
    }
    if !sleep_until(&timeline, plan.resume_at, &stop).await {
        return;
    }
    let c = cluster.clone();
    match tokio::task::spawn_blocking(move || c.resume_replay(PAUSED_NODE)).await {
        Ok(Ok(())) => timeline.note(format!("{name} replay resumed")),
        Ok(Err(e)) => timeline.note(format!("could not resume {name}: {e}")),
        Err(e) => timeline.note(format!("could not resume {name}: {e}")),
    }
}

async fn bulk_write(conn_str: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conn_str, NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(BULK_SQL).await
}

/// Sleeps until `at` on the timeline's clock; false when stopped first.
async fn sleep_until(timeline: &Timeline, at: Duration, stop: &CancellationToken) -> bool {
    let left = at.saturating_sub(timeline.elapsed());
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(left) => true,
    }
}
