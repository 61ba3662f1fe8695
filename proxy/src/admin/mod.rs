//! The admin console: what a client gets when it connects to
//! `[server] admin_database`, in the style of PgBouncer's. It speaks the
//! simple query protocol only (psql, `simple_query`); commands are listed
//! by `SHOW HELP`.
//!
//! Layout:
//! - `commands`: parsing (pure).
//! - `views`: the `SHOW` tables; `settings`: `SHOW CONFIG`'s rows.
//! - `registry`: connected clients and routing counters the sessions
//!   record for the console.

pub mod commands;
pub mod registry;
pub mod settings;
pub mod views;

use std::sync::Arc;

use bytes::BytesMut;
use lagrouter_health::PrimaryStatus;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use self::commands::{Command, split_statements};
use self::registry::ClientEntry;
use crate::auth::UserAuth;
use crate::error::ClientError;
use crate::listener::Shared;
use crate::protocol::backend::{self, Severity};
use crate::protocol::{frontend, split_frame};

/// Largest message the console accepts: commands are short, and a bound
/// keeps a misbehaving client from making the proxy buffer a gigabyte.
pub const ADMIN_MESSAGE_LIMIT: usize = 64 * 1024;

/// Serialises DRAIN/UNDRAIN's read-modify-write of the drained list, so two
/// consoles changing it at once cannot lose one change.
static DRAIN_EDIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Serves an authenticated client that asked for the admin database: the
/// client has AuthenticationOk; this sends the rest of the welcome (or
/// refuses a non-admin user) and answers commands until it leaves.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    shared: Arc<Shared>,
    mut client: S,
    mut buf: BytesMut,
    user: Arc<UserAuth>,
    entry: ClientEntry,
) {
    let mut out = BytesMut::new();
    if !user.admin {
        tracing::info!(user = %user.name, "admin console refused: not an admin user");
        backend::error_response(
            &mut out,
            Severity::Fatal,
            "42501",
            "permission denied for the admin console",
            Some("Set admin = true for this user in [[users]], or connect to another database."),
        );
        let _ = client.write_all(&out).await;
        let _ = client.shutdown().await;
        return;
    }
    for (k, v) in [
        ("server_version", "15.0 (lagrouter)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ] {
        backend::parameter_status(&mut out, k, v);
    }
    // No cancel key leads anywhere: console commands are instant.
    backend::backend_key(&mut out, rand::random::<i32>() & i32::MAX, rand::random());
    backend::ready_for_query(&mut out, b'I');
    // After an extended-protocol message: skip to Sync, as PostgreSQL does.
    let mut skipping = false;
    loop {
        if !out.is_empty() {
            if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
                return;
            }
            out.clear();
        }
        let frame = match split_frame(&mut buf, ADMIN_MESSAGE_LIMIT) {
            Ok(Some(f)) => f,
            Ok(None) => {
                let read = tokio::select! {
                    _ = entry.stopping() => {
                        fatal(&mut client, &mut out, "57P01", "lagrouter is shutting down").await;
                        return;
                    }
                    r = client.read_buf(&mut buf) => r,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            Err(e) => {
                let msg = format!("invalid message for the admin console: {e}");
                fatal(&mut client, &mut out, "08P01", &msg).await;
                return;
            }
        };
        match frame.tag {
            b'Q' => {
                match frontend::decode_query(frame.body()) {
                    Ok(text) => run_text(&shared, &mut out, text),
                    Err(e) => error(
                        &mut out,
                        ClientError::hinted("08P01", format!("malformed query message: {e}"), None),
                    ),
                }
                backend::ready_for_query(&mut out, b'I');
            }
            b'X' => return,
            b'S' => {
                skipping = false;
                backend::ready_for_query(&mut out, b'I');
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => {
                if !skipping {
                    skipping = true;
                    error(&mut out, extended_refusal());
                }
            }
            b'F' => {
                error(&mut out, extended_refusal());
                backend::ready_for_query(&mut out, b'I');
            }
            // Stray CopyData/CopyDone/CopyFail: nothing is copying.
            b'd' | b'c' | b'f' => {}
            t => {
                let msg = format!("invalid frontend message type {t}");
                fatal(&mut client, &mut out, "08P01", &msg).await;
                return;
            }
        }
    }
}

fn extended_refusal() -> ClientError {
    ClientError::hinted(
        "0A000",
        "the admin console speaks only the simple query protocol",
        Some("Use psql, or your driver's simple query mode (e.g. simple_query)."),
    )
}

/// Runs every command of a query text; the first failure ends the text,
/// like an error in a multi-statement query does in PostgreSQL.
fn run_text(shared: &Shared, out: &mut BytesMut, text: &str) {
    let stmts = split_statements(text);
    if stmts.is_empty() {
        backend::empty(out, b'I');
        return;
    }
    for stmt in stmts {
        let done = commands::parse(stmt)
            .map_err(|e| ClientError::hinted("42601", e.message, Some(&e.hint)))
            .and_then(|cmd| execute(shared, out, cmd));
        if let Err(f) = done {
            error(out, f);
            return;
        }
    }
}

fn execute(shared: &Shared, out: &mut BytesMut, cmd: Command) -> Result<(), ClientError> {
    match cmd {
        Command::Show(what) => {
            let t = views::show(shared, what);
            backend::row_description(out, &t.columns);
            for row in &t.rows {
                let values: Vec<Option<&str>> = row.iter().map(|v| v.as_deref()).collect();
                backend::data_row(out, &values);
            }
            backend::command_complete(out, &format!("SHOW {}", t.rows.len()));
        }
        Command::Reload => {
            shared.reload().map_err(|e| {
                let hint = match e {
                    crate::reload::ReloadError::NoFile => None,
                    crate::reload::ReloadError::Config(_) => Some(
                        "The running configuration is unchanged; SHOW RELOAD repeats this error.",
                    ),
                };
                ClientError::hinted("F0000", format!("reload failed: {e}"), hint)
            })?;
            backend::command_complete(out, "RELOAD");
        }
        Command::Drain(name) => {
            check_drainable(shared, &name)?;
            let _edit = DRAIN_EDIT.lock().unwrap_or_else(|p| p.into_inner());
            let mut drained = shared.router.drained();
            if !drained.contains(&name) {
                drained.push(name.clone());
                shared.router.set_drained(drained);
            }
            tracing::info!(node = %name, "drained from the admin console");
            backend::command_complete(out, "DRAIN");
        }
        Command::Undrain(name) => {
            let _edit = DRAIN_EDIT.lock().unwrap_or_else(|p| p.into_inner());
            let mut drained = shared.router.drained();
            if !drained.contains(&name) && !node_exists(shared, &name) {
                return Err(unknown_node(shared, &name));
            }
            drained.retain(|n| n != &name);
            shared.router.set_drained(drained);
            tracing::info!(node = %name, "undrained from the admin console");
            backend::command_complete(out, "UNDRAIN");
        }
    }
    Ok(())
}

/// A node may be drained if it exists and is not taking writes: draining
/// only withholds reads, so draining the primary would promise what it
/// cannot keep.
fn check_drainable(shared: &Shared, name: &str) -> Result<(), ClientError> {
    if !node_exists(shared, name) {
        return Err(unknown_node(shared, name));
    }
    let snap = shared.router.health();
    let primaries: Vec<usize> = match &snap.primary {
        PrimaryStatus::One(i) => vec![*i],
        PrimaryStatus::SplitBrain(ix) => ix.clone(),
        PrimaryStatus::None => Vec::new(),
    };
    if primaries
        .iter()
        .any(|i| snap.nodes.get(*i).is_some_and(|n| n.name == name))
    {
        return Err(ClientError::hinted(
            "55000",
            format!("cannot drain node \"{name}\": it is the primary, and writes must go to it"),
            Some("DRAIN stops reads to a replica. To take the primary out, fail over first."),
        ));
    }
    Ok(())
}

fn node_exists(shared: &Shared, name: &str) -> bool {
    shared.nodes.load().iter().any(|n| &*n.name == name)
}

fn unknown_node(shared: &Shared, name: &str) -> ClientError {
    let names: Vec<String> = shared
        .nodes
        .load()
        .iter()
        .map(|n| n.name.to_string())
        .collect();
    ClientError::hinted(
        "42704",
        format!("no node named \"{name}\""),
        Some(&format!("Configured nodes: {}.", names.join(", "))),
    )
}

fn error(out: &mut BytesMut, f: ClientError) {
    backend::error_response(out, Severity::Error, &f.code, &f.message, f.hint.as_deref());
}

async fn fatal<S: AsyncWrite + Unpin>(client: &mut S, out: &mut BytesMut, code: &str, msg: &str) {
    backend::error_response(out, Severity::Fatal, code, msg, None);
    let _ = client.write_all(out).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}
