//! Live configuration reload: read, parse, validate, then swap. A file that
//! fails any step leaves the running configuration untouched.

use std::path::PathBuf;
use std::sync::Mutex;

use lagrouter_config::{Config, ConfigError};

use crate::listener::Shared;

/// Where the configuration came from and how the last reload went.
#[derive(Default)]
pub struct ReloadState {
    /// The file `lagrouter run -c` loaded; `None` for in-process configs.
    pub path: Mutex<Option<PathBuf>>,
    /// The last failed reload's problems (cleared by a good one).
    pub last_error: Mutex<Option<String>>,
}

/// Why a reload did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no configuration file to reload (lagrouter was started without one)")]
    NoFile,
    #[error("{0}")]
    Config(#[from] ConfigError),
}

impl Shared {
    /// Remembers the file to reload from.
    pub fn set_config_path(&self, path: PathBuf) {
        if let Ok(mut p) = self.reload.path.lock() {
            *p = Some(path);
        }
    }

    /// Reloads the configuration file. Routing rules, thresholds, breaker
    /// settings, pool sizes, users and nodes apply to transactions that
    /// start after the swap; in-flight transactions finish on the config
    /// they started with. Keys that need a restart are logged.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let path = self
            .reload
            .path
            .lock()
            .ok()
            .and_then(|p| p.clone())
            .ok_or(ReloadError::NoFile)?;
        match Config::load(&path) {
            Ok(new) => {
                let old = self.config.load_full();
                for (key, changed) in [
                    ("server.listen", old.server.listen != new.server.listen),
                    (
                        "server.metrics_listen",
                        old.server.metrics_listen != new.server.metrics_listen,
                    ),
                    (
                        "server.tls_cert",
                        old.server.tls_cert != new.server.tls_cert,
                    ),
                    ("server.tls_key", old.server.tls_key != new.server.tls_key),
                    (
                        "server.max_client_connections",
                        old.server.max_client_connections != new.server.max_client_connections,
                    ),
                    ("server.workers", old.server.workers != new.server.workers),
                ] {
                    if changed {
                        tracing::warn!(
                            key,
                            "changed in {} but needs a restart to apply",
                            path.display()
                        );
                    }
                }
                self.apply_config(&new);
                self.config.store(new);
                if let Ok(mut e) = self.reload.last_error.lock() {
                    *e = None;
                }
                metrics::counter!("lagrouter_config_reloads_total", "result" => "success")
                    .increment(1);
                tracing::info!(file = %path.display(), "configuration reloaded");
                Ok(())
            }
            Err(e) => {
                for p in e.problems() {
                    tracing::error!(file = %path.display(), "reload rejected, keeping the running configuration: {p}");
                }
                if e.problems().is_empty() {
                    tracing::error!(file = %path.display(), "reload rejected, keeping the running configuration: {e}");
                }
                if let Ok(mut last) = self.reload.last_error.lock() {
                    *last = Some(e.to_string());
                }
                metrics::counter!("lagrouter_config_reloads_total", "result" => "failure")
                    .increment(1);
                Err(e.into())
            }
        }
    }
}
