//! The `tally` binary as a user runs it, as child processes: `tally dev` in a temporary
//! directory (ephemeral ports, so tests run in parallel), `tally append` with an argument and
//! with lines on stdin, `tally log create|show`, a graceful SIGTERM and a restart on the same
//! directory; `tally server` with a file epoch store; config validation naming the bad field.
//!
//! Every wait is for a condition (a line on stdout, a process exit) with a generous deadline
//! that only bounds a failing test; nothing sleeps and nothing is retried.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::TALLY;
use support::child::{Running, tally};
use tally_common::Lsn;

mod support;

/// Bounds each wait of a failing test (a loaded CI machine builds RocksDB meanwhile).
const T: Duration = Duration::from_secs(120);

/// Where CLI commands connect.
struct Target {
    seed: String,
    certs: PathBuf,
}

/// A `tally dev` cluster in `dir` on ephemeral ports, ready.
struct Dev {
    proc: Running,
    target: Target,
}

impl Dev {
    fn start(dir: &Path) -> Dev {
        let dir = dir.to_str().unwrap();
        let mut proc = Running::spawn(tally(&["dev", "--dir", dir, "--base-port", "0"]));
        proc.wait_for_line("tally dev: ready");
        proc.wait_for_line("  certs:");
        let seed = proc.field("seed");
        let certs = PathBuf::from(proc.field("certs"));
        assert!(
            certs.join("ca.pem").exists(),
            "certs in {}",
            certs.display()
        );
        Dev {
            proc,
            target: Target { seed, certs },
        }
    }

    fn run(&self, args: &[&str], stdin: &str) -> Output {
        self.target.run(args, stdin)
    }

    fn stop(self) {
        self.proc.terminate("tally dev: stopped");
    }
}

impl Target {
    /// Runs `tally <args> --seed … --certs …` with `stdin`.
    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(TALLY)
            .args(args)
            .args([
                "--seed",
                &self.seed,
                "--certs",
                self.certs.to_str().unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().expect("tally output")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The LSNs a successful `tally append` printed, one per line.
fn lsns(out: &Output) -> Vec<Lsn> {
    assert!(
        out.status.success(),
        "tally append failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| {
            l.parse::<Lsn>()
                .unwrap_or_else(|_| panic!("not an LSN: {l:?}"))
        })
        .collect()
}

fn increasing(lsns: &[Lsn]) -> bool {
    lsns.windows(2).all(|w| w[0] < w[1])
}

#[test]
fn dev_cluster_appends_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());

    let one = lsns(&dev.run(&["append", "--log", "1", "hello"], ""));
    assert_eq!(one.len(), 1);
    // Four lines (one empty: an empty record) and no newline after the last.
    let more = lsns(&dev.run(&["append", "--log", "1"], "first\nsecond\n\nlast"));
    assert_eq!(more.len(), 4, "one LSN per line");
    let mut all = one.clone();
    all.extend(&more);
    assert!(increasing(&all), "LSNs in input order: {all:?}");
    let count = dev.run(&["append", "--log", "2", "--count"], "a\nb\nc\n");
    assert!(count.status.success(), "{}", text(&count.stderr));
    assert_eq!(text(&count.stdout).trim(), "3");
    dev.stop();

    // Same directory: same certificates, data and logs; a new epoch.
    let dev = Dev::start(dir.path());
    let after = lsns(&dev.run(&["append", "--log", "1"], "again\n"));
    assert_eq!(after.len(), 1);
    assert!(
        after[0].epoch() > all.last().unwrap().epoch(),
        "{} is not in a higher epoch than {}",
        after[0],
        all.last().unwrap()
    );
    dev.stop();
}

#[test]
fn created_logs_take_appends_and_unknown_logs_fail() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let created = dev.run(
        &[
            "log",
            "create",
            "--log",
            "100",
            "--replication",
            "3",
            "--durability",
            "fast",
            "--window",
            "128",
            "--backlog",
            "12h",
        ],
        "",
    );
    assert!(created.status.success(), "{}", text(&created.stderr));
    let shown = dev.run(&["log", "show", "--log", "100"], "");
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    let shown = text(&shown.stdout);
    for expected in [
        "replication:    3",
        "durability:     fast",
        "window:         128",
        "backlog:        12h",
    ] {
        assert!(shown.contains(expected), "{expected:?} not in:\n{shown}");
    }
    let appended = lsns(&dev.run(&["append", "--log", "100"], "x\ny\n"));
    assert_eq!(appended.len(), 2);
    assert!(increasing(&appended));

    // Through the buffered writer: every line gets its own LSN (batches may interleave).
    let mut unordered = lsns(&dev.run(
        &["append", "--log", "100", "--unordered"],
        "1\n2\n3\n4\n5\n",
    ));
    unordered.sort();
    unordered.dedup();
    assert_eq!(unordered.len(), 5, "{unordered:?}");
    assert!(unordered[0] > appended[1]);

    let again = dev.run(&["log", "create", "--log", "100"], "");
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists"),
        "{}",
        text(&again.stderr)
    );
    let missing = dev.run(&["append", "--log", "999", "lost"], "");
    assert!(
        !missing.status.success(),
        "append to a missing log succeeded"
    );
    let err = text(&missing.stderr);
    assert!(
        err.contains("log 999 does not exist") && err.contains("not appended"),
        "{err}"
    );
    let bad = dev.run(&["log", "create", "--log", "101", "--replication", "0"], "");
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("replication"),
        "{}",
        text(&bad.stderr)
    );
    dev.stop();
}

#[test]
fn server_runs_one_node_with_a_file_epoch_store() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tally_common::transport::generate_cluster_certs(&certs, "solo", &["127.0.0.1".to_owned()])
        .unwrap();
    let config = dir.path().join("tally.toml");
    std::fs::write(
        &config,
        format!(
            "cluster = \"solo\"\nnode_id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             certs_dir = {:?}\nroles = [\"sequencer\", \"storage\"]\n\n[epoch_store]\nfile = {:?}\n",
            dir.path().join("data"),
            certs,
            dir.path().join("epochstore"),
        ),
    )
    .unwrap();
    let mut server = Running::spawn(tally(&["server", "--config", config.to_str().unwrap()]));
    let ready = server.wait_for_line("tally server: node 1 ready on ");
    let addr = ready
        .strip_prefix("tally server: node 1 ready on ")
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let client = Target { seed: addr, certs };
    let created = client.run(&["log", "create", "--log", "5", "--replication", "1"], "");
    assert!(created.status.success(), "{}", text(&created.stderr));
    let appended = lsns(&client.run(&["append", "--log", "5"], "one\ntwo\n"));
    assert_eq!(appended.len(), 2);
    assert!(increasing(&appended));
    server.terminate("tally server: node 1 stopped");
}

#[test]
fn server_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let run = |toml: &str, flags: &[&str]| {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, toml).unwrap();
        let out = Command::new(TALLY)
            .args(["server", "--config", path.to_str().unwrap()])
            .args(flags)
            .env_remove("TALLY_NODE_ID")
            .output()
            .unwrap();
        assert!(!out.status.success(), "accepted {toml:?} {flags:?}");
        text(&out.stderr)
    };
    let base =
        "node_id = 3\ndata_dir = \"/tmp/x\"\n[epoch_store]\netcd = [\"http://127.0.0.1:2379\"]\n";
    let err = run(&base.replace("node_id = 3", "node_id = 0"), &[]);
    assert!(err.contains("node_id"), "{err}");
    let err = run(base, &["--listen", "somewhere"]);
    assert!(err.contains("listen") && err.contains("somewhere"), "{err}");
    let err = run(&format!("colour = \"blue\"\n{base}"), &[]);
    assert!(err.contains("colour"), "{err}");
    let err = run(&format!("{base}[storage]\nlease_ttl = \"0s\"\n"), &[]);
    assert!(err.contains("storage.lease_ttl"), "{err}");
    let err = run(base, &["--listen", "0.0.0.0:4500"]);
    assert!(err.contains("advertise"), "{err}");
}

/// Writes a node config for an etcd cluster and returns its path.
fn etcd_node_config(dir: &Path, id: u32, roles: &str, etcd: &str, certs: &Path) -> PathBuf {
    let path = dir.join(format!("node{id}.toml"));
    std::fs::write(
        &path,
        format!(
            "cluster = \"pair\"\nnode_id = {id}\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             certs_dir = {certs:?}\nroles = [{roles}]\n\n[epoch_store]\netcd = [{etcd:?}]\n",
            dir.join(format!("data{id}")),
        ),
    )
    .unwrap();
    path
}

/// The address a `tally server` printed in its ready line.
fn ready_addr(server: &mut Running, id: u32) -> String {
    let prefix = format!("tally server: node {id} ready on ");
    let line = server.wait_for_line(&prefix);
    line[prefix.len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn servers_on_etcd_form_a_cluster_and_leave_membership_on_sigterm() {
    use tally_epochstore::EpochStore;
    let etcd = tally_epochstore::harness::EtcdHarness::start()
        .await
        .expect("start etcd");
    let url = etcd.client_url();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    tally_common::transport::generate_cluster_certs(&certs, "pair", &["127.0.0.1".to_owned()])
        .unwrap();
    let both = etcd_node_config(dir.path(), 1, "\"sequencer\", \"storage\"", &url, &certs);
    let storage = etcd_node_config(dir.path(), 2, "\"storage\"", &url, &certs);
    // Node 2 first: node 1 loads membership when it starts, so its views (which clients
    // ask for the cluster state) hold node 2 without waiting for the watch.
    // Flags override the file: node 2 is given its roles on the command line.
    let mut node2 = Running::spawn(tally(&[
        "server",
        "--config",
        storage.to_str().unwrap(),
        "--roles",
        "storage",
    ]));
    ready_addr(&mut node2, 2);
    let mut node1 = Running::spawn(tally(&["server", "--config", both.to_str().unwrap()]));
    let addr = ready_addr(&mut node1, 1);

    let store = etcd.store("pair").await.unwrap();
    let ids = |nodes: Vec<tally_common::meta::NodeInfo>| {
        let mut ids: Vec<u32> = nodes.iter().map(|n| n.id.0).collect();
        ids.sort_unstable();
        ids
    };
    assert_eq!(ids(store.list_nodes().await.unwrap()), vec![1, 2]);

    let client = Target { seed: addr, certs };
    let created = client.run(&["log", "create", "--log", "9", "--replication", "2"], "");
    assert!(created.status.success(), "{}", text(&created.stderr));
    let appended = lsns(&client.run(&["append", "--log", "9"], "a\nb\nc\n"));
    assert_eq!(appended.len(), 3);
    assert!(increasing(&appended));

    // A graceful stop revokes the lease: the node is gone from membership at once.
    node2.terminate("tally server: node 2 stopped");
    assert_eq!(ids(store.list_nodes().await.unwrap()), vec![1]);
    node1.terminate("tally server: node 1 stopped");
    assert!(store.list_nodes().await.unwrap().is_empty());
}

/// A `tally` command that runs until killed (`read --follow`, `tail`), stdout and stderr
/// line by line.
struct Follower {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Follower {
    fn spawn(target: &Target, args: &[&str]) -> Follower {
        let mut child = Command::new(TALLY)
            .args(args)
            .args([
                "--seed",
                &target.seed,
                "--certs",
                target.certs.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally");
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
        Follower {
            child,
            stdout,
            stderr,
        }
    }

    fn next_line(rx: &mpsc::Receiver<String>, what: &str) -> String {
        rx.recv_timeout(T)
            .unwrap_or_else(|e| panic!("no {what} line: {e}"))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn read_tail_find_time_and_trim() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let appended = lsns(&dev.run(&["append", "--log", "1"], "one\ntwo\nthree\n"));
    assert_eq!(appended.len(), 3);
    let last = appended[2].to_string();

    // Until an LSN: waits for it to be released, then prints the payloads, nothing else.
    let raw = dev.run(&["read", "--log", "1", "--until", &last], "");
    assert!(raw.status.success(), "{}", text(&raw.stderr));
    assert_eq!(text(&raw.stdout), "one\ntwo\nthree\n");
    // Until the tail (the default), with LSNs.
    let with_lsns = dev.run(&["read", "--log", "1", "--format", "lsn"], "");
    assert!(with_lsns.status.success(), "{}", text(&with_lsns.stderr));
    let expected: String = appended
        .iter()
        .zip(["one", "two", "three"])
        .map(|(lsn, p)| format!("{lsn}\t{p}\n"))
        .collect();
    assert_eq!(text(&with_lsns.stdout), expected);

    // find-time: every record is older than now; nothing is older than 0.
    let found = dev.run(&["find-time", "--log", "1", "now"], "");
    assert!(found.status.success(), "{}", text(&found.stderr));
    assert_eq!(text(&found.stdout).trim(), appended[2].next().to_string());
    let found = dev.run(&["find-time", "--log", "1", "@0"], "");
    assert!(found.status.success(), "{}", text(&found.stderr));
    let at_zero: Lsn = text(&found.stdout).trim().parse().unwrap();
    assert!(at_zero <= appended[0], "{at_zero}");
    let bad = dev.run(&["find-time", "--log", "1", "yesterday"], "");
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("RFC 3339"),
        "{}",
        text(&bad.stderr)
    );

    // Trim the first record: JSON shows the trim gap, then the other two records.
    let first = appended[0].to_string();
    let trimmed = dev.run(&["trim", "--log", "1", "--upto", &first], "");
    assert!(trimmed.status.success(), "{}", text(&trimmed.stderr));
    let json = dev.run(
        &["read", "--log", "1", "--until", &last, "--format", "json"],
        "",
    );
    assert!(json.status.success(), "{}", text(&json.stderr));
    let objects: Vec<serde_json::Value> = text(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let trim_gaps: Vec<&serde_json::Value> =
        objects.iter().filter(|o| o["gap"] == "trim").collect();
    assert_eq!(trim_gaps.len(), 1, "{objects:?}");
    assert_eq!(trim_gaps[0]["to"], first.as_str());
    let payloads: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["payload"].as_str())
        .collect();
    assert_eq!(payloads, ["two", "three"]);
    // In raw format the trim gap goes to stderr.
    let raw = dev.run(&["read", "--log", "1", "--until", &last], "");
    assert_eq!(text(&raw.stdout), "two\nthree\n");
    assert!(
        text(&raw.stderr).contains("gap trim"),
        "{}",
        text(&raw.stderr)
    );
    let past = dev.run(&["trim", "--log", "1", "--upto", "e999n1"], "");
    assert!(!past.status.success());
    assert!(
        text(&past.stderr).contains("tail"),
        "{}",
        text(&past.stderr)
    );

    // Following: `read --follow` from after the last record, and `tail` once it says where it
    // starts, both print what is appended afterwards.
    let next = appended[2].next().to_string();
    let follower = Follower::spawn(
        &dev.target,
        &["read", "--log", "1", "--from", &next, "--follow"],
    );
    let tail = Follower::spawn(&dev.target, &["tail", "--log", "1", "--format", "lsn"]);
    // Log lines may come first on stderr.
    while !Follower::next_line(&tail.stderr, "tail stderr")
        .starts_with("tally: following log 1 from ")
    {}
    let later = lsns(&dev.run(&["append", "--log", "1"], "four\nfive\n"));
    assert_eq!(Follower::next_line(&follower.stdout, "follower"), "four");
    assert_eq!(Follower::next_line(&follower.stdout, "follower"), "five");
    assert_eq!(
        Follower::next_line(&tail.stdout, "tail"),
        format!("{}\tfour", later[0])
    );
    assert_eq!(
        Follower::next_line(&tail.stdout, "tail"),
        format!("{}\tfive", later[1])
    );
    drop(follower);
    drop(tail);
    dev.stop();
}

/// Runs `tally <args>` with raw bytes on stdin (no cluster flags added).
fn run_bytes(target: &Target, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(TALLY)
        .args(args)
        .args([
            "--seed",
            &target.seed,
            "--certs",
            target.certs.to_str().unwrap(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tally");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().expect("tally output")
}

/// The JSON objects `tally read --format json` printed for records.
fn json_records(out: &Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|o| o.get("lsn").is_some())
        .collect()
}

/// `tally append` keeps every record byte for byte (`\r\n`, empty lines, invalid UTF-8, a
/// last line without newline), and a cut-short `--binary` frame is refused with its reason
/// after the records before it were appended.
#[test]
fn append_never_mangles_records_and_refuses_bad_frames() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());
    let t = &dev.target;
    let input: &[u8] = b"crlf\r\n\n\xff\xferaw\nlast";
    let out = run_bytes(t, &["append", "--log", "3"], input);
    assert_eq!(lsns(&out).len(), 4, "{}", text(&out.stderr));
    let got = json_records(&run_bytes(
        t,
        &["read", "--log", "3", "--format", "json"],
        b"",
    ));
    let payloads: Vec<String> = got
        .iter()
        .map(
            |o| match (o["payload"].as_str(), o["payload_hex"].as_str()) {
                (Some(p), _) => p.to_owned(),
                (None, Some(h)) => format!("hex:{h}"),
                _ => panic!("{o}"),
            },
        )
        .collect();
    assert_eq!(payloads, ["crlf\r", "", "hex:fffe726177", "last"]);

    // Binary: two good frames, then a frame announcing 9 bytes with 3 left.
    let mut frames = Vec::new();
    for rec in [&b"one"[..], b"two\n"] {
        frames.extend_from_slice(&(rec.len() as u32).to_be_bytes());
        frames.extend_from_slice(rec);
    }
    frames.extend_from_slice(&[0, 0, 0, 9, b'a', b'b', b'c']);
    let out = run_bytes(t, &["append", "--log", "4", "--binary"], &frames);
    assert!(!out.status.success(), "a truncated frame is an error");
    let err = text(&out.stderr);
    assert!(
        err.contains("record 3: input ends inside a record of 9 bytes (3 bytes read)"),
        "{err}"
    );
    assert!(err.contains("2 records appended"), "{err}");
    assert_eq!(text(&out.stdout).lines().count(), 2);
    let got = json_records(&run_bytes(
        t,
        &["read", "--log", "4", "--format", "json"],
        b"",
    ));
    let payloads: Vec<&str> = got.iter().map(|o| o["payload"].as_str().unwrap()).collect();
    assert_eq!(payloads, ["one", "two\n"]);
    dev.stop();
}

/// `log list`, `log update` (only the given attributes change; bad values refused before
/// anything is sent), `log trim` (the same as `trim`), `read --format time`, and `grep` on a
/// small log: substring, `-i`, `--regex`, JSON, a time range, bad patterns refused.
#[test]
fn log_list_update_trim_read_time_and_grep() {
    let dir = tempfile::tempdir().unwrap();
    let dev = Dev::start(dir.path());

    let listed = dev.run(&["log", "list"], "");
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed = text(&listed.stdout);
    assert_eq!(
        listed.lines().count(),
        17,
        "a header and logs 1..=16:\n{listed}"
    );
    assert!(
        listed.lines().nth(1).unwrap().starts_with("1\t2\t"),
        "{listed}"
    );
    let updated = dev.run(
        &[
            "log",
            "update",
            "--log",
            "5",
            "--backlog",
            "2h",
            "--window",
            "64",
        ],
        "",
    );
    assert!(updated.status.success(), "{}", text(&updated.stderr));
    let json = dev.run(&["log", "list", "--json"], "");
    assert!(json.status.success(), "{}", text(&json.stderr));
    let all: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let five = all
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["log"] == 5)
        .expect("log 5 listed");
    let attrs = &five["metadata"]["attributes"];
    assert_eq!(attrs["backlog_secs"], 7200, "{attrs}");
    assert_eq!(attrs["max_in_flight"], 64, "{attrs}");
    assert_eq!(attrs["replication"], 2, "unchanged: {attrs}");
    for (bad, why) in [
        (vec!["--replication", "0"], "replication"),
        (vec![], "nothing to update"),
    ] {
        let mut args = vec!["log", "update", "--log", "5"];
        args.extend(bad);
        let out = dev.run(&args, "");
        assert!(!out.status.success());
        assert!(text(&out.stderr).contains(why), "{}", text(&out.stderr));
    }
    let missing = dev.run(&["log", "update", "--log", "999", "--window", "8"], "");
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("does not exist"),
        "{}",
        text(&missing.stderr)
    );

    let appended = lsns(&dev.run(
        &["append", "--log", "6"],
        "GET /a 200\nGET /b 500 error\nPOST /c 503 Error\nGET /d 200\n",
    ));
    let timed = dev.run(&["read", "--log", "6", "--format", "time"], "");
    assert!(timed.status.success(), "{}", text(&timed.stderr));
    let first = text(&timed.stdout).lines().next().unwrap().to_owned();
    let fields: Vec<&str> = first.split('\t').collect();
    assert_eq!(fields[0], appended[0].to_string());
    assert!(
        fields[1].len() == 24 && fields[1].ends_with('Z') && fields[1].contains('T'),
        "{first}"
    );
    assert_eq!(fields[2], "GET /a 200");

    let grep = |args: &[&str]| {
        let mut all = vec!["grep", "--log", "6"];
        all.extend(args);
        dev.run(&all, "")
    };
    let out = grep(&["error"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "GET /b 500 error\n");
    let out = grep(&["-i", "--format", "lsn", "ERROR"]);
    assert_eq!(
        text(&out.stdout),
        format!(
            "{}\tGET /b 500 error\n{}\tPOST /c 503 Error\n",
            appended[1], appended[2]
        )
    );
    let out = grep(&["--regex", "--format", "json", r" 50\d "]);
    let objects: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 2, "{objects:?}");
    assert_eq!(objects[1]["payload"], "POST /c 503 Error");
    // A literal pattern is not a regex; an unknown regex is refused with the reason.
    assert_eq!(text(&grep(&[r" 50\d "]).stdout), "");
    let bad = grep(&["--regex", "(unclosed"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("regex"), "{}", text(&bad.stderr));
    // Everything is older than now + 1h; nothing is newer.
    assert_eq!(
        text(&grep(&["--since", "1h", "GET"]).stdout)
            .lines()
            .count(),
        3
    );
    assert_eq!(text(&grep(&["--from", "now", "GET"]).stdout), "");
    let stats = grep(&["--stats", "GET"]);
    assert!(stats.status.success(), "{}", text(&stats.stderr));
    assert!(
        text(&stats.stdout).contains("3 of 3 answered"),
        "{}",
        text(&stats.stdout)
    );

    // `log trim` is `trim`.
    let trimmed = dev.run(
        &[
            "log",
            "trim",
            "--log",
            "6",
            "--upto",
            &appended[1].to_string(),
        ],
        "",
    );
    assert!(trimmed.status.success(), "{}", text(&trimmed.stderr));
    let out = grep(&["-i", "error"]);
    assert_eq!(text(&out.stdout), "POST /c 503 Error\n");
    assert!(
        text(&out.stderr).contains("gap trim"),
        "{}",
        text(&out.stderr)
    );
    dev.stop();
}

/// `certs init` makes a CA with node and client certificates that a server and the CLI use,
/// and never overwrites them without `--force`.
#[test]
fn certs_init_creates_refuses_to_overwrite_and_forces() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let init = |extra: &[&str]| {
        Command::new(TALLY)
            .args([
                "certs",
                "init",
                "--dir",
                certs.to_str().unwrap(),
                "--cluster",
                "solo",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = init(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "ca.pem",
        "ca.key",
        "node.pem",
        "node.key",
        "client.pem",
        "client.key",
    ] {
        assert!(certs.join(f).exists(), "{f}");
    }
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let again = init(&[]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read(certs.join("ca.pem")).unwrap(),
        ca,
        "untouched"
    );
    let forced = init(&["--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_ne!(std::fs::read(certs.join("ca.pem")).unwrap(), ca, "a new CA");

    // A node and a client with them.
    let config = dir.path().join("tally.toml");
    std::fs::write(
        &config,
        format!(
            "cluster = \"solo\"\nnode_id = 1\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             certs_dir = {:?}\nroles = [\"sequencer\", \"storage\"]\n\n[epoch_store]\nfile = {:?}\n",
            dir.path().join("data"),
            certs,
            dir.path().join("epochstore"),
        ),
    )
    .unwrap();
    let mut server = Running::spawn(tally(&["server", "--config", config.to_str().unwrap()]));
    let ready = server.wait_for_line("tally server: node 1 ready on ");
    let addr = ready["tally server: node 1 ready on ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let client = Target { seed: addr, certs };
    let created = client.run(&["log", "create", "--log", "5", "--replication", "1"], "");
    assert!(created.status.success(), "{}", text(&created.stderr));
    server.terminate("tally server: node 1 stopped");
}

/// Every command that talks to a cluster takes `--seed` / `TALLY_SEED` and `--certs` /
/// `TALLY_CERTS`, and says so in its help.
#[test]
fn every_client_command_takes_seed_and_certs() {
    for cmd in [
        &["append"][..],
        &["read"],
        &["tail"],
        &["find-time"],
        &["trim"],
        &["grep"],
        &["log", "create"],
        &["log", "show"],
        &["log", "list"],
        &["log", "update"],
        &["log", "trim"],
        &["bench", "write"],
        &["bench", "read"],
    ] {
        let out = Command::new(TALLY)
            .args(cmd)
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd:?} --help");
        let help = text(&out.stdout);
        for flag in ["--seed", "TALLY_SEED", "--certs", "TALLY_CERTS"] {
            assert!(help.contains(flag), "{cmd:?} --help lacks {flag}:\n{help}");
        }
    }
    let top = Command::new(TALLY).arg("--help").output().unwrap();
    let top = text(&top.stdout);
    for sub in [
        "grep", "certs", "log", "read", "append", "dev", "server", "bench",
    ] {
        assert!(top.contains(sub), "tally --help lacks {sub}");
    }
}
