//! Loads function volatility from the primary's `pg_proc` for the
//! classifier, at start and then every few minutes. Until the first load
//! succeeds the classifier uses its built-in list of read-only functions,
//! and a function it does not know is treated as a write.

use std::time::Duration;

use lagrouter_config::ConfigHandle;
use lagrouter_health::{ConnTarget, HealthMonitor, connect_as};
use lagrouter_routing::{FunctionCatalog, Router};
use tokio_util::sync::CancellationToken;

/// How often the catalog is reloaded after a success.
const REFRESH: Duration = Duration::from_secs(300);
/// How soon a failed load is retried.
const RETRY: Duration = Duration::from_secs(5);

/// Runs until `shutdown`.
pub async fn keep_loaded(
    config: ConfigHandle,
    health: HealthMonitor,
    router: Router,
    shutdown: CancellationToken,
) {
    loop {
        let wait = match load(&config, &health).await {
            Ok(catalog) => {
                router.set_function_catalog(catalog);
                REFRESH
            }
            Err(e) => {
                tracing::warn!(
                    "cannot load function volatility from the primary (unknown functions route to the primary): {e}"
                );
                RETRY
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn load(config: &ConfigHandle, health: &HealthMonitor) -> Result<FunctionCatalog, String> {
    let cfg = config.load_full();
    let snap = health.snapshot();
    let primary = snap.primary_index().ok_or("no primary known yet")?;
    let node = cfg
        .nodes
        .get(primary)
        .ok_or("primary is not in the config")?;
    let target = ConnTarget::new(&cfg, node);
    let client = tokio::time::timeout(
        cfg.health.check_timeout.max(Duration::from_secs(1)),
        connect_as(&target, "lagrouter-catalog"),
    )
    .await
    .map_err(|_| "timed out connecting".to_string())??;
    let rows = client
        .query(
            "SELECT p.proname::text, p.provolatile::text FROM pg_catalog.pg_proc p",
            &[],
        )
        .await
        .map_err(|e| e.to_string());
    drop(client);
    let rows = rows?;
    let n = rows.len();
    let catalog = FunctionCatalog::from_rows(rows.iter().filter_map(|r| {
        let name: String = r.get(0);
        let vol: String = r.get(1);
        vol.chars().next().map(|c| (name, c))
    }));
    tracing::debug!(functions = n, node = %node.name, "loaded function volatility");
    Ok(catalog)
}
