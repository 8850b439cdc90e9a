//! Opening support: reading the whole `meta` column family into memory, making the
//! partition list agree with the column families after a crash, and bringing directory
//! entries that lag behind their records (persisted lazily by the writer) up to date.

use std::collections::{BTreeSet, HashMap};

use rocksdb::{IteratorMode, ReadOptions, WriteBatch};
use tally_common::{Epoch, Esn, LogId, Lsn};

use super::Db;
use super::directory::{DirEntry, Directory, PartitionId, PartitionInfo};
use super::error::{CorruptKind, LogsDbError};
use super::keys::{self, DATA_TAG, MetaTag, be_u32, be_u64};
use super::log_meta::LogMeta;
use super::shared::{META_CF, sync_write_opts};
use super::value;

/// What `load_meta` read: the directory, per-log metadata, the run state, the schema version
/// and the partitions with a directory lag mark.
pub(crate) type Loaded = (
    Directory,
    HashMap<LogId, LogMeta>,
    Option<(bool, bool)>,
    Option<u32>,
    BTreeSet<PartitionId>,
);

/// Reads the whole `meta` column family into memory.
pub(crate) fn load_meta(db: &Db) -> Result<Loaded, LogsDbError> {
    let cf = db
        .cf_handle(META_CF)
        .expect("meta column family is opened with the database");
    let mut dir = Directory::default();
    let mut logs: HashMap<LogId, LogMeta> = HashMap::new();
    let mut run_state = None;
    let mut schema = None;
    let mut lagging = BTreeSet::new();
    for item in db.iterator_cf(&cf, IteratorMode::Start) {
        let (k, v) = item?;
        let bad = |what| LogsDbError::CorruptMeta(CorruptKind::Meta(what));
        let Some(tag) = k.first().and_then(|b| MetaTag::from_u8(*b)) else {
            return Err(bad("unknown key tag (written by a newer version?)"));
        };
        let log = || be_u64(&k, 1).map(LogId).ok_or_else(|| bad("key"));
        let v64 = || {
            be_u64(&v, 0)
                .filter(|_| v.len() == 8)
                .ok_or_else(|| bad("u64 value"))
        };
        let v32 = || {
            be_u32(&v, 0)
                .filter(|_| v.len() == 4)
                .ok_or_else(|| bad("u32 value"))
        };
        match tag {
            MetaTag::Schema => schema = Some(v32()?),
            MetaTag::RunState => {
                if v.len() != 2 {
                    return Err(bad("run state"));
                }
                run_state = Some((v[0] == 1, v[1] == 1));
            }
            MetaTag::Partition => {
                let pid = PartitionId(be_u64(&k, 1).ok_or_else(|| bad("partition key"))?);
                dir.partitions.insert(
                    pid,
                    PartitionInfo {
                        id: pid,
                        created_ms: v64()?,
                        bytes: 0,
                    },
                );
            }
            MetaTag::Directory => {
                let pid = PartitionId(be_u64(&k, 9).ok_or_else(|| bad("directory key"))?);
                let e = DirEntry::decode(&v).map_err(LogsDbError::CorruptMeta)?;
                dir.entries.entry(log()?).or_default().insert(pid, e);
            }
            MetaTag::TrimPoint => logs.entry(log()?).or_default().trim_point = Lsn(v64()?),
            MetaTag::Seal => logs.entry(log()?).or_default().seal = Epoch(v32()?),
            MetaTag::SoftSeal => logs.entry(log()?).or_default().soft_seal = Epoch(v32()?),
            MetaTag::LastReleased => logs.entry(log()?).or_default().last_released = Lsn(v64()?),
            MetaTag::LastCleanEpoch => {
                logs.entry(log()?).or_default().last_clean_epoch = Epoch(v32()?)
            }
            MetaTag::EpochLng => {
                let epoch = Epoch(be_u32(&k, 9).ok_or_else(|| bad("epoch LNG key"))?);
                logs.entry(log()?)
                    .or_default()
                    .epoch_lng
                    .insert(epoch, Esn(v32()?));
            }
            MetaTag::DirectoryLag => {
                if k.len() != 9 || !v.is_empty() {
                    return Err(bad("directory lag mark"));
                }
                lagging.insert(PartitionId(
                    be_u64(&k, 1).ok_or_else(|| bad("directory lag key"))?,
                ));
            }
        }
    }
    Ok((dir, logs, run_state, schema, lagging))
}

/// Brings the directory entries of the partitions in `lagging` up to their records, then
/// persists them and deletes the lag marks (synced). The writer persists an entry's upward
/// growth (last LSN, maximum timestamp, bytes) lazily, so after a crash an entry may end below
/// the records of its log in its partition; every record above the persisted last LSN is
/// read once here (at most a few dozen group commits' worth per entry). Returns how many
/// entries moved.
pub(crate) fn repair_lagging_directory(
    db: &Db,
    dir: &mut Directory,
    lagging: &BTreeSet<PartitionId>,
) -> Result<usize, LogsDbError> {
    if lagging.is_empty() {
        return Ok(0);
    }
    let meta_cf = db
        .cf_handle(META_CF)
        .expect("meta column family is opened with the database");
    let mut wb = WriteBatch::default();
    let mut repaired = 0;
    for &pid in lagging {
        wb.delete_cf(&meta_cf, keys::directory_lag_key(pid));
        if !dir.partitions.contains_key(&pid) {
            continue;
        }
        let Some(cf) = db.cf_handle(&pid.cf_name()) else {
            continue;
        };
        let mut added_bytes = 0u64;
        for (&log, entries) in dir.entries.iter_mut() {
            let Some(e) = entries.get_mut(&pid) else {
                continue;
            };
            if e.last_lsn == Lsn::MAX {
                continue;
            }
            let mut opts = ReadOptions::default();
            opts.set_iterate_upper_bound(keys::record_upper_bound(DATA_TAG, log, Lsn::MAX));
            let mut it = db.raw_iterator_cf_opt(&cf, opts);
            it.seek(keys::record_key(DATA_TAG, log, e.last_lsn.next()));
            let before = *e;
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let Some((_, _, lsn)) = keys::parse_record_key(k) else {
                    return Err(LogsDbError::CorruptMeta(CorruptKind::Key));
                };
                e.last_lsn = e.last_lsn.max(lsn);
                let mut bytes = 2 * keys::RECORD_KEY_LEN + v.len();
                match value::decode(log, lsn, v) {
                    Ok(sv) => {
                        let ts = sv.record.header.timestamp_ms;
                        e.max_timestamp_ms = e.max_timestamp_ms.max(ts);
                        bytes += value::encode_csi(&sv.record.header).len();
                    }
                    Err(kind) => {
                        tracing::warn!(log = log.0, %lsn, %kind, "corrupt record while repairing the directory");
                    }
                }
                e.bytes = e.bytes.saturating_add(bytes as u64);
                added_bytes = added_bytes.saturating_add(bytes as u64);
                it.next();
            }
            it.status()?;
            if *e != before {
                wb.put_cf(&meta_cf, keys::directory_key(log, pid), e.encode());
                repaired += 1;
            }
        }
        if let Some(info) = dir.partitions.get_mut(&pid) {
            info.bytes = info.bytes.saturating_add(added_bytes);
        }
    }
    db.write_opt(wb, &sync_write_opts())?;
    if repaired > 0 {
        tracing::info!(
            entries = repaired,
            "repaired directory entries after an unclean shutdown"
        );
    }
    Ok(repaired)
}

/// Makes the partition list and the column families agree after a crash between creating (or
/// dropping) a column family and recording it: a column family nobody lists was being created
/// and is empty; a listed partition without a column family was being dropped.
pub(crate) fn reconcile_partitions(
    db: &Db,
    dir: &mut Directory,
    cf_partitions: &[PartitionId],
) -> Result<(), LogsDbError> {
    for pid in cf_partitions {
        if !dir.partitions.contains_key(pid) {
            tracing::warn!(partition = %pid, "dropping an unlisted partition");
            db.drop_cf(&pid.cf_name())?;
        }
    }
    let missing: Vec<PartitionId> = dir
        .partitions
        .keys()
        .filter(|p| !cf_partitions.contains(p))
        .copied()
        .collect();
    if !missing.is_empty() {
        let cf = db
            .cf_handle(META_CF)
            .expect("meta column family is opened with the database");
        let mut wb = WriteBatch::default();
        for pid in &missing {
            tracing::warn!(partition = %pid, "forgetting a partition whose column family is gone");
            wb.delete_cf(&cf, keys::partition_key(*pid));
            for (log, m) in &dir.entries {
                if m.contains_key(pid) {
                    wb.delete_cf(&cf, keys::directory_key(*log, *pid));
                }
            }
        }
        db.write_opt(wb, &sync_write_opts())?;
        for pid in missing {
            dir.remove_partition(pid);
        }
    }
    // Directory entries of partitions that are not listed cannot be read; drop them too.
    let listed: Vec<PartitionId> = dir.partitions.keys().copied().collect();
    dir.entries.retain(|_, m| {
        m.retain(|p, _| listed.contains(p));
        !m.is_empty()
    });
    let sums: Vec<(PartitionId, u64)> = listed
        .iter()
        .map(|p| {
            (
                *p,
                dir.entries
                    .values()
                    .filter_map(|m| m.get(p))
                    .map(|e| e.bytes)
                    .sum(),
            )
        })
        .collect();
    for (p, bytes) in sums {
        if let Some(info) = dir.partitions.get_mut(&p) {
            info.bytes = bytes;
        }
    }
    Ok(())
}
