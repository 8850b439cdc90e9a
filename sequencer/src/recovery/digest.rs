//! The digest of one epoch: every copy the sealed nodes reported past the LNG, merged per ESN
//! by precedence (DESIGN §7), and the pure [`RecoveryPlan`] recovery makes from it (DESIGN §9
//! step 4).
//!
//! Each node's copy at an ESN is one of: a record whose payload matches its checksum, a hole
//! plug or a bridge written by an earlier recovery, or *evidence* — proof that a record was
//! written without a usable copy of it (a payload-less `AMEND`, or a payload that fails its
//! checksum). Evidence never wins over content, but it forbids a hole plug: plugging there could
//! turn an acknowledged record into a false `Hole` where readers must see `DataLoss`.
//!
//! A bridge at ESN b of precedence P also stands for a hole of precedence P at every ESN after
//! b: an earlier recovery decided the epoch ends there, and may even have committed that
//! decision (its LCE write can race ours), so only a write of higher precedence may overrule it.

use std::collections::BTreeMap;

use tally_common::wire::ReadRecord;
use tally_common::{Epoch, Esn, Lsn, NodeId, Precedence, RecordFlags, verify_payload};

/// One node's copy at one ESN, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeCopy {
    Record(ReadRecord),
    Hole(Precedence),
    Bridge(Precedence),
    Evidence,
}

impl NodeCopy {
    fn classify(record: ReadRecord) -> NodeCopy {
        let h = &record.header;
        let precedence = h.precedence();
        if h.flags.contains(RecordFlags::AMEND) {
            NodeCopy::Evidence
        } else if h.flags.contains(RecordFlags::BRIDGE) {
            NodeCopy::Bridge(precedence)
        } else if h.flags.contains(RecordFlags::HOLE) {
            NodeCopy::Hole(precedence)
        } else if verify_payload(h.payload_crc32, &record.payload).is_ok() {
            NodeCopy::Record(record)
        } else {
            // DESIGN §3: a copy that fails verification is missing from that node; that a
            // record was written there is still known.
            NodeCopy::Evidence
        }
    }
}

/// The copies of one epoch reported by digest streams, per ESN and node.
#[derive(Debug, Clone)]
pub struct Digest {
    epoch: Epoch,
    copies: BTreeMap<Esn, BTreeMap<NodeId, NodeCopy>>,
    /// Highest `lng` seen in any copy's header: everything up to it was completed when that
    /// copy was written, so it is fully replicated.
    max_header_lng: Esn,
}

/// Whether absence in the digest proves anything (the quorum checker's answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// An authoritative f-majority answered: an ESN nobody has was never acknowledged.
    Authoritative,
    /// Too few nodes could answer. `known_tail` is the highest ESN of the epoch any sealed
    /// node said it holds.
    NonAuthoritative { known_tail: Esn },
}

/// What recovery does at one ESN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Write this, the highest-precedence copy, to a full copyset.
    Rereplicate(ReadRecord),
    /// Write a hole plug. `existing`: an earlier recovery's plug or bridge wins here (this only
    /// re-replicates its decision); otherwise the digest is authoritative and no node had
    /// anything.
    Plug { existing: bool },
    /// Write nothing: a record was written here but no usable copy answered, so readers must
    /// report `DataLoss`. (ESNs a non-authoritative digest knows nothing about are not listed.)
    Leave,
}

/// One ESN of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    pub esn: Esn,
    pub decision: Decision,
    /// Nodes that reported any copy here (written to again, so conflicting copies are
    /// overwritten and matching ones carry recovery's precedence).
    pub holders: Vec<NodeId>,
    /// For plugs: the timestamp of the nearest record before it (keeps time order for
    /// `find_time`).
    pub timestamp_ms: u64,
}

/// Everything recovery will write for one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryPlan {
    pub epoch: Epoch,
    /// Every ESN up to here is known fully replicated and left alone.
    pub lng: Esn,
    pub authoritative: bool,
    /// The ESNs past `lng` and before the bridge that recovery knows something about, in
    /// order. ESNs not listed are left alone (only possible when not authoritative).
    pub entries: Vec<PlanEntry>,
    /// Where the bridge record goes (`None` only when the epoch's last ESN is used).
    pub bridge: Option<Esn>,
    /// Nodes that reported any copy at the bridge's ESN.
    pub bridge_holders: Vec<NodeId>,
    /// Timestamp for the bridge record.
    pub bridge_timestamp_ms: u64,
    /// The epoch's last LSN after recovery: the bridge (or the last ESN).
    pub tail: Lsn,
}

/// The per-ESN outcome of the precedence merge.
#[derive(Debug, Clone)]
enum Winner<'a> {
    Record(&'a ReadRecord),
    Hole,
    Bridge,
    Evidence,
}

impl Digest {
    pub fn new(epoch: Epoch) -> Digest {
        Digest {
            epoch,
            copies: BTreeMap::new(),
            max_header_lng: Esn::INVALID,
        }
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Adds a copy reported by `node`. Copies of other epochs are ignored. A node reporting the
    /// same ESN again (a restarted stream) replaces its earlier copy: it is its newer state.
    pub fn add(&mut self, node: NodeId, record: ReadRecord) {
        let (epoch, esn) = record.header.lsn.split();
        if epoch != self.epoch || esn == Esn::INVALID {
            return;
        }
        self.max_header_lng = self.max_header_lng.max(record.header.lng);
        self.copies
            .entry(esn)
            .or_default()
            .insert(node, NodeCopy::classify(record));
    }

    /// Nodes that reported any copy at `esn`.
    pub fn holders(&self, esn: Esn) -> Vec<NodeId> {
        self.copies
            .get(&esn)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The highest-precedence usable copy among `copies` and an implied hole of precedence
    /// `implied` (from an earlier bridge). Ties go to a record: keeping data is never wrong.
    fn winner<'a>(
        copies: &'a BTreeMap<NodeId, NodeCopy>,
        implied: Option<Precedence>,
    ) -> Option<Winner<'a>> {
        // (precedence, rank) orders candidates; rank breaks ties record > bridge > hole.
        let mut best: Option<((Precedence, u8), Winner<'a>)> =
            implied.map(|p| ((p, 0), Winner::Hole));
        let mut evidence = false;
        for copy in copies.values() {
            let candidate = match copy {
                NodeCopy::Record(r) => ((r.header.precedence(), 2), Winner::Record(r)),
                NodeCopy::Bridge(p) => ((*p, 1), Winner::Bridge),
                NodeCopy::Hole(p) => ((*p, 0), Winner::Hole),
                NodeCopy::Evidence => {
                    evidence = true;
                    continue;
                }
            };
            if best.as_ref().is_none_or(|(key, _)| candidate.0 > *key) {
                best = Some(candidate);
            }
        }
        best.map(|(_, w)| w)
            .or(evidence.then_some(Winner::Evidence))
    }

    /// Decides every ESN past `lng` (the highest LNG the sealed nodes reported).
    pub fn plan(&self, lng: Esn, authority: Authority) -> RecoveryPlan {
        let lng = lng.max(self.max_header_lng);
        let authoritative = authority == Authority::Authoritative;

        // Pass 1: the winner per ESN in the digest, with bridges implying holes after them.
        let mut implied: Option<Precedence> = None;
        let mut winners: Vec<(Esn, Winner<'_>)> = Vec::new();
        for (&esn, copies) in self.copies.range(Esn(lng.0.saturating_add(1))..) {
            let Some(w) = Self::winner(copies, implied) else {
                continue;
            };
            // Every bridge copy speaks for the ESNs after it, winning here or not.
            for copy in copies.values() {
                if let NodeCopy::Bridge(p) = copy {
                    implied = Some(implied.map_or(*p, |q| q.max(*p)));
                }
            }
            winners.push((esn, w));
        }

        // Where the epoch ends: after the last ESN that holds (or held) a record.
        let last_written = winners
            .iter()
            .filter(|(_, w)| matches!(w, Winner::Record(_) | Winner::Evidence))
            .map(|(esn, _)| *esn)
            .max()
            .unwrap_or(Esn::INVALID)
            .max(lng);
        let end = match authority {
            Authority::Authoritative => last_written,
            Authority::NonAuthoritative { known_tail } => {
                // An earlier recovery's bridge past our last record is a decision that may be
                // committed; keep it. Otherwise end after anything any node said it holds, so
                // unseen records are reported as DataLoss rather than hidden behind a bridge.
                let old_bridge = winners
                    .iter()
                    .find(|(esn, w)| *esn > last_written && matches!(w, Winner::Bridge));
                match old_bridge {
                    Some((esn, _)) => Esn(esn.0 - 1),
                    None => last_written.max(known_tail),
                }
            }
        };
        let bridge = end.next();

        // Pass 2: decisions for (lng, end].
        let mut entries = Vec::new();
        let mut timestamp_ms = 0;
        let mut known = winners.iter().filter(|(esn, _)| *esn <= end).peekable();
        let mut esn = lng.0;
        while esn < end.0 {
            esn += 1;
            let here = Esn(esn);
            let decision = match known.peek() {
                Some((e, w)) if *e == here => {
                    let d = match w {
                        Winner::Record(r) => {
                            timestamp_ms = r.header.timestamp_ms;
                            Decision::Rereplicate((*r).clone())
                        }
                        Winner::Hole | Winner::Bridge => Decision::Plug { existing: true },
                        Winner::Evidence => Decision::Leave,
                    };
                    known.next();
                    d
                }
                _ if authoritative => Decision::Plug { existing: false },
                _ => {
                    // Not authoritative and nothing known: skip straight to the next ESN that
                    // has something (the gap may be large), leaving these for readers.
                    if let Some((next, _)) = known.peek() {
                        esn = next.0 - 1;
                    } else {
                        esn = end.0;
                    }
                    continue;
                }
            };
            entries.push(PlanEntry {
                esn: here,
                decision,
                holders: self.holders(here),
                timestamp_ms,
            });
        }

        let tail = Lsn::new(self.epoch, bridge.unwrap_or(Esn::MAX));
        RecoveryPlan {
            epoch: self.epoch,
            lng,
            authoritative,
            entries,
            bridge,
            bridge_holders: bridge.map(|b| self.holders(b)).unwrap_or_default(),
            bridge_timestamp_ms: timestamp_ms,
            tail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::{Copyset, LogId, RecordHeader, payload_crc32};

    const E: Epoch = Epoch(3);

    fn copy(esn: u32, flags: RecordFlags, wave: u32, payload: &[u8]) -> ReadRecord {
        ReadRecord {
            header: RecordHeader {
                log: LogId(1),
                lsn: Lsn::new(E, Esn(esn)),
                timestamp_ms: 1000 + esn as u64,
                lng: Esn(0),
                wave_or_seal: wave,
                flags,
                copyset: Copyset::new(vec![NodeId(1)]).unwrap(),
                payload_crc32: payload_crc32(payload),
            },
            payload: payload.to_vec(),
        }
    }

    fn normal(esn: u32, wave: u32, payload: &[u8]) -> ReadRecord {
        copy(esn, RecordFlags::NONE, wave, payload)
    }

    fn decisions(plan: &RecoveryPlan) -> Vec<(u32, Decision)> {
        plan.entries
            .iter()
            .map(|e| (e.esn.0, e.decision.clone()))
            .collect()
    }

    #[test]
    fn highest_precedence_copy_wins_and_missing_esns_are_plugged() {
        let mut d = Digest::new(E);
        d.add(NodeId(1), normal(2, 1, b"wave1"));
        d.add(NodeId(2), normal(2, 3, b"wave3"));
        d.add(
            NodeId(3),
            copy(4, RecordFlags::WRITTEN_BY_RECOVERY, 1, b"recovered"),
        );
        d.add(NodeId(1), normal(4, 9, b"late"));
        let plan = d.plan(Esn(0), Authority::Authoritative);
        let ds = decisions(&plan);
        assert_eq!(ds[0], (1, Decision::Plug { existing: false }));
        assert!(matches!(&ds[1], (2, Decision::Rereplicate(r)) if r.payload == b"wave3"));
        assert_eq!(ds[2], (3, Decision::Plug { existing: false }));
        assert!(matches!(&ds[3], (4, Decision::Rereplicate(r)) if r.payload == b"recovered"));
        assert_eq!(plan.bridge, Some(Esn(5)));
        assert_eq!(plan.tail, Lsn::new(E, Esn(5)));
        assert_eq!(plan.entries[3].holders, vec![NodeId(1), NodeId(3)]);
    }

    #[test]
    fn earlier_recovery_plug_beats_a_normal_record() {
        let mut d = Digest::new(E);
        d.add(NodeId(1), normal(1, 7, b"x"));
        d.add(
            NodeId(2),
            copy(
                1,
                RecordFlags::WRITTEN_BY_RECOVERY | RecordFlags::HOLE,
                2,
                b"",
            ),
        );
        d.add(NodeId(1), normal(2, 1, b"y"));
        let plan = d.plan(Esn(0), Authority::Authoritative);
        assert_eq!(decisions(&plan)[0], (1, Decision::Plug { existing: true }));
        assert_eq!(plan.bridge, Some(Esn(3)));
    }

    #[test]
    fn esns_up_to_the_lng_are_left_alone() {
        let mut d = Digest::new(E);
        d.add(NodeId(1), normal(3, 1, b"a"));
        d.add(NodeId(1), normal(6, 1, b"b"));
        let plan = d.plan(Esn(4), Authority::Authoritative);
        assert_eq!(plan.lng, Esn(4));
        assert_eq!(
            decisions(&plan).iter().map(|(e, _)| *e).collect::<Vec<_>>(),
            vec![5, 6]
        );
        assert_eq!(plan.bridge, Some(Esn(7)));
    }

    #[test]
    fn header_lng_raises_the_lng() {
        let mut d = Digest::new(E);
        let mut r = normal(9, 1, b"a");
        r.header.lng = Esn(8);
        d.add(NodeId(1), r);
        let plan = d.plan(Esn(0), Authority::Authoritative);
        assert_eq!(plan.lng, Esn(8));
        assert_eq!(decisions(&plan).len(), 1, "only ESN 9 is decided");
    }

    #[test]
    fn empty_epoch_gets_a_bridge_right_after_the_lng() {
        let d = Digest::new(E);
        let plan = d.plan(Esn(0), Authority::Authoritative);
        assert!(plan.entries.is_empty());
        assert_eq!(plan.bridge, Some(Esn(1)));
        let plan = d.plan(Esn(12), Authority::Authoritative);
        assert_eq!(plan.bridge, Some(Esn(13)));
        assert_eq!(plan.tail, Lsn::new(E, Esn(13)));
    }

    #[test]
    fn evidence_forbids_a_plug_and_extends_the_epoch() {
        let mut d = Digest::new(E);
        d.add(NodeId(1), normal(1, 1, b"ok"));
        let mut bad = normal(2, 1, b"corrupt");
        bad.payload[0] ^= 1;
        d.add(NodeId(1), bad);
        d.add(NodeId(2), copy(3, RecordFlags::AMEND, 2, b""));
        let plan = d.plan(Esn(0), Authority::Authoritative);
        assert_eq!(
            decisions(&plan)[1..],
            [(2, Decision::Leave), (3, Decision::Leave)]
        );
        assert_eq!(plan.bridge, Some(Esn(4)));
    }

    #[test]
    fn amend_does_not_hide_the_full_copy() {
        let mut d = Digest::new(E);
        d.add(NodeId(1), normal(1, 1, b"data"));
        d.add(NodeId(2), copy(1, RecordFlags::AMEND, 2, b""));
        let plan = d.plan(Esn(0), Authority::Authoritative);
        assert!(matches!(&decisions(&plan)[0].1, Decision::Rereplicate(r) if r.payload == b"data"));
    }

    #[test]
    fn non_authoritative_plugs_nothing_and_ends_after_the_known_tail() {
        let mut d = Digest::new(E);
        d.add(NodeId(1), normal(2, 1, b"a"));
        d.add(NodeId(1), normal(5, 1, b"b"));
        let plan = d.plan(Esn(0), Authority::NonAuthoritative { known_tail: Esn(8) });
        assert!(!plan.authoritative);
        let ds = decisions(&plan);
        assert_eq!(ds.len(), 2);
        assert!(matches!(ds[0], (2, Decision::Rereplicate(_))));
        assert!(matches!(ds[1], (5, Decision::Rereplicate(_))));
        assert_eq!(plan.bridge, Some(Esn(9)));
    }

    #[test]
    fn an_earlier_bridge_truncates_lower_precedence_copies_after_it() {
        let rec = RecordFlags::WRITTEN_BY_RECOVERY;
        let mut d = Digest::new(E);
        d.add(NodeId(1), copy(1, rec, 4, b"kept"));
        d.add(
            NodeId(1),
            copy(2, rec | RecordFlags::HOLE | RecordFlags::BRIDGE, 4, b""),
        );
        // A stale normal copy the earlier recovery decided against.
        d.add(NodeId(2), normal(3, 9, b"stale"));
        let plan = d.plan(Esn(0), Authority::Authoritative);
        assert_eq!(decisions(&plan).len(), 1);
        assert_eq!(plan.bridge, Some(Esn(2)));
        // Non-authoritative: the old bridge is kept even though a node claims a longer tail.
        let plan = d.plan(Esn(0), Authority::NonAuthoritative { known_tail: Esn(3) });
        assert_eq!(plan.bridge, Some(Esn(2)));
        // A later recovery's record beats the older bridge.
        d.add(NodeId(3), copy(3, rec, 5, b"newer"));
        let plan = d.plan(Esn(0), Authority::Authoritative);
        assert_eq!(decisions(&plan)[1], (2, Decision::Plug { existing: true }));
        assert!(
            matches!(&decisions(&plan)[2].1, Decision::Rereplicate(r) if r.payload == b"newer")
        );
        assert_eq!(plan.bridge, Some(Esn(4)));
    }

    #[test]
    fn last_esn_of_the_epoch_means_no_bridge() {
        let mut d = Digest::new(E);
        d.add(NodeId(1), normal(u32::MAX, 1, b"z"));
        let plan = d.plan(Esn(u32::MAX - 1), Authority::Authoritative);
        assert_eq!(plan.bridge, None);
        assert_eq!(plan.tail, Lsn::new(E, Esn::MAX));
        assert_eq!(plan.entries.len(), 1);
    }

    #[test]
    fn other_epochs_are_ignored() {
        let mut d = Digest::new(E);
        let mut r = normal(1, 1, b"a");
        r.header.lsn = Lsn::new(Epoch(4), Esn(1));
        d.add(NodeId(1), r);
        assert_eq!(
            d.plan(Esn(0), Authority::Authoritative).bridge,
            Some(Esn(1))
        );
    }
}
