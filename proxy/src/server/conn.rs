//! One authenticated connection to a node.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use lagrouter_config::NodeTls;
use lagrouter_health::Timers;
use lagrouter_routing::FxBuild;
use postgres_protocol::message::frontend;
use tokio::io::AsyncReadExt;

use crate::auth::{PassThroughError, PassThroughLogin, PasswordLogin, ServerLogin};
use crate::error::ProxyError;
use crate::protocol::backend::{self, AuthRequest};
use crate::protocol::tag::{be, status};
use crate::protocol::{MAX_MESSAGE_LEN, split_frame};
use crate::server::stream::NodeStream;

/// Where a node listens and what it is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddr {
    pub name: Arc<str>,
    pub host: String,
    pub port: u16,
    /// TLS mode and client config for this node.
    pub tls: NodeTls,
}

impl NodeAddr {
    /// `host:port`.
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The SCRAM client of one login: from a password, or pass-through.
enum Sasl {
    /// With keys derived from the password once the node names its salt
    /// (kept for the next logins: see [`crate::auth::password`]).
    Password(PassThroughLogin, Arc<PasswordLogin>),
    PassThrough(PassThroughLogin),
}

/// An open, authenticated, idle server connection.
pub struct ServerConn {
    pub stream: NodeStream,
    pub node: Arc<NodeAddr>,
    /// Backend process id and secret key, for CancelRequest.
    pub pid: i32,
    pub secret: Vec<u8>,
    /// Where a client's CancelRequest goes while it runs on this connection
    /// (built once, shared with the client's cancel slot).
    cancel_target: Option<Arc<crate::cancel::CancelTarget>>,
    /// Parameters as the server last reported them, plus values the proxy set.
    pub params: BTreeMap<String, String>,
    /// Parameters as reported at login: the server's defaults for this
    /// user and database, which a new client session starts from.
    pub defaults: Arc<BTreeMap<String, String>>,
    /// Fingerprint of the session parameters this connection was last
    /// brought in line with (0: none). Lets a session skip the comparison.
    pub synced_to: u64,
    /// Server-side names of statements prepared on this connection (the
    /// proxy's SHA-256-derived names, so Fx hashing is safe: asked at
    /// every Bind of a named statement).
    pub prepared: HashSet<Arc<str>, FxBuild>,
    /// Bytes read from the server not yet processed.
    pub read_buf: BytesMut,
    pub created: Instant,
    pub last_used: Instant,
}

impl ServerConn {
    /// The cancel target of this connection's backend.
    pub fn cancel_target(&mut self) -> &Arc<crate::cancel::CancelTarget> {
        let (node, pid, secret) = (&self.node, self.pid, &self.secret);
        self.cancel_target.get_or_insert_with(|| {
            Arc::new(crate::cancel::CancelTarget {
                addr: node.addr(),
                pid,
                secret: secret.clone(),
            })
        })
    }

    /// Connects and logs in; returns when the server is ready for queries.
    pub async fn connect(
        node: Arc<NodeAddr>,
        user: &str,
        login: &ServerLogin,
        database: &str,
        timeout: Duration,
        timers: &Timers,
    ) -> Result<ServerConn, ProxyError> {
        match timers
            .timeout(
                timeout,
                Self::connect_inner(node.clone(), user, login, database),
            )
            .await
        {
            Ok(r) => r,
            Err(_) => Err(ProxyError::NodeConnect {
                node: node.name.to_string(),
                addr: node.addr(),
                detail: format!("timed out after {timeout:?}"),
            }),
        }
    }

    async fn connect_inner(
        node: Arc<NodeAddr>,
        user: &str,
        login: &ServerLogin,
        database: &str,
    ) -> Result<ServerConn, ProxyError> {
        let connect_err = |detail: String| ProxyError::NodeConnect {
            node: node.name.to_string(),
            addr: node.addr(),
            detail,
        };
        let stream = NodeStream::connect(&node).await.map_err(connect_err)?;
        let now = Instant::now();
        let mut conn = ServerConn {
            stream,
            node: node.clone(),
            pid: 0,
            secret: Vec::new(),
            cancel_target: None,
            params: BTreeMap::new(),
            defaults: Arc::default(),
            synced_to: 0,
            prepared: HashSet::default(),
            read_buf: BytesMut::with_capacity(16 * 1024),
            created: now,
            last_used: now,
        };
        let mut out = BytesMut::new();
        frontend::startup_message([("user", user), ("database", database)], &mut out)
            .map_err(|e| connect_err(e.to_string()))?;
        conn.stream
            .send(&out)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        conn.login(user, login).await?;
        conn.defaults = Arc::new(conn.params.clone());
        Ok(conn)
    }

    /// Reads one complete message from the server.
    async fn read_message(&mut self) -> Result<crate::protocol::Frame, ProxyError> {
        loop {
            if let Some(f) = split_frame(&mut self.read_buf, MAX_MESSAGE_LEN)
                .map_err(|e| self.protocol_error(e.to_string()))?
            {
                return Ok(f);
            }
            self.read_buf.reserve(8192);
            let n = self
                .stream
                .read_buf(&mut self.read_buf)
                .await
                .map_err(|e| self.lost(e.to_string()))?;
            if n == 0 {
                return Err(self.lost("server closed the connection".into()));
            }
        }
    }

    fn protocol_error(&self, detail: String) -> ProxyError {
        ProxyError::NodeProtocol {
            node: self.node.name.to_string(),
            detail,
        }
    }

    /// The node broke the SCRAM protocol, or could not prove it knows the
    /// password, in a login with a plain-text password.
    fn scram_error(&self, e: PassThroughError) -> ProxyError {
        self.protocol_error(format!("SCRAM: {e}"))
    }

    fn pass_through_error(&self, e: PassThroughError) -> ProxyError {
        ProxyError::NodeAuth {
            node: self.node.name.to_string(),
            code: "28P01".into(),
            detail: format!("SCRAM pass-through: {e}"),
        }
    }

    fn lost(&self, detail: String) -> ProxyError {
        ProxyError::NodeConnect {
            node: self.node.name.to_string(),
            addr: self.node.addr(),
            detail,
        }
    }

    async fn login(&mut self, user: &str, login: &ServerLogin) -> Result<(), ProxyError> {
        let mut scram: Option<Sasl> = None;
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                be::AUTHENTICATION => {
                    let req = backend::decode_auth(msg.body())
                        .map_err(|e| self.protocol_error(e.to_string()))?;
                    let mut out = BytesMut::new();
                    let password = |kind: &str| match login {
                        ServerLogin::Password(p) => Ok(p.password()),
                        ServerLogin::PassThrough(_) => Err(ProxyError::NodeAuth {
                            node: self.node.name.to_string(),
                            code: "28P01".into(),
                            detail: format!(
                                "the node asks for a {kind} password for user \"{user}\"; lagrouter \
                                 holds only its SCRAM verifier, which logs in by SCRAM alone \
                                 (set server_password, or store the role's password as SCRAM on the node)"
                            ),
                        }),
                    };
                    match req {
                        AuthRequest::Ok => continue,
                        AuthRequest::Cleartext => {
                            let p = password("clear-text")?;
                            frontend::password_message(p.as_bytes(), &mut out)
                                .map_err(|e| self.protocol_error(e.to_string()))?;
                        }
                        AuthRequest::Md5 { salt } => {
                            let p = password("md5")?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                p.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out)
                                .map_err(|e| self.protocol_error(e.to_string()))?;
                        }
                        AuthRequest::Sasl { mechanisms } => {
                            if !mechanisms.contains(&"SCRAM-SHA-256") {
                                return Err(self.protocol_error(format!(
                                    "unsupported SASL mechanisms {mechanisms:?}"
                                )));
                            }
                            let (s, first) = match login {
                                ServerLogin::Password(p) => {
                                    let (s, first) = PassThroughLogin::start_without_keys();
                                    (Sasl::Password(s, p.clone()), first.into_bytes())
                                }
                                ServerLogin::PassThrough(Some(keys)) => {
                                    let (s, first) = PassThroughLogin::start(keys.clone());
                                    (Sasl::PassThrough(s), first.into_bytes())
                                }
                                ServerLogin::PassThrough(None) => {
                                    return Err(self.protocol_error(
                                        "SCRAM pass-through without a client key".into(),
                                    ));
                                }
                            };
                            frontend::sasl_initial_response("SCRAM-SHA-256", &first, &mut out)
                                .map_err(|e| self.protocol_error(e.to_string()))?;
                            scram = Some(s);
                        }
                        AuthRequest::SaslContinue(data) => {
                            let s = scram.take().ok_or_else(|| {
                                self.protocol_error("SASL continue before start".into())
                            })?;
                            let (s, message) = match s {
                                Sasl::Password(mut s, p) => {
                                    let (salt, iterations) =
                                        s.offered(data).map_err(|e| self.scram_error(e))?;
                                    let keys = match p.kept(&salt, iterations) {
                                        Some(keys) => keys,
                                        // The first login with this salt: the
                                        // salted password takes the node's
                                        // iteration count (4096 by default:
                                        // about a millisecond) of hashing, off
                                        // the event loop.
                                        None => {
                                            let p = p.clone();
                                            tokio::task::spawn_blocking(move || {
                                                p.derive(&salt, iterations)
                                            })
                                            .await
                                            .map_err(|e| {
                                                self.protocol_error(format!("SCRAM: {e}"))
                                            })?
                                            .map_err(|e| self.scram_error(e))?
                                        }
                                    };
                                    s.set_keys(keys);
                                    let m =
                                        s.server_first(data).map_err(|e| self.scram_error(e))?;
                                    (Sasl::Password(s, p), m.into_bytes())
                                }
                                Sasl::PassThrough(mut s) => {
                                    // Two HMACs and a hash: no key stretching.
                                    let m = s
                                        .server_first(data)
                                        .map_err(|e| self.pass_through_error(e))?;
                                    (Sasl::PassThrough(s), m.into_bytes())
                                }
                            };
                            frontend::sasl_response(&message, &mut out)
                                .map_err(|e| self.protocol_error(e.to_string()))?;
                            scram = Some(s);
                        }
                        AuthRequest::SaslFinal(data) => {
                            let s = scram.take().ok_or_else(|| {
                                self.protocol_error("SASL final before start".into())
                            })?;
                            match s {
                                Sasl::Password(s, _) => {
                                    s.server_final(data).map_err(|e| self.scram_error(e))?
                                }
                                Sasl::PassThrough(s) => s
                                    .server_final(data)
                                    .map_err(|e| self.pass_through_error(e))?,
                            }
                            continue;
                        }
                        AuthRequest::Other(n) => {
                            return Err(self.protocol_error(format!(
                                "unsupported authentication request {n}"
                            )));
                        }
                    }
                    self.stream
                        .send(&out)
                        .await
                        .map_err(|e| self.lost(e.to_string()))?;
                }
                be::PARAMETER_STATUS => {
                    let (k, v) = backend::decode_parameter_status(msg.body())
                        .map_err(|e| self.protocol_error(e.to_string()))?;
                    self.params.insert(k.to_string(), v.to_string());
                }
                be::BACKEND_KEY_DATA => {
                    let (pid, secret) = backend::decode_backend_key(msg.body())
                        .map_err(|e| self.protocol_error(e.to_string()))?;
                    self.pid = pid;
                    self.secret = secret;
                }
                be::NOTICE | be::NEGOTIATE_PROTOCOL_VERSION => {}
                be::READY_FOR_QUERY => return Ok(()),
                be::ERROR => {
                    let f = backend::decode_error_fields(msg.body()).unwrap_or_default();
                    return Err(ProxyError::NodeAuth {
                        node: self.node.name.to_string(),
                        code: if f.code.is_empty() {
                            "08004".into()
                        } else {
                            f.code
                        },
                        detail: f.message,
                    });
                }
                t => {
                    return Err(self.protocol_error(format!(
                        "unexpected message '{}' during login",
                        t as char
                    )));
                }
            }
        }
    }

    /// Sends `msg` (a simple Query or a Sync) on this connection, which
    /// owes nothing, and reads up to ReadyForQuery. The one place that
    /// reads a reply for the proxy itself: ParameterStatus updates
    /// `params`, the first column of the first row and the first error are
    /// kept. Never for client traffic.
    async fn round_trip(&mut self, msg: &[u8]) -> Result<Reply, ProxyError> {
        self.stream
            .send(msg)
            .await
            .map_err(|e| self.lost(e.to_string()))?;
        let mut reply = Reply::default();
        let mut row_seen = false;
        loop {
            let msg = self.read_message().await?;
            match msg.tag {
                be::DATA_ROW if !row_seen => {
                    row_seen = true;
                    reply.value = backend::decode_first_column(msg.body())
                        .map_err(|e| self.protocol_error(e.to_string()))?
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                }
                be::ERROR if reply.error.is_none() => {
                    reply.error = Some(backend::decode_error_fields(msg.body()).unwrap_or_default())
                }
                be::PARAMETER_STATUS => {
                    if let Ok((k, v)) = backend::decode_parameter_status(msg.body()) {
                        self.params.insert(k.to_string(), v.to_string());
                    }
                }
                be::READY_FOR_QUERY => {
                    reply.status = msg.body().first().copied().unwrap_or(status::IDLE);
                    return Ok(reply);
                }
                _ => {}
            }
        }
    }

    /// Runs `sql` as a simple query (see [`Self::round_trip`]).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Reply, ProxyError> {
        let mut out = BytesMut::new();
        crate::protocol::frontend::encode_query(&mut out, sql);
        self.round_trip(&out).await
    }

    /// The first column of the first row `sql` returns (`None` for no row
    /// or NULL); an error answer is a protocol error naming the node.
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, ProxyError> {
        let reply = self.simple_query(sql).await?;
        match reply.error {
            Some(e) => Err(self.protocol_error(format!("{sql}: {} ({})", e.message, e.code))),
            None => Ok(reply.value),
        }
    }

    /// Sends Sync and waits for its ReadyForQuery: ends an
    /// extended-protocol episode the client left open with a Flush.
    /// Returns the transaction status.
    pub async fn sync(&mut self) -> Result<u8, ProxyError> {
        Ok(self.round_trip(b"S\0\0\0\x04").await?.status)
    }

    /// Whether the connection looks usable without a round trip: no bytes
    /// pending and the peer has not closed it.
    pub fn looks_alive(&self) -> bool {
        let mut probe = [0u8; 1];
        match self.stream.tcp().try_read(&mut probe) {
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            Ok(_) => false, // EOF or unsolicited bytes: not idle
        }
    }
}

/// What the server answered to a proxy's own query.
#[derive(Debug, Default)]
pub struct Reply {
    /// First column of the first row, as text (`None`: no row, or NULL).
    pub value: Option<String>,
    /// The first ErrorResponse.
    pub error: Option<backend::ErrorFields>,
    /// Transaction status of the ReadyForQuery.
    pub status: u8,
}
