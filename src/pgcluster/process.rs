//! Child processes that cannot outlive us.
//!
//! Every process the harness starts is forked by one long-lived *keeper*
//! thread and asks the kernel (`PR_SET_PDEATHSIG`) for a signal when its
//! parent dies. The parent-death signal fires when the *thread* that forked
//! the child exits, not the process, which is why a dedicated thread that
//! lives as long as the process does the forking: a test thread that spawned
//! a server and then finished would otherwise take the server down with it.
//! When the process dies, however it dies (even SIGKILL), every server gets
//! SIGQUIT (immediate shutdown) and every tool SIGKILL.
//!
//! Files are handled by a [`Janitor`]: a tiny `sh` that waits for EOF on a
//! pipe only we hold and then removes the cluster's paths. The kernel closes
//! the pipe when we exit, however we exit.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Longest sleep between two polls of a child's status.
const MAX_POLL: Duration = Duration::from_millis(20);

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// The keeper thread's request queue. The sender lives in a static, so the
/// thread's `recv` loop never ends and the thread lives as long as the
/// process.
static KEEPER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();

fn keeper() -> &'static mpsc::Sender<SpawnRequest> {
    KEEPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("pgcluster-keeper".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // The requester may have given up; nothing to do then
                    // (the child, if any, is dropped and reaped by nobody,
                    // but dies with us).
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("pgcluster: cannot start the process keeper thread");
        tx
    })
}

/// Spawns `cmd` from the keeper thread; the child receives `death_signal`
/// when this process dies.
pub(crate) fn spawn_bound(mut cmd: Command, death_signal: libc::c_int) -> io::Result<Child> {
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls; it allocates nothing (the error is a
    // raw OS error).
    unsafe {
        cmd.pre_exec(move || {
            // std runs this after setuid/setgid, which matters: changing
            // credentials clears the parent-death signal.
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                death_signal as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // We died between fork and prctl: the signal will never come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    keeper()
        .send((cmd, tx))
        .map_err(|_| io::Error::other("pgcluster keeper thread is gone"))?;
    rx.recv()
        .map_err(|_| io::Error::other("pgcluster keeper thread is gone"))?
}

/// How a short-lived tool run ended.
pub(crate) enum ToolError {
    Spawn(io::Error),
    Timeout,
}

/// What a tool printed, and how it exited.
pub(crate) struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a tool (psql, initdb, ...) to completion, feeding it `input`, and
/// kills it if it takes longer than `timeout`.
pub(crate) fn run_tool(
    mut cmd: Command,
    input: Option<&str>,
    timeout: Duration,
) -> Result<ToolOutput, ToolError> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own group, so that a timeout kills its children too (they would
    // hold the output pipes open).
    .process_group(0);
    let mut child = spawn_bound(cmd, libc::SIGKILL).map_err(ToolError::Spawn)?;
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    thread::scope(|s| {
        s.spawn(move || {
            if let (Some(mut pipe), Some(text)) = (stdin, input) {
                // A tool that exits early closes the pipe; its status says why.
                let _ = pipe.write_all(text.as_bytes());
            }
        });
        let out = s.spawn(move || read_all(stdout));
        let err = s.spawn(move || read_all(stderr));
        let status = wait_until(&mut child, Instant::now() + timeout);
        let status = match status {
            Ok(Some(status)) => status,
            Ok(None) => {
                kill_group(&mut child);
                return Err(ToolError::Timeout);
            }
            Err(e) => {
                kill_group(&mut child);
                return Err(ToolError::Spawn(e));
            }
        };
        Ok(ToolOutput {
            status,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        })
    })
}

/// Kills a tool and everything in its process group, and reaps it.
fn kill_group(child: &mut Child) {
    // SAFETY: kill has no memory-safety preconditions; the group is led by
    // our unreaped child, so its id cannot have been recycled.
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL);
    }
    let _ = child.wait();
}

fn read_all(pipe: Option<impl Read>) -> String {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Polls `child` until it exits (`Some`) or `deadline` passes (`None`).
pub(crate) fn wait_until(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Sends `signal` to a child that has not been reaped yet.
pub(crate) fn signal(child: &mut Child, signal: libc::c_int) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: kill has no memory-safety preconditions; the pid belongs to
        // our unreaped child, so it cannot have been recycled.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }
}

/// Stops several servers at once: `first` to all, then, for whoever is still
/// running after `grace`, SIGQUIT (immediate shutdown), then SIGKILL. Every
/// child is reaped before this returns.
pub(crate) fn stop_all(children: &mut [&mut Child], first: libc::c_int, grace: Duration) {
    let steps = [
        (first, grace),
        (libc::SIGQUIT, Duration::from_secs(5)),
        (libc::SIGKILL, Duration::from_secs(5)),
    ];
    for (sig, wait) in steps {
        for child in children.iter_mut() {
            signal(child, sig);
        }
        let deadline = Instant::now() + wait;
        let mut all_gone = true;
        for child in children.iter_mut() {
            if !matches!(wait_until(child, deadline), Ok(Some(_))) {
                all_gone = false;
            }
        }
        if all_gone {
            return;
        }
    }
}

/// A child process that cannot outlive this one: spawned from the keeper
/// thread with a parent-death signal, and stopped when dropped (SIGTERM,
/// then SIGQUIT and SIGKILL, see [`stop_all`]), so an error return or a
/// panic never leaves a proxy or a pgbench behind. For the tests' and
/// benches' own processes: proxies, pgbench, PgBouncer.
#[derive(Debug)]
pub struct Guarded {
    child: Child,
}

impl Guarded {
    /// Starts `cmd`; it gets `death_signal` if this process dies first.
    pub fn spawn(cmd: Command, death_signal: libc::c_int) -> io::Result<Guarded> {
        Ok(Guarded {
            child: spawn_bound(cmd, death_signal)?,
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits at most `limit` for it to exit; on expiry stops it and
    /// returns `None`.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        match wait_until(&mut self.child, Instant::now() + limit) {
            Ok(Some(status)) => Some(status),
            _ => {
                self.stop();
                None
            }
        }
    }

    /// SIGTERM (a proxy then closes its server connections), then SIGQUIT
    /// and SIGKILL for whatever still runs 5 s later.
    pub fn stop(&mut self) {
        stop_all(
            &mut [&mut self.child],
            libc::SIGTERM,
            Duration::from_secs(5),
        );
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Removes the cluster's paths when this process exits, however it exits.
pub(crate) struct Janitor {
    child: Child,
    pipe: Option<ChildStdin>,
}

/// Waits for EOF on stdin, then removes its arguments, retrying for a while
/// because servers that just got their parent-death signal may still be
/// writing files.
const JANITOR_SCRIPT: &str = r#"
read -r _ignored
i=0
while [ "$i" -lt 80 ]; do
  rm -rf -- "$@" 2>/dev/null
  left=0
  for p in "$@"; do [ -e "$p" ] && left=1; done
  [ "$left" = 0 ] && exit 0
  i=$((i + 1))
  sleep 0.25
done
exit 1
"#;

impl Janitor {
    pub(crate) fn spawn(paths: &[PathBuf]) -> io::Result<Janitor> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(JANITOR_SCRIPT)
            .arg("pgcluster-janitor")
            .args(paths)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C aimed at the test must not kill
            // the janitor before it has cleaned up.
            .process_group(0);
        // Deliberately not spawn_bound: the janitor must outlive us.
        let mut child = cmd.spawn()?;
        let pipe = child.stdin.take();
        Ok(Janitor { child, pipe })
    }

    /// Lets the janitor run now (the caller has normally removed everything
    /// already) and reaps it.
    pub(crate) fn finish(mut self) {
        drop(self.pipe.take());
        let deadline = Instant::now() + Duration::from_secs(25);
        if !matches!(wait_until(&mut self.child, deadline), Ok(Some(_))) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_output_and_timeout() {
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "cat; echo oops >&2"]);
        let out = match run_tool(cmd, Some("hello"), Duration::from_secs(10)) {
            Ok(out) => out,
            Err(_) => panic!("sh failed"),
        };
        assert!(out.status.success());
        assert_eq!(out.stdout, "hello");
        assert_eq!(out.stderr, "oops\n");

        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "sleep 30"]);
        let started = Instant::now();
        assert!(matches!(
            run_tool(cmd, None, Duration::from_millis(200)),
            Err(ToolError::Timeout)
        ));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn janitor_removes_paths_on_eof() {
        let dir = std::env::temp_dir().join(format!("pgcluster-janitor-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let janitor = Janitor::spawn(std::slice::from_ref(&dir)).unwrap();
        assert!(dir.exists());
        janitor.finish();
        assert!(!dir.exists());
    }
}
