//! [`Admission`]: the bound on store work a node holds at once (STYLE: a limit on everything).
//! A store takes one request permit and permits for its bytes before it touches LogsDB and
//! keeps them until LogsDB has acknowledged it (after the fsync for durable stores). When
//! either budget is exhausted the store is refused with `Overloaded` at once: nothing waits in
//! an unbounded queue, and the client places the copy elsewhere (DESIGN §6 step 5).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes a record costs besides its payload (header, key, copyset index), for accounting.
pub const RECORD_OVERHEAD_BYTES: usize = 64;

/// The in-flight store budgets of one node.
#[derive(Debug)]
pub struct Admission {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

/// Admitted work; dropping it returns the permits.
#[derive(Debug)]
pub struct Admitted {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(max_requests: u32, max_bytes: u32) -> Admission {
        Admission {
            requests: Arc::new(Semaphore::new(max_requests as usize)),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
        }
    }

    /// Admits a store of `bytes` if both budgets have room now; `None` means `Overloaded`.
    /// A store larger than the whole byte budget takes all of it (it runs alone).
    pub fn try_admit(&self, bytes: usize) -> Option<Admitted> {
        let request = self.requests.clone().try_acquire_owned().ok()?;
        let want = u32::try_from(bytes)
            .unwrap_or(u32::MAX)
            .clamp(1, self.max_bytes);
        let bytes = self.bytes.clone().try_acquire_many_owned(want).ok()?;
        Some(Admitted {
            _request: request,
            _bytes: bytes,
        })
    }

    /// Bytes a batch of `records` with `payload_bytes` in total is charged.
    pub fn cost(records: usize, payload_bytes: usize) -> usize {
        payload_bytes.saturating_add(records.saturating_mul(RECORD_OVERHEAD_BYTES))
    }

    /// Request permits free now (for tests and metrics).
    pub fn available_requests(&self) -> usize {
        self.requests.available_permits()
    }

    /// Byte permits free now (for tests and metrics).
    pub fn available_bytes(&self) -> usize {
        self.bytes.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_when_full_and_recovers_on_release() {
        let a = Admission::new(2, 100);
        let first = a.try_admit(60).unwrap();
        assert!(a.try_admit(60).is_none(), "bytes exhausted");
        let small = a.try_admit(40).unwrap();
        assert!(a.try_admit(1).is_none(), "requests exhausted");
        drop(first);
        drop(small);
        assert_eq!(a.available_bytes(), 100);
        assert_eq!(a.available_requests(), 2);
        // Larger than the whole budget: admitted alone.
        let big = a.try_admit(1000).unwrap();
        assert!(a.try_admit(1).is_none());
        drop(big);
        assert!(a.try_admit(1).is_some());
    }
}
