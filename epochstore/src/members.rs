//! In-process node membership with leases that lapse by (tokio) time, shared by the
//! in-memory and the file store. One machine, one process: nothing here survives a restart,
//! which is right for membership (nodes register again when they start).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_common::ids::NodeId;
use tally_common::meta::NodeInfo;
use tokio::sync::mpsc;

use crate::store::{
    EpochStoreError, LeaseCommand, MembershipEvent, NodeLease, NodeWatch, Result, WATCH_BUFFER,
};

#[derive(Debug, Default)]
struct Inner {
    /// Registered nodes and the lease each record is bound to.
    nodes: BTreeMap<NodeId, (NodeInfo, u64)>,
    next_lease: u64,
    watchers: Vec<mpsc::Sender<MembershipEvent>>,
}

impl Inner {
    fn notify(&mut self, event: MembershipEvent) {
        // A watcher that is gone or too far behind is dropped; its receiver then ends.
        self.watchers.retain(|w| w.try_send(event.clone()).is_ok());
    }

    /// Removes `node` if its record is still bound to `lease` (a newer registration of the
    /// same id is left alone).
    fn remove(&mut self, node: NodeId, lease: u64) {
        if matches!(self.nodes.get(&node), Some((_, l)) if *l == lease) {
            self.nodes.remove(&node);
            self.notify(MembershipEvent::Left(node));
        }
    }
}

/// In-process membership. Cloning shares the same members.
#[derive(Clone, Debug, Default)]
pub(crate) struct LocalMembership {
    inner: Arc<Mutex<Inner>>,
}

impl LocalMembership {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated; keep serving.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn list(&self) -> Vec<NodeInfo> {
        self.lock().nodes.values().map(|(n, _)| n.clone()).collect()
    }

    pub(crate) fn watch(&self) -> NodeWatch {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let mut inner = self.lock();
        inner.watchers.push(tx);
        NodeWatch {
            initial: inner.nodes.values().map(|(n, _)| n.clone()).collect(),
            events: rx,
        }
    }

    /// Registers `info` and spawns the lease task. Must run inside a tokio runtime.
    pub(crate) fn register(&self, info: NodeInfo, ttl: Duration) -> Result<NodeLease> {
        if ttl.is_zero() {
            return Err(EpochStoreError::InvalidArgument(
                "lease ttl must be positive".into(),
            ));
        }
        let node = info.id;
        let lease = {
            let mut inner = self.lock();
            inner.next_lease += 1;
            let lease = inner.next_lease;
            let event = if inner.nodes.contains_key(&node) {
                MembershipEvent::Updated(info.clone())
            } else {
                MembershipEvent::Joined(info.clone())
            };
            inner.nodes.insert(node, (info, lease));
            inner.notify(event);
            lease
        };
        let (tx, mut rx) = mpsc::channel(8);
        let members = self.clone();
        // In process the keep-alive cannot fail, so the task only has to wait for commands;
        // the lease lapses `ttl` after the keep-alive stops (abandon).
        let task = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Some(LeaseCommand::Update(info, reply)) => {
                        let mut inner = members.lock();
                        let result = match inner.nodes.get_mut(&node) {
                            Some((current, l)) if *l == lease => {
                                *current = info.clone();
                                inner.notify(MembershipEvent::Updated(info));
                                Ok(())
                            }
                            _ => Err(EpochStoreError::NodeNotRegistered { node }),
                        };
                        let _ = reply.send(result);
                    }
                    Some(LeaseCommand::Deregister(reply)) => {
                        members.lock().remove(node, lease);
                        let _ = reply.send(Ok(()));
                        return;
                    }
                    Some(LeaseCommand::Abandon(reply)) => {
                        let _ = reply.send(());
                        tokio::time::sleep(ttl).await;
                        members.lock().remove(node, lease);
                        return;
                    }
                    None => {
                        members.lock().remove(node, lease);
                        return;
                    }
                }
            }
        });
        Ok(NodeLease::new(node, ttl, tx, task))
    }
}
