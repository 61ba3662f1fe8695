//! tokio-postgres clients through the proxy, with their asynchronous
//! messages (notices, notifications) collected on a channel.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Connection, NoTls};

use super::TestProxy;

/// A client and the task driving its connection.
pub struct Conn {
    pub client: Client,
    /// Notices and notifications, in arrival order.
    pub messages: mpsc::UnboundedReceiver<AsyncMessage>,
    pub task: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Conn {
    /// Drops the socket without a Terminate message, like a crashed client.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        drop(self.client);
    }

    /// The next asynchronous message, or `None` after `within`.
    pub async fn next_message(&mut self, within: Duration) -> Option<AsyncMessage> {
        tokio::time::timeout(within, self.messages.recv())
            .await
            .ok()
            .flatten()
    }
}

impl std::ops::Deref for Conn {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Polls the connection, forwarding its asynchronous messages.
pub fn drive<S, T>(
    mut connection: Connection<S, T>,
) -> (
    mpsc::UnboundedReceiver<AsyncMessage>,
    JoinHandle<Result<(), tokio_postgres::Error>>,
)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(m)) => {
                    let _ = tx.send(m);
                }
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    (rx, task)
}

/// Connects with a libpq-style string (no TLS), within 15 s.
pub async fn try_connect_str(conn_str: &str) -> Result<Conn, tokio_postgres::Error> {
    let (client, connection) = within(
        Duration::from_secs(15),
        "connecting through the proxy",
        tokio_postgres::connect(conn_str, NoTls),
    )
    .await?;
    let (messages, task) = drive(connection);
    Ok(Conn {
        client,
        messages,
        task,
    })
}

/// Connects as `user`/`password` to the app database.
pub async fn try_connect_as(
    proxy: &TestProxy,
    user: &str,
    password: &str,
) -> Result<Conn, tokio_postgres::Error> {
    try_connect_str(&proxy.conn_str(user, password)).await
}

/// Connects as app/app or panics.
pub async fn connect(proxy: &TestProxy) -> Conn {
    connect_as(proxy, "app", "app").await
}

/// Connects or panics with the error.
pub async fn connect_as(proxy: &TestProxy, user: &str, password: &str) -> Conn {
    try_connect_as(proxy, user, password)
        .await
        .unwrap_or_else(|e| panic!("connect as {user} through the proxy: {}", describe(&e)))
}

/// Awaits `f` or panics naming `what` after `d`.
pub async fn within<T>(d: Duration, what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(d, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {d:?}: {what}"),
    }
}

/// The SQLSTATE of a server (or proxy) error, if it is one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_owned())
}

/// The error with its SQLSTATE, message and hint, for assertion messages.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} {}: {} (hint: {:?})",
            db.severity(),
            db.code().code(),
            db.message(),
            db.hint()
        ),
        None => format!("{e:?}"),
    }
}

/// Asserts that `r` failed with `code`; returns the message.
pub fn expect_sqlstate<T: std::fmt::Debug>(
    r: Result<T, tokio_postgres::Error>,
    code: &str,
    what: &str,
) -> String {
    match r {
        Ok(v) => panic!("{what}: expected SQLSTATE {code}, got success {v:?}"),
        Err(e) => {
            assert_eq!(
                sqlstate(&e).as_deref(),
                Some(code),
                "{what}: wrong error: {}",
                describe(&e)
            );
            e.as_db_error().unwrap().message().to_owned()
        }
    }
}

/// The single text value of a simple query's first row.
pub async fn scalar(client: &Client, sql: &str) -> Option<String> {
    let msgs = within(Duration::from_secs(30), sql, client.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", describe(&e)));
    msgs.into_iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
        _ => None,
    })?
}

/// The rows of a console command (or any simple query), each as column →
/// value ("" for NULL); panics with the server's message on error.
pub async fn console_rows(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Vec<std::collections::HashMap<String, String>> {
    let msgs = super::within(std::time::Duration::from_secs(30), sql, c.simple_query(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", super::describe(&e)));
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_string(), r.get(i).unwrap_or("").to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}
