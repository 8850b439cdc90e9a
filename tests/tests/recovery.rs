//! Epoch recovery run by the sequencer runtime against real storage nodes (DESIGN §5, §9):
//! an in-process cluster ([`TestCluster`]: real LogsDB, real QUIC on loopback, one shared
//! file epoch store), the client library for ordinary appends, and the raw client and node
//! protocols to act out what ordinary clients cannot be told to do (take a grant and die, store
//! copies and never report them, seal nodes as a newer sequencer would).
//!
//! Scenarios: a failover where acknowledged records were never released; a restarted sequencer
//! recovering its own previous epoch; granted-but-never-stored LSNs turned into hole plugs with
//! an under-replicated record re-replicated and the epoch bridged; a stale sequencer whose
//! stores are refused once recovery sealed its epoch; a recovery that meets a higher seal and
//! steps down; a recovery that restarts until enough storage nodes are back.
//!
//! What is checked is read straight from each storage node's LogsDB (copies with their flags,
//! release points) and from the epoch store (last clean epoch and its tail). Every wait is for a
//! condition with a deadline; nothing sleeps to let things happen.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tally::node::NodeSpec;
use tally_common::meta::LogAttributes;
use tally_common::transport::{ClientProtocol, Connector, NodeProtocol, TlsIdentity};
use tally_common::wire::client::{ClientRequest, ClientResponse, Grant};
use tally_common::wire::node::{NodeRequest, NodeResponse};
use tally_common::wire::{ErrorCode, StoreBatch, StoreRecord, StoreStatus};
use tally_common::{
    Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, payload_crc32,
};
use tally_sequencer::recovery::RecoveryTiming;
use tally_sequencer::runtime::SequencerNode;
use tally_storage_node::logsdb::ReadItem;
use tally_tests::cluster::{ClusterSpec, TestCluster, WAIT};
use tokio::time::Instant;

const R: u8 = 2;
/// Deadline of one raw request.
const CALL: Duration = Duration::from_secs(10);

/// Recovery timing for a test: quick retries and grace, an attempt timeout that a healthy
/// recovery on a loaded machine never reaches.
fn quick_recovery(spec: &mut NodeSpec) {
    spec.sequencer.recovery = RecoveryTiming {
        digest_grace: Duration::from_millis(50),
        retry_interval: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(20),
        max_mutations_in_flight: 16,
    };
    spec.sequencer.recovery_request_timeout = Duration::from_secs(2);
}

/// Like [`quick_recovery`], with an attempt timeout short enough to see restarts.
fn restarting_recovery(spec: &mut NodeSpec) {
    quick_recovery(spec);
    spec.sequencer.recovery.attempt_timeout = Duration::from_millis(800);
    spec.sequencer.recovery_request_timeout = Duration::from_millis(500);
}

async fn start(storage: u32, sequencers: u32, tweak: fn(&mut NodeSpec)) -> TestCluster {
    TestCluster::start(ClusterSpec {
        tweak,
        ..ClusterSpec::new(storage, sequencers)
    })
    .await
    .expect("cluster starts")
}

fn addr(cluster: &TestCluster, id: NodeId) -> SocketAddr {
    cluster.addr(id).expect("node runs")
}

fn lsn(epoch: u32, esn: u32) -> Lsn {
    Lsn::new(Epoch(epoch), Esn(esn))
}

/// The raw client and node protocols, for what the client library is never told to do.
struct Raw {
    client: Connector<ClientProtocol>,
    node: Connector<NodeProtocol>,
}

impl Raw {
    fn new(cluster: &TestCluster) -> Raw {
        let certs = cluster.certs_dir();
        let config = cluster.client_config().transport;
        Raw {
            client: Connector::new(
                &TlsIdentity::load(&certs, "client").unwrap(),
                config.clone(),
            )
            .unwrap(),
            node: Connector::new(&TlsIdentity::load(&certs, "node").unwrap(), config).unwrap(),
        }
    }

    async fn call(&self, to: SocketAddr, req: ClientRequest) -> ClientResponse {
        self.client.call(to, &req, CALL).await.expect("answered")
    }

    /// `Sequence{log, count}` to the sequencer at `to`; panics unless granted.
    async fn grant(&self, to: SocketAddr, log: LogId, count: u32, no_redirect: bool) -> Grant {
        let req = ClientRequest::Sequence {
            log,
            count,
            no_redirect,
        };
        match self.call(to, req).await {
            ClientResponse::Granted(g) => g,
            other => panic!("expected a grant of {count} LSNs of {log}, got {other:?}"),
        }
    }

    /// Stores the `index`-th LSN of `grant` with `payload` on `node`, naming `copyset`, as a
    /// client's first wave would.
    async fn store(
        &self,
        cluster: &TestCluster,
        node: NodeId,
        grant: &Grant,
        index: u32,
        copyset: &[NodeId],
        payload: &[u8],
    ) -> StoreStatus {
        let batch = StoreBatch {
            log: grant.log,
            copyset: Copyset::new(copyset.to_vec()).unwrap(),
            wave_or_seal: 1,
            flags: RecordFlags::DURABLE,
            durability: Durability::Durable,
            lng: grant.lng,
            records: vec![StoreRecord {
                lsn: Lsn::new(grant.first.epoch(), Esn(grant.first.esn().0 + index)),
                timestamp_ms: grant.timestamp_ms,
                payload_crc32: payload_crc32(payload),
                payload: payload.to_vec().into(),
            }],
        };
        match self
            .call(addr(cluster, node), ClientRequest::Store(batch))
            .await
        {
            ClientResponse::StoreResult(status) => status,
            other => panic!("expected a store result from {node}, got {other:?}"),
        }
    }

    /// Stores the `index`-th LSN of `grant` on every node of `copyset`; panics unless stored.
    async fn store_all(
        &self,
        cluster: &TestCluster,
        grant: &Grant,
        index: u32,
        copyset: &[NodeId],
        payload: &[u8],
    ) {
        for node in copyset {
            let status = self
                .store(cluster, *node, grant, index, copyset, payload)
                .await;
            assert_eq!(status, StoreStatus::Stored, "store on {node}");
        }
    }

    /// Stores the first LSN of `grant` on every node of `copyset` and reports it to the
    /// sequencer `seq`, as a client's successful append does.
    async fn appended(
        &self,
        cluster: &TestCluster,
        seq: NodeId,
        grant: &Grant,
        copyset: &[NodeId],
        payload: &[u8],
    ) {
        self.store_all(cluster, grant, 0, copyset, payload).await;
        let report = ClientRequest::ReportStored {
            log: grant.log,
            first: grant.first,
            count: 1,
            copyset: Copyset::new(copyset.to_vec()).unwrap(),
            wave: 1,
        };
        assert_eq!(
            self.call(addr(cluster, seq), report).await,
            ClientResponse::Ack
        );
    }

    /// Seals `log` at `epoch` on storage node `node`, as a newer sequencer's recovery would.
    async fn seal(&self, cluster: &TestCluster, node: NodeId, log: LogId, epoch: Epoch) {
        let req = NodeRequest::Seal {
            log,
            epoch,
            sequencer: NodeId(999),
        };
        let resp = self
            .node
            .call(addr(cluster, node), &req, CALL)
            .await
            .expect("answered");
        assert!(
            matches!(resp, NodeResponse::Sealed { seal, .. } if seal >= epoch),
            "seal of {node}: {resp:?}"
        );
    }
}

/// One storage node's copy of one LSN.
#[derive(Debug, Clone)]
struct Held {
    node: NodeId,
    flags: RecordFlags,
    payload: Vec<u8>,
}

impl Held {
    fn is_record(&self) -> bool {
        !self.flags.contains(RecordFlags::HOLE)
    }
    fn is_plug(&self) -> bool {
        self.flags
            .contains(RecordFlags::HOLE | RecordFlags::WRITTEN_BY_RECOVERY)
            && !self.flags.contains(RecordFlags::BRIDGE)
    }
    fn is_bridge(&self) -> bool {
        self.flags
            .contains(RecordFlags::HOLE | RecordFlags::BRIDGE | RecordFlags::WRITTEN_BY_RECOVERY)
    }
}

/// Every copy of `log` on the running storage nodes, read from their LogsDBs.
fn held(cluster: &TestCluster, log: LogId) -> BTreeMap<Lsn, Vec<Held>> {
    let mut all: BTreeMap<Lsn, Vec<Held>> = BTreeMap::new();
    for node in cluster.storage_ids() {
        let Some(db) = cluster.logsdb(node) else {
            continue;
        };
        for item in db.read(log, Lsn::OLDEST, Lsn::MAX) {
            match item.expect("LogsDB reads") {
                ReadItem::Record(r) => all.entry(r.header.lsn).or_default().push(Held {
                    node,
                    flags: r.header.flags,
                    payload: r.payload,
                }),
                ReadItem::Trimmed { .. } => {}
                ReadItem::Corrupt { lsn, kind } => {
                    panic!("{node}: corrupt copy at {lsn}: {kind:?}")
                }
            }
        }
    }
    all
}

/// Asserts that every LSN of `acked` is held as a record with its payload by ≥ R nodes.
fn assert_fully_replicated(all: &BTreeMap<Lsn, Vec<Held>>, acked: &BTreeMap<Lsn, Vec<u8>>) {
    for (lsn, payload) in acked {
        let copies = all.get(lsn).map(Vec::as_slice).unwrap_or_default();
        let good = copies
            .iter()
            .filter(|c| c.is_record() && &c.payload == payload)
            .map(|c| c.node)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        assert!(
            good >= R as usize,
            "acked {lsn} must be held by {R} nodes, held: {copies:?}"
        );
        assert!(
            copies
                .iter()
                .all(|c| c.is_record() && &c.payload == payload),
            "no node may hold anything else at acked {lsn}: {copies:?}"
        );
    }
}

/// Waits until `done()` holds, checking every few ms, for at most [`WAIT`].
async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    let mut every = tokio::time::interval(Duration::from_millis(10));
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        every.tick().await;
    }
}

/// Stops node `id` and starts it again on its port.
async fn stop_and_restart(cluster: &mut TestCluster, id: NodeId) -> anyhow::Result<()> {
    cluster.stop(id).await?;
    cluster.restart(id).await
}

/// Waits until `seq` runs `log` and its recovery is done.
async fn wait_recovered(seq: &SequencerNode, log: LogId) {
    wait_for(&format!("recovery of {log} on {}", seq.id()), || {
        seq.recovery_pending(log) == Some(false)
    })
    .await;
}

/// Waits until every running storage node has `log` released at or past `lsn`.
async fn wait_released(cluster: &TestCluster, log: LogId, lsn: Lsn) {
    let nodes = cluster.storage_ids();
    wait_for(
        &format!("release of {log} through {lsn} everywhere"),
        || {
            nodes.iter().all(|n| {
                cluster
                    .logsdb(*n)
                    .is_none_or(|db| db.log_meta(log).last_released >= lsn)
            })
        },
    )
    .await;
}

fn max_released(cluster: &TestCluster, log: LogId) -> Lsn {
    cluster
        .storage_ids()
        .iter()
        .filter_map(|n| cluster.logsdb(*n))
        .map(|db| db.log_meta(log).last_released)
        .max()
        .unwrap_or(Lsn::INVALID)
}

/// Appends through the client library, and then acts out a client that stored each of
/// `unreported` more LSNs on R nodes (so its append was acknowledged) and died before
/// reporting them: the sequencer at `seq` never releases those. Returns every acked LSN.
async fn acked_with_unreported_tail(
    cluster: &TestCluster,
    raw: &Raw,
    seq: NodeId,
    log: LogId,
    appended: u32,
    unreported: u32,
) -> BTreeMap<Lsn, Vec<u8>> {
    let client = cluster.client().await.expect("client connects");
    let mut acked = BTreeMap::new();
    for i in 0..appended {
        let payload = format!("appended {i}").into_bytes();
        let lsn = client.append(log, payload.clone()).await.expect("append");
        assert_eq!(lsn.epoch(), Epoch(1));
        acked.insert(lsn, payload);
    }
    client.close().await;
    let storage = cluster.storage_ids();
    let g = raw.grant(addr(cluster, seq), log, unreported, false).await;
    assert_eq!(g.first.epoch(), Epoch(1));
    for i in 0..unreported {
        let n = storage.len();
        let copyset = [storage[i as usize % n], storage[(i as usize + 1) % n]];
        let payload = format!("unreported {i}").into_bytes();
        raw.store_all(cluster, &g, i, &copyset, &payload).await;
        acked.insert(Lsn::new(g.first.epoch(), Esn(g.first.esn().0 + i)), payload);
    }
    assert!(
        max_released(cluster, log) < g.first,
        "stored but unreported LSNs are never released by the sequencer that granted them"
    );
    acked
}

/// The checks after recovery of epoch 1 by `seq` (now in epoch 2): the last clean epoch and
/// its tail (the bridge right after the last acked LSN), every acked record on R nodes, the
/// bridge on R nodes, and releases through an append of the new epoch.
async fn assert_epoch_one_recovered(
    cluster: &TestCluster,
    seq: &SequencerNode,
    log: LogId,
    acked: &BTreeMap<Lsn, Vec<u8>>,
    new_epoch_lsn: Lsn,
) {
    wait_recovered(seq, log).await;
    let last_acked = *acked.keys().next_back().unwrap();
    let bridge = lsn(1, last_acked.esn().0 + 1);
    let meta = cluster.store().get_log(log).await.unwrap();
    assert_eq!(
        (meta.last_clean_epoch, meta.last_clean_tail),
        (Epoch(1), bridge),
        "epoch 1 is recorded clean with its bridge as the tail"
    );
    let all = held(cluster, log);
    assert_fully_replicated(&all, acked);
    let bridges: Vec<&Held> = all[&bridge].iter().filter(|c| c.is_bridge()).collect();
    assert!(
        bridges.len() >= R as usize,
        "bridge at {bridge}: {:?}",
        all[&bridge]
    );
    assert!(
        all.range(bridge.next()..lsn(2, 0)).next().is_none(),
        "nothing of epoch 1 past its bridge"
    );
    // The recovered tail and the new epoch's completed prefix are released everywhere.
    wait_released(cluster, log, new_epoch_lsn).await;
    let stats = seq.recovery_stats();
    assert_eq!(
        (stats.completed, stats.epochs_recovered),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(stats.active, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_records_are_released_after_a_failover() -> anyhow::Result<()> {
    let mut cluster = start(3, 2, quick_recovery).await;
    let (a, b) = (NodeId(1), NodeId(2));
    let log = cluster.create_log_owned_by(a, R).await?;
    let raw = Raw::new(&cluster);
    let acked = acked_with_unreported_tail(&cluster, &raw, a, log, 10, 3).await;

    // Sequencer A goes away; B owns the log once it sees A leave.
    cluster.stop(a).await?;
    let seq_b = cluster.sequencer(b).context("B runs")?;
    let mut view = seq_b.membership().subscribe();
    tokio::time::timeout(WAIT, view.wait_for(|v| v.owner(log) == Some(b)))
        .await
        .context("B never saw A leave")??;
    assert_eq!(seq_b.recovery_stats().started, 0);

    // The next append goes to B, which activates epoch 2 and recovers epoch 1.
    let client = cluster.client().await?;
    let new = client.append(log, b"after the failover".to_vec()).await?;
    assert_eq!(new.epoch(), Epoch(2));
    assert_epoch_one_recovered(&cluster, &seq_b, log, &acked, new).await;
    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sequencer_recovers_its_previous_epoch() -> anyhow::Result<()> {
    let mut cluster = start(3, 1, quick_recovery).await;
    let a = NodeId(1);
    let log = cluster.create_log_owned_by(a, R).await?;
    let raw = Raw::new(&cluster);
    let acked = acked_with_unreported_tail(&cluster, &raw, a, log, 5, 2).await;

    stop_and_restart(&mut cluster, a).await?;
    let client = cluster.client().await?;
    let new = client.append(log, b"after the restart".to_vec()).await?;
    assert_eq!(new.epoch(), Epoch(2));
    let seq = cluster.sequencer(a).context("A runs again")?;
    assert_epoch_one_recovered(&cluster, &seq, log, &acked, new).await;

    // A log activated for the first time needs no recovery and releases at once.
    let fresh = LogId(log.0 + 1000);
    let attributes = LogAttributes {
        replication: R,
        ..LogAttributes::default()
    };
    cluster.create_log(fresh, attributes).await?;
    let first = client.append(fresh, b"first".to_vec()).await?;
    assert_eq!(first, lsn(1, 1));
    assert_eq!(seq.recovery_pending(fresh), Some(false));
    wait_released(&cluster, fresh, first).await;
    assert_eq!(
        seq.recovery_stats().started,
        1,
        "only the restarted log recovered"
    );
    client.close().await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstored_grants_become_hole_plugs_and_the_epoch_is_bridged() -> anyhow::Result<()> {
    let mut cluster = start(3, 2, quick_recovery).await;
    let (a, b) = (NodeId(1), NodeId(2));
    let log = cluster.create_log_owned_by(a, R).await?;
    let raw = Raw::new(&cluster);
    let s = cluster.storage_ids();

    // A client takes e1n1..e1n6 and dies part-way: n1 and n4 are acknowledged (R copies),
    // n3 reached one node only, n2, n5 and n6 were never stored.
    let g = raw.grant(addr(&cluster, a), log, 6, false).await;
    assert_eq!(g.first, lsn(1, 1));
    raw.store_all(&cluster, &g, 0, &[s[0], s[1]], b"one").await;
    raw.store_all(&cluster, &g, 2, &[s[2]], b"three").await;
    raw.store_all(&cluster, &g, 3, &[s[1], s[2]], b"four").await;
    cluster.stop(a).await?;

    // Another client cannot reach A and asks B to take over.
    let g2 = raw.grant(addr(&cluster, b), log, 1, true).await;
    assert_eq!(g2.first, lsn(2, 1));
    raw.appended(&cluster, b, &g2, &[s[0], s[2]], b"new epoch")
        .await;

    let seq_b = cluster.sequencer(b).context("B runs")?;
    wait_recovered(&seq_b, log).await;
    let all = held(&cluster, log);
    let acked: BTreeMap<Lsn, Vec<u8>> = [
        (lsn(1, 1), b"one".to_vec()),
        (lsn(1, 3), b"three".to_vec()),
        (lsn(1, 4), b"four".to_vec()),
    ]
    .into();
    assert_fully_replicated(&all, &acked);
    let rereplicated = all[&lsn(1, 3)]
        .iter()
        .filter(|c| c.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY))
        .count();
    assert!(
        rereplicated >= R as usize,
        "n3 re-replicated: {:?}",
        all[&lsn(1, 3)]
    );
    let plugs = all[&lsn(1, 2)].iter().filter(|c| c.is_plug()).count();
    assert!(
        plugs >= R as usize && all[&lsn(1, 2)].iter().all(Held::is_plug),
        "n2 is a hole plug: {:?}",
        all[&lsn(1, 2)]
    );
    let bridges = all[&lsn(1, 5)].iter().filter(|c| c.is_bridge()).count();
    assert!(bridges >= R as usize, "bridge at n5: {:?}", all[&lsn(1, 5)]);
    assert!(!all.contains_key(&lsn(1, 6)), "nothing past the bridge");

    let meta = cluster.store().get_log(log).await?;
    assert_eq!(
        (meta.last_clean_epoch, meta.last_clean_tail),
        (Epoch(1), lsn(1, 5))
    );
    wait_released(&cluster, log, g2.first).await;
    let stats = seq_b.recovery_stats();
    assert_eq!((stats.holes_plugged, stats.bridges), (1, 1), "{stats:?}");
    assert!(stats.records_rereplicated >= 1, "{stats:?}");
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_sequencer_gets_no_store_acknowledged_after_the_seal() -> anyhow::Result<()> {
    let cluster = start(3, 2, quick_recovery).await;
    let (a, b) = (NodeId(1), NodeId(2));
    let log = cluster.create_log_owned_by(a, R).await?;
    let raw = Raw::new(&cluster);
    let s = cluster.storage_ids();

    let old = raw.grant(addr(&cluster, a), log, 2, false).await;
    raw.store_all(&cluster, &old, 0, &[s[0], s[1]], b"before")
        .await;

    // B takes over while A still runs and believes it owns epoch 1.
    let g2 = raw.grant(addr(&cluster, b), log, 1, true).await;
    assert_eq!(g2.first, lsn(2, 1));
    let seq_b = cluster.sequencer(b).context("B runs")?;
    wait_recovered(&seq_b, log).await;

    // The client holding A's grant stores its second LSN now: every node refuses.
    for node in &s {
        let status = raw
            .store(&cluster, *node, &old, 1, &[s[0], s[1], s[2]], b"late")
            .await;
        assert!(
            matches!(status, StoreStatus::Preempted { seal, .. } if seal >= Epoch(1)),
            "{node}: {status:?}"
        );
    }
    // A still grants in epoch 1 (no message tells it yet); its stores are refused too.
    let stale = raw.grant(addr(&cluster, a), log, 1, false).await;
    assert_eq!(stale.first, lsn(1, 3));
    for node in &s {
        let status = raw
            .store(&cluster, *node, &stale, 0, &[s[0], s[1], s[2]], b"stale")
            .await;
        assert!(
            matches!(status, StoreStatus::Preempted { .. }),
            "{node}: {status:?}"
        );
    }
    // Recovery's bridge at e1n2 is all there is past the acknowledged record.
    let all = held(&cluster, log);
    assert!(
        all[&lsn(1, 2)].iter().all(Held::is_bridge),
        "{:?}",
        all[&lsn(1, 2)]
    );
    assert!(!all.contains_key(&lsn(1, 3)));
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_that_meets_a_higher_seal_steps_down() -> anyhow::Result<()> {
    let mut cluster = start(3, 1, quick_recovery).await;
    let a = NodeId(1);
    let log = cluster.create_log_owned_by(a, R).await?;
    let raw = Raw::new(&cluster);
    let s = cluster.storage_ids();
    let g = raw.grant(addr(&cluster, a), log, 1, false).await;
    raw.store_all(&cluster, &g, 0, &[s[0], s[1]], b"one").await;

    // A newer sequencer (epoch 8) sealed every node; then A restarts into epoch 2.
    for node in &s {
        raw.seal(&cluster, *node, log, Epoch(7)).await;
    }
    stop_and_restart(&mut cluster, a).await?;
    let seq = cluster.sequencer(a).context("A runs again")?;
    let g2 = raw.grant(addr(&cluster, a), log, 1, false).await;
    assert_eq!(
        g2.first,
        lsn(2, 1),
        "appends are granted while recovery runs"
    );

    wait_for("recovery preempted", || seq.recovery_stats().preempted == 1).await;
    assert_eq!(
        seq.preemption(log),
        Some((Epoch(2), Epoch(7))),
        "the preempted epoch stops granting"
    );
    assert_eq!(seq.recovery_pending(log), Some(true), "and never releases");
    let meta = cluster.store().get_log(log).await?;
    assert_eq!(meta.last_clean_epoch, Epoch::INVALID);
    let stats = seq.recovery_stats();
    assert_eq!((stats.completed, stats.stores_sent), (0, 0), "{stats:?}");
    // Not for good: A owns the log, so its next Sequences move the log to new epochs. This
    // seal came from no sequencer (the store's epochs are below it), so epochs 3..=7 are
    // preempted by their own recoveries in turn and requests meanwhile may be granted in them
    // or answered `Unavailable`; the first epoch above the seal recovers and stays.
    let deadline = Instant::now() + WAIT;
    let settled = loop {
        assert!(
            Instant::now() < deadline,
            "the log never moved past the seal"
        );
        let req = ClientRequest::Sequence {
            log,
            count: 1,
            no_redirect: false,
        };
        match raw.call(addr(&cluster, a), req).await {
            ClientResponse::Granted(g) if g.first.epoch() > Epoch(7) => break g,
            ClientResponse::Granted(g) => assert!(g.first.epoch() > Epoch(2), "{g:?}"),
            ClientResponse::Error(e) => assert_eq!(e.code, ErrorCode::Unavailable, "{e}"),
            other => panic!("a preempted owner moves on, never answers {other:?}"),
        }
    };
    assert_eq!(settled.first, lsn(8, 1));
    wait_recovered(&seq, log).await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_restarts_until_enough_storage_nodes_are_back() -> anyhow::Result<()> {
    let mut cluster = start(3, 1, restarting_recovery).await;
    let a = NodeId(1);
    let log = cluster.create_log_owned_by(a, R).await?;
    let raw = Raw::new(&cluster);
    let s = cluster.storage_ids();
    let g = raw.grant(addr(&cluster, a), log, 2, false).await;
    raw.store_all(&cluster, &g, 0, &[s[0], s[1]], b"one").await;
    raw.store_all(&cluster, &g, 1, &[s[1], s[2]], b"two").await;

    // Two of three storage nodes go down: one seal is not an f-majority (2 of 3 with R = 2).
    cluster.stop(s[1]).await?;
    cluster.stop(s[2]).await?;
    stop_and_restart(&mut cluster, a).await?;
    let seq = cluster.sequencer(a).context("A runs again")?;
    let g2 = raw.grant(addr(&cluster, a), log, 1, false).await;
    assert_eq!(g2.first, lsn(2, 1));
    wait_for("a restarted recovery attempt", || {
        seq.recovery_stats().restarts >= 1
    })
    .await;
    assert_eq!(seq.recovery_pending(log), Some(true));

    for node in [s[1], s[2]] {
        cluster.restart(node).await?;
    }
    wait_recovered(&seq, log).await;
    let acked: BTreeMap<Lsn, Vec<u8>> =
        [(lsn(1, 1), b"one".to_vec()), (lsn(1, 2), b"two".to_vec())].into();
    assert_fully_replicated(&held(&cluster, log), &acked);
    let meta = cluster.store().get_log(log).await?;
    assert_eq!(
        (meta.last_clean_epoch, meta.last_clean_tail),
        (Epoch(1), lsn(1, 3))
    );
    wait_released(&cluster, log, lsn(1, 3)).await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unclean_epoch_is_recovered_oldest_first() -> anyhow::Result<()> {
    let mut cluster = start(3, 2, quick_recovery).await;
    let (a, b) = (NodeId(1), NodeId(2));
    let log = cluster.create_log_owned_by(a, R).await?;
    let raw = Raw::new(&cluster);
    let s = cluster.storage_ids();
    let g = raw.grant(addr(&cluster, a), log, 3, false).await;
    raw.store_all(&cluster, &g, 0, &[s[0], s[1]], b"one").await;
    raw.store_all(&cluster, &g, 1, &[s[1], s[2]], b"two").await;
    cluster.stop(a).await?;
    // A sequencer activated epoch 2 and died before it wrote anything.
    let two = cluster
        .store()
        .activate(log, tally_epochstore::ActivateOptions::default())
        .await?;
    assert_eq!(two.epoch, Epoch(2));

    let g3 = raw.grant(addr(&cluster, b), log, 1, true).await;
    assert_eq!(g3.first, lsn(3, 1));
    let seq_b = cluster.sequencer(b).context("B runs")?;
    wait_recovered(&seq_b, log).await;

    let all = held(&cluster, log);
    let acked: BTreeMap<Lsn, Vec<u8>> =
        [(lsn(1, 1), b"one".to_vec()), (lsn(1, 2), b"two".to_vec())].into();
    assert_fully_replicated(&all, &acked);
    for bridge in [lsn(1, 3), lsn(2, 1)] {
        let copies = all.get(&bridge).map(Vec::as_slice).unwrap_or_default();
        assert!(
            copies.iter().filter(|c| c.is_bridge()).count() >= R as usize,
            "bridge at {bridge}: {copies:?}"
        );
    }
    let meta = cluster.store().get_log(log).await?;
    assert_eq!(
        (meta.last_clean_epoch, meta.last_clean_tail),
        (Epoch(2), lsn(2, 1))
    );
    let stats = seq_b.recovery_stats();
    assert_eq!(
        (stats.completed, stats.epochs_recovered),
        (1, 2),
        "{stats:?}"
    );
    assert_eq!(stats.restarts, 0, "{stats:?}");
    wait_released(&cluster, log, lsn(2, 1)).await;
    cluster.shutdown().await
}

/// DESIGN §7 purging. A storage node down during a recovery misses it: it still holds copies
/// the recovery overruled (a record where the others got a hole plug, and one at the bridge's
/// ESN). When it comes back, the first release by the new epoch's sequencer makes it purge
/// them (what recovery decided comes from the epoch store) before it releases anything, so no
/// reader ever gets those records; everything acknowledged stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_a_recovery_purges_what_it_overruled() -> anyhow::Result<()> {
    let mut cluster = start(4, 2, quick_recovery).await;
    let (a, b) = (NodeId(1), NodeId(2));
    let log = cluster.create_log_owned_by(a, R).await?;
    let raw = Raw::new(&cluster);
    let s = cluster.storage_ids();
    let late = s[3];

    // A client takes e1n1..e1n4: n1 and n3 are acknowledged (R copies); n2 and n4 reached only
    // `late`, which then goes down.
    let g = raw.grant(addr(&cluster, a), log, 4, false).await;
    assert_eq!(g.first, lsn(1, 1));
    raw.store_all(&cluster, &g, 0, &[s[0], s[1]], b"one").await;
    raw.store_all(&cluster, &g, 1, &[late], b"overruled two")
        .await;
    raw.store_all(&cluster, &g, 2, &[s[1], s[2]], b"three")
        .await;
    raw.store_all(&cluster, &g, 3, &[late], b"overruled four")
        .await;
    cluster.stop(late).await?;
    cluster.stop(a).await?;

    // B takes over and recovers epoch 1 from the three other nodes: a hole plug at n2, the
    // bridge at n4.
    let g2 = raw.grant(addr(&cluster, b), log, 1, true).await;
    assert_eq!(g2.first, lsn(2, 1));
    raw.appended(&cluster, b, &g2, &[s[0], s[2]], b"new epoch")
        .await;
    let seq_b = cluster.sequencer(b).context("B runs")?;
    wait_recovered(&seq_b, log).await;
    let meta = cluster.store().get_log(log).await?;
    assert_eq!(meta.last_clean_tail, lsn(1, 4), "bridge at n4");
    let decided = meta.recovered_epoch(Epoch(1)).copied();
    assert!(
        decided.is_some_and(|d| d.authoritative && d.seal == Epoch(1)),
        "the epoch store keeps what the recovery decided: {decided:?}"
    );
    wait_released(&cluster, log, g2.first).await;

    // `late` comes back holding what the recovery overruled; B's release reaches it.
    cluster.restart(late).await?;
    wait_released(&cluster, log, g2.first).await;
    let node = cluster.storage(late).context("late runs")?;
    assert_eq!(
        node.purge_stats().purged_copies,
        2,
        "{:?}",
        node.purge_stats()
    );
    let db = cluster.logsdb(late).context("late runs")?;
    assert!(
        db.log_meta(log).seal >= Epoch(1),
        "epoch 1 is closed on the purged node too"
    );
    let all = held(&cluster, log);
    for overruled in [lsn(1, 2), lsn(1, 4)] {
        assert!(
            all[&overruled]
                .iter()
                .all(|c| c.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY)),
            "{overruled} holds only recovery's writes: {:?}",
            all[&overruled]
        );
    }
    let acked: BTreeMap<Lsn, Vec<u8>> = [
        (lsn(1, 1), b"one".to_vec()),
        (lsn(1, 3), b"three".to_vec()),
        (g2.first, b"new epoch".to_vec()),
    ]
    .into();
    assert_fully_replicated(&all, &acked);

    // What `late` itself ships to a reader of epoch 1 and the new record: none of the
    // overruled records (a reader may take a record from whichever node answers first).
    let start_read = ClientRequest::StartRead {
        log,
        from: Lsn::OLDEST,
        until: g2.first,
        window_until: g2.first,
        filter: Default::default(),
    };
    let mut stream = raw
        .client
        .open(addr(&cluster, late), &start_read, CALL)
        .await?;
    let mut shipped = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, stream.next()).await?? {
            Some(ClientResponse::Records(records)) => {
                shipped.extend(records.into_iter().map(|r| (r.header.lsn, r.header.flags)))
            }
            Some(ClientResponse::Gap { .. }) => {}
            Some(ClientResponse::ReadDone) | None => break,
            Some(other) => panic!("unexpected answer on a read stream: {other:?}"),
        }
    }
    assert!(
        shipped.iter().all(|(l, _)| l.epoch() != Epoch(1)),
        "the purged node ships nothing of epoch 1: {shipped:?}"
    );

    // A reader hearing from every copy (no single-copy delivery) gets exactly the acked
    // records, the hole plug and the bridge.
    let client = cluster.client().await?;
    let options = tally_client::ReadOptions {
        single_copy: false,
        ..tally_client::ReadOptions::range(
            tally_client::ReadFrom::Oldest,
            tally_client::ReadUntil::Lsn(g2.first),
        )
    };
    let mut reader = client.read(log, options).await?;
    let mut got = BTreeMap::new();
    while let Some(d) = tokio::time::timeout(WAIT, reader.next())
        .await
        .context("reader stalled")?
    {
        if let tally_client::Delivery::Record(r) = d? {
            got.insert(r.header.lsn, r.payload);
        }
    }
    assert_eq!(got, acked);
    client.close().await;
    cluster.shutdown().await
}
