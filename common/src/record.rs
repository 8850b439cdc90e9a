//! Records as stored and shipped: flags, header, copyset, payload checksum, and the precedence
//! rule that decides between several writes to one LSN (DESIGN §3, §7).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, Esn, LogId, Lsn, NodeId};

/// Record flags. Bit values are persisted on disk and sent on the wire: never reuse a bit.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq, Hash), compare(PartialEq))]
#[serde(transparent)]
pub struct RecordFlags(pub u32);

impl RecordFlags {
    pub const NONE: RecordFlags = RecordFlags(0);
    /// A hole plug written by recovery: no record was ever completed at this LSN.
    pub const HOLE: RecordFlags = RecordFlags(1 << 0);
    /// The bridge record written by recovery after the last ESN of an epoch.
    pub const BRIDGE: RecordFlags = RecordFlags(1 << 1);
    /// Written by recovery; `wave_or_seal` holds the recovery's seal epoch.
    pub const WRITTEN_BY_RECOVERY: RecordFlags = RecordFlags(1 << 2);
    /// A payload-less amendment of an existing copy (new copyset / wave).
    pub const AMEND: RecordFlags = RecordFlags(1 << 3);
    /// The writer asked for a synced (fsynced) store before the ack.
    pub const DURABLE: RecordFlags = RecordFlags(1 << 4);
    /// Written by rebuilding (re-replication after a node loss).
    pub const WRITTEN_BY_REBUILDING: RecordFlags = RecordFlags(1 << 5);
    /// Every bit defined above; anything else is rejected when decoding.
    pub const ALL: RecordFlags = RecordFlags((1 << 6) - 1);

    pub const fn contains(self, other: RecordFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: RecordFlags) -> RecordFlags {
        RecordFlags(self.0 | other.0)
    }

    pub const fn without(self, other: RecordFlags) -> RecordFlags {
        RecordFlags(self.0 & !other.0)
    }

    /// Whether only known bits are set.
    pub const fn is_known(self) -> bool {
        self.0 & !Self::ALL.0 == 0
    }

    /// Pseudo-records carry no user data (hole plugs, bridges, amends).
    pub const fn is_pseudo(self) -> bool {
        self.0 & (Self::HOLE.0 | Self::BRIDGE.0 | Self::AMEND.0) != 0
    }
}

impl std::ops::BitOr for RecordFlags {
    type Output = RecordFlags;
    fn bitor(self, rhs: RecordFlags) -> RecordFlags {
        self.union(rhs)
    }
}

impl fmt::Debug for RecordFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(RecordFlags, &str); 6] = [
            (RecordFlags::HOLE, "HOLE"),
            (RecordFlags::BRIDGE, "BRIDGE"),
            (RecordFlags::WRITTEN_BY_RECOVERY, "WRITTEN_BY_RECOVERY"),
            (RecordFlags::AMEND, "AMEND"),
            (RecordFlags::DURABLE, "DURABLE"),
            (RecordFlags::WRITTEN_BY_REBUILDING, "WRITTEN_BY_REBUILDING"),
        ];
        let mut first = true;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        let unknown = self.0 & !Self::ALL.0;
        if unknown != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{unknown:#x}")?;
            first = false;
        }
        if first {
            f.write_str("NONE")?;
        }
        Ok(())
    }
}

/// The nodes that hold copies of one record. Bounded by [`Copyset::MAX`]; no duplicates.
#[derive(
    Clone,
    PartialEq,
    Eq,
    Hash,
    Default,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct Copyset(Vec<NodeId>);

/// Why a copyset was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopysetError {
    #[error("copyset of {len} nodes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("copyset names {0} twice")]
    Duplicate(NodeId),
    #[error("copyset is empty")]
    Empty,
}

impl Copyset {
    /// Copysets and node sets are capped at 127 entries (recovery may use a whole node set).
    pub const MAX: usize = 127;

    pub fn new(nodes: Vec<NodeId>) -> Result<Copyset, CopysetError> {
        Self::check(&nodes)?;
        Ok(Copyset(nodes))
    }

    fn check(nodes: &[NodeId]) -> Result<(), CopysetError> {
        if nodes.is_empty() {
            return Err(CopysetError::Empty);
        }
        if nodes.len() > Self::MAX {
            return Err(CopysetError::TooLarge {
                len: nodes.len(),
                max: Self::MAX,
            });
        }
        for (i, n) in nodes.iter().enumerate() {
            if nodes[..i].contains(n) {
                return Err(CopysetError::Duplicate(*n));
            }
        }
        Ok(())
    }

    /// Checks the bounds of a copyset received from the wire or disk.
    pub fn validate(&self) -> Result<(), CopysetError> {
        Self::check(&self.0)
    }

    pub fn nodes(&self) -> &[NodeId] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, node: NodeId) -> bool {
        self.0.contains(&node)
    }
}

impl ArchivedCopyset {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Copyset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.iter()).finish()
    }
}

/// The metadata of one record copy (everything but the payload).
#[derive(
    Clone,
    PartialEq,
    Eq,
    Debug,
    Serialize,
    Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct RecordHeader {
    pub log: LogId,
    pub lsn: Lsn,
    /// Assigned by the sequencer, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Last known good ESN of the record's epoch when the copy was first sent.
    pub lng: Esn,
    /// The wave number, or the seal epoch of the recovery that wrote it when
    /// `WRITTEN_BY_RECOVERY` is set.
    pub wave_or_seal: u32,
    pub flags: RecordFlags,
    pub copyset: Copyset,
    /// crc32 (crc32fast) of the payload, computed by the writing client.
    pub payload_crc32: u32,
}

impl RecordHeader {
    /// The key under which several writes to one LSN are ordered (DESIGN §7).
    pub fn precedence(&self) -> Precedence {
        Precedence::of(self.flags, self.wave_or_seal)
    }
}

/// Precedence of one write to an LSN: written by recovery beats not; then a higher recovery
/// seal epoch (recovery) or a higher wave (normal writes). Equal precedence: the later write
/// wins, which only the writer of the store can decide (it sees arrival order).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
pub struct Precedence {
    by_recovery: bool,
    wave_or_seal: u32,
}

impl Precedence {
    pub fn of(flags: RecordFlags, wave_or_seal: u32) -> Precedence {
        Precedence {
            by_recovery: flags.contains(RecordFlags::WRITTEN_BY_RECOVERY),
            wave_or_seal,
        }
    }

    /// Whether a write of precedence `self` arriving after one of `existing` replaces it.
    pub fn replaces(self, existing: Precedence) -> bool {
        self >= existing
    }
}

/// The seal epoch of a recovery write, when the flags say it was one.
pub fn recovery_seal_epoch(header: &RecordHeader) -> Option<Epoch> {
    header
        .flags
        .contains(RecordFlags::WRITTEN_BY_RECOVERY)
        .then_some(Epoch(header.wave_or_seal))
}

/// A payload checksum did not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload checksum mismatch: expected {expected:#010x}, computed {actual:#010x}")]
pub struct ChecksumMismatch {
    pub expected: u32,
    pub actual: u32,
}

/// The crc32 of a payload as every part of Tally computes it.
pub fn payload_crc32(payload: &[u8]) -> u32 {
    crc32fast::hash(payload)
}

/// Verifies a payload against its expected checksum.
pub fn verify_payload(expected: u32, payload: &[u8]) -> Result<(), ChecksumMismatch> {
    let actual = payload_crc32(payload);
    if actual == expected {
        Ok(())
    } else {
        Err(ChecksumMismatch { expected, actual })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_detects_flip() {
        let mut data = b"hello tally".to_vec();
        let crc = payload_crc32(&data);
        assert!(verify_payload(crc, &data).is_ok());
        data[3] ^= 0x10;
        let err = verify_payload(crc, &data).unwrap_err();
        assert_eq!(err.expected, crc);
        assert_ne!(err.actual, crc);
    }

    #[test]
    fn copyset_bounds() {
        assert_eq!(Copyset::new(vec![]), Err(CopysetError::Empty));
        assert_eq!(
            Copyset::new(vec![NodeId(1), NodeId(2), NodeId(1)]),
            Err(CopysetError::Duplicate(NodeId(1)))
        );
        let big: Vec<NodeId> = (0..128).map(NodeId).collect();
        assert!(matches!(
            Copyset::new(big),
            Err(CopysetError::TooLarge { len: 128, .. })
        ));
        assert_eq!(
            Copyset::new((0..127).map(NodeId).collect()).unwrap().len(),
            127
        );
    }

    #[test]
    fn precedence_order() {
        let normal = |wave| Precedence::of(RecordFlags::NONE, wave);
        let recov = |seal| Precedence::of(RecordFlags::WRITTEN_BY_RECOVERY, seal);
        assert!(recov(1) > normal(100));
        assert!(recov(3) > recov(2));
        assert!(normal(2) > normal(1));
        // Equal precedence: the later write wins.
        assert!(normal(2).replaces(normal(2)));
        assert!(!normal(1).replaces(normal(2)));
        assert!(!normal(9).replaces(recov(1)));
    }

    #[test]
    fn flags_debug_and_known() {
        let f = RecordFlags::HOLE | RecordFlags::WRITTEN_BY_RECOVERY;
        assert_eq!(format!("{f:?}"), "HOLE|WRITTEN_BY_RECOVERY");
        assert!(f.is_known());
        assert!(!RecordFlags(1 << 20).is_known());
        assert!(f.is_pseudo());
        assert!(!RecordFlags::DURABLE.is_pseudo());
    }
}
