//! [`LogQueue`]: the pure decisions of append coalescing for one log (DESIGN §6 step 1: one
//! `Sequence` may cover many pending appends of the same log). Time is passed in; the tokio
//! side (`append.rs`) holds one queue per log behind a mutex and executes what it decides.
//!
//! Appends of a log wait here in arrival order as [`Unit`]s (one `append` or one
//! `append_batch`; a unit is never split). [`LogQueue::launch`] takes the longest prefix of
//! the queue that fits [`CoalesceConfig`]'s records and bytes as one [`Batch`], but only when
//!
//! - no batch of the log is waiting for its grant (`sequencing`): grants are asked for one at
//!   a time, so they come back in queue order and every caller's LSNs follow the order of its
//!   calls; and while a grant is on its way the appends arriving meanwhile gather into the
//!   next batch (natural batching: no timer, nothing waits when the log is idle);
//! - fewer than `max_batches_in_flight` batches are between launch and outcome: a bounded
//!   pipeline, so the next batch is sequenced while earlier ones write their copies.
//!
//! Units whose deadline has passed while queued are handed back as expired: nothing of them
//! was sent, so they fail as certainly not appended.
//!
//! The log's window (its `max_in_flight` attribute, which the client does not know) may be
//! smaller than a coalesced batch, and then no grant for that batch can ever come. A batch of
//! several units whose grant request meets a full window is therefore handed back
//! ([`LogQueue::requeue`]): its units return to the front of the queue and the log's batches
//! are capped at half its records; each grant that comes doubles the cap again until it is
//! the configured maximum. A batch of one unit waits for room as any single append does.

use std::collections::VecDeque;
use std::time::Instant;

use crate::config::CoalesceConfig;

/// One caller's append waiting in a log's queue: its payloads go out together, at
/// consecutive LSNs, in one batch. `W` is how the caller is answered.
#[derive(Debug)]
pub(crate) struct Unit<W> {
    /// Tells units apart, so a caller that gives up can withdraw its own.
    pub(crate) id: u64,
    pub(crate) payloads: Vec<Vec<u8>>,
    /// Payload bytes plus the per-record overhead of a STORE frame.
    pub(crate) bytes: usize,
    pub(crate) deadline: Instant,
    pub(crate) waiter: W,
}

impl<W> Unit<W> {
    fn records(&self) -> usize {
        self.payloads.len()
    }
}

/// Units taken from the queue to go out as one grant, in queue order.
#[derive(Debug)]
pub(crate) struct Batch<W> {
    pub(crate) units: Vec<Unit<W>>,
    pub(crate) records: usize,
    pub(crate) bytes: usize,
    /// The earliest deadline of its units: the batch's own.
    pub(crate) deadline: Instant,
}

/// What [`LogQueue::launch`] decided.
#[derive(Debug)]
pub(crate) struct Launch<W> {
    /// A batch to sequence and write now; it counts as in flight until
    /// [`LogQueue::finished`].
    pub(crate) batch: Option<Batch<W>>,
    /// Units that expired while queued; nothing of them was sent.
    pub(crate) expired: Vec<Unit<W>>,
}

/// The coalescing queue of one log. See the module documentation.
#[derive(Debug)]
pub(crate) struct LogQueue<W> {
    queued: VecDeque<Unit<W>>,
    /// A launched batch waits for its grant.
    sequencing: bool,
    /// Batches launched and not finished.
    in_flight: usize,
    /// Records a batch may hold below `max_batch_records`, after a full window.
    cap: Option<usize>,
}

impl<W> Default for LogQueue<W> {
    fn default() -> Self {
        LogQueue {
            queued: VecDeque::new(),
            sequencing: false,
            in_flight: 0,
            cap: None,
        }
    }
}

impl<W> LogQueue<W> {
    /// Queues one append behind those already waiting.
    pub(crate) fn push(&mut self, unit: Unit<W>) {
        self.queued.push_back(unit);
    }

    /// The next batch if one may go now (see the module documentation), and the units that
    /// expired at `now` on the way to it.
    pub(crate) fn launch(&mut self, config: &CoalesceConfig, now: Instant) -> Launch<W> {
        let mut launch = Launch {
            batch: None,
            expired: Vec::new(),
        };
        if self.sequencing || self.in_flight >= config.max_batches_in_flight {
            return launch;
        }
        let max_records = self
            .cap
            .unwrap_or(usize::MAX)
            .min(config.max_batch_records as usize);
        let mut batch: Option<Batch<W>> = None;
        while let Some(unit) = self.queued.front() {
            if unit.deadline <= now {
                launch.expired.extend(self.queued.pop_front());
                continue;
            }
            if let Some(b) = &batch {
                // The first unit always goes (it fits the limits alone); later ones only
                // if the batch stays within the coalescing limits.
                let records = b.records + unit.records();
                let bytes = b.bytes + unit.bytes;
                if records > max_records || bytes > config.max_batch_bytes {
                    break;
                }
            }
            let unit = self.queued.pop_front().expect("front exists");
            match &mut batch {
                None => {
                    batch = Some(Batch {
                        records: unit.records(),
                        bytes: unit.bytes,
                        deadline: unit.deadline,
                        units: vec![unit],
                    });
                }
                Some(b) => {
                    b.records += unit.records();
                    b.bytes += unit.bytes;
                    b.deadline = b.deadline.min(unit.deadline);
                    b.units.push(unit);
                }
            }
        }
        if batch.is_some() {
            self.sequencing = true;
            self.in_flight += 1;
        }
        launch.batch = batch;
        launch
    }

    /// The batch waiting for its grant got an answer (`fitted`: a grant; else an error):
    /// the next batch may ask for one.
    pub(crate) fn granted(&mut self, fitted: bool, config: &CoalesceConfig) {
        debug_assert!(self.sequencing, "no batch was waiting for a grant");
        self.sequencing = false;
        if fitted {
            self.cap = self
                .cap
                .map(|c| c.saturating_mul(2))
                .filter(|&c| c < config.max_batch_records as usize);
        }
    }

    /// The batch waiting for its grant met a full window: its `units` go back to the front
    /// of the queue, in order, and later batches hold at most half as many records. The
    /// batch no longer counts as launched.
    pub(crate) fn requeue(&mut self, units: Vec<Unit<W>>) {
        debug_assert!(
            self.sequencing && self.in_flight > 0,
            "no batch was launched"
        );
        let records: usize = units.iter().map(Unit::records).sum();
        self.cap = Some((records / 2).max(1));
        for unit in units.into_iter().rev() {
            self.queued.push_front(unit);
        }
        self.sequencing = false;
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// A launched batch has its outcome.
    pub(crate) fn finished(&mut self) {
        debug_assert!(self.in_flight > 0, "no batch was in flight");
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Takes the unit `id` out of the queue if it is still waiting (not yet launched).
    pub(crate) fn withdraw(&mut self, id: u64) -> Option<Unit<W>> {
        let at = self.queued.iter().position(|u| u.id == id)?;
        self.queued.remove(at)
    }

    /// Nothing queued and nothing in flight: the queue can be dropped.
    pub(crate) fn is_idle(&self) -> bool {
        self.queued.is_empty() && self.in_flight == 0
    }

    /// Units waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queued.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(records: u32, bytes: usize, in_flight: usize) -> CoalesceConfig {
        CoalesceConfig {
            max_batch_records: records,
            max_batch_bytes: bytes,
            max_batches_in_flight: in_flight,
        }
    }

    /// A unit of `records` payloads of `bytes` bytes each (overhead left out).
    fn unit(id: u64, records: usize, bytes: usize, deadline: Instant) -> Unit<u64> {
        Unit {
            id,
            payloads: vec![vec![0; bytes]; records],
            bytes: records * bytes,
            deadline,
            waiter: id,
        }
    }

    fn ids(batch: &Batch<u64>) -> Vec<u64> {
        batch.units.iter().map(|u| u.waiter).collect()
    }

    #[test]
    fn an_idle_log_sends_at_once_and_later_appends_gather_behind_the_grant() {
        let (now, later) = (Instant::now(), Instant::now() + Duration::from_secs(60));
        let c = config(100, 1 << 20, 2);
        let mut q = LogQueue::default();
        q.push(unit(1, 1, 10, later));
        let first = q
            .launch(&c, now)
            .batch
            .expect("nothing waits on an idle log");
        assert_eq!(ids(&first), vec![1]);
        // While its grant is on the way, nothing else goes: the appends coalesce.
        for id in 2..=5 {
            q.push(unit(id, 1, 10, later));
            assert!(q.launch(&c, now).batch.is_none());
        }
        q.granted(true, &c);
        let second = q.launch(&c, now).batch.expect("the grant came back");
        assert_eq!(
            ids(&second),
            vec![2, 3, 4, 5],
            "one batch, in arrival order"
        );
        assert_eq!((second.records, second.bytes), (4, 40));
        assert_eq!(q.len(), 0);
        assert!(!q.is_idle());
    }

    #[test]
    fn the_pipeline_is_bounded_by_batches_in_flight() {
        let (now, later) = (Instant::now(), Instant::now() + Duration::from_secs(60));
        let c = config(100, 1 << 20, 2);
        let mut q = LogQueue::default();
        q.push(unit(1, 1, 10, later));
        assert!(q.launch(&c, now).batch.is_some());
        q.push(unit(2, 1, 10, later));
        q.granted(true, &c);
        // Batch 1 writes its copies while batch 2 is sequenced.
        assert!(q.launch(&c, now).batch.is_some());
        q.push(unit(3, 1, 10, later));
        q.granted(true, &c);
        assert!(
            q.launch(&c, now).batch.is_none(),
            "two batches in flight: the third waits"
        );
        q.finished();
        let third = q.launch(&c, now).batch.expect("a slot is free");
        assert_eq!(ids(&third), vec![3]);
        q.granted(true, &c);
        q.finished();
        q.finished();
        assert!(q.is_idle());
    }

    #[test]
    fn a_batch_stops_at_the_record_and_byte_limits_and_never_splits_a_unit() {
        let (now, later) = (Instant::now(), Instant::now() + Duration::from_secs(60));
        let mut q = LogQueue::default();
        let c = config(5, 1000, 1);
        q.push(unit(1, 3, 10, later));
        q.push(unit(2, 2, 10, later));
        q.push(unit(3, 1, 10, later));
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!(ids(&b), vec![1, 2], "5 records: unit 3 would be the sixth");
        q.granted(true, &c);
        q.finished();
        // Bytes: 600 + 300 fits 1000, + 200 does not.
        q.push(unit(4, 1, 600, later));
        q.push(unit(5, 1, 300, later));
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!(ids(&b), vec![3, 4, 5]);
        q.granted(true, &c);
        q.finished();
        // A unit over the limits alone (an `append_batch`) goes alone, whole.
        q.push(unit(6, 8, 10, later));
        q.push(unit(7, 1, 10, later));
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!((ids(&b), b.records), (vec![6], 8));
        q.granted(true, &c);
        q.finished();
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!(ids(&b), vec![7]);
    }

    #[test]
    fn a_batch_the_window_refused_goes_back_in_order_and_smaller_batches_follow() {
        let (now, later) = (Instant::now(), Instant::now() + Duration::from_secs(60));
        let c = config(100, 1 << 20, 2);
        let mut q = LogQueue::default();
        for id in 1..=8 {
            q.push(unit(id, 1, 10, later));
        }
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!(b.records, 8);
        q.push(unit(9, 1, 10, later));
        q.requeue(b.units);
        assert!(!q.is_idle());
        assert_eq!(q.len(), 9);
        // Half the refused size, from the front, in the original order.
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!(ids(&b), vec![1, 2, 3, 4]);
        q.requeue(b.units);
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!(ids(&b), vec![1, 2]);
        // A grant doubles the cap again, up to the configured maximum.
        q.granted(true, &c);
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!(ids(&b), vec![3, 4, 5, 6]);
        q.granted(true, &c);
        q.finished();
        q.finished();
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!(ids(&b), vec![7, 8, 9]);
        // A failed grant request (not a full window) leaves the cap alone.
        q.granted(false, &c);
        assert_eq!(q.cap, Some(8));
        q.finished();
        for (id, cap) in [(10, Some(16)), (11, Some(32)), (12, Some(64)), (13, None)] {
            q.push(unit(id, 1, 10, later));
            assert!(q.launch(&c, now).batch.is_some());
            q.granted(true, &c);
            q.finished();
            assert_eq!(q.cap, cap, "back up to the configured maximum");
        }
    }

    #[test]
    fn expired_units_are_handed_back_and_withdrawn_ones_never_go() {
        let now = Instant::now();
        let s = Duration::from_secs;
        let c = config(100, 1 << 20, 1);
        let mut q = LogQueue::default();
        q.push(unit(1, 1, 10, now + s(5)));
        let b = q.launch(&c, now).batch.unwrap();
        assert_eq!(b.deadline, now + s(5));
        q.push(unit(2, 1, 10, now + s(1)));
        q.push(unit(3, 1, 10, now + s(20)));
        q.push(unit(4, 1, 10, now + s(10)));
        q.push(unit(5, 1, 10, now + s(30)));
        assert_eq!(q.withdraw(5).map(|u| u.id), Some(5));
        assert!(q.withdraw(5).is_none(), "gone");
        q.granted(true, &c);
        q.finished();
        let launch = q.launch(&c, now + s(2));
        let expired: Vec<u64> = launch.expired.iter().map(|u| u.id).collect();
        assert_eq!(expired, vec![2]);
        let b = launch.batch.unwrap();
        assert_eq!(ids(&b), vec![3, 4]);
        assert_eq!(
            b.deadline,
            now + s(10),
            "the earliest deadline of its units"
        );
        // A withdrawn unit cannot be found once launched either.
        assert!(q.withdraw(3).is_none());
    }
}
