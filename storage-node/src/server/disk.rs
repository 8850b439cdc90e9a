//! [`DiskMonitor`]: free space on the data directory's file system, measured periodically, so
//! a nearly full node answers `NoSpace` before RocksDB fails a write (after which LogsDB
//! refuses every write until restart). A write that fails with ENOSPC anyway is recognised
//! from the error text ([`is_no_space`]): that is all RocksDB reports.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Free-space state of one data directory.
#[derive(Debug)]
pub struct DiskMonitor {
    dir: PathBuf,
    min_free_bytes: u64,
    full: AtomicBool,
    free_bytes: AtomicU64,
}

impl DiskMonitor {
    /// Measures once, so the first request already sees the real state.
    pub fn new(dir: PathBuf, min_free_bytes: u64) -> DiskMonitor {
        let monitor = DiskMonitor {
            dir,
            min_free_bytes,
            full: AtomicBool::new(false),
            free_bytes: AtomicU64::new(u64::MAX),
        };
        monitor.refresh();
        monitor
    }

    /// Whether stores must be refused with `NoSpace`.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// Free bytes at the last measurement (`u64::MAX` if it could not be measured).
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }

    /// Measures now. A failed measurement keeps the previous verdict (and is logged).
    pub fn refresh(&self) {
        match fs2::available_space(&self.dir) {
            Ok(free) => {
                self.free_bytes.store(free, Ordering::Relaxed);
                let full = free < self.min_free_bytes;
                if full != self.full.swap(full, Ordering::Relaxed) {
                    if full {
                        tracing::warn!(dir = %self.dir.display(), free, min = self.min_free_bytes,
                            "disk nearly full: refusing stores with NoSpace");
                    } else {
                        tracing::info!(dir = %self.dir.display(), free, "disk space available again");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot measure free disk space");
            }
        }
    }

    /// Re-measures every `interval` until `shutdown`.
    pub async fn run(&self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            // statvfs is one cheap system call; not worth a blocking-pool hop.
            self.refresh();
        }
    }
}

/// Whether an error text (RocksDB's, or LogsDB's failure message quoting it) says the disk
/// is full. RocksDB surfaces ENOSPC only as the OS message inside an `IO error:` string.
pub fn is_no_space(text: &str) -> bool {
    text.contains("No space left on device") || text.contains("ENOSPC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_decides() {
        let dir = std::env::temp_dir();
        assert!(DiskMonitor::new(dir.clone(), u64::MAX).is_full());
        assert!(!DiskMonitor::new(dir, 0).is_full());
        assert!(is_no_space(
            "write: IO error: No space left on device: While appending to file"
        ));
        assert!(!is_no_space("IO error: Input/output error"));
    }
}
