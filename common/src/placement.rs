//! Weighted rendezvous hashing, shared by everyone who must agree on a ranking without talking:
//! the sequencer placement of a log (DESIGN §5: clients and nodes compute the same owner from
//! the same cluster state) and node-set selection in the epoch store.
//!
//! Each candidate node draws an exponential "arrival time" `−ln(u) / weight`, where `u` is a
//! uniform value in (0, 1) derived from a fixed hash of `(key, node)`; earlier arrival ranks
//! higher. The winner is node `i` with probability `weight_i / Σ weight`, and removing a node
//! only moves the keys it won. The hash is fixed here (splitmix64 finalizer over the key and the
//! node id) and must never change: clients and servers of different builds rank alike.

use crate::ids::NodeId;

/// A uniform value in (0, 1) from `(key, node)`. Part of the placement format: never change it.
pub fn unit_hash(key: u64, node: u64) -> f64 {
    let h = mix64(mix64(key ^ 0x7461_6c6c_795f_6e73) ^ node.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// The splitmix64 finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous score of `node` for `key` at `weight`: higher wins; weight 0 never wins.
pub fn rendezvous_score(key: u64, node: NodeId, weight: u32) -> f64 {
    if weight == 0 {
        return f64::NEG_INFINITY;
    }
    unit_hash(key, u64::from(node.0)).ln() / f64::from(weight)
}

/// Ranks `candidates` (node, weight) for `key`, best first. Zero-weight nodes come last (in id
/// order) so they are used only when nothing else is left. Ties break by node id.
pub fn rank(key: u64, candidates: &[(NodeId, u32)]) -> Vec<NodeId> {
    let mut scored: Vec<(f64, NodeId)> = candidates
        .iter()
        .map(|&(node, weight)| (rendezvous_score(key, node, weight), node))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored.into_iter().map(|(_, node)| node).collect()
}

/// The preferred owner of `key` among `candidates`, if any.
pub fn owner(key: u64, candidates: &[(NodeId, u32)]) -> Option<NodeId> {
    candidates
        .iter()
        .map(|&(node, weight)| (rendezvous_score(key, node, weight), node))
        .max_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, node)| node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_is_first_of_rank_and_stable() {
        let nodes: Vec<(NodeId, u32)> = (1..=7).map(|i| (NodeId(i), 10 * i)).collect();
        for key in 0..500u64 {
            let ranked = rank(key, &nodes);
            assert_eq!(ranked.len(), 7);
            assert_eq!(owner(key, &nodes), Some(ranked[0]));
            // Order of candidates does not matter.
            let mut rev = nodes.clone();
            rev.reverse();
            assert_eq!(rank(key, &rev), ranked);
        }
        assert_eq!(owner(1, &[]), None);
    }

    #[test]
    fn shares_follow_weights() {
        let nodes: Vec<(NodeId, u32)> = vec![
            (NodeId(1), 100),
            (NodeId(2), 200),
            (NodeId(3), 300),
            (NodeId(4), 400),
        ];
        let mut wins = [0u32; 5];
        let keys = 100_000u64;
        for key in 0..keys {
            wins[owner(key, &nodes).unwrap().0 as usize] += 1;
        }
        for (node, weight) in &nodes {
            let share = f64::from(wins[node.0 as usize]) / keys as f64;
            let expected = f64::from(*weight) / 1000.0;
            assert!(
                (share - expected).abs() / expected < 0.05,
                "{node}: {share} vs {expected}"
            );
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_keys() {
        let nodes: Vec<(NodeId, u32)> = (1..=10).map(|i| (NodeId(i), 100)).collect();
        let without: Vec<(NodeId, u32)> = nodes
            .iter()
            .copied()
            .filter(|(n, _)| *n != NodeId(4))
            .collect();
        for key in 0..20_000u64 {
            let before = owner(key, &nodes).unwrap();
            let after = owner(key, &without).unwrap();
            if before != NodeId(4) {
                assert_eq!(before, after, "key {key} moved without cause");
            }
        }
    }

    #[test]
    fn zero_weight_ranks_last() {
        let nodes = [(NodeId(1), 0), (NodeId(2), 1)];
        for key in 0..100 {
            assert_eq!(rank(key, &nodes), vec![NodeId(2), NodeId(1)]);
        }
    }
}
