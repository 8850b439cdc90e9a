//! Key layouts. These are persisted: change them only with a new tag, never reuse a tag.
//!
//! Partition column families (`p<id>`), all integers big-endian so that byte order is
//! `(log, lsn)` order:
//!
//! | tag  | key                          | value                               |
//! |------|------------------------------|-------------------------------------|
//! | 0x64 `d` | `d ‖ log_id u64 ‖ lsn u64` | the record (`value::StoredValue`) |
//! | 0x63 `c` | `c ‖ log_id u64 ‖ lsn u64` | copyset index (`value::CsiValue`) |
//!
//! The one-byte tag keeps the copyset index apart from the data, so a copyset scan never
//! reads a payload block. `meta` column family: see [`MetaTag`].

use tally_common::{Epoch, LogId, Lsn};

use super::directory::PartitionId;

/// Tag of a data key in a partition. Never reuse.
pub(crate) const DATA_TAG: u8 = b'd';
/// Tag of a copyset-index key in a partition. Never reuse.
pub(crate) const CSI_TAG: u8 = b'c';
/// Length of data and copyset-index keys.
pub(crate) const RECORD_KEY_LEN: usize = 17;

/// A data or copyset-index key: `tag ‖ log ‖ lsn`.
pub(crate) fn record_key(tag: u8, log: LogId, lsn: Lsn) -> [u8; RECORD_KEY_LEN] {
    let mut k = [0u8; RECORD_KEY_LEN];
    k[0] = tag;
    k[1..9].copy_from_slice(&log.to_be_bytes());
    k[9..17].copy_from_slice(&lsn.to_be_bytes());
    k
}

/// The exclusive upper bound of the keys of `log` with tag `tag` and LSN ≤ `until`.
pub(crate) fn record_upper_bound(tag: u8, log: LogId, until: Lsn) -> Vec<u8> {
    if until < Lsn::MAX {
        return record_key(tag, log, until.next()).to_vec();
    }
    match log.0.checked_add(1) {
        Some(next) => record_key(tag, LogId(next), Lsn::INVALID).to_vec(),
        None => vec![tag + 1],
    }
}

/// Splits a data or copyset-index key.
pub(crate) fn parse_record_key(key: &[u8]) -> Option<(u8, LogId, Lsn)> {
    if key.len() != RECORD_KEY_LEN {
        return None;
    }
    let log = u64::from_be_bytes(key[1..9].try_into().ok()?);
    let lsn = u64::from_be_bytes(key[9..17].try_into().ok()?);
    Some((key[0], LogId(log), Lsn(lsn)))
}

/// Keys of the `meta` column family: `tag ‖ fields`, big-endian. The tag numbers are
/// persisted: never reuse one, even after its key is retired. Values are fixed-size
/// big-endian integers unless noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum MetaTag {
    /// `[1]` → u32 schema version of this database.
    Schema = 1,
    /// `[2]` → run state: `clean u8 ‖ fast_used u8` (clean-shutdown marker).
    RunState = 2,
    /// `[3] ‖ partition u64` → `created_ms u64`: the partition list.
    Partition = 3,
    /// `[4] ‖ log u64 ‖ partition u64` → directory entry (see `directory::DirEntry`).
    Directory = 4,
    /// `[5] ‖ log u64` → trim point (lsn u64).
    TrimPoint = 5,
    /// `[6] ‖ log u64` → seal epoch (u32).
    Seal = 6,
    /// `[7] ‖ log u64` → soft seal epoch (u32).
    SoftSeal = 7,
    /// `[8] ‖ log u64` → last released LSN (u64).
    LastReleased = 8,
    /// `[9] ‖ log u64` → last clean epoch (u32).
    LastCleanEpoch = 9,
    /// `[10] ‖ log u64 ‖ epoch u32` → LNG of that epoch (esn u32).
    EpochLng = 10,
    /// `[11] ‖ partition u64` → empty: directory entries of this partition may lag behind its
    /// records (the writer persists growth of an entry lazily; see `writer`). Open repairs
    /// the entries of every marked partition from the records, then deletes the marks; a
    /// clean close persists every entry and deletes them.
    DirectoryLag = 11,
}

impl MetaTag {
    pub(crate) fn from_u8(b: u8) -> Option<MetaTag> {
        Some(match b {
            1 => MetaTag::Schema,
            2 => MetaTag::RunState,
            3 => MetaTag::Partition,
            4 => MetaTag::Directory,
            5 => MetaTag::TrimPoint,
            6 => MetaTag::Seal,
            7 => MetaTag::SoftSeal,
            8 => MetaTag::LastReleased,
            9 => MetaTag::LastCleanEpoch,
            10 => MetaTag::EpochLng,
            11 => MetaTag::DirectoryLag,
            _ => return None,
        })
    }
}

pub(crate) fn meta_key(tag: MetaTag) -> Vec<u8> {
    vec![tag as u8]
}

pub(crate) fn partition_key(id: PartitionId) -> Vec<u8> {
    let mut k = vec![MetaTag::Partition as u8];
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

pub(crate) fn directory_key(log: LogId, id: PartitionId) -> Vec<u8> {
    let mut k = vec![MetaTag::Directory as u8];
    k.extend_from_slice(&log.to_be_bytes());
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

pub(crate) fn directory_lag_key(id: PartitionId) -> Vec<u8> {
    let mut k = vec![MetaTag::DirectoryLag as u8];
    k.extend_from_slice(&id.0.to_be_bytes());
    k
}

pub(crate) fn log_key(tag: MetaTag, log: LogId) -> Vec<u8> {
    let mut k = vec![tag as u8];
    k.extend_from_slice(&log.to_be_bytes());
    k
}

pub(crate) fn epoch_lng_key(log: LogId, epoch: Epoch) -> Vec<u8> {
    let mut k = log_key(MetaTag::EpochLng, log);
    k.extend_from_slice(&epoch.0.to_be_bytes());
    k
}

/// Reads a big-endian u64 / u32 at `at`.
pub(crate) fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

pub(crate) fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn record_key_roundtrip_and_order(a: (u64, u64), b: (u64, u64)) {
            let ka = record_key(DATA_TAG, LogId(a.0), Lsn(a.1));
            let kb = record_key(DATA_TAG, LogId(b.0), Lsn(b.1));
            prop_assert_eq!(parse_record_key(&ka), Some((DATA_TAG, LogId(a.0), Lsn(a.1))));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn upper_bound_is_exclusive_and_tight(log: u64, until: u64, lsn: u64) {
            let ub = record_upper_bound(DATA_TAG, LogId(log), Lsn(until));
            let k = record_key(DATA_TAG, LogId(log), Lsn(lsn));
            prop_assert_eq!(k.as_slice() < ub.as_slice(), lsn <= until);
        }
    }

    #[test]
    fn meta_tags_roundtrip() {
        for b in 0..=255u8 {
            if let Some(t) = MetaTag::from_u8(b) {
                assert_eq!(t as u8, b);
            }
        }
    }
}
