//! The simulated epoch store: one log's metadata changed by the real update rules
//! (`tally_epochstore::update`), each request applied atomically (compare-and-swap semantics).

use std::collections::BTreeMap;

use tally_common::meta::{LogAttributes, LogMetadata, NodeInfo};
use tally_common::{Durability, Epoch, LogId, Lsn, RecoveredEpoch};
use tally_epochstore::{ActivateOptions, EpochStoreError, update};

use super::net::{EsReply, Time};

#[derive(Debug)]
pub(crate) struct EpochStoreSim {
    pub(crate) meta: LogMetadata,
    /// When each epoch became clean (its last clean epoch write committed).
    pub(crate) clean_at: BTreeMap<Epoch, Time>,
}

impl EpochStoreSim {
    pub(crate) fn new(log: LogId, replication: u8, durability: Durability) -> EpochStoreSim {
        let attributes = LogAttributes {
            replication,
            node_set_size: 0,
            backlog_secs: 0,
            durability,
            max_in_flight: 64,
        };
        EpochStoreSim {
            meta: update::new_log(log, attributes).expect("valid attributes"),
            clean_at: BTreeMap::new(),
        }
    }

    pub(crate) fn activate(
        &mut self,
        log: LogId,
        nodes: &[NodeInfo],
        if_current: Option<Epoch>,
    ) -> EsReply {
        match update::activate(log, &self.meta, nodes, &ActivateOptions { if_current }) {
            Ok((meta, activation)) => {
                self.meta = meta;
                EsReply::Activated(Box::new(activation))
            }
            Err(e) => EsReply::ActivateFailed(e),
        }
    }

    pub(crate) fn write_lce(
        &mut self,
        epoch: Epoch,
        tail: Lsn,
        outcome: Option<RecoveredEpoch>,
        now: Time,
    ) -> EsReply {
        match update::set_last_clean_epoch(&self.meta, epoch, tail, outcome) {
            Ok(Some(meta)) => {
                let before = self.meta.last_clean_epoch;
                self.meta = meta;
                for e in before.0 + 1..=epoch.0 {
                    self.clean_at.entry(Epoch(e)).or_insert(now);
                }
                EsReply::LceWritten { epoch }
            }
            Ok(None) => EsReply::LceWritten { epoch },
            Err(EpochStoreError::Stale { current }) => EsReply::LceFailed { epoch, current },
            Err(_) => EsReply::LceFailed {
                epoch,
                current: Epoch::INVALID,
            },
        }
    }
}
