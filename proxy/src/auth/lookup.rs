//! `[auth_query]`: the SCRAM verifiers of users not in `[[users]]`, looked
//! up on the primary and cached for `cache_ttl`.
//!
//! One connection (as `auth_query.user`), opened on first need and again
//! after an error; lookups take turns on it. Answers, including "no such
//! user", are cached, so a login storm of one user, or a client trying
//! names, costs one query per name per TTL. The cache holds at most
//! [`MAX_CACHED`] names.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lagrouter_config::Config;
use lagrouter_health::{ConnTarget, Timers, connect_as};

use super::{Credential, ScramSecret, ServerLogin, UserAuth};

/// Most names cached at once; when full, expired entries go, and if none
/// has expired the whole cache is cleared.
pub const MAX_CACHED: usize = 10_000;

/// `application_name` of the lookup connection.
const APPLICATION_NAME: &str = "lagrouter-auth-query";

/// Why a lookup gave no answer (not "no such user", which is an answer).
#[derive(Debug, thiserror::Error)]
#[error("auth_query for user \"{user}\" failed on node {node}: {detail}")]
pub struct LookupError {
    pub user: String,
    pub node: String,
    pub detail: String,
}

struct Cached {
    at: Instant,
    user: Option<Arc<UserAuth>>,
}

/// The lookup connection and the cache. One per proxy.
#[derive(Default)]
pub struct AuthQuery {
    cache: Mutex<HashMap<String, Cached>>,
    conn: tokio::sync::Mutex<Option<(ConnTarget, tokio_postgres::Client)>>,
}

impl AuthQuery {
    /// The user called `name` as `auth_query` on node `primary` (an index
    /// into `config.nodes`) describes it: `Ok(None)` when there is no such
    /// user, or no usable SCRAM verifier for it. `Ok(None)` too when
    /// `[auth_query] user` is unset. The query's limit runs on `timers`.
    pub async fn lookup(
        &self,
        config: &Config,
        primary: Option<usize>,
        name: &str,
        now: Instant,
        timers: &Timers,
    ) -> Result<Option<Arc<UserAuth>>, LookupError> {
        let a = &config.auth_query;
        let Some(lookup_user) = &a.user else {
            return Ok(None);
        };
        if let Some(c) = self.cache.lock().ok().as_ref().and_then(|m| m.get(name))
            && now.saturating_duration_since(c.at) < a.cache_ttl
        {
            return Ok(c.user.clone());
        }
        let node = primary.and_then(|i| config.nodes.get(i));
        let fail = |node: &str, detail: String| LookupError {
            user: name.to_owned(),
            node: node.to_owned(),
            detail,
        };
        let Some(node) = node else {
            return Err(fail("(none)", "no primary is known".into()));
        };
        let lookup = config.users.iter().find(|u| &u.name == lookup_user);
        let target = ConnTarget::as_user(config, node, lookup, &a.database);
        let limit = config.pool.connect_timeout;
        let row = {
            let mut conn = self.conn.lock().await;
            let r = timers
                .timeout(limit, query(&mut conn, target, &a.query, name))
                .await;
            let r = r.unwrap_or_else(|_| Err(format!("no answer within {limit:?}")));
            if r.is_err() {
                // Reconnect next time: the connection may be what failed.
                *conn = None;
            }
            r.map_err(|e| fail(&node.name, e))?
        };
        let user = match row {
            Some(verifier) => match ScramSecret::parse(&verifier) {
                Some(secret) => Some(Arc::new(UserAuth {
                    name: name.to_owned(),
                    credential: Credential::Scram(secret),
                    server_login: ServerLogin::PassThrough(None),
                    admin: false,
                })),
                None => {
                    tracing::warn!(
                        user = name,
                        "auth_query returned a password that is not a SCRAM-SHA-256 verifier; \
                         lagrouter checks such users by SCRAM only, so the login fails"
                    );
                    None
                }
            },
            None => None,
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, c| now.saturating_duration_since(c.at) < a.cache_ttl);
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
            }
            cache.insert(
                name.to_owned(),
                Cached {
                    at: now,
                    user: user.clone(),
                },
            );
        }
        Ok(user)
    }

    /// Forgets every cached answer (a reload may change what they mean).
    pub fn clear(&self) {
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }
}

/// Runs the query on the cached connection, (re)connecting first when it
/// is missing, closed or for another target. The verifier, or `None` for
/// no row or NULL.
async fn query(
    conn: &mut Option<(ConnTarget, tokio_postgres::Client)>,
    target: ConnTarget,
    sql: &str,
    name: &str,
) -> Result<Option<String>, String> {
    if !matches!(conn, Some((t, c)) if *t == target && !c.is_closed()) {
        let client = connect_as(&target, APPLICATION_NAME).await?;
        *conn = Some((target, client));
    }
    let (_, client) = conn.as_ref().expect("connected above");
    let rows = client
        .query(sql, &[&name])
        .await
        .map_err(|e| lagrouter_health::describe_pg_error(&e))?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    if row.len() < 2 {
        return Err(format!(
            "the query returns {} column(s); it must return the user name and its verifier",
            row.len()
        ));
    }
    row.try_get::<_, Option<String>>(1)
        .map_err(|e| format!("the second column is not text: {e}"))
}
