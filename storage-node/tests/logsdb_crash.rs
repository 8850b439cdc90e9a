//! Crash test: a child process (this test binary, re-executed in child mode) stores records
//! with `durable` acknowledgements from several threads and prints each acknowledged record;
//! the parent kills it with SIGKILL at varying points. After every kill the parent reopens the
//! store and checks that every acknowledged record is present and intact, that the partition
//! directory covers every stored record (its entries are persisted lazily and repaired on
//! open), and that the open reports the unclean shutdown.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use support::*;
use tally_common::{Durability, LogId, Lsn};
use tally_storage_node::logsdb::{LogsDbConfig, ManualClock, ReadItem};

const CHILD_ENV: &str = "TALLY_LOGSDB_CRASH_CHILD";
const TEST_NAME: &str = "acknowledged_durable_writes_survive_sigkill";
const WRITERS: u64 = 6;
/// Acknowledgements the parent reads before it kills the child, one entry per round.
const KILL_AFTER_ACKS: [usize; 8] = [1, 37, 400, 9, 150, 75, 1500, 3];

fn config() -> LogsDbConfig {
    LogsDbConfig {
        partition_size_bytes: 48 << 10,
        ..LogsDbConfig::small_for_tests()
    }
}

fn payload_len(lsn: Lsn) -> usize {
    64 + (lsn.esn().0 as usize * 37) % 1500
}

/// Child mode: store forever (until killed), printing `ACK <log> <lsn>` after each durable ack.
fn child_main(spec: &str) -> ! {
    let (dir, epoch) = spec.split_once('|').expect("spec is <dir>|<epoch>");
    let epoch: u32 = epoch.parse().expect("epoch");
    let db = Arc::new(open(
        Path::new(dir),
        config(),
        Arc::new(ManualClock::new(T0)),
    ));
    // One fast write first, so the next open must report its recent range as uncertain.
    db.store_blocking(
        vec![plain(LogId(99), lsn(epoch, 1), T0, 10)],
        Durability::Fast,
    )
    .unwrap();
    let threads: Vec<_> = (1..=WRITERS)
        .map(|w| {
            let db = db.clone();
            std::thread::spawn(move || {
                let log = LogId(w);
                let mut esn = 1u32;
                loop {
                    let batch = 1 + (esn % 3);
                    let records: Vec<_> = (esn..esn + batch)
                        .map(|e| {
                            let l = lsn(epoch, e);
                            plain(log, l, T0 + u64::from(e), payload_len(l))
                        })
                        .collect();
                    db.store_blocking(records, Durability::Durable)
                        .expect("durable store");
                    let mut out = std::io::stdout().lock();
                    for e in esn..esn + batch {
                        writeln!(out, "ACK {} {}", log.0, lsn(epoch, e).0).unwrap();
                    }
                    out.flush().unwrap();
                    esn += batch;
                }
            })
        })
        .collect();
    // The writers never stop; the parent kills this process.
    drop(threads);
    loop {
        std::thread::park();
    }
}

/// Kills the child if the parent fails half-way.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_durable_writes_survive_sigkill() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child_main(&spec);
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acked: Vec<(LogId, Lsn)> = Vec::new();
    for (round, &kill_after) in KILL_AFTER_ACKS.iter().enumerate() {
        let epoch = round as u32 + 1;
        let child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}|{}", dir.path().display(), epoch))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        let mut reader = BufReader::new(child.0.stdout.take().unwrap());
        let mut line = String::new();
        let mut seen = 0;
        let mut killed = false;
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            // A line cut short by the kill was never fully printed: the ack did not happen.
            if let Some(rest) = line.strip_prefix("ACK ").and_then(|r| r.strip_suffix('\n')) {
                let (log, l) = rest.split_once(' ').unwrap();
                acked.push((LogId(log.parse().unwrap()), Lsn(l.parse().unwrap())));
                seen += 1;
            }
            if seen >= kill_after && !killed {
                child.0.kill().unwrap(); // SIGKILL on Unix
                killed = true;
            }
        }
        assert!(killed, "child exited on its own in round {round}");
        let status = child.0.wait().unwrap();
        assert!(!status.success());

        let db = open(dir.path(), config(), Arc::new(ManualClock::new(T0)));
        let report = db.open_report();
        assert!(
            report.unclean_shutdown && report.recent_range_uncertain,
            "round {round}: {report:?}"
        );
        let mut stored: HashMap<(LogId, Lsn), Vec<u8>> = HashMap::new();
        for w in 1..=WRITERS {
            for item in db.read(LogId(w), Lsn::OLDEST, Lsn::MAX) {
                match item.unwrap() {
                    ReadItem::Record(r) => {
                        stored.insert((LogId(w), r.header.lsn), r.payload);
                    }
                    other => panic!("round {round}: unexpected {other:?} in log {w}"),
                }
            }
        }
        // The directory covers every stored record (reads starting above a lagging entry's
        // last LSN would skip its partition), and a read from a log's highest LSN finds it.
        for w in 1..=WRITERS {
            let log = LogId(w);
            let entries = db.directory(log);
            let mut top = None;
            for &(l_log, l) in stored.keys() {
                if l_log != log {
                    continue;
                }
                top = top.max(Some(l));
                assert!(
                    entries
                        .iter()
                        .any(|(_, e)| e.first_lsn <= l && l <= e.last_lsn),
                    "round {round}: {log:?} {l} outside the directory {entries:?}"
                );
            }
            if let Some(top) = top {
                let first = db.read(log, top, Lsn::MAX).next();
                assert!(
                    matches!(&first, Some(Ok(ReadItem::Record(r))) if r.header.lsn == top),
                    "round {round}: read of {log:?} from {top} gave {first:?}"
                );
            }
        }
        for (log, l) in &acked {
            let payload = stored
                .get(&(*log, *l))
                .unwrap_or_else(|| panic!("round {round}: acked {log:?} {l} lost"));
            assert_eq!(
                payload,
                &payload_for(*log, *l, payload_len(*l)),
                "round {round}: {log:?} {l} damaged"
            );
        }
        db.close().unwrap();
    }
    assert!(acked.len() >= KILL_AFTER_ACKS.iter().sum::<usize>());
    eprintln!(
        "{} acknowledged records checked after {} kills",
        acked.len(),
        KILL_AFTER_ACKS.len()
    );
}
