//! The partition list and the partition directory: per `(log, partition)` the first and last
//! LSN, min/max timestamp and approximate bytes, so reads, `find_time` and `data_size` skip
//! partitions that cannot hold what is asked, and retention knows what each partition holds.
//!
//! Persistence: an entry is written to the `meta` column family when it is created or extended
//! downwards; growth upwards is written lazily by the writer and repaired from the records on
//! open after a crash (see `writer` and `open`).
//!
//! Invariant (kept by [`Directory::target`]): for each log, the LSN ranges of its partitions
//! are disjoint and increase with the partition id. New LSNs above everything go to the newest
//! partition; a write at or below a log's highest LSN goes to the partition whose range
//! region holds it (old partitions stay writable), so all copies of one LSN live in one place.

use std::collections::BTreeMap;
use std::fmt;

use tally_common::{LogId, Lsn};

use super::error::CorruptKind;
use super::keys::be_u64;

/// Identifier of a time partition; increases with creation. Its column family is `p<id>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PartitionId(pub u64);

impl PartitionId {
    pub fn cf_name(self) -> String {
        format!("p{}", self.0)
    }

    pub(crate) fn from_cf_name(name: &str) -> Option<PartitionId> {
        let digits = name.strip_prefix('p')?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(PartitionId)
    }
}

impl fmt::Debug for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// What the directory knows of one log in one partition. Persisted as five big-endian u64:
/// `first_lsn ‖ last_lsn ‖ min_ts ‖ max_ts ‖ bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntry {
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub min_timestamp_ms: u64,
    pub max_timestamp_ms: u64,
    /// Key and value bytes written (approximate: rewrites of an LSN count again).
    pub bytes: u64,
}

impl DirEntry {
    pub(crate) const ENCODED_LEN: usize = 40;

    pub(crate) fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        let fields = [
            self.first_lsn.0,
            self.last_lsn.0,
            self.min_timestamp_ms,
            self.max_timestamp_ms,
            self.bytes,
        ];
        for (i, f) in fields.iter().enumerate() {
            out[i * 8..i * 8 + 8].copy_from_slice(&f.to_be_bytes());
        }
        out
    }

    pub(crate) fn decode(b: &[u8]) -> Result<DirEntry, CorruptKind> {
        let bad = || CorruptKind::Meta("directory entry");
        if b.len() != Self::ENCODED_LEN {
            return Err(bad());
        }
        let f = |i: usize| be_u64(b, i * 8).ok_or_else(bad);
        Ok(DirEntry {
            first_lsn: Lsn(f(0)?),
            last_lsn: Lsn(f(1)?),
            min_timestamp_ms: f(2)?,
            max_timestamp_ms: f(3)?,
            bytes: f(4)?,
        })
    }
}

/// One partition as reported to callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub id: PartitionId,
    pub created_ms: u64,
    /// Bytes written since open plus what the directory recorded before (approximate).
    pub bytes: u64,
}

/// The partition list and the per-log directory, in memory. Each writer thread owns the
/// authoritative entries of its logs (and a copy of the partition list) and publishes changed
/// entries to the readers' copy after each commit.
#[derive(Debug, Clone, Default)]
pub(crate) struct Directory {
    pub partitions: BTreeMap<PartitionId, PartitionInfo>,
    pub entries: BTreeMap<LogId, BTreeMap<PartitionId, DirEntry>>,
}

impl Directory {
    /// The newest partition, where new writes go.
    pub fn current(&self) -> PartitionId {
        self.partitions
            .keys()
            .next_back()
            .copied()
            .unwrap_or_default()
    }

    /// Where a write of `(log, lsn)` goes, and whether an existing copy may already be there
    /// (only then does the merge need to read it).
    pub fn target(&self, log: LogId, lsn: Lsn) -> (PartitionId, bool) {
        let current = self.current();
        let Some(entries) = self.entries.get(&log) else {
            return (current, false);
        };
        match entries.last_key_value() {
            None => return (current, false),
            Some((_, newest)) if lsn > newest.last_lsn => return (current, false),
            Some(_) => {}
        }
        for (pid, e) in entries.iter().rev() {
            if e.first_lsn <= lsn {
                return (*pid, lsn <= e.last_lsn);
            }
        }
        let oldest = entries.keys().next().copied().unwrap_or(current);
        (oldest, false)
    }

    /// Accounts one written record. Returns whether the entry was created or extended
    /// downwards (a lower first LSN or minimum timestamp): such changes cannot be recovered
    /// from the records after a crash, so the writer persists them in the same batch; growth
    /// upwards (last LSN, maximum timestamp, bytes) can be, and is persisted lazily.
    pub fn record_write(
        &mut self,
        log: LogId,
        pid: PartitionId,
        lsn: Lsn,
        ts: u64,
        bytes: u64,
    ) -> bool {
        let mut created = false;
        let entry = self
            .entries
            .entry(log)
            .or_default()
            .entry(pid)
            .or_insert_with(|| {
                created = true;
                DirEntry {
                    first_lsn: lsn,
                    last_lsn: lsn,
                    min_timestamp_ms: ts,
                    max_timestamp_ms: ts,
                    bytes: 0,
                }
            });
        let lowered = lsn < entry.first_lsn || ts < entry.min_timestamp_ms;
        entry.first_lsn = entry.first_lsn.min(lsn);
        entry.last_lsn = entry.last_lsn.max(lsn);
        entry.min_timestamp_ms = entry.min_timestamp_ms.min(ts);
        entry.max_timestamp_ms = entry.max_timestamp_ms.max(ts);
        entry.bytes = entry.bytes.saturating_add(bytes);
        if let Some(p) = self.partitions.get_mut(&pid) {
            p.bytes = p.bytes.saturating_add(bytes);
        }
        created || lowered
    }

    /// The entries of one log in partition (= LSN) order.
    pub fn entries_of(&self, log: LogId) -> Vec<(PartitionId, DirEntry)> {
        self.entries
            .get(&log)
            .map(|m| m.iter().map(|(p, e)| (*p, *e)).collect())
            .unwrap_or_default()
    }

    pub fn entry(&self, log: LogId, pid: PartitionId) -> Option<DirEntry> {
        self.entries.get(&log)?.get(&pid).copied()
    }

    /// Copies one entry from `src` (or removes it if `src` has none).
    pub fn sync_entry(&mut self, src: &Directory, log: LogId, pid: PartitionId) {
        match src.entry(log, pid) {
            Some(e) => {
                self.entries.entry(log).or_default().insert(pid, e);
            }
            None => {
                if let Some(m) = self.entries.get_mut(&log) {
                    m.remove(&pid);
                    if m.is_empty() {
                        self.entries.remove(&log);
                    }
                }
            }
        }
    }

    /// Forgets a partition and every directory entry in it.
    pub fn remove_partition(&mut self, pid: PartitionId) {
        self.partitions.remove(&pid);
        self.entries.retain(|_, m| {
            m.remove(&pid);
            !m.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(parts: &[u64]) -> Directory {
        let mut d = Directory::default();
        for p in parts {
            d.partitions.insert(
                PartitionId(*p),
                PartitionInfo {
                    id: PartitionId(*p),
                    created_ms: 0,
                    bytes: 0,
                },
            );
        }
        d
    }

    #[test]
    fn target_keeps_ranges_disjoint() {
        let mut d = dir(&[1]);
        let log = LogId(1);
        for l in [10, 20] {
            d.record_write(log, PartitionId(1), Lsn(l), l, 1);
        }
        d.partitions.insert(
            PartitionId(2),
            PartitionInfo {
                id: PartitionId(2),
                created_ms: 0,
                bytes: 0,
            },
        );
        assert_eq!(d.target(log, Lsn(30)), (PartitionId(2), false));
        d.record_write(log, PartitionId(2), Lsn(30), 30, 1);
        assert_eq!(d.target(log, Lsn(25)), (PartitionId(1), false));
        assert_eq!(d.target(log, Lsn(20)), (PartitionId(1), true));
        assert_eq!(d.target(log, Lsn(5)), (PartitionId(1), false));
        assert_eq!(d.target(log, Lsn(30)), (PartitionId(2), true));
        assert_eq!(d.target(LogId(2), Lsn(1)), (PartitionId(2), false));
    }

    #[test]
    fn entry_roundtrip_and_cf_names() {
        let e = DirEntry {
            first_lsn: Lsn(1),
            last_lsn: Lsn(9),
            min_timestamp_ms: 3,
            max_timestamp_ms: 4,
            bytes: 5,
        };
        assert_eq!(DirEntry::decode(&e.encode()), Ok(e));
        assert!(DirEntry::decode(&[0; 39]).is_err());
        assert_eq!(
            PartitionId::from_cf_name(&PartitionId(42).cf_name()),
            Some(PartitionId(42))
        );
        assert_eq!(PartitionId::from_cf_name("meta"), None);
        assert_eq!(PartitionId::from_cf_name("p"), None);
    }
}
