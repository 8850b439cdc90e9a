//! The sequencer runtime over real QUIC on loopback (certificates from
//! `generate_cluster_certs`), with the in-memory epoch store and tiny storage-node servers
//! that record the releases they receive: concurrent grants, backpressure, batched and
//! re-broadcast releases, redirects and forced takeover, the unrecovered-epoch release rule
//! (these storage nodes answer every seal with a bare `Ack`, so recovery can never finish
//! here; recovery against real storage nodes is tested in `tests/tests/recovery.rs`), typed
//! `NotFound`, reactivation after an abandoned LSN, and an activation that finishes although
//! the request that started it gave up (a slow epoch store). Preemption and failover against
//! real storage nodes are tested in `tests/tests/failover.rs`.
//!
//! Every wait is for a condition with a deadline; nothing sleeps to "let things happen".

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tally_common::meta::{LogAttributes, LogMetadata, NodeInfo, Roles, StorageState};
use tally_common::placement;
use tally_common::transport::{
    ClientProtocol, Connector, NodeProtocol, RequestContext, Server, Service, TlsIdentity,
    TransportConfig, generate_cluster_certs,
};
use tally_common::wire::ErrorCode;
use tally_common::wire::client::{
    ClientRequest, ClientResponse, Grant, SequenceAnswer, SequenceAsk,
};
use tally_common::wire::node::{NodeRequest, NodeResponse, Release};
use tally_common::{Copyset, Epoch, Esn, LogId, Lsn, NodeId};
use tally_epochstore::store::Result as StoreResult;
use tally_epochstore::{
    ActivateOptions, Activation, BoxFuture, EpochStore, MemoryEpochStore, NodeLease, NodeWatch,
};
use tally_sequencer::SequencerTiming;
use tally_sequencer::runtime::{
    SequencerConfig, SequencerDeps, SequencerNode, SequencerRuntime, run,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Deadline for every wait and call: generous, it only bounds a failing test.
const T: Duration = Duration::from_secs(20);

/// One `Release` message as a storage node received it.
#[derive(Debug, Clone)]
struct Received {
    to: NodeId,
    sequencer: NodeId,
    releases: Vec<Release>,
}

impl Received {
    fn has(&self, log: LogId) -> Option<Lsn> {
        self.releases.iter().find(|r| r.log == log).map(|r| r.lsn)
    }
}

/// A storage node that records releases; while `gate` is closed it holds each release call
/// (after recording it), like a slow node.
struct Recorder {
    node: NodeId,
    tx: mpsc::UnboundedSender<Received>,
    gate: watch::Receiver<bool>,
}

impl Service<NodeProtocol> for Recorder {
    async fn call(&self, _ctx: RequestContext, req: NodeRequest) -> NodeResponse {
        if let NodeRequest::Release {
            sequencer,
            releases,
        } = req
        {
            let _ = self.tx.send(Received {
                to: self.node,
                sequencer,
                releases,
            });
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        NodeResponse::Ack
    }
}

/// Everything the storage servers received so far, and a way to wait for more.
struct Releases {
    rx: mpsc::UnboundedReceiver<Received>,
    seen: Vec<Received>,
}

impl Releases {
    async fn wait_for(&mut self, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + T;
        while !done(&self.seen) {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => self.seen.push(r),
                Ok(None) => panic!("storage servers are gone while waiting for {what}"),
                Err(_) => panic!("timed out waiting for {what}; received {:#?}", self.seen),
            }
        }
    }

    /// Messages received by `node` that carry `log`.
    fn of(&self, node: NodeId, log: LogId) -> Vec<Lsn> {
        self.seen
            .iter()
            .filter(|r| r.to == node)
            .filter_map(|r| r.has(log))
            .collect()
    }
}

struct SeqNode {
    id: NodeId,
    addr: SocketAddr,
    node: Arc<SequencerNode>,
    runtime: Option<SequencerRuntime>,
    _server: Server,
    _lease: NodeLease,
}

struct Cluster {
    _dir: tempfile::TempDir,
    certs: PathBuf,
    store: Arc<MemoryEpochStore>,
    storage: Vec<NodeId>,
    _storage_servers: Vec<(Server, NodeLease)>,
    releases: Releases,
    gate: watch::Sender<bool>,
    sequencers: Vec<SeqNode>,
    client: Connector<ClientProtocol>,
    shutdown: CancellationToken,
}

fn test_config(node: NodeId) -> SequencerConfig {
    SequencerConfig {
        tick_interval: Duration::from_millis(20),
        release_timeout: Duration::from_secs(10),
        no_redirect_duration: Duration::from_secs(600),
        timing: SequencerTiming {
            release_rebroadcast: Duration::from_millis(200),
            ..SequencerTiming::default()
        },
        ..SequencerConfig::new(node)
    }
}

fn info(id: NodeId, addr: SocketAddr, sequencer: bool) -> NodeInfo {
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

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

impl Cluster {
    /// `storage` recording storage nodes (ids 101…), then sequencers with ids `sequencers`,
    /// each configured by `config`.
    async fn start(
        storage: u32,
        sequencers: &[u32],
        config: impl Fn(NodeId) -> SequencerConfig,
    ) -> Cluster {
        let store = Arc::new(MemoryEpochStore::new());
        Cluster::start_with(storage, sequencers, config, store.clone(), store).await
    }

    /// As [`Cluster::start`]; the sequencers reach `store` through `sequencer_store`.
    async fn start_with(
        storage: u32,
        sequencers: &[u32],
        config: impl Fn(NodeId) -> SequencerConfig,
        store: Arc<MemoryEpochStore>,
        sequencer_store: Arc<dyn EpochStore>,
    ) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        generate_cluster_certs(&certs, "test", &["127.0.0.1".to_owned()]).unwrap();
        let shutdown = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let (gate, gate_rx) = watch::channel(true);
        let mut storage_ids = Vec::new();
        let mut storage_servers = Vec::new();
        for i in 0..storage {
            let id = NodeId(101 + i);
            let recorder = Arc::new(Recorder {
                node: id,
                tx: tx.clone(),
                gate: gate_rx.clone(),
            });
            let server = Server::builder(TransportConfig::default(), node_identity(&certs))
                .service::<NodeProtocol, _>(recorder)
                .bind(loopback(), shutdown.clone())
                .unwrap();
            let lease = store
                .register_node(info(id, server.local_addr(), false), T)
                .await
                .unwrap();
            storage_ids.push(id);
            storage_servers.push((server, lease));
        }
        let mut nodes = Vec::new();
        for &id in sequencers {
            let id = NodeId(id);
            let deps = SequencerDeps {
                store: sequencer_store.clone(),
                releases: Arc::new(
                    Connector::bind(
                        &node_identity(&certs),
                        TransportConfig::default(),
                        loopback(),
                    )
                    .unwrap(),
                ),
            };
            let runtime = run(config(id), deps, shutdown.clone()).await.unwrap();
            let server = Server::builder(TransportConfig::default(), node_identity(&certs))
                .service::<ClientProtocol, _>(runtime.node())
                .bind(loopback(), shutdown.clone())
                .unwrap();
            let addr = server.local_addr();
            let lease = store.register_node(info(id, addr, true), T).await.unwrap();
            nodes.push(SeqNode {
                id,
                addr,
                node: runtime.node(),
                runtime: Some(runtime),
                _server: server,
                _lease: lease,
            });
        }
        // Every sequencer must see every sequencer before placement is tested.
        for n in &nodes {
            let mut view = n.node.membership().subscribe();
            tokio::time::timeout(
                T,
                view.wait_for(|v| v.sequencers().len() == sequencers.len()),
            )
            .await
            .expect("membership converges")
            .unwrap();
        }
        let client = client(&certs);
        Cluster {
            _dir: dir,
            certs,
            store,
            storage: storage_ids,
            _storage_servers: storage_servers,
            releases: Releases {
                rx,
                seen: Vec::new(),
            },
            gate,
            sequencers: nodes,
            client,
            shutdown,
        }
    }

    async fn create_log(&self, log: u64, attributes: LogAttributes) -> LogId {
        let log = LogId(log);
        self.store.create_log(log, attributes).await.unwrap();
        log
    }

    async fn call(&self, seq: usize, req: ClientRequest) -> ClientResponse {
        self.client
            .call(self.sequencers[seq].addr, &req, T)
            .await
            .unwrap()
    }

    async fn grant(&self, seq: usize, log: LogId, count: u32) -> Grant {
        match self.call(seq, sequence(log, count, false)).await {
            ClientResponse::Granted(g) => g,
            other => panic!("expected a grant of {count} on {log}, got {other:?}"),
        }
    }

    async fn report(&self, seq: usize, log: LogId, first: Lsn, count: u32) -> ClientResponse {
        self.call(seq, report(log, first, count)).await
    }

    async fn stop(mut self) {
        let _ = self.gate.send(true);
        self.shutdown.cancel();
        for n in &mut self.sequencers {
            if let Some(rt) = n.runtime.take() {
                tokio::time::timeout(T, rt.stopped())
                    .await
                    .expect("runtime stops");
            }
        }
    }
}

fn node_identity(certs: &std::path::Path) -> TlsIdentity {
    TlsIdentity::load(certs, "node").unwrap()
}

fn client(certs: &std::path::Path) -> Connector<ClientProtocol> {
    Connector::bind(
        &TlsIdentity::load(certs, "client").unwrap(),
        TransportConfig::default(),
        loopback(),
    )
    .unwrap()
}

fn sequence(log: LogId, count: u32, no_redirect: bool) -> ClientRequest {
    ClientRequest::Sequence {
        log,
        count,
        no_redirect,
    }
}

fn report(log: LogId, first: Lsn, count: u32) -> ClientRequest {
    ClientRequest::ReportStored {
        log,
        first,
        count,
        copyset: Copyset::new(vec![NodeId(101), NodeId(102)]).unwrap(),
        wave: 1,
    }
}

fn lsn(epoch: u32, esn: u32) -> Lsn {
    Lsn::new(Epoch(epoch), Esn(esn))
}

fn attrs(replication: u8, node_set_size: u8, max_in_flight: u32) -> LogAttributes {
    LogAttributes {
        replication,
        node_set_size,
        max_in_flight,
        ..LogAttributes::default()
    }
}

fn assert_error(resp: &ClientResponse, code: ErrorCode) {
    match resp {
        ClientResponse::Error(e) => assert_eq!(e.code, code, "{e}"),
        other => panic!("expected an error {code:?}, got {other:?}"),
    }
}

/// The in-memory store with activations that take a while and are counted, so concurrent
/// first requests really overlap an activation in flight.
#[derive(Debug)]
struct SlowActivations {
    inner: MemoryEpochStore,
    activations: AtomicUsize,
    delay: Duration,
}

impl EpochStore for SlowActivations {
    fn create_log(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, StoreResult<LogMetadata>> {
        self.inner.create_log(log, attributes)
    }
    fn get_log(&self, log: LogId) -> BoxFuture<'_, StoreResult<LogMetadata>> {
        self.inner.get_log(log)
    }
    fn list_logs(&self) -> BoxFuture<'_, StoreResult<BTreeMap<LogId, LogMetadata>>> {
        self.inner.list_logs()
    }
    fn update_attributes(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, StoreResult<LogMetadata>> {
        self.inner.update_attributes(log, attributes)
    }
    fn activate(
        &self,
        log: LogId,
        options: ActivateOptions,
    ) -> BoxFuture<'_, StoreResult<Activation>> {
        Box::pin(async move {
            self.activations.fetch_add(1, Ordering::SeqCst);
            // Simulated store latency (a slow etcd round trip), not a wait for the test.
            tokio::time::sleep(self.delay).await;
            self.inner.activate(log, options).await
        })
    }
    fn set_last_clean_epoch(
        &self,
        log: LogId,
        epoch: Epoch,
        tail: Lsn,
        recovered: Option<tally_common::RecoveredEpoch>,
    ) -> BoxFuture<'_, StoreResult<LogMetadata>> {
        self.inner.set_last_clean_epoch(log, epoch, tail, recovered)
    }
    fn register_node(
        &self,
        info: NodeInfo,
        ttl: Duration,
    ) -> BoxFuture<'_, StoreResult<NodeLease>> {
        self.inner.register_node(info, ttl)
    }
    fn list_nodes(&self) -> BoxFuture<'_, StoreResult<Vec<NodeInfo>>> {
        self.inner.list_nodes()
    }
    fn watch_nodes(&self) -> BoxFuture<'_, StoreResult<NodeWatch>> {
        self.inner.watch_nodes()
    }

    fn bind_data_dir(
        &self,
        node: NodeId,
        dir: tally_common::DataDirId,
    ) -> BoxFuture<'_, StoreResult<tally_common::DataDirBinding>> {
        self.inner.bind_data_dir(node, dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_consecutive_and_unique_across_concurrent_clients() {
    let store = Arc::new(MemoryEpochStore::new());
    let slow = Arc::new(SlowActivations {
        inner: MemoryEpochStore::clone(&store),
        activations: AtomicUsize::new(0),
        delay: Duration::from_millis(100),
    });
    let cluster = Cluster::start_with(3, &[1], test_config, store, slow.clone()).await;
    let log = cluster.create_log(1, attrs(2, 0, 4096)).await;
    let addr = cluster.sequencers[0].addr;
    let mut tasks = Vec::new();
    for worker in 0..8u32 {
        // One connection per client.
        let client = client(&cluster.certs);
        tasks.push(tokio::spawn(async move {
            let mut grants = Vec::new();
            for i in 0..100u32 {
                let count = 1 + (worker + i) % 4;
                let g = match client
                    .call(addr, &sequence(log, count, false), T)
                    .await
                    .unwrap()
                {
                    ClientResponse::Granted(g) => g,
                    other => panic!("expected a grant, got {other:?}"),
                };
                let ack = client
                    .call(addr, &report(log, g.first, g.count), T)
                    .await
                    .unwrap();
                assert_eq!(ack, ClientResponse::Ack);
                grants.push(g);
            }
            grants
        }));
    }
    let mut grants = Vec::new();
    for t in tasks {
        grants.extend(t.await.unwrap());
    }
    grants.sort_by_key(|g| g.first);
    let mut next = lsn(1, 1);
    for g in &grants {
        assert_eq!(
            g.first, next,
            "grants must tile the epoch without gaps or overlaps"
        );
        assert_eq!(g.sequencer, NodeId(1));
        assert_eq!(g.replication, 2);
        assert_eq!(g.node_set.len(), 3);
        next = Lsn(g.first.0 + u64::from(g.count));
    }
    let total: u64 = grants.iter().map(|g| u64::from(g.count)).sum();
    assert_eq!(next, Lsn(lsn(1, 1).0 + total));
    // Eight clients raced to activate the log; it was activated once.
    let meta = cluster.store.get_log(log).await.unwrap();
    assert_eq!(meta.current_epoch(), Epoch(1));
    assert_eq!(slow.activations.load(Ordering::SeqCst), 1);
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_window_is_seq_no_bufs_until_completions_are_reported() {
    let cluster = Cluster::start(3, &[1], test_config).await;
    let log = cluster.create_log(2, attrs(2, 0, 4)).await;
    let g = cluster.grant(0, log, 4).await;
    assert_eq!(g.first, lsn(1, 1));
    assert_eq!(
        cluster.call(0, sequence(log, 1, false)).await,
        ClientResponse::SeqNoBufs
    );
    // A report of LSNs never granted is refused, terminally.
    assert_error(
        &cluster.report(0, log, lsn(1, 5), 1).await,
        ErrorCode::BadRequest,
    );
    assert_eq!(
        cluster.report(0, log, g.first, 4).await,
        ClientResponse::Ack
    );
    let g = cluster.grant(0, log, 1).await;
    assert_eq!(g.first, lsn(1, 5));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_reach_the_node_set_batched_after_completion_and_are_rebroadcast() {
    let mut cluster = Cluster::start(4, &[1], test_config).await;
    // Node sets of 3 out of 4 storage nodes.
    let a = cluster.create_log(10, attrs(2, 3, 64)).await;
    let b = cluster.create_log(11, attrs(2, 3, 64)).await;
    let c = cluster.create_log(12, attrs(2, 3, 64)).await;
    let ga = cluster.grant(0, a, 3).await;
    let gb = cluster.grant(0, b, 1).await;
    let gc = cluster.grant(0, c, 1).await;
    let set = |g: &Grant| -> BTreeSet<NodeId> { g.node_set.nodes().iter().copied().collect() };
    let (sa, sb, sc) = (set(&ga), set(&gb), set(&gc));
    assert_eq!(sa.len(), 3);

    // Storage nodes hold every release call from now on (recorded first).
    cluster.gate.send_replace(false);

    // Complete a's LSNs out of order: nothing is released until the prefix is complete.
    assert_eq!(
        cluster.report(0, a, lsn(1, 2), 2).await,
        ClientResponse::Ack
    );
    assert_eq!(cluster.report(0, a, ga.first, 1).await, ClientResponse::Ack);
    cluster
        .releases
        .wait_for("a's release at its node set", |seen| {
            sa.iter().all(|n| {
                seen.iter()
                    .any(|r| r.to == *n && r.has(a) == Some(lsn(1, 3)))
            })
        })
        .await;

    // While each node's first release call is held, b and c complete: their releases wait
    // for the node and then travel together.
    assert_eq!(cluster.report(0, b, gb.first, 1).await, ClientResponse::Ack);
    assert_eq!(cluster.report(0, c, gc.first, 1).await, ClientResponse::Ack);
    let shared: Vec<NodeId> = sa
        .iter()
        .filter(|n| sb.contains(n) && sc.contains(n))
        .copied()
        .collect();
    assert!(!shared.is_empty(), "three 3-of-4 node sets intersect");
    cluster.gate.send_replace(true);
    cluster
        .releases
        .wait_for("b and c in one batch", |seen| {
            shared.iter().all(|n| {
                seen.iter().any(|r| {
                    r.to == *n && r.has(b) == Some(lsn(1, 1)) && r.has(c) == Some(lsn(1, 1))
                })
            })
        })
        .await;

    // Nothing new completes on a; its release point is still re-sent periodically.
    cluster
        .releases
        .wait_for("a's release re-broadcast", |seen| {
            sa.iter().all(|n| {
                seen.iter()
                    .filter(|r| r.to == *n && r.has(a).is_some())
                    .count()
                    >= 3
            })
        })
        .await;
    for node in &cluster.storage {
        let got = cluster.releases.of(*node, a);
        if sa.contains(node) {
            assert!(
                got.iter().all(|l| *l == lsn(1, 3)),
                "only the completed prefix e1n3 is ever released, got {got:?}"
            );
        } else {
            assert!(got.is_empty(), "{node} is not in a's node set, got {got:?}");
        }
    }
    assert!(
        cluster
            .releases
            .seen
            .iter()
            .all(|r| r.sequencer == NodeId(1))
    );
    let tail = cluster.call(0, ClientRequest::GetTail { log: a }).await;
    assert_eq!(tail, ClientResponse::Tail { lsn: lsn(1, 3) });
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sequencer_redirects_to_the_owner_and_takes_over_with_no_redirect() {
    let cluster = Cluster::start(3, &[1, 2], test_config).await;
    let candidates = [(NodeId(1), 1), (NodeId(2), 1)];
    let id = (20..1000u64)
        .find(|l| placement::owner(*l, &candidates) == Some(NodeId(1)))
        .unwrap();
    let log = cluster.create_log(id, attrs(2, 0, 64)).await;
    let (owner, other) = (0, 1);
    assert_eq!(cluster.sequencers[owner].id, NodeId(1));

    assert_eq!(
        cluster.call(other, sequence(log, 1, false)).await,
        ClientResponse::Redirect { owner: NodeId(1) }
    );
    let g = cluster.grant(owner, log, 1).await;
    assert_eq!((g.first, g.sequencer), (lsn(1, 1), NodeId(1)));

    // The client could not reach the owner: the other node activates the next epoch.
    let g = match cluster.call(other, sequence(log, 1, true)).await {
        ClientResponse::Granted(g) => g,
        resp => panic!("expected a grant, got {resp:?}"),
    };
    assert_eq!((g.first, g.sequencer), (lsn(2, 1), NodeId(2)));
    // And keeps serving it without redirecting for a while.
    let g = cluster.grant(other, log, 1).await;
    assert_eq!(g.first, lsn(2, 2));

    match cluster.call(other, ClientRequest::GetClusterState).await {
        ClientResponse::ClusterState { nodes, .. } => assert_eq!(nodes.len(), 5),
        resp => panic!("expected the cluster state, got {resp:?}"),
    }
    cluster.stop().await;
}

/// `SequenceMany` answers every ask from what runs here, at once: a grant, a full window, a
/// redirect, an error — and `NotActive` for a log that would need an activation, which it
/// leaves to a `Sequence` of its own (so one request never waits for the epoch store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_many_answers_each_ask_at_once_and_leaves_activations_to_a_sequence_alone() {
    let cluster = Cluster::start(3, &[1, 2], test_config).await;
    let candidates = [(NodeId(1), 1), (NodeId(2), 1)];
    let owned_by = |node| {
        (20..1000u64).filter(move |l| placement::owner(*l, &candidates) == Some(NodeId(node)))
    };
    let mine: Vec<u64> = owned_by(1).take(4).collect();
    let theirs = owned_by(2).next().unwrap();
    let running = cluster.create_log(mine[0], attrs(2, 0, 64)).await;
    let full = cluster.create_log(mine[1], attrs(2, 0, 4)).await;
    let fresh = cluster.create_log(mine[2], attrs(2, 0, 64)).await;
    let unknown = LogId(mine[3]);
    let elsewhere = cluster.create_log(theirs, attrs(2, 0, 64)).await;
    assert_eq!(cluster.grant(0, running, 1).await.first, lsn(1, 1));
    assert_eq!(cluster.grant(0, full, 4).await.first, lsn(1, 1));

    let ask = |log, count| SequenceAsk { log, count };
    let many = ClientRequest::SequenceMany(vec![
        ask(running, 2),
        ask(full, 1),
        ask(fresh, 1),
        ask(elsewhere, 1),
        ask(unknown, 1),
        ask(running, 1),
    ]);
    let answers = match cluster.call(0, many).await {
        ClientResponse::Sequenced(answers) => answers,
        other => panic!("expected Sequenced, got {other:?}"),
    };
    assert_eq!(answers.len(), 6, "{answers:?}");
    match &answers[0] {
        SequenceAnswer::Granted(g) => {
            assert_eq!((g.log, g.first, g.count), (running, lsn(1, 2), 2));
        }
        other => panic!("expected a grant, got {other:?}"),
    }
    assert_eq!(answers[1], SequenceAnswer::NoBufs);
    assert_eq!(answers[2], SequenceAnswer::NotActive);
    assert_eq!(answers[3], SequenceAnswer::Redirect { owner: NodeId(2) });
    assert_eq!(answers[4], SequenceAnswer::NotActive);
    // Asks are answered in order: the second ask of `running` follows the first's LSNs.
    match &answers[5] {
        SequenceAnswer::Granted(g) => assert_eq!(g.first, lsn(1, 4)),
        other => panic!("expected a grant, got {other:?}"),
    }

    // Nothing was activated for the asks answered `NotActive`: the epoch store still has
    // the fresh log at its first epoch, and the node keeps no state for either log.
    assert_eq!(
        cluster.store.get_log(fresh).await.unwrap().next_epoch,
        Epoch(1)
    );
    let node = &cluster.sequencers[0].node;
    assert_eq!(node.log_state(fresh), None);
    assert_eq!(node.log_state(unknown), None);
    // A `Sequence` alone activates it; an unknown log is then a typed NotFound.
    assert_eq!(cluster.grant(0, fresh, 1).await.first, lsn(1, 1));
    assert_error(
        &cluster.call(0, sequence(unknown, 1, false)).await,
        ErrorCode::NotFound,
    );
    // Once running, the fresh log is granted from a `SequenceMany` too.
    match cluster
        .call(0, ClientRequest::SequenceMany(vec![ask(fresh, 1)]))
        .await
    {
        ClientResponse::Sequenced(a) => match a.as_slice() {
            [SequenceAnswer::Granted(g)] => assert_eq!(g.first, lsn(1, 2)),
            other => panic!("expected one grant, got {other:?}"),
        },
        other => panic!("expected Sequenced, got {other:?}"),
    }
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_with_an_unrecovered_older_epoch_releases_nothing_until_recovery_finishes() {
    let mut cluster = Cluster::start(3, &[1], test_config).await;
    let pending = cluster.create_log(30, attrs(2, 0, 64)).await;
    let control = cluster.create_log(31, attrs(2, 0, 64)).await;
    // A previous sequencer ran epoch 1 and vanished: epoch 1 is unrecovered.
    cluster
        .store
        .activate(pending, ActivateOptions::default())
        .await
        .unwrap();

    let g = cluster.grant(0, pending, 2).await;
    assert_eq!(g.first, lsn(2, 1));
    assert_eq!(
        cluster.report(0, pending, g.first, 2).await,
        ClientResponse::Ack
    );
    // The control log completes after it, through the same broadcaster and the same nodes.
    let gc = cluster.grant(0, control, 1).await;
    assert_eq!(
        cluster.report(0, control, gc.first, 1).await,
        ClientResponse::Ack
    );
    let storage = cluster.storage.clone();
    cluster
        .releases
        .wait_for(
            "the control log's release and a re-broadcast everywhere",
            |seen| {
                storage.iter().all(|n| {
                    seen.iter()
                        .filter(|r| r.to == *n && r.has(control).is_some())
                        .count()
                        >= 2
                })
            },
        )
        .await;
    assert!(
        cluster
            .releases
            .seen
            .iter()
            .all(|r| r.has(pending).is_none()),
        "nothing of a log with an unrecovered epoch may be released"
    );
    assert_eq!(
        cluster
            .call(0, ClientRequest::GetTail { log: pending })
            .await,
        ClientResponse::Tail { lsn: Lsn::INVALID }
    );
    let node = &cluster.sequencers[0].node;
    assert_eq!(node.log_state(pending), Some((Epoch(2), Lsn::INVALID)));
    // Recovery of epoch 1 was started (and keeps retrying its seals); the control log, a
    // first activation, needed none.
    assert_eq!(node.recovery_pending(pending), Some(true));
    assert_eq!(node.recovery_pending(control), Some(false));
    let stats = node.recovery_stats();
    assert_eq!((stats.started, stats.active, stats.completed), (1, 1, 0));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_log_is_a_typed_not_found() {
    let cluster = Cluster::start(3, &[1], test_config).await;
    let log = LogId(40);
    assert_error(
        &cluster.call(0, sequence(log, 1, false)).await,
        ErrorCode::NotFound,
    );
    assert_error(
        &cluster.call(0, ClientRequest::GetTail { log }).await,
        ErrorCode::NotFound,
    );
    assert_error(
        &cluster.report(0, log, lsn(1, 1), 1).await,
        ErrorCode::BadRequest,
    );
    // Once created, the same log activates normally.
    cluster.create_log(40, attrs(2, 0, 64)).await;
    assert_eq!(cluster.grant(0, log, 1).await.first, lsn(1, 1));
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_lsn_moves_the_log_to_a_new_epoch() {
    let cluster = Cluster::start(3, &[1], |node| SequencerConfig {
        timing: SequencerTiming {
            append_timeout: Duration::from_millis(200),
            abandon_grace: Duration::from_millis(100),
            release_rebroadcast: Duration::from_millis(200),
        },
        ..test_config(node)
    })
    .await;
    let log = cluster.create_log(50, attrs(2, 0, 64)).await;
    let g = cluster.grant(0, log, 2).await;
    assert_eq!(
        cluster.report(0, log, g.first, 1).await,
        ClientResponse::Ack
    );
    // e1n2 is never reported: the tick finds it abandoned and reactivates.
    let node = cluster.sequencers[0].node.clone();
    let deadline = Instant::now() + T;
    while node.log_state(log).map(|(e, _)| e) != Some(Epoch(2)) {
        assert!(
            Instant::now() < deadline,
            "no reactivation: {:?}",
            node.log_state(log)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The new epoch's release point keeps what epoch 1 released (e1n1).
    assert_eq!(node.log_state(log), Some((Epoch(2), lsn(1, 1))));
    assert_eq!(cluster.grant(0, log, 1).await.first, lsn(2, 1));
    // Reactivated once, conditionally on epoch 1.
    assert_eq!(
        cluster.store.get_log(log).await.unwrap().current_epoch(),
        Epoch(2)
    );
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_outlives_the_request_that_started_it() {
    let store = Arc::new(MemoryEpochStore::new());
    let slow = Arc::new(SlowActivations {
        inner: MemoryEpochStore::clone(&store),
        activations: AtomicUsize::new(0),
        // Longer than the first request waits, well within the activation timeout.
        delay: Duration::from_millis(1500),
    });
    let cluster = Cluster::start_with(3, &[1], test_config, store, slow.clone()).await;
    let log = cluster.create_log(60, attrs(2, 0, 64)).await;
    let seq = &cluster.sequencers[0];
    // The client gives up before the epoch store answers.
    let impatient = cluster
        .client
        .call(
            seq.addr,
            &sequence(log, 1, false),
            Duration::from_millis(300),
        )
        .await;
    assert!(
        impatient.is_err(),
        "answered before the store did: {impatient:?}"
    );
    // The activation it started finishes anyway (not cut at the request's deadline, which
    // could bump the epoch and lose the answer), so the retry is granted at once.
    let deadline = Instant::now() + T;
    while seq.node.log_state(log).is_none() {
        assert!(Instant::now() < deadline, "the activation never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let g = cluster.grant(0, log, 1).await;
    assert_eq!(g.first, lsn(1, 1));
    assert_eq!(slow.activations.load(Ordering::SeqCst), 1);
    assert_eq!(
        cluster.store.get_log(log).await.unwrap().current_epoch(),
        Epoch(1)
    );
    cluster.stop().await;
}
