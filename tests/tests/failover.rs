//! Sequencer failover and preemption against real storage nodes (DESIGN §5, issue #7): an
//! in-process cluster ([`TestCluster`]: three storage nodes with real LogsDB, two sequencer
//! runtimes, real QUIC on loopback, one shared file epoch store), driven through the raw
//! client protocol so each step of a zombie sequencer can be acted out exactly.
//!
//! The story: sequencer A owns log L and runs epoch 1. B takes L over (`no_redirect`, as a
//! client that cannot reach A asks) in epoch 2; its recovery seals epoch 1. A never heard of
//! it and still grants in epoch 1 when asked — a store of such a grant is refused with
//! `Preempted`. The client tells A (`ReportPreempted`); A's next `Sequence` moves L to a new
//! epoch above B's (A owns L) and its grants store again. B, now the zombie, is told the same
//! way and redirects to A — unless asked with `no_redirect`, when it takes L again.
//!
//! Also: many concurrent reports and `Sequence`s cause one reactivation, and a report about an
//! epoch the sequencer already replaced is ignored. Every wait is for a condition with a
//! deadline; nothing sleeps.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tally::node::NodeSpec;
use tally_common::transport::{ClientProtocol, Connector, TlsIdentity};
use tally_common::wire::client::{ClientRequest, ClientResponse, Grant};
use tally_common::wire::{StoreBatch, StoreRecord, StoreStatus};
use tally_common::{
    Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, payload_crc32,
};
use tally_sequencer::recovery::RecoveryTiming;
use tally_sequencer::runtime::SequencerNode;
use tally_tests::cluster::{ClusterSpec, TestCluster, WAIT};
use tokio::time::Instant;

const R: u8 = 2;
/// Deadline of one raw request.
const CALL: Duration = Duration::from_secs(10);
const A: NodeId = NodeId(1);
const B: NodeId = NodeId(2);

/// Quick recovery; a `no_redirect` takeover that stays sticky for the whole test; grants that
/// never count as abandoned within a test (so no background reactivation interferes).
fn tweak(spec: &mut NodeSpec) {
    spec.sequencer.recovery = RecoveryTiming {
        digest_grace: Duration::from_millis(50),
        retry_interval: Duration::from_millis(100),
        attempt_timeout: Duration::from_secs(20),
        max_mutations_in_flight: 16,
    };
    spec.sequencer.recovery_request_timeout = Duration::from_secs(2);
    spec.sequencer.no_redirect_duration = Duration::from_secs(600);
    spec.sequencer.timing.append_timeout = Duration::from_secs(600);
}

async fn start() -> TestCluster {
    TestCluster::start(ClusterSpec {
        tweak,
        ..ClusterSpec::new(3, 2)
    })
    .await
    .expect("cluster starts")
}

fn addr(cluster: &TestCluster, id: NodeId) -> SocketAddr {
    cluster.addr(id).expect("node runs")
}

fn sequence(log: LogId, no_redirect: bool) -> ClientRequest {
    ClientRequest::Sequence {
        log,
        count: 1,
        no_redirect,
    }
}

fn report_preempted(log: LogId, epoch: Epoch, seal: Epoch) -> ClientRequest {
    ClientRequest::ReportPreempted { log, epoch, seal }
}

/// The raw client protocol, for what the client library is never told to do.
#[derive(Clone)]
struct Raw {
    client: std::sync::Arc<Connector<ClientProtocol>>,
}

impl Raw {
    fn new(cluster: &TestCluster) -> Raw {
        let identity = TlsIdentity::load(&cluster.certs_dir(), "client").unwrap();
        let client = Connector::new(&identity, cluster.client_config().transport).unwrap();
        Raw {
            client: std::sync::Arc::new(client),
        }
    }

    async fn call(&self, to: SocketAddr, req: ClientRequest) -> ClientResponse {
        self.client.call(to, &req, CALL).await.expect("answered")
    }

    /// `Sequence{log, 1}` to the sequencer at `to`; panics unless granted.
    async fn grant(&self, to: SocketAddr, log: LogId, no_redirect: bool) -> Grant {
        match self.call(to, sequence(log, no_redirect)).await {
            ClientResponse::Granted(g) => g,
            other => panic!("expected a grant of {log} from {to}, got {other:?}"),
        }
    }

    /// Stores the one LSN of `grant` on `node`, as a client's first wave would.
    async fn store(&self, cluster: &TestCluster, node: NodeId, grant: &Grant) -> StoreStatus {
        let copyset: Vec<NodeId> = grant.node_set.nodes()[..usize::from(R)].to_vec();
        let payload = format!("record at {}", grant.first).into_bytes();
        let batch = StoreBatch {
            log: grant.log,
            copyset: Copyset::new(copyset).unwrap(),
            wave_or_seal: 1,
            flags: RecordFlags::DURABLE,
            durability: Durability::Durable,
            lng: grant.lng,
            records: vec![StoreRecord {
                lsn: grant.first,
                timestamp_ms: grant.timestamp_ms,
                payload_crc32: payload_crc32(&payload),
                payload: payload.into(),
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

    /// Stores `grant` on R nodes of its node set and reports it to its sequencer, as a
    /// successful append does.
    async fn append(&self, cluster: &TestCluster, grant: &Grant) {
        for node in &grant.node_set.nodes()[..usize::from(R)] {
            let status = self.store(cluster, *node, grant).await;
            assert_eq!(
                status,
                StoreStatus::Stored,
                "store of {} on {node}",
                grant.first
            );
        }
        let report = ClientRequest::ReportStored {
            log: grant.log,
            first: grant.first,
            count: 1,
            copyset: Copyset::new(grant.node_set.nodes()[..usize::from(R)].to_vec()).unwrap(),
            wave: 1,
        };
        let answer = self.call(addr(cluster, grant.sequencer), report).await;
        assert_eq!(answer, ClientResponse::Ack, "report of {}", grant.first);
    }

    /// Stores `grant` on the first node of its node set and expects `Preempted`; returns the
    /// seal.
    async fn preempted_store(&self, cluster: &TestCluster, grant: &Grant) -> Epoch {
        let node = grant.node_set.nodes()[0];
        match self.store(cluster, node, grant).await {
            StoreStatus::Preempted { seal, .. } => {
                assert!(
                    seal >= grant.first.epoch(),
                    "seal {seal} below {}",
                    grant.first
                );
                seal
            }
            other => panic!(
                "a store of {} on {node} must be preempted: {other:?}",
                grant.first
            ),
        }
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

/// Waits until `seq` runs `log` and its recovery of the older epochs is done.
async fn wait_recovered(seq: &SequencerNode, log: LogId) {
    wait_for(&format!("recovery of {log} on {}", seq.id()), || {
        seq.recovery_pending(log) == Some(false)
    })
    .await;
}

/// A owns `log` and ran epoch 1 (one append stored and reported); B took it over with
/// `no_redirect` in epoch 2 and recovered epoch 1 (sealing it). A still runs epoch 1.
async fn zombie_a(cluster: &TestCluster, raw: &Raw) -> LogId {
    let log = cluster
        .create_log_owned_by(A, R)
        .await
        .expect("log created");
    let g1 = raw.grant(addr(cluster, A), log, false).await;
    assert_eq!(g1.first.epoch(), Epoch(1));
    raw.append(cluster, &g1).await;

    let g2 = raw.grant(addr(cluster, B), log, true).await;
    assert_eq!(
        g2.first.epoch(),
        Epoch(2),
        "B takes the log over in a new epoch"
    );
    let seq_b = cluster.sequencer(B).expect("B runs");
    wait_recovered(&seq_b, log).await;
    raw.append(cluster, &g2).await;
    let seq_a = cluster.sequencer(A).expect("A runs");
    assert_eq!(seq_a.log_state(log).map(|(e, _)| e), Some(Epoch(1)));
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_sequencer_moves_to_a_new_epoch_or_redirects() -> anyhow::Result<()> {
    let cluster = start().await;
    let raw = Raw::new(&cluster);
    let log = zombie_a(&cluster, &raw).await;
    let (a, b) = (addr(&cluster, A), addr(&cluster, B));
    let seq_a = cluster.sequencer(A).context("A runs")?;
    let seq_b = cluster.sequencer(B).context("B runs")?;

    // A, asked directly, still grants in its old epoch; storage nodes refuse the store.
    let zombie = raw.grant(a, log, false).await;
    assert_eq!(
        zombie.first.epoch(),
        Epoch(1),
        "A does not know it was replaced"
    );
    let seal = raw.preempted_store(&cluster, &zombie).await;

    // The client tells A. A stops granting in epoch 1 and, owning the log, moves to a new
    // epoch above B's on the next Sequence, recovering B's epoch.
    assert_eq!(
        raw.call(a, report_preempted(log, Epoch(1), seal)).await,
        ClientResponse::Ack
    );
    assert_eq!(seq_a.preemption(log), Some((Epoch(1), seal)));
    assert_eq!(
        seq_a.log_state(log),
        None,
        "a preempted epoch has no tail to tell"
    );
    let started = Instant::now();
    let g3 = raw.grant(a, log, false).await;
    eprintln!(
        "reactivation after ReportPreempted answered in {:?}",
        started.elapsed()
    );
    assert_eq!(g3.first.epoch(), Epoch(3), "the new epoch is above B's");
    assert_eq!(g3.sequencer, A);
    assert_eq!(seq_a.preemption(log), None);
    wait_recovered(&seq_a, log).await;
    raw.append(&cluster, &g3).await;
    let meta = cluster.store().get_log(log).await?;
    assert_eq!(meta.current_epoch(), Epoch(3));
    assert_eq!(meta.last_clean_epoch, Epoch(2), "A recovered B's epoch");

    // B is the zombie now: its no_redirect takeover keeps it serving epoch 2 until told.
    let zombie_b = raw.grant(b, log, false).await;
    assert_eq!(zombie_b.first.epoch(), Epoch(2));
    let seal_b = raw.preempted_store(&cluster, &zombie_b).await;
    assert!(seal_b >= Epoch(2));
    assert_eq!(
        raw.call(b, report_preempted(log, Epoch(2), seal_b)).await,
        ClientResponse::Ack
    );
    assert_eq!(seq_b.preemption(log), Some((Epoch(2), seal_b)));
    // B does not own the log: it redirects, without touching the epoch store.
    assert_eq!(
        raw.call(b, sequence(log, false)).await,
        ClientResponse::Redirect { owner: A }
    );
    assert_eq!(
        cluster.store().get_log(log).await?.current_epoch(),
        Epoch(3)
    );
    // Unless the client cannot reach A: then B takes the log again, in a new epoch.
    let g4 = raw.grant(b, log, true).await;
    assert_eq!(g4.first.epoch(), Epoch(4));
    wait_recovered(&seq_b, log).await;
    raw.append(&cluster, &g4).await;
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reports_and_sequences_reactivate_once() -> anyhow::Result<()> {
    let cluster = start().await;
    let raw = Raw::new(&cluster);
    let log = zombie_a(&cluster, &raw).await;
    let a = addr(&cluster, A);
    let zombie = raw.grant(a, log, false).await;
    let seal = raw.preempted_store(&cluster, &zombie).await;

    // Many clients learn of the seal at once; each reports it and asks for LSNs again.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let raw = raw.clone();
        tasks.push(tokio::spawn(async move {
            let ack = raw.call(a, report_preempted(log, Epoch(1), seal)).await;
            assert_eq!(ack, ClientResponse::Ack);
            raw.grant(a, log, false).await
        }));
    }
    let mut epochs = Vec::new();
    for task in tasks {
        epochs.push(task.await?.first.epoch());
    }
    assert!(
        epochs.iter().all(|e| *e == Epoch(3)),
        "every grant is in the one new epoch: {epochs:?}"
    );
    let meta = cluster.store().get_log(log).await?;
    assert_eq!(meta.current_epoch(), Epoch(3), "one reactivation: {meta:?}");
    let seq_a = cluster.sequencer(A).context("A runs")?;
    wait_recovered(&seq_a, log).await;
    assert_eq!(seq_a.recovery_stats().started, 1);
    cluster.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_for_an_epoch_no_longer_running_is_ignored() -> anyhow::Result<()> {
    let cluster = start().await;
    let raw = Raw::new(&cluster);
    let log = zombie_a(&cluster, &raw).await;
    let a = addr(&cluster, A);
    let seq_a = cluster.sequencer(A).context("A runs")?;
    let zombie = raw.grant(a, log, false).await;
    let seal = raw.preempted_store(&cluster, &zombie).await;
    raw.call(a, report_preempted(log, Epoch(1), seal)).await;
    let g3 = raw.grant(a, log, false).await;
    assert_eq!(g3.first.epoch(), Epoch(3));

    // A late copy of the same report, a report naming an epoch A never ran, and a report
    // for a log A does not run change nothing.
    for (l, epoch, seal) in [
        (log, Epoch(1), seal),
        (log, Epoch(2), Epoch(2)),
        (log, Epoch(4), Epoch(9)),
        (LogId(log.0 + 1), Epoch(3), Epoch(3)),
    ] {
        assert_eq!(
            raw.call(a, report_preempted(l, epoch, seal)).await,
            ClientResponse::Ack
        );
        assert_eq!(seq_a.preemption(log), None, "report ({l}, {epoch}, {seal})");
    }
    let next = raw.grant(a, log, false).await;
    assert_eq!(next.first, Lsn::new(Epoch(3), Esn(g3.first.esn().0 + 1)));
    assert_eq!(
        cluster.store().get_log(log).await?.current_epoch(),
        Epoch(3)
    );
    wait_recovered(&seq_a, log).await;
    raw.append(&cluster, &g3).await;
    raw.append(&cluster, &next).await;
    cluster.shutdown().await
}
