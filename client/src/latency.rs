//! The client's running estimate of how long a STORE takes, so the first wave's store timeout
//! follows the cluster instead of a constant. A fixed 10 ms first timeout is right for an idle
//! cluster on fast disks, but under load (acks in tens of milliseconds) it fires on healthy
//! nodes and every append writes extra copies in new waves — a retry storm that makes the load
//! worse. The estimate is an exponentially weighted moving average of acknowledged STOREs; the
//! first wave waits a multiple of it, never less than the configured floor nor more than the cap.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many times the average a healthy STORE may take before the first wave gives up on it.
const TIMEOUT_MULTIPLE: u64 = 4;
/// Weight of a new sample: 1/8.
const SHIFT: u32 = 3;

/// A lock-free EWMA of STORE round trips in microseconds (0: no sample yet).
#[derive(Debug, Default)]
pub(crate) struct StoreLatency {
    ewma_us: AtomicU64,
}

impl StoreLatency {
    /// Adds the round trip of one acknowledged STORE.
    pub(crate) fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        // Concurrent updates may drop a sample; an average does not need every one.
        let old = self.ewma_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - (old >> SHIFT) + (sample >> SHIFT)
        };
        self.ewma_us.store(new.max(1), Ordering::Relaxed);
    }

    /// The first wave's store timeout: `TIMEOUT_MULTIPLE ×` the average, within `[floor, cap]`.
    pub(crate) fn first_wave_timeout(&self, floor: Duration, cap: Duration) -> Duration {
        let ewma = self.ewma_us.load(Ordering::Relaxed);
        Duration::from_micros(ewma.saturating_mul(TIMEOUT_MULTIPLE))
            .max(floor)
            .min(cap.max(floor))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_millis(10);
    const CAP: Duration = Duration::from_secs(60);

    #[test]
    fn starts_at_the_floor_and_follows_slow_acks() {
        let l = StoreLatency::default();
        assert_eq!(l.first_wave_timeout(FLOOR, CAP), FLOOR);
        l.record(Duration::from_micros(500));
        assert_eq!(
            l.first_wave_timeout(FLOOR, CAP),
            FLOOR,
            "fast acks keep the floor"
        );
        for _ in 0..64 {
            l.record(Duration::from_millis(40));
        }
        let t = l.first_wave_timeout(FLOOR, CAP);
        assert!(
            t > Duration::from_millis(150) && t <= Duration::from_millis(160),
            "{t:?}"
        );
        for _ in 0..64 {
            l.record(Duration::from_millis(1));
        }
        assert_eq!(
            l.first_wave_timeout(FLOOR, CAP),
            FLOOR,
            "and comes back down"
        );
    }

    #[test]
    fn capped() {
        let l = StoreLatency::default();
        l.record(Duration::from_secs(100));
        assert_eq!(l.first_wave_timeout(FLOOR, CAP), CAP);
    }
}
