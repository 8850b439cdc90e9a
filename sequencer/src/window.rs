//! The sliding window of one epoch (DESIGN §5): which ESNs were granted, which of them the
//! clients reported fully stored, and the last known good ESN (LNG) — the end of the completed
//! prefix. Grants stop when `max_in_flight` ESNs past the LNG are granted (`NoBufs`,
//! backpressure) or the epoch's ESN space is exhausted (the sequencer must reactivate).
//!
//! Pure: no clock inside (grant times are passed in), no I/O.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tally_common::{Epoch, Esn, Lsn};

/// Why a grant was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the window is full: {in_flight} ESNs in flight, limit {max}")]
    NoBufs { in_flight: u32, max: u32 },
    #[error("epoch {0} has no ESNs left")]
    EsnExhausted(Epoch),
    #[error("cannot grant {0} ESNs at once")]
    BadCount(u32),
}

/// Why a completion report was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CompleteError {
    #[error("ESNs {first}..+{count} were never granted in this epoch (next ungranted: {next})")]
    NotGranted { first: Esn, count: u32, next: Esn },
    #[error("empty completion report")]
    Empty,
}

/// A run of ESNs granted together, remembered until they are all below the LNG, so LSNs that
/// nobody completes can be found (the client died or could not reach R nodes).
#[derive(Debug, Clone, Copy)]
struct GrantRecord {
    first: u32,
    count: u32,
    at: Instant,
}

/// The window of one epoch.
#[derive(Debug, Clone)]
pub struct EpochWindow {
    epoch: Epoch,
    /// Next ESN to grant.
    next: u32,
    /// Every ESN ≤ `lng` is completed.
    lng: u32,
    /// Completion flags of ESNs `lng + 1 .. next`, front first.
    done: VecDeque<bool>,
    grants: VecDeque<GrantRecord>,
    max_in_flight: u32,
}

impl EpochWindow {
    /// A fresh window for `epoch`; `max_in_flight` ≥ 1.
    pub fn new(epoch: Epoch, max_in_flight: u32) -> EpochWindow {
        EpochWindow {
            epoch,
            next: Esn::MIN.0,
            lng: Esn::INVALID.0,
            done: VecDeque::new(),
            grants: VecDeque::new(),
            max_in_flight: max_in_flight.max(1),
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Last known good ESN: the end of the completed prefix.
    pub fn lng(&self) -> Esn {
        Esn(self.lng)
    }

    /// The LSN of the LNG (`epoch, lng`); ESN 0 when nothing is complete yet.
    pub fn lng_lsn(&self) -> Lsn {
        Lsn::new(self.epoch, Esn(self.lng))
    }

    /// The next ESN a grant would start at.
    pub fn next_esn(&self) -> Esn {
        Esn(self.next)
    }

    /// ESNs granted and not yet below the LNG.
    pub fn in_flight(&self) -> u32 {
        self.next - 1 - self.lng
    }

    /// Grants `count` consecutive ESNs; returns the first.
    pub fn grant(&mut self, count: u32, now: Instant) -> Result<Esn, GrantError> {
        if count == 0 {
            return Err(GrantError::BadCount(count));
        }
        let in_flight = self.in_flight();
        if u64::from(in_flight) + u64::from(count) > u64::from(self.max_in_flight) {
            return Err(GrantError::NoBufs {
                in_flight,
                max: self.max_in_flight,
            });
        }
        let last = u64::from(self.next) + u64::from(count) - 1;
        if last > u64::from(Esn::MAX.0) - 1 {
            // The top ESN is kept free so `next` never overflows.
            return Err(GrantError::EsnExhausted(self.epoch));
        }
        let first = self.next;
        self.next += count;
        self.done.extend(std::iter::repeat_n(false, count as usize));
        self.grants.push_back(GrantRecord {
            first,
            count,
            at: now,
        });
        Ok(Esn(first))
    }

    /// When the grant starting at `first` was made, while any of its ESNs is above the LNG
    /// (for the append latency a completion report measures).
    pub fn granted_at(&self, first: Esn) -> Option<Instant> {
        let i = self.grants.partition_point(|g| g.first < first.0);
        self.grants
            .get(i)
            .filter(|g| g.first == first.0)
            .map(|g| g.at)
    }

    /// Marks `first ..= first + count − 1` completed. Returns whether the LNG advanced.
    /// Reports of ESNs already below the LNG are accepted and ignored (retransmissions).
    pub fn complete(&mut self, first: Esn, count: u32) -> Result<bool, CompleteError> {
        if count == 0 || first == Esn::INVALID {
            return Err(CompleteError::Empty);
        }
        let end = u64::from(first.0) + u64::from(count); // exclusive
        if end > u64::from(self.next) {
            return Err(CompleteError::NotGranted {
                first,
                count,
                next: Esn(self.next),
            });
        }
        let start = first.0.max(self.lng + 1);
        for esn in u64::from(start)..end {
            let idx = (esn - u64::from(self.lng) - 1) as usize;
            self.done[idx] = true;
        }
        let before = self.lng;
        while self.done.front() == Some(&true) {
            self.done.pop_front();
            self.lng += 1;
        }
        while self
            .grants
            .front()
            .is_some_and(|g| g.first + g.count - 1 <= self.lng)
        {
            self.grants.pop_front();
        }
        Ok(self.lng > before)
    }

    /// The first ESN granted at least `timeout` before `now` and still not completed: an
    /// abandoned LSN that only recovery of this epoch can settle.
    pub fn abandoned(&self, now: Instant, timeout: Duration) -> Option<Esn> {
        for g in &self.grants {
            if now.saturating_duration_since(g.at) < timeout {
                // Grants are in time order: later ones are younger.
                return None;
            }
            for esn in g.first.max(self.lng + 1)..g.first + g.count {
                let idx = (esn - self.lng - 1) as usize;
                if !self.done[idx] {
                    return Some(Esn(esn));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lng_advances_over_the_completed_prefix() {
        let t = Instant::now();
        let mut w = EpochWindow::new(Epoch(3), 10);
        assert_eq!(w.grant(2, t), Ok(Esn(1)));
        assert_eq!(w.grant(3, t), Ok(Esn(3)));
        assert_eq!(
            w.complete(Esn(3), 3),
            Ok(false),
            "a hole at 1..2 holds the LNG"
        );
        assert_eq!(w.lng(), Esn(0));
        assert_eq!(w.complete(Esn(1), 2), Ok(true));
        assert_eq!(w.lng(), Esn(5));
        assert_eq!(w.lng_lsn(), Lsn::new(Epoch(3), Esn(5)));
        assert_eq!(
            w.complete(Esn(1), 1),
            Ok(false),
            "retransmission is harmless"
        );
        assert_eq!(
            w.complete(Esn(6), 1),
            Err(CompleteError::NotGranted {
                first: Esn(6),
                count: 1,
                next: Esn(6)
            })
        );
    }

    #[test]
    fn window_is_backpressure() {
        let t = Instant::now();
        let mut w = EpochWindow::new(Epoch(1), 4);
        w.grant(3, t).unwrap();
        assert_eq!(
            w.grant(2, t),
            Err(GrantError::NoBufs {
                in_flight: 3,
                max: 4
            })
        );
        w.grant(1, t).unwrap();
        w.complete(Esn(1), 2).unwrap();
        assert_eq!(w.in_flight(), 2);
        assert_eq!(w.grant(2, t), Ok(Esn(5)));
    }

    #[test]
    fn abandoned_lsns_are_found_after_the_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut w = EpochWindow::new(Epoch(1), 100);
        w.grant(3, t0).unwrap();
        w.grant(2, t0 + Duration::from_secs(5)).unwrap();
        w.complete(Esn(1), 1).unwrap();
        w.complete(Esn(3), 1).unwrap();
        assert_eq!(w.abandoned(t0 + Duration::from_secs(9), timeout), None);
        assert_eq!(
            w.abandoned(t0 + Duration::from_secs(10), timeout),
            Some(Esn(2))
        );
        w.complete(Esn(2), 1).unwrap();
        assert_eq!(
            w.abandoned(t0 + Duration::from_secs(12), timeout),
            None,
            "4..5 are younger"
        );
        assert_eq!(
            w.abandoned(t0 + Duration::from_secs(15), timeout),
            Some(Esn(4))
        );
    }

    #[test]
    fn esn_exhaustion() {
        let t = Instant::now();
        let mut w = EpochWindow::new(Epoch(1), u32::MAX);
        w.next = Esn::MAX.0 - 3;
        w.lng = w.next - 1;
        assert_eq!(w.grant(2, t), Ok(Esn(Esn::MAX.0 - 3)));
        assert_eq!(w.grant(2, t), Err(GrantError::EsnExhausted(Epoch(1))));
        assert_eq!(w.grant(1, t), Ok(Esn(Esn::MAX.0 - 1)));
    }

    proptest! {
        /// Against a model (a set of completed ESNs): the LNG is always the end of the completed
        /// prefix, in-flight never exceeds the window, grants never overlap.
        #[test]
        fn window_matches_model(ops in proptest::collection::vec((any::<bool>(), 1u32..6, any::<u32>()), 1..200)) {
            let t = Instant::now();
            let max = 16;
            let mut w = EpochWindow::new(Epoch(2), max);
            let mut granted: u32 = 0; // ESNs 1..=granted handed out
            let mut completed = std::collections::BTreeSet::new();
            for (is_grant, count, pick) in ops {
                if is_grant {
                    match w.grant(count, t) {
                        Ok(first) => {
                            prop_assert_eq!(first.0, granted + 1);
                            granted += count;
                        }
                        Err(GrantError::NoBufs { .. }) => prop_assert!(w.in_flight() + count > max),
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                } else if granted > 0 {
                    let first = 1 + pick % granted;
                    let count = count.min(granted - first + 1);
                    w.complete(Esn(first), count).unwrap();
                    completed.extend(first..first + count);
                }
                let mut model_lng = 0;
                while completed.contains(&(model_lng + 1)) {
                    model_lng += 1;
                }
                prop_assert_eq!(w.lng(), Esn(model_lng));
                prop_assert!(w.in_flight() <= max);
                prop_assert_eq!(w.next_esn(), Esn(granted + 1));
            }
        }
    }
}
