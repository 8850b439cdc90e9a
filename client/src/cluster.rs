//! The client's view of the cluster (DESIGN §5 placement): the node list fetched with
//! `GetClusterState` from the seed nodes or any node already known, refreshed periodically and
//! whenever a node could not be reached or named a node the view does not know.
//!
//! [`ClusterState`] is one fetched answer and the pure decisions made on it: the sequencer
//! ranking of a log is weighted rendezvous hashing ([`tally_common::placement`]) over the live
//! sequencer nodes (`roles.sequencer`, weight > 0), the same function the sequencers run on
//! their membership, so the first of the ranking is the owner they would redirect to.
//! [`ClusterView`] holds the current state and fetches new ones (one fetch at a time).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tally_common::meta::NodeInfo;
use tally_common::placement;
use tally_common::transport::resolve;
use tally_common::transport::{ClientProtocol, Connector};
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::{LogId, NodeId};
use tokio::sync::watch;

/// One answer to `GetClusterState`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    nodes: BTreeMap<NodeId, NodeInfo>,
    /// The answering node's membership version (versions of different nodes do not compare).
    version: u64,
}

impl ClusterState {
    /// The state made of `nodes` (one record per id, the last wins).
    pub fn new(nodes: Vec<NodeInfo>, version: u64) -> ClusterState {
        ClusterState {
            nodes: nodes.into_iter().map(|n| (n.id, n)).collect(),
            version,
        }
    }

    /// The membership version this state was taken at (higher is newer).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Node `id`, if it is a member.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.get(&id)
    }

    /// Every node, by id (what copyset selection takes weights and locations from).
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.nodes.values().cloned().collect()
    }

    /// Number of member nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is a member.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Live sequencer candidates with their weights, as the sequencers compute them.
    pub fn sequencers(&self) -> Vec<(NodeId, u32)> {
        self.nodes
            .values()
            .filter(|n| n.roles.sequencer && n.weight > 0)
            .map(|n| (n.id, n.weight))
            .collect()
    }

    /// The sequencer that owns `log`, if any sequencer is live.
    pub fn sequencer_owner(&self, log: LogId) -> Option<NodeId> {
        placement::owner(log.0, &self.sequencers())
    }

    /// Every live sequencer in the order to try for `log`: the owner first, then who takes
    /// over when the ones before are unreachable.
    pub fn sequencer_rank(&self, log: LogId) -> Vec<NodeId> {
        placement::rank(log.0, &self.sequencers())
    }
}

/// The cluster state could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// No node answered `GetClusterState`.
    #[error("no node answered GetClusterState ({tried} tried; last error: {last})")]
    Unreachable {
        /// Nodes asked.
        tried: usize,
        /// The last node's error.
        last: String,
    },
}

/// The current cluster state and how to fetch a newer one.
#[derive(Debug)]
pub struct ClusterView {
    seeds: Vec<String>,
    connector: Arc<Connector<ClientProtocol>>,
    request_timeout: Duration,
    state: watch::Sender<Arc<ClusterState>>,
    /// Successful fetches so far; a caller that waited for a fetch in progress skips its own.
    fetches: AtomicU64,
    fetching: tokio::sync::Mutex<()>,
}

impl ClusterView {
    /// A view that has fetched the cluster state once (from the seeds).
    pub async fn fetch(
        seeds: Vec<String>,
        connector: Arc<Connector<ClientProtocol>>,
        request_timeout: Duration,
    ) -> Result<ClusterView, ClusterError> {
        let view = ClusterView {
            seeds,
            connector,
            request_timeout,
            state: watch::Sender::new(Arc::new(ClusterState::default())),
            fetches: AtomicU64::new(0),
            fetching: tokio::sync::Mutex::new(()),
        };
        view.refresh().await?;
        Ok(view)
    }

    /// The latest cluster state fetched.
    pub fn current(&self) -> Arc<ClusterState> {
        self.state.borrow().clone()
    }

    /// A receiver that sees every new state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<ClusterState>> {
        self.state.subscribe()
    }

    /// Fetches the cluster state from the known nodes, then the seeds, first answer wins.
    /// Concurrent callers share one fetch.
    pub async fn refresh(&self) -> Result<(), ClusterError> {
        let before = self.fetches.load(Ordering::Acquire);
        let _guard = self.fetching.lock().await;
        if self.fetches.load(Ordering::Acquire) != before {
            return Ok(());
        }
        let mut targets: Vec<String> = self
            .current()
            .nodes
            .values()
            .map(|n| n.address.clone())
            .collect();
        for seed in &self.seeds {
            if !targets.contains(seed) {
                targets.push(seed.clone());
            }
        }
        let mut last = String::from("no address to ask");
        for address in &targets {
            match self.ask(address).await {
                Ok(state) => {
                    tracing::debug!(
                        from = %address,
                        nodes = state.len(),
                        version = state.version,
                        "cluster state fetched"
                    );
                    self.state.send_replace(Arc::new(state));
                    self.fetches.fetch_add(1, Ordering::AcqRel);
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(%address, error = %e, "GetClusterState failed");
                    last = e;
                }
            }
        }
        Err(ClusterError::Unreachable {
            tried: targets.len(),
            last,
        })
    }

    async fn ask(&self, address: &str) -> Result<ClusterState, String> {
        let addr = resolve(address, self.request_timeout)
            .await
            .ok_or_else(|| format!("{address} does not resolve"))?;
        match self
            .connector
            .call(addr, &ClientRequest::GetClusterState, self.request_timeout)
            .await
        {
            Ok(ClientResponse::ClusterState { nodes, .. }) if nodes.is_empty() => {
                Err(format!("{address} knows no nodes yet"))
            }
            Ok(ClientResponse::ClusterState { nodes, version }) => {
                Ok(ClusterState::new(nodes, version))
            }
            Ok(other) => Err(format!("{address} answered {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The QUIC address of `node` in the current state, if known and resolvable.
    pub async fn address(&self, node: NodeId) -> Option<SocketAddr> {
        let address = self.current().node(node)?.address.clone();
        resolve(&address, self.request_timeout).await
    }
}

#[cfg(test)]
mod tests {
    use tally_common::meta::{Roles, StorageState};

    use super::*;

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

    #[test]
    fn only_live_weighted_sequencers_are_ranked() {
        let state = ClusterState::new(
            vec![
                node(1, true, 1),
                node(2, true, 3),
                node(3, true, 0),
                node(4, false, 5),
                node(5, true, 2),
            ],
            7,
        );
        assert_eq!(
            state.sequencers(),
            vec![(NodeId(1), 1), (NodeId(2), 3), (NodeId(5), 2)]
        );
        for log in 1..500 {
            let log = LogId(log);
            let rank = state.sequencer_rank(log);
            assert_eq!(rank.len(), 3);
            assert_eq!(state.sequencer_owner(log), Some(rank[0]));
            // Exactly what a sequencer computes from the same membership.
            assert_eq!(
                state.sequencer_owner(log),
                placement::owner(log.0, &[(NodeId(1), 1), (NodeId(2), 3), (NodeId(5), 2)])
            );
            assert!(!rank.contains(&NodeId(3)) && !rank.contains(&NodeId(4)));
        }
    }

    #[test]
    fn removing_the_owner_promotes_the_next_in_rank() {
        let nodes: Vec<NodeInfo> = (1..=5).map(|i| node(i, true, 1)).collect();
        let full = ClusterState::new(nodes.clone(), 1);
        for log in 1..200 {
            let log = LogId(log);
            let rank = full.sequencer_rank(log);
            let without: Vec<NodeInfo> =
                nodes.iter().filter(|n| n.id != rank[0]).cloned().collect();
            let smaller = ClusterState::new(without, 2);
            assert_eq!(smaller.sequencer_owner(log), Some(rank[1]));
        }
    }

    #[test]
    fn no_sequencer_no_owner() {
        let state = ClusterState::new(vec![node(1, false, 1)], 1);
        assert_eq!(state.sequencer_owner(LogId(1)), None);
        assert!(state.sequencer_rank(LogId(1)).is_empty());
    }
}
