//! Building a cluster: the directory, initdb, roles, base backups, and the
//! wait for streaming.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use super::setup::{self, REPL_PASSWORD, REPL_USER, quote_ident, quote_literal};
use super::{
    Cluster, ClusterError, ClusterErrorKind, ClusterOptions, HOST, MAX_SOCKET_PATH, MD5_PASSWORD,
    MD5_USER, POLL, STREAM_TIMEOUT, SUPERUSER, TOOL_TIMEOUT,
};

impl Cluster {
    pub(super) fn build(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        for sub in [&self.run_dir, &self.dir.join("log")] {
            make_dir(sub, 0o755)?;
            setup::chown(sub, self.os_user)?;
        }
        self.init_primary(opts)?;
        self.launch(0, true)?;
        self.create_roles()?;
        let replicas: Vec<usize> = (1..self.nodes.len()).collect();
        thread::scope(|s| {
            let backups: Vec<_> = replicas
                .iter()
                .map(|&i| s.spawn(move || self.base_backup(i)))
                .collect();
            backups
                .into_iter()
                .map(|h| h.join().expect("base backup thread panicked"))
                .collect::<Result<Vec<()>, _>>()
        })?;
        for &i in &replicas {
            self.launch(i, true)?;
        }
        self.wait_streaming()?;
        self.wait_caught_up(STREAM_TIMEOUT)
    }

    fn init_primary(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        let node = &self.nodes[0];
        make_dir(&node.data, 0o700)?;
        setup::chown(&node.data, self.os_user)?;
        let mut cmd = self.command("initdb", true);
        cmd.arg("-D")
            .arg(&node.data)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--auth-local=trust", "--auth-host=md5", "--no-sync"])
            .arg("--no-instructions");
        self.run(0, "initdb", cmd, None, TOOL_TIMEOUT)?;
        let replicas = self.nodes.len() - 1;
        let shared = setup::shared_conf(&self.run_dir, replicas, &opts.extra_conf);
        setup::write_file(&node.data.join("lagrouter.conf"), &shared, self.os_user)?;
        setup::write_file(
            &node.data.join("pg_hba.conf"),
            &setup::hba_conf(&opts.hba_first),
            self.os_user,
        )?;
        for (name, contents) in &opts.data_files {
            let path = node.data.join(name);
            setup::write_file(&path, contents, self.os_user)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| ClusterError::io(format!("cannot chmod {}", path.display()), e))?;
        }
        setup::include_our_conf(&node.data)?;
        self.assign_port(0)
    }

    /// Gives node `i` a fresh free port and writes its node.conf.
    pub(super) fn assign_port(&self, i: usize) -> Result<(), ClusterError> {
        let node = &self.nodes[i];
        let port = setup::free_port()?;
        node.port.store(port, Ordering::Relaxed);
        let conf = setup::node_conf(&node.name, port);
        setup::write_file(&node.data.join("node.conf"), &conf, self.os_user)
    }

    fn create_roles(&self) -> Result<(), ClusterError> {
        let app = quote_ident(&self.app_user);
        let db = quote_ident(&self.database);
        let md5 = quote_ident(MD5_USER);
        let roles = format!(
            "SET client_min_messages = warning;\n\
             CREATE ROLE {app} LOGIN PASSWORD {app_pw};\n\
             GRANT pg_monitor TO {app};\n\
             CREATE ROLE {repl} LOGIN REPLICATION PASSWORD {repl_pw};\n\
             CREATE DATABASE {db} OWNER {app};\n\
             GRANT CREATE, CONNECT, TEMPORARY ON DATABASE {db} TO {app};\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {md5} LOGIN PASSWORD {md5_pw};\n\
             GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {md5};\n",
            app_pw = quote_literal(&self.app_password),
            repl = quote_ident(REPL_USER),
            repl_pw = quote_literal(REPL_PASSWORD),
            md5_pw = quote_literal(MD5_PASSWORD),
        );
        self.psql(0, "postgres", &roles)?;
        // The md5 role may use whatever the app role creates.
        let grants = format!(
            "GRANT USAGE, CREATE ON SCHEMA public TO {md5};\n\
             ALTER DEFAULT PRIVILEGES FOR ROLE {app} IN SCHEMA public GRANT ALL ON TABLES TO {md5};\n\
             ALTER DEFAULT PRIVILEGES FOR ROLE {app} IN SCHEMA public GRANT ALL ON SEQUENCES TO {md5};\n"
        );
        self.psql(0, &self.database, &grants).map(drop)
    }

    /// Copies the primary into replica `i` with its own replication slot and
    /// standby configuration (-R), and gives it a port.
    fn base_backup(&self, i: usize) -> Result<(), ClusterError> {
        let node = &self.nodes[i];
        make_dir(&node.data, 0o700)?;
        setup::chown(&node.data, self.os_user)?;
        let conninfo = format!(
            "host={HOST} port={} user={REPL_USER} password={REPL_PASSWORD} application_name={}",
            self.port(0),
            node.name
        );
        let mut cmd = self.command("pg_basebackup", true);
        cmd.arg("-D")
            .arg(&node.data)
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .args(["-C", "-S", &node.name, "-d", &conninfo]);
        self.run(i, "pg_basebackup", cmd, None, TOOL_TIMEOUT)
            .map_err(|e| e.with_log(&self.nodes[0].log))?;
        self.assign_port(i)
    }

    fn wait_streaming(&self) -> Result<(), ClusterError> {
        let expected: Vec<&str> = self.nodes[1..].iter().map(|n| n.name.as_str()).collect();
        if expected.is_empty() {
            return Ok(());
        }
        let query = "select coalesce(string_agg(application_name, ','), '') \
                     from pg_stat_replication where state = 'streaming'";
        let deadline = Instant::now() + STREAM_TIMEOUT;
        loop {
            let streaming = self.psql(0, "postgres", query)?;
            let streaming: Vec<&str> = streaming.split(',').collect();
            let Some(missing) = expected.iter().position(|n| !streaming.contains(n)) else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(self.node_error(
                    missing + 1,
                    ClusterErrorKind::Timeout,
                    format!("not streaming from the primary after {STREAM_TIMEOUT:?}"),
                ));
            }
            thread::sleep(POLL);
        }
    }
}

/// Creates the cluster directory. Returns it (absolute) and the paths that
/// are ours to delete.
pub(super) fn prepare_base_dir(
    base: Option<&Path>,
    replicas: usize,
) -> Result<(PathBuf, Vec<PathBuf>), ClusterError> {
    let (dir, created) = match base {
        Some(base) => {
            let dir = std::path::absolute(base)
                .map_err(|e| ClusterError::io(format!("bad base_dir {}", base.display()), e))?;
            let created = !dir.exists();
            fs::create_dir_all(&dir)
                .map_err(|e| ClusterError::io(format!("cannot create {}", dir.display()), e))?;
            if dir.join("primary").exists() {
                return Err(ClusterError::new(
                    ClusterErrorKind::Usage,
                    format!(
                        "{} already holds a cluster; give a fresh base_dir",
                        dir.display()
                    ),
                ));
            }
            (dir, created)
        }
        None => (fresh_temp_dir()?, true),
    };
    if created {
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| ClusterError::io(format!("cannot chmod {}", dir.display()), e))?;
    }
    let socket_len = dir.join("run/.s.PGSQL.65535").as_os_str().len();
    if socket_len > MAX_SOCKET_PATH {
        if created {
            let _ = fs::remove_dir_all(&dir);
        }
        return Err(ClusterError::new(
            ClusterErrorKind::Usage,
            format!(
                "{} is too long for a unix socket path; use a shorter base_dir or TMPDIR",
                dir.display()
            ),
        ));
    }
    let owned = if created {
        vec![dir.clone()]
    } else {
        let mut owned: Vec<PathBuf> = ["primary", "run", "log"]
            .iter()
            .map(|p| dir.join(p))
            .collect();
        owned.extend((1..=replicas).map(|i| dir.join(format!("replica{i}"))));
        owned
    };
    Ok((dir, owned))
}

fn fresh_temp_dir() -> Result<PathBuf, ClusterError> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let tmp = std::path::absolute(std::env::temp_dir())
        .map_err(|e| ClusterError::io("bad temporary directory", e))?;
    loop {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = tmp.join(format!("lagrouter-pg-{}-{seq}", std::process::id()));
        match fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => return Ok(dir),
            // Left over by a killed process whose pid has been reused.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(ClusterError::io(
                    format!("cannot create {}", dir.display()),
                    e,
                ));
            }
        }
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), ClusterError> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| ClusterError::io(format!("cannot create {}", path.display()), e))
}
