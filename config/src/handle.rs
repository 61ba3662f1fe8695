//! A live-swappable configuration shared by every component.

use std::sync::Arc;

use arc_swap::{ArcSwap, Cache, Guard};

use crate::Config;

/// See [`ConfigHandle::cache`].
pub type ConfigCache = Cache<Arc<ArcSwap<Config>>, Arc<Config>>;

/// Shared handle to the current configuration. Readers take a snapshot
/// with [`ConfigHandle::load`] and keep using it for the work they started
/// (an in-flight transaction finishes on the config it began with); a
/// reload swaps in a new, already validated, `Config`.
#[derive(Clone, Debug)]
pub struct ConfigHandle {
    inner: Arc<ArcSwap<Config>>,
}

impl ConfigHandle {
    /// Wraps a validated configuration.
    pub fn new(config: Config) -> Self {
        Self {
            inner: Arc::new(ArcSwap::from_pointee(config)),
        }
    }

    /// A cheap, lock-free snapshot of the current configuration.
    pub fn load(&self) -> Guard<Arc<Config>> {
        self.inner.load()
    }

    /// An owned snapshot, for keeping across awaits.
    pub fn load_full(&self) -> Arc<Config> {
        self.inner.load_full()
    }

    /// A per-owner cache of the current configuration: its
    /// [`Cache::load`] costs one atomic load while no reload happened, where
    /// [`ConfigHandle::load_full`] takes and releases a reference each time
    /// (every transaction of every session asks).
    pub fn cache(&self) -> ConfigCache {
        Cache::new(self.inner.clone())
    }

    /// Replaces the configuration. Callers validate first.
    pub fn store(&self, config: Config) {
        self.inner.store(Arc::new(config));
    }
}
