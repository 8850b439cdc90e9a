//! The sequencer runtime: runs the pure per-log state machines ([`crate::LogSequencer`]) over
//! the network (DESIGN §5). It places logs by weighted rendezvous hashing over the live
//! sequencer nodes (answering `Redirect` otherwise), activates logs through the epoch store,
//! grants LSN ranges, applies completion reports, batches and re-broadcasts release points to
//! storage nodes, reactivates into a new epoch on ESN exhaustion or abandoned LSNs, and
//! recovers the older epochs an activation inherited (DESIGN §9) before the log releases.
//!
//! Layout:
//! - [`config`]: [`SequencerConfig`] (defaults, validation).
//! - [`placement`]: [`Membership`], the live view from the epoch store's membership watch, and
//!   the redirect decision.
//! - [`logs`]: [`LogTable`], per-log state and activation (one activation at a time per log).
//! - [`releases`]: [`ReleaseBroadcaster`], batched release points per storage node.
//! - [`recovery`]: the per-log recovery driver that executes [`crate::recovery::LogRecovery`]
//!   over the node protocol and the epoch store; `recovery_stats`: its [`RecoveryStats`].
//! - `service`: the `Service<ClientProtocol>` implementation of [`SequencerNode`].
//!
//! How a server runs it (`tally server`, `tally dev`):
//!
//! ```text
//! let seq = runtime::run(SequencerConfig::new(node_id), SequencerDeps { store, releases }, shutdown.clone()).await?;
//! let server = Server::builder(transport, identity)
//!     .service::<ClientProtocol, _>(seq.node())     // plus the storage role's services
//!     .bind(addr, shutdown.clone())?;
//! // register the node (roles.sequencer = true) with a lease; the sequencer does not register itself
//! shutdown.cancelled().await;
//! server.shutdown().await;
//! seq.stopped().await;
//! ```
//!
//! Every activation goes through `SequencerNode::activate`, which runs it as a task on the
//! node's tracker (bounded by `activation_timeout`, not by the deadline of the request that
//! asked: a slow epoch store must not make every impatient request start over); when the new
//! epoch inherits unrecovered epochs (LCE < epoch − 1: a failover, a reactivation, a restarted
//! node) it spawns a recovery driver; the log grants and completes appends at once and releases
//! once the driver reports the recovered tail. The node-protocol connector of
//! [`SequencerDeps::releases`] carries both releases and recovery.
//!
//! **Preemption** (DESIGN §5). A client whose store of an LSN of epoch `e` a storage node
//! refused with `Preempted{seal}` tells the granting sequencer (`ReportPreempted{log, e,
//! seal}`, [`SequencerNode::report_preempted`]); recovery that meets a higher seal does the
//! same internally. The epoch stops granting. The next `Sequence` for the log is placed as
//! usual: the owner (or a node asked with `no_redirect`) activates a new epoch through the
//! store — above the seal, since epochs come from the store — recovering the older ones as
//! after any failover; any other node redirects to the owner. A report naming an epoch the
//! node no longer runs is ignored. Nodes with both roles are registered by the hosting
//! server, not by this runtime.

pub mod config;
pub mod logs;
pub mod placement;
pub mod recovery;
mod recovery_stats;
pub mod releases;
mod service;

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tally_common::transport::{Connector, NodeProtocol};
use tally_common::{Epoch, LogId, Lsn, NodeId};
use tally_epochstore::{EpochStore, EpochStoreError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{ConfigError, SequencerConfig};
pub use logs::{ActivationError, LogTable};
pub use placement::{Membership, Placement};
pub use recovery_stats::{RecoveryStats, RecoveryStatsSnapshot};
pub use releases::ReleaseBroadcaster;
pub use tally_epochstore::{Members, MembershipView};

use logs::{Effects, LogSlot};
use recovery::Recoveries;

/// What the runtime needs from outside.
#[derive(Debug, Clone)]
pub struct SequencerDeps {
    pub store: Arc<dyn EpochStore>,
    /// Node-protocol connector (a node identity) for releases and recovery (seals, digests,
    /// recovery stores, cleans).
    pub releases: Arc<Connector<NodeProtocol>>,
}

/// Why the runtime did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read membership from the epoch store: {0}")]
    Membership(EpochStoreError),
    #[error("reading membership from the epoch store took longer than {0:?}")]
    MembershipTimeout(std::time::Duration),
}

/// The sequencer role of one node: the state behind its `Service<ClientProtocol>`.
#[derive(Debug)]
pub struct SequencerNode {
    config: SequencerConfig,
    store: Arc<dyn EpochStore>,
    membership: Arc<Membership>,
    logs: Arc<LogTable>,
    releases: Arc<ReleaseBroadcaster>,
    recoveries: Arc<Recoveries>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl SequencerNode {
    pub fn id(&self) -> NodeId {
        self.config.node
    }

    pub fn membership(&self) -> &Arc<Membership> {
        &self.membership
    }

    /// The epoch `log` runs in on this node and its release point, if it runs here.
    pub fn log_state(&self, log: LogId) -> Option<(Epoch, Lsn)> {
        self.logs.tail(log)
    }

    /// Whether `log` runs here and its releases still wait for recovery of older epochs.
    pub fn recovery_pending(&self, log: LogId) -> Option<bool> {
        self.logs.recovery_pending(log)
    }

    /// This node's recovery counters.
    pub fn recovery_stats(&self) -> RecoveryStatsSnapshot {
        self.recoveries.stats.snapshot()
    }

    /// The running epoch of `log` here and the seal that preempted it, if it is preempted.
    pub fn preemption(&self, log: LogId) -> Option<(Epoch, Epoch)> {
        self.logs.preemption(log)
    }

    /// Makes `slot` run a current epoch (see [`LogTable::activate`]) and starts the recovery
    /// the new epoch needs, if any. The activation runs as a task of its own, bounded by
    /// `activation_timeout`: if the caller stops waiting (its request deadline passed), the
    /// activation still finishes and the log runs for the next request.
    async fn activate(&self, slot: &Arc<LogSlot>) -> Result<(), ActivationError> {
        let logs = self.logs.clone();
        let store = self.store.clone();
        let recoveries = self.recoveries.clone();
        let shutdown = self.shutdown.clone();
        let slot = slot.clone();
        let task = self.tracker.spawn(async move {
            let activation = async {
                if let Some(job) = logs.activate(&*store, &slot).await? {
                    recoveries.spawn(slot.clone(), job);
                }
                Ok(())
            };
            tokio::select! {
                _ = shutdown.cancelled() => Err(ActivationError::ShuttingDown),
                result = activation => result,
            }
        });
        task.await.unwrap_or(Err(ActivationError::ShuttingDown))
    }

    /// The logs running here, in log order, at most `max` of them, and how many run in all.
    pub fn log_summaries(&self, max: usize) -> (usize, Vec<logs::LogSummary>) {
        self.logs.summaries(max)
    }

    /// This node's metrics handle (from its config).
    pub fn metrics(&self) -> &tally_common::metrics::SequencerMetrics {
        &self.config.metrics
    }
}

impl SequencerNode {
    /// A client reports that a storage node refused its store of an LSN of `log` in `epoch`
    /// with `Preempted{seal}` (`seal ≥ epoch`): if `epoch` is the log's running epoch here, it
    /// stops granting and the next `Sequence` moves the log to a new epoch or redirects (see
    /// the module notes). A report for another epoch is ignored. Returns whether the report
    /// preempted the running epoch.
    pub fn report_preempted(&self, log: LogId, epoch: Epoch, seal: Epoch) -> bool {
        let applied = self.logs.report_preempted(log, epoch, seal);
        if applied {
            tracing::info!(node = %self.config.node, %log, %epoch, %seal,
                "epoch preempted (reported by a client); the next Sequence moves the log");
        } else {
            tracing::debug!(node = %self.config.node, %log, %epoch, %seal,
                "preemption report ignored: the epoch does not run here or was preempted already");
        }
        applied
    }

    /// Hands what a state-machine call produced to the broadcaster; returns whether the log
    /// asked for a new epoch.
    fn apply(&self, effects: Effects) -> bool {
        if let Some(log) = effects.log {
            self.config
                .metrics
                .releases
                .inc_by(effects.releases.len() as u64);
            for lsn in &effects.releases {
                self.releases
                    .enqueue(log, *lsn, effects.epoch, &effects.targets);
            }
        }
        effects.reactivate.is_some()
    }

    /// Reactivates `log` in the background (abandoned LSNs found by a tick).
    fn spawn_reactivation(self: &Arc<Self>, log: LogId) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let Some(slot) = self.logs.get(log) else {
            return;
        };
        let node = self.clone();
        self.tracker.spawn(async move {
            if let Err(e) = node.activate(&slot).await {
                // The next Sequence request for the log tries again.
                tracing::warn!(node = %node.config.node, %log, error = %e, "reactivation failed");
            }
        });
    }

    async fn tick_loop(self: Arc<Self>) {
        let mut interval = tokio::time::interval(self.config.tick_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            for effects in self.logs.tick(Instant::now()) {
                let log = effects.log;
                if self.apply(effects)
                    && let Some(log) = log
                {
                    self.spawn_reactivation(log);
                }
            }
        }
    }
}

/// A started sequencer runtime: its service and its background tasks.
#[derive(Debug)]
pub struct SequencerRuntime {
    node: Arc<SequencerNode>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl SequencerRuntime {
    /// The service to register on the node's server for `ClientProtocol`.
    pub fn node(&self) -> Arc<SequencerNode> {
        self.node.clone()
    }

    /// Waits until the shutdown token is cancelled and every background task has ended.
    pub async fn stopped(self) {
        self.shutdown.cancelled().await;
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Stops this runtime (only it, not the token's parent) and waits for its tasks.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.stopped().await;
    }
}

/// Starts the sequencer role: loads membership (so no request is placed on an empty view),
/// then spawns the membership watch, the tick loop and the release broadcaster on a task
/// tracker. Everything stops when `shutdown` is cancelled.
pub async fn run(
    config: SequencerConfig,
    deps: SequencerDeps,
    shutdown: CancellationToken,
) -> Result<SequencerRuntime, StartError> {
    config.validate()?;
    let shutdown = shutdown.child_token();
    let tracker = TaskTracker::new();
    let membership = Arc::new(Membership::new(config.node));
    match tokio::time::timeout(config.activation_timeout, membership.load(&*deps.store)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(StartError::Membership(e)),
        Err(_) => return Err(StartError::MembershipTimeout(config.activation_timeout)),
    }
    let releases = Arc::new(ReleaseBroadcaster::new(
        config.node,
        config.release_batch_interval,
        config.release_timeout,
    ));
    let recoveries = Arc::new(Recoveries {
        me: config.node,
        timing: config.recovery,
        request_timeout: config.recovery_request_timeout,
        connector: deps.releases.clone(),
        membership: membership.clone(),
        store: deps.store.clone(),
        releases: releases.clone(),
        permits: Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_recoveries,
        )),
        stats: RecoveryStats::default(),
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
    });
    let node = Arc::new(SequencerNode {
        logs: Arc::new(
            LogTable::new(
                config.node,
                config.timing,
                config.max_logs,
                config.activation_timeout,
            )
            .with_metrics(config.metrics.clone()),
        ),
        store: deps.store.clone(),
        membership: membership.clone(),
        releases: releases.clone(),
        recoveries,
        tracker: tracker.clone(),
        shutdown: shutdown.clone(),
        config,
    });
    tracker.spawn({
        let membership = membership.clone();
        let store = deps.store.clone();
        let retry = node.config.membership_retry;
        let shutdown = shutdown.clone();
        async move { membership.watch(store, retry, shutdown).await }
    });
    tracker.spawn(releases.run(deps.releases, membership, tracker.clone(), shutdown.clone()));
    tracker.spawn(node.clone().tick_loop());
    tracing::info!(node = %node.config.node, "sequencer runtime started");
    Ok(SequencerRuntime {
        node,
        tracker,
        shutdown,
    })
}

/// Milliseconds since the Unix epoch, the timestamp stamped on grants.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
