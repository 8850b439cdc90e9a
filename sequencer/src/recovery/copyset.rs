//! Which nodes a recovery write of one ESN goes to.
//!
//! Every node that reported a copy at the ESN comes first: writing to it again overwrites a
//! conflicting lower-precedence copy (so readers cannot find two contents at one LSN) and gives
//! a matching copy recovery's precedence. Then the copyset is filled up to R from the node set,
//! preferring nodes known to answer (digested, then sealed), each tier rotated by the ESN so
//! the extra copies of many ESNs spread over the node set instead of piling on the lowest ids.
//!
//! Deterministic on purpose: no random source is needed (the sequencer crate has no `rand`), a
//! test can predict the choice, and a restarted attempt picks the same nodes again, so it
//! rewrites the copies it already made instead of scattering new ones.

use std::collections::BTreeSet;

use tally_common::{Esn, NodeId};

/// The nodes to write `esn` to: `holders` first, then `tiers` in order, skipping `excluded`
/// (failed in this attempt, or not available for writes). `None` when fewer than `replication`
/// nodes are left. The result may exceed `replication` when more nodes hold a copy.
pub fn choose_copyset(
    esn: Esn,
    replication: usize,
    holders: &[NodeId],
    tiers: &[Vec<NodeId>],
    excluded: &BTreeSet<NodeId>,
) -> Option<Vec<NodeId>> {
    let mut chosen: Vec<NodeId> = Vec::with_capacity(replication.max(holders.len()));
    for n in holders {
        if !excluded.contains(n) && !chosen.contains(n) {
            chosen.push(*n);
        }
    }
    for tier in tiers {
        if chosen.len() >= replication {
            break;
        }
        if tier.is_empty() {
            continue;
        }
        let start = esn.0 as usize % tier.len();
        for i in 0..tier.len() {
            if chosen.len() >= replication {
                break;
            }
            let n = tier[(start + i) % tier.len()];
            if !excluded.contains(&n) && !chosen.contains(&n) {
                chosen.push(n);
            }
        }
    }
    (chosen.len() >= replication).then_some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u32]) -> Vec<NodeId> {
        v.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn holders_first_then_preferred_tiers() {
        let tiers = vec![ids(&[1, 2, 3]), ids(&[4, 5])];
        let cs = choose_copyset(Esn(0), 3, &ids(&[5]), &tiers, &BTreeSet::new()).unwrap();
        assert_eq!(cs, ids(&[5, 1, 2]));
    }

    #[test]
    fn every_holder_is_kept_even_past_r() {
        let tiers = vec![ids(&[1, 2, 3, 4])];
        let cs = choose_copyset(Esn(7), 2, &ids(&[1, 2, 3]), &tiers, &BTreeSet::new()).unwrap();
        assert_eq!(cs, ids(&[1, 2, 3]));
    }

    #[test]
    fn rotation_spreads_by_esn_and_exclusions_are_skipped() {
        let tiers = vec![ids(&[1, 2, 3, 4])];
        let none = BTreeSet::new();
        assert_eq!(
            choose_copyset(Esn(1), 2, &[], &tiers, &none).unwrap(),
            ids(&[2, 3])
        );
        assert_eq!(
            choose_copyset(Esn(2), 2, &[], &tiers, &none).unwrap(),
            ids(&[3, 4])
        );
        let excluded: BTreeSet<_> = ids(&[3, 1]).into_iter().collect();
        assert_eq!(
            choose_copyset(Esn(2), 2, &ids(&[1]), &tiers, &excluded).unwrap(),
            ids(&[4, 2])
        );
    }

    #[test]
    fn too_few_nodes_is_none() {
        let tiers = vec![ids(&[1, 2, 3])];
        let excluded: BTreeSet<_> = ids(&[2, 3]).into_iter().collect();
        assert_eq!(choose_copyset(Esn(1), 2, &[], &tiers, &excluded), None);
    }
}
