//! Purging (DESIGN §7): a node that missed the recovery of an epoch deletes the copies that
//! recovery overruled before it acts on a release of a newer epoch.
//!
//! A release names the epoch `E` of the sequencer that sent it, and a sequencer releases only
//! once every epoch below its own is recovered. So the first release of `log` by the sequencer
//! of `E` that this node sees is the moment to *settle* the epochs below `E` here:
//!
//! 1. Raise the seal to `E − 1` (synced), so that a paused sequencer of an older epoch can no
//!    longer land a store here after the purge. Recovery sealed an f-majority at `E − 1`
//!    already; this node may not have been among them.
//! 2. Walk the copyset index (never payloads) of the epochs in between, past the node's release
//!    point and each epoch's local LNG: copies at or below either were complete (or settled
//!    when that release was applied), and recovery leaves them alone. Usually nothing is there
//!    and the epoch store is not asked at all.
//! 3. Otherwise read the log's record from the epoch store: with the last clean epoch it keeps
//!    what the recovery of each recent epoch decided ([`RecoveredEpoch`]: its seal, LNG, tail
//!    and whether the digest was authoritative). A copy that the recovery overruled
//!    ([`RecoveredEpoch::overrules`]: not written by that recovery, past the LNG, and either at
//!    or past the bridge, or under an authoritative recovery, which plugged a hole wherever it
//!    saw no copy) is deleted. Recovery wrote a full copyset of every record it kept, so no
//!    deletion loses a record; what it removes is a copy that would make readers disagree (a
//!    record where the others see a hole plug or a bridge).
//! 4. Remember `E` for the log (in memory: after a restart the walk of step 2 is repeated,
//!    which finds nothing that was purged already), then apply the release.
//!
//! If the epoch store cannot be read (within 2 s at most), the release of that log waits: the
//! sequencer re-broadcasts release points, and readers are served by the other nodes
//! meanwhile. Logs are settled independently; a release of a log already being settled waits
//! for the next broadcast rather than queueing. A copy
//! of an epoch whose decision the epoch store no longer remembers (more than
//! [`LogMetadata::MAX_RECOVERED`](tally_common::LogMetadata::MAX_RECOVERED) recoveries ago) is
//! kept, with a warning: nothing says it is wrong.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tally_common::{Epoch, Esn, LogId, Lsn, RecordFlags};

use super::StorageNode;
use crate::logsdb::{LogsDb, LogsDbError};

/// Why the epochs below a release could not be settled; the release waits.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PurgeError {
    #[error("LogsDB: {0}")]
    LogsDb(#[from] LogsDbError),
    #[error("epoch store: {0}")]
    EpochStore(String),
    #[error("epoch {epoch} holds copies here but the epoch store says only {clean} is clean")]
    NotRecovered { epoch: Epoch, clean: Epoch },
    #[error("index walk task failed")]
    Task,
    #[error("the epochs below are being settled by another release")]
    Busy,
}

/// Per node: up to which epoch each log is settled, and what purging did.
#[derive(Debug, Default)]
pub(crate) struct Purges {
    /// Per log: every epoch below this one is settled here.
    settled: Mutex<HashMap<LogId, Epoch>>,
    /// Logs being settled now: a second release of one waits for the next broadcast instead
    /// of queueing, and logs never wait for each other.
    running: Mutex<HashSet<LogId>>,
    /// Copies kept because the epoch store no longer remembers their epoch's recovery.
    undecided_copies: AtomicU64,
}

/// What purging has done on a node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeStats {
    pub purged_copies: u64,
    pub undecided_copies: u64,
}

impl Purges {
    fn settled(&self, log: LogId) -> Epoch {
        let settled = self.settled.lock().unwrap_or_else(|e| e.into_inner());
        settled.get(&log).copied().unwrap_or(Epoch::INVALID)
    }

    fn settle(&self, log: LogId, below: Epoch) {
        let mut settled = self.settled.lock().unwrap_or_else(|e| e.into_inner());
        let at = settled.entry(log).or_insert(Epoch::INVALID);
        *at = (*at).max(below);
    }

    /// Marks `log` as being settled; `None` if it already is.
    fn begin(&self, log: LogId) -> Option<Settling<'_>> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .insert(log)
            .then_some(Settling { purges: self, log })
    }

    pub(crate) fn stats(&self) -> PurgeStats {
        PurgeStats {
            purged_copies: 0,
            undecided_copies: self.undecided_copies.load(Ordering::Relaxed),
        }
    }
}

/// `log` is being settled until this is dropped.
struct Settling<'a> {
    purges: &'a Purges,
    log: LogId,
}

impl Drop for Settling<'_> {
    fn drop(&mut self) {
        let mut running = self
            .purges
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        running.remove(&self.log);
    }
}

/// A copy that a missed recovery may have overruled.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    lsn: Lsn,
    flags: RecordFlags,
    wave_or_seal: u32,
    /// The node's own LNG of the copy's epoch.
    local_lng: Esn,
}

/// The copies of `log` in epochs `[from, below)` past this node's release point and past its
/// LNG of their epoch, from the copyset index. Two seeks per epoch that holds anything;
/// payloads are never read. Copies at or below the release point are complete records, or
/// were settled when that release was applied.
fn candidates(
    db: &LogsDb,
    log: LogId,
    from: Epoch,
    below: Epoch,
) -> Result<Vec<Candidate>, LogsDbError> {
    let mut found = Vec::new();
    let Some(last) = below.0.checked_sub(1).map(Epoch) else {
        return Ok(found);
    };
    if from > last {
        return Ok(found);
    }
    let meta = db.log_meta(log);
    let lngs = meta.epoch_lng;
    let until = Lsn::epoch_end(last);
    let mut cursor = Lsn::epoch_start(from.max(Epoch(1))).max(meta.last_released.next());
    while cursor <= until {
        let first = match db.copysets(log, cursor, until).next() {
            None => break,
            Some(Ok(e)) => e.lsn,
            Some(Err(LogsDbError::Corrupt { lsn, .. })) => lsn,
            Some(Err(e)) => return Err(e),
        };
        let epoch = first.epoch();
        let local_lng = lngs.get(&epoch).copied().unwrap_or(Esn::INVALID);
        let start = match local_lng.next() {
            Some(esn) => Lsn::new(epoch, esn).max(cursor),
            None => Lsn::epoch_end(epoch).max(cursor),
        };
        for entry in db.copysets(log, start, Lsn::epoch_end(epoch)) {
            match entry {
                Ok(e) if e.lsn.esn() > local_lng => found.push(Candidate {
                    lsn: e.lsn,
                    flags: e.flags,
                    wave_or_seal: e.wave_or_seal,
                    local_lng,
                }),
                Ok(_) => {}
                // A damaged index entry: the copy's write metadata is unknown, so it counts
                // as not written by recovery (deleting it never loses a kept record).
                Err(LogsDbError::Corrupt { lsn, .. }) => found.push(Candidate {
                    lsn,
                    flags: RecordFlags::NONE,
                    wave_or_seal: 0,
                    local_lng,
                }),
                Err(e) => return Err(e),
            }
        }
        match epoch.next() {
            Some(next) if next < below => cursor = Lsn::epoch_start(next),
            _ => break,
        }
    }
    Ok(found)
}

impl StorageNode {
    /// What purging has done on this node.
    pub fn purge_stats(&self) -> PurgeStats {
        PurgeStats {
            // The metric is the one count of purged copies (per node: each node has its own).
            purged_copies: self.config.metrics.purged_copies.get(),
            ..self.purges.stats()
        }
    }

    /// Settles every epoch of `log` below `epoch` (the epoch of a sequencer that released
    /// something of `log`): see the module notes. Cheap when already settled.
    pub(crate) async fn settle_below(&self, log: LogId, epoch: Epoch) -> Result<(), PurgeError> {
        if self.purges.settled(log) >= epoch {
            return Ok(());
        }
        let _settling = self.purges.begin(log).ok_or(PurgeError::Busy)?;
        let from = self.purges.settled(log);
        if from >= epoch {
            return Ok(());
        }
        let last = epoch.prev();
        if last.is_valid() {
            let meta = self.logsdb.log_meta(log);
            if meta.seal.max(meta.soft_seal) < last {
                match self.logsdb.seal(log, last).await {
                    Ok(_) | Err(LogsDbError::Preempted { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let db = self.logsdb.clone();
        let found = tokio::task::spawn_blocking(move || candidates(&db, log, from, epoch))
            .await
            .map_err(|_| PurgeError::Task)??;
        if !found.is_empty() {
            self.purge(log, &found).await?;
        }
        self.purges.settle(log, epoch);
        Ok(())
    }

    /// Deletes the copies among `found` that the recoveries recorded in the epoch store
    /// overruled.
    async fn purge(&self, log: LogId, found: &[Candidate]) -> Result<(), PurgeError> {
        // Short: the release of this log waits meanwhile (the sequencer sends it again).
        let timeout = self.config.epoch_store_timeout.min(Duration::from_secs(2));
        let meta = match tokio::time::timeout(timeout, self.store.get_log(log)).await {
            Ok(Ok(meta)) => meta,
            Ok(Err(e)) => return Err(PurgeError::EpochStore(e.to_string())),
            Err(_) => {
                return Err(PurgeError::EpochStore(format!(
                    "no answer within {timeout:?}"
                )));
            }
        };
        let mut doomed = Vec::new();
        let mut undecided = 0u64;
        for c in found {
            let epoch = c.lsn.epoch();
            if epoch > meta.last_clean_epoch {
                return Err(PurgeError::NotRecovered {
                    epoch,
                    clean: meta.last_clean_epoch,
                });
            }
            match meta.recovered_epoch(epoch) {
                Some(r) => {
                    if r.overrules(c.lsn, c.flags, c.wave_or_seal, c.local_lng) {
                        doomed.push(c.lsn);
                    }
                }
                None => undecided += 1,
            }
        }
        if undecided > 0 {
            self.purges
                .undecided_copies
                .fetch_add(undecided, Ordering::Relaxed);
            tracing::warn!(%log, undecided,
                "copies of recovered epochs kept: the epoch store no longer says what their recovery decided");
        }
        if doomed.is_empty() {
            return Ok(());
        }
        self.logsdb.remove_copies(log, &doomed).await?;
        self.config
            .metrics
            .purged_copies
            .inc_by(doomed.len() as u64);
        tracing::info!(%log, purged = doomed.len(), first = %doomed[0],
            "purged copies overruled by a recovery this node missed");
        Ok(())
    }
}
