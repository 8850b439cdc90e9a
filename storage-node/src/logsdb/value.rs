//! The stored record value and the copyset-index value. Both are persisted.
//!
//! **Record value, format version 1** (integers big-endian):
//!
//! | offset | size | field |
//! |--------|------|-------|
//! | 0      | 1    | format version = `1` |
//! | 1      | 4    | crc32 over `log u64 ‖ lsn u64 ‖ value[5..]` |
//! | 5      | 8    | timestamp_ms (of the write that supplied the payload) |
//! | 13     | 4    | lng (ESN) |
//! | 17     | 4    | wave_or_seal (of the highest-precedence write) |
//! | 21     | 4    | flags (`RecordFlags` bits) |
//! | 25     | 4    | payload_crc32 (as computed by the client) |
//! | 29     | 1    | payload origin: bit 0 = has payload, bit 1 = payload written by recovery |
//! | 30     | 4    | wave_or_seal of the write that supplied the payload |
//! | 34     | 1    | copyset length `n` (1..=127) |
//! | 35     | 4·n  | copyset node ids |
//! | 35+4n  | 4    | payload length `m` |
//! | 39+4n  | m    | payload |
//!
//! The checksum covers the key's log and LSN too, so a value found under the wrong key is
//! corrupt as well. Because it covers the payload, reads verify one crc and need not recompute
//! `payload_crc32` (which is verified when the record is stored).
//!
//! **Copyset-index value, format version 1**: `version u8 = 1 ‖ crc32 u32 (over log ‖ lsn ‖
//! value[5..]) ‖ wave_or_seal u32 ‖ flags u32 ‖ n u8 ‖ n × node u32`.
//!
//! Version numbers are never reused: a new layout takes a new version and the decoder keeps
//! reading the old ones.

use tally_common::{Copyset, Esn, LogId, Lsn, NodeId, Precedence, RecordFlags, RecordHeader};

use super::error::CorruptKind;

/// The record-value format version written today.
pub(crate) const VALUE_V1: u8 = 1;
/// The copyset-index format version written today.
pub(crate) const CSI_V1: u8 = 1;
const FIXED_LEN: usize = 39;
const CSI_FIXED_LEN: usize = 14;
const HAS_PAYLOAD: u8 = 1 << 0;
const PAYLOAD_BY_RECOVERY: u8 = 1 << 1;

/// One record as stored and read: header plus payload. For a payload-less amendment with no
/// full copy yet, `header.flags` has `AMEND` and the payload is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub header: RecordHeader,
    pub payload: Vec<u8>,
}

/// A decoded record value, with the precedence of the write that supplied its payload
/// (needed by the merge; not part of the record as shipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredValue {
    pub record: LogRecord,
    /// Whether a full (non-amend) write was seen; if not, only amendments were.
    pub has_payload: bool,
    pub payload_by_recovery: bool,
    pub payload_wave_or_seal: u32,
}

impl StoredValue {
    /// Precedence of the write that supplied the payload, if any did.
    pub(crate) fn payload_precedence(&self) -> Option<Precedence> {
        let flags = if self.payload_by_recovery {
            RecordFlags::WRITTEN_BY_RECOVERY
        } else {
            RecordFlags::NONE
        };
        self.has_payload
            .then(|| Precedence::of(flags, self.payload_wave_or_seal))
    }
}

fn key_hasher(log: LogId, lsn: Lsn) -> crc32fast::Hasher {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&log.to_be_bytes());
    key[8..].copy_from_slice(&lsn.to_be_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&key);
    h
}

fn checksum(log: LogId, lsn: Lsn, rest: &[u8]) -> u32 {
    let mut h = key_hasher(log, lsn);
    h.update(rest);
    h.finalize()
}

/// Encoded size of a record value with `copyset_len` nodes and `payload_len` bytes.
pub(crate) fn encoded_len(copyset_len: usize, payload_len: usize) -> usize {
    FIXED_LEN + 4 * copyset_len + payload_len
}

/// Encodes a record as written by one store (its payload origin is itself, unless it is an
/// amendment, which carries no payload).
#[cfg(test)]
pub(crate) fn encode_new(record: &LogRecord) -> Vec<u8> {
    encode_new_with_crc(record, crc32fast::hash(&record.payload), Vec::new())
}

/// `encode_new` (tests) for a caller that already computed the crc32 of the payload
/// (verifying the client's checksum): the value checksum then extends it instead of reading
/// the payload again (crc32 composes: `crc(a ‖ b)` follows from `crc(a)`, `crc(b)` and
/// `len(b)`). The value is encoded into `out` (whatever it held is discarded; its allocation
/// is reused).
pub(crate) fn encode_new_with_crc(record: &LogRecord, payload_crc: u32, out: Vec<u8>) -> Vec<u8> {
    let h = &record.header;
    let amend = h.flags.contains(RecordFlags::AMEND);
    let by_recovery = h.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY);
    let origin = if amend {
        0
    } else {
        HAS_PAYLOAD | if by_recovery { PAYLOAD_BY_RECOVERY } else { 0 }
    };
    encode_parts(
        h,
        origin,
        if amend { 0 } else { h.wave_or_seal },
        &record.payload,
        Some(payload_crc),
        out,
    )
}

pub(crate) fn encode(v: &StoredValue) -> Vec<u8> {
    let mut origin = 0;
    if v.has_payload {
        origin |= HAS_PAYLOAD;
        if v.payload_by_recovery {
            origin |= PAYLOAD_BY_RECOVERY;
        }
    }
    encode_parts(
        &v.record.header,
        origin,
        v.payload_wave_or_seal,
        &v.record.payload,
        None,
        Vec::new(),
    )
}

fn encode_parts(
    h: &RecordHeader,
    origin: u8,
    payload_wave: u32,
    payload: &[u8],
    payload_crc: Option<u32>,
    mut out: Vec<u8>,
) -> Vec<u8> {
    let nodes = h.copyset.nodes();
    out.clear();
    out.reserve(encoded_len(nodes.len(), payload.len()));
    out.push(VALUE_V1);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&h.timestamp_ms.to_be_bytes());
    out.extend_from_slice(&h.lng.0.to_be_bytes());
    out.extend_from_slice(&h.wave_or_seal.to_be_bytes());
    out.extend_from_slice(&h.flags.0.to_be_bytes());
    out.extend_from_slice(&h.payload_crc32.to_be_bytes());
    out.push(origin);
    out.extend_from_slice(&payload_wave.to_be_bytes());
    out.push(nodes.len() as u8);
    for n in nodes {
        out.extend_from_slice(&n.0.to_be_bytes());
    }
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let crc = match payload_crc {
        Some(payload_crc) => {
            let mut h1 = key_hasher(h.log, h.lsn);
            h1.update(&out[5..]);
            h1.combine(&crc32fast::Hasher::new_with_initial_len(
                payload_crc,
                payload.len() as u64,
            ));
            out.extend_from_slice(payload);
            h1.finalize()
        }
        None => {
            out.extend_from_slice(payload);
            checksum(h.log, h.lsn, &out[5..])
        }
    };
    out[1..5].copy_from_slice(&crc.to_be_bytes());
    out
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn verify(log: LogId, lsn: Lsn, b: &[u8], fixed: usize, version: u8) -> Result<(), CorruptKind> {
    if b.len() < fixed {
        return Err(CorruptKind::Truncated {
            len: b.len(),
            need: fixed,
        });
    }
    if b[0] != version {
        return Err(CorruptKind::UnknownVersion(b[0]));
    }
    let stored = u32_at(b, 1);
    let computed = checksum(log, lsn, &b[5..]);
    if stored != computed {
        return Err(CorruptKind::Checksum { stored, computed });
    }
    Ok(())
}

fn decode_copyset(b: &[u8], at: usize) -> Result<(Copyset, usize), CorruptKind> {
    let n = b[at] as usize;
    let end = at + 1 + 4 * n;
    if b.len() < end {
        return Err(CorruptKind::Truncated {
            len: b.len(),
            need: end,
        });
    }
    let nodes = (0..n).map(|i| NodeId(u32_at(b, at + 1 + 4 * i))).collect();
    Ok((Copyset::new(nodes).map_err(CorruptKind::Copyset)?, end))
}

fn decode_flags(raw: u32) -> Result<RecordFlags, CorruptKind> {
    let flags = RecordFlags(raw);
    if flags.is_known() {
        Ok(flags)
    } else {
        Err(CorruptKind::Flags(raw))
    }
}

/// Decodes and verifies a record value stored under `(log, lsn)`.
pub(crate) fn decode(log: LogId, lsn: Lsn, b: &[u8]) -> Result<StoredValue, CorruptKind> {
    verify(log, lsn, b, FIXED_LEN, VALUE_V1)?;
    let timestamp_ms = u64::from_be_bytes(b[5..13].try_into().expect("8 bytes"));
    let lng = Esn(u32_at(b, 13));
    let wave_or_seal = u32_at(b, 17);
    let flags = decode_flags(u32_at(b, 21))?;
    let payload_crc32 = u32_at(b, 25);
    let origin = b[29];
    let payload_wave_or_seal = u32_at(b, 30);
    let (copyset, at) = decode_copyset(b, 34)?;
    if b.len() < at + 4 {
        return Err(CorruptKind::Truncated {
            len: b.len(),
            need: at + 4,
        });
    }
    let declared = u32_at(b, at) as usize;
    let payload = &b[at + 4..];
    if declared != payload.len() {
        return Err(CorruptKind::PayloadLength {
            declared,
            actual: payload.len(),
        });
    }
    Ok(StoredValue {
        record: LogRecord {
            header: RecordHeader {
                log,
                lsn,
                timestamp_ms,
                lng,
                wave_or_seal,
                flags,
                copyset,
                payload_crc32,
            },
            payload: payload.to_vec(),
        },
        has_payload: origin & HAS_PAYLOAD != 0,
        payload_by_recovery: origin & PAYLOAD_BY_RECOVERY != 0,
        payload_wave_or_seal,
    })
}

/// Encoded size of a copyset-index value with `copyset_len` nodes.
pub(crate) fn csi_encoded_len(copyset_len: usize) -> usize {
    CSI_FIXED_LEN + 4 * copyset_len
}

/// Encodes the copyset-index entry of a record (its merged metadata).
pub(crate) fn encode_csi(h: &RecordHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(csi_encoded_len(h.copyset.nodes().len()));
    encode_csi_into(h, &mut out);
    out
}

/// [`encode_csi`] into `out` (cleared first): the writer threads encode every index entry of
/// a group commit into one reused buffer, so an index entry costs no allocation of its own.
pub(crate) fn encode_csi_into(h: &RecordHeader, out: &mut Vec<u8>) {
    let nodes = h.copyset.nodes();
    out.clear();
    out.push(CSI_V1);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&h.wave_or_seal.to_be_bytes());
    out.extend_from_slice(&h.flags.0.to_be_bytes());
    out.push(nodes.len() as u8);
    for n in nodes {
        out.extend_from_slice(&n.0.to_be_bytes());
    }
    let crc = checksum(h.log, h.lsn, &out[5..]);
    out[1..5].copy_from_slice(&crc.to_be_bytes());
}

/// Decodes a copyset-index value: `(wave_or_seal, flags, copyset)`.
pub(crate) fn decode_csi(
    log: LogId,
    lsn: Lsn,
    b: &[u8],
) -> Result<(u32, RecordFlags, Copyset), CorruptKind> {
    verify(log, lsn, b, CSI_FIXED_LEN, CSI_V1)?;
    let wave = u32_at(b, 5);
    let flags = decode_flags(u32_at(b, 9))?;
    let (copyset, end) = decode_copyset(b, 13)?;
    if end != b.len() {
        return Err(CorruptKind::PayloadLength {
            declared: end,
            actual: b.len(),
        });
    }
    Ok((wave, flags, copyset))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use tally_common::payload_crc32;

    pub(crate) fn record(
        log: u64,
        lsn: u64,
        flags: RecordFlags,
        wave: u32,
        payload: &[u8],
    ) -> LogRecord {
        LogRecord {
            header: RecordHeader {
                log: LogId(log),
                lsn: Lsn(lsn),
                timestamp_ms: 1_700_000_000_000 + lsn,
                lng: Esn(3),
                wave_or_seal: wave,
                flags,
                copyset: Copyset::new(vec![NodeId(1), NodeId(7), NodeId(3)]).unwrap(),
                payload_crc32: payload_crc32(payload),
            },
            payload: payload.to_vec(),
        }
    }

    proptest! {
        #[test]
        fn value_roundtrip(log: u64, lsn: u64, wave: u32, flags in 0u32..64, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let flags = RecordFlags(flags).without(RecordFlags::AMEND);
            let r = record(log, lsn, flags, wave, &payload);
            let v = decode(LogId(log), Lsn(lsn), &encode_new(&r)).unwrap();
            prop_assert_eq!(&v.record, &r);
            prop_assert_eq!(v.payload_precedence(), Some(r.header.precedence()));
            prop_assert_eq!(encode(&v), encode_new(&r));
            prop_assert_eq!(encode_new_with_crc(&r, crc32fast::hash(&payload), Vec::new()), encode_new(&r));
            // Encoding into a reused buffer gives the same bytes, whatever it held before.
            let reused = encode_new_with_crc(&r, crc32fast::hash(&payload), vec![0xAB; 77]);
            prop_assert_eq!(reused, encode_new(&r));
            let csi = encode_csi(&r.header);
            prop_assert_eq!(csi.len(), csi_encoded_len(r.header.copyset.nodes().len()));
            let (w, f, c) = decode_csi(LogId(log), Lsn(lsn), &csi).unwrap();
            prop_assert_eq!((w, f, &c), (wave, flags, &r.header.copyset));
            // Encoding into a reused buffer gives the same bytes, whatever it held before.
            let mut reused = payload.clone();
            encode_csi_into(&r.header, &mut reused);
            prop_assert_eq!(&reused, &csi);
        }

        #[test]
        fn decoders_survive_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode(LogId(1), Lsn(1), &bytes);
            let _ = decode_csi(LogId(1), Lsn(1), &bytes);
        }
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let r = record(9, 77, RecordFlags::NONE, 2, b"some payload bytes");
        let good = encode_new(&r);
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    decode(LogId(9), Lsn(77), &bad).is_err(),
                    "flip of byte {i} bit {bit} undetected"
                );
            }
        }
        // Under another key, the same bytes are corrupt too.
        assert!(decode(LogId(9), Lsn(78), &good).is_err());
        let csi = encode_csi(&r.header);
        for i in 0..csi.len() {
            let mut bad = csi.clone();
            bad[i] ^= 0x40;
            assert!(decode_csi(LogId(9), Lsn(77), &bad).is_err());
        }
    }

    #[test]
    fn amend_has_no_payload_origin() {
        let r = record(1, 5, RecordFlags::AMEND, 3, b"");
        let v = decode(LogId(1), Lsn(5), &encode_new(&r)).unwrap();
        assert_eq!(v.payload_precedence(), None);
    }
}
