//! The decisions behind every metadata change, as pure functions of the value read.
//!
//! Each backend reads a log's metadata, calls one of these, and writes the result only if
//! the stored value has not changed since it was read (etcd `mod_revision`, a mutex in the
//! file and in-memory stores). A lost race re-reads and decides again, so all three stores
//! share one set of rules.

use tally_common::ids::{Epoch, LogId, Lsn, NodeId};
use tally_common::meta::{
    DataDirBinding, DataDirId, LogAttributes, LogMetadata, NodeInfo, NodeSetEntry, RecoveredEpoch,
};

use crate::nodeset::{self, SelectionError};
use crate::store::{ActivateOptions, Activation, EpochStoreError, Result};

/// The metadata of a freshly created log.
pub fn new_log(log: LogId, attributes: LogAttributes) -> Result<LogMetadata> {
    if log == LogId::INVALID {
        return Err(EpochStoreError::InvalidArgument(
            "log id 0 is invalid".into(),
        ));
    }
    attributes.validate()?;
    Ok(LogMetadata {
        next_epoch: Epoch::MIN,
        history: Vec::new(),
        last_clean_epoch: Epoch::INVALID,
        last_clean_tail: Lsn::INVALID,
        recovered: Vec::new(),
        attributes,
    })
}

/// Bumps `next_epoch` and picks the node set of the new epoch.
///
/// The node set is selected afresh from `nodes` and the log's attributes; a history entry is
/// appended only when the selection or the replication differs from the last entry. When too
/// few nodes are registered to select (e.g. during a full-cluster restart) the last node set
/// is kept; only a log without any history fails with `InsufficientNodes`.
pub fn activate(
    log: LogId,
    current: &LogMetadata,
    nodes: &[NodeInfo],
    options: &ActivateOptions,
) -> Result<(LogMetadata, Activation)> {
    if let Some(expected) = options.if_current
        && current.current_epoch() != expected
    {
        return Err(EpochStoreError::ConditionFailed {
            current: current.current_epoch(),
        });
    }
    let epoch = current.next_epoch;
    let next_epoch = epoch
        .next()
        .filter(|e| e.is_valid())
        .ok_or(EpochStoreError::EpochsExhausted { log })?;
    let replication = current.attributes.replication;
    let last = current.history.last();
    let node_set = match nodeset::select_node_set(log, nodes, &current.attributes) {
        Ok(set) => set,
        Err(SelectionError::InsufficientNodes { available, needed }) => match last {
            Some(entry) if entry.replication == replication => entry.node_set.clone(),
            _ => return Err(EpochStoreError::InsufficientNodes { available, needed }),
        },
    };
    let mut updated = current.clone();
    updated.next_epoch = next_epoch;
    let changed =
        !matches!(last, Some(e) if e.node_set == node_set && e.replication == replication);
    if changed {
        updated.history.push(NodeSetEntry {
            since: epoch,
            node_set,
            replication,
        });
    }
    let entry = updated
        .history
        .last()
        .cloned()
        .expect("history has an entry after activation");
    let activation = Activation {
        epoch,
        node_set: entry,
        node_set_changed: changed,
        metadata: updated.clone(),
    };
    Ok((updated, activation))
}

/// Moves the last clean epoch forward. `Ok(None)`: already there, nothing to write. With
/// `recovered` (what the recovery of `epoch` decided; it must name `epoch`), it is remembered in
/// [`LogMetadata::recovered`], which keeps the newest [`LogMetadata::MAX_RECOVERED`].
pub fn set_last_clean_epoch(
    current: &LogMetadata,
    epoch: Epoch,
    tail: Lsn,
    recovered: Option<RecoveredEpoch>,
) -> Result<Option<LogMetadata>> {
    if let Some(r) = recovered
        && (r.epoch != epoch || r.tail != tail || r.seal < epoch)
    {
        return Err(EpochStoreError::InvalidArgument(format!(
            "recovery outcome {r:?} does not describe epoch {epoch} with tail {tail}"
        )));
    }
    if epoch < current.last_clean_epoch {
        return Err(EpochStoreError::Stale {
            current: current.last_clean_epoch,
        });
    }
    if epoch == current.last_clean_epoch {
        return Ok(None);
    }
    if epoch > current.current_epoch() {
        return Err(EpochStoreError::InvalidArgument(format!(
            "last clean epoch {epoch} is beyond the current epoch {}",
            current.current_epoch()
        )));
    }
    if tail != Lsn::INVALID && tail.epoch() > epoch {
        return Err(EpochStoreError::InvalidArgument(format!(
            "tail {tail} is past the end of epoch {epoch}"
        )));
    }
    let mut updated = current.clone();
    updated.last_clean_epoch = epoch;
    updated.last_clean_tail = tail;
    if let Some(r) = recovered {
        // Epochs only grow here (the last clean epoch is monotone), so the list stays sorted.
        updated.recovered.retain(|known| known.epoch < epoch);
        updated.recovered.push(r);
        let excess = updated
            .recovered
            .len()
            .saturating_sub(LogMetadata::MAX_RECOVERED);
        updated.recovered.drain(..excess);
    }
    Ok(Some(updated))
}

/// A node's data-directory binding as the etcd and file stores keep it (JSON
/// `{"node": N, "data_dir": "<16 hex digits>"}`).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct DataDirRecord {
    pub node: NodeId,
    pub data_dir: DataDirId,
}

/// What binding data directory `dir` answers when `bound` is on record for the node (`None`:
/// nothing yet, so `dir` is to be bound now).
pub fn data_dir_binding(bound: Option<DataDirId>, dir: DataDirId) -> DataDirBinding {
    match bound {
        None => DataDirBinding::New,
        Some(b) if b == dir => DataDirBinding::Same,
        Some(b) => DataDirBinding::Other { bound: b },
    }
}

/// Replaces the attributes; they apply from the next activation.
pub fn set_attributes(current: &LogMetadata, attributes: LogAttributes) -> Result<LogMetadata> {
    attributes.validate()?;
    let mut updated = current.clone();
    updated.attributes = attributes;
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::ids::NodeId;
    use tally_common::meta::{Roles, StorageState};

    fn nodes(ids: &[u32]) -> Vec<NodeInfo> {
        ids.iter()
            .map(|&i| NodeInfo {
                id: NodeId(i),
                address: String::new(),
                roles: Roles {
                    sequencer: false,
                    storage: true,
                },
                location: String::new(),
                weight: 1,
                state: StorageState::ReadWrite,
                incarnation: 0,
            })
            .collect()
    }

    #[test]
    fn history_grows_only_when_the_selection_changes() {
        let log = LogId(1);
        let attrs = LogAttributes {
            replication: 2,
            ..LogAttributes::default()
        };
        let meta = new_log(log, attrs.clone()).unwrap();
        let opts = ActivateOptions::default();
        let (meta, a1) = activate(log, &meta, &nodes(&[1, 2, 3]), &opts).unwrap();
        assert_eq!((a1.epoch, a1.node_set_changed), (Epoch(1), true));
        let (meta, a2) = activate(log, &meta, &nodes(&[3, 2, 1]), &opts).unwrap();
        assert_eq!(
            (a2.epoch, a2.node_set_changed, meta.history.len()),
            (Epoch(2), false, 1)
        );
        // Too few nodes: keep the last node set rather than fail.
        let (meta, a3) = activate(log, &meta, &nodes(&[1]), &opts).unwrap();
        assert_eq!((a3.node_set_changed, a3.node_set.since), (false, Epoch(1)));
        let (meta, a4) = activate(log, &meta, &nodes(&[1, 2, 3, 4]), &opts).unwrap();
        assert_eq!(
            (a4.epoch, a4.node_set_changed, a4.node_set.since),
            (Epoch(4), true, Epoch(4))
        );
        assert_eq!(meta.node_set_for(Epoch(3)).unwrap().node_set.len(), 3);
        // Attribute changes apply at the next activation.
        let meta = set_attributes(
            &meta,
            LogAttributes {
                replication: 3,
                ..attrs
            },
        )
        .unwrap();
        assert_eq!(meta.history.last().unwrap().replication, 2);
        let (meta, a5) = activate(log, &meta, &nodes(&[1, 2, 3, 4]), &opts).unwrap();
        assert_eq!((a5.node_set.replication, a5.node_set_changed), (3, true));
        assert_eq!(meta.next_epoch, Epoch(6));
    }

    #[test]
    fn first_activation_needs_enough_nodes() {
        let meta = new_log(LogId(1), LogAttributes::default()).unwrap();
        let err = activate(
            LogId(1),
            &meta,
            &nodes(&[1, 2]),
            &ActivateOptions::default(),
        );
        assert_eq!(
            err.unwrap_err(),
            EpochStoreError::InsufficientNodes {
                available: 2,
                needed: 3
            }
        );
    }

    #[test]
    fn conditional_activation_and_exhaustion() {
        let log = LogId(9);
        let mut meta = new_log(log, LogAttributes::default()).unwrap();
        let ns = nodes(&[1, 2, 3]);
        let cond = ActivateOptions {
            if_current: Some(Epoch(5)),
        };
        assert_eq!(
            activate(log, &meta, &ns, &cond).unwrap_err(),
            EpochStoreError::ConditionFailed {
                current: Epoch::INVALID
            }
        );
        // The last epoch handed out is MAX − 1: `next_epoch` must stay a valid epoch.
        meta.next_epoch = Epoch::MAX.prev();
        let (meta, a) = activate(log, &meta, &ns, &ActivateOptions::default()).unwrap();
        assert_eq!(a.epoch, Epoch::MAX.prev());
        assert_eq!(
            activate(log, &meta, &ns, &ActivateOptions::default()).unwrap_err(),
            EpochStoreError::EpochsExhausted { log }
        );
    }

    #[test]
    fn last_clean_epoch_is_monotone() {
        let mut meta = new_log(LogId(1), LogAttributes::default()).unwrap();
        meta.next_epoch = Epoch(10);
        let meta = set_last_clean_epoch(&meta, Epoch(5), Lsn::INVALID, None)
            .unwrap()
            .unwrap();
        assert_eq!(
            set_last_clean_epoch(&meta, Epoch(5), Lsn::INVALID, None),
            Ok(None)
        );
        assert_eq!(
            set_last_clean_epoch(&meta, Epoch(4), Lsn::INVALID, None),
            Err(EpochStoreError::Stale { current: Epoch(5) })
        );
        assert!(matches!(
            set_last_clean_epoch(&meta, Epoch(10), Lsn::INVALID, None),
            Err(EpochStoreError::InvalidArgument(_))
        ));
    }

    #[test]
    fn recovery_outcomes_are_remembered_newest_last_and_bounded() {
        let mut meta = new_log(LogId(1), LogAttributes::default()).unwrap();
        meta.next_epoch = Epoch(1000);
        let outcome = |e: u32| RecoveredEpoch {
            epoch: Epoch(e),
            seal: Epoch(e + 1),
            lng: tally_common::Esn(3),
            tail: Lsn::new(Epoch(e), tally_common::Esn(9)),
            authoritative: true,
        };
        for e in 1..=(LogMetadata::MAX_RECOVERED as u32 + 10) {
            let o = outcome(e);
            meta = set_last_clean_epoch(&meta, Epoch(e), o.tail, Some(o))
                .unwrap()
                .unwrap();
        }
        assert_eq!(meta.recovered.len(), LogMetadata::MAX_RECOVERED);
        assert_eq!(meta.recovered[0].epoch, Epoch(11));
        let last = LogMetadata::MAX_RECOVERED as u32 + 10;
        assert_eq!(meta.recovered_epoch(Epoch(last)), Some(&outcome(last)));
        assert_eq!(meta.recovered_epoch(Epoch(10)), None);
        // An outcome must describe the epoch being recorded clean.
        let wrong = outcome(last + 5);
        assert!(matches!(
            set_last_clean_epoch(&meta, Epoch(last + 1), wrong.tail, Some(wrong)),
            Err(EpochStoreError::InvalidArgument(_))
        ));
    }
}
