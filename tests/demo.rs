//! `lagrouter demo` end to end, as a user runs it: the built binary, a
//! short duration, output to a pipe. It must pass its own verdict (zero
//! read-your-writes violations, replica1 demoted and re-admitted) and leave
//! no server and no directory behind.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demo runs 20 s plus cluster creation; anything near this is a hang.
const KILL_AFTER: Duration = Duration::from_secs(120);

#[test]
fn demo_runs_to_completion_and_cleans_up() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lagrouter"))
        .args(["demo", "--duration", "20s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start lagrouter demo");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break Some(status);
        }
        if started.elapsed() > KILL_AFTER {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = out_reader.join().expect("stdout reader");
    let err = err_reader.join().expect("stderr reader");
    let context = format!("--- stdout ---\n{out}\n--- stderr ---\n{err}");
    let status = status.unwrap_or_else(|| panic!("demo still running after 120 s\n{context}"));
    eprintln!("demo took {:.1}s", started.elapsed().as_secs_f64());

    assert!(status.success(), "demo exited with {status}\n{context}");
    assert!(
        out.contains("read-your-writes violations: 0 ✓"),
        "no zero-violation verdict\n{context}"
    );
    assert!(
        out.contains("replica1 demoted"),
        "replica1 was not demoted\n{context}"
    );
    assert!(
        out.contains("replica1 re-admitted"),
        "replica1 was not re-admitted\n{context}"
    );

    let dir =
        cluster_dir(&out).unwrap_or_else(|| panic!("demo did not print its directory\n{context}"));
    assert!(
        out.contains(&format!("removed {}", dir.display())),
        "demo did not report removing {}\n{context}",
        dir.display()
    );
    assert!(!dir.exists(), "{} is still there", dir.display());
    let left = processes_mentioning(&dir.to_string_lossy());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

/// The directory from "cluster ready in 1.5s in /tmp/…".
fn cluster_dir(out: &str) -> Option<PathBuf> {
    let line = out.lines().find(|l| l.starts_with("cluster ready"))?;
    let (_, dir) = line.rsplit_once(" in ")?;
    Some(PathBuf::from(dir.trim()))
}

/// Command lines of running processes that name `needle` (every server of
/// the demo runs with `-D <dir>/<node>`).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}
