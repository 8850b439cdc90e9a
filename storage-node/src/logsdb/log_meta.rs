//! [`LogMeta`]: what a node keeps about one log besides its records — trim point, seal, soft
//! seal, last released LSN, last clean epoch and per-epoch LNGs — and the pure preemption rule
//! that decides whether a store is refused because of a seal (DESIGN §7).

use std::collections::BTreeMap;

use tally_common::{Epoch, Esn, Lsn, RecordFlags, RecordHeader};

/// Per-log metadata. All fields only move forward.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogMeta {
    /// Records at or below this LSN are trimmed.
    pub trim_point: Lsn,
    /// Written by recovery's SEAL (synced): non-recovery stores of epochs ≤ seal are refused.
    pub seal: Epoch,
    /// Raised to `e − 1` by a store in epoch `e`: tells an old sequencer it was replaced.
    pub soft_seal: Epoch,
    pub last_released: Lsn,
    pub last_clean_epoch: Epoch,
    /// Last known good ESN per epoch, the highest seen in stores (or set explicitly).
    pub epoch_lng: BTreeMap<Epoch, Esn>,
}

/// Whether a store of `header` is preempted by the log's seals; `Some(seal)` names the seal
/// that refuses it. A normal store is refused if its epoch is ≤ the seal or the soft seal; a
/// recovery store (`WRITTEN_BY_RECOVERY`) only if its recovery seal epoch is < the seal, so
/// only the most recent sealer may mutate a sealed epoch.
pub fn preemption(meta: &LogMeta, header: &RecordHeader) -> Option<Epoch> {
    if header.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY) {
        (Epoch(header.wave_or_seal) < meta.seal).then_some(meta.seal)
    } else {
        let seal = meta.seal.max(meta.soft_seal);
        (header.lsn.epoch() <= seal).then_some(seal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::{Copyset, LogId, NodeId};

    fn header(epoch: u32, flags: RecordFlags, wave: u32) -> RecordHeader {
        RecordHeader {
            log: LogId(1),
            lsn: Lsn::new(Epoch(epoch), Esn(1)),
            timestamp_ms: 0,
            lng: Esn(0),
            wave_or_seal: wave,
            flags,
            copyset: Copyset::new(vec![NodeId(1)]).unwrap(),
            payload_crc32: 0,
        }
    }

    #[test]
    fn seal_rules() {
        let meta = LogMeta {
            seal: Epoch(5),
            soft_seal: Epoch(6),
            ..LogMeta::default()
        };
        assert_eq!(
            preemption(&meta, &header(5, RecordFlags::NONE, 1)),
            Some(Epoch(6))
        );
        assert_eq!(
            preemption(&meta, &header(6, RecordFlags::NONE, 1)),
            Some(Epoch(6))
        );
        assert_eq!(preemption(&meta, &header(7, RecordFlags::NONE, 1)), None);
        let rec = RecordFlags::WRITTEN_BY_RECOVERY;
        assert_eq!(preemption(&meta, &header(3, rec, 5)), None);
        assert_eq!(preemption(&meta, &header(3, rec, 4)), Some(Epoch(5)));
    }
}
