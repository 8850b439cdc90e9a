//! The client library's examples (`client/examples/`) run as a user runs them: real processes
//! against a `tally dev` cluster (a child process on ephemeral ports), found through
//! `TALLY_SEED` / `TALLY_CERTS`. The pipeline stage is SIGKILLed twice mid-run and restarted;
//! its output log is then checked record by record against its input: every input exactly
//! once, in order, transformed, with no gap other than holes and bridges.
//!
//! The example binaries are built by the workspace build (`bash ops/test.sh`, or
//! `cargo build -p tally-client --examples`); a missing or stale binary fails the test with
//! that instruction. Every wait is for a condition (a line, an exit) bounded by a deadline
//! that only ends a failing test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::TALLY;
use support::child::{Running, tally};
use tally_client::{Client, ClientConfig, Delivery, GapKind, ReadFrom, ReadOptions, ReadUntil};
use tally_common::{LogId, Lsn};

mod support;
/// When each killed pipeline run is killed after it announces its 100th append.
const KILL_DELAY: [Duration; 2] = [Duration::ZERO, Duration::from_millis(1)];

/// The path of example `name`, checked to exist and to be newer than its sources.
fn example(name: &str) -> PathBuf {
    let bin = Path::new(TALLY)
        .parent()
        .expect("the target directory")
        .join("examples")
        .join(name);
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("../client/examples");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "example binary {} is missing: build it with `cargo build -p tally-client \
             --examples` (the workspace build, `bash ops/test.sh`, does)",
            bin.display()
        )
    };
    for source in [
        sources.join(format!("{name}.rs")),
        sources.join("common/mod.rs"),
    ] {
        let changed = std::fs::metadata(&source)
            .and_then(|m| m.modified())
            .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        assert!(
            changed <= built,
            "example binary {} is older than {}: rebuild with `cargo build -p tally-client \
             --examples`",
            bin.display(),
            source.display()
        );
    }
    bin
}

/// A `tally dev` cluster on ephemeral ports (logs 1..=16, replication 2).
struct Dev {
    proc: Option<Running>,
    seed: String,
    certs: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dev {
    fn start() -> Dev {
        let dir = tempfile::tempdir().unwrap();
        let dir_arg = dir.path().to_str().expect("a UTF-8 temp path");
        let mut proc = Running::spawn(tally(&["dev", "--base-port", "0", "--dir", dir_arg]));
        proc.wait_for_line("tally dev: ready");
        proc.wait_for_line("  certs:");
        let seed = proc.field("seed");
        let certs = PathBuf::from(proc.field("certs"));
        Dev {
            proc: Some(proc),
            seed,
            certs,
            _dir: dir,
        }
    }

    /// A command for example `name` pointed at this cluster.
    fn example(&self, name: &str, args: &[&str]) -> Command {
        let mut command = Command::new(example(name));
        command
            .args(args)
            .env("TALLY_SEED", &self.seed)
            .env("TALLY_CERTS", &self.certs);
        command
    }

    /// Runs example `name` to its end.
    fn run(&self, name: &str, args: &[&str]) -> Output {
        self.example(name, args)
            .stdin(Stdio::null())
            .output()
            .expect("run the example")
    }

    /// Appends each of `lines` to `log` with `tally append`; their LSNs.
    fn append_lines(&self, log: u64, lines: &[String]) -> Vec<Lsn> {
        let mut child = Command::new(TALLY)
            .args(["append", "--log", &log.to_string(), "--seed", &self.seed])
            .arg("--certs")
            .arg(&self.certs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tally append");
        let mut stdin = child.stdin.take().unwrap();
        let input = lines.join("\n") + "\n";
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let out = child.wait_with_output().expect("tally append");
        writer.join().unwrap().expect("write stdin");
        assert!(out.status.success(), "tally append: {}", text(&out.stderr));
        text(&out.stdout)
            .lines()
            .map(|l| l.parse().unwrap_or_else(|_| panic!("not an LSN: {l:?}")))
            .collect()
    }

    /// Every delivery of `log` from the oldest LSN to its tail.
    fn read_all(&self, log: u64) -> Vec<Delivery> {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let client = Client::connect(ClientConfig::new(vec![self.seed.clone()], &self.certs))
                .await
                .expect("connect");
            let mut reader = client
                .read(
                    LogId(log),
                    ReadOptions::range(ReadFrom::Oldest, ReadUntil::Tail),
                )
                .await
                .expect("start reading");
            let mut all = Vec::new();
            while let Some(item) = reader.next().await {
                all.push(item.expect("read"));
            }
            client.close().await;
            all
        })
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(proc) = self.proc.take() {
            proc.stop();
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the example succeeded; its stdout.
fn success(name: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "example {name} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

#[test]
fn basics_and_backfill_examples_run() {
    let dev = Dev::start();
    let out = success("basics", &dev.run("basics", &["--log", "5"]));
    assert!(
        out.contains("read e1n1 hello from the basics example"),
        "{out}"
    );
    assert_eq!(out.lines().filter(|l| l.starts_with("read ")).count(), 4);
    assert!(out.ends_with("basics: ok\n"), "{out}");

    let out = success("backfill", &dev.run("backfill", &["--log", "6"]));
    assert!(out.contains("from-lsn: 300 records"), "{out}");
    assert!(out.ends_with("backfill: ok\n"), "{out}");
    // The same replays driven by flags: from an LSN, and from a time before every record.
    let out = success(
        "backfill",
        &dev.run("backfill", &["--log", "6", "--from", "e1n101"]),
    );
    assert!(
        out.contains("from-lsn: 200 records, e1n101..=e1n300"),
        "{out}"
    );
    let out = success(
        "backfill",
        &dev.run("backfill", &["--log", "6", "--since-ms", "0"]),
    );
    assert!(
        out.contains("from-time: 300 records, e1n1..=e1n300"),
        "{out}"
    );
    // Bad input is refused with a message naming it.
    let bad = dev.run("backfill", &["--log", "6", "--from", "yesterday"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("--from"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn kv_wal_example_replays_after_its_snapshot_and_trims() {
    let dev = Dev::start();
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap();
    let kv = |words: &[&str]| {
        let mut args = vec!["--log", "3", "--dir", store];
        args.extend(words);
        success("kv_wal", &dev.run("kv_wal", &args))
    };
    let last = |out: &str| out.lines().last().unwrap_or_default().to_owned();

    // Every run is a restart: it rebuilds the state from the log.
    assert_eq!(
        last(&kv(&["set", "a", "1", "set", "b", "2"])),
        "state: a=1 b=2"
    );
    assert_eq!(last(&kv(&["del", "a", "set", "c", "3"])), "state: b=2 c=3");
    assert_eq!(last(&kv(&[])), "state: b=2 c=3");

    let out = kv(&["snapshot"]);
    let covers: Lsn = out
        .lines()
        .find_map(|l| l.strip_prefix("snapshot covers "))
        .and_then(|l| l.split(';').next())
        .unwrap_or_else(|| panic!("no snapshot line in:\n{out}"))
        .parse()
        .unwrap();
    assert!(dir.path().join("snapshot").exists());

    // The next open starts from the snapshot and replays only what follows it (its own
    // barrier), and the log below the snapshot is trimmed.
    let out = kv(&["set", "d", "4", "get", "b"]);
    let opened = out.lines().next().unwrap();
    assert!(
        opened.starts_with(&format!(
            "opened: snapshot covers {covers}, replayed 1 records from {}",
            covers.next()
        )),
        "{out}"
    );
    assert!(out.contains("get b = 2"), "{out}");
    assert_eq!(last(&out), "state: b=2 c=3 d=4");
    // (Before the first record of epoch 1 the log starts with a bridge over epoch 0.)
    let log = dev.read_all(3);
    let first_record = log.iter().position(|d| matches!(d, Delivery::Record(_)));
    let trimmed = log[..first_record.unwrap_or(log.len())]
        .iter()
        .find_map(|d| match d {
            Delivery::Gap {
                kind: GapKind::Trim,
                to,
                ..
            } => Some(*to),
            _ => None,
        });
    match trimmed {
        Some(to) => assert!(
            to >= covers,
            "trimmed only up to {to}, snapshot covers {covers}"
        ),
        None => panic!("log 3 has no trim gap before its first record: {log:?}"),
    }
    assert_eq!(last(&kv(&["del", "c"])), "state: b=2 d=4");

    // Without its snapshot the store refuses to open over a trimmed log.
    std::fs::remove_file(dir.path().join("snapshot")).unwrap();
    let lost = dev.run("kv_wal", &["--log", "3", "--dir", store]);
    assert!(!lost.status.success());
    assert!(
        text(&lost.stderr).contains("Trim gap"),
        "{}",
        text(&lost.stderr)
    );
    let bad = dev.run("kv_wal", &["--log", "3", "--dir", store, "set", "a"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("missing value"),
        "{}",
        text(&bad.stderr)
    );
}

#[test]
fn pipeline_example_killed_mid_run_neither_skips_nor_repeats() {
    const INPUT: u64 = 1;
    const OUTPUT: u64 = 2;
    let dev = Dev::start();
    let inputs: Vec<String> = (0..5000)
        .map(|i| format!("Input record {i} of five"))
        .collect();
    let lsns = dev.append_lines(INPUT, &inputs);
    assert_eq!(lsns.len(), inputs.len());
    let until = lsns.last().unwrap().to_string();
    let state = tempfile::tempdir().unwrap();
    let args = [
        "--input",
        "1",
        "--output",
        "2",
        "--until",
        &until,
        "--batch",
        "5",
        "--state-dir",
        state.path().to_str().unwrap(),
    ];

    // Two runs killed with SIGKILL as they start their 100th batch's append (so most likely
    // while it is in flight: granted, copies being stored, or acknowledged but not yet
    // reported); a third run finishes.
    let started = Instant::now();
    for run in 1..=2 {
        let mut stage = Running::spawn(dev.example("pipeline", &args));
        let resumed = stage.wait_for_line("pipeline: resumed");
        for _ in 0..99 {
            stage.wait_for_line("processed ");
        }
        let appending = stage.wait_for_line("appending ");
        // Fault timing, not synchronisation: run 1 dies as it starts the append (before its
        // grant, most likely), run 2 a little later (copies being stored, or acknowledged
        // and not yet reported, most likely). Either way the output must come out whole.
        std::thread::sleep(KILL_DELAY[run - 1]);
        stage.kill();
        eprintln!("run {run}: {resumed}; killed at `{appending}`");
    }
    let lines = Running::spawn(dev.example("pipeline", &args)).wait_success();
    eprintln!(
        "run 3: {}; all three runs took {:.1?}",
        lines[0],
        started.elapsed()
    );
    assert!(
        lines.last().unwrap().starts_with("pipeline: done"),
        "{lines:?}"
    );

    // The output log, record by record: each input exactly once, in input order, transformed.
    let mut outputs = Vec::new();
    let (mut markers, mut holes) = (0, 0);
    for delivery in dev.read_all(OUTPUT) {
        match delivery {
            Delivery::Record(r) => match r.payload.split_first() {
                Some((b'M', [])) => markers += 1,
                Some((b'D', rest)) if rest.len() >= 8 => {
                    let (input, body) = rest.split_at(8);
                    let input = Lsn(u64::from_be_bytes(input.try_into().unwrap()));
                    outputs.push((input, body.to_vec()));
                }
                _ => panic!(
                    "unexpected output record at {}: {:?}",
                    r.header.lsn, r.payload
                ),
            },
            Delivery::Gap {
                kind: GapKind::Hole | GapKind::Bridge,
                ..
            } => holes += 1,
            Delivery::Gap { kind, from, to } => {
                panic!("output log has a {kind:?} gap {from}..={to}")
            }
        }
    }
    eprintln!(
        "output: {} records, {markers} restart markers, {holes} holes/bridges",
        outputs.len()
    );
    assert!(markers >= 3, "one marker per run, found {markers}");
    assert_eq!(
        outputs.len(),
        inputs.len(),
        "outputs are missing or repeated"
    );
    for (i, ((input, body), (lsn, payload))) in
        outputs.iter().zip(lsns.iter().zip(&inputs)).enumerate()
    {
        assert_eq!(input, lsn, "output {i} comes from {input}, expected {lsn}");
        assert_eq!(
            body,
            &payload.to_ascii_uppercase().into_bytes(),
            "output {i} (input {lsn})"
        );
    }
}
