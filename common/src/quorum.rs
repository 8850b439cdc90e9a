//! The one quorum checker (DESIGN §2): nodes of a node set, each tagged or not with an
//! attribute ("stored this copy", "sealed", "proved it has nothing below x", …) and carrying an
//! authoritative status; it answers "is a write quorum reached?" and "is an f-majority
//! reached?". Append completion, seals, recovery digests, read-gap decisions, trims and
//! rebuilding all ask it, so they agree on what "enough nodes" means.
//!
//! For plain R-of-n replication a write quorum is R tagged nodes, and an f-majority is any
//! n − R + 1 nodes: the complement of such a set has at most R − 1 nodes, so no copyset of R
//! nodes fits outside it and **every f-majority intersects every write quorum** (property
//! tested below, exhaustively for small node sets).
//!
//! Authoritative status refines this. A node being rebuilt or marked data-loss is
//! `Unavailable`: its answer proves nothing, so it never counts towards an f-majority. A node
//! that was rebuilt and is known empty is `Empty`: it holds nothing, so it counts as if it had
//! answered. When every node that could answer has answered but they are still fewer than an
//! f-majority, the answer is `NonAuthoritative`: the caller must not conclude absence (readers
//! report `DataLoss` only on authoritative answers; recovery does not plug holes).

use std::collections::BTreeMap;

use crate::ids::NodeId;

/// How far a node's answers can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum AuthStatus {
    /// Holds everything it ever acknowledged.
    #[default]
    FullyAuthoritative,
    /// Being rebuilt, or lost data: "I have nothing" from it proves nothing.
    Unavailable,
    /// Rebuilt and empty: nothing to wait for.
    Empty,
}

/// The graded answer to "has an f-majority been reached?".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FMajority {
    /// Not enough nodes yet.
    None,
    /// Every node that could answer did, but they are too few to be sure (some are
    /// `Unavailable`). Do not conclude absence.
    NonAuthoritative,
    /// An f-majority, though not every node.
    Incomplete,
    /// Every node of the set.
    Complete,
}

impl FMajority {
    /// Whether absence may be concluded (an authoritative f-majority).
    pub fn is_authoritative(self) -> bool {
        matches!(self, FMajority::Incomplete | FMajority::Complete)
    }
}

/// Why a quorum checker cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    #[error("replication {replication} is impossible over {nodes} nodes")]
    Impossible { replication: usize, nodes: usize },
    #[error("the node set is empty")]
    Empty,
}

#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    status: AuthStatus,
    tagged: bool,
}

/// Tags over one node set with replication R. Nodes not in the set are ignored.
#[derive(Clone, Debug)]
pub struct QuorumChecker {
    replication: usize,
    nodes: BTreeMap<NodeId, Entry>,
}

impl QuorumChecker {
    pub fn new(node_set: &[NodeId], replication: usize) -> Result<QuorumChecker, QuorumError> {
        let nodes: BTreeMap<NodeId, Entry> =
            node_set.iter().map(|n| (*n, Entry::default())).collect();
        if nodes.is_empty() {
            return Err(QuorumError::Empty);
        }
        if replication == 0 || replication > nodes.len() {
            return Err(QuorumError::Impossible {
                replication,
                nodes: nodes.len(),
            });
        }
        Ok(QuorumChecker { replication, nodes })
    }

    pub fn replication(&self) -> usize {
        self.replication
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Size of an f-majority of fully authoritative nodes: n − R + 1.
    pub fn f_majority_size(&self) -> usize {
        self.nodes.len() - self.replication + 1
    }

    /// Tags or untags `node`. Returns false if the node is not in the set.
    pub fn set_tag(&mut self, node: NodeId, tagged: bool) -> bool {
        match self.nodes.get_mut(&node) {
            Some(e) => {
                e.tagged = tagged;
                true
            }
            None => false,
        }
    }

    pub fn is_tagged(&self, node: NodeId) -> bool {
        self.nodes.get(&node).is_some_and(|e| e.tagged)
    }

    /// Sets a node's authoritative status. Returns false if the node is not in the set.
    pub fn set_status(&mut self, node: NodeId, status: AuthStatus) -> bool {
        match self.nodes.get_mut(&node) {
            Some(e) => {
                e.status = status;
                true
            }
            None => false,
        }
    }

    /// Clears every tag (statuses stay).
    pub fn reset_tags(&mut self) {
        self.nodes.values_mut().for_each(|e| e.tagged = false);
    }

    /// R tagged nodes (of any status: a stored copy is a copy).
    pub fn write_quorum_reached(&self) -> bool {
        self.nodes.values().filter(|e| e.tagged).count() >= self.replication
    }

    /// Whether the tagged nodes (with `Empty` nodes counted as tagged, `Unavailable` ones never)
    /// form an f-majority.
    pub fn f_majority(&self) -> FMajority {
        let mut counted = 0; // tagged fully authoritative nodes, plus empty ones
        let mut could_answer = 0; // nodes whose answer would count
        for e in self.nodes.values() {
            match e.status {
                AuthStatus::Empty => {
                    counted += 1;
                    could_answer += 1;
                }
                AuthStatus::FullyAuthoritative => {
                    could_answer += 1;
                    if e.tagged {
                        counted += 1;
                    }
                }
                AuthStatus::Unavailable => {}
            }
        }
        if counted == self.nodes.len() {
            FMajority::Complete
        } else if counted >= self.f_majority_size() {
            FMajority::Incomplete
        } else if counted == could_answer {
            FMajority::NonAuthoritative
        } else {
            FMajority::None
        }
    }

    /// The nodes that are not tagged (e.g. to know whom a reader is still waiting for).
    pub fn untagged(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes
            .iter()
            .filter(|(_, e)| !e.tagged)
            .map(|(n, _)| *n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: u32) -> Vec<NodeId> {
        (0..n).map(NodeId).collect()
    }

    #[test]
    fn plain_quorums() {
        let mut q = QuorumChecker::new(&ids(5), 3).unwrap();
        assert_eq!(q.f_majority_size(), 3);
        assert_eq!(q.f_majority(), FMajority::None);
        q.set_tag(NodeId(0), true);
        q.set_tag(NodeId(1), true);
        assert!(!q.write_quorum_reached());
        assert_eq!(q.f_majority(), FMajority::None);
        q.set_tag(NodeId(2), true);
        assert!(q.write_quorum_reached());
        assert_eq!(q.f_majority(), FMajority::Incomplete);
        q.set_tag(NodeId(3), true);
        q.set_tag(NodeId(4), true);
        assert_eq!(q.f_majority(), FMajority::Complete);
        assert!(!q.set_tag(NodeId(9), true), "not in the node set");
    }

    #[test]
    fn unavailable_nodes_make_answers_non_authoritative() {
        let mut q = QuorumChecker::new(&ids(4), 2).unwrap();
        // f-majority is 3; two nodes are being rebuilt.
        q.set_status(NodeId(2), AuthStatus::Unavailable);
        q.set_status(NodeId(3), AuthStatus::Unavailable);
        q.set_tag(NodeId(0), true);
        assert_eq!(q.f_majority(), FMajority::None);
        q.set_tag(NodeId(1), true);
        assert_eq!(q.f_majority(), FMajority::NonAuthoritative);
        // A tagged unavailable node still does not count.
        q.set_tag(NodeId(2), true);
        assert_eq!(q.f_majority(), FMajority::NonAuthoritative);
        // An empty node counts as answered.
        q.set_status(NodeId(2), AuthStatus::Empty);
        assert_eq!(q.f_majority(), FMajority::Incomplete);
    }

    #[test]
    fn impossible_replication_is_refused() {
        assert_eq!(
            QuorumChecker::new(&ids(2), 3).unwrap_err(),
            QuorumError::Impossible {
                replication: 3,
                nodes: 2
            }
        );
        assert_eq!(QuorumChecker::new(&[], 1).unwrap_err(), QuorumError::Empty);
    }

    /// Exhaustive over every node set up to 10 nodes, every R and every tagged subset: an
    /// authoritative f-majority intersects every possible copyset (every R-subset), i.e. its
    /// complement is smaller than R; and a set that is not an f-majority has a copyset outside it.
    #[test]
    fn every_f_majority_intersects_every_write_quorum_exhaustive() {
        for n in 1..=10u32 {
            for r in 1..=n as usize {
                for mask in 0u32..(1 << n) {
                    let mut q = QuorumChecker::new(&ids(n), r).unwrap();
                    for i in 0..n {
                        q.set_tag(NodeId(i), mask & (1 << i) != 0);
                    }
                    let complement = n as usize - mask.count_ones() as usize;
                    let copyset_fits_outside = complement >= r;
                    assert_eq!(
                        q.f_majority().is_authoritative(),
                        !copyset_fits_outside,
                        "n={n} r={r} mask={mask:b}"
                    );
                }
            }
        }
    }

    proptest! {
        /// With statuses: whenever the checker says "authoritative", every copyset made only of
        /// nodes that can hold data (not `Empty`) meets a tagged, fully authoritative node.
        #[test]
        fn authoritative_answers_cover_every_copyset(
            n in 1u32..24,
            r_seed: usize,
            statuses in proptest::collection::vec(0u8..3, 24),
            tags in proptest::collection::vec(any::<bool>(), 24),
        ) {
            let r = 1 + r_seed % n as usize;
            let mut q = QuorumChecker::new(&ids(n), r).unwrap();
            for i in 0..n as usize {
                let status = match statuses[i] {
                    0 => AuthStatus::FullyAuthoritative,
                    1 => AuthStatus::Unavailable,
                    _ => AuthStatus::Empty,
                };
                q.set_status(NodeId(i as u32), status);
                q.set_tag(NodeId(i as u32), tags[i]);
            }
            if q.f_majority().is_authoritative() {
                // Nodes that may hold a copy nobody has vouched for: not Empty, and not
                // (tagged and fully authoritative). A copyset must not fit among them.
                let unproven = (0..n as usize)
                    .filter(|&i| statuses[i] != 2 && !(statuses[i] == 0 && tags[i]))
                    .count();
                prop_assert!(unproven < r, "n={n} r={r} unproven={unproven}");
            }
        }
    }
}
