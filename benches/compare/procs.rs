//! Child processes of the comparison (Tally nodes, NATS servers) and what `/proc` says about
//! them: CPU seconds and resident memory.
//!
//! A [`Proc`] kills its process when dropped, so an error or a panic anywhere in the run
//! leaves no server behind; Ctrl-C is turned into an orderly unwind by `main`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// One child process; its stdout lines arrive on a channel, its stderr goes to a file.
#[derive(Debug)]
pub struct Proc {
    /// What it is, for messages (`tally node 2`, `nats n1`).
    pub name: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    log_path: PathBuf,
}

impl Proc {
    /// Starts `command` with stdout piped and stderr to `log_path`.
    pub fn spawn(name: &str, mut command: Command, log_path: &Path) -> anyhow::Result<Proc> {
        let stderr =
            File::create(log_path).with_context(|| format!("create {}", log_path.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .with_context(|| format!("start {name} ({command:?})"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Ok(Proc {
            name: name.to_owned(),
            child,
            lines,
            log_path: log_path.to_owned(),
        })
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (blocking) for a stdout line starting with `prefix`, at most `limit`; an exit or
    /// the deadline is an error carrying the tail of the process's stderr.
    pub fn wait_for_line(&mut self, prefix: &str, limit: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) => {}
                Err(e) => anyhow::bail!(
                    "{}: no line starting with {prefix:?} ({e}); stderr:\n{}",
                    self.name,
                    tail(&self.log_path, 30)
                ),
            }
        }
    }

    /// Fails with the stderr tail when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited ({status}); stderr:\n{}",
                self.name,
                tail(&self.log_path, 30)
            );
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `grace` for the exit, then SIGKILL.
    pub fn stop(mut self, grace: Duration) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
        if pid > 0 && matches!(self.child.try_wait(), Ok(None)) {
            // Sending a signal to our own child by its id (it is not reaped yet, so the id
            // is still its own).
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Drop kills what is left.
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Clock ticks per second of `/proc/<pid>/stat` times: USER_HZ, 100 on every Linux
/// architecture this runs on (asking `sysconf` would need unsafe code, which the workspace
/// denies).
const TICKS_PER_SEC: f64 = 100.0;

/// User + system CPU seconds of process `pid` so far (`None` once it is gone).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// CPU seconds of this process so far.
pub fn self_cpu_secs() -> f64 {
    cpu_secs(std::process::id()).unwrap_or(0.0)
}

/// Summed CPU seconds of `pids`.
pub fn cpu_secs_all(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| cpu_secs(p)).sum()
}

/// Resident memory of process `pid` in bytes (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes used under `dir` (regular files, recursively; what cannot be read counts 0).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// A free loopback TCP port (bound, read and released: another process could take it in
/// between, which on this machine does not happen in practice; a clash fails the start
/// loudly).
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
