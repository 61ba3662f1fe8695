//! Why a check of a node failed.
//!
//! A slow check ([`ProbeError::is_slow`]) is missing evidence; every other
//! variant makes the node `Unreachable` for that round (see `state`). None
//! of them is ever fatal to the monitor. Errors are stored as text so a snapshot
//! and a log line can carry them (`tokio_postgres::Error` is not `Clone`).

use std::time::Duration;

use crate::observation::BadAnswer;

/// A failed check. All are on the server side of the monitor (the node or
/// the network), and retrying on the next round is always safe: the check
/// query reads only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    /// Connect plus query did not finish within `check_timeout`.
    #[error("no answer within check_timeout ({0:?})")]
    Timeout(Duration),
    /// The connection could not be opened.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// Earlier connects failed; the next attempt is not due yet.
    #[error("reconnecting after {failures} failed attempt(s), next in {wait:?}: {last}")]
    Backoff {
        failures: u32,
        wait: Duration,
        last: String,
    },
    /// The connection was up but the query failed.
    #[error("check query failed: {0}")]
    Query(String),
    /// The connection broke during the check (the node closed it, or died).
    #[error("connection lost: {0}")]
    Broken(String),
    /// The node answered something unusable.
    #[error(transparent)]
    BadAnswer(#[from] BadAnswer),
    /// The node's check task is gone or still busy with an earlier check.
    #[error("check task unavailable: {0}")]
    Task(&'static str),
    /// The check was slow and the proxy's own traffic to the node made no
    /// progress either (or a connection to it failed) meanwhile.
    #[error("no answer for {0:?} while lagrouter's client traffic to the node was stuck too")]
    Stalled(Duration),
    /// The check was slow while the node kept answering the proxy's own
    /// traffic: the node serves, its check is what is slow (a lock, a
    /// stalled disk). A miss, with a longer limit (see `state`).
    #[error("no answer for {0:?} while the node kept answering lagrouter's clients")]
    Serving(Duration),
}

impl ProbeError {
    /// Short label for the `reason` of `lagrouter_health_check_failures_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProbeError::Timeout(_) | ProbeError::Stalled(_) | ProbeError::Serving(_) => "timeout",
            ProbeError::Connect(_) | ProbeError::Backoff { .. } | ProbeError::Broken(_) => {
                "connect"
            }
            ProbeError::Query(_) => "query",
            ProbeError::BadAnswer(_) => "bad_answer",
            ProbeError::Task(_) => "internal",
        }
    }
}

impl ProbeError {
    /// The node may be fine but did not answer in time: the check timed out
    /// or its task was still busy with an earlier, slow one.
    pub fn is_slow(&self) -> bool {
        matches!(
            self,
            ProbeError::Timeout(_)
                | ProbeError::Serving(_)
                | ProbeError::Task("still busy with earlier checks" | "no answer by the deadline")
        )
    }

    /// Why a failed check takes the node down.
    pub fn cause(&self) -> crate::Cause {
        use crate::Cause;
        match self {
            ProbeError::Timeout(_) | ProbeError::Serving(_) => Cause::Timeout,
            ProbeError::Stalled(_) => Cause::Stalled,
            ProbeError::Connect(_) | ProbeError::Backoff { .. } | ProbeError::Broken(_) => {
                Cause::Refused
            }
            ProbeError::Query(_) | ProbeError::BadAnswer(_) | ProbeError::Task(_) => Cause::Error,
        }
    }
}

/// `tokio_postgres::Error`'s `Display` hides the server's message behind
/// "db error" and the IO error behind "error connecting to server"; this
/// shows them (with the SQLSTATE).
pub fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    match e.as_db_error() {
        Some(db) => format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        ),
        None => {
            let mut msg = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cause = c.source();
            }
            msg
        }
    }
}
