//! One run, start to end: the workload under faults (with mid-run reads of what is
//! released), healing, the final failover and recovery, the final reads, and the checks.

use std::collections::BTreeSet;

use rand::Rng;
use tally_common::{Lsn, NodeId};

use super::check;
use super::net::{Actor, MS, Time};
use super::read::{ReaderSpec, read_log};
use super::world::{MAX_EVENTS, SEQUENCERS, World};
use super::{RunReport, SimConfig};

impl World {
    /// Reads everything the nodes have released so far, hearing only from nodes that are up,
    /// awake and connected.
    fn snapshot_read(&mut self, i: usize) -> Option<check::ReadOutcome> {
        let until = self
            .storage
            .values()
            .map(|n| n.live.meta.last_released)
            .max()?;
        if until < Lsn::OLDEST {
            return None;
        }
        let down: BTreeSet<NodeId> = self
            .storage
            .keys()
            .copied()
            .filter(|id| {
                let a = Actor::Storage(*id);
                !self.storage_is_up(*id) || self.paused.contains_key(&a) || self.cut(a)
            })
            .collect();
        let spec = ReaderSpec {
            name: format!("snapshot{i}@{}ms", self.now / MS),
            single_copy: false,
            down,
        };
        Some(read_log(self, &spec, until))
    }

    /// Prints every node's copies and metadata (for `--verbose`).
    fn dump(&self) {
        eprintln!("epoch store: {:?}", self.es.meta);
        for (id, n) in &self.storage {
            let m = &n.live.meta;
            eprintln!(
                "n{}: seal {} soft {} released {} lce {} lng {:?} data_loss {}",
                id.0,
                m.seal,
                m.soft_seal,
                m.last_released,
                m.last_clean_epoch,
                m.epoch_lng,
                n.data_loss
            );
            for (lsn, c) in &n.live.copies {
                let h = &c.header;
                eprintln!(
                    "  {lsn} flags {:#x} w/s {} lng {} cs {:?} {}",
                    h.flags.0,
                    h.wave_or_seal,
                    h.lng,
                    h.copyset.nodes().iter().map(|n| n.0).collect::<Vec<_>>(),
                    String::from_utf8_lossy(&c.payload[..c.payload.len().min(12)])
                );
            }
        }
    }
}

/// Runs the simulation of one seed.
pub fn run(seed: u64, config: &SimConfig) -> RunReport {
    let mut w = World::new(seed, config);
    let heal_at = w.plan.heal_at;
    // Mid-run reads of what is released (and so must be final), while faults go on.
    let mut snapshots = Vec::new();
    let mut at: Vec<Time> = (0..2)
        .map(|_| w.rng.random_range(100 * MS..heal_at))
        .collect();
    at.sort_unstable();
    for (i, t) in at.into_iter().enumerate() {
        w.run_until(t, &|_| false);
        if let Some(r) = w.snapshot_read(i) {
            let records = r
                .deliveries
                .iter()
                .filter(|d| matches!(d, tally_client::reader::Delivery::Record(_)))
                .count();
            *w.report.stats.entry("records read mid-run").or_default() += records as u64;
            snapshots.push(r);
        }
    }
    w.run_until(heal_at, &|_| false);
    w.heal();
    // In-flight appends end by their timeouts; abandoned LSNs make sequencers reactivate.
    let settle = w.now + 4_000 * MS;
    w.run_until(settle, &|w| w.all_appends_ended());
    let settle = w.now + 2_000 * MS;
    w.run_until(settle, &|_| false);
    if !w.all_appends_ended() {
        w.liveness("appends still in flight after healing".into());
    }

    // The final failover: a fresh sequencer recovers every older epoch.
    for id in SEQUENCERS {
        if let Some(s) = w.seqs.get_mut(&id) {
            s.crash();
            s.restart();
        }
    }
    let mut s = w.seqs.remove(&SEQUENCERS[0]).expect("known sequencer");
    s.activate(&mut w, None);
    w.seqs.insert(SEQUENCERS[0], s);
    let deadline = w.now + 30_000 * MS;
    let settled = w.run_until(deadline, &|w| w.final_tail().is_some());
    // Let the release reach every node (it is re-broadcast too).
    let quiet = w.now + 300 * MS;
    w.run_until(quiet, &|_| false);

    let fast = w.report.fast_mode;
    let tail = w.final_tail();
    let mut reads = Vec::new();
    match tail {
        Some(tail) if tail >= Lsn::OLDEST => {
            let nodes: Vec<NodeId> = w.storage.keys().copied().collect();
            let one_down = nodes[w.rng.random_range(0..nodes.len())];
            let specs = [
                ReaderSpec {
                    name: "reader(all-send-all)".into(),
                    single_copy: false,
                    down: BTreeSet::new(),
                },
                ReaderSpec {
                    name: "reader(single-copy)".into(),
                    single_copy: true,
                    down: BTreeSet::new(),
                },
                ReaderSpec {
                    name: format!("reader(n{} down)", one_down.0),
                    single_copy: false,
                    down: [one_down].into_iter().collect(),
                },
            ];
            for spec in &specs {
                reads.push(read_log(&mut w, spec, tail));
            }
        }
        Some(_) => {}
        None => {
            let note = format!(
                "the final recovery did not finish within 30s (settled: {settled}, next epoch {}, \
                 LCE {}, data loss {:?}): {}",
                w.es.meta.next_epoch,
                w.es.meta.last_clean_epoch,
                w.data_loss
                    .iter()
                    .filter(|(_, l)| **l)
                    .map(|(n, _)| n.0)
                    .collect::<Vec<_>>(),
                w.seqs[&SEQUENCERS[0]].describe()
            );
            if fast {
                w.liveness(note);
            } else {
                w.report.violations.push(format!("liveness: {note}"));
            }
        }
    }
    let tail = tail.unwrap_or(Lsn::INVALID);
    let mut report = std::mem::take(&mut w.report);
    check::check(
        &w.history,
        &reads,
        &snapshots,
        tail,
        fast,
        &w.es.clean_at,
        &mut report,
    );
    if w.config.verbose {
        w.dump();
    }
    report.epochs = w.es.meta.next_epoch.0.saturating_sub(1);
    report.events = w.events;
    report.virtual_ms = w.now / MS;
    if w.events >= MAX_EVENTS {
        report
            .liveness
            .push(format!("event budget of {MAX_EVENTS} exhausted"));
    }
    report
}
