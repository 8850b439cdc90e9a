//! The history of a run (what clients invoked and learned) and the safety checks over it and
//! the final reads (the invariants listed in the module documentation of `sim`).

use std::collections::{BTreeMap, BTreeSet};

use tally_client::reader::Delivery;
use tally_common::wire::GapKind;
use tally_common::{Epoch, Lsn, NodeId};

use super::RunReport;
use super::net::{MS, Time};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Pending,
    Acked {
        lsn: Lsn,
        at: Time,
        wave_sent: Time,
    },
    Failed {
        certain: bool,
        at: Time,
        why: String,
    },
}

/// One payload's append, as its client saw it.
#[derive(Debug, Clone)]
pub(crate) struct AppendRecord {
    pub(crate) client: u32,
    pub(crate) invoked: Time,
    pub(crate) granted: Option<(Lsn, NodeId)>,
    pub(crate) outcome: Outcome,
}

#[derive(Debug, Default)]
pub(crate) struct History {
    /// Indexed by the id the payload carries.
    pub(crate) appends: Vec<AppendRecord>,
}

impl History {
    pub(crate) fn invoke(&mut self, client: u32, now: Time) -> u64 {
        self.appends.push(AppendRecord {
            client,
            invoked: now,
            granted: None,
            outcome: Outcome::Pending,
        });
        (self.appends.len() - 1) as u64
    }

    pub(crate) fn granted(&mut self, id: u64, lsn: Lsn, sequencer: NodeId) {
        self.appends[id as usize].granted = Some((lsn, sequencer));
    }

    pub(crate) fn acked(&mut self, id: u64, lsn: Lsn, wave_sent: Time, now: Time) {
        let a = &mut self.appends[id as usize];
        assert_eq!(a.outcome, Outcome::Pending, "append {id} ended twice");
        a.outcome = Outcome::Acked {
            lsn,
            at: now,
            wave_sent,
        };
    }

    pub(crate) fn failed(&mut self, id: u64, certain: bool, now: Time, why: &str) {
        let a = &mut self.appends[id as usize];
        assert_eq!(a.outcome, Outcome::Pending, "append {id} ended twice");
        a.outcome = Outcome::Failed {
            certain,
            at: now,
            why: why.to_string(),
        };
    }
}

/// What one reader delivered.
#[derive(Debug, Clone)]
pub(crate) struct ReadOutcome {
    pub(crate) name: String,
    pub(crate) deliveries: Vec<Delivery>,
    /// Reached `until` (else it stalled).
    pub(crate) done: bool,
}

/// The payload's append id (`append-<id>/…`).
fn payload_id(payload: &[u8]) -> Option<u64> {
    let rest = payload.strip_prefix(b"append-")?;
    let end = rest.iter().position(|b| *b == b'/')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// One reader's deliveries, indexed.
struct ReaderView<'a> {
    name: &'a str,
    records: BTreeMap<Lsn, u64>,
    /// Gaps by first LSN: (last LSN, kind).
    gaps: BTreeMap<Lsn, (Lsn, GapKind)>,
    /// Everything up to here was delivered.
    reached: Lsn,
}

enum Slot {
    Record(u64),
    Gap(GapKind),
    Unreached,
}

impl ReaderView<'_> {
    fn slot(&self, lsn: Lsn) -> Slot {
        if lsn > self.reached {
            return Slot::Unreached;
        }
        if let Some(id) = self.records.get(&lsn) {
            return Slot::Record(*id);
        }
        match self.gaps.range(..=lsn).next_back() {
            Some((_, (to, kind))) if *to >= lsn => Slot::Gap(*kind),
            _ => Slot::Unreached, // cannot happen for a contiguous reader
        }
    }
}

/// Checks the run; fills the counts and the violations of `report`.
pub(crate) fn check(
    history: &History,
    reads: &[ReadOutcome],
    snapshots: &[ReadOutcome],
    tail: Lsn,
    fast: bool,
    clean_at: &BTreeMap<Epoch, Time>,
    report: &mut RunReport,
) {
    let mut v: Vec<String> = Vec::new();
    for a in &history.appends {
        match &a.outcome {
            Outcome::Acked { .. } => report.acked += 1,
            Outcome::Failed { certain: true, .. } => report.failed += 1,
            Outcome::Failed { certain: false, .. } | Outcome::Pending => report.indeterminate += 1,
        }
    }

    // 1, 2: each reader on its own (mid-run snapshot readers too).
    let mut views = Vec::new();
    let mut snapshot_views = Vec::new();
    for (final_read, r) in reads
        .iter()
        .map(|r| (true, r))
        .chain(snapshots.iter().map(|r| (false, r)))
    {
        let mut view = ReaderView {
            name: &r.name,
            records: BTreeMap::new(),
            gaps: BTreeMap::new(),
            reached: Lsn::INVALID,
        };
        let mut expected = Lsn::OLDEST;
        let mut seen_ids: BTreeMap<u64, Lsn> = BTreeMap::new();
        for d in &r.deliveries {
            if d.from() != expected || d.to() < d.from() {
                v.push(format!(
                    "{}: delivery {}..={} where {} was expected next",
                    r.name,
                    d.from(),
                    d.to(),
                    expected
                ));
                break;
            }
            match d {
                Delivery::Record(rec) => {
                    let lsn = rec.header.lsn;
                    match payload_id(&rec.payload) {
                        None => v.push(format!("{}: phantom payload at {lsn}", r.name)),
                        Some(id) if id as usize >= history.appends.len() => {
                            v.push(format!("{}: phantom append id {id} at {lsn}", r.name))
                        }
                        Some(id) => {
                            let granted = history.appends[id as usize].granted.map(|g| g.0);
                            if granted != Some(lsn) {
                                v.push(format!(
                                    "{}: append {id} read at {lsn}, granted {granted:?}",
                                    r.name
                                ));
                            }
                            if let Some(other) = seen_ids.insert(id, lsn) {
                                v.push(format!(
                                    "{}: append {id} read at {other} and {lsn}",
                                    r.name
                                ));
                            }
                            view.records.insert(lsn, id);
                        }
                    }
                }
                Delivery::Gap { kind, from, to } => {
                    if *kind == GapKind::NoRecords {
                        v.push(format!("{}: untyped gap {from}..={to}", r.name));
                    }
                    if *kind == GapKind::Trim {
                        v.push(format!("{}: trim gap {from}..={to} without trims", r.name));
                    }
                    view.gaps.insert(*from, (*to, *kind));
                }
            }
            view.reached = d.to();
            expected = d.to().next();
        }
        if !final_read {
            snapshot_views.push(view);
            continue;
        }
        if r.done && view.reached < tail {
            v.push(format!(
                "{}: done at {} before the tail {tail}",
                r.name, view.reached
            ));
        }
        if !r.done {
            report.liveness.push(format!(
                "{}: stalled after {} (tail {tail})",
                r.name, view.reached
            ));
        }
        views.push(view);
    }

    // 3, 4, 7: every append against every reader.
    let mut unverified = BTreeSet::new();
    let mut lost_fast = BTreeSet::new();
    for (id, a) in history.appends.iter().enumerate() {
        let id = id as u64;
        match &a.outcome {
            Outcome::Acked { lsn, wave_sent, .. } => {
                if let Some(clean) = clean_at.get(&lsn.epoch())
                    && *wave_sent > *clean
                {
                    v.push(format!(
                        "append {id} acknowledged at {lsn}: its wave was sent at {}ms, after \
                         epoch {} was recovered at {}ms",
                        wave_sent / MS,
                        lsn.epoch(),
                        clean / MS
                    ));
                }
                if views.is_empty() {
                    unverified.insert(id);
                }
                for view in &views {
                    match view.slot(*lsn) {
                        Slot::Record(got) if got == id => {}
                        Slot::Record(got) => v.push(format!(
                            "{}: acknowledged append {id} at {lsn} reads as append {got}",
                            view.name
                        )),
                        Slot::Gap(GapKind::DataLoss) if fast => {
                            lost_fast.insert(id);
                        }
                        Slot::Gap(kind) => v.push(format!(
                            "{}: acknowledged append {id} (client {}) at {lsn} lost under a \
                             {kind:?} gap",
                            view.name, a.client
                        )),
                        Slot::Unreached => {
                            unverified.insert(id);
                        }
                    }
                }
            }
            Outcome::Failed {
                certain: true, why, ..
            } => {
                for view in &views {
                    if let Some((lsn, _)) = view.records.iter().find(|(_, i)| **i == id) {
                        v.push(format!(
                            "{}: append {id} failed as certainly not appended ({why}) but \
                             reads at {lsn}",
                            view.name
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    report.unverified = unverified.len() as u64;
    report.lost_fast = lost_fast.len() as u64;

    // 5: readers agree, and what a reader saw mid-run (released, so final) stays.
    let all: Vec<&ReaderView<'_>> = views.iter().chain(snapshot_views.iter()).collect();
    for (i, a) in all.iter().enumerate() {
        for b in all.iter().skip(i + 1) {
            disagreements(a, b, fast, &mut v);
            disagreements(b, a, fast, &mut v);
        }
    }

    // 6: acknowledged before invoked means ordered.
    let mut acked: Vec<(Time, Lsn)> = history
        .appends
        .iter()
        .filter_map(|a| match a.outcome {
            Outcome::Acked { lsn, at, .. } => Some((at, lsn)),
            _ => None,
        })
        .collect();
    acked.sort();
    let mut prefix_max = Vec::with_capacity(acked.len());
    let mut m = Lsn::INVALID;
    for (_, lsn) in &acked {
        m = m.max(*lsn);
        prefix_max.push(m);
    }
    for (id, a) in history.appends.iter().enumerate() {
        let Outcome::Acked { lsn, .. } = a.outcome else {
            continue;
        };
        let before = acked.partition_point(|(at, _)| *at < a.invoked);
        if before > 0 && prefix_max[before - 1] >= lsn {
            v.push(format!(
                "append {id} invoked at {}ms got {lsn}, not above {} acknowledged before it",
                a.invoked / MS,
                prefix_max[before - 1]
            ));
        }
    }

    report.violations.extend(v);
}

/// Where `a` has a record and `b` has something else that contradicts it: another record, a
/// hole or bridge (a positive statement that nothing was there), or — where nothing may be
/// lost (`durable`) — a data-loss gap.
fn disagreements(a: &ReaderView<'_>, b: &ReaderView<'_>, fast: bool, v: &mut Vec<String>) {
    for (lsn, id) in &a.records {
        let other = match b.slot(*lsn) {
            Slot::Record(other) if other != *id => format!("append {other}"),
            Slot::Gap(kind @ (GapKind::Hole | GapKind::Bridge | GapKind::Trim)) => {
                format!("a {kind:?} gap")
            }
            Slot::Gap(GapKind::DataLoss) if !fast => "a DataLoss gap".to_string(),
            _ => continue,
        };
        v.push(format!(
            "{lsn} is append {id} for {} and {other} for {}",
            a.name, b.name
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::payload_id;

    #[test]
    fn payload_ids_parse() {
        assert_eq!(payload_id(b"append-17/xxx"), Some(17));
        assert_eq!(payload_id(b"append-x/"), None);
        assert_eq!(payload_id(b"other"), None);
    }
}
