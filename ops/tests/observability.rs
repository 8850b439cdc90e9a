//! Observability end to end, as a user meets it: `tally dev` (the real binary, ephemeral
//! ports) prints each node's admin URL; appends through `tally append` move the sequencer's
//! append counters and latency histogram and the storage nodes' store counters on `/metrics`;
//! `/health` and `/ready` answer 200 with JSON; `tally status` (table and `--json`) shows
//! every node healthy and the log running on the sequencer; and the status page renders in
//! headless Chromium (its DOM holds every node and the log) and is photographed.
//!
//! The screenshot goes to the test's temporary directory, or to `$TALLY_STATUS_SCREENSHOT`
//! when set: `TALLY_STATUS_SCREENSHOT=$PWD/docs/status-page.png cargo nextest run -p tally
//! --test observability` refreshes the one in `docs/`.
//!
//! Every wait is for a condition (a line on stdout, a process exit) with a deadline that only
//! bounds a failing test; nothing sleeps and nothing is retried.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use support::child::{self, Running};
use support::{T, TALLY};

mod support;

/// `tally dev` and its stdout, line by line.
struct Dev {
    proc: Running,
}

impl Dev {
    fn start(dir: &Path) -> Dev {
        let dir = dir.to_str().unwrap();
        let mut proc = Running::spawn(child::tally(&["dev", "--dir", dir, "--base-port", "0"]));
        proc.wait_for_line("tally dev: ready");
        proc.wait_for_line("Ctrl-C stops the cluster");
        Dev { proc }
    }

    /// The value of an indented `  key: value` line.
    fn field(&self, key: &str) -> String {
        self.proc.field(key)
    }

    /// Node id → admin `host:port`, from the `  node N (role): ADDR  admin http://…/` lines.
    fn admin_ports(&self) -> BTreeMap<u32, String> {
        self.proc
            .seen()
            .iter()
            .filter_map(|l| {
                let rest = l.strip_prefix("  node ")?;
                let (id, rest) = rest.split_once(' ')?;
                let url = rest.split_once("admin http://")?.1;
                Some((id.parse().ok()?, url.trim_end_matches('/').to_owned()))
            })
            .collect()
    }

    fn stop(self) {
        self.proc.terminate("tally dev: stopped");
    }
}

/// `GET path` over HTTP/1.1 (`Connection: close`): the status code and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.set_read_timeout(Some(T)).unwrap();
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    conn.read_to_string(&mut raw).unwrap();
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP header end in {raw:?}"));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {head:?}"));
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked answer: {head}"
    );
    (code, body.to_owned())
}

/// The value of an unlabelled sample `name` in an OpenMetrics exposition.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap()
}

fn tally(args: &[&str], seed: &str, certs: &str, stdin: &str) -> Output {
    let mut child = Command::new(TALLY)
        .args(args)
        .args(["--seed", seed, "--certs", certs])
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
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs headless Chromium with the flags a closed network needs, bounded by `T`.
fn chromium(profile: &Path, args: &[&str]) -> Output {
    let binary = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("Chromium is not installed: run `bash ops/setup.sh` (it installs `chromium`)");
    let child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chromium");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(T) {
        Ok(out) => out.expect("chromium output"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("chromium did not finish within {T:?}");
        }
    }
}

#[test]
fn metrics_health_status_and_the_status_page() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("dev"));
    let seed = dev.field("seed");
    let certs = dev.field("certs");
    let admin = dev.admin_ports();
    assert_eq!(admin.len(), 4, "an admin port per node: {admin:?}");
    let status_url = dev
        .field("status page")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let sequencer = &admin[&1];
    assert_eq!(status_url, format!("http://{sequencer}/"));

    // Health and readiness: JSON, 200.
    for path in ["/health", "/ready"] {
        for addr in admin.values() {
            let (code, body) = get(addr, path);
            assert_eq!(code, 200, "{addr}{path}: {body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(v["problems"].as_array().unwrap().is_empty(), "{body}");
        }
    }
    let (code, _) = get(sequencer, "/no-such-page");
    assert_eq!(code, 404);

    // The counters move with appends.
    let (code, before) = get(sequencer, "/metrics");
    assert_eq!(code, 200);
    let appends0 = sample(&before, "tally_sequencer_appends_total");
    let latency0 = sample(&before, "tally_sequencer_append_latency_seconds_count");
    let stored0: f64 = admin
        .iter()
        .filter(|(id, _)| **id != 1)
        .map(|(_, a)| sample(&get(a, "/metrics").1, "tally_storage_stored_records_total"))
        .sum();
    let lines: String = (0..50).map(|i| format!("record {i}\n")).collect();
    let out = tally(&["append", "--log", "1"], &seed, &certs, &lines);
    assert!(out.status.success(), "append: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 50);

    for log in ["2", "3"] {
        let out = tally(
            &["append", "--log", log],
            &seed,
            &certs,
            "a\nb\nc\nd\ne\nf\n",
        );
        assert!(out.status.success(), "append: {}", text(&out.stderr));
    }

    let (_, after) = get(sequencer, "/metrics");
    assert!(
        sample(&after, "tally_sequencer_appends_total") >= appends0 + 50.0 + 2.0 * 6.0,
        "{after}"
    );
    let latency = sample(&after, "tally_sequencer_append_latency_seconds_count");
    assert!(latency > latency0, "{after}");
    assert_eq!(
        sample(
            &after,
            "tally_sequencer_append_latency_seconds_bucket{le=\"+Inf\"}"
        ),
        latency
    );
    assert!(sample(&after, "tally_sequencer_append_latency_seconds_sum") > 0.0);
    assert!(sample(&after, "tally_sequencer_logs_running") >= 1.0);
    assert!(after.contains("# TYPE tally_sequencer_append_latency_seconds histogram"));
    assert!(after.ends_with("# EOF\n"));
    // Replication 2: every record is stored on two of the three storage nodes.
    let storage: Vec<String> = admin
        .iter()
        .filter(|(id, _)| **id != 1)
        .map(|(_, a)| get(a, "/metrics").1)
        .collect();
    let stored: f64 = storage
        .iter()
        .map(|m| sample(m, "tally_storage_stored_records_total"))
        .sum();
    assert!(stored >= stored0 + 100.0, "stored {stored0} -> {stored}");
    // The logs are durable: the stores above were fsynced, and every WAL fsync is timed (a
    // node that holds none of the copies may not have synced at all).
    let synced: Vec<(f64, f64)> = storage
        .iter()
        .map(|m| {
            (
                sample(m, "tally_logsdb_fsyncs_total"),
                sample(m, "tally_logsdb_wal_sync_latency_seconds_count"),
            )
        })
        .collect();
    assert!(synced.iter().any(|(syncs, _)| *syncs > 0.0), "{synced:?}");
    for (syncs, timed) in &synced {
        assert!(*syncs == 0.0 || *timed > 0.0, "{synced:?}");
    }
    for m in &storage {
        assert!(m.contains("# TYPE tally_storage_store_latency_seconds histogram"));
        assert!(m.contains("# TYPE tally_logsdb_wal_sync_latency_seconds histogram"));
        for name in [
            "tally_logsdb_fsyncs_total",
            "tally_logsdb_partitions",
            "tally_storage_stores_in_flight",
            "tally_storage_read_streams_open",
            "tally_transport_connections",
        ] {
            sample(m, name);
        }
    }

    // `tally status`: every node healthy, log 1 running on the sequencer node.
    let out = tally(&["status", "--json"], &seed, &certs, "");
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{v}");
    for n in nodes {
        assert_eq!(n["reachable"], true, "{n}");
        assert_eq!(n["healthy"], true, "{n}");
        assert_eq!(n["ready"], true, "{n}");
        assert_eq!(n["membership_state"], "read_write", "{n}");
    }
    let log1 = v["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["log"] == 1)
        .unwrap_or_else(|| panic!("no log 1 in {v}"));
    assert_eq!(log1["sequencer"], 1, "{log1}");
    assert_eq!(log1["replication"], 2, "{log1}");
    assert!(log1["last_released"].is_string(), "{log1}");
    assert_eq!(v["logs"].as_array().unwrap().len(), 16, "the dev logs");
    let out = tally(&["status"], &seed, &certs, "");
    assert!(out.status.success(), "status: {}", text(&out.stderr));
    let table = text(&out.stdout);
    assert!(
        table.starts_with("cluster: 4/4 nodes healthy, 16 logs"),
        "{table}"
    );
    assert!(
        table.contains("NODE") && table.contains("RELEASED"),
        "{table}"
    );

    // The status page in headless Chromium: the DOM has every node and the log.
    let (code, html) = get(sequencer, "/");
    assert_eq!(code, 200);
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    let profile = tmp.path().join("chromium");
    let out = chromium(&profile, &["--dump-dom", &status_url]);
    assert!(out.status.success(), "chromium: {}", text(&out.stderr));
    let dom = text(&out.stdout);
    for id in [
        "nodes", "logs", "node-1", "node-2", "node-3", "node-4", "log-1",
    ] {
        assert!(dom.contains(&format!("id=\"{id}\"")), "no #{id} in:\n{dom}");
    }
    assert!(
        dom.contains("4 / 4"),
        "all nodes healthy on the page:\n{dom}"
    );
    let shot = std::env::var_os("TALLY_STATUS_SCREENSHOT")
        .map_or_else(|| tmp.path().join("status-page.png"), PathBuf::from);
    let _ = std::fs::remove_file(&shot);
    let out = chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
            &status_url,
        ],
    );
    assert!(out.status.success(), "chromium: {}", text(&out.stderr));
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 10_000,
        "a {}-byte screenshot is blank",
        png.len()
    );

    dev.stop();
}

/// A full disk makes a storage node not ready (it refuses stores) but not unhealthy (a
/// restart frees no disk): `/health` 200, `/ready` 503 naming the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_not_ready_but_healthy() {
    use std::sync::Arc;

    use tally::node::{self, AdminListen};
    use tally_common::meta::Roles;
    use tally_epochstore::{EpochStore, FileEpochStore};
    use tokio_util::sync::CancellationToken;

    let tmp = tempfile::tempdir().unwrap();
    tally::dev::ensure_certs(&tmp.path().join("certs")).unwrap();
    let store: Arc<dyn EpochStore> =
        Arc::new(FileEpochStore::open(tmp.path().join("epochstore")).unwrap());
    let roles = Roles {
        sequencer: false,
        storage: true,
    };
    let mut spec = tally::dev::node_spec(tmp.path(), 2, roles, "127.0.0.1:0".parse().unwrap());
    // No file system has this much free space: the node sees its disk as full.
    spec.storage.min_free_disk_bytes = u64::MAX;
    spec.admin = Some(AdminListen {
        addr: "127.0.0.1:0".parse().unwrap(),
        fallback: false,
    });
    let node = node::start(spec, store, CancellationToken::new())
        .await
        .unwrap();
    node::wait_for_members(&node, &[node.id]).await;
    let admin = node.admin_addr.expect("an admin port").to_string();
    let (health, ready, metrics) = tokio::task::spawn_blocking(move || {
        (
            get(&admin, "/health"),
            get(&admin, "/ready"),
            get(&admin, "/metrics"),
        )
    })
    .await
    .unwrap();
    assert_eq!(health.0, 200, "{}", health.1);
    assert_eq!(ready.0, 503, "{}", ready.1);
    let v: serde_json::Value = serde_json::from_str(&ready.1).unwrap();
    assert_eq!(v["status"], "unavailable");
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("free disk below the minimum"),
        "{problems}"
    );
    assert_eq!(sample(&metrics.1, "tally_node_healthy"), 1.0);
    assert_eq!(sample(&metrics.1, "tally_node_ready"), 0.0);
    node.shutdown().await.unwrap();
}
