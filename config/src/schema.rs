//! The configuration schema: what users write in `lagrouter.toml`.
//!
//! Every field says its default and whether a change applies live (on
//! reload) or needs a restart. The README's configuration reference is
//! checked against these structs by a test.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::tls::{NodeTls, ServerTls};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[server]`: listeners, limits and TLS.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[[users]]`: who may connect, and with which credentials the proxy
    /// logs into the nodes on their behalf. At least one.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// `[pool]`: server connection pooling.
    #[serde(default)]
    pub pool: PoolConfig,
    /// `[[nodes]]`: the primary and its streaming replicas. At least one.
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    /// `[health]`: the lag monitor.
    #[serde(default)]
    pub health: HealthConfig,
    /// `[routing]`: where reads go, read-your-writes and the primary-read breaker.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// `[safety]`: refuse writes while too few replicas are caught up.
    #[serde(default)]
    pub safety: SafetyConfig,
    /// `[server_tls]`: TLS on the connections to the nodes.
    #[serde(default)]
    pub server_tls: ServerTlsConfig,
    /// `[auth_query]`: look up users not in `[[users]]` on the primary.
    #[serde(default)]
    pub auth_query: AuthQueryConfig,
    /// What `server_tls` names, read when the file is loaded.
    #[serde(skip)]
    pub(crate) server_tls_loaded: ServerTls,
}

impl Config {
    /// How to connect to `node`: its own `sslmode`, else `[server_tls]`'s.
    pub fn node_tls(&self, node: &NodeConfig) -> NodeTls {
        let mode = node.sslmode.unwrap_or(self.server_tls.sslmode);
        // Validation refuses a verify- mode without sslrootcert; should
        // one get here, connections fail rather than go unchecked.
        self.server_tls_loaded
            .for_mode(mode)
            .unwrap_or_else(|| NodeTls::unusable(mode))
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address clients connect to. Default `127.0.0.1:6432`. Restart.
    pub listen: String,
    /// Database name that opens the admin console instead of a node.
    /// Default `lagrouter`. Live.
    pub admin_database: String,
    /// Address of the Prometheus `/metrics` endpoint; unset disables it.
    /// Default unset. Restart.
    pub metrics_listen: Option<String>,
    /// Most client connections at once; more are refused with 53300.
    /// Default 10000. Restart.
    pub max_client_connections: usize,
    /// Threads that run sessions, each its own event loop (the listener,
    /// maintenance and connects run on the main thread). 1 runs every
    /// session on one loop, as PgBouncer does: the least CPU per
    /// transaction. More spread clients over that many loops in turn, for
    /// a proxy with cores of its own; a session then prefers the idle
    /// server connections of its own loop, and moves another loop's to
    /// its own. Default 1. Restart.
    pub workers: usize,
    /// PEM certificate chain for client TLS. Set together with `tls_key`.
    /// Default unset (SSLRequest answered 'N'). Restart.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for client TLS. Default unset. Restart.
    pub tls_key: Option<PathBuf>,
    /// Largest message a client may send, in bytes, for the types
    /// PostgreSQL allows to be large (Query, Parse, Bind, CopyData,
    /// FunctionCall); every other type is limited to 10000 bytes, as in
    /// PostgreSQL. A larger message gets 54000 and the connection is
    /// closed. Memory grows only with the bytes that actually arrive.
    /// Default 1073741824 (1 GiB, PostgreSQL's own limit). Live (new
    /// messages).
    pub max_message_size: usize,
    /// How long a client may take to finish startup and authentication.
    /// Default `15s`. Live.
    #[serde(with = "humantime_serde")]
    pub client_login_timeout: Duration,
    /// On shutdown, how long to wait for in-flight transactions. Default `30s`. Live.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6432".into(),
            admin_database: "lagrouter".into(),
            metrics_listen: None,
            max_client_connections: 10_000,
            workers: 1,
            tls_cert: None,
            tls_key: None,
            max_message_size: 1 << 30,
            client_login_timeout: Duration::from_secs(15),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// How the proxy checks a client's password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (the default).
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge-response.
    Md5,
    /// No password asked.
    Trust,
}

/// `[[users]]`
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name clients log in with; also used on the nodes. Required. Live.
    pub name: String,
    /// Client password: plain text, or a `SCRAM-SHA-256$…` verifier (SCRAM
    /// only) or an `md5…` hash (md5 only). Without `server_password`, the
    /// plain text is also used to log into the nodes. Default empty. Live.
    #[serde(default)]
    pub password: String,
    /// Password for the nodes when it differs from `password` (required
    /// when `password` is a verifier or hash). Default unset. Live.
    #[serde(default)]
    pub server_password: Option<String>,
    /// `scram-sha-256`, `md5` or `trust`. Default `scram-sha-256`. Live.
    #[serde(default)]
    pub auth: AuthMethod,
    /// May open the admin console. Default `false`. Live.
    #[serde(default)]
    pub admin: bool,
}

impl UserConfig {
    /// The password the proxy logs into nodes with, if it has one in plain text.
    pub fn backend_password(&self) -> Option<&str> {
        match &self.server_password {
            Some(p) => Some(p),
            None if is_password_hash(&self.password) => None,
            None => Some(&self.password),
        }
    }
}

/// Whether a configured password is a stored SCRAM verifier or md5 hash
/// rather than plain text.
pub fn is_password_hash(p: &str) -> bool {
    p.starts_with("SCRAM-SHA-256$") || (p.len() == 35 && p.starts_with("md5"))
}

impl fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field(
                "server_password",
                &self.server_password.as_ref().map(|_| "<redacted>"),
            )
            .field("auth", &self.auth)
            .field("admin", &self.admin)
            .finish()
    }
}

/// Pooling mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A server connection is held for one transaction (the default).
    #[default]
    Transaction,
    /// A server connection is held for the whole client session.
    Session,
}

/// `[pool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// `transaction` or `session`. Default `transaction`. Live for new clients.
    pub mode: PoolMode,
    /// Server connections per (node, user, database). Default 20. Live.
    pub size: usize,
    /// Clients that may wait for a connection of one pool at once; more get
    /// 53300 at once. Default 1000. Live.
    pub max_waiters: usize,
    /// How long a client waits for a server connection before it gets 53300
    /// naming the pool. Default `5s`. Live.
    #[serde(with = "humantime_serde")]
    pub checkout_timeout: Duration,
    /// Time to connect and authenticate to a node. Default `5s`. Live.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle server connections older than this are closed. Default `10m`. Live.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::Transaction,
            size: 20,
            max_waiters: 1000,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
        }
    }
}

/// What a node is configured to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    /// The write target (checked: demoted if it reports being in recovery).
    Primary,
    /// A streaming replica.
    Replica,
    /// Health detects the role: the one node not in recovery is primary.
    Auto,
}

/// `[[nodes]]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique name used in logs, metrics and errors. Required. Live.
    pub name: String,
    /// Host name or IP address. Required. Live.
    pub host: String,
    /// TCP port. Default 5432. Live.
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// `primary`, `replica` or `auto`. Required. Live.
    pub role: NodeRole,
    /// TLS mode for this node, overriding `[server_tls] sslmode`. Default
    /// unset. Live.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
}

fn default_pg_port() -> u16 {
    5432
}

/// `[health]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often each node is checked. Default `250ms`. Live.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// A check not answered within this is missed: the node keeps its
    /// state until `timeouts_before_unreachable` checks in a row are missed
    /// (at once when its client traffic is stuck too). Default `1s`. Live.
    #[serde(with = "humantime_serde")]
    pub check_timeout: Duration,
    /// A replica further behind the primary than this many bytes of WAL is
    /// `Lagging`. Default 1048576 (1 MiB). Live.
    pub max_lag_bytes: u64,
    /// A replica whose heartbeat is older than this is `Lagging`; needs the
    /// heartbeat. Default unset (time lag is reported, not enforced). Live.
    #[serde(with = "humantime_serde")]
    pub max_lag_time: Option<Duration>,
    /// Consecutive good checks before a demoted replica serves reads again.
    /// Default 3. Live.
    pub recover_after_checks: u32,
    /// Consecutive checks without an answer within `check_timeout` before
    /// a node is `Unreachable`; four times as many while the node keeps
    /// answering its client traffic (only its check is slow). A refused or
    /// broken connection makes it `Unreachable` at once, and so does a
    /// slow check while the node's client traffic makes no progress
    /// either. Default 2. Live.
    pub timeouts_before_unreachable: u32,
    /// Transactions waiting on a primary that stopped answering (it is
    /// `Unreachable`: checks missed, or its traffic stuck) are ended with
    /// 08006 naming it once it has been so for this long; whether such a
    /// transaction committed is unknown, as after a lost connection. Their
    /// server connections are closed, so no pool slot waits forever. `0s`:
    /// they wait as long as the primary stays stopped. Default `10s`. Live.
    #[serde(with = "humantime_serde")]
    pub primary_stall_timeout: Duration,
    /// How often this instance's heartbeat row (each instance has its own;
    /// time lag is the age of the newest a replica replayed) is written on
    /// the primary; `0s` disables it (time lag then reads as unknown).
    /// Default `500ms`. Live.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Table the heartbeat is written to (created if missing). Default
    /// `lagrouter_heartbeat`. Live.
    pub heartbeat_table: String,
    /// User (from `[[users]]`) the monitor connects as. Default: the first user. Live.
    pub user: Option<String>,
    /// Database the monitor connects to. Default `postgres`. Live.
    pub database: String,
    /// When two nodes claim to be primary, write to the one on the highest
    /// timeline instead of refusing writes. Default `false`. Live.
    pub prefer_highest_timeline: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            check_interval: Duration::from_millis(250),
            check_timeout: Duration::from_secs(1),
            max_lag_bytes: 1 << 20,
            max_lag_time: None,
            recover_after_checks: 3,
            timeouts_before_unreachable: 2,
            primary_stall_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_millis(500),
            heartbeat_table: "lagrouter_heartbeat".into(),
            user: None,
            database: "postgres".into(),
            prefer_highest_timeline: false,
        }
    }
}

/// What fallback reads get while the primary-read breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BreakerOpenAction {
    /// An error with SQLSTATE 53400 (the default).
    #[default]
    Reject,
    /// The least-lagged replica, with a NOTICE saying how stale it is.
    /// Never for a read that needs read-your-writes.
    ServeStale,
}

/// How a read picks among eligible replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The replica with the smallest byte lag (the default), compared in
    /// steps of `[health] max_lag_bytes / 16`. Ties: each session keeps one
    /// of the tied replicas (rendezvous hashing), and moves back to a
    /// replica that rejoins the tied set.
    #[default]
    LeastLag,
    /// Each eligible replica in turn.
    RoundRobin,
    /// The replica with the fewest server connections in use. Ties as for
    /// `LeastLag`.
    LeastConnections,
}

/// Where a rule sends matching statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleRoute {
    /// Always the primary.
    Primary,
    /// A fresh replica (still subject to read-your-writes).
    Replica,
}

/// `[[routing.rules]]`: a regular expression on statement text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Regular expression (Rust `regex` syntax) matched against the
    /// statement text. Required. Live.
    #[serde(deserialize_with = "deserialize_regex")]
    pub pattern: regex::Regex,
    /// `primary` or `replica`. Required. Live.
    pub route: RuleRoute,
}

fn deserialize_regex<'de, D: Deserializer<'de>>(d: D) -> Result<regex::Regex, D::Error> {
    let s = String::deserialize(d)?;
    regex::Regex::new(&s).map_err(|e| serde::de::Error::custom(format!("invalid pattern: {e}")))
}

/// `[routing]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// After a session writes, its reads go only to nodes that replayed the
    /// write. Default `true`. Live.
    pub read_your_writes: bool,
    /// How long a read that must see the session's last write may wait for
    /// a healthy replica to replay it before falling back to the primary;
    /// `0s` falls back at once. Default `50ms`. Live.
    #[serde(with = "humantime_serde")]
    pub read_your_writes_wait: Duration,
    /// Most share of reads that may fall back to the primary before the
    /// breaker opens, 0.0–1.0. Default `0.20`. Live.
    pub primary_read_cap: f64,
    /// Sliding window the share is measured over. Default `10s`. Live.
    #[serde(with = "humantime_serde")]
    pub breaker_window: Duration,
    /// Reads in the window before the breaker may open. Default 100. Live.
    pub breaker_min_reads: u64,
    /// Time the breaker stays open before it lets some fallback reads
    /// through (half-open). Default `5s`. Live.
    #[serde(with = "humantime_serde")]
    pub breaker_cooldown: Duration,
    /// `reject` or `serve_stale`. Default `reject`. Live.
    pub on_breaker_open: BreakerOpenAction,
    /// `least_lag`, `round_robin` or `least_connections`. Default `least_lag`. Live.
    pub balance: Balance,
    /// Functions to treat as read-only although PostgreSQL marks them
    /// volatile. Default empty. Live.
    pub read_only_functions: Vec<String>,
    /// Routing rules, first match wins; hints override them. Default none. Live.
    pub rules: Vec<RuleConfig>,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            read_your_writes: true,
            read_your_writes_wait: Duration::from_millis(50),
            primary_read_cap: 0.20,
            breaker_window: Duration::from_secs(10),
            breaker_min_reads: 100,
            breaker_cooldown: Duration::from_secs(5),
            on_breaker_open: BreakerOpenAction::Reject,
            balance: Balance::LeastLag,
            read_only_functions: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// `[safety]`: the write gate (Redis' `min-replicas-to-write` /
/// `min-replicas-max-lag`, at the proxy).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SafetyConfig {
    /// Writes through lagrouter are refused (SQLSTATE 53000) while fewer
    /// than this many replicas are within `min_replicas_max_lag_*`. `0`
    /// turns the gate off. Default 0. Live.
    pub min_replicas_to_write: u32,
    /// A replica further behind than this many bytes does not count toward
    /// the gate. Default unset: `[health] max_lag_bytes`. Live.
    pub min_replicas_max_lag_bytes: Option<u64>,
    /// A replica whose heartbeat is older than this (or unknown) does not
    /// count toward the gate. Default unset: `[health] max_lag_time`. Live.
    #[serde(with = "humantime_serde")]
    pub min_replicas_max_lag_time: Option<Duration>,
}

impl SafetyConfig {
    /// The byte limit in force (`[health] max_lag_bytes` when unset).
    pub fn max_lag_bytes(&self, health: &HealthConfig) -> u64 {
        self.min_replicas_max_lag_bytes
            .unwrap_or(health.max_lag_bytes)
    }

    /// The time limit in force (`[health] max_lag_time` when unset).
    pub fn max_lag_time(&self, health: &HealthConfig) -> Option<Duration> {
        self.min_replicas_max_lag_time.or(health.max_lag_time)
    }
}

/// libpq's `sslmode`, for connections to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// Whether the node's certificate is checked against `sslrootcert`
    /// whatever the settings (the two `verify-` modes).
    pub fn needs_root(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[server_tls]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerTlsConfig {
    /// `disable`, `prefer`, `require`, `verify-ca` or `verify-full`, for
    /// every connection to a node (pools, health checks, replay poller,
    /// catalog); a node's own `sslmode` overrides it. Default `prefer`. Live.
    pub sslmode: SslMode,
    /// PEM file of the CA certificates a node's certificate must chain to.
    /// Required by `verify-ca` and `verify-full`. Default unset. Live.
    pub sslrootcert: Option<PathBuf>,
    /// PEM certificate chain lagrouter presents to the nodes (for
    /// `clientcert` or `cert` in their `pg_hba.conf`). Set together with
    /// `sslkey`. Default unset. Live.
    pub sslcert: Option<PathBuf>,
    /// PEM private key of `sslcert`. Default unset. Live.
    pub sslkey: Option<PathBuf>,
}

/// The default `[auth_query] query`: the `SECURITY DEFINER` function the
/// README gives, so the lookup user needs no superuser rights.
pub const DEFAULT_AUTH_QUERY: &str = "SELECT usename, passwd FROM lagrouter.get_auth($1)";

/// `[auth_query]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthQueryConfig {
    /// User (from `[[users]]`, with a password lagrouter can log in with)
    /// that runs the query; unset turns the lookup off. A client whose user
    /// is not in `[[users]]` is checked against the SCRAM verifier the
    /// query returns and logs into the nodes by pass-through. Default
    /// unset. Live.
    pub user: Option<String>,
    /// Database the query runs in (on the primary). Default `postgres`. Live.
    pub database: String,
    /// Query taking the user name as `$1` and returning the name and its
    /// SCRAM verifier (no row, or NULL: no such user). Default
    /// `SELECT usename, passwd FROM lagrouter.get_auth($1)`. Live.
    pub query: String,
    /// How long a looked-up verifier, or the absence of one, is reused
    /// before asking again. Default `60s`. Live.
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
}

impl Default for AuthQueryConfig {
    fn default() -> Self {
        Self {
            user: None,
            database: "postgres".into(),
            query: DEFAULT_AUTH_QUERY.into(),
            cache_ttl: Duration::from_secs(60),
        }
    }
}
