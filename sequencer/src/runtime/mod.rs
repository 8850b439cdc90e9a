//! The sequencer runtime: runs the pure per-log state machines ([`crate::LogSequencer`]) over
//! the network (DESIGN §5). It places logs by weighted rendezvous hashing over the live
//! sequencer nodes (answering `Redirect` otherwise), activates logs through the epoch store,
//! grants LSN ranges, applies completion reports, batches and re-broadcasts release points to
//! storage nodes, and reactivates into a new epoch on ESN exhaustion or abandoned LSNs.
//!
//! Layout:
//! - [`config`]: [`SequencerConfig`] (defaults, validation).
//! - [`placement`]: [`Membership`], the live view from the epoch store's membership watch, and
//!   the redirect decision.
//! - [`logs`]: [`LogTable`], per-log state and activation (one activation at a time per log).
//! - [`releases`]: [`ReleaseBroadcaster`], batched release points per storage node.
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
//! **Current limits.** Recovery of older epochs is not wired in: a log activated while an
//! older epoch is unrecovered (LCE < epoch − 1, e.g. after a failover or a reactivation) grants
//! and completes appends but never releases them (see [`logs`]). Preemption learned by clients
//! from storage nodes has no message yet; [`SequencerNode::preempted`] is the hook. Nodes with
//! both roles are registered by the hosting server, not by this runtime.

pub mod config;
pub mod logs;
pub mod placement;
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
pub use releases::ReleaseBroadcaster;
pub use tally_epochstore::{Members, MembershipView};

use logs::Effects;

/// What the runtime needs from outside.
#[derive(Debug, Clone)]
pub struct SequencerDeps {
    pub store: Arc<dyn EpochStore>,
    /// Node-protocol connector for releases (a node identity).
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
    logs: LogTable,
    releases: Arc<ReleaseBroadcaster>,
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

    /// A storage node answered `Preempted(seal)` for `log`: the sequencer of an epoch at or
    /// below `seal` stops granting. No message carries this to the sequencer yet.
    pub fn preempted(&self, log: LogId, seal: Epoch) {
        self.logs.preempted(log, seal);
    }

    /// Hands what a state-machine call produced to the broadcaster; returns whether the log
    /// asked for a new epoch.
    fn apply(&self, effects: Effects) -> bool {
        if let Some(log) = effects.log {
            for lsn in &effects.releases {
                self.releases.enqueue(log, *lsn, &effects.targets);
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
            let deadline = Instant::now() + node.config.activation_timeout;
            if let Err(e) = node.logs.activate(&*node.store, &slot, deadline).await {
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
    let node = Arc::new(SequencerNode {
        logs: LogTable::new(
            config.node,
            config.timing,
            config.max_logs,
            config.activation_timeout,
        ),
        store: deps.store.clone(),
        membership: membership.clone(),
        releases: releases.clone(),
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
