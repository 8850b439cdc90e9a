//! STOREs to one storage node, batched across appends while the node is busy.
//!
//! Coalescing (`append.rs`) batches the appends of *one* log. With many logs each holding a
//! few appends in flight, it finds little to batch, and every batch pays its own request to
//! each of its R storage nodes: a QUIC stream, a frame, a server task, a LogsDB request. So
//! the client keeps at most [`STORE_REQUESTS_PER_NODE`] store requests in flight per storage
//! node; a batch that finds them all busy waits, and when a request ends the batches waiting
//! for that node go out together as one `StoreMany` (bounded by `MAX_STORE_BATCHES`, the
//! records of one full batch and one frame). There is no timer: a batch to a node with a free
//! slot goes at once, alone, so an idle or lightly loaded client is not slowed down; batching
//! grows with the load, like group commit.
//!
//! Each batch keeps its own answer (the node answers every batch of a `StoreMany` as if it
//! came alone) and its own deadline: a batch whose caller gave up is dropped before it is
//! sent, and a caller stops waiting at its deadline.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_common::limits::FRAME_OVERHEAD_BYTES;
use tally_common::transport::{ClientProtocol, Connector, TransportError};
use tally_common::wire::StoreBatch;
use tally_common::wire::client::{ClientRequest, ClientResponse, MAX_STORE_BATCHES, StoreAnswer};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::appender::RECORD_OVERHEAD_BYTES;

/// Store requests one client keeps in flight per storage node before batches wait to go
/// out together. A few, so a node's writer threads and group commit stay busy; more only
/// makes the requests smaller.
pub(crate) const STORE_REQUESTS_PER_NODE: usize = 4;

/// What one batch's caller gets: the node's answer as if the batch had gone alone.
type Reply = Result<ClientResponse, TransportError>;

#[derive(Debug)]
struct Waiting {
    batch: StoreBatch,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

/// One storage node's requests in flight and the batches waiting for a slot.
#[derive(Debug, Default)]
struct NodeQueue {
    in_flight: usize,
    waiting: VecDeque<Waiting>,
}

/// The store requests of one client, per storage node. See the module documentation.
#[derive(Debug)]
pub(crate) struct StoreMux {
    connector: Arc<Connector<ClientProtocol>>,
    tracker: TaskTracker,
    nodes: Mutex<HashMap<SocketAddr, NodeQueue>>,
}

/// Frees a slot of `addr` when dropped (the call ended, or its caller gave up), handing it to
/// the batches waiting, if any.
struct Slot<'a> {
    mux: &'a Arc<StoreMux>,
    addr: SocketAddr,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.mux.release(self.addr);
    }
}

impl StoreMux {
    pub(crate) fn new(connector: Arc<Connector<ClientProtocol>>, tracker: TaskTracker) -> Self {
        StoreMux {
            connector,
            tracker,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    /// Batches waiting for a free slot, over every node (diagnostics and tests).
    pub(crate) fn waiting(&self) -> usize {
        self.nodes().values().map(|q| q.waiting.len()).sum()
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, NodeQueue>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores `batch` on the node at `addr` within `timeout`: alone if the node has a free
    /// slot, else with the other batches waiting for it. The answer is `StoreResult` or
    /// `Error`, as for a `Store` sent alone.
    pub(crate) async fn store(
        self: &Arc<Self>,
        addr: SocketAddr,
        batch: StoreBatch,
        timeout: Duration,
    ) -> Reply {
        let deadline = Instant::now() + timeout;
        // Ok: a slot is ours, send now; Err: wait for the batch's answer.
        let turn = {
            let mut nodes = self.nodes();
            let queue = nodes.entry(addr).or_default();
            if queue.in_flight < STORE_REQUESTS_PER_NODE {
                queue.in_flight += 1;
                Ok(batch)
            } else {
                let (reply, rx) = oneshot::channel();
                queue.waiting.push_back(Waiting {
                    batch,
                    deadline,
                    reply,
                });
                Err(rx)
            }
        };
        let batch = match turn {
            Ok(batch) => batch,
            Err(rx) => {
                return match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(reply)) => reply,
                    // Dropped unsent at its deadline (or the runtime is going away).
                    Ok(Err(_)) | Err(_) => Err(TransportError::Timeout(timeout)),
                };
            }
        };
        let _slot = Slot { mux: self, addr };
        self.connector
            .call(addr, &ClientRequest::Store(batch), timeout)
            .await
    }

    /// A request to `addr` ended: hand its slot to the batches waiting (sent together, by a
    /// task), or free it.
    fn release(self: &Arc<Self>, addr: SocketAddr) {
        let group = {
            let mut nodes = self.nodes();
            let Some(queue) = nodes.get_mut(&addr) else {
                return;
            };
            let group = take_group(&mut queue.waiting, self.connector.limits());
            if group.is_empty() {
                queue.in_flight = queue.in_flight.saturating_sub(1);
                if queue.in_flight == 0 && queue.waiting.is_empty() {
                    nodes.remove(&addr);
                }
                return;
            }
            group
        };
        let mux = self.clone();
        self.tracker.spawn(async move {
            let _slot = Slot { mux: &mux, addr };
            mux.send_group(addr, group).await;
        });
    }

    /// Sends `group` as one request and hands each batch its answer.
    async fn send_group(&self, addr: SocketAddr, group: Vec<Waiting>) {
        let now = Instant::now();
        let until = group.iter().map(|w| w.deadline).max().unwrap_or(now);
        let timeout = until
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        let (batches, replies): (Vec<StoreBatch>, Vec<oneshot::Sender<Reply>>) =
            group.into_iter().map(|w| (w.batch, w.reply)).unzip();
        if batches.len() == 1 {
            let batch = batches.into_iter().next().expect("one batch");
            let answer = self
                .connector
                .call(addr, &ClientRequest::Store(batch), timeout)
                .await;
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(answer);
            }
            return;
        }
        let sent = batches.len();
        let answer = self
            .connector
            .call(addr, &ClientRequest::StoreMany(batches), timeout)
            .await;
        match answer {
            Ok(ClientResponse::StoreResults(answers)) if answers.len() == sent => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(match answer {
                        StoreAnswer::Status(s) => ClientResponse::StoreResult(s),
                        StoreAnswer::Error(e) => ClientResponse::Error(e),
                    }));
                }
            }
            Ok(other) => {
                tracing::warn!(%addr, answer = ?other, sent, "unexpected answer to a StoreMany");
                for reply in replies {
                    let _ = reply.send(Ok(other.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(same_error(&e)));
                }
            }
        }
    }
}

/// The batches to send together from the front of `waiting`: skipping those whose caller
/// gave up, at most `MAX_STORE_BATCHES`, the records of one full batch and one frame (the
/// first batch always: it was valid alone).
fn take_group(
    waiting: &mut VecDeque<Waiting>,
    limits: &tally_common::limits::Limits,
) -> Vec<Waiting> {
    let max_records = limits.max_records_per_batch as usize;
    let max_bytes = limits.max_frame_bytes.saturating_sub(FRAME_OVERHEAD_BYTES);
    let (mut records, mut bytes) = (0usize, 0usize);
    let mut group = Vec::new();
    let now = Instant::now();
    while let Some(next) = waiting.front() {
        if next.reply.is_closed() || next.deadline <= now {
            waiting.pop_front();
            continue;
        }
        let n = next.batch.records.len();
        let b = next.batch.payload_bytes() + n * RECORD_OVERHEAD_BYTES + RECORD_OVERHEAD_BYTES;
        if !group.is_empty()
            && (group.len() == MAX_STORE_BATCHES
                || records + n > max_records
                || bytes + b > max_bytes)
        {
            break;
        }
        records += n;
        bytes += b;
        group.extend(waiting.pop_front());
    }
    group
}

/// An equivalent of `e` for another batch of the same request: the same kind where the
/// caller tells kinds apart (timeouts, silence, connecting, remote errors), else a lost
/// connection, which is at least as cautious ("may have been applied").
fn same_error(e: &TransportError) -> TransportError {
    match e {
        TransportError::Connect { addr, detail } => TransportError::Connect {
            addr: *addr,
            detail: detail.clone(),
        },
        TransportError::Timeout(d) => TransportError::Timeout(*d),
        TransportError::PeerSilent(d) => TransportError::PeerSilent(*d),
        TransportError::Remote(r) => TransportError::Remote(r.clone()),
        TransportError::NoAnswer => TransportError::NoAnswer,
        TransportError::Shutdown => TransportError::Shutdown,
        other => TransportError::ConnectionLost(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_common::limits::Limits;
    use tally_common::wire::StoreRecord;
    use tally_common::{Copyset, Durability, Epoch, Esn, LogId, Lsn, NodeId, RecordFlags};

    fn batch(log: u64, records: u32, payload: usize) -> StoreBatch {
        StoreBatch {
            log: LogId(log),
            copyset: Copyset::new(vec![NodeId(1)]).expect("copyset"),
            wave_or_seal: 1,
            flags: RecordFlags::NONE,
            durability: Durability::Durable,
            lng: Esn(0),
            records: (1..=records)
                .map(|i| StoreRecord {
                    lsn: Lsn::new(Epoch(1), Esn(i)),
                    timestamp_ms: 0,
                    payload_crc32: 0,
                    payload: vec![0; payload],
                })
                .collect(),
        }
    }

    fn waiting(b: StoreBatch) -> (Waiting, oneshot::Receiver<Reply>) {
        let (reply, rx) = oneshot::channel();
        let w = Waiting {
            batch: b,
            deadline: Instant::now() + Duration::from_secs(60),
            reply,
        };
        (w, rx)
    }

    #[tokio::test]
    async fn a_group_is_bounded_by_records_and_bytes_and_skips_abandoned_batches() {
        let limits = Limits {
            max_records_per_batch: 10,
            // Room for 100 KiB of batches besides the frame's own overhead.
            max_frame_bytes: FRAME_OVERHEAD_BYTES + 100 * 1024,
            ..Limits::default()
        };
        let mut queue = VecDeque::new();
        let mut keep = Vec::new();
        // An abandoned batch (its caller dropped the receiver) is skipped.
        let (w, rx) = waiting(batch(1, 4, 10));
        drop(rx);
        queue.push_back(w);
        for log in 2..=5 {
            let (w, rx) = waiting(batch(log, 4, 10));
            queue.push_back(w);
            keep.push(rx);
        }
        // 4 + 4 records fit in 10, a third batch does not.
        let group = take_group(&mut queue, &limits);
        let logs: Vec<u64> = group.iter().map(|w| w.batch.log.0).collect();
        assert_eq!(logs, [2, 3]);
        assert_eq!(queue.len(), 2);
        // Bytes: two batches of 60 KiB do not fit in one frame's room; each goes alone.
        let mut queue = VecDeque::new();
        let (w, _a) = waiting(batch(7, 1, 60 * 1024));
        queue.push_back(w);
        let (w, _b) = waiting(batch(8, 1, 60 * 1024));
        queue.push_back(w);
        assert_eq!(take_group(&mut queue, &limits).len(), 1);
        assert_eq!(take_group(&mut queue, &limits).len(), 1);
        assert!(take_group(&mut queue, &limits).is_empty());
    }

    #[test]
    fn a_shared_error_keeps_what_the_caller_decides_on() {
        let cases = [
            TransportError::Timeout(Duration::from_secs(1)),
            TransportError::PeerSilent(Duration::from_secs(1)),
            TransportError::NoAnswer,
            TransportError::ConnectionLost("x".into()),
            TransportError::FrameTooLarge { len: 1, max: 0 },
        ];
        for e in cases {
            let copy = same_error(&e);
            assert!(
                !e.may_have_been_applied() || copy.may_have_been_applied(),
                "{e}"
            );
            assert_eq!(
                std::mem::discriminant(&copy) == std::mem::discriminant(&e),
                !matches!(e, TransportError::FrameTooLarge { .. }),
                "{e}"
            );
        }
    }
}
