//! The README's quick start, run as written: the commands are read from the `sh` block under
//! `## Quick start` in README.md (so the README and this test cannot drift apart), with
//! `cargo run -p tally --` replaced by the built binary, and run through `sh -c` in an empty
//! temporary directory (where `tally dev` keeps `./.tally-dev`), with no `TALLY_*` variables:
//! the CLI commands must find the dev cluster with no flags at all, on its default port 4500.
//!
//! The commands this test knows (`dev`, `append`, `read`, `tail`, `grep`) have their output
//! checked against what was appended; any other `tally` command must exit 0. Two lines are not run: `bash ops/setup.sh`
//! (installs system packages; the machine running the tests has them) is cut from the front
//! of a command, and `bash ops/test.sh` (the whole suite, this test included) is only checked
//! to be there. Waits are for lines of output, bounded by a deadline only a failure reaches.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");
const T: Duration = Duration::from_secs(120);
const SETUP: &str = "bash ops/setup.sh && ";

/// The commands of the quick-start block, comments and blank lines left out.
fn quick_start_commands() -> Vec<String> {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    let readme = std::fs::read_to_string(&readme).expect("read README.md");
    let section = readme
        .split("\n## Quick start")
        .nth(1)
        .expect("README has a `## Quick start` section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the quick start has a ```sh block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// `cmd` as run here: the setup prefix cut, `cargo run -p tally --` replaced by the binary.
fn translate(cmd: &str) -> String {
    let cmd = cmd.strip_prefix(SETUP).unwrap_or(cmd);
    cmd.replace("cargo run -p tally --", TALLY)
}

fn shell(dir: &Path, cmd: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd).current_dir(dir);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TALLY_")) {
        c.env_remove(key);
    }
    c
}

/// A command that runs until killed, its stdout and stderr line by line.
struct Running {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Running {
    fn spawn(dir: &Path, cmd: &str) -> Running {
        let mut child = shell(dir, &format!("exec {cmd}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()));
        let stderr = lines(Box::new(child.stderr.take().unwrap()));
        Running {
            child,
            stdout,
            stderr,
        }
    }

    fn wait_for(rx: &mpsc::Receiver<String>, prefix: &str, what: &str) -> String {
        loop {
            let line = rx
                .recv_timeout(T)
                .unwrap_or_else(|e| panic!("{what}: no line starting with {prefix:?}: {e}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SIGTERM first: `tally dev` stops cleanly on it.
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(dir: &Path, cmd: &str) -> Output {
    let out = shell(dir, cmd)
        .stdin(Stdio::null())
        .output()
        .expect("run a quick-start command");
    assert!(
        out.status.success(),
        "`{cmd}` failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    out
}

#[test]
fn the_readme_quick_start_works_as_written() {
    let commands = quick_start_commands();
    assert!(commands.len() >= 5, "quick start: {commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let mut dev = None;
    let mut appended = Vec::new();
    let mut checked_read = false;
    for original in &commands {
        let cmd = translate(original);
        let args: Vec<&str> = cmd.split_whitespace().collect();
        eprintln!("quick start: {original}");
        if original.contains("bash ops/test.sh") {
            continue;
        }
        let sub = args
            .iter()
            .position(|a| *a == TALLY)
            .and_then(|i| args.get(i + 1))
            .copied()
            .unwrap_or_else(|| panic!("not a tally command: {original}"));
        match sub {
            "dev" => {
                let mut proc = Running::spawn(dir.path(), &cmd);
                Running::wait_for(&proc.stdout, "tally dev: ready", "tally dev");
                assert!(dir.path().join(".tally-dev/certs/ca.pem").exists());
                // Keep reading its stdout so the pipe never fills.
                let rx = std::mem::replace(&mut proc.stdout, mpsc::channel().1);
                std::thread::spawn(move || while rx.recv().is_ok() {});
                dev = Some(proc);
            }
            "append" => {
                assert!(dev.is_some(), "append before dev");
                let out = run(dir.path(), &cmd);
                let lines: Vec<String> = text(&out.stdout).lines().map(str::to_owned).collect();
                let expect: Vec<String> = if let Some(payload) = args
                    .last()
                    .filter(|_| !cmd.contains('|') && args[args.len() - 2] != "--log")
                {
                    vec![(*payload).to_owned()]
                } else if let Some(seq) = cmd.strip_prefix("seq ") {
                    let n: Vec<u64> = seq
                        .split('|')
                        .next()
                        .unwrap()
                        .split_whitespace()
                        .map(|x| x.parse().unwrap())
                        .collect();
                    (n[0]..=n[1]).map(|i| i.to_string()).collect()
                } else {
                    panic!("unknown append form: {original}")
                };
                assert_eq!(lines.len(), expect.len(), "one LSN per record: {lines:?}");
                for l in &lines {
                    l.parse::<tally_common::Lsn>()
                        .unwrap_or_else(|_| panic!("not an LSN: {l:?}"));
                }
                appended.extend(lines.into_iter().zip(expect));
            }
            "read" => {
                let out = run(dir.path(), &cmd);
                let want: String = if cmd.contains("--format lsn") {
                    appended
                        .iter()
                        .map(|(l, p)| format!("{l}\t{p}\n"))
                        .collect()
                } else {
                    appended.iter().map(|(_, p)| format!("{p}\n")).collect()
                };
                assert_eq!(text(&out.stdout), want, "`{original}`");
                checked_read = true;
            }
            "tail" => {
                let tail = Running::spawn(dir.path(), &cmd);
                Running::wait_for(&tail.stderr, "tally: following log 1 from ", "tally tail");
                // The quick start's first append, again: the follower prints it.
                let append = commands
                    .iter()
                    .map(|c| translate(c))
                    .find(|c| c.contains(" append ") && !c.contains('|'))
                    .expect("a single-record append in the quick start");
                let payload = append.split_whitespace().last().unwrap().to_owned();
                let out = run(dir.path(), &append);
                let lsn = text(&out.stdout).trim().to_owned();
                let line = tail
                    .stdout
                    .recv_timeout(T)
                    .unwrap_or_else(|e| panic!("tail printed nothing: {e}"));
                assert_eq!(line, payload);
                appended.push((lsn, payload));
            }
            "grep" => {
                // `grep … PATTERN`: the records appended so far that contain PATTERN.
                let out = run(dir.path(), &cmd);
                let pattern = args.last().unwrap();
                let want: String = appended
                    .iter()
                    .filter(|(_, p)| p.contains(pattern))
                    .map(|(l, p)| {
                        if cmd.contains("--format lsn") {
                            format!("{l}\t{p}\n")
                        } else {
                            format!("{p}\n")
                        }
                    })
                    .collect();
                assert!(!want.is_empty(), "`{original}` matches something");
                assert_eq!(text(&out.stdout), want, "`{original}`");
            }
            _ => {
                run(dir.path(), &cmd);
            }
        }
    }
    assert!(checked_read, "the quick start reads the log back");
    drop(dev);
}
