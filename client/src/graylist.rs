//! The client's list of storage nodes to route new copies around for a while (DESIGN §6
//! steps 2 and 5): slow nodes (a store timed out while others answered), overloaded, full,
//! disabled and unreachable ones. Entries expire, so every node is retried eventually.
//!
//! One graylist serves every append of a client; it is plain data, handed to the appenders by
//! whoever drives them, and reads the time only from the `now` it is given.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use tally_common::{NodeId, NodeSet};

/// Why a node is avoided; each reason has its own retry interval.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AvoidReason {
    /// A store to it was outstanding when its wave timed out and other members had answered.
    Slow,
    /// It answered `Overloaded`.
    Overloaded,
    /// It answered `NoSpace`.
    NoSpace,
    /// It answered `Disabled` (read-only, disabled or draining).
    Disabled,
    /// The transport could not reach it.
    Unreachable,
}

/// How long each kind of entry lasts, and when slow-node entries are ignored.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct GraylistConfig {
    /// How long a node that was slow to answer a STORE is avoided.
    pub slow: Duration,
    /// How long a node that answered `Overloaded` is avoided.
    pub overloaded: Duration,
    /// How long a node that answered `NoSpace` is avoided.
    pub no_space: Duration,
    /// How long a node that answered `Disabled` is avoided.
    pub disabled: Duration,
    /// How long a node the transport could not reach is avoided.
    pub unreachable: Duration,
    /// When more than this fraction of a node set is graylisted as slow, the slow entries are
    /// ignored for that node set: so many slow nodes says more about the client or the network
    /// than about the nodes, and piling all load on the few left would make them slow too.
    pub max_slow_fraction: f64,
}

impl Default for GraylistConfig {
    /// LogDevice's defaults, which were tuned in production.
    fn default() -> Self {
        GraylistConfig {
            slow: Duration::from_secs(600),
            overloaded: Duration::from_secs(1),
            no_space: Duration::from_secs(60),
            disabled: Duration::from_secs(30),
            unreachable: Duration::from_secs(60),
            max_slow_fraction: 0.25,
        }
    }
}

impl GraylistConfig {
    fn interval(&self, reason: AvoidReason) -> Duration {
        match reason {
            AvoidReason::Slow => self.slow,
            AvoidReason::Overloaded => self.overloaded,
            AvoidReason::NoSpace => self.no_space,
            AvoidReason::Disabled => self.disabled,
            AvoidReason::Unreachable => self.unreachable,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    until: Instant,
    reason: AvoidReason,
}

/// Nodes to avoid until their entry expires.
#[derive(Clone, Debug, Default)]
pub struct Graylist {
    config: GraylistConfig,
    entries: BTreeMap<NodeId, Entry>,
}

impl Graylist {
    /// An empty graylist.
    pub fn new(config: GraylistConfig) -> Self {
        Graylist {
            config,
            entries: BTreeMap::new(),
        }
    }

    /// Avoids `node` for the interval of `reason` from `now`. An entry that would last longer
    /// already is kept: a short `Overloaded` must not cut a 60 s `NoSpace` short.
    pub fn add(&mut self, node: NodeId, reason: AvoidReason, now: Instant) {
        let until = now + self.config.interval(reason);
        match self.entries.get(&node) {
            Some(e) if e.until >= until && e.until > now => {}
            _ => {
                tracing::debug!(%node, ?reason, "graylisting storage node");
                self.entries.insert(node, Entry { until, reason });
            }
        }
    }

    /// Why `node` is avoided at `now`, if it is.
    pub fn reason(&self, node: NodeId, now: Instant) -> Option<AvoidReason> {
        self.entries
            .get(&node)
            .filter(|e| e.until > now)
            .map(|e| e.reason)
    }

    /// Whether `node` is to be avoided at `now`.
    pub fn contains(&self, node: NodeId, now: Instant) -> bool {
        self.reason(node, now).is_some()
    }

    /// Drops expired entries (memory only; lookups already ignore them).
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|_, e| e.until > now);
    }

    /// Number of entries still in force at `now`.
    pub fn active_len(&self, now: Instant) -> usize {
        self.entries.values().filter(|e| e.until > now).count()
    }

    /// The members of `node_set` that placement should avoid at `now`.
    pub fn avoid_set(&self, node_set: &NodeSet, now: Instant) -> BTreeSet<NodeId> {
        let active: Vec<(NodeId, AvoidReason)> = node_set
            .nodes()
            .iter()
            .filter_map(|&n| self.reason(n, now).map(|r| (n, r)))
            .collect();
        let slow = active
            .iter()
            .filter(|(_, r)| *r == AvoidReason::Slow)
            .count();
        let ignore_slow = slow as f64 > self.config.max_slow_fraction * node_set.len() as f64;
        active
            .into_iter()
            .filter(|(_, r)| !(ignore_slow && *r == AvoidReason::Slow))
            .map(|(n, _)| n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[u32]) -> NodeSet {
        NodeSet::new(ids.iter().copied().map(NodeId).collect())
    }

    #[test]
    fn entries_expire_and_the_node_is_retried() {
        let t0 = Instant::now();
        let mut g = Graylist::default();
        g.add(NodeId(3), AvoidReason::Overloaded, t0);
        assert!(g.contains(NodeId(3), t0));
        assert!(g.contains(NodeId(3), t0 + Duration::from_millis(999)));
        assert!(!g.contains(NodeId(3), t0 + Duration::from_secs(1)));
        g.expire(t0 + Duration::from_secs(1));
        assert_eq!(g.active_len(t0), 0);
    }

    #[test]
    fn a_shorter_entry_does_not_cut_a_longer_one() {
        let t0 = Instant::now();
        let mut g = Graylist::default();
        g.add(NodeId(1), AvoidReason::NoSpace, t0);
        g.add(
            NodeId(1),
            AvoidReason::Overloaded,
            t0 + Duration::from_secs(1),
        );
        let later = t0 + Duration::from_secs(30);
        assert_eq!(g.reason(NodeId(1), later), Some(AvoidReason::NoSpace));
        // After expiry a new entry replaces the old one.
        let much_later = t0 + Duration::from_secs(120);
        g.add(NodeId(1), AvoidReason::Overloaded, much_later);
        assert_eq!(
            g.reason(NodeId(1), much_later),
            Some(AvoidReason::Overloaded)
        );
    }

    #[test]
    fn too_many_slow_nodes_are_ignored_but_hard_reasons_stay() {
        let t0 = Instant::now();
        let mut g = Graylist::default();
        let ns = set(&[1, 2, 3, 4, 5, 6, 7, 8]);
        g.add(NodeId(1), AvoidReason::Slow, t0);
        g.add(NodeId(2), AvoidReason::Slow, t0);
        g.add(NodeId(9), AvoidReason::Slow, t0); // not in the node set
        assert_eq!(g.avoid_set(&ns, t0), [NodeId(1), NodeId(2)].into());
        g.add(NodeId(3), AvoidReason::Slow, t0);
        g.add(NodeId(4), AvoidReason::NoSpace, t0);
        // 3 of 8 slow > 25 %: slow entries no longer count, NoSpace still does.
        assert_eq!(g.avoid_set(&ns, t0), [NodeId(4)].into());
    }
}
