//! [`ClusterView`]: the membership this node serves to clients as `ClusterState`, loaded from
//! the epoch store at start and kept current by its membership watch. The version counts
//! changes seen by this node (it restarts at 1 on every load), so a client compares versions
//! only between answers of the same node.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tally_common::NodeId;
use tally_common::meta::NodeInfo;
use tally_epochstore::{EpochStore, EpochStoreError, MembershipEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct View {
    nodes: BTreeMap<NodeId, NodeInfo>,
    version: u64,
}

/// The node's view of cluster membership.
#[derive(Debug)]
pub struct ClusterView {
    view: RwLock<View>,
    /// The version after every change, for waiters.
    changed: watch::Sender<u64>,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            view: RwLock::default(),
            changed: watch::Sender::new(0),
        }
    }
}

impl ClusterView {
    /// Follows the view's version (it changes after every applied membership change).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// The members by id and the view's version (0: never loaded).
    pub fn snapshot(&self) -> (Vec<NodeInfo>, u64) {
        let v = self.view.read().unwrap_or_else(|p| p.into_inner());
        (v.nodes.values().cloned().collect(), v.version)
    }

    fn replace(&self, nodes: Vec<NodeInfo>) {
        let mut v = self.view.write().unwrap_or_else(|p| p.into_inner());
        v.nodes = nodes.into_iter().map(|n| (n.id, n)).collect();
        v.version += 1;
        self.changed.send_replace(v.version);
    }

    fn apply(&self, event: MembershipEvent) {
        let mut v = self.view.write().unwrap_or_else(|p| p.into_inner());
        match event {
            MembershipEvent::Joined(n) | MembershipEvent::Updated(n) => {
                v.nodes.insert(n.id, n);
            }
            MembershipEvent::Left(id) => {
                v.nodes.remove(&id);
            }
        }
        v.version += 1;
        self.changed.send_replace(v.version);
    }

    /// Loads the members once.
    pub async fn load(&self, store: &dyn EpochStore) -> Result<(), EpochStoreError> {
        let nodes = store.list_nodes().await?;
        self.replace(nodes);
        Ok(())
    }

    /// Follows the membership watch until `shutdown`, watching again after `retry` whenever
    /// the watch ends or fails (the view is replaced by the watch's initial members).
    pub async fn watch(
        self: Arc<Self>,
        store: Arc<dyn EpochStore>,
        retry: Duration,
        shutdown: CancellationToken,
    ) {
        loop {
            let watch = tokio::select! {
                _ = shutdown.cancelled() => return,
                w = store.watch_nodes() => w,
            };
            match watch {
                Ok(mut watch) => {
                    self.replace(std::mem::take(&mut watch.initial));
                    loop {
                        let event = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            e = watch.events.recv() => e,
                        };
                        match event {
                            Some(e) => self.apply(e),
                            None => break,
                        }
                    }
                    tracing::debug!("membership watch ended; watching again");
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch membership"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }
}
