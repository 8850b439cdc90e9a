//! The multi-process acceptance tests of the write path (issue 5): etcd, 5 storage-only nodes
//! and 2 sequencer-only nodes, each its own `tally server` process, and writers using the
//! client library in this process.
//!
//! - 8 concurrent writers append 100,000 records to 10 logs with R = 3; LSNs are unique per
//!   log, each writer's LSNs on a log increase, and after a clean stop every acknowledged
//!   record is on at least 3 nodes' LogsDBs (opened directly) with its exact payload.
//! - A storage node SIGKILLed during such a load: appends keep succeeding, the only error
//!   allowed is `Indeterminate`, and every acknowledged record is intact on 3 nodes, the
//!   killed node's store (reopened) included.
//! - With fewer than R storage nodes reachable an append fails with a typed error within its
//!   append timeout.
//!
//! Writers: each writer is its own `Client`; it writes to every log through one lane per log,
//! and a lane's calls are sequential (each awaited before the next), so a writer's records on
//! one log must get increasing LSNs. The 100,000-record load appends in `append_batch` calls
//! of 10 records (one grant of 10 consecutive LSNs each); the SIGKILL load appends one record
//! per `append`. Payloads encode writer, log and sequence number, so every copy found on disk
//! can be traced to its append. Logs use the default durability (`durable`: acknowledged after
//! fsync). Each test prints what it measured (throughput, latency, `Indeterminate` count).
//!
//! Nothing sleeps for a fixed time and nothing is retried: waits are for ready lines, process
//! exits, membership views and acknowledged counts.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Cluster, T, read_stores, serial};
use tally_client::{AppendError, Client, ClientConfig, IndeterminateCause};
use tally_common::{LogId, Lsn, NodeId};
use tokio::sync::watch;

const R: u8 = 3;
const STORAGE_NODES: u32 = 5;
const SEQUENCER_NODES: u32 = 2;
const WRITERS: u32 = 8;
const LOGS: u64 = 10;
/// Records per `append_batch` call of the 100,000-record load.
const BATCH: u32 = 10;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn logs() -> Vec<LogId> {
    (1..=LOGS).map(LogId).collect()
}

/// The payload of `writer`'s record `seq` on `log`: unique, and traceable from a copy on disk.
fn payload(writer: u32, log: LogId, seq: u32) -> Vec<u8> {
    format!("writer {writer:02} log {:02} seq {seq:06}", log.0).into_bytes()
}

/// `(writer, log, seq)` of a payload made by [`payload`].
fn parse(payload: &[u8]) -> (u32, u64, u32) {
    let text = std::str::from_utf8(payload).expect("payload is text");
    let words: Vec<&str> = text.split(' ').collect();
    match words.as_slice() {
        ["writer", w, "log", l, "seq", s] => {
            (w.parse().unwrap(), l.parse().unwrap(), s.parse().unwrap())
        }
        _ => panic!("not a test payload: {text:?}"),
    }
}

/// One append's outcome.
#[derive(Debug)]
struct Outcome {
    writer: u32,
    log: LogId,
    seq: u32,
    result: Result<Lsn, AppendError>,
    took: Duration,
}

/// What a load produced.
struct Load {
    outcomes: Vec<Outcome>,
    elapsed: Duration,
}

impl Load {
    fn acked(&self) -> impl Iterator<Item = (&Outcome, Lsn)> {
        self.outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().ok().map(|lsn| (o, *lsn)))
    }

    fn errors(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.result.is_err()).collect()
    }
}

/// Starts `WRITERS` writers, each its own client, appending `per_lane` records to every log
/// (one sequential lane per log) in calls of `batch` records: `append` when 1, else
/// `append_batch` (one grant of consecutive LSNs per call). `acked` counts acknowledged
/// records as they happen.
async fn start_load(
    config: ClientConfig,
    per_lane: u32,
    batch: u32,
    acked: Arc<watch::Sender<u64>>,
) -> tokio::task::JoinHandle<Load> {
    assert_eq!(per_lane % batch, 0);
    let mut clients = Vec::new();
    for _ in 0..WRITERS {
        clients.push(
            Client::connect(config.clone())
                .await
                .expect("connect a writer"),
        );
    }
    tokio::spawn(async move {
        let start = Instant::now();
        let mut lanes = tokio::task::JoinSet::new();
        for (writer, client) in (0..).zip(&clients) {
            for log in logs() {
                let client = client.clone();
                let acked = acked.clone();
                lanes.spawn(async move {
                    let mut outcomes = Vec::with_capacity(per_lane as usize);
                    for first in (0..per_lane).step_by(batch as usize) {
                        let seqs = first..first + batch;
                        let started = Instant::now();
                        let result = if batch == 1 {
                            client
                                .append(log, payload(writer, log, first))
                                .await
                                .map(|lsn| lsn..=lsn)
                        } else {
                            let payloads = seqs.clone().map(|s| payload(writer, log, s)).collect();
                            client.append_batch(log, payloads).await
                        };
                        let took = started.elapsed();
                        if let Ok(lsns) = &result {
                            assert_eq!(
                                lsns.end().0 - lsns.start().0 + 1,
                                u64::from(batch),
                                "a batch of {batch} got {lsns:?}"
                            );
                            acked.send_modify(|n| *n += u64::from(batch));
                        }
                        for (i, seq) in seqs.enumerate() {
                            outcomes.push(Outcome {
                                writer,
                                log,
                                seq,
                                result: result.clone().map(|lsns| Lsn(lsns.start().0 + i as u64)),
                                took,
                            });
                        }
                    }
                    outcomes
                });
            }
        }
        let mut outcomes = Vec::new();
        while let Some(lane) = lanes.join_next().await {
            outcomes.extend(lane.expect("writer lane panicked"));
        }
        let elapsed = start.elapsed();
        for client in clients {
            client.close().await;
        }
        Load { outcomes, elapsed }
    })
}

/// LSNs are unique per log, and each writer's LSNs on a log increase in append order.
fn check_lsns(load: &Load) {
    let mut seen: HashMap<(LogId, Lsn), (u32, u32)> = HashMap::new();
    for (o, lsn) in load.acked() {
        if let Some(first) = seen.insert((o.log, lsn), (o.writer, o.seq)) {
            panic!(
                "{} at {lsn} acknowledged twice: to writer/seq {first:?} and {:?}",
                o.log,
                (o.writer, o.seq)
            );
        }
    }
    let mut lanes: BTreeMap<(u32, LogId), Vec<(u32, Lsn)>> = BTreeMap::new();
    for (o, lsn) in load.acked() {
        lanes
            .entry((o.writer, o.log))
            .or_default()
            .push((o.seq, lsn));
    }
    for ((writer, log), mut lane) in lanes {
        lane.sort_unstable();
        for w in lane.windows(2) {
            assert!(
                w[0].1 < w[1].1,
                "writer {writer} on {log}: seq {} got {} but the later seq {} got {}",
                w[0].0,
                w[0].1,
                w[1].0,
                w[1].1
            );
        }
    }
}

/// Reads the LogsDB of every storage node directly and checks every acknowledged record is
/// there with its exact payload on at least R nodes; every copy on disk belongs to the
/// append that got its LSN (acknowledged) or to an append that failed (an unacknowledged
/// copy of an `Indeterminate` append), and no payload is stored at two LSNs. Returns how many
/// copies of unacknowledged appends were found, and each node's count of acknowledged copies.
fn check_stores(cluster: &Cluster, load: &Load) -> (usize, BTreeMap<NodeId, usize>) {
    let nodes: Vec<u32> = (1..=STORAGE_NODES).collect();
    let copies = read_stores(cluster, &nodes, &logs());
    let mut acked: HashMap<(LogId, Lsn), Vec<u8>> = HashMap::new();
    for (o, lsn) in load.acked() {
        acked.insert((o.log, lsn), payload(o.writer, o.log, o.seq));
    }
    let failed: BTreeSet<(u32, u64, u32)> = load
        .errors()
        .iter()
        .map(|o| (o.writer, o.log.0, o.seq))
        .collect();
    for ((log, lsn), expected) in &acked {
        let holders = copies
            .get(&(*log, *lsn))
            .map(|c| c.by_node.values().filter(|p| *p == expected).count())
            .unwrap_or(0);
        assert!(
            holders >= usize::from(R),
            "acknowledged {log} {lsn} is on {holders} nodes with its payload, not {R}: {:?}",
            copies.get(&(*log, *lsn))
        );
    }
    let mut placed: HashMap<Vec<u8>, (LogId, Lsn)> = HashMap::new();
    let mut unacked = 0;
    let mut per_node: BTreeMap<NodeId, usize> = BTreeMap::new();
    for ((log, lsn), c) in &copies {
        for (node, p) in &c.by_node {
            if p.is_empty() {
                // A payload-less amendment: only its full copies elsewhere carry a payload.
                continue;
            }
            match acked.get(&(*log, *lsn)) {
                Some(expected) => {
                    assert_eq!(
                        p, expected,
                        "node {node} holds another payload at acknowledged {log} {lsn}"
                    );
                    *per_node.entry(*node).or_default() += 1;
                }
                None => {
                    let (w, l, s) = parse(p);
                    assert_eq!(l, log.0, "node {node}: a payload of log {l} in {log}");
                    assert!(
                        failed.contains(&(w, l, s)),
                        "node {node} holds {:?} at unacknowledged {log} {lsn}, but that append \
                         did not fail",
                        String::from_utf8_lossy(p)
                    );
                    unacked += 1;
                }
            }
            if let Some(other) = placed.insert(p.clone(), (*log, *lsn)) {
                assert_eq!(
                    other,
                    (*log, *lsn),
                    "{:?} is stored at two LSNs",
                    String::from_utf8_lossy(p)
                );
            }
        }
    }
    (unacked, per_node)
}

fn report(what: &str, load: &Load) {
    let acked = load.acked().count();
    let mut took: Vec<Duration> = load.outcomes.iter().map(|o| o.took).collect();
    took.sort_unstable();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    eprintln!(
        "{what}: {acked} records acknowledged, {} failed, in {:.2?} ({:.0} records/s); latency \
         of one call p50 {:.1?} p99 {:.1?} max {:.1?}",
        load.errors().len(),
        load.elapsed,
        acked as f64 / load.elapsed.as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// Starts the cluster and creates the logs (R = 3, durable).
fn cluster(rt: &tokio::runtime::Runtime, name: &str) -> Cluster {
    let started = Instant::now();
    let cluster = rt.block_on(Cluster::start(name, STORAGE_NODES, SEQUENCER_NODES));
    for log in logs() {
        cluster.create_log(log.0, R);
    }
    eprintln!(
        "{name}: cluster up and logs created in {:.2?}",
        started.elapsed()
    );
    cluster
}

#[test]
fn concurrent_writers_get_unique_increasing_lsns_stored_on_r_nodes() {
    let _serial = serial();
    let rt = runtime();
    let mut cluster = cluster(&rt, "load");
    // 8 writers × 10 logs × 1250 = 100,000 records.
    let acked = Arc::new(watch::Sender::new(0));
    let load = rt.block_on(async {
        let load = start_load(cluster.client_config(), 1250, BATCH, acked).await;
        tokio::time::timeout(T, load)
            .await
            .expect("the load did not finish")
            .unwrap()
    });
    report("100k load", &load);
    assert_eq!(load.outcomes.len(), 100_000);
    let errors = load.errors();
    assert!(
        errors.is_empty(),
        "{} appends failed with every node up, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    check_lsns(&load);
    cluster.stop();
    let t = Instant::now();
    let (unacked, per_node) = check_stores(&cluster, &load);
    eprintln!(
        "stores checked in {:.2?}; acknowledged copies per node: {per_node:?}",
        t.elapsed()
    );
    assert_eq!(unacked, 0, "copies of appends that were never made");
}

#[test]
fn a_storage_node_killed_during_load_loses_no_acknowledged_append() {
    let _serial = serial();
    let rt = runtime();
    let mut cluster = cluster(&rt, "kill");
    // 8 writers × 10 logs × 250 = 20,000 records; node 3 is killed after 5,000 acks.
    let acked = Arc::new(watch::Sender::new(0));
    let mut progress = acked.subscribe();
    // A bounded wait for a stuck append (the default is 60 s): it ends as `Indeterminate`.
    let mut config = cluster.client_config();
    config.append.append_timeout = Duration::from_secs(10);
    let load = rt.block_on(start_load(config, 250, 1, acked.clone()));
    rt.block_on(async {
        tokio::time::timeout(T, progress.wait_for(|n| *n >= 5_000))
            .await
            .expect("5,000 appends were not acknowledged")
            .unwrap();
    });
    let victim = cluster.storage.remove(&3).unwrap();
    victim.kill();
    let at_kill = *acked.borrow();
    let load = rt.block_on(async {
        tokio::time::timeout(T, load)
            .await
            .expect("the load did not finish after the kill")
            .unwrap()
    });
    report("20k load with a SIGKILL", &load);
    assert_eq!(load.outcomes.len(), 20_000);
    let errors = load.errors();
    for o in &errors {
        assert!(
            matches!(o.result, Err(AppendError::Indeterminate { .. })),
            "writer {} seq {} on {}: {:?}, not Indeterminate",
            o.writer,
            o.seq,
            o.log,
            o.result
        );
    }
    let after_kill = load.acked().count() as u64 - at_kill;
    eprintln!(
        "killed node 3 after {at_kill} acks; {after_kill} acks after it, {} Indeterminate",
        errors.len()
    );
    assert!(after_kill > 0, "no append succeeded after the kill");
    check_lsns(&load);
    cluster.stop();
    let t = Instant::now();
    let (unacked, per_node) = check_stores(&cluster, &load);
    eprintln!(
        "stores checked in {:.2?}; acknowledged copies per node: {per_node:?}; {unacked} copies \
         of Indeterminate appends",
        t.elapsed()
    );
    // The killed node's acknowledged (fsynced) copies survived the SIGKILL and counted above.
    assert!(
        per_node.get(&NodeId(3)).copied().unwrap_or(0) > 0,
        "the killed node holds no acknowledged copy: {per_node:?}"
    );
}

#[test]
fn with_fewer_than_r_nodes_reachable_an_append_fails_typed_within_its_timeout() {
    let _serial = serial();
    let rt = runtime();
    let mut cluster = cluster(&rt, "short");
    let timeout = Duration::from_secs(2);
    let mut config = cluster.client_config();
    config.append.append_timeout = timeout;
    let client = rt.block_on(Client::connect(config)).expect("connect");
    let log = LogId(1);
    // Every node up: the log is activated with all five storage nodes in its node set.
    let first = rt
        .block_on(client.append(log, b"before".to_vec()))
        .expect("append with every node up");
    // Three of five storage nodes die: they stay registered (their leases run) but cannot
    // be reached, so no copyset of R = 3 can complete.
    for id in [3, 4, 5] {
        cluster.storage.remove(&id).unwrap().kill();
    }
    let started = Instant::now();
    let result = rt.block_on(client.append(log, b"after".to_vec()));
    let took = started.elapsed();
    eprintln!("append with 2 of 5 storage nodes up failed after {took:.2?}: {result:?}");
    // Copies may sit on the two live nodes or on unanswered stores: the outcome is unknown,
    // and the error must say so.
    let err = result.expect_err("append succeeded with 2 of 5 storage nodes up");
    assert_eq!(
        err,
        AppendError::Indeterminate {
            cause: IndeterminateCause::TimedOut
        }
    );
    assert!(!err.certainly_not_appended());
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "failed after {took:?}, the append timeout is {timeout:?}"
    );
    rt.block_on(client.close());
    cluster.stop();
    // The acknowledged append is intact on 3 nodes, the killed ones' stores included.
    let copies = read_stores(&cluster, &[1, 2, 3, 4, 5], &[log]);
    let holders = copies[&(log, first)]
        .by_node
        .values()
        .filter(|p| p.as_slice() == b"before")
        .count();
    assert!(holders >= usize::from(R), "{first} is on {holders} nodes");
}

/// Kill, delete, restart (DESIGN §7): storage node 1 is SIGKILLed, its data directory deleted
/// and the node started again under its id. It registers as data-loss, because the epoch
/// store has another directory bound to that id. With node 2 — the only other holder of the
/// records whose copies were on nodes 1 and 2 — down as well, a reader must not take node 1's
/// silence for proof: it stalls at the first such record waiting for node 2 (where, trusting
/// the wiped node, it would report those records as `DataLoss`), and once node 2 is back it
/// delivers every acknowledged record, with no `DataLoss`. With every node up, it reads
/// everything back at once.
#[test]
fn a_node_restarted_on_a_wiped_directory_is_not_taken_for_proof() {
    use tally_client::{Delivery, GapKind, ReadFrom, ReadOptions, ReadUntil};
    use tally_common::StorageState;

    let _serial = serial();
    let rt = runtime();
    let mut cluster = rt.block_on(Cluster::start("wiped", 3, 1));
    let log = LogId(1);
    cluster.create_log(log.0, 2);
    let client = rt
        .block_on(Client::connect(cluster.client_config()))
        .expect("connect");
    let payloads: Vec<Vec<u8>> = (0..300u32)
        .map(|i| format!("record {i:03}").into_bytes())
        .collect();
    let lsns = rt
        .block_on(client.append_batch(log, payloads.clone()))
        .expect("append");
    let (first, last) = (*lsns.start(), *lsns.end());

    cluster.take_storage(1).kill();
    std::fs::remove_dir_all(cluster.data_dir(1)).expect("delete node 1's data directory");
    cluster.start_storage(1);
    // Node 1 is back, under its id, as data-loss.
    let registered = async {
        loop {
            client
                .refresh_cluster()
                .await
                .expect("refresh the cluster state");
            let state = client.cluster().node(NodeId(1)).map(|n| n.state);
            match state {
                Some(StorageState::ReadWrite) | None => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(state) => return state,
            }
        }
    };
    let state = rt
        .block_on(async { tokio::time::timeout(T, registered).await })
        .expect("node 1 still registered read-write after its data directory was deleted");
    assert_eq!(state, StorageState::DataLoss);
    let want: Vec<(Lsn, Vec<u8>)> = payloads
        .into_iter()
        .enumerate()
        .map(|(i, p)| (Lsn(first.0 + i as u64), p))
        .collect();
    let records_of = |delivered: &[Delivery]| -> Vec<(Lsn, Vec<u8>)> {
        let mut records = Vec::new();
        for d in delivered {
            match d {
                Delivery::Record(r) => records.push((r.header.lsn, r.payload.clone())),
                Delivery::Gap { kind, from, to } => {
                    assert_ne!(*kind, GapKind::DataLoss, "DataLoss {from}..={to}");
                    panic!("a {kind:?} gap {from}..={to} inside acknowledged records");
                }
            }
        }
        records
    };
    let options = ReadOptions::range(ReadFrom::Lsn(first), ReadUntil::Lsn(last));

    // With nodes 2 and 3 up, everything reads back: where node 1 was to ship a record it no
    // longer has, the others' copies are found (single-copy delivery falls back).
    let all_up = rt.block_on(async {
        let mut reader = client
            .read(log, options.clone())
            .await
            .expect("start a reader");
        let mut delivered = Vec::new();
        while let Some(item) = tokio::time::timeout(T, reader.next())
            .await
            .expect("a delivery with every node up")
        {
            delivered.push(item.expect("read"));
        }
        delivered
    });
    assert!(
        records_of(&all_up) == want,
        "records differ with every node up"
    );

    cluster.take_storage(2).kill();
    let mut reader = rt
        .block_on(client.read(log, options))
        .expect("start a reader");
    let mut stalls = reader.stall_updates();
    let mut delivered: Vec<Delivery> = Vec::new();
    // Read until the reader says it waits (for node 2), or the end: the end would mean the
    // wiped node's silence counted.
    let stall = rt.block_on(async {
        loop {
            tokio::select! {
                item = reader.next() => match item {
                    Some(d) => delivered.push(d.expect("read")),
                    None => return None,
                },
                changed = stalls.changed() => {
                    changed.expect("the reader is alive");
                    let stall = stalls.borrow_and_update().clone();
                    if stall.is_some() {
                        return stall;
                    }
                }
            }
        }
    });
    let stall = stall
        .unwrap_or_else(|| panic!("the reader ended without waiting for node 2: {delivered:?}"));
    eprintln!(
        "reader stalled at {} waiting for {:?} after {} deliveries",
        stall.at,
        stall.waiting_for,
        delivered.len()
    );
    assert!(stall.waiting_for.contains(&NodeId(2)), "{stall:?}");
    assert!(stall.at <= last);

    cluster.start_storage(2);
    rt.block_on(async {
        while let Some(item) = tokio::time::timeout(T, reader.next())
            .await
            .expect("the reader went on once node 2 was back")
        {
            delivered.push(item.expect("read"));
        }
    });
    let records = records_of(&delivered);
    assert_eq!(records.len(), want.len());
    assert!(records == want, "records differ from the acknowledged ones");
    rt.block_on(client.close());
    cluster.stop();
}
