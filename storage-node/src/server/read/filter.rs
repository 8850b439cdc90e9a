//! The server-side filter of one read stream, pure: which records a node ships.
//!
//! - **Single-copy delivery** ([`single_copy_order`], [`single_copy_shipper`]): the members of
//!   a record's copyset are ordered by a keyed hash of `(shuffle_seed, lsn, node)`; the record
//!   is shipped by the first member the reader does not consider down. The order depends on
//!   the copyset's members, not on how they are listed, and changes from LSN to LSN, so the
//!   shipping work spreads over the copyset even when a log always uses the same one. Readers
//!   can compute the same order (the function is part of the protocol: never change it).
//!   Decided from the copyset index alone, so payloads of records a node does not ship are
//!   never read.
//! - **Time and payload filters** (`min/max_timestamp_ms`, `payload_regex`, for `tally grep`):
//!   a data record outside the time range or whose payload does not match is skipped. Hole
//!   plugs and bridge records carry no payload and describe gaps: they are not subject to
//!   these two filters (single-copy delivery applies to them like to any record).
//!   `max_timestamp_ms = 0` means no upper bound, so `ReadFilter::default()` ships everything.
//! - Amendments with no full copy yet (`AMEND` alone: no payload here) are never shipped: the
//!   node does not hold that record's payload, so it counts as missing on this node.
//!
//! A skipped record is still *passed*: the next record or gap the stream ships covers it.

use tally_common::wire::ReadFilter;
use tally_common::{Lsn, NodeId, RecordFlags, RecordHeader};

/// Upper bound on the compiled size of a payload regex and on its lazy-DFA cache (the
/// pattern length is bounded by the wire format already; this bounds what a small pattern may
/// expand to, per stream).
const REGEX_SIZE_LIMIT_BYTES: usize = 256 << 10;

/// The splitmix64 finalizer.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The single-copy rank of `node` for the record at `lsn` (lower ships first). Part of the
/// read protocol: never change it.
pub fn single_copy_rank(seed: u64, lsn: Lsn, node: NodeId) -> u64 {
    let key = mix64(mix64(seed ^ 0x7461_6c6c_795f_7363) ^ lsn.0);
    mix64(key ^ u64::from(node.0).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The copyset of the record at `lsn` in single-copy shipping order for `seed`: ascending
/// [`single_copy_rank`], ties (never seen in practice) by node id.
pub fn single_copy_order(copyset: &[NodeId], seed: u64, lsn: Lsn) -> Vec<NodeId> {
    let mut order = copyset.to_vec();
    order.sort_by_key(|n| (single_copy_rank(seed, lsn, *n), n.0));
    order
}

/// The node that ships the record at `lsn` in single-copy delivery: the first member of
/// [`single_copy_order`] not in `known_down`; `None` when every member is down.
pub fn single_copy_shipper(
    copyset: &[NodeId],
    seed: u64,
    lsn: Lsn,
    known_down: &[NodeId],
) -> Option<NodeId> {
    copyset
        .iter()
        .filter(|n| !known_down.contains(n))
        .min_by_key(|n| (single_copy_rank(seed, lsn, **n), n.0))
        .copied()
}

/// A stream's filter, checked and compiled once when the stream opens.
#[derive(Debug)]
pub(crate) struct Filter {
    me: NodeId,
    single_copy: bool,
    seed: u64,
    known_down: Vec<NodeId>,
    min_timestamp_ms: u64,
    max_timestamp_ms: u64,
    regex: Option<regex::bytes::Regex>,
}

impl Filter {
    /// Compiles `spec` for node `me`; the error says why the regex is refused.
    pub(crate) fn new(me: NodeId, spec: &ReadFilter) -> Result<Filter, String> {
        let regex = if spec.payload_regex.is_empty() {
            None
        } else {
            let re = regex::bytes::RegexBuilder::new(&spec.payload_regex)
                .size_limit(REGEX_SIZE_LIMIT_BYTES)
                .dfa_size_limit(REGEX_SIZE_LIMIT_BYTES)
                .build()
                .map_err(|e| format!("bad payload regex: {e}"))?;
            Some(re)
        };
        // `ReadFilter::default()` has `max_timestamp_ms = 0`; no record is that old, so 0
        // means "no upper bound" and the default filter ships everything.
        let max_timestamp_ms = match spec.max_timestamp_ms {
            0 => u64::MAX,
            max => max,
        };
        if spec.min_timestamp_ms > max_timestamp_ms {
            return Err(format!(
                "empty timestamp range {}..={max_timestamp_ms}",
                spec.min_timestamp_ms
            ));
        }
        Ok(Filter {
            me,
            single_copy: spec.single_copy,
            seed: spec.shuffle_seed,
            known_down: spec.known_down.clone(),
            min_timestamp_ms: spec.min_timestamp_ms,
            max_timestamp_ms,
            regex,
        })
    }

    pub(crate) fn single_copy(&self) -> bool {
        self.single_copy
    }

    /// Whether the copyset-index entry alone already rules the record out here: an
    /// amendment without payload, or (single copy) another node ships it.
    pub(crate) fn skips_by_index(&self, lsn: Lsn, flags: RecordFlags, copyset: &[NodeId]) -> bool {
        if flags.contains(RecordFlags::AMEND) {
            return true;
        }
        self.single_copy
            && single_copy_shipper(copyset, self.seed, lsn, &self.known_down) != Some(self.me)
    }

    /// Whether to ship a record read in full (the index rules are applied again, so a caller
    /// that read the record without the index gets the same answer).
    pub(crate) fn ships(&self, header: &RecordHeader, payload: &[u8]) -> bool {
        if self.skips_by_index(header.lsn, header.flags, header.copyset.nodes()) {
            return false;
        }
        if header.flags.contains(RecordFlags::HOLE) || header.flags.contains(RecordFlags::BRIDGE) {
            return true;
        }
        if header.timestamp_ms < self.min_timestamp_ms
            || header.timestamp_ms > self.max_timestamp_ms
        {
            return false;
        }
        self.regex.as_ref().is_none_or(|re| re.is_match(payload))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::{Copyset, Esn, LogId};

    fn nodes(ids: &[u32]) -> Vec<NodeId> {
        ids.iter().copied().map(NodeId).collect()
    }

    #[test]
    fn order_is_a_permutation_independent_of_listing_order() {
        let cs = nodes(&[4, 9, 1, 7]);
        for lsn in 1..200u64 {
            let order = single_copy_order(&cs, 42, Lsn(lsn));
            let mut sorted = order.clone();
            sorted.sort();
            assert_eq!(sorted, nodes(&[1, 4, 7, 9]));
            let mut reversed = cs.clone();
            reversed.reverse();
            assert_eq!(single_copy_order(&reversed, 42, Lsn(lsn)), order);
            assert_eq!(single_copy_shipper(&cs, 42, Lsn(lsn), &[]), Some(order[0]));
            // Down nodes are passed over, in order.
            assert_eq!(
                single_copy_shipper(&cs, 42, Lsn(lsn), &[order[0]]),
                Some(order[1])
            );
            assert_eq!(
                single_copy_shipper(&cs, 42, Lsn(lsn), &[order[1], order[0]]),
                Some(order[2])
            );
        }
        assert_eq!(single_copy_shipper(&cs, 1, Lsn(1), &cs), None);
    }

    #[test]
    fn shipping_spreads_over_the_copyset_and_depends_on_the_seed() {
        let cs = nodes(&[1, 2, 3]);
        let mut counts = [0u32; 4];
        for lsn in 1..=3000u64 {
            let n = single_copy_shipper(&cs, 7, Lsn(lsn), &[]).unwrap();
            counts[n.0 as usize] += 1;
        }
        for (n, count) in counts.iter().enumerate().skip(1) {
            assert!(
                (800..=1200).contains(count),
                "node {n} ships {count} of 3000"
            );
        }
        let differs = (1..=100u64).any(|lsn| {
            single_copy_shipper(&cs, 7, Lsn(lsn), &[]) != single_copy_shipper(&cs, 8, Lsn(lsn), &[])
        });
        assert!(differs, "the seed changes the order");
    }

    #[test]
    fn rank_is_fixed() {
        // Part of the protocol: a change here breaks mixed-version clusters.
        let order = single_copy_order(&nodes(&[1, 2, 3, 4, 5]), 12345, Lsn(0x0000_0005_0000_002a));
        assert_eq!(
            order,
            FIXED_ORDER.iter().copied().map(NodeId).collect::<Vec<_>>()
        );
    }

    /// `single_copy_order([1..=5], 12345, e5n42)`, recorded when the function was written.
    const FIXED_ORDER: [u32; 5] = [1, 4, 2, 3, 5];

    fn header(lsn: u64, ts: u64, flags: RecordFlags, copyset: &[u32]) -> RecordHeader {
        RecordHeader {
            log: LogId(1),
            lsn: Lsn(lsn),
            timestamp_ms: ts,
            lng: Esn(0),
            wave_or_seal: 1,
            flags,
            copyset: Copyset::new(nodes(copyset)).unwrap(),
            payload_crc32: 0,
        }
    }

    #[test]
    fn time_and_regex_filters_skip_data_records_only() {
        let spec = ReadFilter {
            min_timestamp_ms: 100,
            max_timestamp_ms: 200,
            payload_regex: "err(or)?".into(),
            ..ReadFilter::default()
        };
        let f = Filter::new(NodeId(1), &spec).unwrap();
        let plain = RecordFlags::NONE;
        assert!(f.ships(&header(1, 150, plain, &[1, 2]), b"an error"));
        assert!(!f.ships(&header(2, 150, plain, &[1, 2]), b"all good"));
        assert!(!f.ships(&header(3, 99, plain, &[1, 2]), b"err"));
        assert!(!f.ships(&header(4, 201, plain, &[1, 2]), b"err"));
        assert!(f.ships(&header(5, 1, RecordFlags::HOLE, &[1, 2]), b""));
        assert!(f.ships(&header(6, 1, RecordFlags::BRIDGE, &[1, 2]), b""));
        assert!(!f.ships(&header(7, 150, RecordFlags::AMEND, &[1, 2]), b""));
        // Bad patterns and empty ranges are refused with the reason.
        let bad = ReadFilter {
            payload_regex: "(".into(),
            ..ReadFilter::default()
        };
        assert!(Filter::new(NodeId(1), &bad).unwrap_err().contains("regex"));
        let huge = ReadFilter {
            payload_regex: "\\w{1000}\\w{1000}\\w{1000}".into(),
            ..ReadFilter::default()
        };
        assert!(
            Filter::new(NodeId(1), &huge).is_err(),
            "compiled size is bounded"
        );
        let empty = ReadFilter {
            min_timestamp_ms: 5,
            max_timestamp_ms: 4,
            ..ReadFilter::default()
        };
        assert!(Filter::new(NodeId(1), &empty).is_err());
    }

    #[test]
    fn single_copy_filter_ships_what_this_node_is_first_for() {
        let spec = ReadFilter {
            single_copy: true,
            shuffle_seed: 99,
            known_down: nodes(&[3]),
            max_timestamp_ms: u64::MAX,
            ..ReadFilter::default()
        };
        let f = Filter::new(NodeId(2), &spec).unwrap();
        let cs = nodes(&[1, 2, 3]);
        for lsn in 1..100u64 {
            let mine = single_copy_shipper(&cs, 99, Lsn(lsn), &nodes(&[3])) == Some(NodeId(2));
            assert_eq!(!f.skips_by_index(Lsn(lsn), RecordFlags::NONE, &cs), mine);
            assert_eq!(
                f.ships(&header(lsn, 0, RecordFlags::NONE, &[1, 2, 3]), b"x"),
                mine
            );
        }
    }
}
