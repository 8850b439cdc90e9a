//! State-machine test of LogsDB against a simple in-memory model: random sequences of stores
//! (including conflicting writes to one LSN: waves, amendments, recovery writes, hole plugs),
//! seals, trims, partition rolls, retention passes, reads, `find_time`, `data_size` and
//! close/reopen; and bursts of stores queued before any is waited for, so that the writer
//! thread merges several requests (and several writes to one LSN) in one group commit. After
//! every step the database must answer exactly like the model.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
use support::*;
use tally_common::{
    Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags, RecordHeader, payload_crc32,
};
use tally_storage_node::logsdb::{
    FindTimeAccuracy, LogRecord, LogsDb, LogsDbConfig, LogsDbError, ManualClock, ReadItem,
};

#[derive(Debug, Clone, Copy)]
enum Kind {
    Normal { wave: u32 },
    Amend { wave: u32 },
    Recovery { seal: u32, hole: bool },
}

#[derive(Debug, Clone)]
struct W {
    log: u64,
    epoch: u32,
    esn: u32,
    kind: Kind,
    lng: u32,
    node: u32,
    payload_len: usize,
}

#[derive(Debug, Clone)]
enum Step {
    Store(Vec<W>, bool),
    /// Several stores queued at once, then each acknowledgement awaited in order.
    Burst(Vec<Vec<W>>, bool),
    Seal {
        log: u64,
        epoch: u32,
    },
    Trim {
        log: u64,
        epoch: u32,
        esn: u32,
    },
    Read {
        log: u64,
        epoch: u32,
        esn: u32,
    },
    FindTime {
        log: u64,
        ts_offset: u64,
    },
    Roll,
    Retention,
    Reopen,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        4 => (1u32..4).prop_map(|wave| Kind::Normal { wave }),
        2 => (1u32..5).prop_map(|wave| Kind::Amend { wave }),
        2 => (1u32..6, any::<bool>()).prop_map(|(seal, hole)| Kind::Recovery { seal, hole }),
    ]
}

fn write() -> impl Strategy<Value = W> {
    (
        1u64..3,
        1u32..5,
        1u32..7,
        kind(),
        0u32..4,
        1u32..6,
        0usize..48,
    )
        .prop_map(|(log, epoch, esn, kind, lng, node, payload_len)| W {
            log,
            epoch,
            esn,
            kind,
            lng,
            node,
            payload_len,
        })
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => (proptest::collection::vec(write(), 1..4), any::<bool>()).prop_map(|(w, d)| Step::Store(w, d)),
        4 => (proptest::collection::vec(proptest::collection::vec(write(), 1..3), 2..6), any::<bool>())
            .prop_map(|(ws, d)| Step::Burst(ws, d)),
        2 => (1u64..3, 1u32..6).prop_map(|(log, epoch)| Step::Seal { log, epoch }),
        2 => (1u64..3, 1u32..5, 0u32..7).prop_map(|(log, epoch, esn)| Step::Trim { log, epoch, esn }),
        3 => (1u64..3, 0u32..5, 0u32..7).prop_map(|(log, epoch, esn)| Step::Read { log, epoch, esn }),
        3 => (1u64..3, 0u64..6000).prop_map(|(log, ts_offset)| Step::FindTime { log, ts_offset }),
        2 => Just(Step::Roll),
        1 => Just(Step::Retention),
        1 => Just(Step::Reopen),
    ]
}

/// Timestamps grow with the LSN within a log, as the sequencer guarantees.
fn ts_of(lsn: Lsn) -> u64 {
    T0 + u64::from(lsn.epoch().0) * 1000 + u64::from(lsn.esn().0) * 10
}

fn to_record(w: &W, step: usize) -> LogRecord {
    let (flags, wave) = match w.kind {
        Kind::Normal { wave } => (RecordFlags::NONE, wave),
        Kind::Amend { wave } => (RecordFlags::AMEND, wave),
        Kind::Recovery { seal, hole: true } => {
            (RecordFlags::WRITTEN_BY_RECOVERY | RecordFlags::HOLE, seal)
        }
        Kind::Recovery { seal, hole: false } => (RecordFlags::WRITTEN_BY_RECOVERY, seal),
    };
    let lsn = lsn(w.epoch, w.esn);
    let payload: Vec<u8> =
        if flags.contains(RecordFlags::AMEND) || flags.contains(RecordFlags::HOLE) {
            Vec::new()
        } else {
            (0..w.payload_len).map(|i| (step * 7 + i) as u8).collect()
        };
    LogRecord {
        header: RecordHeader {
            log: LogId(w.log),
            lsn,
            timestamp_ms: ts_of(lsn),
            lng: Esn(w.lng),
            wave_or_seal: wave,
            flags,
            copyset: Copyset::new(vec![NodeId(w.node), NodeId(10 + w.node)]).unwrap(),
            payload_crc32: payload_crc32(&payload),
        },
        payload,
    }
}

/// The model's copy of one LSN: the metadata winner and the payload winner.
#[derive(Debug, Clone)]
struct MRec {
    meta: RecordHeader,
    payload: Option<(RecordHeader, Vec<u8>)>,
}

fn prec(h: &RecordHeader) -> (bool, u32) {
    (
        h.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY),
        h.wave_or_seal,
    )
}

impl MRec {
    fn apply(old: Option<MRec>, r: LogRecord) -> MRec {
        let full = !r.header.flags.contains(RecordFlags::AMEND);
        let Some(mut m) = old else {
            return MRec {
                meta: r.header.clone(),
                payload: full.then_some((r.header, r.payload)),
            };
        };
        if prec(&r.header) >= prec(&m.meta) {
            m.meta = r.header.clone();
        }
        if full
            && m.payload
                .as_ref()
                .is_none_or(|(h, _)| prec(&r.header) >= prec(h))
        {
            m.payload = Some((r.header, r.payload));
        }
        m
    }

    fn expected(&self) -> LogRecord {
        let mut h = self.meta.clone();
        let mut flags = h.flags.without(RecordFlags::AMEND);
        let payload = match &self.payload {
            Some((ph, p)) => {
                h.timestamp_ms = ph.timestamp_ms;
                h.payload_crc32 = ph.payload_crc32;
                p.clone()
            }
            None => {
                flags = flags | RecordFlags::AMEND;
                Vec::new()
            }
        };
        h.flags = flags;
        LogRecord { header: h, payload }
    }
}

#[derive(Debug, Default)]
struct MLog {
    seal: Epoch,
    soft_seal: Epoch,
    trim: Lsn,
    lng: BTreeMap<Epoch, Esn>,
    records: BTreeMap<Lsn, MRec>,
}

#[derive(Debug, Default)]
struct Model {
    logs: HashMap<u64, MLog>,
}

impl Model {
    fn store(&mut self, records: Vec<LogRecord>) -> Result<(), Epoch> {
        for r in &records {
            let m = self.logs.entry(r.header.log.0).or_default();
            let recovery = r.header.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY);
            if recovery && Epoch(r.header.wave_or_seal) < m.seal {
                return Err(m.seal);
            }
            if !recovery && r.header.lsn.epoch() <= m.seal.max(m.soft_seal) {
                return Err(m.seal.max(m.soft_seal));
            }
        }
        for r in records {
            let m = self.logs.entry(r.header.log.0).or_default();
            let lsn = r.header.lsn;
            if !r.header.flags.contains(RecordFlags::WRITTEN_BY_RECOVERY) {
                m.soft_seal = m.soft_seal.max(lsn.epoch().prev());
            }
            if lsn <= m.trim {
                continue;
            }
            if r.header.lng > Esn(0) {
                let e = m.lng.entry(lsn.epoch()).or_default();
                *e = (*e).max(r.header.lng);
            }
            let old = m.records.remove(&lsn);
            m.records.insert(lsn, MRec::apply(old, r));
        }
        Ok(())
    }

    fn find_time(&self, log: u64, ts: u64) -> Lsn {
        let m = self.logs.get(&log);
        let trim = m.map(|m| m.trim).unwrap_or_default();
        let last_before = m
            .into_iter()
            .flat_map(|m| m.records.keys())
            .filter(|l| **l > trim && ts_of(**l) < ts)
            .max()
            .map(|l| l.next())
            .unwrap_or(Lsn::OLDEST);
        last_before.max(trim.next())
    }
}

fn check_read(db: &LogsDb, model: &Model, log: u64, from: Lsn) -> Result<(), TestCaseError> {
    let got: Vec<ReadItem> = db
        .read(LogId(log), from, Lsn::MAX)
        .map(|r| r.unwrap())
        .collect();
    let mut want = Vec::new();
    if let Some(m) = model.logs.get(&log) {
        if m.trim > Lsn::INVALID && from <= m.trim {
            want.push(ReadItem::Trimmed { up_to: m.trim });
        }
        let start = from.max(m.trim.next());
        want.extend(
            m.records
                .range(start..)
                .map(|(_, r)| ReadItem::Record(r.expected())),
        );
    }
    prop_assert_eq!(got, want, "read of log {} from {}", log, from);
    Ok(())
}

fn check_meta(db: &LogsDb, model: &Model) -> Result<(), TestCaseError> {
    for (log, m) in &model.logs {
        let got = db.log_meta(LogId(*log));
        prop_assert_eq!(
            (got.seal, got.soft_seal, got.trim_point),
            (m.seal, m.soft_seal, m.trim),
            "log {}",
            log
        );
        prop_assert_eq!(&got.epoch_lng, &m.lng, "LNGs of log {}", log);
        let live = m.records.keys().any(|l| *l > m.trim);
        let size = db.data_size(LogId(*log), Lsn::OLDEST, Lsn::MAX);
        prop_assert_eq!(size > 0, live, "data_size {} of log {}", size, log);
    }
    Ok(())
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let config = LogsDbConfig {
        partition_size_bytes: 2048,
        ..LogsDbConfig::small_for_tests()
    };
    let mut db = Some(open(dir.path(), config.clone(), clock.clone()));
    let mut model = Model::default();
    for (i, step) in steps.into_iter().enumerate() {
        let d = db.as_ref().unwrap();
        match step {
            Step::Store(ws, durable) => {
                let records: Vec<LogRecord> = ws.iter().map(|w| to_record(w, i)).collect();
                let durability = if durable {
                    Durability::Durable
                } else {
                    Durability::Fast
                };
                let got = d.store_blocking(records.clone(), durability);
                match (got, model.store(records)) {
                    (Ok(()), Ok(())) => {}
                    (Err(LogsDbError::Preempted { seal, .. }), Err(want)) => {
                        prop_assert_eq!(seal, want)
                    }
                    (got, want) => prop_assert!(false, "store: db {:?}, model {:?}", got, want),
                }
            }
            Step::Burst(stores, durable) => {
                let durability = if durable {
                    Durability::Durable
                } else {
                    Durability::Fast
                };
                let mut queued = Vec::new();
                for (k, ws) in stores.iter().enumerate() {
                    // Distinct payloads per store, so the model sees which write won.
                    let records: Vec<LogRecord> =
                        ws.iter().map(|w| to_record(w, i * 16 + k)).collect();
                    let ticket = d
                        .submit_store_blocking(records.clone(), durability)
                        .unwrap();
                    queued.push((ticket, records));
                }
                // The writer applies queued requests in order: the model does the same.
                for (ticket, records) in queued {
                    match (ticket.wait(), model.store(records)) {
                        (Ok(()), Ok(())) => {}
                        (Err(LogsDbError::Preempted { seal, .. }), Err(want)) => {
                            prop_assert_eq!(seal, want)
                        }
                        (got, want) => {
                            prop_assert!(false, "burst store: db {:?}, model {:?}", got, want)
                        }
                    }
                }
            }
            Step::Seal { log, epoch } => {
                let m = model.logs.entry(log).or_default();
                let got = d.seal_blocking(LogId(log), Epoch(epoch));
                if Epoch(epoch) < m.seal {
                    prop_assert!(
                        matches!(got, Err(LogsDbError::Preempted { seal, .. }) if seal == m.seal),
                        "{:?}",
                        got
                    );
                } else {
                    prop_assert_eq!(got.unwrap(), Epoch(epoch));
                    m.seal = Epoch(epoch);
                }
            }
            Step::Trim { log, epoch, esn } => {
                let m = model.logs.entry(log).or_default();
                let got = d.trim_blocking(LogId(log), lsn(epoch, esn)).unwrap();
                prop_assert_eq!(got.advanced, lsn(epoch, esn) > m.trim);
                m.trim = m.trim.max(lsn(epoch, esn));
                prop_assert_eq!(got.trim_point, m.trim);
            }
            Step::Read { log, epoch, esn } => check_read(d, &model, log, lsn(epoch, esn))?,
            Step::FindTime { log, ts_offset } => {
                let ts = T0 + ts_offset;
                let strict = d
                    .find_time(LogId(log), ts, FindTimeAccuracy::Strict)
                    .unwrap();
                prop_assert_eq!(
                    strict,
                    model.find_time(log, ts),
                    "find_time(log {}, {})",
                    log,
                    ts
                );
                let approx = d
                    .find_time(LogId(log), ts, FindTimeAccuracy::Approximate)
                    .unwrap();
                let trim = model.logs.get(&log).map(|m| m.trim).unwrap_or_default();
                prop_assert!(
                    approx <= strict && approx > trim,
                    "approx {} strict {}",
                    approx,
                    strict
                );
            }
            Step::Roll => {
                d.roll_partition_blocking().unwrap();
            }
            Step::Retention => {
                let report = d.enforce_retention_blocking(BTreeMap::new()).unwrap();
                prop_assert!(report.trimmed.is_empty());
            }
            Step::Reopen => {
                db.take().unwrap().close().unwrap();
                db = Some(open(dir.path(), config.clone(), clock.clone()));
                prop_assert!(!db.as_ref().unwrap().open_report().unclean_shutdown);
            }
        }
        check_meta(db.as_ref().unwrap(), &model)?;
    }
    let d = db.as_ref().unwrap();
    for log in 1..3 {
        check_read(d, &model, log, Lsn::INVALID)?;
    }
    db.take().unwrap().close().unwrap();
    Ok(())
}

proptest! {
    // 64 cases by default (CI); `PROPTEST_CASES=N` runs more.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    })]

    #[test]
    fn logsdb_matches_model(steps in proptest::collection::vec(step(), 1..60)) {
        run(steps)?;
    }
}
