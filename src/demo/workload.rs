//! The demo's clients and their own read-your-writes checker.
//!
//! Writer sessions insert a row with a unique id (autocommit) and at once
//! read it back in a separate statement; the row missing is a
//! read-your-writes violation, which lagrouter promises never happens.
//! Reader sessions, which never write, run small aggregate reads. Every
//! read also returns `inet_server_port()`, so each is attributed to the
//! node that served it without trusting the proxy's own counters; the
//! read-back returns the port and whether the row exists in one statement,
//! so a missing row is pinned on the node that answered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_postgres::{Client, NoTls, Statement};
use tokio_util::sync::CancellationToken;

/// Pause between a session's iterations. Keeps the demo at a few hundred
/// statements a second, which shows the routing without starving the
/// health checks of CPU on a small machine.
const WRITER_PACE: Duration = Duration::from_millis(10);
const READER_PACE: Duration = Duration::from_millis(4);
/// Wait before reconnecting a session whose connection broke.
const RECONNECT_PAUSE: Duration = Duration::from_millis(500);
/// Violations kept with their details for the summary.
const KEPT_VIOLATIONS: usize = 10;

/// The table the workload writes; created before the sessions start.
pub const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS demo (
    id bigint PRIMARY KEY,
    session int NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS demo_bulk (id bigserial PRIMARY KEY, payload text NOT NULL)";

/// One read-your-writes violation: a session did not see its own row.
#[derive(Debug, Clone)]
pub struct Violation {
    pub id: i64,
    /// Port of the node that answered without the row.
    pub port: Option<u16>,
}

/// Counters shared by the sessions and the view.
pub struct Stats {
    /// Node ports in config order; reads served elsewhere count in `other_reads`.
    ports: Vec<u16>,
    reads_by_node: Vec<AtomicU64>,
    pub other_reads: AtomicU64,
    pub writes: AtomicU64,
    pub read_backs: AtomicU64,
    pub pure_reads: AtomicU64,
    pub violations: AtomicU64,
    kept: Mutex<Vec<Violation>>,
    /// Errors by SQLSTATE (or "connection"), with the last message.
    errors: Mutex<BTreeMap<String, (u64, String)>>,
    next_id: AtomicU64,
}

impl Stats {
    fn new(ports: Vec<u16>) -> Stats {
        Stats {
            reads_by_node: ports.iter().map(|_| AtomicU64::new(0)).collect(),
            ports,
            other_reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            read_backs: AtomicU64::new(0),
            pure_reads: AtomicU64::new(0),
            violations: AtomicU64::new(0),
            kept: Mutex::default(),
            errors: Mutex::default(),
            next_id: AtomicU64::new(1),
        }
    }

    /// Reads served by node `i` (config order).
    pub fn reads_on(&self, i: usize) -> u64 {
        self.reads_by_node
            .get(i)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// All reads, both kinds.
    pub fn reads(&self) -> u64 {
        self.read_backs.load(Ordering::Relaxed) + self.pure_reads.load(Ordering::Relaxed)
    }

    pub fn violations(&self) -> u64 {
        self.violations.load(Ordering::Relaxed)
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// The first violations, with the node that answered.
    pub fn kept_violations(&self) -> Vec<Violation> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Errors by code: (count, last message).
    pub fn errors(&self) -> BTreeMap<String, (u64, String)> {
        self.errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn error_count(&self) -> u64 {
        self.errors().values().map(|(n, _)| n).sum()
    }

    /// Index of the node listening on `port`.
    pub fn node_of(&self, port: u16) -> Option<usize> {
        self.ports.iter().position(|&p| p == port)
    }

    fn served_by(&self, port: i32) -> Option<u16> {
        let port = u16::try_from(port).ok();
        match port.and_then(|p| self.node_of(p)) {
            Some(i) => {
                self.reads_by_node[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                self.other_reads.fetch_add(1, Ordering::Relaxed);
            }
        }
        port
    }

    fn error(&self, e: &tokio_postgres::Error) {
        let (code, msg) = match e.as_db_error() {
            Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
            None => ("connection".to_owned(), e.to_string()),
        };
        let mut g = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let entry = g.entry(code).or_insert((0, String::new()));
        entry.0 += 1;
        entry.1 = msg;
    }

    fn violation(&self, v: Violation) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() < KEPT_VIOLATIONS {
            kept.push(v);
        }
    }
}

/// The running sessions.
pub struct Workload {
    pub stats: Arc<Stats>,
    tasks: JoinSet<()>,
}

impl Workload {
    /// Starts `writers + readers` sessions against `conn_str` (through
    /// lagrouter); `ports` are the nodes' ports in config order.
    pub fn start(
        conn_str: &str,
        ports: Vec<u16>,
        writers: usize,
        readers: usize,
        stop: &CancellationToken,
    ) -> Workload {
        let stats = Arc::new(Stats::new(ports));
        let mut tasks = JoinSet::new();
        for n in 0..writers + readers {
            let session = Session {
                n: n as i32,
                writer: n < writers,
                conn_str: conn_str.to_owned(),
                stats: stats.clone(),
                stop: stop.clone(),
            };
            tasks.spawn(session.run());
        }
        Workload { stats, tasks }
    }

    /// Waits for every session to notice the stop and close its connection.
    pub async fn join(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

struct Session {
    n: i32,
    writer: bool,
    conn_str: String,
    stats: Arc<Stats>,
    stop: CancellationToken,
}

/// A session's connection and its prepared statements.
struct Conn {
    client: Client,
    insert: Statement,
    read_back: Statement,
    count: Statement,
}

impl Session {
    async fn run(self) {
        let mut tick: u64 = 0;
        while !self.stop.is_cancelled() {
            let conn = match self.connect().await {
                Ok(c) => c,
                Err(e) => {
                    self.stats.error(&e);
                    self.pause(RECONNECT_PAUSE).await;
                    continue;
                }
            };
            while !self.stop.is_cancelled() && !conn.client.is_closed() {
                tick += 1;
                let pace = if self.writer {
                    self.write_and_read_back(&conn).await;
                    WRITER_PACE
                } else {
                    self.pure_read(&conn, tick).await;
                    READER_PACE
                };
                self.pause(pace).await;
            }
        }
    }

    async fn connect(&self) -> Result<Conn, tokio_postgres::Error> {
        let (client, connection) = tokio_postgres::connect(&self.conn_str, NoTls).await?;
        tokio::spawn(connection);
        // Named statements prepared once, reused across pooled server
        // connections: the proxy's prepared-statement mapping at work.
        let insert = client
            .prepare("INSERT INTO demo (id, session) VALUES ($1, $2)")
            .await?;
        let read_back = client
            .prepare("SELECT inet_server_port(), EXISTS (SELECT 1 FROM demo WHERE id = $1)")
            .await?;
        let count = client
            .prepare("SELECT count(*), inet_server_port() FROM demo WHERE id % 100 = $1")
            .await?;
        Ok(Conn {
            client,
            insert,
            read_back,
            count,
        })
    }

    async fn write_and_read_back(&self, c: &Conn) {
        let id = self.stats.next_id.fetch_add(1, Ordering::Relaxed) as i64;
        if let Err(e) = c.client.execute(&c.insert, &[&id, &self.n]).await {
            self.stats.error(&e);
            return;
        }
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        match c.client.query_one(&c.read_back, &[&id]).await {
            Ok(row) => {
                let port = self.stats.served_by(row.get(0));
                self.stats.read_backs.fetch_add(1, Ordering::Relaxed);
                if !row.get::<_, bool>(1) {
                    self.stats.violation(Violation { id, port });
                }
            }
            Err(e) => self.stats.error(&e),
        }
    }

    async fn pure_read(&self, c: &Conn, tick: u64) {
        let bucket = ((tick * 7 + self.n as u64) % 100) as i64;
        match c.client.query_one(&c.count, &[&bucket]).await {
            Ok(row) => {
                self.stats.served_by(row.get(1));
                self.stats.pure_reads.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.stats.error(&e),
        }
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }
}
