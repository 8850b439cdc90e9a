//! The storage node's network server (DESIGN §6 step 3, §7, §9): STORE (copyset, seals, soft
//! seals, checksums, free space, bounded in-flight work), RELEASE, SEAL, CLEAN, TRIM, the
//! recovery digest stream, read streams, time and size lookups, and the cluster state and log metadata every
//! node serves to clients, all on top of [`LogsDb`]. It also registers the node in membership.
//!
//! Layout, one main type each:
//! - [`config`]: [`StorageConfig`] (defaults in one place, `validate()`).
//! - [`admission`]: [`Admission`], in-flight store requests and bytes → `Overloaded`.
//! - [`disk`]: [`DiskMonitor`], free space → `NoSpace`.
//! - [`cluster`]: [`ClusterView`], the membership served as `ClusterState`.
//! - `store_path`: one STORE batch from either protocol, and LogsDB errors → wire answers.
//! - `client_service`: [`StorageNode::handle_client`] and `Service<ClientProtocol>`.
//! - `node_service`: `Service<NodeProtocol>` (Release, Seal, Store, Clean, Trim, Ping).
//! - `digest`: the `StartDigest` push stream of recovery.
//! - `log_admin`: `ListLogs` and `UpdateLog` through the epoch store, and `ScanEstimate`
//!   (what a read of a range would scan here, from the partition directory; `tally grep
//!   --stats`).
//! - [`read`]: the `StartRead` push streams of readers (position, filters, bounded chunks,
//!   tail following), and the single-copy shipping order ([`single_copy_shipper`]).
//!
//! How a server runs it (`tally server`, `tally dev`); a node with both roles composes the two
//! client services, because an endpoint routes one `Service<ClientProtocol>` per ALPN:
//!
//! ```text
//! let storage = server::run(StorageConfig::new(id, cluster, dir), StorageDeps::new(store), shutdown.clone()).await?;
//! let node = storage.node();                         // Arc<StorageNode>
//! let server = Server::builder(transport, identity)
//!     .service::<ClientProtocol, _>(composed)        // or `node.clone()` on a storage-only node
//!     .service::<NodeProtocol, _>(node.clone())
//!     .bind(addr, shutdown.clone())?;
//! storage.register(server.local_addr().to_string(), Roles { storage: true, sequencer: both }).await?;
//! shutdown.cancelled().await;
//! server.shutdown().await;
//! storage.shutdown().await?;                         // deregisters, closes LogsDB
//!
//! // the composed client service of a node with both roles:
//! async fn call(&self, ctx, req) -> ClientResponse {
//!     if StorageNode::serves(&req) {                 // storage + GetClusterState/GetLogMetadata
//!         return self.storage.handle_client(ctx, req).await.expect("served");
//!     }
//!     self.sequencer.call(ctx, req).await            // Sequence, ReportStored, GetTail, CreateLog
//! }
//! ```
//!
//! - `purge`: settling the epochs below a release's sequencer epoch, and purging the copies a
//!   recovery this node missed overruled (DESIGN §7).
//!
//! Not yet here: the recovery metadata of `Clean` (only the last clean epoch is recorded; the
//! clean tail is not: a purge reads what recovery decided from the epoch store instead).

pub mod admission;
pub mod cluster;
pub mod config;
pub mod disk;
pub mod read;

mod client_service;
mod digest;
mod log_admin;
mod node_service;
mod purge;
mod store_path;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tally_common::NodeId;
use tally_common::meta::{DataDirBinding, DataDirId, NodeInfo, Roles, StorageState};
use tally_epochstore::{EpochStore, EpochStoreError, NodeLease};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::logsdb::{Clock, LogsDb, LogsDbError, NodeIdentity, OpenReport, SystemClock};

pub use admission::{Admission, Admitted};
pub use cluster::ClusterView;
pub use config::{ConfigError, StorageConfig};
pub use disk::DiskMonitor;
pub use purge::PurgeStats;
pub use read::{single_copy_order, single_copy_rank, single_copy_shipper};

/// What the storage role needs from outside.
#[derive(Debug, Clone)]
pub struct StorageDeps {
    pub store: Arc<dyn EpochStore>,
    pub clock: Arc<dyn Clock>,
}

impl StorageDeps {
    /// The epoch store with the system clock.
    pub fn new(store: Arc<dyn EpochStore>) -> StorageDeps {
        StorageDeps {
            store,
            clock: Arc::new(SystemClock),
        }
    }
}

/// Why the storage role did not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open LogsDB: {0}")]
    LogsDb(#[from] LogsDbError),
    #[error("epoch store: {0}")]
    EpochStore(#[from] EpochStoreError),
    #[error("epoch store call took longer than {0:?}")]
    EpochStoreTimeout(std::time::Duration),
    #[error("a blocking LogsDB task (open or close) panicked or was cancelled")]
    BlockingTask,
}

/// The storage role of one node: the state behind its client and node services.
#[derive(Debug)]
pub struct StorageNode {
    config: StorageConfig,
    logsdb: Arc<LogsDb>,
    store: Arc<dyn EpochStore>,
    admission: Admission,
    /// One permit per open read stream (`max_read_streams`).
    read_streams: Arc<tokio::sync::Semaphore>,
    disk: Arc<DiskMonitor>,
    cluster: Arc<ClusterView>,
    /// The membership record this node registered, and its lease.
    registration: Arc<tokio::sync::Mutex<Option<(NodeInfo, NodeLease)>>>,
    /// Set once LogsDB refused a write after an I/O failure (read-only until restart).
    write_failed: AtomicBool,
    /// The data directory the epoch store has bound to this node id, when it is not the one
    /// LogsDB opened (wiped, replaced): this node cannot vouch for the id's data (DESIGN §7).
    replaced_dir: Option<DataDirId>,
    /// This process's incarnation, in every record it registers (`NodeInfo::incarnation`).
    incarnation: u64,
    /// Which epochs are settled per log, and what purging did (`purge`).
    purges: purge::Purges,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl StorageNode {
    pub fn id(&self) -> NodeId {
        self.config.node
    }

    pub fn config(&self) -> &StorageConfig {
        &self.config
    }

    /// The node's LogsDB (reads, metadata; tests read back what was stored).
    pub fn logsdb(&self) -> &Arc<LogsDb> {
        &self.logsdb
    }

    /// The in-flight store budgets.
    pub fn admission(&self) -> &Admission {
        &self.admission
    }

    /// Read streams open now (metrics, tests).
    pub fn open_read_streams(&self) -> usize {
        self.config.max_read_streams as usize - self.read_streams.available_permits()
    }

    pub fn disk(&self) -> &DiskMonitor {
        &self.disk
    }

    pub fn cluster(&self) -> &ClusterView {
        &self.cluster
    }

    /// The storage state this node registers: read-write unless its "no record" proves
    /// nothing (DESIGN §7) — it runs on another data directory than the one its id had, or
    /// LogsDB may have lost acknowledged `fast` writes in an unclean shutdown — or LogsDB has
    /// stopped accepting writes. Data loss wins over read-only: it decides whether the node's
    /// answers count.
    pub fn storage_state(&self) -> StorageState {
        if self.replaced_dir.is_some() || self.logsdb.open_report().recent_range_uncertain {
            StorageState::DataLoss
        } else if self.write_failed.load(Ordering::Relaxed) {
            StorageState::ReadOnly
        } else {
            StorageState::ReadWrite
        }
    }

    /// The data directory bound to this node id in the epoch store, when LogsDB runs on
    /// another one (the node then registers as `DataLoss`).
    pub fn replaced_data_dir(&self) -> Option<DataDirId> {
        self.replaced_dir
    }

    /// LogsDB refused a write after a write or sync failure: say so in membership, once.
    fn note_write_failure(&self) {
        if self.write_failed.swap(true, Ordering::Relaxed) || self.shutdown.is_cancelled() {
            return;
        }
        let id = self.id();
        tracing::error!(node = %id, "LogsDB refuses writes: node is read-only until restart");
        let registration = self.registration.clone();
        self.tracker.spawn(async move {
            let mut reg = registration.lock().await;
            if let Some((info, lease)) = reg.as_mut() {
                info.state = StorageState::ReadOnly;
                if let Err(e) = lease.update(info.clone()).await {
                    tracing::warn!(node = %id, error = %e, "cannot publish read-only state");
                }
            }
        });
    }
}

/// A started storage role: its services, background tasks and registration.
#[derive(Debug)]
pub struct StorageRuntime {
    node: Arc<StorageNode>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl StorageRuntime {
    /// The services to register on the node's server (`ClientProtocol` and `NodeProtocol`).
    pub fn node(&self) -> Arc<StorageNode> {
        self.node.clone()
    }

    /// What opening LogsDB found about the previous run.
    pub fn open_report(&self) -> OpenReport {
        self.node.logsdb.open_report()
    }

    /// Registers the node in membership under a lease (kept alive until shutdown), with the
    /// address the server is bound to. `roles.storage` is always set; set `roles.sequencer`
    /// when the same endpoint also runs the sequencer. Registering again replaces the record.
    pub async fn register(&self, address: String, roles: Roles) -> Result<NodeInfo, StartError> {
        let node = &self.node;
        let info = NodeInfo {
            id: node.id(),
            address,
            roles: Roles {
                storage: true,
                ..roles
            },
            location: node.config.location.clone(),
            weight: node.config.weight,
            state: node.storage_state(),
            incarnation: node.incarnation,
        };
        let timeout = node.config.epoch_store_timeout;
        let lease = tokio::time::timeout(
            timeout,
            node.store
                .register_node(info.clone(), node.config.lease_ttl),
        )
        .await
        .map_err(|_| StartError::EpochStoreTimeout(timeout))??;
        tracing::info!(node = %node.id(), address = %info.address, state = ?info.state, "registered in membership");
        let old = node
            .registration
            .lock()
            .await
            .replace((info.clone(), lease));
        if let Some((_, old)) = old {
            // The new registration replaced the record; just stop the old keep-alive.
            old.abandon().await;
        }
        Ok(info)
    }

    /// Waits until the shutdown token is cancelled and every background task has ended.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Stops the role: ends background tasks, deregisters, and closes LogsDB cleanly if no
    /// other handle holds it (shut the server down first; otherwise LogsDB closes when the
    /// last handle drops, and that is logged).
    pub async fn shutdown(self) -> Result<(), StartError> {
        self.shutdown.cancel();
        self.stopped().await;
        let reg = self.node.registration.lock().await.take();
        if let Some((_, lease)) = reg
            && let Err(e) = lease.deregister().await
        {
            tracing::warn!(node = %self.node.id(), error = %e, "cannot deregister");
        }
        let node = Arc::try_unwrap(self.node).map_err(|n| {
            tracing::warn!(node = %n.id(), "storage node still in use at shutdown; LogsDB closes when it is dropped");
        });
        let Ok(node) = node else { return Ok(()) };
        match Arc::try_unwrap(node.logsdb) {
            Ok(db) => tokio::task::spawn_blocking(move || db.close())
                .await
                .map_err(|_| StartError::BlockingTask)?
                .map_err(StartError::LogsDb),
            Err(_) => {
                tracing::warn!("LogsDB still in use at shutdown; it closes when dropped");
                Ok(())
            }
        }
    }
}

/// Starts the storage role: opens LogsDB (on the blocking pool), measures free space, loads
/// membership, and spawns the membership watch and the disk monitor on a task tracker. The
/// caller binds the server with [`StorageRuntime::node`] and then calls
/// [`StorageRuntime::register`] with the bound address. Everything stops with `shutdown`.
pub async fn run(
    config: StorageConfig,
    deps: StorageDeps,
    shutdown: CancellationToken,
) -> Result<StorageRuntime, StartError> {
    config.validate()?;
    let shutdown = shutdown.child_token();
    let identity = NodeIdentity::new(config.cluster.clone(), config.node);
    let (dir, db_config, clock) = (
        config.data_dir.clone(),
        config.logsdb.clone(),
        deps.clock.clone(),
    );
    let logsdb =
        tokio::task::spawn_blocking(move || LogsDb::open(dir, &identity, db_config, clock))
            .await
            .map_err(|_| StartError::BlockingTask)??;
    let report = logsdb.open_report();
    let timeout = config.epoch_store_timeout;
    let data_dir = logsdb.data_dir_id();
    let binding = tokio::time::timeout(timeout, deps.store.bind_data_dir(config.node, data_dir))
        .await
        .map_err(|_| StartError::EpochStoreTimeout(timeout))??;
    let replaced_dir = match binding {
        DataDirBinding::New | DataDirBinding::Same => None,
        DataDirBinding::Other { bound } => {
            tracing::error!(
                node = %config.node,
                dir = %config.data_dir.display(),
                %data_dir,
                %bound,
                "this data directory is not the one node {} stored its records in (wiped or \
                 replaced): registering as data-loss, so that no reader or recovery takes its \
                 \"no record\" for proof. Restore the original directory, or start this \
                 machine under a new node id on an empty directory",
                config.node
            );
            Some(bound)
        }
    };
    let disk = Arc::new(DiskMonitor::new(
        config.data_dir.clone(),
        config.min_free_disk_bytes,
    ));
    let cluster = Arc::new(ClusterView::default());
    tokio::time::timeout(timeout, cluster.load(&*deps.store))
        .await
        .map_err(|_| StartError::EpochStoreTimeout(timeout))??;
    let tracker = TaskTracker::new();
    let node = Arc::new(StorageNode {
        admission: Admission::new(
            config.max_in_flight_stores,
            config.max_in_flight_store_bytes,
        ),
        read_streams: Arc::new(tokio::sync::Semaphore::new(
            config.max_read_streams as usize,
        )),
        logsdb: Arc::new(logsdb),
        store: deps.store.clone(),
        disk: disk.clone(),
        cluster: cluster.clone(),
        registration: Arc::new(tokio::sync::Mutex::new(None)),
        write_failed: AtomicBool::new(false),
        replaced_dir,
        incarnation: NodeInfo::new_incarnation(),
        purges: purge::Purges::default(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        config,
    });
    {
        let (cluster, store, retry, shutdown) = (
            cluster.clone(),
            deps.store.clone(),
            node.config.membership_retry,
            shutdown.clone(),
        );
        tracker.spawn(async move { cluster.follow(store, retry, shutdown).await });
    }
    {
        let (disk, interval, shutdown) = (
            disk.clone(),
            node.config.disk_check_interval,
            shutdown.clone(),
        );
        tracker.spawn(async move { disk.run(interval, shutdown).await });
    }
    tracing::info!(node = %node.id(), ?report, "storage role started");
    Ok(StorageRuntime {
        node,
        tracker,
        shutdown,
    })
}
