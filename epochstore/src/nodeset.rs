//! Node-set selection: which storage nodes may hold a log's records in a new epoch.
//!
//! The algorithm is weighted rendezvous hashing, done as an "exponential race":
//!
//! 1. Candidates are nodes with the storage role, weight > 0 and state `Provisioning` or
//!    `ReadWrite` ([`is_candidate`]). Provisioning nodes are included so that a node's move to
//!    read-write does not reshuffle node sets; clients skip nodes that are not writable when
//!    they pick copysets.
//! 2. Target size `k` = `node_set_size` (0 = all candidates, capped at `Copyset::MAX`), at most
//!    the number of candidates; fewer candidates than `replication` is an error.
//! 3. Each candidate's *inclusion target* is `π = k·w/W`, capped at 1 (the excess is spread
//!    over the others). Plain weighted rendezvous under-includes heavy nodes when `k` is a
//!    fair fraction of `n`; racing with the adjusted weight `w' = −ln(1 − π)` makes the
//!    inclusion probability ≈ π (the Poisson approximation of sampling without replacement).
//! 4. For every candidate, `u = hash(log, node)` uniform in (0, 1) and its arrival time is
//!    `−ln(u) / w'`; earliest arrivals win (ties by node id). The hash is
//!    `tally_common::placement::unit_hash`, shared with sequencer placement, so the ranking
//!    is deterministic and a node's rank for a log depends only on its own weight: adding a
//!    node moves ≈ 1/(n+1) of all node-set slots, the minimum.
//! 5. Failure-domain spread: when nodes carry locations, a first pass takes nodes in arrival
//!    order but at most `⌈k / domains⌉` per location; a second pass fills what is left.

use std::collections::BTreeMap;

use tally_common::ids::{LogId, NodeId};
use tally_common::meta::{LogAttributes, NodeInfo, NodeSet, StorageState};
use tally_common::placement::unit_hash;
use tally_common::record::Copyset;

/// Node-set selection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    #[error("not enough storage nodes for a node set: {available} available, {needed} needed")]
    InsufficientNodes { available: usize, needed: usize },
}

/// Whether `node` may be put in new node sets.
pub fn is_candidate(node: &NodeInfo) -> bool {
    node.roles.storage
        && node.weight > 0
        && matches!(
            node.state,
            StorageState::Provisioning | StorageState::ReadWrite
        )
}

/// Selects the node set of `log` from `nodes` (any order; non-candidates are ignored).
pub fn select_node_set(
    log: LogId,
    nodes: &[NodeInfo],
    attributes: &LogAttributes,
) -> Result<NodeSet, SelectionError> {
    // One record per id (the last wins), in id order, so that input order never matters.
    let mut by_id: BTreeMap<NodeId, &NodeInfo> = BTreeMap::new();
    for node in nodes.iter().filter(|n| is_candidate(n)) {
        by_id.insert(node.id, node);
    }
    let candidates: Vec<&NodeInfo> = by_id.into_values().collect();
    let needed = usize::from(attributes.replication.max(1));
    if candidates.len() < needed {
        return Err(SelectionError::InsufficientNodes {
            available: candidates.len(),
            needed,
        });
    }
    let k = match attributes.node_set_size {
        0 => candidates.len(),
        size => usize::from(size).max(needed).min(candidates.len()),
    }
    .min(Copyset::MAX);

    let targets = inclusion_targets(&candidates, k);
    let mut ranked: Vec<(f64, &NodeInfo)> = candidates
        .iter()
        .zip(&targets)
        .map(|(node, &pi)| (arrival(log, node.id, pi), *node))
        .collect();
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.id.cmp(&b.1.id)));

    Ok(NodeSet::new(spread(&ranked, k)))
}

/// Picks `k` nodes in arrival order, at most `⌈k / domains⌉` per location first.
fn spread(ranked: &[(f64, &NodeInfo)], k: usize) -> Vec<NodeId> {
    if ranked.iter().all(|(_, n)| n.location.is_empty()) {
        return ranked.iter().take(k).map(|(_, n)| n.id).collect();
    }
    // A node without a location is a failure domain of its own.
    let domain = |n: &NodeInfo| {
        if n.location.is_empty() {
            format!("#{}", n.id.0)
        } else {
            n.location.clone()
        }
    };
    let mut per_domain: BTreeMap<String, usize> = BTreeMap::new();
    for (_, n) in ranked {
        per_domain.entry(domain(n)).or_default();
    }
    let cap = k.div_ceil(per_domain.len());
    let mut chosen = Vec::with_capacity(k);
    let mut taken = vec![false; ranked.len()];
    for (i, (_, n)) in ranked.iter().enumerate() {
        if chosen.len() == k {
            break;
        }
        let count = per_domain
            .get_mut(&domain(n))
            .expect("every domain was counted");
        if *count < cap {
            *count += 1;
            taken[i] = true;
            chosen.push(n.id);
        }
    }
    for (i, (_, n)) in ranked.iter().enumerate() {
        if chosen.len() == k {
            break;
        }
        if !taken[i] {
            chosen.push(n.id);
        }
    }
    chosen
}

/// Inclusion targets `π_i = k·w_i / W`, with targets above 1 capped and their excess spread
/// over the other nodes in proportion to weight.
fn inclusion_targets(candidates: &[&NodeInfo], k: usize) -> Vec<f64> {
    let mut pi = vec![0.0; candidates.len()];
    let mut capped = vec![false; candidates.len()];
    loop {
        let slots = k - capped.iter().filter(|c| **c).count();
        let weight: f64 = candidates
            .iter()
            .zip(&capped)
            .filter(|(_, c)| !**c)
            .map(|(n, _)| f64::from(n.weight))
            .sum();
        let mut changed = false;
        for (i, node) in candidates.iter().enumerate() {
            if capped[i] {
                pi[i] = 1.0;
                continue;
            }
            pi[i] = if weight > 0.0 {
                slots as f64 * f64::from(node.weight) / weight
            } else {
                0.0
            };
            if pi[i] >= 1.0 {
                capped[i] = true;
                changed = true;
            }
        }
        if !changed {
            return pi;
        }
    }
}

/// The node's arrival time in the race for `log`: earlier is better.
fn arrival(log: LogId, node: NodeId, pi: f64) -> f64 {
    if pi >= 1.0 {
        return 0.0;
    }
    let rate = -(1.0 - pi).ln();
    if rate <= 0.0 {
        return f64::INFINITY;
    }
    -unit_hash(log.0, u64::from(node.0)).ln() / rate
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tally_common::meta::Roles;

    fn node(id: u32, weight: u32, location: &str) -> NodeInfo {
        NodeInfo {
            id: NodeId(id),
            address: format!("127.0.0.1:{}", 4000 + id),
            roles: Roles {
                sequencer: true,
                storage: true,
            },
            location: location.to_owned(),
            weight,
            state: StorageState::ReadWrite,
            incarnation: 0,
        }
    }

    fn attrs(replication: u8, size: u8) -> LogAttributes {
        LogAttributes {
            replication,
            node_set_size: size,
            ..LogAttributes::default()
        }
    }

    /// 20 nodes with weights 100, 200, 300, 400 repeating.
    fn weighted_cluster() -> Vec<NodeInfo> {
        (1..=20)
            .map(|i| node(i, 100 * (1 + (i - 1) % 4), ""))
            .collect()
    }

    #[test]
    fn share_follows_weight_within_15_percent() {
        let nodes = weighted_cluster();
        let total_weight: u32 = nodes.iter().map(|n| n.weight).sum();
        for size in [3u8, 5, 8] {
            let a = attrs(3, size);
            let mut count: BTreeMap<NodeId, usize> = BTreeMap::new();
            for log in 1..=10_000 {
                let set = select_node_set(LogId(log), &nodes, &a).unwrap();
                assert_eq!(set.len(), usize::from(size));
                for n in set.nodes() {
                    *count.entry(*n).or_default() += 1;
                }
            }
            let slots = 10_000.0 * f64::from(size);
            let mut worst: f64 = 0.0;
            for n in &nodes {
                let share = count.get(&n.id).copied().unwrap_or(0) as f64 / slots;
                let expected = f64::from(n.weight) / f64::from(total_weight);
                let deviation = share / expected - 1.0;
                worst = worst.max(deviation.abs());
                assert!(
                    deviation.abs() <= 0.15,
                    "size {size}: {} share {share:.4} vs weight share {expected:.4}",
                    n.id
                );
            }
            eprintln!(
                "node_set_size {size}: worst per-node share deviation {:.1}%",
                worst * 100.0
            );
        }
    }

    #[test]
    fn adding_a_node_moves_about_one_nth() {
        let mut nodes = weighted_cluster();
        let a = attrs(3, 5);
        let before: Vec<NodeSet> = (1..=10_000)
            .map(|l| select_node_set(LogId(l), &nodes, &a).unwrap())
            .collect();
        nodes.push(node(21, 250, ""));
        let mut changed_sets = 0usize;
        let mut moved_slots = 0usize;
        let mut moved_between_old_nodes = 0usize;
        for (i, old) in before.iter().enumerate() {
            let new = select_node_set(LogId(i as u64 + 1), &nodes, &a).unwrap();
            let gained: Vec<NodeId> = new
                .nodes()
                .iter()
                .copied()
                .filter(|n| !old.contains(*n))
                .collect();
            if !gained.is_empty() {
                changed_sets += 1;
            }
            moved_slots += gained.len();
            moved_between_old_nodes += gained.iter().filter(|n| **n != NodeId(21)).count();
        }
        let slot_fraction = moved_slots as f64 / (10_000.0 * 5.0);
        let set_fraction = changed_sets as f64 / 10_000.0;
        let ideal = 1.0 / 21.0;
        eprintln!(
            "add 1 node to 20: {:.2}% of slots moved (ideal 1/21 = {:.2}%), {:.2}% of node sets \
             changed, {moved_between_old_nodes} slots moved between old nodes",
            slot_fraction * 100.0,
            ideal * 100.0,
            set_fraction * 100.0
        );
        assert!(
            slot_fraction <= 1.5 * ideal,
            "{slot_fraction} of slots moved"
        );
        // The new node needs its share of k-node sets: no better than k/(n+1) sets can change.
        assert!(
            set_fraction <= 1.5 * 5.0 * ideal,
            "{set_fraction} of sets changed"
        );
    }

    #[test]
    fn spreads_over_locations() {
        let nodes: Vec<NodeInfo> = (1..=20)
            .map(|i| node(i, 100, &format!("r1.dc1.rack{}", i % 4)))
            .collect();
        let by_id: BTreeMap<NodeId, &NodeInfo> = nodes.iter().map(|n| (n.id, n)).collect();
        for log in 1..=500 {
            let set = select_node_set(LogId(log), &nodes, &attrs(3, 4)).unwrap();
            let mut racks: Vec<&str> = set
                .nodes()
                .iter()
                .map(|n| by_id[n].location.as_str())
                .collect();
            racks.sort_unstable();
            racks.dedup();
            assert_eq!(
                racks.len(),
                4,
                "log {log}: {set:?} not spread over the 4 racks"
            );
        }
    }

    #[test]
    fn ignores_nodes_that_cannot_take_copies() {
        let mut nodes = vec![node(1, 100, ""), node(2, 100, ""), node(3, 100, "")];
        nodes.push(NodeInfo {
            weight: 0,
            ..node(4, 0, "")
        });
        nodes.push(NodeInfo {
            state: StorageState::Disabled,
            ..node(5, 100, "")
        });
        nodes.push(NodeInfo {
            roles: Roles {
                sequencer: true,
                storage: false,
            },
            ..node(6, 100, "")
        });
        let set = select_node_set(LogId(7), &nodes, &attrs(3, 0)).unwrap();
        assert_eq!(set.nodes(), &[NodeId(1), NodeId(2), NodeId(3)]);
        assert_eq!(
            select_node_set(LogId(7), &nodes[..2], &attrs(3, 0)),
            Err(SelectionError::InsufficientNodes {
                available: 2,
                needed: 3
            })
        );
    }

    proptest! {
        #[test]
        fn selection_is_a_deterministic_subset(
            log in 1u64..1_000_000,
            weights in proptest::collection::vec(0u32..1000, 1..40),
            replication in 1u8..4,
            size in 0u8..12,
        ) {
            let nodes: Vec<NodeInfo> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| node(i as u32 + 1, *w, if i % 3 == 0 { "" } else { "r.d.k" }))
                .collect();
            let size = if size == 0 { 0 } else { size.max(replication) };
            let a = attrs(replication, size);
            let candidates = nodes.iter().filter(|n| is_candidate(n)).count();
            match select_node_set(LogId(log), &nodes, &a) {
                Ok(set) => {
                    let want = if size == 0 { candidates } else { usize::from(size).min(candidates) };
                    prop_assert_eq!(set.len(), want);
                    for n in set.nodes() {
                        prop_assert!(nodes.iter().any(|x| x.id == *n && is_candidate(x)));
                    }
                    let mut reversed = nodes.clone();
                    reversed.reverse();
                    prop_assert_eq!(select_node_set(LogId(log), &reversed, &a).unwrap(), set);
                }
                Err(SelectionError::InsufficientNodes { available, needed }) => {
                    prop_assert_eq!(available, candidates);
                    prop_assert!(available < needed);
                }
            }
        }
    }
}
