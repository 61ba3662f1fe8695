//! The monitor's own connections to a node, separate from the client pools
//! so a saturated pool never delays (or is delayed by) a health check.

use std::fmt;

use lagrouter_config::{Config, NodeConfig, NodeTls, SslMode, UserConfig};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::describe_pg_error;

/// `application_name` of every monitor connection, so operators can tell
/// them apart in `pg_stat_activity` and exclude them from their own stats.
pub const APPLICATION_NAME: &str = "lagrouter-health";

/// Where and as whom to connect. Compared by value: when it changes on
/// reload, the connection is rebuilt.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnTarget {
    pub host: String,
    pub port: u16,
    pub user: Option<String>,
    pub password: Option<String>,
    pub database: String,
    pub tls: NodeTls,
}

impl ConnTarget {
    /// The target for `node` under `config`: `config.health_user()` with its
    /// backend password, on `health.database`.
    pub fn new(config: &Config, node: &NodeConfig) -> ConnTarget {
        ConnTarget::as_user(config, node, config.health_user(), &config.health.database)
    }

    /// The target for `node` as `user` (with its backend password) on
    /// `database`, with the node's TLS settings.
    pub fn as_user(
        config: &Config,
        node: &NodeConfig,
        user: Option<&UserConfig>,
        database: &str,
    ) -> ConnTarget {
        ConnTarget {
            host: node.host.clone(),
            port: node.port,
            user: user.map(|u| u.name.clone()),
            password: user.and_then(|u| u.backend_password()).map(str::to_owned),
            database: database.to_owned(),
            tls: config.node_tls(node),
        }
    }
}

impl fmt::Debug for ConnTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnTarget")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("database", &self.database)
            .field("tls", &self.tls)
            .finish()
    }
}

/// Opens a connection (TLS as `[server_tls]` and the node's `sslmode`
/// say) and drives it on its own task. Dropping the returned client ends
/// that task once the server has been told goodbye. The caller bounds the
/// time with its own deadline.
pub async fn connect(t: &ConnTarget) -> Result<Client, String> {
    connect_as(t, APPLICATION_NAME).await
}

/// [`connect`] under another `application_name`.
pub async fn connect_as(t: &ConnTarget, application_name: &str) -> Result<Client, String> {
    let Some(user) = &t.user else {
        return Err("no [[users]] entry to connect as (health.user)".into());
    };
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(user)
        .dbname(&t.database)
        .application_name(application_name)
        .ssl_mode(match t.tls.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            // The verify- modes are require plus the checks in the config.
            _ => PgSslMode::Require,
        });
    if let Some(p) = &t.password {
        cfg.password(p);
    }
    let opened = match (&t.tls.client, t.tls.mode) {
        (_, SslMode::Disable) => open(&cfg, NoTls).await,
        (Some(c), _) => open(&cfg, MakeRustlsConnect::new((**c).clone())).await,
        (None, mode) => return Err(format!("sslmode {mode} has no certificates loaded")),
    };
    opened.map_err(|e| {
        let mut msg = describe_pg_error(&e);
        if t.password.is_none() {
            msg.push_str(&format!(
                " (user `{user}` has no plain-text password: set server_password)"
            ));
        }
        msg
    })
}

/// Connects with `tls` and drives the connection on its own task.
async fn open<T>(cfg: &tokio_postgres::Config, tls: T) -> Result<Client, tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, connection) = cfg.connect(tls).await?;
    tokio::spawn(async move {
        // Errors here surface as failed queries on the client side.
        let _ = connection.await;
    });
    Ok(client)
}
