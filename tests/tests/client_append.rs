//! The client's append runtime against a real sequencer runtime (in-memory epoch store, real
//! QUIC on loopback with `generate_cluster_certs` certificates) and fake storage nodes that
//! keep the copies they are sent and can be told to stall or refuse: increasing unique LSNs,
//! R distinct holders for every acknowledged LSN, routing around a stalled node with a new
//! wave and AMENDs, typed failures when fewer than R nodes answer, oversized payloads refused
//! before anything is sent, and the buffered writer's batching.
//!
//! Coalescing: the sequencer's service is wrapped to count `Sequence` and `ReportStored`
//! requests and to hold `Sequence` requests at a gate. With the gate closed, one append's
//! grant request (on a task of its own) waits there while further appends, polled once each
//! (an append takes its place in the log's queue on its first poll), queue behind it; opening the gate sends them
//! as one batch. That makes the batches deterministic: exactly two grants, one STORE per
//! copy for each, increasing LSNs in issue order, one typed error for every caller of a failed
//! batch, waves and AMENDs for a coalesced batch.
//!
//! Every wait is for a condition (an append's outcome, a counter) with a deadline; nothing
//! sleeps.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tally_client::{AppendError, BufferedConfig, Client, ClientConfig};
use tally_common::meta::{LogAttributes, NodeInfo, Roles, StorageState};
use tally_common::placement;
use tally_common::transport::{
    ClientProtocol, Connector, NodeProtocol, RequestContext, Server, Service, TlsIdentity,
    TransportConfig, generate_cluster_certs,
};
use tally_common::wire::client::{ClientRequest, ClientResponse, SequenceAnswer, StoreAnswer};
use tally_common::wire::node::{NodeRequest, NodeResponse};
use tally_common::wire::{StoreBatch, StoreStatus};
use tally_common::{LogId, Lsn, NodeId, RecordFlags};
use tally_epochstore::{EpochStore, MemoryEpochStore, NodeLease};
use tally_sequencer::runtime::{
    SequencerConfig, SequencerDeps, SequencerNode, SequencerRuntime, run,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bounds every wait of a failing test; generous on a loaded machine.
const T: Duration = Duration::from_secs(30);

/// What a fake storage node does with a STORE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Keep the copy and answer `Stored`.
    Store,
    /// Never answer (until the server shuts down).
    Stall,
    /// Answer `Disabled`: nothing is kept.
    Refuse,
    /// Answer `Preempted` with a seal at the batch's epoch: nothing is kept.
    Preempt,
}

/// One STORE as a fake node received it.
#[derive(Clone, Debug)]
struct Received {
    node: NodeId,
    log: LogId,
    wave: u32,
    amend: bool,
    lsns: Vec<Lsn>,
}

/// What every fake node received and holds.
#[derive(Default, Debug)]
struct Seen {
    stores: Vec<Received>,
    /// The copies each node holds: (log, lsn) → payload.
    held: BTreeMap<NodeId, BTreeMap<(LogId, Lsn), Vec<u8>>>,
    /// AMENDs for copies the node did not hold: the client must never send these.
    bad_amends: Vec<Received>,
    /// `StoreMany` requests received (by all nodes).
    store_many: usize,
    /// While set, every node refuses `StoreMany` whole, as a version before it would (it
    /// cannot decode it); counted in `refused_many`.
    refuse_many: bool,
    refused_many: usize,
}

#[derive(Debug)]
struct FakeStorage {
    id: NodeId,
    mode: Mutex<Mode>,
    /// Shared by all fake nodes: the first node to receive a STORE while set stalls forever.
    stall_first: Arc<AtomicBool>,
    /// Likewise for the first STORE carrying more than one record (a coalesced batch).
    stall_first_batch: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    /// Stores wait to answer while this is false (shared by all fake nodes).
    gate: watch::Receiver<bool>,
}

impl FakeStorage {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }
}

impl Service<ClientProtocol> for FakeStorage {
    async fn call(&self, ctx: RequestContext, req: ClientRequest) -> ClientResponse {
        match req {
            ClientRequest::Store(batch) => self.store(&ctx, batch).await,
            // Batches of several appends that waited for this node together.
            ClientRequest::StoreMany(batches) => {
                {
                    let mut seen = self.seen.lock().unwrap();
                    if seen.refuse_many {
                        seen.refused_many += 1;
                        return ClientResponse::Error(tally_common::wire::RemoteError::new(
                            tally_common::wire::ErrorCode::BadRequest,
                            "invalid frame body: unknown enum variant",
                        ));
                    }
                    seen.store_many += 1;
                }
                let mut answers = Vec::new();
                for batch in batches {
                    answers.push(match self.store(&ctx, batch).await {
                        ClientResponse::StoreResult(s) => StoreAnswer::Status(s),
                        ClientResponse::Error(e) => StoreAnswer::Error(e),
                        other => panic!("fake store answered {other:?}"),
                    });
                }
                ClientResponse::StoreResults(answers)
            }
            _ => ClientResponse::Error(tally_common::wire::RemoteError::new(
                tally_common::wire::ErrorCode::BadRequest,
                "fake storage serves only Store and StoreMany",
            )),
        }
    }
}

impl FakeStorage {
    async fn store(&self, ctx: &RequestContext, batch: StoreBatch) -> ClientResponse {
        if self.stall_first.swap(false, Ordering::SeqCst)
            || (batch.records.len() > 1 && self.stall_first_batch.swap(false, Ordering::SeqCst))
        {
            *self.mode.lock().unwrap() = Mode::Stall;
        }
        let amend = batch.flags.contains(RecordFlags::AMEND);
        let received = Received {
            node: self.id,
            log: batch.log,
            wave: batch.wave_or_seal,
            amend,
            lsns: batch.records.iter().map(|r| r.lsn).collect(),
        };
        {
            self.seen.lock().unwrap().stores.push(received.clone());
        }
        let _ = self.gate.clone().wait_for(|open| *open).await;
        let mode = self.mode();
        {
            let mut seen = self.seen.lock().unwrap();
            if mode == Mode::Store {
                let held = seen.held.entry(self.id).or_default();
                let holds_all = batch
                    .records
                    .iter()
                    .all(|r| held.contains_key(&(batch.log, r.lsn)));
                if amend && !holds_all {
                    seen.bad_amends.push(received);
                } else if !amend {
                    for r in &batch.records {
                        held.insert((batch.log, r.lsn), r.payload.to_vec());
                    }
                }
            }
        }
        match mode {
            Mode::Store => ClientResponse::StoreResult(StoreStatus::Stored),
            Mode::Refuse => ClientResponse::StoreResult(StoreStatus::Disabled),
            Mode::Preempt => ClientResponse::StoreResult(StoreStatus::Preempted {
                seal: batch.records[0].lsn.epoch(),
                sequencer: None,
            }),
            Mode::Stall => {
                ctx.shutdown.cancelled().await;
                ClientResponse::StoreResult(StoreStatus::Overloaded)
            }
        }
    }
}

/// Acknowledges the sequencer's releases, so they do not fail on an unknown ALPN.
#[derive(Debug)]
struct AckReleases;

impl Service<NodeProtocol> for AckReleases {
    async fn call(&self, _ctx: RequestContext, _req: NodeRequest) -> NodeResponse {
        NodeResponse::Ack
    }
}

/// A sequencer's client service, with its grant requests (`Sequence`, and each ask of a
/// `SequenceMany`) and `ReportStored` requests counted, and grant requests held while the
/// gate is closed.
#[derive(Debug)]
struct Counting {
    inner: Arc<SequencerNode>,
    /// Grant requests received (counted before the gate): `Sequence`s, and the asks of
    /// `SequenceMany`s but those answered `NotActive` (asked again with a `Sequence`, which
    /// counts), so a grant counts once however it was asked for.
    sequences: watch::Sender<usize>,
    /// `SequenceMany` requests received, the asks they carried, and those answered
    /// `NotActive`.
    sequence_many: watch::Sender<(usize, usize, usize)>,
    /// While set, a `SequenceMany` or `ReportStoredMany` is refused whole, as by a version
    /// that cannot decode it (counted in `refused_many`, not in the others).
    refuse_many: AtomicBool,
    refused_many: watch::Sender<usize>,
    /// Reports received (each report of a `ReportStoredMany` counts).
    reports: watch::Sender<usize>,
    /// `ReportStoredMany` requests received.
    report_many: watch::Sender<usize>,
    preemptions: watch::Sender<usize>,
    gate_open: watch::Sender<bool>,
    /// Reports wait to be applied while this is false.
    report_gate: watch::Sender<bool>,
}

impl Counting {
    fn new(inner: Arc<SequencerNode>) -> Counting {
        Counting {
            inner,
            sequences: watch::Sender::new(0),
            sequence_many: watch::Sender::new((0, 0, 0)),
            refuse_many: AtomicBool::new(false),
            refused_many: watch::Sender::new(0),
            reports: watch::Sender::new(0),
            report_many: watch::Sender::new(0),
            preemptions: watch::Sender::new(0),
            gate_open: watch::Sender::new(true),
            report_gate: watch::Sender::new(true),
        }
    }

    fn sequences(&self) -> usize {
        *self.sequences.borrow()
    }

    fn reports(&self) -> usize {
        *self.reports.borrow()
    }

    fn set_gate(&self, open: bool) {
        self.gate_open.send_replace(open);
    }

    /// Waits until `n` `Sequence` requests have arrived.
    async fn wait_sequences(&self, n: usize) {
        let mut seen = self.sequences.subscribe();
        tokio::time::timeout(T, seen.wait_for(|s| *s >= n))
            .await
            .expect("the Sequence request arrives")
            .unwrap();
    }

    /// Waits until `n` `ReportStored` requests have arrived (they are sent in the background).
    async fn wait_reports(&self, n: usize) {
        let mut seen = self.reports.subscribe();
        tokio::time::timeout(T, seen.wait_for(|s| *s >= n))
            .await
            .expect("the completion reports arrive")
            .unwrap();
    }
}

impl Service<ClientProtocol> for Counting {
    async fn call(&self, ctx: RequestContext, req: ClientRequest) -> ClientResponse {
        match &req {
            ClientRequest::Sequence { .. } => {
                self.sequences.send_modify(|n| *n += 1);
                let mut open = self.gate_open.subscribe();
                // Closed only while a test holds a grant back; the request's deadline bounds it.
                let _ = open.wait_for(|open| *open).await;
            }
            ClientRequest::SequenceMany(_) | ClientRequest::ReportStoredMany(_)
                if self.refuse_many.load(Ordering::SeqCst) =>
            {
                self.refused_many.send_modify(|n| *n += 1);
                return ClientResponse::Error(tally_common::wire::RemoteError::new(
                    tally_common::wire::ErrorCode::BadRequest,
                    "invalid frame body: unknown enum variant",
                ));
            }
            ClientRequest::SequenceMany(asks) => {
                let n = asks.len();
                self.sequence_many
                    .send_modify(|(r, a, _)| (*r, *a) = (*r + 1, *a + n));
                self.sequences.send_modify(|s| *s += n);
                let mut open = self.gate_open.subscribe();
                let _ = open.wait_for(|open| *open).await;
                let answer = self.inner.call(ctx, req).await;
                if let ClientResponse::Sequenced(answers) = &answer {
                    let inactive = answers
                        .iter()
                        .filter(|a| matches!(a, SequenceAnswer::NotActive))
                        .count();
                    self.sequences.send_modify(|s| *s -= inactive);
                    self.sequence_many.send_modify(|(_, _, i)| *i += inactive);
                }
                return answer;
            }
            ClientRequest::ReportStored { .. } => {
                self.reports.send_modify(|n| *n += 1);
                let _ = self.report_gate.subscribe().wait_for(|open| *open).await;
            }
            ClientRequest::ReportStoredMany(reports) => {
                // Counted first: a test that saw the reports arrive sees the request too.
                self.report_many.send_modify(|n| *n += 1);
                self.reports.send_modify(|n| *n += reports.len());
                let _ = self.report_gate.subscribe().wait_for(|open| *open).await;
            }
            ClientRequest::ReportPreempted { .. } => self.preemptions.send_modify(|n| *n += 1),
            _ => {}
        }
        self.inner.call(ctx, req).await
    }
}

/// One sequencer node: its runtime, its server and its membership lease.
struct Sequencer {
    id: NodeId,
    addr: SocketAddr,
    counting: Arc<Counting>,
    runtime: Option<SequencerRuntime>,
    server: Option<Server>,
    info: NodeInfo,
    lease: Option<NodeLease>,
}

impl Sequencer {
    fn node(&self) -> Arc<SequencerNode> {
        self.runtime.as_ref().unwrap().node()
    }

    /// Waits until this sequencer's membership holds `count` nodes.
    async fn wait_members(&self, count: usize) {
        let mut view = self.node().membership().subscribe();
        tokio::time::timeout(T, view.wait_for(|v| v.nodes.len() == count))
            .await
            .expect("membership converges")
            .unwrap();
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    store: Arc<MemoryEpochStore>,
    storage: Vec<Arc<FakeStorage>>,
    seen: Arc<Mutex<Seen>>,
    stall_first: Arc<AtomicBool>,
    stall_first_batch: Arc<AtomicBool>,
    /// Open (true) unless a test holds every store's answer.
    gate: watch::Sender<bool>,
    sequencers: Vec<Sequencer>,
    _servers: Vec<Server>,
    _leases: Vec<NodeLease>,
    shutdown: CancellationToken,
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn node_info(id: NodeId, addr: SocketAddr, sequencer: bool) -> NodeInfo {
    NodeInfo {
        id,
        address: addr.to_string(),
        roles: Roles {
            sequencer,
            storage: !sequencer,
        },
        location: String::new(),
        weight: 1,
        state: StorageState::ReadWrite,
        incarnation: 0,
    }
}

impl Cluster {
    /// One sequencer (node 1) and `storage` fake storage nodes (101…), all registered.
    async fn start(storage: u32) -> Cluster {
        Cluster::start_with(storage, &[1], 1).await
    }

    /// `storage` fake storage nodes (101…) and sequencers `sequencers`, of which the first
    /// `registered` are registered in membership (the others run, unregistered).
    async fn start_with(storage: u32, sequencers: &[u32], registered: usize) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        generate_cluster_certs(&certs, "test", &["127.0.0.1".to_owned()]).unwrap();
        let identity = || TlsIdentity::load(&certs, "node").unwrap();
        let store = Arc::new(MemoryEpochStore::new());
        let shutdown = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stall_first = Arc::new(AtomicBool::new(false));
        let stall_first_batch = Arc::new(AtomicBool::new(false));
        let (gate, gate_rx) = watch::channel(true);
        let (mut servers, mut leases, mut fakes) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..storage {
            let fake = Arc::new(FakeStorage {
                id: NodeId(101 + i),
                mode: Mutex::new(Mode::Store),
                stall_first: stall_first.clone(),
                stall_first_batch: stall_first_batch.clone(),
                seen: seen.clone(),
                gate: gate_rx.clone(),
            });
            let server = Server::builder(TransportConfig::default(), identity())
                .service::<ClientProtocol, _>(fake.clone())
                .service::<NodeProtocol, _>(Arc::new(AckReleases))
                .bind(loopback(), shutdown.child_token())
                .unwrap();
            let info = node_info(fake.id, server.local_addr(), false);
            leases.push(store.register_node(info, T).await.unwrap());
            servers.push(server);
            fakes.push(fake);
        }
        let mut nodes = Vec::new();
        for (i, &id) in sequencers.iter().enumerate() {
            let id = NodeId(id);
            let deps = SequencerDeps {
                store: store.clone(),
                releases: Arc::new(
                    Connector::bind(&identity(), TransportConfig::default(), loopback()).unwrap(),
                ),
            };
            let runtime = run(SequencerConfig::new(id), deps, shutdown.clone())
                .await
                .unwrap();
            let counting = Arc::new(Counting::new(runtime.node()));
            let server = Server::builder(TransportConfig::default(), identity())
                .service::<ClientProtocol, _>(counting.clone())
                .bind(loopback(), shutdown.child_token())
                .unwrap();
            let addr = server.local_addr();
            let info = node_info(id, addr, true);
            let lease = if i < registered {
                Some(store.register_node(info.clone(), T).await.unwrap())
            } else {
                None
            };
            nodes.push(Sequencer {
                id,
                addr,
                counting,
                runtime: Some(runtime),
                server: Some(server),
                info,
                lease,
            });
        }
        // The cluster state clients fetch is a sequencer's membership view.
        for seq in &nodes {
            seq.wait_members(storage as usize + registered).await;
        }
        Cluster {
            dir,
            store,
            storage: fakes,
            seen,
            stall_first,
            stall_first_batch,
            gate,
            sequencers: nodes,
            _servers: servers,
            _leases: leases,
            shutdown,
        }
    }

    /// Registers sequencer `i` (started unregistered) and waits until every sequencer sees it.
    async fn register_sequencer(&mut self, i: usize) {
        let info = self.sequencers[i].info.clone();
        self.sequencers[i].lease = Some(self.store.register_node(info, T).await.unwrap());
        let all = self.storage.len() + self.sequencers.len();
        for seq in &self.sequencers {
            seq.wait_members(all).await;
        }
    }

    async fn create_log(&self, log: u64, replication: u8) -> LogId {
        let log = LogId(log);
        let attributes = LogAttributes {
            replication,
            ..LogAttributes::default()
        };
        self.store.create_log(log, attributes).await.unwrap();
        log
    }

    /// Logs `1..=count`, each of `replication`.
    async fn create_logs(&self, count: u64, replication: u8) -> Vec<LogId> {
        let mut logs = Vec::new();
        for log in 1..=count {
            logs.push(self.create_log(log, replication).await);
        }
        logs
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(
            vec![self.sequencers[0].addr.to_string()],
            self.dir.path().join("certs"),
        );
        // Long enough that only a stalled node ever misses its store timeout, even on a
        // loaded machine; the stall tests shorten the whole append instead.
        config.append.store_timeout_initial = Duration::from_secs(1);
        config.append.append_timeout = T;
        config
    }

    async fn client(&self, config: ClientConfig) -> Client {
        tokio::time::timeout(T, Client::connect(config))
            .await
            .expect("connect in time")
            .unwrap()
    }

    fn set_mode(&self, node: NodeId, mode: Mode) {
        let fake = self.storage.iter().find(|f| f.id == node).unwrap();
        *fake.mode.lock().unwrap() = mode;
    }

    fn stores(&self, log: LogId) -> Vec<Received> {
        let seen = self.seen.lock().unwrap();
        seen.stores
            .iter()
            .filter(|r| r.log == log)
            .cloned()
            .collect()
    }

    /// Nodes holding `lsn` of `log` with exactly `payload`.
    fn holders(&self, log: LogId, lsn: Lsn, payload: &[u8]) -> BTreeSet<NodeId> {
        let seen = self.seen.lock().unwrap();
        assert!(
            seen.bad_amends.is_empty(),
            "AMEND without a copy: {:?}",
            seen.bad_amends
        );
        seen.held
            .iter()
            .filter(|(_, held)| held.get(&(log, lsn)).is_some_and(|p| p == payload))
            .map(|(node, _)| *node)
            .collect()
    }

    async fn stop(mut self, client: Client) {
        tokio::time::timeout(T, client.close())
            .await
            .expect("client closes");
        self.shutdown.cancel();
        for seq in &mut self.sequencers {
            if let Some(rt) = seq.runtime.take() {
                tokio::time::timeout(T, rt.stopped())
                    .await
                    .expect("sequencer stops");
            }
        }
    }
}

/// One append of `busy {log}` to each of `logs`, each on a task of its own.
fn append_to_each(client: &Client, logs: &[LogId]) -> AppendTasks {
    let mut tasks = tokio::task::JoinSet::new();
    for log in logs.iter().copied() {
        let client = client.clone();
        tasks.spawn(async move {
            let payload = format!("busy {log}").into_bytes();
            (log, append(&client, log, payload.clone()).await, payload)
        });
    }
    tasks
}

type AppendTasks = tokio::task::JoinSet<(LogId, Result<Lsn, AppendError>, Vec<u8>)>;

/// Every append of `tasks` is acknowledged, its copy held by 3 nodes.
async fn expect_each_on_3_nodes(cluster: &Cluster, mut tasks: AppendTasks) {
    while let Some(done) = tasks.join_next().await {
        let (log, outcome, payload) = done.unwrap();
        let lsn = outcome.unwrap_or_else(|e| panic!("append to {log}: {e}"));
        let holders = cluster.holders(log, lsn, &payload);
        assert_eq!(holders.len(), 3, "{log} {lsn} is held by {holders:?}");
    }
}

async fn append(client: &Client, log: LogId, payload: Vec<u8>) -> Result<Lsn, AppendError> {
    tokio::time::timeout(T + T, client.append(log, payload))
        .await
        .expect("the append ends within its own timeout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_get_increasing_unique_lsns_stored_on_r_nodes() {
    let cluster = Cluster::start(5).await;
    let log = cluster.create_log(1, 3).await;
    let client = cluster.client(cluster.config()).await;

    let mut acked = Vec::new();
    for i in 0..20u32 {
        let payload = format!("sequential {i}").into_bytes();
        let lsn = append(&client, log, payload.clone()).await.unwrap();
        if let Some((prev, _)) = acked.last() {
            assert!(lsn > *prev, "{lsn} after {prev}");
        }
        acked.push((lsn, payload));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20u32 {
        let client = client.clone();
        tasks.spawn(async move {
            let payload = format!("concurrent {i}").into_bytes();
            (
                append(&client, log, payload.clone()).await.unwrap(),
                payload,
            )
        });
    }
    while let Some(done) = tasks.join_next().await {
        acked.push(done.unwrap());
    }
    let unique: BTreeSet<Lsn> = acked.iter().map(|(l, _)| *l).collect();
    assert_eq!(unique.len(), 40, "LSNs are unique");

    let batch: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
    let lsns = client.append_batch(log, batch.clone()).await.unwrap();
    assert_eq!(
        lsns.end().0 - lsns.start().0,
        9,
        "one run of consecutive LSNs"
    );
    assert!(*lsns.start() > *unique.last().unwrap());
    for (i, payload) in batch.into_iter().enumerate() {
        acked.push((Lsn(lsns.start().0 + i as u64), payload));
    }

    for (lsn, payload) in &acked {
        let holders = cluster.holders(log, *lsn, payload);
        assert!(holders.len() >= 3, "{lsn} is held by {holders:?} only");
    }
    cluster.stop(client).await;
}

/// Waits (polling the client's and nodes' state, no fixed sleep) until `done`.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Appends to many logs at once, while every storage node is busy with the client's first
/// few store requests: the batches waiting for a node go out together as `StoreMany`, each
/// is answered on its own, and every append is acknowledged with its copies on R nodes.
/// Likewise the completion reports, held at the sequencer: those that wait go out together
/// as `ReportStoredMany`, and every one is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_waiting_for_a_busy_node_go_out_together() {
    const LOGS: u64 = 40;
    // Store requests the client keeps in flight per node (client `STORE_REQUESTS_PER_NODE`).
    const SLOTS: usize = 4;
    let cluster = Cluster::start(3).await;
    let logs = cluster.create_logs(LOGS, 3).await;
    let client = cluster.client(cluster.config()).await;
    // Warm up (activations, connections), then hold every store's answer.
    for log in &logs {
        append(&client, *log, b"warm".to_vec()).await.unwrap();
    }
    let seq = cluster.sequencers[0].counting.clone();
    seq.wait_reports(LOGS as usize).await;
    let warm = cluster.seen.lock().unwrap().stores.len();
    cluster.gate.send_replace(false);
    // Completion reports are held too, to see them wait for the sequencer and go together.
    seq.report_gate.send_replace(false);
    let tasks = append_to_each(&client, &logs);
    // Each node holds the client's first SLOTS stores; every other batch waits in the client.
    let expected_waiting = 3 * (LOGS as usize - SLOTS);
    wait_until("the stores to wait", || {
        client.requests_waiting() >= expected_waiting
    })
    .await;
    assert_eq!(
        cluster.seen.lock().unwrap().stores.len() - warm,
        3 * SLOTS,
        "only the slots' stores reached the nodes"
    );
    cluster.gate.send_replace(true);
    expect_each_on_3_nodes(&cluster, tasks).await;
    let store_many = cluster.seen.lock().unwrap().store_many;
    assert!(
        store_many >= 3,
        "every node got the waiting batches together ({store_many} StoreMany)"
    );
    // Every append returned; the sequencer holds the client's first reports (its slots), the
    // others wait in the client and go out together once those are answered.
    // (An append returns before its report is queued: wait for them.)
    wait_until("the reports to wait", || {
        client.requests_waiting() >= LOGS as usize - 2
    })
    .await;
    assert_eq!(*seq.report_many.borrow(), 0);
    seq.report_gate.send_replace(true);
    seq.wait_reports(2 * LOGS as usize).await;
    assert!(
        *seq.report_many.borrow() >= 1,
        "the waiting reports went together"
    );
    let node = cluster.sequencers[0].node();
    wait_until("every report to be applied", || {
        node.metrics().appends_completed.get() == 2 * LOGS
    })
    .await;
    cluster.stop(client).await;
}

/// Appends to many running logs at once while the sequencer holds the client's first grant
/// requests: the asks waiting for it go out together as one `SequenceMany`, each is granted
/// on its own, no log is asked for with a `Sequence` of its own, and every append is
/// acknowledged. A fresh log is answered `NotActive` and asked for alone, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_requests_waiting_for_a_busy_sequencer_go_out_together() {
    const LOGS: u64 = 40;
    // Grant requests the client keeps in flight per sequencer (`mux::Sequences::SLOTS`).
    const SLOTS: usize = 2;
    let cluster = Cluster::start(3).await;
    let mut logs = cluster.create_logs(LOGS + 1, 3).await;
    let fresh = logs.pop().unwrap();
    let client = cluster.client(cluster.config()).await;
    let seq = cluster.sequencers[0].counting.clone();
    // Warm up: every log's first ask is answered `NotActive`, then activated alone.
    for log in &logs {
        append(&client, *log, b"warm".to_vec()).await.unwrap();
    }
    let (_, asks, inactive) = *seq.sequence_many.borrow();
    assert_eq!((asks, inactive), (LOGS as usize, LOGS as usize));
    assert_eq!(
        seq.sequences(),
        LOGS as usize,
        "one grant counted per append"
    );

    let (before, before_asks, _) = *seq.sequence_many.borrow();
    seq.set_gate(false);
    let tasks = append_to_each(&client, &logs);
    // The sequencer holds the client's first SLOTS requests; every other ask waits in the
    // client.
    wait_until("the asks to wait", || {
        client.requests_waiting() >= LOGS as usize - SLOTS
    })
    .await;
    assert_eq!(seq.sequence_many.borrow().0 - before, SLOTS);
    seq.set_gate(true);
    expect_each_on_3_nodes(&cluster, tasks).await;
    let (requests, asks, inactive) = *seq.sequence_many.borrow();
    assert_eq!(
        asks - before_asks,
        LOGS as usize,
        "every ask went through SequenceMany"
    );
    assert_eq!(
        inactive, LOGS as usize,
        "no running log was answered NotActive"
    );
    assert_eq!(seq.sequences(), 2 * LOGS as usize, "no Sequence of its own");
    assert!(
        requests - before <= SLOTS + 2,
        "the waiting asks went together ({} requests for {LOGS} asks)",
        requests - before
    );

    // A fresh log: `NotActive` from the batch, then activated by a `Sequence` alone.
    append(&client, fresh, b"fresh".to_vec()).await.unwrap();
    let (_, _, inactive) = *seq.sequence_many.borrow();
    assert_eq!(inactive, LOGS as usize + 1);
    assert_eq!(seq.sequences(), 2 * LOGS as usize + 1);
    cluster.stop(client).await;
}

/// A sequencer that refuses `SequenceMany` as a whole (a version before it: it cannot decode
/// the request) is asked with a `Sequence` per grant instead: every append succeeds, and
/// after the first refusal no more combined requests go to it for a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequencer_that_refuses_sequence_many_is_asked_singly() {
    let cluster = Cluster::start(3).await;
    let seq = cluster.sequencers[0].counting.clone();
    seq.refuse_many.store(true, Ordering::SeqCst);
    let client = cluster.client(cluster.config()).await;
    for log in 1..=5 {
        let log = cluster.create_log(log, 3).await;
        for i in 0..3u8 {
            let payload = vec![i; 16];
            let lsn = append(&client, log, payload.clone()).await.unwrap();
            assert_eq!(cluster.holders(log, lsn, &payload).len(), 3, "{log} {lsn}");
        }
    }
    assert_eq!(
        *seq.refused_many.borrow(),
        1,
        "refused once, then asked singly"
    );
    assert_eq!(seq.sequence_many.borrow().0, 0);
    assert_eq!(seq.sequences(), 15, "one Sequence per append");
    cluster.stop(client).await;
}

/// Nodes of a version before combined requests refuse `StoreMany`, `SequenceMany` and
/// `ReportStoredMany` whole (they cannot decode them): the client sends the items one by one
/// instead and keeps doing so for a while; every append is acknowledged with its copies on R
/// nodes, and every completion report is applied, those of the refused request included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_refuse_combined_requests_get_single_ones() {
    const LOGS: u64 = 40;
    const SLOTS: usize = 4;
    let cluster = Cluster::start(3).await;
    let logs = cluster.create_logs(LOGS, 3).await;
    let seq = cluster.sequencers[0].counting.clone();
    seq.refuse_many.store(true, Ordering::SeqCst);
    cluster.seen.lock().unwrap().refuse_many = true;
    let client = cluster.client(cluster.config()).await;
    // One at a time, each report awaited: nothing here is ever combined but grant requests.
    for (i, log) in logs.iter().enumerate() {
        append(&client, *log, b"warm".to_vec()).await.unwrap();
        seq.wait_reports(i + 1).await;
    }
    // The first grant request was refused; every later one went alone.
    assert_eq!(*seq.refused_many.borrow(), 1);

    cluster.gate.send_replace(false);
    seq.report_gate.send_replace(false);
    let tasks = append_to_each(&client, &logs);
    wait_until("the stores to wait", || {
        client.requests_waiting() >= 3 * (LOGS as usize - SLOTS)
    })
    .await;
    cluster.gate.send_replace(true);
    expect_each_on_3_nodes(&cluster, tasks).await;
    {
        let seen = cluster.seen.lock().unwrap();
        assert_eq!(
            seen.refused_many, 3,
            "one refused StoreMany per node, then singles"
        );
        assert_eq!(seen.store_many, 0);
    }
    // The reports that waited for the sequencer go out combined, are refused, and are sent
    // again one by one: every one is applied, none through a combined request.
    // (An append returns before its report is queued: wait for them.)
    wait_until("the reports to wait", || {
        client.requests_waiting() >= LOGS as usize - 2
    })
    .await;
    seq.report_gate.send_replace(true);
    let node = cluster.sequencers[0].node();
    wait_until("every report to be applied", || {
        node.metrics().appends_completed.get() == 2 * LOGS
    })
    .await;
    assert_eq!(
        *seq.refused_many.borrow(),
        2,
        "one grant and one report request refused"
    );
    assert_eq!(*seq.report_many.borrow(), 0);
    cluster.stop(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_is_routed_around_with_amends_to_earlier_holders() {
    // Node set of 4 with R = 3: once the stalled node is avoided, wave 2 is the other three.
    let cluster = Cluster::start(4).await;
    let log = cluster.create_log(2, 3).await;
    let client = cluster.client(cluster.config()).await;
    cluster.stall_first.store(true, Ordering::SeqCst);

    let payload = b"routed around".to_vec();
    let lsn = append(&client, log, payload.clone()).await.unwrap();

    let stores = cluster.stores(log);
    let stalled: Vec<NodeId> = cluster
        .storage
        .iter()
        .filter(|f| f.mode() == Mode::Stall)
        .map(|f| f.id)
        .collect();
    assert_eq!(stalled.len(), 1);
    let stalled = stalled[0];
    let wave1: BTreeSet<NodeId> = stores
        .iter()
        .filter(|r| r.wave == 1)
        .map(|r| r.node)
        .collect();
    let wave2: Vec<&Received> = stores.iter().filter(|r| r.wave == 2).collect();
    assert_eq!(wave1.len(), 3, "{stores:?}");
    assert_eq!(wave2.len(), 3, "{stores:?}");
    assert!(stores.iter().all(|r| r.wave <= 2), "{stores:?}");
    assert!(
        wave2.iter().all(|r| r.node != stalled),
        "the slow node is avoided"
    );
    for r in &wave2 {
        // Members that stored wave 1 get a payload-less AMEND, the new member the payload.
        assert_eq!(r.amend, wave1.contains(&r.node), "{r:?}");
        assert_eq!(r.lsns, vec![lsn]);
    }
    assert_eq!(wave2.iter().filter(|r| r.amend).count(), 2);
    let holders = cluster.holders(log, lsn, &payload);
    let expected: BTreeSet<NodeId> = wave2.iter().map(|r| r.node).collect();
    assert_eq!(holders, expected);
    cluster.stop(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fewer_than_r_nodes_answering_the_append_fails_typed_within_its_timeout() {
    let cluster = Cluster::start(4).await;
    let refused = cluster.create_log(3, 3).await;
    let stalled = cluster.create_log(4, 3).await;
    let mut config = cluster.config();
    config.append.store_timeout_initial = Duration::from_millis(100);
    // Refused waves back off 100, 200, 400, 800 ms: the last wave goes out near 1.5 s and
    // the one after would start past the deadline, so no store is in flight at its end.
    config.append.append_timeout = Duration::from_millis(2500);
    let timeout = config.append.append_timeout;
    let client = cluster.client(config).await;
    let ids: Vec<NodeId> = cluster.storage.iter().map(|f| f.id).collect();

    // Every node refuses: no copy can exist.
    for &id in &ids {
        cluster.set_mode(id, Mode::Refuse);
    }
    let started = Instant::now();
    let err = append(&client, refused, b"nowhere".to_vec())
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err, AppendError::TimedOut);
    assert!(err.certainly_not_appended());
    assert!(!cluster.stores(refused).is_empty());
    // The bound is the append timeout plus scheduling slack, not a speed claim.
    assert!(
        elapsed < timeout + Duration::from_secs(5),
        "took {elapsed:?}"
    );

    // Two of four store, two stall: copies may exist, so the outcome is indeterminate.
    for (i, &id) in ids.iter().enumerate() {
        cluster.set_mode(id, if i < 2 { Mode::Store } else { Mode::Stall });
    }
    let started = Instant::now();
    let err = append(&client, stalled, b"half".to_vec())
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, AppendError::Indeterminate { .. }),
        "expected Indeterminate, got {err:?}"
    );
    assert!(!err.certainly_not_appended());
    assert!(
        elapsed < timeout + Duration::from_secs(5),
        "took {elapsed:?}"
    );
    cluster.stop(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_over_the_limit_is_refused_before_anything_is_sent() {
    let cluster = Cluster::start(3).await;
    let log = cluster.create_log(5, 3).await;
    let client = cluster.client(cluster.config()).await;
    let max = client.config().transport.limits.max_payload_bytes;

    let err = append(&client, log, vec![7; max + 1]).await.unwrap_err();
    assert_eq!(
        err,
        AppendError::PayloadTooLarge {
            index: 0,
            size: max + 1,
            max
        }
    );
    assert!(err.certainly_not_appended());
    let writer = client
        .buffered_writer(log, BufferedConfig::default())
        .unwrap();
    let err = writer.append(vec![7; max + 1]).await.unwrap_err();
    assert!(
        matches!(err, AppendError::PayloadTooLarge { .. }),
        "{err:?}"
    );
    assert!(
        cluster.stores(log).is_empty(),
        "no storage node saw a STORE"
    );
    let sequencer = cluster.sequencers[0].node();
    assert_eq!(sequencer.log_state(log), None, "no grant was asked for");
    drop(writer);
    cluster.stop(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffered_writer_batches_small_appends() {
    let cluster = Cluster::start(3).await;
    let log = cluster.create_log(6, 3).await;
    let mut config = cluster.config();
    // One buffered batch per grant, so the STOREs show the writer's own batches.
    config.coalesce.max_batch_records = 50;
    let client = cluster.client(config).await;

    // Count trigger only (the time trigger is far away): 200 records make 4 batches of 50.
    let writer = client
        .buffered_writer(
            log,
            BufferedConfig {
                max_batch_records: 50,
                max_delay: Duration::from_secs(3600),
                ..BufferedConfig::default()
            },
        )
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let writer = writer.clone();
        tasks.spawn(async move {
            let payload = format!("small {i}").into_bytes();
            let lsn = tokio::time::timeout(T, writer.append(payload.clone()))
                .await
                .expect("buffered append ends")
                .unwrap();
            (lsn, payload)
        });
    }
    let mut acked = Vec::new();
    while let Some(done) = tasks.join_next().await {
        acked.push(done.unwrap());
    }
    let unique: BTreeSet<Lsn> = acked.iter().map(|(l, _)| *l).collect();
    assert_eq!(unique.len(), 200);
    for (lsn, payload) in &acked {
        assert_eq!(cluster.holders(log, *lsn, payload).len(), 3, "{lsn}");
    }
    let payload_stores: Vec<Received> = cluster
        .stores(log)
        .into_iter()
        .filter(|r| !r.amend)
        .collect();
    let batches: BTreeSet<Lsn> = payload_stores.iter().map(|r| r.lsns[0]).collect();
    assert_eq!(batches.len(), 4, "200 records went out as 4 batches");
    assert!(payload_stores.iter().all(|r| r.lsns.len() == 50));

    // Time trigger: a few records well under the count trigger still go, as one batch.
    let slow = client
        .buffered_writer(
            log,
            BufferedConfig {
                max_delay: Duration::from_millis(500),
                ..BufferedConfig::default()
            },
        )
        .unwrap();
    let before = cluster.stores(log).len();
    let (a, b, c) = tokio::join!(
        slow.append(b"a".to_vec()),
        slow.append(b"b".to_vec()),
        slow.append(b"c".to_vec())
    );
    let lsns = BTreeSet::from([a.unwrap(), b.unwrap(), c.unwrap()]);
    assert_eq!(lsns.len(), 3);
    let later: Vec<Received> = cluster.stores(log).split_off(before);
    let firsts: BTreeSet<Lsn> = later.iter().map(|r| r.lsns[0]).collect();
    assert_eq!(
        firsts.len(),
        1,
        "one batch for the three records: {later:?}"
    );
    drop((writer, slow));
    cluster.stop(client).await;
}

/// A log id whose owner among sequencers 1 and 2 (equal weights) is `owner`.
fn log_owned_by(owner: u32, from: u64) -> u64 {
    let candidates = [(NodeId(1), 1), (NodeId(2), 1)];
    (from..)
        .find(|&log| placement::owner(log, &candidates) == Some(NodeId(owner)))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_sequencer_the_client_did_not_know_is_followed() {
    let mut cluster = Cluster::start_with(3, &[1, 2], 1).await;
    // The client's view has sequencer 1 only; then sequencer 2 joins and owns the log.
    let client = cluster.client(cluster.config()).await;
    assert!(client.cluster().node(NodeId(2)).is_none());
    cluster.register_sequencer(1).await;
    let log = cluster.create_log(log_owned_by(2, 100), 3).await;

    append(&client, log, b"redirected".to_vec()).await.unwrap();
    assert!(client.cluster().node(NodeId(2)).is_some(), "view refreshed");
    assert!(cluster.sequencers[1].node().log_state(log).is_some());
    assert_eq!(cluster.sequencers[0].node().log_state(log), None);
    cluster.stop(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_is_unreachable_the_next_in_rank_takes_the_log_over() {
    let mut cluster = Cluster::start_with(3, &[1, 2], 2).await;
    let log = cluster.create_log(log_owned_by(2, 200), 3).await;
    let mut config = cluster.config();
    config.transport.connect_timeout = Duration::from_millis(500);
    let client = cluster.client(config).await;
    // Sequencer 2 stops serving but stays registered: everybody still ranks it first.
    let server = cluster.sequencers[1].server.take().unwrap();
    tokio::time::timeout(T, server.shutdown())
        .await
        .expect("server stops");
    assert_eq!(client.cluster().sequencer_owner(log), Some(NodeId(2)));

    append(&client, log, b"taken over".to_vec()).await.unwrap();
    assert!(cluster.sequencers[0].node().log_state(log).is_some());
    assert_eq!(cluster.sequencers[1].node().log_state(log), None);
    assert_eq!(cluster.sequencers[0].id, NodeId(1));
    cluster.stop(client).await;
}

/// Polls `f` once: its output if it is ready at once.
async fn poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        Poll::Ready(match Pin::new(&mut *f).poll(cx) {
            Poll::Ready(out) => Some(out),
            Poll::Pending => None,
        })
    })
    .await
}

type AppendFuture<'a> = Pin<Box<dyn Future<Output = Result<Lsn, AppendError>> + Send + 'a>>;

/// Holds the grant of one append at the sequencer's gate and queues `payloads` behind it, in
/// order, each polled once; opens the gate and returns the first append's outcome and the
/// others' in issue order. Their grants: exactly two, the second for all of `payloads`.
async fn coalesced(
    cluster: &Cluster,
    client: &Client,
    log: LogId,
    first: Vec<u8>,
    payloads: &[Vec<u8>],
) -> (Result<Lsn, AppendError>, Vec<Result<Lsn, AppendError>>) {
    let seq = cluster.sequencers[0].counting.clone();
    let before = seq.sequences();
    seq.set_gate(false);
    // The head goes alone, so it runs on its caller's task: a task of its own here.
    let head = tokio::spawn({
        let client = client.clone();
        async move { client.append(log, first).await }
    });
    seq.wait_sequences(before + 1).await;
    let mut queued: Vec<AppendFuture<'_>> = Vec::new();
    for payload in payloads {
        let mut f: AppendFuture<'_> = Box::pin(client.append(log, payload.clone()));
        assert!(poll_once(&mut f).await.is_none(), "queued behind the grant");
        queued.push(f);
    }
    // A queued append dropped before its batch goes is withdrawn: never sent.
    let mut dropped: AppendFuture<'_> = Box::pin(client.append(log, b"withdrawn".to_vec()));
    assert!(poll_once(&mut dropped).await.is_none());
    drop(dropped);
    seq.set_gate(true);
    let head = tokio::time::timeout(T + T, head)
        .await
        .expect("the first append ends")
        .unwrap();
    let mut rest = Vec::new();
    for f in queued {
        rest.push(
            tokio::time::timeout(T + T, f)
                .await
                .expect("a queued append ends"),
        );
    }
    assert_eq!(
        seq.sequences(),
        before + 2,
        "one grant for all the queued appends"
    );
    let seen = cluster.seen.lock().unwrap();
    assert!(
        seen.held
            .values()
            .all(|held| held.values().all(|p| p != b"withdrawn")),
        "the withdrawn append was never stored"
    );
    (head, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_to_one_log_share_one_grant_store_and_report() {
    let cluster = Cluster::start(5).await;
    let log = cluster.create_log(20, 3).await;
    let client = cluster.client(cluster.config()).await;
    let seq = cluster.sequencers[0].counting.clone();

    let payloads: Vec<Vec<u8>> = (0..50u32)
        .map(|i| format!("coalesced {i}").into_bytes())
        .collect();
    let (head, rest) = coalesced(&cluster, &client, log, b"head".to_vec(), &payloads).await;
    let head = head.unwrap();
    let lsns: Vec<Lsn> = rest.into_iter().map(Result::unwrap).collect();
    // Issue order is LSN order: the batch is one run of consecutive LSNs after the head.
    assert!(lsns[0] > head, "{} after {head}", lsns[0]);
    for pair in lsns.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "{lsns:?}");
    }
    let payload_stores: Vec<Received> = cluster
        .stores(log)
        .into_iter()
        .filter(|r| !r.amend)
        .collect();
    assert_eq!(
        payload_stores.len(),
        6,
        "R = 3 STOREs for the head and 3 for the 50 others: {payload_stores:?}"
    );
    assert_eq!(
        payload_stores.iter().filter(|r| r.lsns == lsns).count(),
        3,
        "one STORE per copy carries the whole batch"
    );
    for (lsn, payload) in lsns.iter().zip(&payloads) {
        assert_eq!(cluster.holders(log, *lsn, payload).len(), 3, "{lsn}");
    }
    // One completion report per batch.
    seq.wait_reports(2).await;
    assert_eq!(seq.reports(), 2);

    // Real concurrency, no gate: every LSN unique, each task's LSNs increasing, R copies.
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16u32 {
        let client = client.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            for i in 0..25u32 {
                let payload = format!("task {t} append {i}").into_bytes();
                let lsn = append(&client, log, payload.clone()).await.unwrap();
                if let Some((prev, _)) = mine.last() {
                    assert!(lsn > *prev, "task {t}: {lsn} after {prev}");
                }
                mine.push((lsn, payload));
            }
            mine
        });
    }
    let mut acked = Vec::new();
    while let Some(done) = tasks.join_next().await {
        acked.extend(done.unwrap());
    }
    let unique: BTreeSet<Lsn> = acked.iter().map(|(l, _)| *l).collect();
    assert_eq!(unique.len(), 16 * 25, "LSNs are unique");
    for (lsn, payload) in &acked {
        assert!(cluster.holders(log, *lsn, payload).len() >= 3, "{lsn}");
    }
    assert!(
        seq.sequences() <= 2 + 16 * 25,
        "never more than one grant per append"
    );
    cluster.stop(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_of_a_failed_coalesced_batch_gets_its_typed_error() {
    let cluster = Cluster::start(4).await;
    let refused = cluster.create_log(21, 3).await;
    let stalled = cluster.create_log(22, 3).await;
    let mut config = cluster.config();
    config.append.store_timeout_initial = Duration::from_millis(100);
    config.append.append_timeout = Duration::from_millis(2500);
    let client = cluster.client(config).await;
    let ids: Vec<NodeId> = cluster.storage.iter().map(|f| f.id).collect();
    let payloads: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();

    // Every node refuses: no copy can exist, every caller learns it.
    for &id in &ids {
        cluster.set_mode(id, Mode::Refuse);
    }
    let (head, rest) = coalesced(&cluster, &client, refused, b"head".to_vec(), &payloads).await;
    assert_eq!(head, Err(AppendError::TimedOut));
    for outcome in &rest {
        assert_eq!(outcome, &Err(AppendError::TimedOut));
    }
    assert!(
        cluster
            .stores(refused)
            .iter()
            .any(|r| r.lsns.len() == payloads.len()),
        "the ten went out as one batch"
    );

    // Two of four store, two stall: copies may exist, for every caller alike.
    for (i, &id) in ids.iter().enumerate() {
        cluster.set_mode(id, if i < 2 { Mode::Store } else { Mode::Stall });
    }
    let (head, rest) = coalesced(&cluster, &client, stalled, b"head".to_vec(), &payloads).await;
    for outcome in std::iter::once(&head).chain(&rest) {
        let err = outcome.as_ref().unwrap_err();
        assert!(
            matches!(err, AppendError::Indeterminate { .. }),
            "expected Indeterminate, got {err:?}"
        );
        assert!(!err.certainly_not_appended());
    }
    cluster.stop(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_batch_routes_around_a_stalled_node_with_amends() {
    // Node set of 4 with R = 3: once the stalled node is avoided, wave 2 is the other three.
    let cluster = Cluster::start(4).await;
    let log = cluster.create_log(23, 3).await;
    let mut config = cluster.config();
    // The head finishes before the batch is sequenced, so only the batch meets the stall.
    config.coalesce.max_batches_in_flight = 1;
    let client = cluster.client(config).await;
    cluster.stall_first_batch.store(true, Ordering::SeqCst);

    let payloads: Vec<Vec<u8>> = (0..9u8).map(|i| vec![i; 64]).collect();
    let (head, rest) = coalesced(&cluster, &client, log, b"head".to_vec(), &payloads).await;
    head.unwrap();
    let lsns: Vec<Lsn> = rest.into_iter().map(Result::unwrap).collect();

    let stores: Vec<Received> = cluster
        .stores(log)
        .into_iter()
        .filter(|r| r.lsns == lsns)
        .collect();
    let stalled: Vec<NodeId> = cluster
        .storage
        .iter()
        .filter(|f| f.mode() == Mode::Stall)
        .map(|f| f.id)
        .collect();
    assert_eq!(stalled.len(), 1);
    let wave1: BTreeSet<NodeId> = stores
        .iter()
        .filter(|r| r.wave == 1)
        .map(|r| r.node)
        .collect();
    let wave2: Vec<&Received> = stores.iter().filter(|r| r.wave == 2).collect();
    assert_eq!(wave1.len(), 3, "{stores:?}");
    assert!(wave1.contains(&stalled[0]));
    assert_eq!(wave2.len(), 3, "{stores:?}");
    assert!(stores.iter().all(|r| r.wave <= 2), "{stores:?}");
    assert!(
        wave2.iter().all(|r| r.node != stalled[0]),
        "the slow node is avoided"
    );
    for r in &wave2 {
        // Members that stored wave 1 get a payload-less AMEND of the whole batch.
        assert_eq!(r.amend, wave1.contains(&r.node), "{r:?}");
    }
    assert_eq!(wave2.iter().filter(|r| r.amend).count(), 2);
    let expected: BTreeSet<NodeId> = wave2.iter().map(|r| r.node).collect();
    for (lsn, payload) in lsns.iter().zip(&payloads) {
        assert_eq!(cluster.holders(log, *lsn, payload), expected, "{lsn}");
    }
    cluster.stop(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalesced_batch_too_big_for_the_window_goes_in_smaller_batches() {
    let cluster = Cluster::start(3).await;
    let log = LogId(24);
    let attributes = LogAttributes {
        replication: 3,
        max_in_flight: 4,
        ..LogAttributes::default()
    };
    cluster.store.create_log(log, attributes).await.unwrap();
    let client = cluster.client(cluster.config()).await;
    let seq = cluster.sequencers[0].counting.clone();

    // The head holds the gate; twenty appends queue behind it, more than the window holds.
    seq.set_gate(false);
    let head = tokio::spawn({
        let client = client.clone();
        async move { client.append(log, b"head".to_vec()).await }
    });
    seq.wait_sequences(1).await;
    let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 32]).collect();
    let mut queued: Vec<AppendFuture<'_>> = Vec::new();
    for payload in &payloads {
        let mut f: AppendFuture<'_> = Box::pin(client.append(log, payload.clone()));
        assert!(poll_once(&mut f).await.is_none());
        queued.push(f);
    }
    seq.set_gate(true);
    let head = tokio::time::timeout(T + T, head)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut lsns = Vec::new();
    for f in queued {
        lsns.push(tokio::time::timeout(T + T, f).await.unwrap().unwrap());
    }
    assert!(lsns[0] > head);
    for pair in lsns.windows(2) {
        assert!(pair[1] > pair[0], "issue order is LSN order: {lsns:?}");
    }
    for (lsn, payload) in lsns.iter().zip(&payloads) {
        assert_eq!(cluster.holders(log, *lsn, payload).len(), 3, "{lsn}");
    }
    let stores = cluster.stores(log);
    assert!(
        stores.iter().all(|r| r.lsns.len() <= 4),
        "no grant is larger than the window: {stores:?}"
    );
    cluster.stop(client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_batch_is_reported_and_the_next_one_goes_to_a_new_epoch() {
    let cluster = Cluster::start(3).await;
    let log = cluster.create_log(25, 3).await;
    let client = cluster.client(cluster.config()).await;
    let seq = cluster.sequencers[0].counting.clone();
    let first = append(&client, log, b"before".to_vec()).await.unwrap();

    for fake in &cluster.storage {
        cluster.set_mode(fake.id, Mode::Preempt);
    }
    let err = append(&client, log, b"sealed".to_vec()).await.unwrap_err();
    assert!(
        // Every store was refused, so nothing was stored: the client appended again in new
        // epochs (a few times) before giving up, and says the append certainly did not happen.
        matches!(err, AppendError::Preempted { seal, may_be_stored: false, .. }
            if seal > first.epoch()),
        "{err:?}"
    );
    assert!(err.certainly_not_appended());
    let mut preemptions = seq.preemptions.subscribe();
    tokio::time::timeout(T, preemptions.wait_for(|n| *n >= 1))
        .await
        .expect("the client reports the preemption")
        .unwrap();

    for fake in &cluster.storage {
        cluster.set_mode(fake.id, Mode::Store);
    }
    let after = append(&client, log, b"after".to_vec()).await.unwrap();
    assert!(
        after.epoch() > first.epoch(),
        "the sequencer left the sealed epoch: {first} then {after}"
    );
    cluster.stop(client).await;
}
