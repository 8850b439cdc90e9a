//! Copyset selection (DESIGN §6 step 2): pick R distinct nodes of an epoch's node set at random,
//! weighted, spread over failure domains where configured, avoiding graylisted / overloaded /
//! full / down nodes while enough others exist.
//!
//! Weights are honored exactly, not approximately: each node's probability of being in a
//! copyset is `R · w / W` (capped at 1), which is what "a node with twice the weight gets twice
//! the copies" means. Drawing R nodes one after another without replacement does not give
//! that (it favors light nodes), so we use systematic probability-proportional-to-size
//! sampling over a shuffled order: lay the nodes' inclusion probabilities end to end on
//! `[0, R)`, draw one offset `u` in `[0, 1)` and take the nodes under `u, u+1, …, u+R−1`.
//! Every inclusion probability is at most 1, so no node is hit twice and exactly R are chosen.
//! With failure domains the same draw picks R distinct domains (by total domain weight), then
//! one node inside each (by node weight), which keeps each node's share at `R · w / W`
//! whenever no single domain is heavier than `W / R`.
//!
//! Precedence of the soft rules: avoiding unhealthy nodes beats spreading over domains, because
//! a copy sent to a slow or full node delays or fails the whole append, while a copyset that is
//! less spread is still R copies. Both yield to the hard rule: R distinct nodes or an error.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use rand::seq::SliceRandom;
use tally_common::{Copyset, NodeId, NodeInfo, NodeSet};

/// How much of a node's location names its failure domain: the number of leading
/// dot-separated labels. With locations written `region.dc.rack`, `REGION` keeps one copy per
/// region where possible, `RACK` one copy per rack.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DomainScope(u8);

impl DomainScope {
    /// The first label: one copy per region where possible.
    pub const REGION: DomainScope = DomainScope(1);
    /// Two labels: one copy per data center where possible.
    pub const DATA_CENTER: DomainScope = DomainScope(2);
    /// Three labels: one copy per rack where possible.
    pub const RACK: DomainScope = DomainScope(3);

    /// A scope of `labels` leading location labels (at least one).
    pub fn labels(labels: u8) -> DomainScope {
        DomainScope(labels.max(1))
    }

    /// The domain `location` belongs to at this scope. Locations shorter than the scope (and
    /// empty ones) keep what they have, so all nodes without a location share one domain: we
    /// cannot claim copies on them are apart.
    fn domain_of(self, location: &str) -> String {
        if location.is_empty() {
            return String::new();
        }
        location
            .split('.')
            .take(self.0 as usize)
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// One node as placement sees it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PlacementNode {
    /// The node.
    pub id: NodeId,
    /// Relative share of copies; 0 = take new copies only when nothing else is left.
    pub weight: u32,
    /// Failure-domain path such as `region.dc.rack`; empty when unknown.
    pub location: String,
}

/// Why no copyset could be chosen. Both are "certainly nothing was sent".
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum PlacementError {
    /// Fewer usable nodes than the replication factor.
    #[error("need {needed} distinct nodes for a copyset, the node set has {available}")]
    NotEnoughNodes {
        /// The replication factor.
        needed: usize,
        /// Usable nodes of the node set.
        available: usize,
    },
    /// The replication factor is 0 or above the copyset limit.
    #[error("replication {replication} is outside 1..={max}", max = Copyset::MAX)]
    BadReplication {
        /// The replication factor asked for.
        replication: usize,
    },
}

#[derive(Clone, Debug)]
struct Candidate {
    id: NodeId,
    weight: u32,
    /// Index into the selector's domain list (0 when domains are off).
    domain: usize,
}

/// Chooses copysets for one epoch's node set. Cheap to build (≤ 127 nodes); rebuild it when
/// the node set or the cluster's weights/locations change.
#[derive(Clone, Debug)]
pub struct CopysetSelector {
    nodes: Vec<Candidate>,
    spread: bool,
}

impl CopysetSelector {
    /// A selector over `node_set` with weights and locations from the cluster's `nodes`.
    /// Node-set members missing from `nodes` get weight 1 and no location: the epoch's node set
    /// is authoritative for where copies may go, membership data only refines the choice.
    pub fn new(node_set: &NodeSet, nodes: &[NodeInfo], scope: Option<DomainScope>) -> Self {
        let by_id: BTreeMap<NodeId, &NodeInfo> = nodes.iter().map(|n| (n.id, n)).collect();
        let members = node_set
            .nodes()
            .iter()
            .map(|&id| match by_id.get(&id) {
                Some(info) => PlacementNode {
                    id,
                    weight: info.weight,
                    location: info.location.clone(),
                },
                None => PlacementNode {
                    id,
                    weight: 1,
                    location: String::new(),
                },
            })
            .collect();
        Self::from_nodes(members, scope)
    }

    /// A selector over exactly `members` (duplicates of an id are dropped, first one wins).
    pub fn from_nodes(members: Vec<PlacementNode>, scope: Option<DomainScope>) -> Self {
        let mut domains: BTreeMap<String, usize> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut nodes = Vec::with_capacity(members.len());
        for m in members {
            if !seen.insert(m.id) {
                continue;
            }
            let domain = match scope {
                Some(s) => {
                    let next = domains.len();
                    *domains.entry(s.domain_of(&m.location)).or_insert(next)
                }
                None => 0,
            };
            nodes.push(Candidate {
                id: m.id,
                weight: m.weight,
                domain,
            });
        }
        CopysetSelector {
            nodes,
            spread: scope.is_some(),
        }
    }

    /// Number of distinct nodes this selector can choose from.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there is no node to choose from.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether `select` can succeed for `replication`; it then succeeds whatever is avoided.
    pub fn check(&self, replication: usize) -> Result<(), PlacementError> {
        if replication == 0 || replication > Copyset::MAX {
            return Err(PlacementError::BadReplication { replication });
        }
        if replication > self.nodes.len() {
            return Err(PlacementError::NotEnoughNodes {
                needed: replication,
                available: self.nodes.len(),
            });
        }
        Ok(())
    }

    /// Picks `replication` distinct nodes. Nodes in `avoid` (and zero-weight nodes) are used
    /// only when the others are fewer than `replication`; the copyset is then every other node
    /// plus as few avoided ones as needed. The order of the result is random.
    pub fn select<R: Rng + ?Sized>(
        &self,
        replication: usize,
        avoid: &BTreeSet<NodeId>,
        rng: &mut R,
    ) -> Result<Copyset, PlacementError> {
        self.select_tiered(replication, &[avoid], rng)
    }

    /// Like [`CopysetSelector::select`] with graded avoidance: `avoid[0]` is the mildest
    /// reason to skip a node, each later set a stronger one. A node ranks by the strongest set
    /// that holds it (zero-weight nodes rank below every set); copysets are filled from the best
    /// rank down, so a node avoided for a mild reason (say, slow) is used before one avoided
    /// for a strong one (say, it just failed this very append).
    pub fn select_tiered<R: Rng + ?Sized>(
        &self,
        replication: usize,
        avoid: &[&BTreeSet<NodeId>],
        rng: &mut R,
    ) -> Result<Copyset, PlacementError> {
        self.check(replication)?;
        let rank = |i: usize| -> usize {
            let node = &self.nodes[i];
            if node.weight == 0 {
                return avoid.len() + 1;
            }
            avoid
                .iter()
                .rposition(|set| set.contains(&node.id))
                .map_or(0, |t| t + 1)
        };
        let mut tiers: Vec<Vec<usize>> = vec![Vec::new(); avoid.len() + 2];
        for i in 0..self.nodes.len() {
            tiers[rank(i)].push(i);
        }
        let mut chosen: Vec<usize> = Vec::with_capacity(replication);
        for tier in &tiers {
            let missing = replication - chosen.len();
            if missing == 0 {
                break;
            }
            if tier.len() <= missing {
                chosen.extend(tier.iter().copied());
            } else {
                let used: BTreeSet<usize> = chosen.iter().map(|&i| self.nodes[i].domain).collect();
                chosen.extend(self.pick(tier, missing, &used, rng));
            }
        }
        // Callers treat the first member specially (the "first outstanding" node of a wave),
        // so its position must not depend on which tier it came from.
        chosen.shuffle(rng);
        let ids = chosen.iter().map(|&i| self.nodes[i].id).collect();
        Ok(Copyset::new(ids).expect("distinct node-set members, 1..=Copyset::MAX of them"))
    }

    /// `k` distinct nodes of `pool`, spreading over domains not in `used` first.
    fn pick<R: Rng + ?Sized>(
        &self,
        pool: &[usize],
        k: usize,
        used: &BTreeSet<usize>,
        rng: &mut R,
    ) -> Vec<usize> {
        if k == 0 {
            return Vec::new();
        }
        if !self.spread {
            return self.pick_nodes(pool, k, rng);
        }
        let mut fresh: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for &i in pool {
            if !used.contains(&self.nodes[i].domain) {
                fresh.entry(self.nodes[i].domain).or_default().push(i);
            }
        }
        let groups: Vec<Vec<usize>> = fresh.into_values().collect();
        if groups.len() >= k {
            let weights: Vec<u64> = groups.iter().map(|g| self.total_weight(g)).collect();
            return systematic_sample(&weights, k, rng)
                .into_iter()
                .map(|d| self.pick_one(&groups[d], rng))
                .collect();
        }
        // Too few fresh domains for one copy each: cover every one of them, then fill up
        // from whatever is left, doubling up in some domains.
        let mut chosen: Vec<usize> = groups.iter().map(|g| self.pick_one(g, rng)).collect();
        let rest: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|i| !chosen.contains(i))
            .collect();
        let more = self.pick_nodes(&rest, k - chosen.len(), rng);
        chosen.extend(more);
        chosen
    }

    fn pick_nodes<R: Rng + ?Sized>(&self, pool: &[usize], k: usize, rng: &mut R) -> Vec<usize> {
        let weights: Vec<u64> = pool.iter().map(|&i| self.weight(i)).collect();
        systematic_sample(&weights, k, rng)
            .into_iter()
            .map(|j| pool[j])
            .collect()
    }

    /// One node of a non-empty `group`, by weight.
    fn pick_one<R: Rng + ?Sized>(&self, group: &[usize], rng: &mut R) -> usize {
        let mut x = rng.random_range(0..self.total_weight(group));
        for &i in group {
            let w = self.weight(i);
            if x < w {
                return i;
            }
            x -= w;
        }
        group[group.len() - 1]
    }

    /// Zero-weight nodes only ever reach sampling as a last resort; among themselves they
    /// count as weight 1 so the draw is still well defined.
    fn weight(&self, i: usize) -> u64 {
        u64::from(self.nodes[i].weight.max(1))
    }

    fn total_weight(&self, group: &[usize]) -> u64 {
        group.iter().map(|&i| self.weight(i)).sum()
    }
}

/// Fixed-point unit of inclusion probability: 1.0 == `UNIT`. Integer arithmetic keeps the
/// probabilities summing to exactly `k`, so the systematic walk can never run off the end.
const UNIT: u64 = 1 << 32;

/// Systematic probability-proportional-to-size sample of `k` distinct indices of `weights`
/// (all > 0, `k ≤ weights.len()`), in random order.
fn systematic_sample<R: Rng + ?Sized>(weights: &[u64], k: usize, rng: &mut R) -> Vec<usize> {
    debug_assert!(k <= weights.len());
    let units = inclusion_units(weights, k);
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.shuffle(rng);
    let mut point = rng.random_range(0..UNIT);
    let mut start = 0u64;
    let mut out = Vec::with_capacity(k);
    for i in order {
        let end = start + units[i];
        // Each interval is at most UNIT long and points are UNIT apart: at most one hit.
        if point < end && out.len() < k {
            out.push(i);
            point += UNIT;
        }
        start = end;
    }
    debug_assert_eq!(out.len(), k);
    out
}

/// Inclusion probability of each index in `UNIT`s: `k · w / W`, where indices that would
/// exceed 1 are fixed at 1 and the rest share what remains; the result sums to `k · UNIT`.
fn inclusion_units(weights: &[u64], k: usize) -> Vec<u64> {
    let n = weights.len();
    let mut certain = vec![false; n];
    let mut units = vec![0u64; n];
    loop {
        let left = (k - certain.iter().filter(|&&c| c).count()) as u128;
        if left == 0 {
            break;
        }
        let total: u128 = (0..n)
            .filter(|&i| !certain[i])
            .map(|i| u128::from(weights[i]))
            .sum();
        // Fixing one index only raises the others' share, so every index over 1 now stays
        // over 1: fixing them all in one pass is safe.
        let mut fixed_any = false;
        for i in 0..n {
            if !certain[i] && left * u128::from(weights[i]) >= total {
                certain[i] = true;
                fixed_any = true;
            }
        }
        if !fixed_any {
            for i in (0..n).filter(|&i| !certain[i]) {
                units[i] = (left * u128::from(weights[i]) * u128::from(UNIT) / total) as u64;
            }
            break;
        }
    }
    for i in 0..n {
        if certain[i] {
            units[i] = UNIT;
        }
    }
    // Flooring lost less than one unit per uncertain index; hand those back one each, which
    // keeps every uncertain index below or at UNIT.
    let mut deficit = (k as u64 * UNIT).saturating_sub(units.iter().sum());
    for i in 0..n {
        if deficit == 0 {
            break;
        }
        if !certain[i] && units[i] < UNIT {
            units[i] += 1;
            deficit -= 1;
        }
    }
    units
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn node(id: u32, weight: u32, location: &str) -> PlacementNode {
        PlacementNode {
            id: NodeId(id),
            weight,
            location: location.to_string(),
        }
    }

    fn uniform(n: u32) -> CopysetSelector {
        CopysetSelector::from_nodes((0..n).map(|i| node(i, 1, "")).collect(), None)
    }

    fn avoid(ids: &[u32]) -> BTreeSet<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn inclusion_units_sum_to_k_and_cap_at_one() {
        let units = inclusion_units(&[1, 1, 100], 2);
        assert_eq!(units.iter().sum::<u64>(), 2 * UNIT);
        assert_eq!(units[2], UNIT, "the heavy index is certain");
        assert_eq!(units[0], UNIT / 2);
        let units = inclusion_units(&[3, 3, 3], 3);
        assert_eq!(units, vec![UNIT; 3]);
    }

    #[test]
    fn too_small_node_set_is_a_typed_error() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(
            uniform(2).select(3, &BTreeSet::new(), &mut rng),
            Err(PlacementError::NotEnoughNodes {
                needed: 3,
                available: 2
            })
        );
        assert_eq!(
            uniform(2).select(0, &BTreeSet::new(), &mut rng),
            Err(PlacementError::BadReplication { replication: 0 })
        );
    }

    #[test]
    fn avoided_nodes_are_used_only_when_needed() {
        let sel = uniform(5);
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..200 {
            let cs = sel.select(3, &avoid(&[0, 1]), &mut rng).unwrap();
            assert!(!cs.contains(NodeId(0)) && !cs.contains(NodeId(1)));
        }
        // Four avoided of five, R = 2: the one healthy node plus exactly one avoided node.
        for _ in 0..200 {
            let cs = sel.select(2, &avoid(&[0, 1, 2, 3]), &mut rng).unwrap();
            assert!(cs.contains(NodeId(4)));
            assert_eq!(cs.len(), 2);
        }
        // Everything avoided still yields R distinct nodes.
        let cs = sel.select(5, &avoid(&[0, 1, 2, 3, 4]), &mut rng).unwrap();
        assert_eq!(cs.len(), 5);
    }

    #[test]
    fn mildly_avoided_nodes_come_before_strongly_avoided_ones() {
        // Five nodes, R = 3: node 4 healthy, 0, 1 and 3 slow (mild), 2 failed this append
        // (strong). The failed node must not be picked while slow ones are left.
        let sel = uniform(5);
        let mut rng = StdRng::seed_from_u64(11);
        let (mild, strong) = (avoid(&[0, 1, 3]), avoid(&[2]));
        for _ in 0..500 {
            let cs = sel.select_tiered(3, &[&mild, &strong], &mut rng).unwrap();
            assert!(cs.contains(NodeId(4)), "{cs:?}");
            assert!(!cs.contains(NodeId(2)), "{cs:?}");
        }
        // A node in both sets ranks by the stronger one.
        let both = avoid(&[0, 1, 2, 3]);
        for _ in 0..200 {
            let cs = sel.select_tiered(4, &[&both, &strong], &mut rng).unwrap();
            assert!(!cs.contains(NodeId(2)), "{cs:?}");
        }
        // Only when nothing milder is left is the strongly avoided node used.
        assert!(
            sel.select_tiered(5, &[&mild, &strong], &mut rng)
                .unwrap()
                .contains(NodeId(2))
        );
    }

    #[test]
    fn zero_weight_nodes_are_a_last_resort() {
        let sel =
            CopysetSelector::from_nodes(vec![node(1, 0, ""), node(2, 5, ""), node(3, 5, "")], None);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            assert!(
                !sel.select(2, &BTreeSet::new(), &mut rng)
                    .unwrap()
                    .contains(NodeId(1))
            );
        }
        assert_eq!(sel.select(3, &BTreeSet::new(), &mut rng).unwrap().len(), 3);
    }

    /// A correctness property of the sampler, not a speed figure: every node's share of all
    /// copies placed over 100k copysets is within one percentage point of its weight share.
    #[test]
    fn copies_follow_weights() {
        let weights = [1u32, 2, 3, 4, 5, 5];
        let sel = CopysetSelector::from_nodes(
            weights
                .iter()
                .enumerate()
                .map(|(i, &w)| node(i as u32, w, ""))
                .collect(),
            None,
        );
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = [0u64; 6];
        const ROUNDS: u64 = 100_000;
        for _ in 0..ROUNDS {
            for n in sel.select(3, &BTreeSet::new(), &mut rng).unwrap().nodes() {
                counts[n.0 as usize] += 1;
            }
        }
        let total_w: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let share = counts[i] as f64 / (3 * ROUNDS) as f64;
            let want = f64::from(w) / f64::from(total_w);
            assert!(
                (share - want).abs() < 0.01,
                "node {i}: share {share:.4}, weight share {want:.4}"
            );
        }
    }

    #[test]
    fn copies_spread_over_racks_and_follow_weights() {
        // Three racks of two nodes; rack c's nodes are heavier. R = 3 ⇒ one copy per rack.
        let sel = CopysetSelector::from_nodes(
            vec![
                node(0, 1, "r.d.a"),
                node(1, 1, "r.d.a"),
                node(2, 1, "r.d.b"),
                node(3, 3, "r.d.b"),
                node(4, 2, "r.d.c"),
                node(5, 2, "r.d.c"),
            ],
            Some(DomainScope::RACK),
        );
        let rack = |n: NodeId| n.0 / 2;
        let mut rng = StdRng::seed_from_u64(9);
        let mut counts = [0u64; 6];
        for _ in 0..20_000 {
            let cs = sel.select(3, &BTreeSet::new(), &mut rng).unwrap();
            let racks: BTreeSet<u32> = cs.nodes().iter().map(|&n| rack(n)).collect();
            assert_eq!(racks.len(), 3, "{cs:?} doubles up in a rack");
            for n in cs.nodes() {
                counts[n.0 as usize] += 1;
            }
        }
        // Inside a rack, copies follow node weights: node 3 gets ~3× node 2.
        let ratio = counts[3] as f64 / counts[2] as f64;
        assert!((ratio - 3.0).abs() < 0.2, "ratio {ratio}");
    }

    #[test]
    fn spread_covers_every_domain_when_there_are_too_few() {
        // Two racks, R = 3: both racks must be used.
        let sel = CopysetSelector::from_nodes(
            vec![
                node(0, 1, "x.a"),
                node(1, 1, "x.a"),
                node(2, 1, "x.a"),
                node(3, 1, "x.b"),
            ],
            Some(DomainScope::DATA_CENTER),
        );
        let mut rng = StdRng::seed_from_u64(5);
        for _ in 0..500 {
            let cs = sel.select(3, &BTreeSet::new(), &mut rng).unwrap();
            assert!(cs.contains(NodeId(3)));
        }
    }

    #[test]
    fn avoidance_beats_spreading() {
        // Rack b's only node is avoided: two copies land in rack a rather than on it.
        let sel = CopysetSelector::from_nodes(
            vec![node(0, 1, "a"), node(1, 1, "a"), node(2, 1, "b")],
            Some(DomainScope::REGION),
        );
        let mut rng = StdRng::seed_from_u64(5);
        let cs = sel.select(2, &avoid(&[2]), &mut rng).unwrap();
        assert!(!cs.contains(NodeId(2)));
    }

    #[test]
    fn same_seed_same_copysets() {
        let sel = uniform(9);
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20)
                .map(|_| sel.select(3, &avoid(&[4]), &mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(11), run(11));
    }

    #[test]
    fn selector_from_cluster_state_defaults_unknown_members() {
        let set = NodeSet::new(vec![NodeId(1), NodeId(2)]);
        let info = NodeInfo {
            id: NodeId(1),
            address: String::new(),
            roles: Default::default(),
            location: "r.d.k".into(),
            weight: 0,
            state: Default::default(),
            incarnation: 0,
        };
        let sel = CopysetSelector::new(&set, &[info], Some(DomainScope::RACK));
        assert_eq!(sel.len(), 2);
        let mut rng = StdRng::seed_from_u64(1);
        // Node 1 has weight 0, node 2 defaults to weight 1: R = 1 always picks node 2.
        for _ in 0..50 {
            assert_eq!(
                sel.select(1, &BTreeSet::new(), &mut rng).unwrap().nodes(),
                &[NodeId(2)]
            );
        }
    }

    fn arb_nodes() -> impl Strategy<Value = Vec<PlacementNode>> {
        prop::collection::vec((0u32..40, 0u32..10, 0usize..4, 0usize..3), 1..20).prop_map(|v| {
            v.into_iter()
                .map(|(id, weight, dc, rack)| node(id, weight, &format!("r.dc{dc}.rk{rack}")))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn prop_select_is_distinct_sized_and_honors_avoid(
            nodes in arb_nodes(),
            r in 1usize..8,
            avoid_ids in prop::collection::btree_set(0u32..40, 0..10),
            scope in prop::option::of(1u8..4),
            seed in any::<u64>(),
        ) {
            let sel = CopysetSelector::from_nodes(nodes.clone(), scope.map(DomainScope::labels));
            let avoid: BTreeSet<NodeId> = avoid_ids.into_iter().map(NodeId).collect();
            let mut rng = StdRng::seed_from_u64(seed);
            let distinct: BTreeMap<NodeId, &PlacementNode> =
                nodes.iter().rev().map(|n| (n.id, n)).collect();
            match sel.select(r, &avoid, &mut rng) {
                Err(PlacementError::NotEnoughNodes { needed, available }) => {
                    prop_assert_eq!(needed, r);
                    prop_assert_eq!(available, distinct.len());
                    prop_assert!(distinct.len() < r);
                }
                Err(e) => prop_assert!(false, "unexpected {e}"),
                Ok(cs) => {
                    prop_assert_eq!(cs.len(), r);
                    let set: BTreeSet<NodeId> = cs.nodes().iter().copied().collect();
                    prop_assert_eq!(set.len(), r, "duplicates in {:?}", cs);
                    prop_assert!(set.iter().all(|n| distinct.contains_key(n)));
                    let healthy = distinct
                        .values()
                        .filter(|n| n.weight > 0 && !avoid.contains(&n.id))
                        .count();
                    let unhealthy_used = set
                        .iter()
                        .filter(|n| distinct[n].weight == 0 || avoid.contains(n))
                        .count();
                    // Unhealthy nodes appear only to make up for missing healthy ones.
                    prop_assert_eq!(unhealthy_used, r.saturating_sub(healthy));
                    if let Some(labels) = scope {
                        let s = DomainScope::labels(labels);
                        let healthy_domains: BTreeSet<String> = distinct
                            .values()
                            .filter(|n| n.weight > 0 && !avoid.contains(&n.id))
                            .map(|n| s.domain_of(&n.location))
                            .collect();
                        let used: BTreeSet<String> =
                            set.iter().map(|n| s.domain_of(&distinct[n].location)).collect();
                        // With enough healthy domains, one copy per domain.
                        if healthy >= r {
                            prop_assert_eq!(used.len(), r.min(healthy_domains.len()));
                        }
                    }
                }
            }
        }
    }
}
