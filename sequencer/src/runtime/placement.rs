//! [`Membership`]: this node's view of the cluster, kept from the epoch store's membership
//! watch, and the placement decision made on it (DESIGN §5): the sequencer of a log is the live
//! sequencer node (`roles.sequencer`, weight > 0) ranked first by weighted rendezvous hashing
//! ([`tally_common::placement::owner`], the same function clients run on `GetClusterState`).
//!
//! The view is published through a `tokio::sync::watch` channel so readers never block the
//! watch task and tests can wait for a membership change instead of sleeping. Until the first
//! watch answered the view is not ready and requests that need placement are refused as
//! `Unavailable` rather than decided on an empty view.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_common::meta::NodeInfo;
use tally_common::placement;
use tally_common::{LogId, NodeId};
use tally_epochstore::{EpochStore, MembershipEvent};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One published state of membership.
#[derive(Debug, Clone, Default)]
pub struct MembershipView {
    /// Registered nodes by id.
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    /// Bumped on every change; served as the `ClusterState` version.
    pub version: u64,
    /// Whether a watch has answered at least once.
    pub ready: bool,
}

impl MembershipView {
    /// Live sequencer candidates with their weights.
    pub fn sequencers(&self) -> Vec<(NodeId, u32)> {
        self.nodes
            .values()
            .filter(|n| n.roles.sequencer && n.weight > 0)
            .map(|n| (n.id, n.weight))
            .collect()
    }

    /// The preferred sequencer of `log`, if any sequencer is live.
    pub fn owner(&self, log: LogId) -> Option<NodeId> {
        placement::owner(log.0, &self.sequencers())
    }
}

/// Where a `Sequence` request should be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Serve it here: this node is the owner, or no live sequencer is known besides it.
    Here,
    /// Another live node owns the log.
    Redirect(NodeId),
}

/// The membership view of one node, kept current by [`Membership::watch`].
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    view: watch::Sender<Arc<MembershipView>>,
}

impl Membership {
    pub fn new(me: NodeId) -> Membership {
        Membership {
            me,
            view: watch::Sender::new(Arc::new(MembershipView::default())),
        }
    }

    /// The current view.
    pub fn view(&self) -> Arc<MembershipView> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every published view (for waiting on a change).
    pub fn subscribe(&self) -> watch::Receiver<Arc<MembershipView>> {
        self.view.subscribe()
    }

    /// The placement decision for `log`. `None`: membership is not known yet.
    pub fn place(&self, log: LogId) -> Option<Placement> {
        let view = self.view.borrow();
        if !view.ready {
            return None;
        }
        Some(match view.owner(log) {
            Some(owner) if owner != self.me => Placement::Redirect(owner),
            _ => Placement::Here,
        })
    }

    /// The QUIC address of `node`, if it is registered and its address resolves.
    pub async fn address(&self, node: NodeId) -> Option<SocketAddr> {
        let address = self.view.borrow().nodes.get(&node)?.address.clone();
        if let Ok(addr) = address.parse() {
            return Some(addr);
        }
        // A host name: resolve it (bounded, the resolver may hang).
        let lookup = tokio::net::lookup_host(address.clone());
        match tokio::time::timeout(Duration::from_secs(2), lookup).await {
            Ok(Ok(mut addrs)) => addrs.next(),
            _ => {
                tracing::debug!(%node, %address, "node address does not resolve");
                None
            }
        }
    }

    fn publish(&self, change: impl FnOnce(&mut MembershipView)) {
        self.view.send_modify(|view| {
            let mut next = MembershipView::clone(view);
            change(&mut next);
            next.version += 1;
            next.ready = true;
            *view = Arc::new(next);
        });
    }

    /// Loads the members once. Used at start so the node does not serve on an empty view.
    pub async fn load(
        &self,
        store: &dyn EpochStore,
    ) -> Result<(), tally_epochstore::EpochStoreError> {
        let nodes = store.list_nodes().await?;
        self.publish(|v| v.nodes = nodes.into_iter().map(|n| (n.id, n)).collect());
        Ok(())
    }

    /// Follows membership until `shutdown`: applies every event; when the watch ends (the
    /// watcher fell behind, or the store failed) it watches again after `retry` and replaces
    /// the view with the fresh initial list.
    pub async fn watch(
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
                    let initial = std::mem::take(&mut watch.initial);
                    self.publish(|v| v.nodes = initial.into_iter().map(|n| (n.id, n)).collect());
                    loop {
                        let event = tokio::select! {
                            _ = shutdown.cancelled() => return,
                            e = watch.events.recv() => e,
                        };
                        match event {
                            Some(MembershipEvent::Joined(n))
                            | Some(MembershipEvent::Updated(n)) => {
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
    use tally_common::meta::{Roles, StorageState};

    fn node(id: u32, sequencer: bool, weight: u32) -> NodeInfo {
        NodeInfo {
            id: NodeId(id),
            address: format!("127.0.0.1:{}", 4000 + id),
            roles: Roles {
                sequencer,
                storage: !sequencer,
            },
            location: String::new(),
            weight,
            state: StorageState::ReadWrite,
        }
    }

    #[test]
    fn placement_ranks_live_weighted_sequencers_only() {
        let m = Membership::new(NodeId(1));
        assert_eq!(m.place(LogId(5)), None, "not ready before the first view");
        m.publish(|v| {
            for n in [
                node(1, true, 1),
                node(2, true, 1),
                node(3, false, 1),
                node(4, true, 0),
            ] {
                v.nodes.insert(n.id, n);
            }
        });
        let view = m.view();
        assert_eq!(view.sequencers(), vec![(NodeId(1), 1), (NodeId(2), 1)]);
        for log in 1..200u64 {
            let expected = placement::owner(log, &[(NodeId(1), 1), (NodeId(2), 1)]).unwrap();
            let got = m.place(LogId(log)).unwrap();
            if expected == NodeId(1) {
                assert_eq!(got, Placement::Here);
            } else {
                assert_eq!(got, Placement::Redirect(expected));
            }
        }
    }
}
