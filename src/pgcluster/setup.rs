//! Finding the binaries, the OS user, free ports, and writing the
//! configuration files of a node.

use std::ffi::CString;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::error::{ClusterError, ClusterErrorKind};

/// Environment variable that overrides where the PostgreSQL binaries are.
pub(crate) const BINDIR_ENV: &str = "LAGROUTER_PG_BINDIR";
/// Where Debian and Ubuntu install PostgreSQL 15.
const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";
/// The OS user that runs the servers when we are root (initdb refuses root).
const PG_OS_USER: &str = "postgres";
/// Binaries the cluster cannot start without.
const REQUIRED_BINARIES: [&str; 4] = ["initdb", "postgres", "pg_basebackup", "psql"];

/// The replication role pg_basebackup and the standbys log in as.
pub(crate) const REPL_USER: &str = "repl";
pub(crate) const REPL_PASSWORD: &str = "repl";

/// Finds the PostgreSQL binaries: `$LAGROUTER_PG_BINDIR`, else
/// `pg_config --bindir`, else the Debian location of version 15.
pub(crate) fn find_bindir() -> Result<PathBuf, ClusterError> {
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::var_os(BINDIR_ENV) {
        candidates.push(PathBuf::from(dir));
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !dir.is_empty() {
            candidates.push(PathBuf::from(dir));
        }
    }
    candidates.push(PathBuf::from(DEFAULT_BINDIR));
    for dir in &candidates {
        if REQUIRED_BINARIES.iter().all(|b| dir.join(b).is_file()) {
            return Ok(dir.clone());
        }
    }
    let tried: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    Err(ClusterError::new(
        ClusterErrorKind::Setup,
        format!(
            "PostgreSQL server binaries ({}) not found (looked in: {}); install them with \
             `apt-get install postgresql-15` (Debian/Ubuntu) or point {BINDIR_ENV} at their directory",
            REQUIRED_BINARIES.join(", "),
            tried.join(", ")
        ),
    ))
}

/// The uid and gid the servers run as when we are root.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OsUser {
    pub uid: u32,
    pub gid: u32,
}

/// `Some(postgres user)` when running as root, `None` (run as ourselves)
/// otherwise.
pub(crate) fn server_os_user() -> Result<Option<OsUser>, ClusterError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new(PG_OS_USER).expect("no NUL in a literal");
    // SAFETY: getpwnam returns null or a pointer to a static passwd record
    // that stays valid until the next getpw* call; we copy the two ids out
    // at once. Only the harness calls it, during start-up.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return Err(ClusterError::new(
            ClusterErrorKind::Setup,
            format!(
                "running as root, and initdb refuses root, but there is no `{PG_OS_USER}` OS \
                 user to run the servers as; create it (`useradd --system {PG_OS_USER}`, or \
                 install the postgresql package) or run as a non-root user"
            ),
        ));
    }
    // SAFETY: pw is non-null and points to a valid passwd record.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some(OsUser { uid, gid }))
}

/// Gives `path` to the server user (no-op when not root).
pub(crate) fn chown(path: &Path, user: Option<OsUser>) -> Result<(), ClusterError> {
    let Some(user) = user else { return Ok(()) };
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ClusterError::new(ClusterErrorKind::Usage, "path contains a NUL byte"))?;
    // SAFETY: c is a valid NUL-terminated path.
    if unsafe { libc::chown(c.as_ptr(), user.uid, user.gid) } != 0 {
        return Err(ClusterError::io(
            format!("cannot chown {} to {PG_OS_USER}", path.display()),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// A loopback port that was free a moment ago. Another process may take it
/// before the server binds; the caller retries with a new one then.
pub(crate) fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| ClusterError::io("cannot find a free port on 127.0.0.1", e))?;
    let port = listener
        .local_addr()
        .map_err(|e| ClusterError::io("cannot find a free port on 127.0.0.1", e))?
        .port();
    Ok(port)
}

/// A string literal for postgresql.conf or SQL.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A quoted SQL identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A value for a libpq `key=value` connection string.
pub(crate) fn conninfo_value(s: &str) -> String {
    if !s.is_empty() && !s.contains([' ', '\'', '\\', '=']) {
        return s.to_owned();
    }
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Settings shared by every node (`lagrouter.conf`, copied to the replicas
/// by pg_basebackup along with the include lines in postgresql.conf).
pub(crate) fn shared_conf(run_dir: &Path, replicas: usize, extra: &[String]) -> String {
    // Room for every replica plus a few concurrent pg_basebackups.
    let senders = (replicas + 4).max(10);
    let mut conf = format!(
        "# Written by lagrouter's pgcluster harness; settings for tests, not production.\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = {run}\n\
         fsync = off\n\
         full_page_writes = off\n\
         shared_buffers = 64MB\n\
         max_connections = 300\n\
         max_prepared_transactions = 0\n\
         wal_level = replica\n\
         max_wal_senders = {senders}\n\
         max_replication_slots = {senders}\n\
         wal_keep_size = 256MB\n\
         hot_standby = on\n\
         hot_standby_feedback = on\n\
         wal_receiver_status_interval = 1s\n\
         password_encryption = 'scram-sha-256'\n\
         logging_collector = off\n\
         log_line_prefix = '%m [%p] %q%u@%d '\n\
         lc_messages = 'C'\n",
        run = quote_literal(&run_dir.to_string_lossy()),
    );
    if !extra.is_empty() {
        conf.push_str("# ClusterOptions::extra_conf\n");
        for line in extra {
            conf.push_str(line);
            conf.push('\n');
        }
    }
    conf
}

/// Settings that differ per node (`node.conf`).
pub(crate) fn node_conf(name: &str, port: u16) -> String {
    format!(
        "# Written by lagrouter's pgcluster harness.\nport = {port}\ncluster_name = {}\n",
        quote_literal(name)
    )
}

/// Client authentication: trust on the socket (the harness's superuser
/// access), passwords over TCP. `md5` accepts SCRAM-stored passwords through
/// SCRAM and md5-stored ones through md5, so both client paths get tested.
pub(crate) fn hba_conf(first: &[String]) -> String {
    let first: String = first.iter().map(|l| format!("{l}\n")).collect();
    format!(
        "# Written by lagrouter's pgcluster harness.\n\
         {first}\
         local   all           all                         trust\n\
         local   replication   all                         trust\n\
         host    replication   {REPL_USER:<12}  127.0.0.1/32    md5\n\
         host    all           all           127.0.0.1/32    md5\n"
    )
}

/// Writes `contents` to `path` and hands it to the server user.
pub(crate) fn write_file(
    path: &Path,
    contents: &str,
    user: Option<OsUser>,
) -> Result<(), ClusterError> {
    fs::write(path, contents)
        .map_err(|e| ClusterError::io(format!("cannot write {}", path.display()), e))?;
    chown(path, user)
}

/// Makes postgresql.conf read our two files (later lines win, and
/// postgresql.auto.conf, where ALTER SYSTEM writes, wins over both).
pub(crate) fn include_our_conf(data: &Path) -> Result<(), ClusterError> {
    let path = data.join("postgresql.conf");
    let mut conf = fs::read_to_string(&path)
        .map_err(|e| ClusterError::io(format!("cannot read {}", path.display()), e))?;
    conf.push_str("\ninclude_if_exists = 'lagrouter.conf'\ninclude_if_exists = 'node.conf'\n");
    fs::write(&path, conf)
        .map_err(|e| ClusterError::io(format!("cannot write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(conninfo_value("app"), "app");
        assert_eq!(conninfo_value("a b'c"), "'a b\\'c'");
        assert_eq!(conninfo_value(""), "''");
    }

    #[test]
    fn shared_conf_puts_extra_lines_last() {
        let conf = shared_conf(Path::new("/tmp/x/run"), 2, &["fsync = on".to_owned()]);
        assert!(conf.contains("unix_socket_directories = '/tmp/x/run'"));
        assert!(conf.trim_end().ends_with("fsync = on"));
    }
}
