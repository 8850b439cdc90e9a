//! [`ReleaseBroadcaster`]: sends release points to storage nodes, batched per node (DESIGN §5).
//!
//! Producers ([`ReleaseBroadcaster::enqueue`]) merge `(log, lsn)` into a per-node pending map,
//! keeping the highest LSN per log, and wake the broadcaster. The broadcaster waits
//! `batch_interval` to gather more, then sends each node with something pending one
//! `NodeRequest::Release` (split at `MAX_RELEASES`), concurrently, each call under its own
//! timeout. A node has at most one send in flight: while it is slow or unreachable its later
//! releases merge into its pending map (so memory is bounded by nodes × logs) and other nodes
//! are not held up. A failed send is dropped, not retried: every log's sequencer re-broadcasts
//! its release point periodically (`SequencerTiming::release_rebroadcast`), which is also how
//! idle or restarted nodes learn it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_common::transport::{Connector, NodeProtocol};
use tally_common::wire::node::{MAX_RELEASES, NodeRequest, NodeResponse, Release};
use tally_common::{Epoch, LogId, Lsn, NodeId};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::placement::Membership;

#[derive(Debug, Default)]
struct NodeQueue {
    /// Per log: the release point and the epoch of the sequencer that released it.
    pending: BTreeMap<LogId, (Lsn, Epoch)>,
    in_flight: bool,
}

/// Batches and sends release points.
#[derive(Debug)]
pub struct ReleaseBroadcaster {
    me: NodeId,
    queues: Mutex<HashMap<NodeId, NodeQueue>>,
    wake: Notify,
    batch_interval: Duration,
    timeout: Duration,
}

impl ReleaseBroadcaster {
    pub fn new(me: NodeId, batch_interval: Duration, timeout: Duration) -> ReleaseBroadcaster {
        ReleaseBroadcaster {
            me,
            queues: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            batch_interval,
            timeout,
        }
    }

    /// Queues `lsn`, released by the sequencer of `epoch`, as the release point of `log` for
    /// every node of `targets`.
    pub fn enqueue(&self, log: LogId, lsn: Lsn, epoch: Epoch, targets: &[NodeId]) {
        {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            for node in targets {
                let slot = queues
                    .entry(*node)
                    .or_default()
                    .pending
                    .entry(log)
                    .or_default();
                *slot = (slot.0.max(lsn), slot.1.max(epoch));
            }
        }
        self.wake.notify_one();
    }

    /// Sends batches until `shutdown`. Sends run on `tracker`.
    pub async fn run(
        self: Arc<Self>,
        connector: Arc<Connector<NodeProtocol>>,
        membership: Arc<Membership>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            // Gather what arrives in the next few ms into the same batches.
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(self.batch_interval) => {}
            }
            for (node, releases) in self.take_batches() {
                let this = self.clone();
                let connector = connector.clone();
                let membership = membership.clone();
                tracker.spawn(async move {
                    this.send(node, releases, &connector, &membership).await;
                    this.sent(node);
                });
            }
        }
    }

    /// Takes the pending releases of every node without a send in flight.
    fn take_batches(&self) -> Vec<(NodeId, Vec<Release>)> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let mut batches = Vec::new();
        for (node, queue) in queues.iter_mut() {
            if queue.in_flight || queue.pending.is_empty() {
                continue;
            }
            queue.in_flight = true;
            let releases = std::mem::take(&mut queue.pending)
                .into_iter()
                .map(|(log, (lsn, epoch))| Release { log, lsn, epoch })
                .collect();
            batches.push((*node, releases));
        }
        batches
    }

    /// The send to `node` finished: it may take its next batch.
    fn sent(&self, node: NodeId) {
        let more = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            match queues.get_mut(&node) {
                Some(queue) => {
                    queue.in_flight = false;
                    !queue.pending.is_empty()
                }
                None => false,
            }
        };
        if more {
            self.wake.notify_one();
        }
    }

    async fn send(
        &self,
        node: NodeId,
        releases: Vec<Release>,
        connector: &Connector<NodeProtocol>,
        membership: &Membership,
    ) {
        let Some(addr) = membership.address(node).await else {
            tracing::debug!(%node, "no address for storage node; its releases wait for the next broadcast");
            return;
        };
        for chunk in releases.chunks(MAX_RELEASES) {
            let req = NodeRequest::Release {
                sequencer: self.me,
                releases: chunk.to_vec(),
            };
            match connector.call(addr, &req, self.timeout).await {
                Ok(NodeResponse::Ack) => {}
                Ok(NodeResponse::Error(e)) => {
                    tracing::warn!(%node, error = %e, "storage node refused a release");
                }
                Ok(other) => {
                    tracing::warn!(%node, answer = ?other, "unexpected answer to a release");
                }
                Err(e) => {
                    tracing::debug!(%node, error = %e, "release not delivered; re-broadcast will retry");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::Esn;

    #[test]
    fn pending_keeps_the_highest_lsn_and_one_send_per_node() {
        let b =
            ReleaseBroadcaster::new(NodeId(1), Duration::from_millis(1), Duration::from_secs(1));
        let lsn = |n| Lsn::new(Epoch(1), Esn(n));
        b.enqueue(LogId(1), lsn(5), Epoch(1), &[NodeId(10), NodeId(11)]);
        b.enqueue(LogId(1), lsn(3), Epoch(2), &[NodeId(10)]);
        b.enqueue(LogId(2), lsn(1), Epoch(1), &[NodeId(10)]);
        let mut batches = b.take_batches();
        batches.sort_by_key(|(n, _)| *n);
        assert_eq!(batches.len(), 2);
        assert_eq!(
            batches[0].1,
            vec![
                // The highest point and the highest releasing epoch.
                Release {
                    log: LogId(1),
                    lsn: lsn(5),
                    epoch: Epoch(2),
                },
                Release {
                    log: LogId(2),
                    lsn: lsn(1),
                    epoch: Epoch(1),
                }
            ]
        );
        // Node 10 is in flight: new releases wait, merged.
        b.enqueue(LogId(1), lsn(7), Epoch(2), &[NodeId(10)]);
        b.enqueue(LogId(1), lsn(6), Epoch(3), &[NodeId(10)]);
        assert!(b.take_batches().is_empty());
        b.sent(NodeId(10));
        assert_eq!(
            b.take_batches(),
            vec![(
                NodeId(10),
                vec![Release {
                    log: LogId(1),
                    lsn: lsn(7),
                    epoch: Epoch(3),
                }]
            )]
        );
    }
}
