//! `tally grep` over 1,000,000 records (issue 8): etcd, 3 storage-only nodes and 1 sequencer
//! node, each its own `tally server` process; the load goes through the client library in this
//! process, the searches through the `tally` binary as a user runs it.
//!
//! 1,000,000 small records are appended to one log (R = 2) in two phases, with a time point
//! between them that every record of the first phase is older than and no record of the
//! second is; 1 record in 1,000 contains `needle`, 1 in 2,000 `NEEDLE`. Then:
//! - `grep needle` prints exactly the `needle` records (LSN and payload), in LSN order; its
//!   `--summary` shows the filter ran on the nodes: payload bytes received are about R × the
//!   matched bytes, and the scan estimate is more than 100 × that. The query time is printed.
//! - `grep -i needle` adds the `NEEDLE` records; `grep --regex` a pattern; `grep --from T`
//!   exactly the matches of the second phase; `--stats` reports every node, partitions and
//!   bytes without reading.
//! - With one storage node killed the f-majority still proves completeness: the same exact
//!   answer, exit 0. With two killed it cannot: exit 2, a `PARTIAL RESULT` line naming what
//!   was not searched, and only true matches on stdout.

mod support;

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::{Cluster, TALLY, serial};
use tally_client::Client;
use tally_common::{LogId, Lsn};

const LOG: LogId = LogId(1);
const RECORDS: u64 = 1_000_000;
const BATCH: u64 = 2_000;
const IN_FLIGHT: usize = 16;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn payload(i: u64) -> String {
    if i % 1_000 == 7 {
        format!("rec {i:07} has a needle")
    } else if i % 2_000 == 1_500 {
        format!("rec {i:07} has a NEEDLE")
    } else {
        format!("rec {i:07} hay")
    }
}

/// Appends records `range` with `IN_FLIGHT` batch calls at once; `(lsn, index)` of each.
async fn load(client: &Client, first: u64, count: u64) -> Vec<(Lsn, u64)> {
    let next = Arc::new(AtomicU64::new(first));
    let end = first + count;
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut acked = Vec::new();
            loop {
                let start = next.fetch_add(BATCH, Ordering::Relaxed);
                if start >= end {
                    break;
                }
                let n = BATCH.min(end - start);
                let batch: Vec<Vec<u8>> = (start..start + n)
                    .map(|i| payload(i).into_bytes())
                    .collect();
                let lsns = client
                    .append_batch(LOG, batch)
                    .await
                    .unwrap_or_else(|e| panic!("append_batch at {start}: {e}"));
                assert_eq!(lsns.end().0 - lsns.start().0 + 1, n);
                acked.extend((0..n).map(|k| (Lsn(lsns.start().0 + k), start + k)));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.expect("load task"));
    }
    acked.sort_unstable();
    acked
}

fn grep(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(TALLY)
        .arg("grep")
        .args(["--log", "1"])
        .args(args)
        .args([
            "--seed",
            &cluster.seeds().join(","),
            "--certs",
            cluster.certs.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run tally grep")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `<lsn>\t<payload>` lines of the expected matches.
fn expected(acked: &[(Lsn, u64)], want: impl Fn(u64, &str) -> bool) -> String {
    acked
        .iter()
        .filter_map(|(lsn, i)| {
            let p = payload(*i);
            want(*i, &p).then(|| format!("{lsn}\t{p}\n"))
        })
        .collect()
}

/// The value of `key=` in a `--summary` line.
fn figure(summary: &str, key: &str) -> f64 {
    let prefix = format!("{key}=");
    summary
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key} in {summary:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{key} in {summary:?}: {e}"))
}

fn assert_same(out: &Output, want: &str, what: &str) {
    assert!(
        out.status.success(),
        "{what}: exit {} stderr {}",
        out.status,
        text(&out.stderr)
    );
    let got = text(&out.stdout);
    if got != want {
        let (g, w) = (got.lines().count(), want.lines().count());
        let first_diff = got
            .lines()
            .zip(want.lines())
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("got {a:?}, want {b:?}"));
        panic!("{what}: {g} lines, want {w}; first difference: {first_diff:?}");
    }
}

#[test]
fn grep_a_million_records_server_side_exactly_and_reports_partial_results() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = Cluster::start("grep", 3, 1).await;
        cluster.create_log(LOG.0, 2);
        let client = Client::connect(cluster.client_config())
            .await
            .expect("connect");

        let started = Instant::now();
        let mut acked = load(&client, 0, RECORDS / 2).await;
        // Every record so far was granted (and timestamped) before it was acknowledged: all
        // are older than `mid`, and every record granted from here on is not.
        let mid = now_ms() + 1;
        while now_ms() < mid {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let second = load(&client, RECORDS / 2, RECORDS - RECORDS / 2).await;
        let second_from = second[0].0;
        acked.extend(second);
        acked.sort_unstable();
        client.close().await;
        eprintln!(
            "load: {RECORDS} records in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        assert_eq!(acked.len() as u64, RECORDS);

        // Substring, with the figures that show the filter ran on the nodes.
        let needles = expected(&acked, |_, p| p.contains("needle"));
        assert_eq!(needles.lines().count(), 1_000);
        let started = Instant::now();
        let out = grep(&cluster, &["--format", "lsn", "--summary", "needle"]);
        let wall = started.elapsed();
        assert_same(&out, &needles, "grep needle");
        let stderr = text(&out.stderr);
        let summary = stderr
            .lines()
            .find(|l| l.starts_with("tally grep: matches="))
            .unwrap_or_else(|| panic!("no summary in {stderr}"));
        eprintln!("grep needle over {RECORDS} records: {summary} (process {wall:.2?})");
        let matched = figure(summary, "match_bytes");
        let received = figure(summary, "received_bytes");
        let scanned = figure(summary, "scanned_bytes");
        assert_eq!(figure(summary, "matches"), 1_000.0);
        // Every match arrives once per copy (R = 2; a few records have a third copy from a
        // second store wave), and nothing else does.
        assert!(
            (2.0 * matched..=2.5 * matched).contains(&received),
            "received {received} payload bytes for {matched} matched"
        );
        assert!(
            scanned > 100.0 * received,
            "scanned {scanned} bytes, received {received}: the filter did not run on the nodes"
        );
        assert_eq!(figure(summary, "nodes"), 3.0);

        // Case-insensitive, regex, time-bounded.
        let any_case = expected(&acked, |_, p| p.to_lowercase().contains("needle"));
        assert_eq!(any_case.lines().count(), 1_500);
        let out = grep(&cluster, &["--format", "lsn", "-i", "needle"]);
        assert_same(&out, &any_case, "grep -i needle");
        let out = grep(
            &cluster,
            &["--format", "lsn", "--regex", r"^rec 09\d{4}7 has a needle$"],
        );
        let regex_want = expected(&acked, |i, p| {
            (900_000..1_000_000).contains(&i) && p.contains("needle")
        });
        assert_eq!(regex_want.lines().count(), 100);
        assert_same(&out, &regex_want, "grep --regex");
        let from = format!("@{mid}");
        let out = grep(&cluster, &["--format", "lsn", "--from", &from, "needle"]);
        let later = expected(&acked, |i, p| i >= RECORDS / 2 && p.contains("needle"));
        assert_same(&out, &later, "grep --from");
        assert!(
            later
                .lines()
                .all(|l| l.split('\t').next().unwrap().parse::<Lsn>().unwrap() >= second_from)
        );

        let out = grep(&cluster, &["--stats", "needle"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stats = text(&out.stdout);
        eprintln!("grep --stats:\n{stats}");
        assert!(stats.contains("nodes:       3 of 3 answered"), "{stats}");
        assert!(!stats.contains("partitions:  0"), "{stats}");

        // One storage node down: an f-majority is left, so the answer is still complete.
        cluster.take_storage(3).kill();
        let started = Instant::now();
        let out = grep(
            &cluster,
            &["--format", "lsn", "--stall-timeout", "60s", "needle"],
        );
        assert_same(&out, &needles, "grep with one node down");
        eprintln!(
            "grep needle with one storage node down: {:.2?}",
            started.elapsed()
        );

        // Two down: no f-majority; a partial result, said so, with only true matches.
        cluster.take_storage(2).kill();
        let out = grep(
            &cluster,
            &["--format", "lsn", "--stall-timeout", "2s", "needle"],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
        assert!(stderr.contains("PARTIAL RESULT"), "{stderr}");
        assert!(stderr.contains("were not searched"), "{stderr}");
        let got = text(&out.stdout);
        assert!(
            needles.starts_with(&got),
            "a partial result is a prefix of the matches: {got}"
        );
        eprintln!(
            "partial: {} of 1000 matches, {}",
            got.lines().count(),
            stderr.trim()
        );
        cluster.stop();
    });
}
