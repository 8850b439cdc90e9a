//! An in-process Tally cluster for cross-role tests: N storage nodes and M sequencer nodes,
//! each its own QUIC endpoint on 127.0.0.1 with real certificates, real LogsDB (RocksDB) in a
//! temporary directory, and one shared [`FileEpochStore`]. Nodes are the same [`RunningNode`]s
//! `tally dev` and `tally server` run ([`tally::node::start`]).
//!
//! Node ids: sequencers are `1 ..= M`, storage nodes `101 ..`. A node can be stopped (a clean
//! shutdown: its lease is revoked, LogsDB closed) and started again on the same data directory
//! and the same port. Abrupt crashes (SIGKILL) are the multi-process tests' business.
//!
//! Every wait has a deadline and waits for a condition; nothing sleeps.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tally::node::{self, NodeSpec, RunningNode};
use tally_client::{Client, ClientConfig};
use tally_common::meta::{LogAttributes, LogMetadata, NodeInfo, Roles};
use tally_common::{Epoch, LogId, Lsn, NodeId, RecoveredEpoch};
use tally_epochstore::{
    ActivateOptions, Activation, BoxFuture, EpochStore, EpochStoreError, FileEpochStore, NodeLease,
    NodeWatch,
};
use tally_sequencer::runtime::SequencerNode;
use tally_storage_node::logsdb::{LogsDb, ReadItem};
use tally_storage_node::server::StorageNode;
use tokio_util::sync::CancellationToken;

/// Id of the first storage node; sequencers count from 1.
pub const FIRST_STORAGE_ID: u32 = 101;

/// Bounds every wait of the harness; generous for a loaded machine.
pub const WAIT: Duration = Duration::from_secs(60);

/// Record copies of a log: LSN → (the storage nodes holding it, the payload).
pub type Copies = BTreeMap<Lsn, (Vec<NodeId>, Vec<u8>)>;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub storage_nodes: u32,
    pub sequencers: u32,
    /// Applied to every node's spec before it starts (shrink partitions, change timeouts…).
    pub tweak: fn(&mut NodeSpec),
}

impl ClusterSpec {
    pub fn new(storage_nodes: u32, sequencers: u32) -> ClusterSpec {
        ClusterSpec {
            storage_nodes,
            sequencers,
            tweak: |_| {},
        }
    }
}

/// One node slot: its spec (kept to restart it) and the running node, if it runs.
#[derive(Debug)]
struct Slot {
    spec: NodeSpec,
    /// The node's handle on the shared epoch store (activations may be slowed down).
    store: Arc<SlowActivations>,
    shutdown: CancellationToken,
    running: Option<RunningNode>,
}

/// A running in-process cluster. Call [`TestCluster::shutdown`] at the end of a test to close
/// every node cleanly (dropping it cancels the nodes but does not wait for them).
#[derive(Debug)]
pub struct TestCluster {
    dir: tempfile::TempDir,
    store: Arc<FileEpochStore>,
    slots: BTreeMap<NodeId, Slot>,
}

impl TestCluster {
    /// Starts the storage nodes, then the sequencers, and waits until every node sees every
    /// other one in membership.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<TestCluster> {
        anyhow::ensure!(
            spec.storage_nodes >= 1 && spec.sequencers >= 1,
            "a cluster needs a storage node and a sequencer"
        );
        let dir = tempfile::tempdir().context("cannot create the cluster directory")?;
        tally::dev::ensure_certs(&dir.path().join("certs"))?;
        let store = Arc::new(
            FileEpochStore::open(dir.path().join("epochstore"))
                .context("cannot open the epoch store")?,
        );
        let mut cluster = TestCluster {
            dir,
            store,
            slots: BTreeMap::new(),
        };
        let storage = Roles {
            sequencer: false,
            storage: true,
        };
        let sequencer = Roles {
            sequencer: true,
            storage: false,
        };
        let ids = (0..spec.storage_nodes)
            .map(|i| (FIRST_STORAGE_ID + i, storage))
            .chain((1..=spec.sequencers).map(|i| (i, sequencer)));
        for (id, roles) in ids {
            let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            let mut node_spec = tally::dev::node_spec(cluster.dir.path(), id, roles, listen);
            (spec.tweak)(&mut node_spec);
            cluster.slots.insert(
                NodeId(id),
                Slot {
                    spec: node_spec,
                    store: Arc::new(SlowActivations::new(cluster.store.clone())),
                    shutdown: CancellationToken::new(),
                    running: None,
                },
            );
            cluster.start_node(NodeId(id)).await?;
        }
        cluster.wait_for_all_members().await?;
        Ok(cluster)
    }

    /// The epoch store every node shares.
    pub fn store(&self) -> Arc<dyn EpochStore> {
        self.store.clone()
    }

    /// The cluster directory: `certs/`, `epochstore/`, `nodes/<id>/`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The certificates directory (CA, node and client certificates).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn storage_ids(&self) -> Vec<NodeId> {
        self.ids(|r| r.storage)
    }

    pub fn sequencer_ids(&self) -> Vec<NodeId> {
        self.ids(|r| r.sequencer)
    }

    fn ids(&self, role: impl Fn(&Roles) -> bool) -> Vec<NodeId> {
        self.slots
            .iter()
            .filter(|(_, s)| role(&s.spec.roles))
            .map(|(id, _)| *id)
            .collect()
    }

    /// The running node `id`, if it runs.
    pub fn node(&self, id: NodeId) -> Option<&RunningNode> {
        self.slots.get(&id)?.running.as_ref()
    }

    /// The bound address of every running node (seeds for a client).
    pub fn seeds(&self) -> Vec<String> {
        self.slots
            .values()
            .filter_map(|s| s.running.as_ref())
            .map(|n| n.addr.to_string())
            .collect()
    }

    /// The storage role of node `id`, if it runs one.
    pub fn storage(&self, id: NodeId) -> Option<Arc<StorageNode>> {
        self.node(id)?.storage()
    }

    /// The LogsDB of storage node `id`, for direct inspection and test hooks.
    pub fn logsdb(&self, id: NodeId) -> Option<Arc<LogsDb>> {
        Some(self.storage(id)?.logsdb().clone())
    }

    /// Every record copy of `log` held by the running storage nodes: LSN → (holders, payload
    /// of the first holder). A copy that fails verification is an error: tests want to know.
    pub fn copies(&self, log: LogId) -> anyhow::Result<Copies> {
        let mut copies = Copies::new();
        for id in self.storage_ids() {
            let Some(db) = self.logsdb(id) else { continue };
            for item in db.read(log, Lsn::OLDEST, Lsn::MAX) {
                match item? {
                    ReadItem::Record(rec) => {
                        let entry = copies
                            .entry(rec.header.lsn)
                            .or_insert_with(|| (Vec::new(), rec.payload.clone()));
                        entry.0.push(id);
                    }
                    ReadItem::Trimmed { .. } => {}
                    ReadItem::Corrupt { lsn, kind } => {
                        anyhow::bail!("node {id}: corrupt copy of {log} at {lsn}: {kind:?}")
                    }
                }
            }
        }
        Ok(copies)
    }

    /// The sequencer role of node `id`, if it runs one.
    pub fn sequencer(&self, id: NodeId) -> Option<Arc<SequencerNode>> {
        self.node(id)?.sequencer()
    }

    /// A client configuration seeded with every running node.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig::new(self.seeds(), self.certs_dir())
    }

    /// A connected client with the default configuration.
    pub async fn client(&self) -> anyhow::Result<Client> {
        self.client_with(self.client_config()).await
    }

    /// A connected client with `config` (start from [`TestCluster::client_config`]).
    pub async fn client_with(&self, config: ClientConfig) -> anyhow::Result<Client> {
        Ok(tokio::time::timeout(WAIT, Client::connect(config))
            .await
            .context("client connect timed out")??)
    }

    /// Creates `log` in the epoch store with `attributes`.
    pub async fn create_log(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> anyhow::Result<LogMetadata> {
        Ok(self.store.create_log(log, attributes).await?)
    }

    /// Creates logs `logs` with replication `replication` and default attributes otherwise.
    pub async fn create_logs(
        &self,
        logs: impl IntoIterator<Item = u64>,
        replication: u8,
    ) -> anyhow::Result<()> {
        for log in logs {
            let attributes = LogAttributes {
                replication,
                ..LogAttributes::default()
            };
            self.create_log(LogId(log), attributes).await?;
        }
        Ok(())
    }

    /// Creates the first log (from 1) that sequencer `owner` owns by placement, as its
    /// membership view sees it, with replication `replication` (other attributes default).
    pub async fn create_log_owned_by(
        &self,
        owner: NodeId,
        replication: u8,
    ) -> anyhow::Result<LogId> {
        let seq = self
            .sequencer(owner)
            .with_context(|| format!("sequencer {owner} is not running"))?;
        let view = seq.membership().view();
        let log = (1..1000u64)
            .map(LogId)
            .find(|l| view.owner(*l) == Some(owner))
            .with_context(|| format!("no log below 1000 is owned by {owner}"))?;
        let attributes = LogAttributes {
            replication,
            ..LogAttributes::default()
        };
        self.create_log(log, attributes).await?;
        Ok(log)
    }

    /// Makes every later activation of a log by node `id` wait `delay` before it reaches the
    /// epoch store: a live node that is slow to activate (a loaded machine, a slow etcd).
    /// `Duration::ZERO` ends it. Activations already waiting keep their delay.
    pub fn delay_activations(&self, id: NodeId, delay: Duration) -> anyhow::Result<()> {
        let slot = self
            .slots
            .get(&id)
            .with_context(|| format!("no node {id}"))?;
        slot.store.set_delay(delay);
        Ok(())
    }

    /// Activations of logs (by any node) that have not reached the epoch store's answer yet.
    pub fn activations_in_flight(&self) -> usize {
        self.slots.values().map(|s| s.store.in_flight()).sum()
    }

    /// Waits until no activation is in flight ([`TestCluster::activations_in_flight`]).
    pub async fn wait_activations_settled(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut every = tokio::time::interval(Duration::from_millis(10));
        while self.activations_in_flight() > 0 {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "activations still in flight after {WAIT:?}"
            );
            every.tick().await;
        }
        Ok(())
    }

    /// The bound address of running node `id`.
    pub fn addr(&self, id: NodeId) -> anyhow::Result<SocketAddr> {
        Ok(self
            .node(id)
            .with_context(|| format!("node {id} is not running"))?
            .addr)
    }

    /// Stops node `id` cleanly (endpoint drained, lease revoked, LogsDB closed). Its data
    /// directory and port are kept for [`TestCluster::restart`].
    pub async fn stop(&mut self, id: NodeId) -> anyhow::Result<()> {
        let slot = self
            .slots
            .get_mut(&id)
            .with_context(|| format!("no node {id}"))?;
        let running = slot
            .running
            .take()
            .with_context(|| format!("node {id} is not running"))?;
        // Restart on the same port, so addresses other nodes and clients know stay valid.
        slot.spec.listen = running.addr;
        slot.shutdown.cancel();
        tokio::time::timeout(WAIT, running.shutdown())
            .await
            .with_context(|| format!("node {id} did not stop in time"))??;
        Ok(())
    }

    /// Starts node `id` again on its data directory and port, and waits until it sees the
    /// running members.
    pub async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        let listen = self
            .slots
            .get(&id)
            .with_context(|| format!("no node {id}"))?
            .spec
            .listen;
        wait_port_free(listen).await?;
        self.start_node(id).await?;
        self.wait_for_all_members().await
    }

    async fn start_node(&mut self, id: NodeId) -> anyhow::Result<()> {
        let slot = self
            .slots
            .get_mut(&id)
            .with_context(|| format!("no node {id}"))?;
        anyhow::ensure!(slot.running.is_none(), "node {id} is already running");
        slot.shutdown = CancellationToken::new();
        let running = tokio::time::timeout(
            WAIT,
            node::start(slot.spec.clone(), slot.store.clone(), slot.shutdown.clone()),
        )
        .await
        .with_context(|| format!("node {id} did not start in time"))??;
        slot.running = Some(running);
        Ok(())
    }

    /// Waits until every running node's membership views hold every running node.
    pub async fn wait_for_all_members(&self) -> anyhow::Result<()> {
        let members: Vec<NodeId> = self
            .slots
            .iter()
            .filter(|(_, s)| s.running.is_some())
            .map(|(id, _)| *id)
            .collect();
        for slot in self.slots.values() {
            if let Some(node) = &slot.running {
                tokio::time::timeout(WAIT, node::wait_for_members(node, &members))
                    .await
                    .with_context(|| format!("node {} never saw every member", node.id))?;
            }
        }
        Ok(())
    }

    /// Stops every node cleanly, sequencers first.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let mut ids: Vec<NodeId> = self.sequencer_ids();
        ids.extend(self.storage_ids());
        for id in ids {
            if self.node(id).is_some() {
                self.stop(id).await?;
            }
        }
        Ok(())
    }
}

type StoreResult<T> = std::result::Result<T, EpochStoreError>;

/// One node's handle on the shared epoch store: every call goes through to it, and
/// activations first wait the configured delay (see [`TestCluster::delay_activations`]).
#[derive(Debug)]
pub struct SlowActivations {
    inner: Arc<dyn EpochStore>,
    delay: std::sync::Mutex<Duration>,
    /// Activations called and not finished (or dropped) yet.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowActivations {
    pub fn new(inner: Arc<dyn EpochStore>) -> SlowActivations {
        SlowActivations {
            inner,
            delay: std::sync::Mutex::new(Duration::ZERO),
            in_flight: Arc::default(),
        }
    }

    /// Activations through this handle that have not finished yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner()) = delay;
    }

    fn delay(&self) -> Duration {
        *self.delay.lock().unwrap_or_else(|e| e.into_inner())
    }
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
        let delay = self.delay();
        let guard = InFlight::new(self.in_flight.clone());
        Box::pin(async move {
            let _guard = guard;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.inner.activate(log, options).await
        })
    }

    fn set_last_clean_epoch(
        &self,
        log: LogId,
        epoch: Epoch,
        tail: Lsn,
        recovered: Option<RecoveredEpoch>,
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

/// Counts one activation in flight while it lives.
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(count: Arc<std::sync::atomic::AtomicUsize>) -> InFlight {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        InFlight(count)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Waits until `addr`'s UDP port can be bound again: a stopped endpoint's driver task lets go
/// of its socket shortly after `shutdown` returns.
async fn wait_port_free(addr: SocketAddr) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match std::net::UdpSocket::bind(addr) {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => {
                anyhow::bail!("{addr} still in use after {WAIT:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for slot in self.slots.values() {
            slot.shutdown.cancel();
        }
    }
}
