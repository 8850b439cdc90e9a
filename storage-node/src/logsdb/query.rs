//! `find_time` and `data_size`, answered from the partition directory plus, for a strict
//! `find_time`, a binary search inside the one partition that straddles the time.
//!
//! `find_time(log, t)` is the LSN after the last record with a timestamp before `t` (so reading
//! from it yields no record older than `t`), never below the first untrimmed LSN. Exactness
//! assumes timestamps do not decrease with LSN within a log, which the sequencer provides.

use rocksdb::ReadOptions;
use tally_common::{LogId, Lsn};

use super::Db;
use super::directory::{DirEntry, PartitionId};
use super::error::LogsDbError;
use super::keys::{self, DATA_TAG};
use super::value;

/// How precise `find_time` must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindTimeAccuracy {
    /// The exact answer (a binary search inside one partition).
    Strict,
    /// From the directory only: never above the strict answer, possibly a whole partition
    /// earlier.
    Approximate,
}

pub(crate) fn find_time(
    db: &Db,
    entries: &[(PartitionId, DirEntry)],
    log: LogId,
    trim: Lsn,
    ts: u64,
    accuracy: FindTimeAccuracy,
) -> Result<Lsn, LogsDbError> {
    let floor = trim.next().max(Lsn::OLDEST);
    let Some(&(pid, e)) = entries.iter().rev().find(|(_, e)| e.min_timestamp_ms < ts) else {
        return Ok(floor);
    };
    if e.max_timestamp_ms < ts {
        return Ok(e.last_lsn.next().max(floor));
    }
    if accuracy == FindTimeAccuracy::Approximate {
        return Ok(e.first_lsn.max(floor));
    }
    let Some(cf) = db.cf_handle(&pid.cf_name()) else {
        return Ok(floor); // dropped meanwhile: it only held trimmed records
    };
    let mut opts = ReadOptions::default();
    opts.set_iterate_lower_bound(keys::record_key(DATA_TAG, log, Lsn::INVALID).to_vec());
    opts.set_iterate_upper_bound(keys::record_upper_bound(DATA_TAG, log, Lsn::MAX));
    let mut it = db.raw_iterator_cf_opt(&cf, opts);
    // The record at or after (`forward`) / at or before `lsn`, with its timestamp.
    let mut probe = |lsn: Lsn, forward: bool| -> Result<Option<(Lsn, u64)>, LogsDbError> {
        let key = keys::record_key(DATA_TAG, log, lsn);
        if forward {
            it.seek(key)
        } else {
            it.seek_for_prev(key)
        }
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            it.status()?;
            return Ok(None);
        };
        let Some((_, _, found)) = keys::parse_record_key(k) else {
            return Err(LogsDbError::Corrupt {
                log,
                lsn,
                kind: super::error::CorruptKind::Key,
            });
        };
        let rec = value::decode(log, found, v).map_err(|kind| LogsDbError::Corrupt {
            log,
            lsn: found,
            kind,
        })?;
        Ok(Some((found, rec.record.header.timestamp_ms)))
    };
    let answer = (|| -> Result<Lsn, LogsDbError> {
        let Some((mut lo, lo_ts)) = probe(e.first_lsn, true)? else {
            return Ok(e.first_lsn);
        };
        if lo_ts >= ts {
            return Ok(lo);
        }
        let Some((mut hi, hi_ts)) = probe(e.last_lsn, false)? else {
            return Ok(lo.next());
        };
        if hi_ts < ts {
            return Ok(hi.next());
        }
        // Invariant: the record at `lo` is older than `ts`, the one at `hi` is not.
        while hi.0 - lo.0 > 1 {
            let mid = Lsn(lo.0 + (hi.0 - lo.0) / 2);
            match probe(mid, true)? {
                Some((r, r_ts)) if r < hi => {
                    if r_ts < ts {
                        lo = r
                    } else {
                        hi = r
                    }
                }
                _ => match probe(mid.prev(), false)? {
                    Some((q, q_ts)) if q > lo => {
                        if q_ts < ts {
                            return Ok(q.next());
                        }
                        hi = q;
                    }
                    _ => return Ok(lo.next()),
                },
            }
        }
        Ok(lo.next())
    })()?;
    Ok(answer.max(floor))
}

/// Estimated bytes of `log` in `from ..= until` (above the trim point): partition sizes from
/// the directory, linearly interpolated over LSNs for partially covered partitions.
pub(crate) fn data_size(
    entries: &[(PartitionId, DirEntry)],
    trim: Lsn,
    from: Lsn,
    until: Lsn,
) -> u64 {
    let from = from.max(trim.next());
    let mut total: u64 = 0;
    for (_, e) in entries {
        let lo = e.first_lsn.max(from);
        let hi = e.last_lsn.min(until);
        if lo > hi {
            continue;
        }
        let span = u128::from(e.last_lsn.0 - e.first_lsn.0) + 1;
        let part = u128::from(hi.0 - lo.0) + 1;
        let share = (u128::from(e.bytes) * part).div_ceil(span);
        total = total.saturating_add(u64::try_from(share).unwrap_or(u64::MAX));
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_size_interpolates() {
        let e = DirEntry {
            first_lsn: Lsn(1),
            last_lsn: Lsn(10),
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
            bytes: 1000,
        };
        let entries = [(PartitionId(1), e)];
        assert_eq!(data_size(&entries, Lsn(0), Lsn(1), Lsn(10)), 1000);
        assert_eq!(data_size(&entries, Lsn(0), Lsn(1), Lsn(5)), 500);
        assert_eq!(data_size(&entries, Lsn(5), Lsn(1), Lsn::MAX), 500);
        assert_eq!(data_size(&entries, Lsn(0), Lsn(11), Lsn::MAX), 0);
    }
}
