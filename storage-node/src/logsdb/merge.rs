//! The precedence merge of several writes to one LSN (DESIGN §7): written by recovery beats
//! not; then the higher recovery seal epoch / wave; then the later write.
//!
//! A stored copy has two parts that are merged separately, so that payload-less amendments
//! (new copyset, next wave) never erase a payload:
//! - the *metadata* (lng, wave_or_seal, flags, copyset) comes from the highest-precedence
//!   write of any kind;
//! - the *payload* (with its timestamp and payload checksum) comes from the highest-precedence
//!   full write (not `AMEND`).
//!
//! With distinct precedences the result does not depend on arrival order; among equal
//! precedences the later write wins. The writer thread owning the log applies it
//! read-modify-write; it serializes every write to its logs, so there is no race.

use tally_common::RecordFlags;

use super::value::StoredValue;

/// Merges `incoming` (one write, as encoded by `value::encode_new`) into `existing`.
pub(crate) fn merge(existing: Option<StoredValue>, incoming: StoredValue) -> StoredValue {
    let Some(existing) = existing else {
        return incoming;
    };
    let meta_from_incoming = incoming
        .record
        .header
        .precedence()
        .replaces(existing.record.header.precedence());
    let payload_from_incoming = match (incoming.payload_precedence(), existing.payload_precedence())
    {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(new), Some(old)) => new.replaces(old),
    };
    let (meta, payload) = match (meta_from_incoming, payload_from_incoming) {
        (true, true) => (&incoming, &incoming),
        (true, false) => (&incoming, &existing),
        (false, true) => (&existing, &incoming),
        (false, false) => (&existing, &existing),
    };
    let m = &meta.record.header;
    let p = &payload.record.header;
    let mut flags = m.flags.without(RecordFlags::AMEND);
    if !payload.has_payload {
        flags = flags.union(RecordFlags::AMEND);
    }
    let mut out = payload.clone();
    out.record.header.lng = m.lng;
    out.record.header.wave_or_seal = m.wave_or_seal;
    out.record.header.flags = flags;
    out.record.header.copyset = m.copyset.clone();
    out.record.header.timestamp_ms = p.timestamp_ms;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logsdb::value::{decode, encode_new, tests::record};
    use proptest::prelude::*;
    use tally_common::{LogId, Lsn};

    fn write(flags: RecordFlags, wave: u32, payload: &[u8]) -> StoredValue {
        let r = record(1, 10, flags, wave, payload);
        decode(LogId(1), Lsn(10), &encode_new(&r)).unwrap()
    }

    #[test]
    fn amend_keeps_payload_and_takes_metadata() {
        let full = write(RecordFlags::NONE, 1, b"data");
        let mut amend = write(RecordFlags::AMEND, 2, b"");
        amend.record.header.copyset =
            tally_common::Copyset::new(vec![tally_common::NodeId(9)]).unwrap();
        for merged in [
            merge(Some(full.clone()), amend.clone()),
            merge(Some(amend.clone()), full.clone()),
        ] {
            assert_eq!(merged.record.payload, b"data");
            assert_eq!(merged.record.header.wave_or_seal, 2);
            assert_eq!(
                merged.record.header.copyset.nodes(),
                &[tally_common::NodeId(9)]
            );
            assert!(!merged.record.header.flags.contains(RecordFlags::AMEND));
        }
    }

    #[test]
    fn recovery_beats_higher_wave() {
        let normal = write(RecordFlags::NONE, 50, b"normal");
        let plug = write(RecordFlags::WRITTEN_BY_RECOVERY | RecordFlags::HOLE, 3, b"");
        for merged in [
            merge(Some(normal.clone()), plug.clone()),
            merge(Some(plug.clone()), normal.clone()),
        ] {
            assert!(merged.record.header.flags.contains(RecordFlags::HOLE));
            assert!(merged.record.payload.is_empty());
        }
    }

    proptest! {
        /// With distinct precedences, every arrival order gives the same copy.
        #[test]
        fn order_insensitive(writes in proptest::collection::vec((any::<bool>(), 0u32..6, any::<bool>()), 1..6), seed: u64) {
            let mut seen = std::collections::HashSet::new();
            let writes: Vec<StoredValue> = writes
                .into_iter()
                .filter(|(rec, wave, amend)| seen.insert((*rec, *wave, *amend)))
                .map(|(rec, wave, amend)| {
                    let mut f = if rec { RecordFlags::WRITTEN_BY_RECOVERY } else { RecordFlags::NONE };
                    if amend { f = f | RecordFlags::AMEND; }
                    let payload = if amend { Vec::new() } else { format!("p{rec}{wave}").into_bytes() };
                    write(f, wave, &payload)
                })
                .collect();
            // Precedences of full writes distinct, and of all writes distinct per kind: only
            // keep one write per (recovery, wave) to avoid ties.
            let mut uniq = std::collections::HashSet::new();
            let writes: Vec<StoredValue> = writes.into_iter().filter(|w| uniq.insert(w.record.header.precedence())).collect();
            let fold = |ws: &[StoredValue]| ws.iter().cloned().fold(None, |acc, w| Some(merge(acc, w))).unwrap();
            let forward = fold(&writes);
            let mut shuffled = writes.clone();
            let n = shuffled.len();
            for i in 0..n {
                let j = (seed.wrapping_mul(6364136223846793005).wrapping_add(i as u64) % n as u64) as usize;
                shuffled.swap(i, j);
            }
            prop_assert_eq!(fold(&shuffled), forward);
        }
    }
}
