//! The tables `SHOW …` answers with, built from the shared state. Every
//! value is text (as psql shows it); a missing value is NULL.

use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use lagrouter_health::PrimaryStatus;

use super::commands::{HELP, Show};
use super::settings::{config_rows, snake};
use crate::listener::Shared;

/// A result set: column names and rows of text values.
pub struct Table {
    pub columns: Vec<&'static str>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub(super) fn new(columns: &[&'static str]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, values: Vec<Option<String>>) {
        self.rows.push(values);
    }

    /// A two-column `key | value` row.
    pub(super) fn kv(&mut self, key: &str, value: impl ToString) {
        self.rows
            .push(vec![Some(key.to_string()), Some(value.to_string())]);
    }
}

/// The table for `show`.
pub fn show(shared: &Shared, show: Show) -> Table {
    match show {
        Show::Help => help(),
        Show::Nodes => nodes(shared),
        Show::Pools => pools(shared),
        Show::Clients => clients(shared),
        Show::Servers => servers(shared),
        Show::Stats => stats(shared),
        Show::Breaker => breaker(shared),
        Show::Safety => safety(shared),
        Show::Slots => slots(shared),
        Show::Config => config(shared),
        Show::Reload => reload(shared),
    }
}

fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn help() -> Table {
    let mut t = Table::new(&["command", "description"]);
    for (c, d) in HELP {
        t.row(vec![s(c), s(d)]);
    }
    t
}

fn nodes(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "name",
        "role",
        "state",
        "write_target",
        "drained",
        "lag_bytes",
        "lag_estimated",
        "lag_ms",
        "good_checks",
        "missed_checks",
        "cause",
        "replay_lsn",
        "last_check_ms_ago",
        "reads_served",
        "writes_served",
        "problem",
    ]);
    let snap = shared.router.health();
    let drained = shared.router.drained();
    let now = Instant::now();
    for (i, n) in snap.nodes.iter().enumerate() {
        let target = match &snap.primary {
            PrimaryStatus::One(p) => *p == i,
            _ => false,
        };
        let counts = shared.route_counters.node(&n.name.as_str().into());
        t.row(vec![
            s(&n.name),
            s(snake(&format!("{:?}", n.role))),
            s(n.state().as_str()),
            s(target),
            s(drained.contains(&n.name)),
            n.lag_bytes.map(|b| b.to_string()),
            s(n.lag_estimated),
            n.lag_time.map(|l| l.as_millis().to_string()),
            s(n.status.good_checks),
            s(n.status.missed),
            n.cause.map(|c| c.as_str().to_string()),
            n.replay_lsn.map(|l| l.to_string()),
            n.last_check
                .map(|c| now.saturating_duration_since(c).as_millis().to_string()),
            s(counts.reads()),
            s(counts.writes()),
            n.unreachable_reason.clone(),
        ]);
    }
    t
}

fn pools(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "node",
        "user",
        "database",
        "size",
        "open",
        "in_use",
        "idle",
        "waiting",
        "checkouts",
        "timeouts",
    ]);
    let mut pools = shared.pools.all();
    pools.sort_by_key(|p| p.label());
    for p in pools {
        let st = &p.stats;
        t.row(vec![
            s(&p.key.node),
            s(&p.key.user),
            s(&p.key.database),
            s(p.size()),
            s(st.open.load(Ordering::Relaxed)),
            s(p.in_use()),
            s(p.idle_count()),
            s(st.waiting.load(Ordering::Relaxed)),
            s(p.checkouts()),
            s(st.timeouts.load(Ordering::Relaxed)),
        ]);
    }
    t
}

fn clients(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "id",
        "user",
        "database",
        "addr",
        "port",
        "connected_unix",
        "connected_s",
        "state",
        "node",
        "transactions",
    ]);
    let names: Vec<String> = shared
        .nodes
        .load()
        .iter()
        .map(|n| n.name.to_string())
        .collect();
    let now = SystemTime::now();
    for c in shared.clients.list() {
        let node = c.attached_node();
        let since = c
            .since
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let age = now
            .duration_since(c.since)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        t.row(vec![
            s(c.id),
            s(&c.user),
            s(&c.database),
            c.peer.map(|p| p.ip().to_string()),
            c.peer.map(|p| p.port().to_string()),
            s(since),
            s(age),
            s(if node.is_some() { "active" } else { "idle" }),
            node.map(|i| names.get(i).cloned().unwrap_or_else(|| format!("#{i}"))),
            s(c.transactions.load(Ordering::Relaxed)),
        ]);
    }
    t
}

/// Per pool rather than per connection: the pool keeps counts, and a
/// per-connection list would need a lock on every checkout.
fn servers(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "node", "host", "port", "user", "database", "open", "active", "idle",
    ]);
    let mut pools = shared.pools.all();
    pools.sort_by_key(|p| p.label());
    for p in pools {
        t.row(vec![
            s(&p.key.node),
            s(&p.node.host),
            s(p.node.port),
            s(&p.key.user),
            s(&p.key.database),
            s(p.stats.open.load(Ordering::Relaxed)),
            s(p.in_use()),
            s(p.idle_count()),
        ]);
    }
    t
}

fn stats(shared: &Shared) -> Table {
    let mut t = Table::new(&["stat", "value"]);
    let rc = &shared.route_counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    t.kv("clients", shared.stats.clients.load(Ordering::Relaxed));
    t.kv(
        "pinned_sessions",
        shared.stats.pinned_sessions.load(Ordering::Relaxed),
    );
    t.kv("transactions_primary", rc.routed(true));
    t.kv("transactions_replica", rc.routed(false));
    for (reason, n) in rc.reasons() {
        t.kv(&format!("decisions_{reason}"), n);
    }
    t.kv("refused_breaker_open", load(&rc.refused_breaker_open));
    t.kv("refused_no_primary", load(&rc.refused_no_primary));
    t.kv("refused_write_gate", load(&rc.refused_write_gate));
    let pools = shared.pools.all();
    let sum = |f: fn(&crate::server::pool::PoolStats) -> usize| -> usize {
        pools.iter().map(|p| f(&p.stats)).sum()
    };
    t.kv("pools", pools.len());
    t.kv(
        "server_connections",
        sum(|s| s.open.load(Ordering::Relaxed)),
    );
    t.kv(
        "checkouts",
        pools.iter().map(|p| p.checkouts()).sum::<usize>(),
    );
    t.kv(
        "checkout_timeouts",
        sum(|s| s.timeouts.load(Ordering::Relaxed)),
    );
    t
}

fn safety(shared: &Shared) -> Table {
    let mut t = Table::new(&["item", "value"]);
    let gate = shared.router.gate_status();
    let snap = shared.router.health();
    t.kv("write_gate", if gate.open { "open" } else { "refusing" });
    match gate.gate {
        Some(g) => {
            t.kv("min_replicas_to_write", g.min_replicas);
            t.kv("min_replicas_max_lag", g.limit());
        }
        None => t.kv("min_replicas_to_write", "0 (gate off)"),
    }
    t.kv("replicas_counted", gate.counted);
    let target = snap.primary_index();
    for (i, n) in snap.nodes.iter().enumerate() {
        if Some(i) != target {
            t.kv(&format!("gate_state_{}", n.name), n.gate.state.as_str());
        }
    }
    t.kv(
        "refused_writes",
        shared
            .route_counters
            .refused_write_gate
            .load(Ordering::Relaxed),
    );
    let risk = &snap.risk;
    let opt = |v: Option<u64>| v.map_or_else(|| "unknown".to_string(), |b| b.to_string());
    t.kv("following_replicas", risk.following_replicas);
    t.kv("unreplayed_bytes", opt(risk.unreplayed_bytes));
    t.kv("unreceived_bytes", opt(risk.unreceived_bytes));
    t.kv(
        "unreplayed_ms",
        opt(risk.unreplayed_time.map(|d| d.as_millis() as u64)),
    );
    t.kv("inactive_slots", risk.inactive_slots().count());
    t.kv(
        "inactive_slots_retained_bytes",
        risk.inactive_slots()
            .filter_map(|s| s.retained_bytes)
            .sum::<u64>(),
    );
    t.kv(
        "synchronous_replication",
        risk.sync.as_ref().map_or_else(
            || "unknown (no primary answer yet)".into(),
            |s| s.describe(),
        ),
    );
    t.kv("wait_replicas_waiting", shared.replay.waiting());
    t
}

fn slots(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "slot_name",
        "slot_type",
        "active",
        "retained_bytes",
        "wal_status",
    ]);
    for sl in &shared.router.health().risk.slots {
        t.row(vec![
            s(&sl.name),
            s(&sl.slot_type),
            s(sl.active),
            sl.retained_bytes.map(|b| b.to_string()),
            sl.wal_status.clone(),
        ]);
    }
    t
}

fn breaker(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        "state",
        "primary_read_share",
        "reads",
        "fallbacks",
        "cap",
        "window",
        "min_reads",
        "on_open",
    ]);
    let b = shared.router.breaker_status(Instant::now());
    let config = shared.config.load();
    let rc = &config.routing;
    t.row(vec![
        s(b.state.as_str()),
        s(format!("{:.3}", b.share)),
        s(b.reads),
        s(b.fallbacks),
        s(rc.primary_read_cap),
        s(format!("{:?}", rc.breaker_window)),
        s(rc.breaker_min_reads),
        s(snake(&format!("{:?}", rc.on_breaker_open))),
    ]);
    t
}

fn config(shared: &Shared) -> Table {
    let mut t = Table::new(&["key", "value"]);
    config_rows(&mut t, &shared.config.load());
    let (file, error) = reload_state(shared);
    t.kv("reload.file", file.unwrap_or_else(|| "(none)".into()));
    t.kv(
        "reload.last_error",
        error.unwrap_or_else(|| "(none)".into()),
    );
    t
}

fn reload(shared: &Shared) -> Table {
    let mut t = Table::new(&["file", "last_error"]);
    let (file, error) = reload_state(shared);
    t.row(vec![file, error]);
    t
}

/// The reload file and the last failed reload's error.
fn reload_state(shared: &Shared) -> (Option<String>, Option<String>) {
    let file = shared
        .reload
        .path
        .lock()
        .ok()
        .and_then(|p| p.as_ref().map(|p| p.display().to_string()));
    let error = shared.reload.last_error.lock().ok().and_then(|e| e.clone());
    (file, error)
}
