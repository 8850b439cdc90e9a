//! Retention: which trim points advance because of a log's time backlog, and which partitions
//! hold nothing live any more and can be dropped whole. Pure planning over the directory; the
//! writer thread carries the plan out (trims synced before any column family is dropped).

use std::collections::{BTreeMap, HashMap};

use tally_common::{LogId, Lsn};

use super::directory::{Directory, PartitionId};
use super::log_meta::LogMeta;

/// What one retention pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Trim points advanced by the backlog: `(log, new trim point)`.
    pub trimmed: Vec<(LogId, Lsn)>,
    /// Partitions dropped, oldest first.
    pub dropped: Vec<PartitionId>,
}

/// Plans one pass at `now_ms`. A log with backlog `b` is trimmed, partition by partition from
/// its oldest, through every partition whose records are all older than `now − b` (the trim
/// point is a prefix, so the walk stops at the first partition with a younger record). A
/// partition other than the newest is dropped when every log in it is trimmed past its last
/// LSN there.
pub(crate) fn plan(
    dir: &Directory,
    logs: &HashMap<LogId, LogMeta>,
    backlogs_ms: &BTreeMap<LogId, u64>,
    now_ms: u64,
) -> RetentionReport {
    let mut trims: HashMap<LogId, Lsn> = HashMap::new();
    let mut report = RetentionReport::default();
    for (&log, &backlog) in backlogs_ms {
        let cutoff = now_ms.saturating_sub(backlog);
        let current = logs.get(&log).map(|m| m.trim_point).unwrap_or_default();
        let mut trim = current;
        for (_, e) in dir.entries_of(log) {
            if e.max_timestamp_ms >= cutoff {
                break;
            }
            trim = trim.max(e.last_lsn);
        }
        if trim > current {
            trims.insert(log, trim);
            report.trimmed.push((log, trim));
        }
    }
    let trim_of = |log: &LogId| {
        trims
            .get(log)
            .copied()
            .unwrap_or_else(|| logs.get(log).map(|m| m.trim_point).unwrap_or_default())
    };
    let current = dir.current();
    for &pid in dir.partitions.keys() {
        if pid == current {
            continue;
        }
        let live = dir
            .entries
            .iter()
            .any(|(log, m)| m.get(&pid).is_some_and(|e| e.last_lsn > trim_of(log)));
        if !live {
            report.dropped.push(pid);
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logsdb::directory::PartitionInfo;

    #[test]
    fn drops_only_fully_trimmed_partitions() {
        let mut dir = Directory::default();
        for p in 1..=3 {
            dir.partitions.insert(
                PartitionId(p),
                PartitionInfo {
                    id: PartitionId(p),
                    created_ms: 0,
                    bytes: 0,
                },
            );
        }
        // log 1: p1 [1,10] ts 100..200, p2 [11,20] ts 300..400; log 2: p1 [5,5] ts 150.
        dir.record_write(LogId(1), PartitionId(1), Lsn(1), 100, 1);
        dir.record_write(LogId(1), PartitionId(1), Lsn(10), 200, 1);
        dir.record_write(LogId(1), PartitionId(2), Lsn(11), 300, 1);
        dir.record_write(LogId(1), PartitionId(2), Lsn(20), 400, 1);
        dir.record_write(LogId(2), PartitionId(1), Lsn(5), 150, 1);
        let mut logs = HashMap::new();
        let backlogs: BTreeMap<LogId, u64> = [(LogId(1), 100)].into();
        // now 350: log 1's p1 (max ts 200 < 250) expires, p2 (max 400) does not.
        let r = plan(&dir, &logs, &backlogs, 350);
        assert_eq!(r.trimmed, vec![(LogId(1), Lsn(10))]);
        assert!(r.dropped.is_empty(), "log 2 still lives in p1");
        logs.insert(
            LogId(2),
            LogMeta {
                trim_point: Lsn(5),
                ..LogMeta::default()
            },
        );
        let r = plan(&dir, &logs, &backlogs, 350);
        assert_eq!(r.dropped, vec![PartitionId(1)]);
        // p3 is current and never dropped, even though it is empty.
        let r = plan(&dir, &logs, &backlogs, 10_000);
        assert_eq!(r.dropped, vec![PartitionId(1), PartitionId(2)]);
    }
}
