//! [`MemoryEpochStore`]: the in-memory epoch store for unit tests and the simulator.
//!
//! All logs live in one mutex-guarded map, so every read-modify-write is trivially atomic.
//! Membership leases lapse by tokio time, exactly as in the other stores, so the same
//! conformance suite applies. Cloning shares the same state.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_common::ids::{Epoch, LogId, Lsn, NodeId};
use tally_common::meta::{DataDirBinding, DataDirId, LogAttributes, LogMetadata, NodeInfo};

use crate::members::LocalMembership;
use crate::store::{
    ActivateOptions, Activation, BoxFuture, EpochStore, EpochStoreError, NodeLease, NodeWatch,
    Result,
};
use crate::update;

/// The in-memory epoch store.
#[derive(Clone, Debug, Default)]
pub struct MemoryEpochStore {
    logs: Arc<Mutex<BTreeMap<LogId, LogMetadata>>>,
    data_dirs: Arc<Mutex<BTreeMap<NodeId, DataDirId>>>,
    members: LocalMembership,
}

impl MemoryEpochStore {
    pub fn new() -> MemoryEpochStore {
        MemoryEpochStore::default()
    }

    fn with_log<T>(&self, log: LogId, f: impl FnOnce(&mut LogMetadata) -> Result<T>) -> Result<T> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let meta = logs
            .get_mut(&log)
            .ok_or(EpochStoreError::NotFound { log })?;
        f(meta)
    }
}

impl EpochStore for MemoryEpochStore {
    fn create_log(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            let meta = update::new_log(log, attributes)?;
            let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
            if logs.contains_key(&log) {
                return Err(EpochStoreError::AlreadyExists { log });
            }
            logs.insert(log, meta.clone());
            Ok(meta)
        })
    }

    fn get_log(&self, log: LogId) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move { self.with_log(log, |m| Ok(m.clone())) })
    }

    fn list_logs(&self) -> BoxFuture<'_, Result<BTreeMap<LogId, LogMetadata>>> {
        Box::pin(async move { Ok(self.logs.lock().unwrap_or_else(|e| e.into_inner()).clone()) })
    }

    fn update_attributes(
        &self,
        log: LogId,
        attributes: LogAttributes,
    ) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            self.with_log(log, |m| {
                *m = update::set_attributes(m, attributes)?;
                Ok(m.clone())
            })
        })
    }

    fn activate(&self, log: LogId, options: ActivateOptions) -> BoxFuture<'_, Result<Activation>> {
        Box::pin(async move {
            let nodes = self.members.list();
            self.with_log(log, |m| {
                let (updated, activation) = update::activate(log, m, &nodes, &options)?;
                *m = updated;
                Ok(activation)
            })
        })
    }

    fn set_last_clean_epoch(
        &self,
        log: LogId,
        epoch: Epoch,
        tail: Lsn,
        recovered: Option<tally_common::RecoveredEpoch>,
    ) -> BoxFuture<'_, Result<LogMetadata>> {
        Box::pin(async move {
            self.with_log(log, |m| {
                if let Some(updated) = update::set_last_clean_epoch(m, epoch, tail, recovered)? {
                    *m = updated;
                }
                Ok(m.clone())
            })
        })
    }

    fn register_node(&self, info: NodeInfo, ttl: Duration) -> BoxFuture<'_, Result<NodeLease>> {
        Box::pin(async move { self.members.register(info, ttl) })
    }

    fn list_nodes(&self) -> BoxFuture<'_, Result<Vec<NodeInfo>>> {
        Box::pin(async move { Ok(self.members.list()) })
    }

    fn watch_nodes(&self) -> BoxFuture<'_, Result<NodeWatch>> {
        Box::pin(async move { Ok(self.members.watch()) })
    }

    fn bind_data_dir(&self, node: NodeId, dir: DataDirId) -> BoxFuture<'_, Result<DataDirBinding>> {
        Box::pin(async move {
            let mut dirs = self.data_dirs.lock().unwrap_or_else(|e| e.into_inner());
            let answer = update::data_dir_binding(dirs.get(&node).copied(), dir);
            if answer == DataDirBinding::New {
                dirs.insert(node, dir);
            }
            Ok(answer)
        })
    }
}
