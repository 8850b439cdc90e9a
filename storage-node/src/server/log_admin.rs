//! Log administration and scan estimates served by storage nodes (`tally log list`,
//! `tally log update`, `tally grep --stats`):
//! - `ListLogs`: every log's epoch-store record, in log order.
//! - `UpdateLog`: replaces a log's attributes through the epoch store's update path
//!   (validated there and on the wire; they apply from the log's next activation).
//! - `ScanEstimate{log, from, until}`: what a read of the range would scan here, from the
//!   partition directory alone (no record is read): the partitions whose entries for the log
//!   overlap the range above the trim point, and their bytes (interpolated over LSNs for
//!   partitions the range covers in part, like `DataSize`).

use tally_common::wire::ErrorCode;
use tally_common::wire::client::{ClientResponse, LogListing, MAX_LISTED_LOGS};
use tally_common::{LogId, Lsn};
use tally_epochstore::EpochStoreError;
use tokio::time::Instant;

use super::StorageNode;
use super::store_path::remote;
use crate::logsdb::{DirEntry, PartitionId};

fn store_error(e: &EpochStoreError) -> ClientResponse {
    let code = match e {
        EpochStoreError::NotFound { .. } => ErrorCode::NotFound,
        EpochStoreError::Unavailable { .. } => ErrorCode::Unavailable,
        EpochStoreError::Timeout { .. } => ErrorCode::Timeout,
        EpochStoreError::InvalidArgument(_) => ErrorCode::BadRequest,
        EpochStoreError::Unauthorized(_) => ErrorCode::PermissionDenied,
        _ => ErrorCode::Internal,
    };
    ClientResponse::Error(remote(code, e.to_string()))
}

fn timed_out() -> ClientResponse {
    ClientResponse::Error(remote(ErrorCode::Timeout, "epoch store call timed out"))
}

impl StorageNode {
    /// Answers `ListLogs`.
    pub(crate) async fn list_logs(&self, deadline: Instant) -> ClientResponse {
        let limit = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(limit, self.store.list_logs()).await {
            Ok(Ok(logs)) if logs.len() > MAX_LISTED_LOGS => ClientResponse::Error(remote(
                ErrorCode::TooLarge,
                format!(
                    "{} logs: more than one answer carries ({MAX_LISTED_LOGS})",
                    logs.len()
                ),
            )),
            Ok(Ok(logs)) => ClientResponse::Logs(
                logs.into_iter()
                    .map(|(log, metadata)| LogListing { log, metadata })
                    .collect(),
            ),
            Ok(Err(e)) => store_error(&e),
            Err(_) => timed_out(),
        }
    }

    /// Answers `UpdateLog`.
    pub(crate) async fn update_log(
        &self,
        log: LogId,
        attributes: tally_common::meta::LogAttributes,
        deadline: Instant,
    ) -> ClientResponse {
        let limit = deadline.saturating_duration_since(Instant::now());
        tracing::info!(node = %self.id(), %log, ?attributes, "updating log attributes");
        match tokio::time::timeout(limit, self.store.update_attributes(log, attributes)).await {
            Ok(Ok(meta)) => ClientResponse::LogUpdated(meta),
            Ok(Err(e)) => store_error(&e),
            Err(_) => timed_out(),
        }
    }

    /// Answers `ScanEstimate` from the partition directory (in memory: no I/O).
    pub(crate) fn scan_estimate(&self, log: LogId, from: Lsn, until: Lsn) -> ClientResponse {
        let entries = self.logsdb.directory(log);
        let (_, trim) = self.logsdb.release_and_trim(log);
        let (partitions, bytes) = estimate(&entries, trim, from, until);
        ClientResponse::ScanEstimate { partitions, bytes }
    }
}

/// Partitions overlapping `from ..= until` above `trim`, and their interpolated bytes.
fn estimate(entries: &[(PartitionId, DirEntry)], trim: Lsn, from: Lsn, until: Lsn) -> (u32, u64) {
    let from = from.max(trim.next());
    let mut partitions = 0u32;
    let mut bytes = 0u64;
    for (_, e) in entries {
        let lo = e.first_lsn.max(from);
        let hi = e.last_lsn.min(until);
        if lo > hi {
            continue;
        }
        partitions = partitions.saturating_add(1);
        let span = u128::from(e.last_lsn.0 - e.first_lsn.0) + 1;
        let part = u128::from(hi.0 - lo.0) + 1;
        let share = (u128::from(e.bytes) * part).div_ceil(span);
        bytes = bytes.saturating_add(u64::try_from(share).unwrap_or(u64::MAX));
    }
    (partitions, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(first: u64, last: u64, bytes: u64) -> DirEntry {
        DirEntry {
            first_lsn: Lsn(first),
            last_lsn: Lsn(last),
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
            bytes,
        }
    }

    #[test]
    fn estimate_counts_overlapping_partitions_above_the_trim_point() {
        let entries = [
            (PartitionId(1), entry(1, 10, 1000)),
            (PartitionId(2), entry(11, 20, 2000)),
            (PartitionId(3), entry(21, 30, 3000)),
        ];
        assert_eq!(estimate(&entries, Lsn(0), Lsn(1), Lsn(30)), (3, 6000));
        assert_eq!(estimate(&entries, Lsn(0), Lsn(11), Lsn(20)), (1, 2000));
        // Half of p1 and half of p2.
        assert_eq!(estimate(&entries, Lsn(0), Lsn(6), Lsn(15)), (2, 1500));
        // Trimmed through 20: only p3 is left.
        assert_eq!(estimate(&entries, Lsn(20), Lsn(1), Lsn(30)), (1, 3000));
        assert_eq!(estimate(&entries, Lsn(0), Lsn(31), Lsn::MAX), (0, 0));
    }
}
