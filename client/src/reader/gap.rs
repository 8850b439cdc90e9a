//! Gap decisions of the read stream (DESIGN §8), as pure functions over what the nodes of one
//! epoch's node set have proved. Each node's progress is one LSN, `passed`: everything at or
//! below it was either shipped or proved absent by that node (streams are in LSN order, so a
//! record or gap at position p also says "nothing unsent below p"). The one
//! [`QuorumChecker`] turns "which nodes have passed x" into a graded f-majority answer; this
//! module only chooses which x to ask about and what type a proved-absent range gets.
//!
//! Typing rules, in order: a range followed by a record of the same epoch lies inside the
//! epoch, so its LSNs were granted and every copy is gone (`DataLoss`). A range that runs to
//! the end of the epoch (or to the read's `until`) without any record after it is `DataLoss`
//! when the epoch is known to hold something at or after where the reader entered it — the
//! reader entered at the epoch's start, or delivered some of it — because recovery bridges
//! every epoch it closes authoritatively, so a missing bridge means the tail may be lost.
//! Otherwise it is the epoch's end (`Bridge`): the reader started past the epoch's bridge
//! record (LogDevice does the same; the price is that a reader starting inside a wholly lost
//! epoch tail sees `Bridge`). Anything else is undecided: the reader waits for more proof
//! instead of guessing.

use std::collections::BTreeMap;

use tally_common::quorum::{FMajority, QuorumChecker};
use tally_common::wire::GapKind;
use tally_common::{Epoch, Esn, Lsn, NodeId};

/// The last position the reader may cover while in `epoch`: the epoch's last LSN plus the
/// next epoch's ESN 0 slot, which never holds a record. Ending epoch ranges there means the
/// next epoch starts at ESN 1.
pub fn epoch_cap(epoch: Epoch) -> Lsn {
    match epoch.0.checked_add(1) {
        Some(next) => Lsn::new(Epoch(next), Esn(0)),
        None => Lsn::MAX,
    }
}

/// How strong a proof the caller needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proof {
    /// Every node of the set (no grace period needed).
    Complete,
    /// An authoritative f-majority (after the grace period).
    Authoritative,
}

/// The largest `y ≥ next` such that the nodes with `passed ≥ y` satisfy `proof`, i.e. every
/// LSN of `[next, y]` is proved absent by such a set (nodes that passed `y` passed everything
/// below it). `None` if not even `next` is proved.
pub fn proved_through(
    checker: &mut QuorumChecker,
    passed: &BTreeMap<NodeId, Lsn>,
    next: Lsn,
    proof: Proof,
) -> Option<Lsn> {
    // Candidates are the nodes' own positions: the tagged set only changes there.
    let mut candidates: Vec<Lsn> = passed.values().copied().filter(|p| *p >= next).collect();
    candidates.sort_unstable_by(|a, b| b.cmp(a));
    candidates.dedup();
    // Also try `next` itself: Empty nodes count without having passed anything.
    if candidates.last() != Some(&next) {
        candidates.push(next);
    }
    for y in candidates {
        tag_passed(checker, passed, y);
        let grade = checker.f_majority();
        let ok = match proof {
            Proof::Complete => grade == FMajority::Complete,
            Proof::Authoritative => grade.is_authoritative(),
        };
        if ok {
            return Some(y);
        }
    }
    None
}

/// Tags the nodes that have passed `lsn` (untags the rest).
fn tag_passed(checker: &mut QuorumChecker, passed: &BTreeMap<NodeId, Lsn>, lsn: Lsn) {
    checker.reset_tags();
    for (node, p) in passed {
        if *p >= lsn {
            checker.set_tag(*node, true);
        }
    }
}

/// Whether the reader is stuck at `next` for want of nodes it cannot hear from: even if
/// every node that is not `down` passed `next`, no authoritative f-majority would result
/// (too many nodes down, or `Unavailable`). Returns the nodes it waits for (those of the set
/// that are down and have not passed `next`, and the unavailable ones, whose answers never
/// count), or `None` when live nodes could
/// still decide.
pub fn stalled_on(
    checker: &mut QuorumChecker,
    passed: &BTreeMap<NodeId, Lsn>,
    down: &dyn Fn(NodeId) -> bool,
    unavailable: &dyn Fn(NodeId) -> bool,
    next: Lsn,
) -> Option<Vec<NodeId>> {
    checker.reset_tags();
    for (node, p) in passed {
        if *p >= next || !down(*node) {
            checker.set_tag(*node, true);
        }
    }
    if checker.f_majority().is_authoritative() {
        return None;
    }
    let waiting: Vec<NodeId> = passed
        .iter()
        .filter(|(n, p)| (**p < next && down(**n)) || unavailable(**n))
        .map(|(n, _)| *n)
        .collect();
    Some(waiting)
}

/// Where a proved-absent range ends, which decides its type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    /// A record (or plug) of the same epoch follows the range.
    BeforeRecord,
    /// The range reaches the end of the epoch, or the read's `until`, with nothing after it.
    EpochEnd,
}

/// The type of a proved-absent range (see the module documentation).
pub fn gap_kind(end: RangeEnd, epoch_known_nonempty: bool) -> GapKind {
    match end {
        RangeEnd::BeforeRecord => GapKind::DataLoss,
        RangeEnd::EpochEnd if epoch_known_nonempty => GapKind::DataLoss,
        RangeEnd::EpochEnd => GapKind::Bridge,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::quorum::AuthStatus;

    fn lsn(esn: u32) -> Lsn {
        Lsn::new(Epoch(1), Esn(esn))
    }

    fn setup(n: u32, r: usize, passed: &[u32]) -> (QuorumChecker, BTreeMap<NodeId, Lsn>) {
        let ids: Vec<NodeId> = (0..n).map(NodeId).collect();
        let checker = QuorumChecker::new(&ids, r).unwrap();
        let passed = ids
            .iter()
            .map(|id| (*id, lsn(passed[id.0 as usize])))
            .collect();
        (checker, passed)
    }

    #[test]
    fn proved_through_picks_the_f_majority_frontier() {
        // n = 5, R = 3: f-majority is 3 nodes.
        let (mut q, p) = setup(5, 3, &[10, 8, 6, 4, 2]);
        assert_eq!(
            proved_through(&mut q, &p, lsn(5), Proof::Authoritative),
            Some(lsn(6))
        );
        assert_eq!(proved_through(&mut q, &p, lsn(5), Proof::Complete), None);
        assert_eq!(
            proved_through(&mut q, &p, lsn(2), Proof::Complete),
            Some(lsn(2))
        );
        assert_eq!(
            proved_through(&mut q, &p, lsn(7), Proof::Authoritative),
            None
        );
    }

    #[test]
    fn empty_nodes_count_and_unavailable_ones_do_not() {
        let (mut q, p) = setup(3, 2, &[9, 0, 0]);
        // f-majority is 2; node 0 alone is not enough.
        assert_eq!(
            proved_through(&mut q, &p, lsn(1), Proof::Authoritative),
            None
        );
        q.set_status(NodeId(1), AuthStatus::Empty);
        assert_eq!(
            proved_through(&mut q, &p, lsn(1), Proof::Authoritative),
            Some(lsn(9))
        );
        q.set_status(NodeId(1), AuthStatus::Unavailable);
        q.set_status(NodeId(2), AuthStatus::Unavailable);
        assert_eq!(
            proved_through(&mut q, &p, lsn(1), Proof::Authoritative),
            None
        );
    }

    #[test]
    fn stalled_only_when_down_nodes_are_needed() {
        let (mut q, p) = setup(3, 2, &[5, 0, 0]);
        let none = |_: NodeId| false;
        // Nobody is down: live nodes can still decide.
        assert_eq!(stalled_on(&mut q, &p, &none, &none, lsn(1)), None);
        // One down: node 0 plus node 1 is still an f-majority of 2.
        let one = |n: NodeId| n == NodeId(2);
        assert_eq!(stalled_on(&mut q, &p, &one, &none, lsn(1)), None);
        // Two down: stuck, waiting for both.
        let two = |n: NodeId| n != NodeId(0);
        assert_eq!(
            stalled_on(&mut q, &p, &two, &none, lsn(1)),
            Some(vec![NodeId(1), NodeId(2)])
        );
        // Unavailable nodes never count: non-authoritative is stalled too.
        q.set_status(NodeId(1), AuthStatus::Unavailable);
        q.set_status(NodeId(2), AuthStatus::Unavailable);
        assert_eq!(
            stalled_on(&mut q, &p, &none, &|n| n != NodeId(0), lsn(1)),
            Some(vec![NodeId(1), NodeId(2)])
        );
    }

    #[test]
    fn gap_types() {
        assert_eq!(gap_kind(RangeEnd::BeforeRecord, false), GapKind::DataLoss);
        assert_eq!(gap_kind(RangeEnd::BeforeRecord, true), GapKind::DataLoss);
        assert_eq!(gap_kind(RangeEnd::EpochEnd, false), GapKind::Bridge);
        assert_eq!(gap_kind(RangeEnd::EpochEnd, true), GapKind::DataLoss);
        assert_eq!(epoch_cap(Epoch(3)), Lsn::new(Epoch(4), Esn(0)));
        assert_eq!(epoch_cap(Epoch(u32::MAX)), Lsn::MAX);
    }
}
