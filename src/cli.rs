//! What the CLI commands do, kept out of `main` so tests can call them.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use lagrouter_config::{Config, ConfigError, ConfigHandle};
use tokio_util::sync::CancellationToken;

/// `lagrouter check-config FILE`: prints every problem with its line and
/// key; exit status 1 when there is any.
pub fn check_config(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(c) => {
            println!(
                "{}: OK ({} node(s), {} user(s), listen {})",
                path.display(),
                c.nodes.len(),
                c.users.len(),
                c.server.listen
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            print_config_error(path, &e);
            ExitCode::FAILURE
        }
    }
}

fn print_config_error(path: &Path, e: &ConfigError) {
    match e {
        ConfigError::Io { .. } => eprintln!("{e}"),
        _ => {
            for p in e.problems() {
                eprintln!("{}: {p}", path.display());
            }
        }
    }
}

/// Logs to stderr; `RUST_LOG` overrides the default `info` level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// `lagrouter run -c FILE`: serves until SIGINT or SIGTERM: the sessions
/// on `server.workers` worker threads, the rest on the main thread.
pub fn serve(path: &Path) -> ExitCode {
    init_tracing();
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            print_config_error(path, &e);
            eprintln!("lagrouter: invalid configuration in {}", path.display());
            return ExitCode::FAILURE;
        }
    };
    match fit_open_files(&config) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => {
            eprintln!("lagrouter: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lagrouter: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(config, path)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lagrouter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Files lagrouter keeps open besides clients and pooled server
/// connections: listeners, the health monitor's and replay poller's
/// connections, the config watch, logs.
const SPARE_FILES: u64 = 64;

/// Raises the open-file soft limit to the hard limit and checks that
/// `max_client_connections`, every pool at its size and [`SPARE_FILES`]
/// fit under it. Returns the limit in force.
pub fn fit_open_files(config: &Config) -> Result<u64, String> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(format!(
            "cannot read the open-file limit: {}",
            std::io::Error::last_os_error()
        ));
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let pools = (config.pool.size * config.nodes.len() * config.users.len().max(1)) as u64;
    let clients = config.server.max_client_connections as u64;
    let needed = clients + pools + SPARE_FILES;
    if needed > lim.rlim_cur {
        return Err(format!(
            "max_client_connections ({clients}) plus server connections ({} per pool x {} \
             node(s) x {} user(s) = {pools}) plus {SPARE_FILES} spare need {needed} open files, \
             but the open-file limit is {} (hard limit {}): raise it (ulimit -n, LimitNOFILE= \
             for systemd) or lower [server] max_client_connections",
            config.pool.size,
            config.nodes.len(),
            config.users.len().max(1),
            lim.rlim_cur,
            lim.rlim_max,
        ));
    }
    Ok(lim.rlim_cur)
}

/// The runtime of `lagrouter run`'s main thread: the listener, signals,
/// reloads, maintenance, connects and cancel requests. The sessions run on
/// the proxy's own worker threads (`lagrouter_proxy::rt`). It has no
/// timers: parking through tokio's time driver cost every idle moment of
/// the loop a lock, two clock reads and a pass over the timer wheel, so
/// every timeout runs on the health monitor's timer thread instead
/// (`Shared::timers`, `lagrouter_health::Timers`).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
}

async fn run(config: Config, path: &Path) -> anyhow::Result<()> {
    tracing::info!(workers = config.server.workers, "starting");
    // Installed before lagrouter says it accepts clients: a SIGTERM sent
    // right after that line must stop it cleanly, not kill it.
    let stop = stop_signals();
    let handle = ConfigHandle::new(config);
    let shutdown = CancellationToken::new();
    let running = crate::app::start(handle, shutdown.clone())
        .await
        .context("starting the proxy")?;
    crate::watch::spawn(
        running.shared.clone(),
        path.to_path_buf(),
        shutdown.child_token(),
    );
    tracing::info!(listen = %running.addr, "lagrouter is accepting clients");
    stop.await;
    tracing::info!("shutting down: no new clients; waiting for transactions in flight");
    running.stop().await;
    Ok(())
}

/// Resolves at the first SIGINT or SIGTERM; the handlers are installed
/// when this is called, not when it is first polled.
fn stop_signals() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let recv = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = recv(int) => {}
            _ = recv(term) => {}
        }
    }
}
