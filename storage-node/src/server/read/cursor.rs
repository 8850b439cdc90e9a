//! [`Cursor`]: the position of one read stream and what it may ship next, pure (no disk, no
//! socket): events in (the log's release and trim points, window widenings, scanned chunks),
//! decisions and wire messages out.
//!
//! The cursor keeps `passed`, the last LSN the stream has covered: everything at or below it
//! was shipped, skipped by the filter, or reported absent. Every message moves it forward and
//! never beyond what the node may claim:
//! - records and `NoRecords` gaps only up to `min(until, window, last released)` — an LSN
//!   above the release point may still be stored here later;
//! - `Trim` gaps up to `min(trim point, until, window)` — trimmed is final, released or not;
//! - `ReadDone` once `passed` reaches `until` (it replaces a last gap ending at `until`).

use tally_common::Lsn;
use tally_common::wire::client::ClientResponse;
use tally_common::wire::{GapKind, ReadRecord};

/// What the stream does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Everything up to `until` is covered: send `ReadDone` and end.
    Done,
    /// Send `Gap { Trim, from, to }`.
    Trim { from: Lsn, to: Lsn },
    /// Read what this node holds in `from ..= to` (one bounded chunk of it).
    Scan { from: Lsn, to: Lsn },
    /// Nothing can be shipped until the release point moves or the window widens.
    Wait,
}

/// What one scan found: the records to ship (increasing LSNs, all in the scanned range) and
/// the last LSN it examined completely (`through` ≥ every record's LSN).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub records: Vec<ReadRecord>,
    pub through: Lsn,
}

/// The position of one read stream (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    passed: Lsn,
    until: Lsn,
    window: Lsn,
}

impl Cursor {
    /// A stream of `from ..= until` with its window ending at `window` (`from ≤ until` and
    /// `from ≤ window` are checked when the request is decoded).
    pub(crate) fn new(from: Lsn, until: Lsn, window: Lsn) -> Cursor {
        Cursor {
            passed: from.max(Lsn::OLDEST).prev(),
            until,
            window,
        }
    }

    pub(crate) fn passed(&self) -> Lsn {
        self.passed
    }

    pub(crate) fn window(&self) -> Lsn {
        self.window
    }

    /// The client widened the window (a narrower one is ignored: windows never shrink).
    pub(crate) fn widen(&mut self, until: Lsn) {
        self.window = self.window.max(until);
    }

    /// The next step given the log's last released LSN and trim point.
    pub(crate) fn plan(&self, released: Lsn, trim: Lsn) -> Plan {
        if self.passed >= self.until {
            return Plan::Done;
        }
        let next = self.passed.next();
        let cap = self.until.min(self.window);
        if next > cap {
            return Plan::Wait;
        }
        if next <= trim {
            return Plan::Trim {
                from: next,
                to: trim.min(cap),
            };
        }
        let limit = cap.min(released);
        if next > limit {
            return Plan::Wait;
        }
        Plan::Scan {
            from: next,
            to: limit,
        }
    }

    /// Accounts a trim gap that was planned.
    pub(crate) fn trimmed(&mut self, to: Lsn) -> ClientResponse {
        let from = self.passed.next();
        self.passed = self.passed.max(to);
        ClientResponse::Gap {
            kind: GapKind::Trim,
            from,
            to,
        }
    }

    /// The messages that ship `chunk` (the result of scanning from `passed + 1`): its records,
    /// then a `NoRecords` gap over what it examined past the last record, or `ReadDone` if
    /// that reaches `until`.
    pub(crate) fn after_scan(&mut self, chunk: Chunk) -> Vec<ClientResponse> {
        let mut out = Vec::with_capacity(3);
        let through = chunk.through.min(self.until);
        let last = chunk.records.last().map_or(self.passed, |r| r.header.lsn);
        if !chunk.records.is_empty() {
            out.push(ClientResponse::Records(chunk.records));
        }
        self.passed = self.passed.max(last);
        if self.passed >= self.until {
            out.push(ClientResponse::ReadDone);
        } else if through > self.passed {
            if through >= self.until {
                out.push(ClientResponse::ReadDone);
            } else {
                out.push(ClientResponse::Gap {
                    kind: GapKind::NoRecords,
                    from: self.passed.next(),
                    to: through,
                });
            }
            self.passed = through;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::{Copyset, Esn, LogId, NodeId, RecordFlags, RecordHeader};

    fn rec(lsn: u64) -> ReadRecord {
        ReadRecord {
            header: RecordHeader {
                log: LogId(1),
                lsn: Lsn(lsn),
                timestamp_ms: 0,
                lng: Esn(0),
                wave_or_seal: 1,
                flags: RecordFlags::NONE,
                copyset: Copyset::new(vec![NodeId(1)]).unwrap(),
                payload_crc32: 0,
            },
            payload: Vec::new(),
        }
    }

    fn gap(kind: GapKind, from: u64, to: u64) -> ClientResponse {
        ClientResponse::Gap {
            kind,
            from: Lsn(from),
            to: Lsn(to),
        }
    }

    #[test]
    fn ships_only_released_lsns_within_the_window() {
        let mut c = Cursor::new(Lsn(10), Lsn(100), Lsn(50));
        assert_eq!(
            c.plan(Lsn::INVALID, Lsn::INVALID),
            Plan::Wait,
            "nothing released"
        );
        assert_eq!(c.plan(Lsn(9), Lsn::INVALID), Plan::Wait);
        assert_eq!(
            c.plan(Lsn(30), Lsn::INVALID),
            Plan::Scan {
                from: Lsn(10),
                to: Lsn(30)
            }
        );
        assert_eq!(
            c.plan(Lsn(80), Lsn::INVALID),
            Plan::Scan {
                from: Lsn(10),
                to: Lsn(50)
            },
            "the window caps it"
        );
        let msgs = c.after_scan(Chunk {
            records: vec![rec(12), rec(20)],
            through: Lsn(50),
        });
        assert_eq!(
            msgs,
            vec![
                ClientResponse::Records(vec![rec(12), rec(20)]),
                gap(GapKind::NoRecords, 21, 50)
            ]
        );
        assert_eq!(
            c.plan(Lsn(80), Lsn::INVALID),
            Plan::Wait,
            "window exhausted"
        );
        c.widen(Lsn(40));
        assert_eq!(c.window(), Lsn(50), "windows never shrink");
        c.widen(Lsn(200));
        assert_eq!(
            c.plan(Lsn(80), Lsn::INVALID),
            Plan::Scan {
                from: Lsn(51),
                to: Lsn(80)
            }
        );
        // A chunk with nothing at all is one gap.
        assert_eq!(
            c.after_scan(Chunk {
                records: vec![],
                through: Lsn(80)
            }),
            vec![gap(GapKind::NoRecords, 51, 80)]
        );
        // A chunk cut short by its budget ends at its last record: no gap.
        assert_eq!(
            c.after_scan(Chunk {
                records: vec![rec(81), rec(82)],
                through: Lsn(82)
            }),
            vec![ClientResponse::Records(vec![rec(81), rec(82)])]
        );
        assert_eq!(c.passed(), Lsn(82));
        // Reaching `until` ends the stream, with or without a record there.
        assert_eq!(
            c.after_scan(Chunk {
                records: vec![rec(90)],
                through: Lsn(100)
            }),
            vec![
                ClientResponse::Records(vec![rec(90)]),
                ClientResponse::ReadDone
            ]
        );
        assert_eq!(c.plan(Lsn(500), Lsn::INVALID), Plan::Done);
        let mut c = Cursor::new(Lsn(1), Lsn(5), Lsn(5));
        assert_eq!(
            c.after_scan(Chunk {
                records: vec![rec(5)],
                through: Lsn(5)
            }),
            vec![
                ClientResponse::Records(vec![rec(5)]),
                ClientResponse::ReadDone
            ]
        );
    }

    #[test]
    fn trim_gaps_come_first_and_do_not_wait_for_releases() {
        let mut c = Cursor::new(Lsn(1), Lsn(100), Lsn(60));
        assert_eq!(
            c.plan(Lsn::INVALID, Lsn(70)),
            Plan::Trim {
                from: Lsn(1),
                to: Lsn(60)
            },
            "capped by the window, not by the release point"
        );
        assert_eq!(c.trimmed(Lsn(60)), gap(GapKind::Trim, 1, 60));
        assert_eq!(c.plan(Lsn::INVALID, Lsn(70)), Plan::Wait);
        c.widen(Lsn(100));
        assert_eq!(
            c.plan(Lsn(90), Lsn(70)),
            Plan::Trim {
                from: Lsn(61),
                to: Lsn(70)
            }
        );
        c.trimmed(Lsn(70));
        assert_eq!(
            c.plan(Lsn(90), Lsn(70)),
            Plan::Scan {
                from: Lsn(71),
                to: Lsn(90)
            }
        );
    }

    #[test]
    fn follow_mode_never_finishes_and_from_zero_starts_at_oldest() {
        let mut c = Cursor::new(Lsn::INVALID, Lsn::MAX, Lsn::MAX);
        assert_eq!(
            c.plan(Lsn(3), Lsn::INVALID),
            Plan::Scan {
                from: Lsn(1),
                to: Lsn(3)
            }
        );
        assert_eq!(
            c.after_scan(Chunk {
                records: vec![],
                through: Lsn(3)
            }),
            vec![gap(GapKind::NoRecords, 1, 3)]
        );
        assert_eq!(c.plan(Lsn(3), Lsn::INVALID), Plan::Wait);
    }
}
