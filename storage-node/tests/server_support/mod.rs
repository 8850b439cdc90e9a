//! Helpers shared by the storage-server integration tests: one storage node serving both
//! protocols over real QUIC on loopback (mutual TLS with a fresh cluster CA), real RocksDB in a
//! temporary directory, and an in-memory epoch store for membership.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tally_common::meta::Roles;
use tally_common::transport::{
    ClientProtocol, Connector, NodeProtocol, Server, TlsIdentity, TransportConfig,
    generate_cluster_certs,
};
use tally_common::wire::{StoreBatch, StoreRecord};
use tally_common::{
    Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, payload_crc32,
};
use tally_epochstore::{EpochStore, MemoryEpochStore};
use tally_storage_node::logsdb::{LogsDbConfig, ReadItem};
use tally_storage_node::server::{self, StorageConfig, StorageDeps, StorageNode, StorageRuntime};
use tokio_util::sync::CancellationToken;

pub const ME: NodeId = NodeId(1);
pub const T: Duration = Duration::from_secs(20);

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub certs: PathBuf,
    pub store: Arc<MemoryEpochStore>,
    pub runtime: Option<StorageRuntime>,
    pub node: Arc<StorageNode>,
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
}

pub fn config(dir: &std::path::Path) -> StorageConfig {
    let mut config = StorageConfig::new(ME, "test-cluster", dir.join("data"));
    config.logsdb = LogsDbConfig::small_for_tests();
    config.min_free_disk_bytes = 0;
    config
}

/// Starts a storage node with the defaults of [`config`] changed by `tweak`, binds it and
/// registers it in membership.
pub async fn start(tweak: impl FnOnce(&mut StorageConfig)) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    generate_cluster_certs(&certs, "test-cluster", &["127.0.0.1".to_owned()]).unwrap();
    start_in(dir, Arc::new(MemoryEpochStore::new()), tweak).await
}

/// Starts the node again on the data, certificates and epoch store of a stopped fixture
/// ([`Fixture::stop`]).
pub async fn restart(
    dir: tempfile::TempDir,
    store: Arc<MemoryEpochStore>,
    tweak: impl FnOnce(&mut StorageConfig),
) -> Fixture {
    start_in(dir, store, tweak).await
}

async fn start_in(
    dir: tempfile::TempDir,
    store: Arc<MemoryEpochStore>,
    tweak: impl FnOnce(&mut StorageConfig),
) -> Fixture {
    let certs = dir.path().join("certs");
    let mut cfg = config(dir.path());
    tweak(&mut cfg);
    let shutdown = CancellationToken::new();
    let deps = StorageDeps::new(store.clone() as Arc<dyn EpochStore>);
    let runtime = server::run(cfg, deps, shutdown.clone()).await.unwrap();
    let node = runtime.node();
    let identity = TlsIdentity::load(&certs, "node").unwrap();
    let server = Server::builder(TransportConfig::default(), identity)
        .service::<ClientProtocol, _>(node.clone())
        .service::<NodeProtocol, _>(node.clone())
        .bind("127.0.0.1:0".parse().unwrap(), shutdown.clone())
        .unwrap();
    let addr = server.local_addr();
    runtime
        .register(addr.to_string(), Roles::default())
        .await
        .unwrap();
    Fixture {
        dir,
        certs,
        store,
        runtime: Some(runtime),
        node,
        server: Some(server),
        addr,
        shutdown,
    }
}

impl Fixture {
    pub fn client(&self) -> Connector<ClientProtocol> {
        let identity = TlsIdentity::load(&self.certs, "client").unwrap();
        Connector::bind(
            &identity,
            TransportConfig::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap()
    }

    pub fn peer(&self) -> Connector<NodeProtocol> {
        let identity = TlsIdentity::load(&self.certs, "node").unwrap();
        Connector::bind(
            &identity,
            TransportConfig::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap()
    }

    /// Every record of `log` on the node (errors and corrupt items fail the test).
    pub fn records(&self, log: LogId) -> Vec<tally_storage_node::LogRecord> {
        self.node
            .logsdb()
            .read(log, Lsn::OLDEST, Lsn::MAX)
            .filter_map(|item| match item.expect("read") {
                ReadItem::Record(r) => Some(r),
                ReadItem::Trimmed { .. } => None,
                ReadItem::Corrupt { lsn, kind } => panic!("corrupt copy at {lsn}: {kind}"),
            })
            .collect()
    }

    /// Shuts the server and the storage role down (deregistering, closing LogsDB cleanly).
    pub async fn stop(mut self) -> (tempfile::TempDir, Arc<MemoryEpochStore>) {
        self.server.take().unwrap().shutdown().await;
        let Fixture {
            dir,
            store,
            runtime,
            node,
            ..
        } = self;
        drop(node);
        runtime.unwrap().shutdown().await.unwrap();
        (dir, store)
    }
}

pub fn lsn(epoch: u32, esn: u32) -> Lsn {
    Lsn::new(Epoch(epoch), Esn(esn))
}

/// A payload derived from its position, so a reader can check it without remembering it.
pub fn payload_for(log: LogId, lsn: Lsn) -> Vec<u8> {
    let seed = log.0.wrapping_mul(31) ^ lsn.0;
    (0..100 + (lsn.0 % 50) as usize)
        .map(|i| (seed.wrapping_add(i as u64).wrapping_mul(131) >> 3) as u8)
        .collect()
}

pub fn copyset(nodes: &[u32]) -> Copyset {
    Copyset::new(nodes.iter().copied().map(NodeId).collect()).unwrap()
}

/// A durable wave-1 batch of `log` in `epoch` at `esns`, copyset {1, 2}, with good checksums.
pub fn batch(log: LogId, epoch: u32, esns: std::ops::RangeInclusive<u32>) -> StoreBatch {
    StoreBatch {
        log,
        copyset: copyset(&[1, 2]),
        wave_or_seal: 1,
        flags: RecordFlags::NONE,
        durability: Durability::Durable,
        lng: Esn(0),
        records: esns
            .map(|esn| {
                let lsn = lsn(epoch, esn);
                let payload = payload_for(log, lsn);
                StoreRecord {
                    lsn,
                    timestamp_ms: 1_700_000_000_000 + u64::from(esn),
                    payload_crc32: payload_crc32(&payload),
                    payload: payload.into(),
                }
            })
            .collect(),
    }
}
