//! Sequencers the client found silent or unreachable ("suspects"), and when to believe it.
//!
//! A suspect is asked last, after the other sequencers in rank order, for
//! `sequencer_suspect_for`, so appends do not each pay for a dead node. But suspicion alone
//! must not move logs: a node that missed the silence check once — a loaded machine, a
//! starved process — is usually alive, and taking each of its logs over as it is appended
//! (another node redirects to the suspect owner, the client then asks that node with
//! `no_redirect`) seals epochs the owner is running, fails their appends in flight, and
//! starts an ownership fight when the owner hears from other clients again. So before the
//! client makes a node take a log over because its owner is a suspect, it checks the owner
//! with one cheap request ([`Verdict::Check`]); one check runs at a time per node and every
//! waiter takes its answer. An owner that failed a check is taken for dead for
//! `recheck` ([`Verdict::Dead`]); one that answered is no longer a suspect.
//!
//! Pure bookkeeping; `Shared::owner_alive` (client.rs) runs the checks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tally_common::{LogId, NodeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Suspicion {
    /// Asked last until then.
    until: Instant,
    /// When a liveness check of the node last failed.
    check_failed_at: Option<Instant>,
}

/// What to make of a redirect to a suspect owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not (or no longer) a suspect: follow the redirect.
    Alive,
    /// A check failed recently (or since the caller started to wait for one): take over.
    Dead,
    /// Check it now.
    Check,
}

/// The suspects of one client.
#[derive(Debug, Default)]
pub(crate) struct Suspects {
    nodes: HashMap<NodeId, Suspicion>,
}

impl Suspects {
    /// `node` was silent or unreachable at `now`: ask it last for `suspect_for`.
    pub(crate) fn suspect(&mut self, node: NodeId, now: Instant, suspect_for: Duration) {
        let until = now + suspect_for;
        self.nodes
            .entry(node)
            .and_modify(|s| s.until = s.until.max(until))
            .or_insert(Suspicion {
                until,
                check_failed_at: None,
            });
    }

    /// A liveness check of `node` failed at `now`.
    pub(crate) fn check_failed(&mut self, node: NodeId, now: Instant, suspect_for: Duration) {
        self.suspect(node, now, suspect_for);
        if let Some(s) = self.nodes.get_mut(&node) {
            s.check_failed_at = Some(now);
        }
    }

    /// `node` answered: it is no longer a suspect.
    pub(crate) fn clear(&mut self, node: NodeId) {
        self.nodes.remove(&node);
    }

    /// Whether `node` is a suspect at `now`.
    pub(crate) fn is_suspect(&mut self, node: NodeId, now: Instant) -> bool {
        self.nodes.retain(|_, s| s.until > now);
        self.nodes.contains_key(&node)
    }

    /// What a redirect to `node` means at `now`, for a caller that started waiting for a
    /// check at `asked_at`: a check that failed since then, or within `recheck`, answers for
    /// it.
    pub(crate) fn verdict(
        &mut self,
        node: NodeId,
        now: Instant,
        asked_at: Instant,
        recheck: Duration,
    ) -> Verdict {
        if !self.is_suspect(node, now) {
            return Verdict::Alive;
        }
        match self.nodes[&node].check_failed_at {
            Some(at) if at >= asked_at || now.saturating_duration_since(at) < recheck => {
                Verdict::Dead
            }
            _ => Verdict::Check,
        }
    }
}

/// Logs this client made another node take over (`no_redirect` granted), and by which node.
/// Their next `Sequence`s go to that node first, until it redirects (its takeover ended: it
/// hands the log back once the appends it granted are written), fails, or `keep` passes: were
/// they to go to the owner as soon as it answers again, its new epoch would seal the
/// takeover's with this client's own appends still writing there.
#[derive(Debug, Default)]
pub(crate) struct Takeovers {
    logs: HashMap<LogId, (NodeId, Instant)>,
}

impl Takeovers {
    /// Most logs remembered; beyond it expired entries are dropped, then the oldest.
    const MAX: usize = 4096;

    /// `node` took `log` over at `now`; remember it for `keep`.
    pub(crate) fn record(&mut self, log: LogId, node: NodeId, now: Instant, keep: Duration) {
        if self.logs.len() >= Self::MAX && !self.logs.contains_key(&log) {
            self.logs.retain(|_, (_, until)| *until > now);
            if self.logs.len() >= Self::MAX
                && let Some(oldest) = self
                    .logs
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(l, _)| *l)
            {
                self.logs.remove(&oldest);
            }
        }
        self.logs.insert(log, (node, now + keep));
    }

    /// The node that took `log` over, if remembered at `now`.
    pub(crate) fn node(&mut self, log: LogId, now: Instant) -> Option<NodeId> {
        match self.logs.get(&log) {
            Some((node, until)) if *until > now => Some(*node),
            Some(_) => {
                self.logs.remove(&log);
                None
            }
            None => None,
        }
    }

    /// `node` no longer serves `log` (it redirected or could not be reached).
    pub(crate) fn forget(&mut self, log: LogId, node: NodeId) {
        if self.logs.get(&log).is_some_and(|(n, _)| *n == node) {
            self.logs.remove(&log);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FOR: Duration = Duration::from_secs(10);
    const RECHECK: Duration = Duration::from_secs(2);

    #[test]
    fn a_suspect_is_checked_before_it_is_taken_for_dead() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (a, b) = (NodeId(1), NodeId(2));
        let mut s = Suspects::default();
        assert_eq!(s.verdict(a, t0, t0, RECHECK), Verdict::Alive);
        // Silent once: a suspect, but a redirect to it is checked, not believed.
        s.suspect(a, t0, FOR);
        assert!(s.is_suspect(a, ms(1)) && !s.is_suspect(b, ms(1)));
        assert_eq!(s.verdict(a, ms(1), ms(1), RECHECK), Verdict::Check);
        // The check failed: dead for RECHECK, for waiters that started before it too.
        s.check_failed(a, ms(100), FOR);
        assert_eq!(s.verdict(a, ms(101), ms(50), RECHECK), Verdict::Dead);
        assert_eq!(s.verdict(a, ms(2099), ms(2099), RECHECK), Verdict::Dead);
        // Then checked again.
        assert_eq!(s.verdict(a, ms(2100), ms(2100), RECHECK), Verdict::Check);
        // A waiter that queued behind a check that failed meanwhile takes its answer.
        s.check_failed(a, ms(2200), FOR);
        assert_eq!(s.verdict(a, ms(2201), ms(2150), RECHECK), Verdict::Dead);
        // A new silence does not forget the failed check.
        s.suspect(a, ms(2300), FOR);
        assert_eq!(s.verdict(a, ms(2301), ms(2301), RECHECK), Verdict::Dead);
        // It answered: no longer a suspect.
        s.clear(a);
        assert_eq!(s.verdict(a, ms(2400), ms(2400), RECHECK), Verdict::Alive);
        assert!(!s.is_suspect(a, ms(2400)));
    }

    #[test]
    fn suspicion_expires() {
        let t0 = Instant::now();
        let a = NodeId(1);
        let mut s = Suspects::default();
        s.check_failed(a, t0, FOR);
        assert!(s.is_suspect(a, t0 + FOR - Duration::from_millis(1)));
        assert!(!s.is_suspect(a, t0 + FOR));
        assert_eq!(s.verdict(a, t0 + FOR, t0 + FOR, RECHECK), Verdict::Alive);
    }
}

#[cfg(test)]
mod takeover_tests {
    use super::*;

    #[test]
    fn a_takeover_is_remembered_until_its_node_lets_go_or_it_expires() {
        let t0 = Instant::now();
        let keep = Duration::from_secs(10);
        let (l1, l2) = (LogId(1), LogId(2));
        let (a, b) = (NodeId(1), NodeId(2));
        let mut t = Takeovers::default();
        assert_eq!(t.node(l1, t0), None);
        t.record(l1, b, t0, keep);
        t.record(l2, b, t0, keep);
        assert_eq!(t.node(l1, t0 + Duration::from_secs(9)), Some(b));
        // Another node letting go changes nothing; the node itself does.
        t.forget(l1, a);
        assert_eq!(t.node(l1, t0), Some(b));
        t.forget(l1, b);
        assert_eq!(t.node(l1, t0), None);
        // Expiry.
        assert_eq!(t.node(l2, t0 + keep), None);
        assert!(t.logs.is_empty());
    }

    #[test]
    fn the_memory_is_bounded() {
        let t0 = Instant::now();
        let keep = Duration::from_secs(10);
        let mut t = Takeovers::default();
        for i in 0..(Takeovers::MAX as u64 + 10) {
            t.record(LogId(i), NodeId(2), t0 + Duration::from_millis(i), keep);
        }
        assert_eq!(t.logs.len(), Takeovers::MAX);
        // The oldest went first.
        assert_eq!(t.node(LogId(0), t0), None);
        let last = LogId(Takeovers::MAX as u64 + 9);
        assert_eq!(t.node(last, t0), Some(NodeId(2)));
    }
}
