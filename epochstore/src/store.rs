//! The [`EpochStore`] trait every implementation provides, its error type
//! [`EpochStoreError`] and the values it hands out: [`Activation`], [`NodeLease`],
//! [`NodeWatch`] and [`MembershipEvent`].
//!
//! Futures are boxed ([`BoxFuture`]) so the trait is object safe: the sequencer and the
//! storage nodes hold an `Arc<dyn EpochStore>` and do not care which backend is behind it.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tally_common::ids::{Epoch, LogId, Lsn, NodeId};
use tally_common::meta::{
    AttributesError, DataDirBinding, DataDirId, LogAttributes, LogMetadata, NodeInfo, NodeSetEntry,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// A boxed, sendable future: what every [`EpochStore`] method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub type Result<T, E = EpochStoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in an epoch store call.
///
/// Retryable errors ([`EpochStoreError::is_retryable`]) are `Unavailable` and `Timeout`; every
/// other variant is a definite answer that retrying will not change. A `Timeout` of a write
/// is indeterminate: the write may have been applied (an activation that timed out may have
/// consumed an epoch; that is safe, epochs are allowed to be skipped, never reused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochStoreError {
    /// The backend could not be reached or refused to serve (etcd down, no leader, ...).
    #[error("epoch store unavailable: {reason}")]
    Unavailable { reason: String },
    /// The call's deadline passed before it got an answer.
    #[error("epoch store call timed out after {after:?}")]
    Timeout { after: Duration },
    #[error("log {log} not found in the epoch store")]
    NotFound { log: LogId },
    #[error("log {log} already exists in the epoch store")]
    AlreadyExists { log: LogId },
    /// A monotone value (the last clean epoch) is already past the one offered.
    #[error("stale update: the stored last clean epoch is already {current}")]
    Stale { current: Epoch },
    /// A conditional activation found another epoch running.
    #[error("conditional activation failed: the current epoch is {current}")]
    ConditionFailed { current: Epoch },
    #[error(transparent)]
    InvalidAttributes(#[from] AttributesError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("log {log} has used up its epochs")]
    EpochsExhausted { log: LogId },
    /// Too few nodes can take the log's copies to pick its first node set.
    #[error("not enough storage nodes for a node set: {available} available, {needed} needed")]
    InsufficientNodes { available: usize, needed: usize },
    /// The node's registration is gone (its lease lapsed or it deregistered).
    #[error("node {node} is not registered")]
    NodeNotRegistered { node: NodeId },
    /// A stored value does not decode.
    #[error("corrupt value at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// Credentials rejected or permission denied.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// Another process holds the file store's directory.
    #[error("epoch store directory {path} is locked by another process")]
    Locked { path: String },
    /// A local I/O failure in the file store (not retried: the disk needs a human).
    #[error("epoch store I/O error: {0}")]
    Io(String),
    /// Configuration is invalid (bad endpoint, cluster name, TLS files, ...).
    #[error("invalid epoch store configuration: {0}")]
    Config(String),
    /// Anything else the backend answered.
    #[error("epoch store backend error: {0}")]
    Backend(String),
}

impl EpochStoreError {
    /// Whether the same call may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            EpochStoreError::Unavailable { .. } | EpochStoreError::Timeout { .. }
        )
    }
}

/// Options for [`EpochStore::activate`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActivateOptions {
    /// Conditional activation: only bump if the log's current epoch (`next_epoch − 1`) is
    /// this one, else fail with [`EpochStoreError::ConditionFailed`]. Lets a sequencer that
    /// reactivates avoid bumping twice when another node already did.
    pub if_current: Option<Epoch>,
}

/// The result of a successful activation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Activation {
    /// The epoch the sequencer now runs in (the stored `next_epoch` is one more).
    pub epoch: Epoch,
    /// The node set and replication of `epoch`, written in the same update as the bump.
    pub node_set: NodeSetEntry,
    /// Whether this activation started a new node-set history entry.
    pub node_set_changed: bool,
    /// The log's metadata as written by this activation (LCE, history, attributes).
    pub metadata: LogMetadata,
}

/// A change in node membership, as seen by [`EpochStore::watch_nodes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipEvent {
    /// A node registered.
    Joined(NodeInfo),
    /// A registered node changed its record (state, weight, address, ...).
    Updated(NodeInfo),
    /// A node deregistered or its lease lapsed.
    Left(NodeId),
}

/// Bound on undelivered membership events per watcher. An in-process watcher that falls this
/// far behind is closed (its receiver ends) and must watch again; the etcd watcher applies
/// backpressure instead.
pub const WATCH_BUFFER: usize = 1024;

/// A membership watch: the members at the start, then every change after it, in order.
#[derive(Debug)]
pub struct NodeWatch {
    pub initial: Vec<NodeInfo>,
    /// Ends when the store is dropped or the watcher fell behind; watch again then.
    pub events: mpsc::Receiver<MembershipEvent>,
}

/// Commands from a [`NodeLease`] to the task that keeps it alive.
#[derive(Debug)]
pub(crate) enum LeaseCommand {
    Update(NodeInfo, oneshot::Sender<Result<()>>),
    Deregister(oneshot::Sender<Result<()>>),
    Abandon(oneshot::Sender<()>),
}

/// A node's registration: a lease kept alive by a background task while this handle lives.
///
/// Dropping the handle revokes the lease (best effort, in the background). [`deregister`]
/// does the same and waits for it. [`abandon`] stops the keep-alive and leaves the lease to
/// lapse, as a crash would.
///
/// [`deregister`]: NodeLease::deregister
/// [`abandon`]: NodeLease::abandon
#[derive(Debug)]
pub struct NodeLease {
    node: NodeId,
    ttl: Duration,
    commands: mpsc::Sender<LeaseCommand>,
    task: JoinHandle<()>,
}

impl NodeLease {
    pub(crate) fn new(
        node: NodeId,
        ttl: Duration,
        commands: mpsc::Sender<LeaseCommand>,
        task: JoinHandle<()>,
    ) -> NodeLease {
        NodeLease {
            node,
            ttl,
            commands,
            task,
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The lease's time to live as granted by the store (etcd may round it up).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Replaces the node's record (same id) under the same lease.
    pub async fn update(&self, info: NodeInfo) -> Result<()> {
        if info.id != self.node {
            return Err(EpochStoreError::InvalidArgument(format!(
                "lease of {} cannot carry the record of {}",
                self.node, info.id
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.send(LeaseCommand::Update(info, tx)).await?;
        rx.await
            .unwrap_or(Err(EpochStoreError::NodeNotRegistered { node: self.node }))
    }

    /// Removes the node from membership now and stops the keep-alive.
    pub async fn deregister(self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(LeaseCommand::Deregister(tx)).await?;
        rx.await.unwrap_or(Ok(()))
    }

    /// Stops the keep-alive without deregistering: the node leaves when its lease lapses.
    pub async fn abandon(self) {
        let (tx, rx) = oneshot::channel();
        if self.send(LeaseCommand::Abandon(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether the keep-alive task is still running.
    pub fn is_active(&self) -> bool {
        !self.task.is_finished()
    }

    async fn send(&self, command: LeaseCommand) -> Result<()> {
        self.commands
            .send(command)
            .await
            .map_err(|_| EpochStoreError::NodeNotRegistered { node: self.node })
    }
}

/// The epoch store: per-log metadata that makes LSNs safe, plus node membership (DESIGN §4).
///
/// Every method has a deadline (the implementation's configured call timeout) and returns a
/// typed error rather than hanging when the backend is down.
pub trait EpochStore: Send + Sync + fmt::Debug + 'static {
    /// Creates a log with `attributes` and `next_epoch = 1`, no node-set history yet.
    fn create_log(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, Result<LogMetadata>>;

    /// The log's metadata; `NotFound` if it was never created (reading never creates).
    fn get_log(&self, log: LogId) -> BoxFuture<'_, Result<LogMetadata>>;

    /// Every log with its metadata.
    fn list_logs(&self) -> BoxFuture<'_, Result<BTreeMap<LogId, LogMetadata>>>;

    /// Replaces the log's attributes. They take effect from the next activation: the running
    /// epoch keeps the node set and replication it was activated with.
    fn update_attributes(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, Result<LogMetadata>>;

    /// Bumps `next_epoch` by compare-and-swap and returns the new epoch with its node set.
    /// A new node set is selected from current membership and attributes; a history entry is
    /// appended only when the selection differs from the last one. Both are written in the
    /// same atomic update, so no LSN of the epoch can exist before its node set is readable.
    fn activate(&self, log: LogId, options: ActivateOptions) -> BoxFuture<'_, Result<Activation>>;

    /// Records that every epoch up to `epoch` is recovered, with the tail LSN of `epoch`.
    /// Monotone: an `epoch` below the stored one fails with `Stale { current }`; the same
    /// epoch again is accepted without change.
    fn set_last_clean_epoch(
        &self,
        log: LogId,
        epoch: Epoch,
        tail: Lsn,
        recovered: Option<tally_common::RecoveredEpoch>,
    ) -> BoxFuture<'_, Result<LogMetadata>>;

    /// Registers `info` under a lease of `ttl`, kept alive while the returned handle lives.
    /// Registering an id that is already present replaces its record (a restarted node).
    fn register_node(&self, info: NodeInfo, ttl: Duration) -> BoxFuture<'_, Result<NodeLease>>;

    /// The registered nodes, by id.
    fn list_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>>>;

    /// The registered nodes and every join, update and leave after them.
    fn watch_nodes(&self) -> BoxFuture<'_, Result<NodeWatch>>;

    /// Binds storage node `node` to its data directory `dir` the first time, and answers what
    /// was on record (DESIGN §7): [`DataDirBinding::New`] once, [`DataDirBinding::Same`] on
    /// every later start on that directory, [`DataDirBinding::Other`] on any other directory.
    /// The binding is durable and outlives the node's lease; nothing replaces it.
    fn bind_data_dir(&self, node: NodeId, dir: DataDirId) -> BoxFuture<'_, Result<DataDirBinding>>;
}
