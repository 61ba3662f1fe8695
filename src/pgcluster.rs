//! Throwaway PostgreSQL clusters on loopback: one primary and streaming
//! replicas, for the integration tests and `lagrouter demo`.
//!
//! [`Cluster::start`] runs `initdb`, starts the primary, creates the roles
//! and the application database, takes one `pg_basebackup -R` per replica
//! (each with its own physical replication slot), starts the replicas and
//! waits until they stream and have replayed everything. Test binaries share
//! one cluster through [`Cluster::shared`].
//!
//! Nothing outlives the process that started the cluster: every server is a
//! direct child forked by a dedicated keeper thread with a parent-death
//! signal (see `process`), and a janitor process removes the directory when
//! we exit, even by SIGKILL. Dropping a [`Cluster`] stops the servers and
//! removes the directory synchronously.
//!
//! Layout:
//! - `error`: [`ClusterError`], which names the node and quotes its log.
//! - `bootstrap`: directory, initdb, roles, base backups, wait for streaming.
//! - `server`: starting a postmaster and waiting until it is ready.
//! - `tools`: psql, pgbench and the other client tools, bounded in time.
//! - `process`: the keeper thread, bounded tool runs, stopping, the janitor.
//! - `setup`: binaries, OS user, ports, configuration file contents.
//! - `faults`: a node's PIDs (for SIGSTOP), an immediate stop, re-pointing
//!   a replica after a promotion.

mod bootstrap;
mod error;
mod faults;
mod process;
mod server;
mod setup;
mod tools;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub use error::{ClusterError, ClusterErrorKind};
pub use process::Guarded;
use process::Janitor;
use setup::{OsUser, conninfo_value};

/// The role with an md5-stored password, for testing md5 server auth.
pub const MD5_USER: &str = "app_md5";
/// Its password.
pub const MD5_PASSWORD: &str = "app_md5";
/// The superuser the harness connects as over the unix socket.
const SUPERUSER: &str = "postgres";
/// The only address the servers listen on.
const HOST: &str = "127.0.0.1";

/// How long a server may take to accept connections after being started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the replicas may take to stream and catch up during start.
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one `sql` call.
const SQL_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for initdb and pg_basebackup.
const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for `pgbench -i`.
const PGBENCH_TIMEOUT: Duration = Duration::from_secs(900);
/// How long a fast shutdown may take before it becomes immediate.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How long a requested replay pause or config reload may take to show.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Interval between polls of a server's state.
const POLL: Duration = Duration::from_millis(10);
/// Start attempts with fresh ports when another process took ours.
const PORT_ATTEMPTS: usize = 5;
/// libpq connect timeout (seconds) for the tools.
const CONNECT_TIMEOUT_SECS: &str = "10";
/// Longest unix socket path (sun_path is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of streaming replicas (default 2).
    pub replicas: usize,
    /// Application role: owns `database`, member of pg_monitor, password
    /// stored as SCRAM (default `"app"`).
    pub app_user: String,
    /// Its password (default `"app"`).
    pub app_password: String,
    /// Application database (default `"app"`).
    pub database: String,
    /// Extra postgresql.conf lines for every node; they override ours.
    pub extra_conf: Vec<String>,
    /// pg_hba.conf lines placed before the harness's own, which trust
    /// local sockets and ask passwords on 127.0.0.1 (the first line that
    /// matches decides), e.g. `hostnossl all app 127.0.0.1/32 reject`.
    pub hba_first: Vec<String>,
    /// Files (name, contents) written into the primary's data directory
    /// before it first starts, readable by the server user only, e.g.
    /// `server.crt` and `server.key` for `ssl = on`. Replicas get them
    /// with the base backup.
    pub data_files: Vec<(String, String)>,
    /// Where to put the cluster; it must not already hold one. Default: a
    /// fresh directory under [`std::env::temp_dir`]. When running as root it
    /// must be traversable by the `postgres` OS user.
    pub base_dir: Option<PathBuf>,
    /// Keep the directory (data and logs) when the cluster is dropped. The
    /// servers are stopped either way.
    pub keep: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            replicas: 2,
            app_user: "app".to_owned(),
            app_password: "app".to_owned(),
            database: "app".to_owned(),
            extra_conf: Vec::new(),
            hba_first: Vec::new(),
            data_files: Vec::new(),
            base_dir: None,
            keep: false,
        }
    }
}

/// One server of the cluster.
struct Node {
    name: String,
    /// Fixed once the cluster has started.
    port: AtomicU16,
    data: PathBuf,
    log: PathBuf,
    /// The postmaster, while it runs.
    child: Mutex<Option<Child>>,
}

/// A running throwaway cluster. Node 0 is the primary, nodes `1..` replicas.
pub struct Cluster {
    dir: PathBuf,
    /// The paths to delete at the end: the whole directory when we created
    /// it, only what we put in it otherwise.
    owned_paths: Vec<PathBuf>,
    keep: bool,
    bindir: PathBuf,
    run_dir: PathBuf,
    os_user: Option<OsUser>,
    app_user: String,
    app_password: String,
    database: String,
    nodes: Vec<Node>,
    /// The node that was last made primary (0 until `promote`).
    primary: AtomicUsize,
    janitor: Mutex<Option<Janitor>>,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();

extern "C" fn teardown_shared() {
    // Unwinding out of an atexit handler would abort.
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(cluster)) = SHARED.get() {
            cluster.teardown();
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Cluster {
    /// Starts a primary and `opts.replicas` streaming replicas and returns
    /// once every replica streams and has replayed the primary's WAL.
    /// Blocking; from async code use `spawn_blocking`. On failure everything
    /// started so far is stopped and removed (unless `keep`).
    pub fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bindir = setup::find_bindir()?;
        let os_user = setup::server_os_user()?;
        let (dir, owned_paths) =
            bootstrap::prepare_base_dir(opts.base_dir.as_deref(), opts.replicas)?;
        let run_dir = dir.join("run");
        let nodes = std::iter::once("primary".to_owned())
            .chain((1..=opts.replicas).map(|i| format!("replica{i}")))
            .map(|name| Node {
                data: dir.join(&name),
                log: dir.join("log").join(format!("{name}.log")),
                name,
                port: AtomicU16::new(0),
                child: Mutex::new(None),
            })
            .collect();
        let cluster = Cluster {
            dir,
            owned_paths,
            keep: opts.keep,
            bindir,
            run_dir,
            os_user,
            app_user: opts.app_user.clone(),
            app_password: opts.app_password.clone(),
            database: opts.database.clone(),
            nodes,
            primary: AtomicUsize::new(0),
            janitor: Mutex::new(None),
        };
        if !cluster.keep {
            let janitor = Janitor::spawn(&cluster.owned_paths)
                .map_err(|e| ClusterError::io("cannot start the cleanup process", e))?;
            *lock(&cluster.janitor) = Some(janitor);
        }
        // On error, dropping `cluster` stops and removes what was started.
        cluster.build(&opts)?;
        Ok(cluster)
    }

    /// The cluster shared by all tests of this process, started on first use
    /// with default options and torn down when the process exits.
    ///
    /// # Panics
    /// If the cluster cannot start (then on every call, without retrying).
    pub fn shared() -> &'static Cluster {
        Cluster::shared_with(ClusterOptions::default)
    }

    /// [`Cluster::shared`], started with `options()` if this is the first
    /// use in the process (a test binary whose tests all need the same
    /// special cluster, e.g. with TLS). Later calls return that cluster
    /// whatever options they pass.
    ///
    /// # Panics
    /// If the cluster cannot start (then on every call, without retrying).
    pub fn shared_with(options: impl FnOnce() -> ClusterOptions) -> &'static Cluster {
        let started = SHARED.get_or_init(|| {
            let started = Cluster::start(options()).map_err(|e| e.to_string());
            if started.is_ok() {
                // SAFETY: registering a plain extern "C" fn has no
                // preconditions. If registration fails, the parent-death
                // signals and the janitor still clean up.
                unsafe {
                    libc::atexit(teardown_shared);
                }
            }
            started
        });
        match started {
            Ok(cluster) => cluster,
            Err(e) => panic!("could not start the shared test cluster: {e}"),
        }
    }

    /// Number of nodes (primary plus replicas).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// `"primary"`, `"replica1"`, ... (panics if `i` is out of range).
    pub fn node_name(&self, i: usize) -> &str {
        &self.expect_node(i).name
    }

    /// A lagrouter `[[nodes]]` table for node `i` with `role` (`primary`,
    /// `replica` or `auto`).
    pub fn node_toml(&self, i: usize, role: &str) -> String {
        format!(
            "\n[[nodes]]\nname = \"{}\"\nhost = \"{}\"\nport = {}\nrole = \"{role}\"\n",
            self.node_name(i),
            self.host(),
            self.port(i)
        )
    }

    /// lagrouter `[[nodes]]` tables for every node: the primary as
    /// `primary`, the others as `replica`.
    pub fn nodes_toml(&self) -> String {
        (0..self.node_count())
            .map(|i| {
                let role = if i == self.primary_index() {
                    "primary"
                } else {
                    "replica"
                };
                self.node_toml(i, role)
            })
            .collect()
    }

    /// The TCP port of node `i` (panics if `i` is out of range).
    pub fn port(&self, i: usize) -> u16 {
        self.expect_node(i).port.load(Ordering::Relaxed)
    }

    /// Always `"127.0.0.1"`.
    pub fn host(&self) -> &str {
        HOST
    }

    /// The cluster directory: `<node>/` data, `run/` sockets, `log/<node>.log`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the PostgreSQL binaries are.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The directory of the unix sockets (superuser `postgres`, trust).
    pub fn socket_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The server log of node `i` (panics if `i` is out of range).
    pub fn log_path(&self, i: usize) -> &Path {
        &self.expect_node(i).log
    }

    pub fn app_user(&self) -> &str {
        &self.app_user
    }

    pub fn app_password(&self) -> &str {
        &self.app_password
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// The role whose password is stored as md5 ([`MD5_USER`]).
    pub fn md5_user(&self) -> &str {
        MD5_USER
    }

    pub fn md5_password(&self) -> &str {
        MD5_PASSWORD
    }

    /// The node writes should go to: 0, or the last one promoted.
    pub fn primary_index(&self) -> usize {
        self.primary.load(Ordering::Relaxed)
    }

    /// Whether node `i`'s server process is alive (false if out of range).
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes.get(i).is_some_and(|node| {
            lock(&node.child)
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        })
    }

    /// `"host=127.0.0.1 port=N user=app password=app dbname=app"`.
    pub fn conn_string(&self, node: usize) -> String {
        format!(
            "host={HOST} port={} user={} password={} dbname={}",
            self.port(node),
            conninfo_value(&self.app_user),
            conninfo_value(&self.app_password),
            conninfo_value(&self.database),
        )
    }

    /// Runs `sql` (one or more statements, each in its own transaction unless
    /// it says otherwise) as the superuser in the application database over
    /// the unix socket; returns the rows, unaligned (`|` between columns,
    /// one row a line), trimmed. A rejected statement is a
    /// [`ClusterErrorKind::Sql`] error with the server's message.
    pub fn sql(&self, node: usize, sql: &str) -> Result<String, ClusterError> {
        self.psql(node, &self.database, sql)
    }

    /// [`Cluster::sql`] in another database of the node.
    pub fn sql_in(&self, node: usize, database: &str, sql: &str) -> Result<String, ClusterError> {
        self.psql(node, database, sql)
    }

    /// Pauses WAL replay on a replica and returns once it has paused (or the
    /// pause is pending: then no further record is applied either).
    pub fn pause_replay(&self, node: usize) -> Result<(), ClusterError> {
        self.psql(node, "postgres", "select pg_wal_replay_pause()")?;
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        while self.psql(node, "postgres", "select pg_get_wal_replay_pause_state()")? != "paused"
            && Instant::now() < deadline
        {
            thread::sleep(POLL);
        }
        Ok(())
    }

    /// Resumes WAL replay on a replica.
    pub fn resume_replay(&self, node: usize) -> Result<(), ClusterError> {
        self.psql(node, "postgres", "select pg_wal_replay_resume()")
            .map(drop)
    }

    /// Sets (or with `None` resets) `recovery_min_apply_delay` on a replica
    /// through ALTER SYSTEM and a reload; returns once new sessions see it.
    pub fn set_apply_delay(
        &self,
        node: usize,
        delay: Option<Duration>,
    ) -> Result<(), ClusterError> {
        let millis = delay.map_or(0, |d| d.as_millis());
        let set = match delay {
            Some(_) => format!("ALTER SYSTEM SET recovery_min_apply_delay = '{millis}ms'"),
            None => "ALTER SYSTEM RESET recovery_min_apply_delay".to_owned(),
        };
        self.psql(
            node,
            "postgres",
            &format!("{set};\nselect pg_reload_conf();"),
        )?;
        let query = "select setting from pg_settings where name = 'recovery_min_apply_delay'";
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let seen = self.psql(node, "postgres", query)?;
            if seen == millis.to_string() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.node_error(
                    node,
                    ClusterErrorKind::Timeout,
                    format!(
                        "recovery_min_apply_delay is still {seen}ms after reload, wanted {millis}ms"
                    ),
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Rewrites node `i`'s pg_hba.conf with `first` before the harness's
    /// own lines (see [`ClusterOptions::hba_first`]; an empty `first`
    /// restores the default) and reloads it. The file is the node's own,
    /// never replicated, so one replica can refuse what the others accept.
    /// The postmaster rereads it asynchronously: a caller that needs the new
    /// rules checks a login.
    pub fn set_hba_first(&self, node: usize, first: &[String]) -> Result<(), ClusterError> {
        let path = self.nodes[node].data.join("pg_hba.conf");
        setup::write_file(&path, &setup::hba_conf(first), self.os_user)?;
        self.psql(node, "postgres", "select pg_reload_conf()")?;
        Ok(())
    }

    /// Stops node `i` (fast shutdown, escalating after a grace period).
    /// Stopping a stopped node does nothing.
    pub fn stop_node(&self, node: usize) -> Result<(), ClusterError> {
        let node = self.node(node)?;
        if let Some(mut child) = lock(&node.child).take() {
            process::stop_all(&mut [&mut child], libc::SIGINT, STOP_GRACE);
        }
        Ok(())
    }

    /// Starts node `i` again on its port and waits until it accepts
    /// connections. Starting a running node does nothing.
    pub fn start_node(&self, node: usize) -> Result<(), ClusterError> {
        self.node(node)?;
        self.launch(node, false)
    }

    /// Promotes a replica (`pg_promote(true)`, which waits for the promotion)
    /// and makes it the node [`Cluster::wait_caught_up`] and
    /// [`Cluster::pgbench_init`] treat as primary. The other replicas keep
    /// following the old primary.
    pub fn promote(&self, node: usize) -> Result<(), ClusterError> {
        let promoted = self.psql(node, "postgres", "select pg_promote(true, 60)")?;
        if promoted != "t" {
            return Err(self.node_error(
                node,
                ClusterErrorKind::Command,
                "pg_promote did not finish within 60 s".to_owned(),
            ));
        }
        self.primary.store(node, Ordering::Relaxed);
        Ok(())
    }

    /// Waits until every running replica that is in recovery and not paused
    /// has replayed the primary's current WAL position.
    pub fn wait_caught_up(&self, timeout: Duration) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let primary = self.primary_index();
        if !self.is_running(primary) {
            return Err(self.node_error(
                primary,
                ClusterErrorKind::Usage,
                "cannot wait for replicas to catch up: the primary is not running".to_owned(),
            ));
        }
        let target = self.psql(primary, "postgres", "select pg_current_wal_lsn()")?;
        let query = format!(
            "select pg_is_in_recovery(), pg_get_wal_replay_pause_state(), \
             coalesce(pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, false), \
             pg_last_wal_replay_lsn()"
        );
        for i in (0..self.nodes.len()).filter(|&i| i != primary) {
            loop {
                if !self.is_running(i) {
                    break;
                }
                let row = self.psql(i, "postgres", &query)?;
                let cols: Vec<&str> = row.split('|').collect();
                let (in_recovery, pause, reached) = match cols[..] {
                    [a, b, c, _] => (a == "t", b, c == "t"),
                    _ => {
                        return Err(self.node_error(
                            i,
                            ClusterErrorKind::Command,
                            format!("unexpected replay state row {row:?}"),
                        ));
                    }
                };
                if !in_recovery || pause != "not paused" || reached {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(self.node_error(
                        i,
                        ClusterErrorKind::Timeout,
                        format!(
                            "replayed only up to {} after {timeout:?}; the primary is at {target}",
                            cols[3]
                        ),
                    ));
                }
                thread::sleep(POLL);
            }
        }
        Ok(())
    }

    /// `pgbench -i -q -s scale` on the primary, over TCP as the app user.
    pub fn pgbench_init(&self, scale: u32) -> Result<(), ClusterError> {
        let primary = self.primary_index();
        let mut cmd = self.command("pgbench", false);
        cmd.args(["-i", "-q", "-s", &scale.to_string(), "-h", HOST])
            .args(["-p", &self.port(primary).to_string()])
            .args(["-U", &self.app_user, &self.database])
            .env("PGPASSWORD", &self.app_password);
        self.run(primary, "pgbench -i", cmd, None, PGBENCH_TIMEOUT)
            .map(drop)
    }

    /// Stops every node (fast shutdown, escalating to immediate and SIGKILL
    /// after a grace period). Idempotent; the directory stays.
    pub fn shutdown(&self) {
        let mut guards: Vec<_> = self.nodes.iter().map(|n| lock(&n.child)).collect();
        let mut children: Vec<&mut Child> = guards.iter_mut().filter_map(|g| g.as_mut()).collect();
        process::stop_all(&mut children, libc::SIGINT, STOP_GRACE);
        for guard in &mut guards {
            **guard = None;
        }
    }

    /// Shutdown, then (unless `keep`) removal of the directory.
    fn teardown(&self) {
        self.shutdown();
        if !self.keep {
            for path in &self.owned_paths {
                let _ = fs::remove_dir_all(path);
            }
        }
        if let Some(janitor) = lock(&self.janitor).take() {
            janitor.finish();
        }
    }

    fn node(&self, i: usize) -> Result<&Node, ClusterError> {
        self.nodes.get(i).ok_or_else(|| {
            ClusterError::new(
                ClusterErrorKind::Usage,
                format!("no node {i}: the cluster has {} nodes", self.nodes.len()),
            )
        })
    }

    fn expect_node(&self, i: usize) -> &Node {
        self.node(i).unwrap_or_else(|e| panic!("{e}"))
    }

    fn node_error(&self, i: usize, kind: ClusterErrorKind, message: String) -> ClusterError {
        let node = &self.nodes[i];
        ClusterError::new(kind, message)
            .on_node(&node.name)
            .with_log(&node.log)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}
