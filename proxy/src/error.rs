//! Errors the proxy reports to clients. Each has a SQLSTATE, a message that
//! says what happened (naming the node or pool), and a hint.

/// A proxy-side failure.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// A node could not be reached or the connection dropped.
    #[error("lagrouter: cannot reach node \"{node}\" at {addr}: {detail}")]
    NodeConnect {
        node: String,
        addr: String,
        detail: String,
    },
    /// A node refused the proxy's login.
    #[error("lagrouter: node \"{node}\" refused the login: {detail}")]
    NodeAuth {
        node: String,
        code: String,
        detail: String,
    },
    /// A node broke the protocol.
    #[error("lagrouter: protocol error from node \"{node}\": {detail}")]
    NodeProtocol { node: String, detail: String },
    /// No server connection became free in time.
    #[error(
        "lagrouter: no server connection in pool \"{pool}\" within {timeout_ms} ms (pool size {size})"
    )]
    CheckoutTimeout {
        pool: String,
        timeout_ms: u128,
        size: usize,
    },
    /// Too many clients already wait on the pool.
    #[error("lagrouter: too many clients waiting for pool \"{pool}\" (limit {limit})")]
    TooManyWaiters { pool: String, limit: usize },
    /// Routing refused the transaction.
    #[error("{0}")]
    Route(#[from] lagrouter_routing::RouteError),
    /// The client holds too many named prepared statements.
    #[error("lagrouter: too many prepared statements in this session (limit {0})")]
    TooManyStatements(usize),
    /// The client broke the protocol.
    #[error("lagrouter: invalid message from client: {0}")]
    ClientProtocol(String),
    /// A client message longer than its type may be.
    #[error(
        "lagrouter: message of type '{tag}' is {len} bytes long, over the limit of {limit} bytes for it"
    )]
    MessageTooLarge { tag: char, len: usize, limit: usize },
    /// A statement in a transaction that failed before it reached a server
    /// (its first statement found none): the server's own message and code.
    #[error("current transaction is aborted, commands ignored until end of transaction block")]
    FailedTransaction,
}

impl ProxyError {
    /// SQLSTATE for the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            ProxyError::NodeConnect { .. } => "08006",
            ProxyError::NodeAuth { code, .. } => code,
            ProxyError::NodeProtocol { .. } | ProxyError::ClientProtocol(_) => "08P01",
            ProxyError::CheckoutTimeout { .. } | ProxyError::TooManyWaiters { .. } => "53300",
            ProxyError::Route(e) => e.sqlstate(),
            ProxyError::TooManyStatements(_) | ProxyError::MessageTooLarge { .. } => "54000",
            ProxyError::FailedTransaction => "25P02",
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<&str> {
        Some(match self {
            ProxyError::NodeConnect { .. } => {
                "Check that the node is running; SHOW NODES in the admin console shows its state."
            }
            ProxyError::NodeAuth { .. } => {
                "Check [[users]] password/server_password against the node's pg_hba.conf and roles."
            }
            ProxyError::NodeProtocol { .. } => {
                "The server connection was closed; retry the transaction."
            }
            ProxyError::CheckoutTimeout { .. } | ProxyError::TooManyWaiters { .. } => {
                "Raise [pool] size or checkout_timeout, or shorten transactions."
            }
            ProxyError::Route(e) => e.hint(),
            ProxyError::TooManyStatements(_) => {
                "Close (DEALLOCATE) statements that are no longer needed."
            }
            ProxyError::MessageTooLarge { .. } => {
                "Query, Parse, Bind, CopyData and FunctionCall may be up to [server] max_message_size; other messages up to 10000 bytes."
            }
            ProxyError::ClientProtocol(_) | ProxyError::FailedTransaction => return None,
        })
    }
}

/// What a client is told in an ErrorResponse: a refused login (FATAL), a
/// failed admin command (ERROR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: String,
    pub message: String,
    pub hint: Option<String>,
}

impl ClientError {
    pub fn new(code: &str, message: impl Into<String>) -> ClientError {
        ClientError {
            code: code.to_string(),
            message: message.into(),
            hint: None,
        }
    }

    pub fn hinted(code: &str, message: impl Into<String>, hint: Option<&str>) -> ClientError {
        ClientError::new(code, message).with_hint(hint)
    }

    pub fn with_hint(mut self, hint: Option<&str>) -> ClientError {
        self.hint = hint.map(str::to_string);
        self
    }
}

impl From<ProxyError> for ClientError {
    fn from(e: ProxyError) -> Self {
        ClientError::new(e.sqlstate(), e.to_string()).with_hint(e.hint())
    }
}
