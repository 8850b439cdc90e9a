//! A real Tally cluster as separate OS processes for the multi-process tests: a local etcd
//! (`EtcdHarness`), then `tally server` nodes (storage-only and sequencer-only), each with its
//! own config file, loopback port (`127.0.0.1:0`, the bound address read from the ready line)
//! and data directory in one temporary directory.
//!
//! Every wait is for a condition (a line on stdout, a process exit, a membership view) with a
//! generous deadline that only bounds a failing test. A node's stderr goes to
//! `<dir>/node<id>.log`; when a test fails, the [`Node`] guards print the tail of each log and
//! kill their processes.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod child;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use tally_client::{Client, ClientConfig};
use tally_common::{LogId, Lsn, NodeId};
use tally_epochstore::harness::EtcdHarness;
use tally_storage_node::{LogsDb, LogsDbConfig, NodeIdentity, ReadItem, SystemClock};

pub const TALLY: &str = env!("CARGO_BIN_EXE_tally");
/// Bounds each wait of a failing test (a loaded CI machine may be slow).
pub const T: Duration = Duration::from_secs(120);

/// The multi-process tests each start a whole cluster; on a 2-core CI machine they run one at
/// a time so that one test's load does not starve another's nodes (and figures mean something).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One `tally server` process and its stdout, line by line. Dropped alive (a failing test),
/// it prints the tail of the node's stderr and kills the process.
pub struct Node {
    pub id: u32,
    pub addr: String,
    log_path: PathBuf,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Node {
    fn spawn(id: u32, config: &Path, log_path: PathBuf) -> Node {
        let stderr = File::create(&log_path).expect("create node log");
        let mut command = Command::new(TALLY);
        // The config file alone says what the node is: no TALLY_* variable overrides it.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("TALLY_")) {
            command.env_remove(key);
        }
        let mut child = command
            .args(["server", "--config", config.to_str().unwrap()])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn tally server");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut node = Node {
            id,
            addr: String::new(),
            log_path,
            child,
            lines,
            seen: Vec::new(),
        };
        let prefix = format!("tally server: node {id} ready on ");
        let ready = node.wait_for_line(&prefix);
        node.addr = ready[prefix.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        node
    }

    /// Reads stdout until a line starts with `prefix`; panics if the process ends first.
    fn wait_for_line(&mut self, prefix: &str) -> String {
        loop {
            match self.lines.recv_timeout(T) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => panic!(
                    "node {}: no line starting with {prefix:?} ({e}); stdout so far:\n{}\n\
                     stderr:\n{}",
                    self.id,
                    self.seen.join("\n"),
                    tail(&self.log_path, 40)
                ),
            }
        }
    }

    /// Sends SIGTERM: the node drains, deregisters and closes LogsDB ([`Node::wait_stopped`]).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the exit after [`Node::sigterm`] and asserts it was clean; returns the
    /// node's stderr (warnings and errors: the default log level).
    pub fn wait_stopped(mut self) -> String {
        self.wait_for_line(&format!("tally server: node {} stopped", self.id));
        let status = self.child.wait().expect("wait for tally server");
        assert!(
            status.success(),
            "node {} exited with {status} after SIGTERM; stderr:\n{}",
            self.id,
            tail(&self.log_path, 40)
        );
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGKILL, then reaps the process (its directory lock is released once it is gone).
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap the killed node");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Only a failing test gets here with the process alive.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            if std::thread::panicking() {
                eprintln!(
                    "--- node {} stderr (tail) ---\n{}",
                    self.id,
                    tail(&self.log_path, 30)
                );
            }
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A cluster on etcd: storage-only nodes `1..=storage`, then sequencer-only nodes after them.
/// Fields drop in order: nodes (killed if alive) before etcd before the directory.
pub struct Cluster {
    pub storage: BTreeMap<u32, Node>,
    pub sequencers: Vec<Node>,
    pub etcd: EtcdHarness,
    pub name: String,
    pub certs: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts etcd, then the storage nodes, then the sequencer nodes (each waited for), then
    /// waits until every sequencer's membership view holds every node, so clients and
    /// sequencers place logs alike from the first append. Waiting for a ready line blocks the
    /// calling thread (the test's, under `block_on`).
    pub async fn start(name: &str, storage: u32, sequencers: u32) -> Cluster {
        let etcd = EtcdHarness::start().await.expect("start etcd");
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        tally_common::transport::generate_cluster_certs(&certs, name, &["127.0.0.1".to_owned()])
            .unwrap();
        let mut cluster = Cluster {
            storage: BTreeMap::new(),
            sequencers: Vec::new(),
            etcd,
            name: name.to_owned(),
            certs,
            dir,
        };
        // Storage nodes first: a sequencer loads membership when it starts.
        for id in 1..=storage {
            let node = cluster.spawn(id, "storage");
            cluster.storage.insert(id, node);
        }
        for id in storage + 1..=storage + sequencers {
            let node = cluster.spawn(id, "sequencer");
            cluster.sequencers.push(node);
        }
        let all = (storage + sequencers) as usize;
        for seq in &cluster.sequencers {
            cluster.wait_for_view(&seq.addr, all).await;
        }
        cluster
    }

    fn spawn(&self, id: u32, roles: &str) -> Node {
        let dir = self.dir.path();
        let data_dir = dir.join(format!("data{id}"));
        let config = dir.join(format!("node{id}.toml"));
        std::fs::write(
            &config,
            format!(
                "cluster = {:?}\nnode_id = {id}\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
                 certs_dir = {:?}\nroles = [{roles:?}]\n\n[epoch_store]\netcd = [{:?}]\n",
                self.name,
                data_dir,
                self.certs,
                self.etcd.client_url(),
            ),
        )
        .unwrap();
        Node::spawn(id, &config, dir.join(format!("node{id}.log")))
    }

    /// Waits until the cluster state `addr` serves lists `count` nodes (membership reaches a
    /// node through its etcd watch, and no line announces it: the state is asked again every
    /// 20 ms until it holds them all).
    async fn wait_for_view(&self, addr: &str, count: usize) {
        let probe = Client::connect(ClientConfig::new(vec![addr.to_owned()], &self.certs))
            .await
            .expect("connect a probe client");
        let start = Instant::now();
        while probe.cluster().nodes().len() < count {
            assert!(
                start.elapsed() < T,
                "{addr} never saw {count} nodes: {:?}",
                probe.cluster().nodes()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
            probe
                .refresh_cluster()
                .await
                .expect("refresh cluster state");
        }
        probe.close().await;
    }

    /// The sequencer nodes' addresses: what clients are seeded with.
    pub fn seeds(&self) -> Vec<String> {
        self.sequencers.iter().map(|n| n.addr.clone()).collect()
    }

    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.seeds(), &self.certs)
    }

    /// `tally log create` against the cluster.
    pub fn create_log(&self, log: u64, replication: u8) {
        let out = self.cli(&[
            "log",
            "create",
            "--log",
            &log.to_string(),
            "--replication",
            &replication.to_string(),
        ]);
        assert!(
            out.status.success(),
            "log create {log}: {}",
            text(&out.stderr)
        );
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(TALLY)
            .args(args)
            .args([
                "--seed",
                &self.seeds().join(","),
                "--certs",
                self.certs.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run tally")
    }

    /// Stops every node still running with SIGTERM (a clean stop), the sequencers first, then
    /// the storage nodes all at once, and waits for each exit.
    pub fn stop(&mut self) {
        let started = Instant::now();
        for group in [
            self.sequencers.drain(..).collect::<Vec<_>>(),
            std::mem::take(&mut self.storage).into_values().collect(),
        ] {
            for node in &group {
                node.sigterm();
            }
            for node in group {
                let id = node.id;
                let stderr = node.wait_stopped();
                if !stderr.trim().is_empty() {
                    eprintln!("node {id} stderr:\n{}", stderr.trim_end());
                }
            }
        }
        eprintln!("nodes stopped in {:.2?}", started.elapsed());
    }

    /// Takes storage node `id` out of the cluster (to kill or stop it).
    pub fn take_storage(&mut self, id: u32) -> Node {
        self.storage.remove(&id).expect("a running storage node")
    }

    /// Starts storage node `id` again on its config and data directory (a new port).
    pub fn start_storage(&mut self, id: u32) {
        assert!(!self.storage.contains_key(&id), "node {id} runs already");
        let node = self.spawn(id, "storage");
        self.storage.insert(id, node);
    }

    /// The data directory of storage node `id` (running or not).
    pub fn data_dir(&self, id: u32) -> PathBuf {
        self.dir.path().join(format!("data{id}"))
    }
}

/// Opens the LogsDB of stopped storage node `id` directly, removes its copy of `log` at `lsn`
/// (if it has one: the test hook behind a data-loss test) and closes it cleanly.
pub fn remove_copy(cluster: &Cluster, id: u32, log: LogId, lsn: Lsn) {
    let identity = NodeIdentity::new(cluster.name.clone(), NodeId(id));
    let db = LogsDb::open(
        cluster.data_dir(id),
        &identity,
        LogsDbConfig::default(),
        Arc::new(SystemClock),
    )
    .unwrap_or_else(|e| panic!("open the LogsDB of node {id}: {e}"));
    db.remove_copy_blocking(log, lsn)
        .unwrap_or_else(|e| panic!("node {id}: remove {log} at {lsn}: {e}"));
    db.close()
        .unwrap_or_else(|e| panic!("close the LogsDB of node {id}: {e}"));
}

/// One record's copies as the storage nodes' LogsDBs hold them.
#[derive(Debug, Default)]
pub struct Copies {
    /// Node → payload of its full copy (a payload-less amendment has an empty payload).
    pub by_node: BTreeMap<NodeId, Vec<u8>>,
}

/// Opens the LogsDB of each storage node in `nodes` directly (the node must be stopped) and
/// reads every record of `logs`: `(log, lsn)` → its copies. A copy that fails verification
/// fails the test.
pub fn read_stores(
    cluster: &Cluster,
    nodes: &[u32],
    logs: &[LogId],
) -> BTreeMap<(LogId, Lsn), Copies> {
    let mut all: BTreeMap<(LogId, Lsn), Copies> = BTreeMap::new();
    for &id in nodes {
        let identity = NodeIdentity::new(cluster.name.clone(), NodeId(id));
        let db = LogsDb::open(
            cluster.data_dir(id),
            &identity,
            LogsDbConfig::default(),
            Arc::new(SystemClock),
        )
        .unwrap_or_else(|e| panic!("open the LogsDB of node {id}: {e}"));
        for &log in logs {
            for item in db.read(log, Lsn::OLDEST, Lsn::MAX) {
                match item.unwrap_or_else(|e| panic!("node {id}: read {log}: {e}")) {
                    ReadItem::Record(rec) => {
                        assert_eq!(rec.header.log, log);
                        all.entry((log, rec.header.lsn))
                            .or_default()
                            .by_node
                            .insert(NodeId(id), rec.payload);
                    }
                    ReadItem::Corrupt { lsn, kind } => {
                        panic!("node {id}: corrupt copy of {log} at {lsn}: {kind:?}")
                    }
                    ReadItem::Trimmed { up_to } => {
                        panic!("node {id}: {log} trimmed up to {up_to}, nothing trims here")
                    }
                }
            }
        }
        db.close()
            .unwrap_or_else(|e| panic!("close the LogsDB of node {id}: {e}"));
    }
    all
}
