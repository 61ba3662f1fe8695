//! The monitor's own connections to a node, separate from the client pools
//! so a saturated pool never delays (or is delayed by) a health check.

use std::fmt;

use lagrouter_config::{Config, NodeConfig};
use tokio_postgres::{Client, NoTls};

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
}

impl ConnTarget {
    /// The target for `node` under `config`: `config.health_user()` with its
    /// backend password, on `health.database`.
    pub fn new(config: &Config, node: &NodeConfig) -> ConnTarget {
        let user = config.health_user();
        ConnTarget {
            host: node.host.clone(),
            port: node.port,
            user: user.map(|u| u.name.clone()),
            password: user.and_then(|u| u.backend_password()).map(str::to_owned),
            database: config.health.database.clone(),
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
            .finish()
    }
}

/// Opens a connection (no TLS: the monitor talks to nodes on a trusted
/// network, like the pools) and drives it on its own task. Dropping the
/// returned client ends that task once the server has been told goodbye.
/// The caller bounds the time with its own deadline.
pub async fn connect(t: &ConnTarget) -> Result<Client, String> {
    let Some(user) = &t.user else {
        return Err("no [[users]] entry to connect as (health.user)".into());
    };
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&t.host)
        .port(t.port)
        .user(user)
        .dbname(&t.database)
        .application_name(APPLICATION_NAME);
    if let Some(p) = &t.password {
        cfg.password(p);
    }
    let (client, connection) = cfg.connect(NoTls).await.map_err(|e| {
        let mut msg = describe_pg_error(&e);
        if t.password.is_none() {
            msg.push_str(&format!(
                " (user `{user}` has no plain-text password: set server_password)"
            ));
        }
        msg
    })?;
    tokio::spawn(async move {
        // Errors here surface as failed queries on the client side.
        let _ = connection.await;
    });
    Ok(client)
}
