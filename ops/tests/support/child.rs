//! A child process whose stdout a test reads line by line (stderr goes to the test's own
//! stderr), for tests that drive `tally` and the client examples as real processes. Only a
//! failing test drops one with the process still alive; then it is killed.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use super::{T, TALLY};

/// A running child and the stdout lines seen so far.
#[derive(Debug)]
pub struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// `tally ARGS` without the connection variables of the environment the tests run in.
pub fn tally(args: &[&str]) -> Command {
    let mut command = Command::new(TALLY);
    command
        .args(args)
        .env_remove("TALLY_SEED")
        .env_remove("TALLY_CERTS")
        .env_remove("TALLY_DEV_DIR");
    command
}

impl Running {
    /// Starts `command` with stdin closed, stdout read by a thread, stderr inherited.
    pub fn spawn(mut command: Command) -> Running {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line seen so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Reads stdout until a line starts with `prefix`; panics if the process ends first.
    pub fn wait_for_line(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(T) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "no line starting with {prefix:?} ({e}); stdout so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// The value of an indented `  key: value` line seen so far.
    pub fn field(&self, key: &str) -> String {
        let prefix = format!("  {key}:");
        self.seen
            .iter()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {key:?} line in:\n{}", self.seen.join("\n")))
            .trim()
            .to_owned()
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Sends SIGTERM and waits for the exit; asserts a clean exit after `last_line`.
    pub fn terminate(mut self, last_line: &str) {
        self.signal_term();
        self.wait_for_line(last_line);
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "exited with {status} after SIGTERM");
    }

    /// Sends SIGTERM and reaps the process, whatever its exit (never panics: drop guards call
    /// it while a failed test unwinds).
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    /// Waits for the exit and returns every stdout line; asserts success.
    pub fn wait_success(mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(T) {
            self.seen.push(line);
        }
        let status = self.child.wait().expect("wait");
        assert!(
            status.success(),
            "exited with {status}; stdout:\n{}",
            self.seen.join("\n")
        );
        std::mem::take(&mut self.seen)
    }

    fn signal_term(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
