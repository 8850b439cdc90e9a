//! The chaos run's judge: pure functions over what the producers did (every append with its
//! invoke and completion times and outcome) and what the readers saw (every record and gap, in
//! delivery order). No clock, no I/O: unit-tested with histories that must fail.
//!
//! Definitions (per log):
//! - **lost**: an acknowledged append whose payload is not at its LSN in the final drain
//!   (missing, covered by a gap, or another payload there).
//! - **duplicated**: a payload present at more than one LSN in the final drain.
//! - **phantom**: a record payload no producer ever sent (counted as inconsistent).
//! - **inconsistent**: an LSN that two observations disagree on (two payloads, or a record
//!   and a gap — which also catches a record appearing in an epoch after readers were told it
//!   ended), or an acknowledged LSN holding another payload.
//! - **order_violations**: a reader whose deliveries do not cover LSNs contiguously in
//!   increasing order (a skip not covered by a gap, a repeat, a step back); and two appends
//!   where one was acknowledged before the other was invoked but got the higher LSN.
//! - **false_dataloss**: `DataLoss` gaps reported over LSNs (no chaos fault destroys every
//!   copy of a record, so any `DataLoss` is false) and benign gaps (`Hole`, `Bridge`, `Trim`)
//!   over acknowledged LSNs.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use tally_common::wire::GapKind;
use tally_common::{LogId, Lsn};

/// How an append ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Acked(Lsn),
    /// The client said it certainly did not happen.
    Failed,
    /// It may or may not have happened.
    Indeterminate,
}

/// One append as the producer saw it. Times are microseconds since the run started.
#[derive(Clone, Debug)]
pub struct AppendOp {
    pub log: LogId,
    pub payload: Vec<u8>,
    pub invoked_us: u64,
    pub completed_us: u64,
    pub outcome: Outcome,
}

/// One delivery as a reader saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    Record { lsn: Lsn, payload: Vec<u8> },
    Gap { kind: GapKind, from: Lsn, to: Lsn },
}

impl Seen {
    fn from(&self) -> Lsn {
        match self {
            Seen::Record { lsn, .. } => *lsn,
            Seen::Gap { from, .. } => *from,
        }
    }

    fn to(&self) -> Lsn {
        match self {
            Seen::Record { lsn, .. } => *lsn,
            Seen::Gap { to, .. } => *to,
        }
    }
}

/// Everything one reader delivered for one log, in order, from `start`.
#[derive(Clone, Debug)]
pub struct ReaderTrace {
    pub log: LogId,
    pub reader: String,
    /// The LSN the reader started at (its first delivery must begin there).
    pub start: Lsn,
    /// A fresh reader run after healing, from the oldest LSN to the tail: the final state.
    pub drain: bool,
    pub seen: Vec<Seen>,
}

/// The verdict, in the chaos JSON's terms.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Verdict {
    pub acked: u64,
    pub indeterminate: u64,
    pub failed: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub inconsistent: u64,
    pub order_violations: u64,
    pub false_dataloss: u64,
    /// Indeterminate appends found in the drain (they did happen).
    pub indeterminate_present: u64,
    /// Records delivered by all readers, drains included.
    pub records_read: u64,
    /// The first few problems, in words.
    pub examples: Vec<String>,
}

impl Verdict {
    /// Whether every safety count is zero.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.inconsistent == 0
            && self.order_violations == 0
            && self.false_dataloss == 0
    }

    fn note(&mut self, what: String) {
        if self.examples.len() < 20 {
            self.examples.push(what);
        }
    }
}

/// What one LSN was observed to be.
#[derive(Clone, Debug, PartialEq, Eq)]
enum At {
    Record(Vec<u8>),
    Gap(GapKind),
}

/// Judges a run. `ops` are every append of every producer; `traces` every reader's deliveries.
pub fn check(ops: &[AppendOp], traces: &[ReaderTrace]) -> Verdict {
    let mut v = Verdict::default();
    for op in ops {
        match op.outcome {
            Outcome::Acked(_) => v.acked += 1,
            Outcome::Failed => v.failed += 1,
            Outcome::Indeterminate => v.indeterminate += 1,
        }
    }
    let sent: HashSet<(LogId, &[u8])> = ops.iter().map(|o| (o.log, &o.payload[..])).collect();

    // Every reader on its own: contiguous, increasing coverage; DataLoss; phantoms.
    for t in traces {
        let mut next = t.start;
        for s in &t.seen {
            v.records_read += matches!(s, Seen::Record { .. }) as u64;
            if s.from() != next || s.to() < s.from() {
                v.order_violations += 1;
                v.note(format!(
                    "{} on {}: delivered {}..={} where {} was next",
                    t.reader,
                    t.log,
                    s.from(),
                    s.to(),
                    next
                ));
            }
            next = Lsn(s.to().0.saturating_add(1));
            match s {
                Seen::Gap {
                    kind: GapKind::DataLoss,
                    from,
                    to,
                } => {
                    v.false_dataloss += 1;
                    v.note(format!("{} on {}: DataLoss {from}..={to}", t.reader, t.log));
                }
                Seen::Record { lsn, payload } if !sent.contains(&(t.log, &payload[..])) => {
                    v.inconsistent += 1;
                    v.note(format!(
                        "{} on {}: phantom payload at {lsn} ({} bytes)",
                        t.reader,
                        t.log,
                        payload.len()
                    ));
                }
                _ => {}
            }
        }
    }

    // Agreement across readers, one LSN at a time. Gaps are ranges: expand only the LSNs some
    // record or acknowledged append names, which is where a disagreement can be.
    let mut logs: Vec<LogId> = traces.iter().map(|t| t.log).collect();
    logs.extend(ops.iter().map(|o| o.log));
    logs.sort();
    logs.dedup();
    for log in logs {
        check_log(log, ops, traces, &mut v);
    }
    v
}

fn check_log(log: LogId, ops: &[AppendOp], traces: &[ReaderTrace], v: &mut Verdict) {
    let traces: Vec<&ReaderTrace> = traces.iter().filter(|t| t.log == log).collect();
    let ops: Vec<&AppendOp> = ops.iter().filter(|o| o.log == log).collect();

    // LSN → what each observation says it is.
    let mut points: BTreeMap<Lsn, Vec<(usize, At)>> = BTreeMap::new();
    let mut interesting: Vec<Lsn> = ops
        .iter()
        .filter_map(|o| match o.outcome {
            Outcome::Acked(lsn) => Some(lsn),
            _ => None,
        })
        .collect();
    for t in &traces {
        for s in &t.seen {
            if let Seen::Record { lsn, .. } = s {
                interesting.push(*lsn);
            }
        }
    }
    interesting.sort();
    interesting.dedup();
    for (i, t) in traces.iter().enumerate() {
        for s in &t.seen {
            match s {
                Seen::Record { lsn, payload } => {
                    points
                        .entry(*lsn)
                        .or_default()
                        .push((i, At::Record(payload.clone())));
                }
                Seen::Gap { kind, from, to } => {
                    let lo = interesting.partition_point(|l| l < from);
                    let hi = interesting.partition_point(|l| l <= to);
                    for lsn in &interesting[lo..hi] {
                        points.entry(*lsn).or_default().push((i, At::Gap(*kind)));
                    }
                }
            }
        }
    }
    for (lsn, seen) in &points {
        let first = &seen[0].1;
        if let Some((i, other)) = seen.iter().find(|(_, a)| a != first) {
            v.inconsistent += 1;
            v.note(format!(
                "{log} at {lsn}: {} saw {}, {} saw {}",
                traces[seen[0].0].reader,
                describe(first),
                traces[*i].reader,
                describe(other)
            ));
        }
    }

    // The final state: what the drains delivered.
    let drains: Vec<&ReaderTrace> = traces.iter().copied().filter(|t| t.drain).collect();
    let mut final_at: HashMap<Lsn, At> = HashMap::new();
    let mut payload_lsns: HashMap<&[u8], Vec<Lsn>> = HashMap::new();
    if let Some(drain) = drains.first() {
        for s in &drain.seen {
            match s {
                Seen::Record { lsn, payload } => {
                    final_at.insert(*lsn, At::Record(payload.clone()));
                    payload_lsns.entry(&payload[..]).or_default().push(*lsn);
                }
                Seen::Gap { kind, from, to } => {
                    let lo = interesting.partition_point(|l| l < from);
                    let hi = interesting.partition_point(|l| l <= to);
                    for lsn in &interesting[lo..hi] {
                        final_at.insert(*lsn, At::Gap(*kind));
                    }
                }
            }
        }
    }
    for (payload, lsns) in &payload_lsns {
        if lsns.len() > 1 {
            v.duplicated += 1;
            v.note(format!(
                "{log}: one payload ({} bytes) at {} LSNs: {lsns:?}",
                payload.len(),
                lsns.len()
            ));
        }
    }
    for op in &ops {
        match op.outcome {
            Outcome::Acked(lsn) => match final_at.get(&lsn) {
                Some(At::Record(p)) if *p == op.payload => {}
                Some(At::Record(_)) => {
                    v.lost += 1;
                    v.inconsistent += 1;
                    v.note(format!("{log}: acked {lsn} holds another payload"));
                }
                Some(At::Gap(kind)) => {
                    v.lost += 1;
                    if *kind != GapKind::DataLoss {
                        v.false_dataloss += 1;
                    }
                    v.note(format!("{log}: acked {lsn} reported as a {kind:?} gap"));
                }
                None => {
                    v.lost += 1;
                    v.note(format!("{log}: acked {lsn} missing from the drain"));
                }
            },
            Outcome::Indeterminate if payload_lsns.contains_key(&op.payload[..]) => {
                v.indeterminate_present += 1;
            }
            _ => {}
        }
    }

    // Real-time order: acknowledged before invoked ⇒ lower LSN.
    let mut acked: Vec<(u64, u64, Lsn)> = ops
        .iter()
        .filter_map(|o| match o.outcome {
            Outcome::Acked(lsn) => Some((o.invoked_us, o.completed_us, lsn)),
            _ => None,
        })
        .collect();
    let mut by_completion = acked.clone();
    by_completion.sort_by_key(|a| a.1);
    acked.sort_by_key(|a| a.0);
    let mut done = 0;
    let mut max_done: Option<Lsn> = None;
    for (invoked, _, lsn) in acked {
        while done < by_completion.len() && by_completion[done].1 < invoked {
            max_done = max_done.max(Some(by_completion[done].2));
            done += 1;
        }
        if let Some(prior) = max_done
            && prior >= lsn
        {
            v.order_violations += 1;
            v.note(format!(
                "{log}: {lsn} was invoked after {prior} was acknowledged but is not above it"
            ));
        }
    }
}

fn describe(at: &At) -> String {
    match at {
        At::Record(p) => format!("a record of {} bytes ({:?}…)", p.len(), preview(p)),
        At::Gap(kind) => format!("a {kind:?} gap"),
    }
}

fn preview(p: &[u8]) -> String {
    String::from_utf8_lossy(&p[..p.len().min(24)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: LogId = LogId(1);

    fn lsn(e: u32, n: u32) -> Lsn {
        Lsn::new(tally_common::Epoch(e), tally_common::Esn(n))
    }

    fn op(p: &str, t0: u64, t1: u64, outcome: Outcome) -> AppendOp {
        AppendOp {
            log: L,
            payload: p.as_bytes().to_vec(),
            invoked_us: t0,
            completed_us: t1,
            outcome,
        }
    }

    fn rec(l: Lsn, p: &str) -> Seen {
        Seen::Record {
            lsn: l,
            payload: p.as_bytes().to_vec(),
        }
    }

    fn gap(kind: GapKind, from: Lsn, to: Lsn) -> Seen {
        Seen::Gap { kind, from, to }
    }

    fn trace(name: &str, drain: bool, seen: Vec<Seen>) -> ReaderTrace {
        ReaderTrace {
            log: L,
            reader: name.into(),
            start: Lsn::OLDEST,
            drain,
            seen,
        }
    }

    /// e1n1 "a", e1n2 "b", bridge to the end of epoch 1, e2n1 "c".
    fn good() -> (Vec<AppendOp>, Vec<ReaderTrace>) {
        let ops = vec![
            op("a", 0, 10, Outcome::Acked(lsn(1, 1))),
            op("b", 20, 30, Outcome::Acked(lsn(1, 2))),
            op("x", 25, 40, Outcome::Failed),
            op("c", 50, 60, Outcome::Acked(lsn(2, 1))),
        ];
        let seen = vec![
            gap(GapKind::Bridge, Lsn::OLDEST, lsn(1, 0)),
            rec(lsn(1, 1), "a"),
            rec(lsn(1, 2), "b"),
            gap(GapKind::Bridge, lsn(1, 3), lsn(2, 0)),
            rec(lsn(2, 1), "c"),
        ];
        let traces = vec![
            trace("tail", false, seen.clone()),
            trace("drain", true, seen),
        ];
        (ops, traces)
    }

    #[test]
    fn a_correct_history_passes() {
        let (ops, traces) = good();
        let v = check(&ops, &traces);
        assert!(v.passed(), "{v:?}");
        assert_eq!((v.acked, v.failed, v.indeterminate), (3, 1, 0));
        assert_eq!(v.records_read, 6);
    }

    #[test]
    fn a_missing_acked_record_is_lost() {
        let (ops, mut traces) = good();
        traces[1].seen[2] = gap(GapKind::Hole, lsn(1, 2), lsn(1, 2));
        let v = check(&ops, &traces);
        assert_eq!(v.lost, 1);
        assert_eq!(v.false_dataloss, 1, "a benign gap over an acked LSN");
        assert_eq!(v.inconsistent, 1, "the tail reader saw a record there");
    }

    #[test]
    fn dataloss_and_skips_and_duplicates_are_caught() {
        let (ops, mut traces) = good();
        traces[0].seen[2] = gap(GapKind::DataLoss, lsn(1, 2), lsn(1, 2));
        assert_eq!(check(&ops, &traces).false_dataloss, 1);

        let (ops, mut traces) = good();
        traces[0].seen.remove(2);
        assert_eq!(check(&ops, &traces).order_violations, 1);

        let (ops, mut traces) = good();
        traces[1].seen[4] = rec(lsn(2, 1), "a");
        let v = check(&ops, &traces);
        assert_eq!(v.duplicated, 1);
        assert!(v.lost >= 1 && v.inconsistent >= 1);
    }

    #[test]
    fn phantoms_and_real_time_order_are_caught() {
        let (ops, mut traces) = good();
        traces[0].seen[4] = rec(lsn(2, 1), "never sent");
        assert!(check(&ops, &traces).inconsistent >= 1);

        // "c" invoked after "b" was acknowledged but given a lower LSN.
        let (mut ops, _) = good();
        ops[1].outcome = Outcome::Acked(lsn(2, 5));
        let v = check(&ops, &[]);
        assert_eq!(v.order_violations, 1, "{v:?}");
    }

    #[test]
    fn indeterminate_appends_may_or_may_not_be_present() {
        let (mut ops, traces) = good();
        ops[2] = op("x", 25, 40, Outcome::Indeterminate);
        let v = check(&ops, &traces);
        assert!(v.passed());
        assert_eq!(v.indeterminate_present, 0);
        let mut ops2 = ops.clone();
        ops2[1].outcome = Outcome::Indeterminate;
        ops2[1].payload = b"b".to_vec();
        let v = check(&ops2, &traces);
        assert!(v.passed());
        assert_eq!(v.indeterminate_present, 1);
    }
}
