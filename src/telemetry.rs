//! Exports what the proxy counts in atomics (pools, clients, breaker,
//! bytes, routing decisions) as Prometheus gauges and counters, once a second, so the
//! forwarding path never touches the metrics registry for them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lagrouter_proxy::Shared;
use metrics::{counter, gauge};
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(1);
const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

/// Runs until `shutdown`.
pub async fn export(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut gate_was_open = true;
    loop {
        export_once(&shared);
        gate_was_open = export_gate(&shared, gate_was_open);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = shared.timers.sleep(EVERY) => {}
        }
    }
}

/// The write gate's gauges, and a log line when it closes or opens.
/// Returns whether it is open now.
fn export_gate(shared: &Shared, was_open: bool) -> bool {
    let g = shared.router.gate_status();
    gauge!("lagrouter_write_gate_open").set(if g.open { 1.0 } else { 0.0 });
    gauge!("lagrouter_write_gate_replicas").set(g.counted as f64);
    if let Some(limits) = g.gate {
        if was_open && !g.open {
            tracing::warn!(
                counted = g.counted,
                required = limits.min_replicas,
                max_lag = %limits.limit(),
                "write gate closed: too few replicas are caught up; writes are refused (53000)"
            );
        } else if !was_open && g.open {
            tracing::info!(
                counted = g.counted,
                required = limits.min_replicas,
                "write gate open: writes are accepted again"
            );
        }
    }
    g.open
}

fn export_once(shared: &Shared) {
    let mut server_connections = 0;
    for p in shared.pools.all() {
        let labels = [
            ("node", p.key.node.to_string()),
            ("user", p.key.user.to_string()),
            ("database", p.key.database.to_string()),
        ];
        let s = &p.stats;
        let open = s.open.load(Ordering::Relaxed);
        server_connections += open;
        gauge!("lagrouter_pool_size", &labels).set(p.size() as f64);
        gauge!("lagrouter_pool_open_connections", &labels).set(open as f64);
        gauge!("lagrouter_pool_in_use_connections", &labels).set(p.in_use() as f64);
        gauge!("lagrouter_pool_idle_connections", &labels).set(p.idle_count() as f64);
        gauge!("lagrouter_pool_waiting_clients", &labels)
            .set(s.waiting.load(Ordering::Relaxed) as f64);
        counter!("lagrouter_pool_checkouts_total", &labels).absolute(p.checkouts() as u64);
        counter!("lagrouter_pool_checkout_timeouts_total", &labels)
            .absolute(s.timeouts.load(Ordering::Relaxed) as u64);
    }
    let st = &shared.stats;
    gauge!("lagrouter_client_connections").set(st.clients.load(Ordering::Relaxed) as f64);
    gauge!("lagrouter_server_connections").set(server_connections as f64);
    gauge!("lagrouter_pinned_sessions").set(st.pinned_sessions.load(Ordering::Relaxed) as f64);
    counter!("lagrouter_forwarded_bytes_total", "direction" => "to_servers")
        .absolute(st.bytes_to_servers.load(Ordering::Relaxed));
    counter!("lagrouter_forwarded_bytes_total", "direction" => "to_clients")
        .absolute(st.bytes_to_clients.load(Ordering::Relaxed));
    let rc = &shared.route_counters;
    for ((node, primary, reason), n) in rc.decisions() {
        let target = if primary { "primary" } else { "replica" };
        counter!("lagrouter_route_decisions_total",
            "node" => node.to_string(), "target" => target, "reason" => reason)
        .absolute(n);
    }
    for (reason, c) in [
        ("breaker_open", &rc.refused_breaker_open),
        ("write_gate", &rc.refused_write_gate),
        ("no_primary", &rc.refused_no_primary),
    ] {
        let n = c.load(Ordering::Relaxed);
        if n > 0 {
            counter!("lagrouter_route_decisions_total",
                "node" => "none", "target" => "none", "reason" => reason)
            .absolute(n);
        }
    }
    counter!("lagrouter_writes_refused_total")
        .absolute(rc.refused_write_gate.load(Ordering::Relaxed));
    let b = shared.router.breaker_status(Instant::now());
    for state in BREAKER_STATES {
        let on = if b.state.as_str() == state { 1.0 } else { 0.0 };
        gauge!("lagrouter_breaker_state", "state" => state).set(on);
    }
    gauge!("lagrouter_primary_read_share").set(b.share);
    gauge!("lagrouter_breaker_window_reads").set(b.reads as f64);
}
