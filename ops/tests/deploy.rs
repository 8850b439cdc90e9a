//! `ops/deploy/local-cluster.sh` as an operator runs it: `start` (a three-member etcd, three
//! `tally server` processes, certificates from `tally certs init`, logs created), appends and
//! reads with the CLI, `status`, `stop` (every process gone), then a restart on the same
//! directory that still serves the records and takes new appends in a newer epoch.
//!
//! Ports: a base port whose range is free is picked first (other tests use ephemeral ports,
//! which Linux draws from 32768 and up; this range is below it). Every wait is bounded inside
//! the script; a failed test stops the cluster on its way out.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tally_common::Lsn;

const TALLY: &str = env!("CARGO_BIN_EXE_tally");

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local-cluster.sh")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A base port such that every port the script derives from it is free now.
fn free_base() -> u16 {
    let free = |base: u16| {
        let tcp = (0..3).chain(10..13).chain(41..50);
        let udp = 21..30;
        tcp.into_iter()
            .all(|o| TcpListener::bind(("127.0.0.1", base + o)).is_ok())
            && udp
                .into_iter()
                .all(|o| UdpSocket::bind(("127.0.0.1", base + o)).is_ok())
    };
    (0..40)
        .map(|i| 21000 + i * 250)
        .find(|&b| free(b))
        .expect("no free port range in 21000..31000")
}

/// One local cluster directory; stops the cluster when dropped by a failing test.
struct Local {
    dir: tempfile::TempDir,
    base: u16,
    running: bool,
}

impl Local {
    fn script(&self, command: &str) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(script())
            .arg(command)
            .arg("--dir")
            .arg(self.dir.path());
        if command == "start" {
            cmd.args(["--base-port", &self.base.to_string(), "--nodes", "3"]);
        }
        cmd.env("TALLY_BIN", TALLY)
            .stdin(Stdio::null())
            .output()
            .expect("run local-cluster.sh")
    }

    fn start(&mut self) {
        let out = self.script("start");
        self.running = true;
        assert!(
            out.status.success(),
            "start failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert!(
            text(&out.stdout).contains("ready: 3 nodes and a 3-member etcd"),
            "{}",
            text(&out.stdout)
        );
    }

    fn stop(&mut self) {
        let out = self.script("stop");
        self.running = false;
        assert!(
            out.status.success(),
            "stop failed:\n{}\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let left: Vec<_> = std::fs::read_dir(self.dir.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "pid files left after stop: {left:?}");
    }

    /// `TALLY_SEED` and `TALLY_CERTS` from the env file `start` writes.
    fn target(&self) -> (String, String) {
        let env = std::fs::read_to_string(self.dir.path().join("env")).expect("env file");
        let value = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .unwrap_or_else(|| panic!("no {name} in {env}"))
                .to_owned()
        };
        (value("TALLY_SEED"), value("TALLY_CERTS"))
    }

    /// Runs the CLI against the cluster through the environment, as a user who sourced the
    /// env file would.
    fn tally(&self, args: &[&str], stdin: &str) -> String {
        let (seed, certs) = self.target();
        let mut child = Command::new(TALLY)
            .args(args)
            .env("TALLY_SEED", seed)
            .env("TALLY_CERTS", certs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally");
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "tally {args:?} failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if self.running {
            let out = self.script("stop");
            eprintln!("{}{}", text(&out.stdout), text(&out.stderr));
            for log in ["node1.log", "node2.log", "node3.log", "etcd1.log"] {
                let path = self.dir.path().join("logs").join(log);
                let tail: Vec<String> = std::fs::read_to_string(&path)
                    .unwrap_or_default()
                    .lines()
                    .rev()
                    .take(15)
                    .map(str::to_owned)
                    .collect();
                eprintln!(
                    "--- {log} (last lines, newest first) ---\n{}",
                    tail.join("\n")
                );
            }
        }
    }
}

#[test]
fn local_cluster_script_starts_serves_restarts_and_stops() {
    let mut local = Local {
        dir: tempfile::tempdir().unwrap(),
        base: free_base(),
        running: false,
    };
    local.start();
    let status = local.script("status");
    assert!(status.status.success(), "status: {}", text(&status.stdout));
    for name in ["etcd1", "etcd2", "etcd3", "node1", "node2", "node3"] {
        assert!(
            text(&status.stdout).contains(&format!("{name}: running")),
            "{}",
            text(&status.stdout)
        );
    }

    let lsns: Vec<Lsn> = local
        .tally(&["append", "--log", "1"], "alpha\nbeta\ngamma\n")
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(lsns.len(), 3);
    let last = lsns[2].to_string();
    let read = local.tally(&["read", "--log", "1", "--until", &last], "");
    assert_eq!(read, "alpha\nbeta\ngamma\n");
    local.stop();
    let status = local.script("status");
    assert_eq!(status.status.code(), Some(3), "{}", text(&status.stdout));

    // A restart on the same directory: same certificates, etcd data and records. (The read
    // ends at a known LSN: right after a restart the tail is the release point, which lags
    // until the new sequencer has recovered the previous epoch.)
    local.start();
    let read = local.tally(&["read", "--log", "1", "--until", &last], "");
    assert_eq!(read, "alpha\nbeta\ngamma\n");
    let again: Lsn = local
        .tally(&["append", "--log", "1", "delta"], "")
        .trim()
        .parse()
        .unwrap();
    assert!(again.epoch() > lsns[2].epoch(), "{again} after {}", lsns[2]);
    let read = local.tally(&["read", "--log", "1", "--until", &again.to_string()], "");
    assert_eq!(read, "alpha\nbeta\ngamma\ndelta\n");
    local.stop();
}
