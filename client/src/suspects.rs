//! Sequencers the client found silent or unreachable ("suspects"), and when to believe it.
//!
//! A suspect is asked last, after the other sequencers in rank order, for
//! `sequencer_suspect_for`, so appends do not each pay for a dead node. A node that did not
//! even acknowledge a request within the silence timeout (or could not be connected to) is
//! taken for dead for `sequencer_dead_for` ([`Verdict::Dead`]): another node that redirects a
//! log to it is asked at once to take the log over. That belief is tied to the node's
//! *incarnation* (`NodeInfo::incarnation`, new at every process start): a restarted node in
//! the cluster state is not the process that went silent, and is checked first.
//!
//! Past `sequencer_dead_for`, suspicion alone must not move logs: a node that stalled once —
//! a loaded machine, a starved process — is usually alive, and taking each of its logs over
//! as it is appended seals epochs the owner is running, fails their appends in flight, and
//! starts an ownership fight when the owner hears from other clients again. So before the
//! client makes a node take a log over because its owner is a suspect, it checks the owner
//! with one cheap request ([`Verdict::Check`]); one check runs at a time per node and every
//! waiter takes its answer. A failed check counts as a new silence; a node that answered is
//! no longer a suspect. A node that acknowledged but answered late (busy activating) is only
//! a suspect: a redirect to it is checked.
//!
//! Pure bookkeeping; `Shared::owner_alive` (client.rs) runs the checks.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tally_common::{LogId, NodeId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Suspicion {
    /// Asked last until then.
    until: Instant,
    /// When the node was last found silent or unreachable (a request not acknowledged, a
    /// failed liveness check), and which incarnation of it that was.
    silent: Option<(Instant, u64)>,
}

/// What to make of a redirect to a suspect owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not (or no longer) a suspect: follow the redirect.
    Alive,
    /// This incarnation was found silent recently (or since the caller started to wait for a
    /// check): take over.
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
    /// `node` answered late at `now`: ask it last for `suspect_for`.
    pub(crate) fn suspect(&mut self, node: NodeId, now: Instant, suspect_for: Duration) {
        let until = now + suspect_for;
        self.nodes
            .entry(node)
            .and_modify(|s| s.until = s.until.max(until))
            .or_insert(Suspicion {
                until,
                silent: None,
            });
    }

    /// Incarnation `incarnation` of `node` was silent or unreachable at `now` (a request it
    /// did not acknowledge, a failed liveness check, no connection).
    pub(crate) fn silent(
        &mut self,
        node: NodeId,
        incarnation: u64,
        now: Instant,
        suspect_for: Duration,
    ) {
        self.suspect(node, now, suspect_for);
        if let Some(s) = self.nodes.get_mut(&node) {
            s.silent = Some((now, incarnation));
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

    /// What a redirect at `now` to `node`, whose incarnation in the cluster state is
    /// `incarnation`, means for a caller that started waiting for a check at `asked_at`: a
    /// silence of that incarnation since then, or within `dead_for`, answers for it.
    pub(crate) fn verdict(
        &mut self,
        node: NodeId,
        incarnation: u64,
        now: Instant,
        asked_at: Instant,
        dead_for: Duration,
    ) -> Verdict {
        if !self.is_suspect(node, now) {
            return Verdict::Alive;
        }
        match self.nodes[&node].silent {
            Some((at, silent))
                if silent == incarnation
                    && (at >= asked_at || now.saturating_duration_since(at) < dead_for) =>
            {
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
    const DEAD: Duration = Duration::from_secs(2);

    #[test]
    fn a_silent_node_is_dead_for_a_while_then_checked() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let (a, b) = (NodeId(1), NodeId(2));
        let inc = 7;
        let mut s = Suspects::default();
        assert_eq!(s.verdict(a, inc, t0, t0, DEAD), Verdict::Alive);
        // Silent: a suspect, and a redirect to it is a takeover at once (no check).
        s.silent(a, inc, t0, FOR);
        assert!(s.is_suspect(a, ms(1)) && !s.is_suspect(b, ms(1)));
        assert_eq!(s.verdict(a, inc, ms(1), ms(1), DEAD), Verdict::Dead);
        assert_eq!(s.verdict(a, inc, ms(1999), ms(1999), DEAD), Verdict::Dead);
        // Then checked.
        assert_eq!(s.verdict(a, inc, ms(2000), ms(2000), DEAD), Verdict::Check);
        // A waiter that queued behind a check that failed meanwhile takes its answer.
        s.silent(a, inc, ms(2200), FOR);
        assert_eq!(s.verdict(a, inc, ms(2201), ms(2150), DEAD), Verdict::Dead);
        // A late answer does not forget the silence.
        s.suspect(a, ms(2300), FOR);
        assert_eq!(s.verdict(a, inc, ms(2301), ms(2301), DEAD), Verdict::Dead);
        // It answered: no longer a suspect.
        s.clear(a);
        assert_eq!(s.verdict(a, inc, ms(2400), ms(2400), DEAD), Verdict::Alive);
        assert!(!s.is_suspect(a, ms(2400)));
    }

    #[test]
    fn a_slow_node_is_checked_not_taken_for_dead() {
        let t0 = Instant::now();
        let a = NodeId(1);
        let mut s = Suspects::default();
        s.suspect(a, t0, FOR);
        assert!(s.is_suspect(a, t0));
        assert_eq!(s.verdict(a, 3, t0, t0, DEAD), Verdict::Check);
    }

    #[test]
    fn a_restarted_node_is_checked_not_taken_for_dead() {
        let t0 = Instant::now();
        let a = NodeId(1);
        let mut s = Suspects::default();
        s.silent(a, 1, t0, FOR);
        // The cluster state now names a new process: the silence was not its own.
        assert_eq!(s.verdict(a, 2, t0, t0, DEAD), Verdict::Check);
        // The old process is still taken for dead (a stale view).
        assert_eq!(s.verdict(a, 1, t0, t0, DEAD), Verdict::Dead);
        // The new one failed its check: dead in turn.
        s.silent(a, 2, t0, FOR);
        assert_eq!(s.verdict(a, 2, t0, t0, DEAD), Verdict::Dead);
    }

    #[test]
    fn suspicion_expires() {
        let t0 = Instant::now();
        let a = NodeId(1);
        let mut s = Suspects::default();
        s.silent(a, 1, t0, FOR);
        assert!(s.is_suspect(a, t0 + FOR - Duration::from_millis(1)));
        assert!(!s.is_suspect(a, t0 + FOR));
        assert_eq!(s.verdict(a, 1, t0 + FOR, t0 + FOR, DEAD), Verdict::Alive);
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
