//! Triggers live reloads: SIGHUP, and changes to the configuration file
//! (watched through its directory, since editors replace files by rename).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lagrouter_proxy::Shared;
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

/// Quiet time after the last file event before reloading: one save is
/// often several events.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Reloads `shared` from `path` on SIGHUP and when the file changes, until
/// `shutdown`. Failures are logged by `Shared::reload` and never stop it.
pub fn spawn(shared: Arc<Shared>, path: PathBuf, shutdown: CancellationToken) {
    shared.set_config_path(path.clone());
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(16);
    let watcher = watch_file(&path, tx.clone());
    tokio::spawn(async move {
        // Keep the watcher alive as long as this task.
        let _watcher = watcher;
        run(shared, rx, tx, shutdown).await;
    });
}

fn watch_file(
    path: &Path,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    let name = path.file_name()?.to_os_string();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && ev
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()))
            && !ev.kind.is_access()
        {
            let _ = tx.try_send(());
        }
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(
                "cannot watch {} for changes (SIGHUP still reloads): {e}",
                path.display()
            );
            return None;
        }
    };
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(
            "cannot watch {} for changes (SIGHUP still reloads): {e}",
            dir.display()
        );
        return None;
    }
    Some(watcher)
}

async fn run(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::Receiver<()>,
    tx: tokio::sync::mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            let tx = tx.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        got = hup.recv() => {
                            if got.is_none() { return; }
                            tracing::info!("SIGHUP: reloading the configuration");
                            let _ = tx.send(()).await;
                        }
                    }
                }
            });
        }
        Err(e) => tracing::warn!("cannot listen for SIGHUP: {e}"),
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = rx.recv() => if got.is_none() { return },
        }
        // Collapse a burst of events into one reload.
        loop {
            tokio::select! {
                _ = shared.timers.sleep(DEBOUNCE) => break,
                got = rx.recv() => if got.is_none() { return },
            }
        }
        let _ = shared.reload();
    }
}
