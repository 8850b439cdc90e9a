//! [`MembershipView`]: a node's live view of cluster membership, loaded from the epoch store
//! and kept current by its membership watch (re-watching after a pause whenever the watch ends
//! or fails). Every role that needs membership — the sequencer for placement and release
//! targets, the storage node for `ClusterState` — follows the same view.
//!
//! Each state is published as an `Arc<`[`Members`]`>` through a `tokio::sync::watch` channel,
//! so readers never block the watch task and tests wait for a change instead of sleeping.
//! Until a load or watch answered, the view is not `ready`: callers must not decide on it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_common::meta::NodeInfo;
use tally_common::placement;
use tally_common::{LogId, NodeId};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::{EpochStore, EpochStoreError, MembershipEvent};

/// One published state of membership.
#[derive(Debug, Clone, Default)]
pub struct Members {
    /// Registered nodes by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Bumped on every change seen by this view (restarts with the process): versions compare
    /// only between states of the same view.
    pub version: u64,
    /// Whether a load or a watch has answered at least once.
    pub ready: bool,
}

impl Members {
    /// Live sequencer candidates (`roles.sequencer`, weight > 0) with their weights.
    pub fn sequencers(&self) -> Vec<(NodeId, u32)> {
        self.nodes
            .values()
            .filter(|n| n.roles.sequencer && n.weight > 0)
            .map(|n| (n.id, n.weight))
            .collect()
    }

    /// The preferred sequencer of `log` by weighted rendezvous hashing, if any is live.
    pub fn owner(&self, log: LogId) -> Option<NodeId> {
        placement::owner(log.0, &self.sequencers())
    }

    /// The members, in id order.
    pub fn list(&self) -> Vec<NodeInfo> {
        self.nodes.values().cloned().collect()
    }
}

/// A live membership view. See the module documentation.
#[derive(Debug)]
pub struct MembershipView {
    view: watch::Sender<Arc<Members>>,
}

impl Default for MembershipView {
    fn default() -> Self {
        MembershipView {
            view: watch::Sender::new(Arc::new(Members::default())),
        }
    }
}

impl MembershipView {
    pub fn new() -> MembershipView {
        MembershipView::default()
    }

    /// The current state.
    pub fn current(&self) -> Arc<Members> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every published state (for waiting on a change).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Members>> {
        self.view.subscribe()
    }

    /// The members and the version, as served in `ClusterState`.
    pub fn snapshot(&self) -> (Vec<NodeInfo>, u64) {
        let view = self.view.borrow();
        (view.list(), view.version)
    }

    /// The QUIC address of `node`, if it is registered and its address resolves (host names
    /// are looked up with a bound, the resolver may hang).
    pub async fn address(&self, node: NodeId) -> Option<SocketAddr> {
        let address = self.view.borrow().nodes.get(&node)?.address.clone();
        let resolved = tally_common::transport::resolve(&address, Duration::from_secs(2)).await;
        if resolved.is_none() {
            tracing::debug!(%node, %address, "node address does not resolve");
        }
        resolved
    }

    fn publish(&self, change: impl FnOnce(&mut Members)) {
        self.view.send_modify(|view| {
            let mut next = Members::clone(view);
            change(&mut next);
            next.version += 1;
            next.ready = true;
            *view = Arc::new(next);
        });
    }

    fn replace(&self, nodes: Vec<NodeInfo>) {
        self.publish(|v| v.nodes = nodes.into_iter().map(|n| (n.id, n)).collect());
    }

    /// Loads the members once (at start, so a node does not serve on an empty view).
    pub async fn load(&self, store: &dyn EpochStore) -> Result<(), EpochStoreError> {
        let nodes = store.list_nodes().await?;
        self.replace(nodes);
        Ok(())
    }

    /// Follows the membership watch until `shutdown`, applying every event; when the watch
    /// ends (the watcher fell behind, or the store failed) it watches again after `retry` and
    /// replaces the view with the fresh initial list.
    pub async fn follow(
        &self,
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
                            Some(MembershipEvent::Joined(n) | MembershipEvent::Updated(n)) => {
                                self.publish(|v| {
                                    v.nodes.insert(n.id, n);
                                });
                            }
                            Some(MembershipEvent::Left(id)) => self.publish(|v| {
                                v.nodes.remove(&id);
                            }),
                            None => {
                                tracing::info!("membership watch ended; watching again");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "membership watch failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(retry) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryEpochStore;
    use tally_common::meta::{Roles, StorageState};

    fn node(id: u32, sequencer: bool) -> NodeInfo {
        NodeInfo {
            id: NodeId(id),
            address: format!("127.0.0.1:{}", 4000 + id),
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

    #[tokio::test]
    async fn follows_joins_and_leaves() {
        let store: Arc<dyn EpochStore> = Arc::new(MemoryEpochStore::new());
        let view = Arc::new(MembershipView::new());
        assert!(!view.current().ready);
        let _a = store
            .register_node(node(1, true), Duration::from_secs(10))
            .await
            .unwrap();
        view.load(&*store).await.unwrap();
        assert!(view.current().ready);
        assert_eq!(view.current().owner(LogId(3)), Some(NodeId(1)));
        let shutdown = CancellationToken::new();
        let follower = {
            let (view, store, shutdown) = (view.clone(), store.clone(), shutdown.clone());
            tokio::spawn(async move {
                view.follow(store, Duration::from_millis(50), shutdown)
                    .await
            })
        };
        let mut changes = view.subscribe();
        let b = store
            .register_node(node(2, false), Duration::from_secs(10))
            .await
            .unwrap();
        changes
            .wait_for(|m| m.nodes.contains_key(&NodeId(2)))
            .await
            .unwrap();
        assert_eq!(view.snapshot().0.len(), 2);
        assert_eq!(
            view.address(NodeId(2)).await,
            Some("127.0.0.1:4002".parse().unwrap())
        );
        b.deregister().await.unwrap();
        changes
            .wait_for(|m| !m.nodes.contains_key(&NodeId(2)))
            .await
            .unwrap();
        assert_eq!(view.current().sequencers(), vec![(NodeId(1), 1)]);
        shutdown.cancel();
        follower.await.unwrap();
    }
}
