//! [`Membership`]: this node's view of the cluster ([`tally_epochstore::MembershipView`], kept
//! from the epoch store's membership watch) and the placement decision made on it (DESIGN §5):
//! the sequencer of a log is the live sequencer node (`roles.sequencer`, weight > 0) ranked
//! first by weighted rendezvous hashing ([`tally_common::placement::owner`], the same function
//! clients run on `GetClusterState`).
//!
//! Until the first load or watch answered, the view is not ready and requests that need
//! placement are refused as `Unavailable` rather than decided on an empty view.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_common::{LogId, NodeId};
use tally_epochstore::{EpochStore, EpochStoreError, Members, MembershipView};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where a `Sequence` request should be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Serve it here: this node is the owner, or no live sequencer is known besides it.
    Here,
    /// Another live node owns the log.
    Redirect(NodeId),
}

/// The membership view of one sequencer node.
#[derive(Debug)]
pub struct Membership {
    me: NodeId,
    members: MembershipView,
}

impl Membership {
    pub fn new(me: NodeId) -> Membership {
        Membership {
            me,
            members: MembershipView::new(),
        }
    }

    /// The current view.
    pub fn view(&self) -> Arc<Members> {
        self.members.current()
    }

    /// A receiver that sees every published view (for waiting on a change).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Members>> {
        self.members.subscribe()
    }

    /// The placement decision for `log`. `None`: membership is not known yet.
    pub fn place(&self, log: LogId) -> Option<Placement> {
        let view = self.members.current();
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
        self.members.address(node).await
    }

    /// Loads the members once. Used at start so the node does not serve on an empty view.
    pub async fn load(&self, store: &dyn EpochStore) -> Result<(), EpochStoreError> {
        self.members.load(store).await
    }

    /// Follows membership until `shutdown` (see [`MembershipView::follow`]).
    pub async fn watch(
        &self,
        store: Arc<dyn EpochStore>,
        retry: Duration,
        shutdown: CancellationToken,
    ) {
        self.members.follow(store, retry, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::meta::{NodeInfo, Roles, StorageState};
    use tally_common::placement;
    use tally_epochstore::MemoryEpochStore;

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
            incarnation: 0,
        }
    }

    #[tokio::test]
    async fn placement_ranks_live_weighted_sequencers_only() {
        let store = MemoryEpochStore::new();
        let m = Membership::new(NodeId(1));
        assert_eq!(m.place(LogId(5)), None, "not ready before the first view");
        let mut leases = Vec::new();
        for n in [
            node(1, true, 1),
            node(2, true, 1),
            node(3, false, 1),
            node(4, true, 0),
        ] {
            leases.push(
                store
                    .register_node(n, Duration::from_secs(30))
                    .await
                    .unwrap(),
            );
        }
        m.load(&store).await.unwrap();
        assert_eq!(m.view().sequencers(), vec![(NodeId(1), 1), (NodeId(2), 1)]);
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
