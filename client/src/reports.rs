//! Completion reports (`ReportStored`) per sequencer, batched while one is on its way.
//!
//! Every appended batch ends with a report to the sequencer that granted it (in the
//! background: the append has already returned). With many logs each completing small
//! batches, that is one request per batch. So the client keeps at most
//! [`REPORTS_PER_SEQUENCER`] report requests in flight per sequencer; reports that complete
//! meanwhile wait and go out together as one `ReportStoredMany` when a request ends. No
//! timer: a report to an idle sequencer goes at once. At most [`MAX_WAITING`] reports wait per
//! sequencer (an unreachable one); beyond that they are dropped, as a failed report would be
//! — the sequencer settles unreported LSNs on its own (abandoned LSNs, recovery).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tally_common::transport::{ClientProtocol, Connector};
use tally_common::wire::client::{ClientRequest, ClientResponse, MAX_REPORTS, StoredReport};
use tokio_util::task::TaskTracker;

/// Report requests in flight per sequencer before reports wait to go out together.
pub(crate) const REPORTS_PER_SEQUENCER: usize = 2;

/// Most reports waiting per sequencer.
const MAX_WAITING: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Queue {
    in_flight: usize,
    waiting: Vec<StoredReport>,
}

/// The completion reports of one client, per sequencer. See the module documentation.
#[derive(Debug)]
pub(crate) struct Reports {
    connector: Arc<Connector<ClientProtocol>>,
    tracker: TaskTracker,
    timeout: Duration,
    queues: Mutex<HashMap<SocketAddr, Queue>>,
}

impl Reports {
    pub(crate) fn new(
        connector: Arc<Connector<ClientProtocol>>,
        tracker: TaskTracker,
        timeout: Duration,
    ) -> Self {
        Reports {
            connector,
            tracker,
            timeout,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Reports waiting for a free slot, over every sequencer (diagnostics and tests).
    pub(crate) fn waiting(&self) -> usize {
        self.queues().values().map(|q| q.waiting.len()).sum()
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Queue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `report` to the sequencer at `addr` in the background: at once if a slot is
    /// free, else with the reports waiting when one ends.
    pub(crate) fn send(self: &Arc<Self>, addr: SocketAddr, report: StoredReport) {
        {
            let mut queues = self.queues();
            let queue = queues.entry(addr).or_default();
            if queue.in_flight >= REPORTS_PER_SEQUENCER {
                if queue.waiting.len() < MAX_WAITING {
                    queue.waiting.push(report);
                } else {
                    tracing::debug!(%addr, log = %report.log, "too many reports waiting; dropped");
                }
                return;
            }
            queue.in_flight += 1;
        }
        let reports = self.clone();
        self.tracker.spawn(async move {
            let mut group = vec![report];
            loop {
                reports.send_now(addr, group).await;
                let mut queues = reports.queues();
                let Some(queue) = queues.get_mut(&addr) else {
                    return;
                };
                if queue.waiting.is_empty() {
                    queue.in_flight -= 1;
                    if queue.in_flight == 0 {
                        queues.remove(&addr);
                    }
                    return;
                }
                let take = queue.waiting.len().min(MAX_REPORTS);
                group = queue.waiting.drain(..take).collect();
            }
        });
    }

    async fn send_now(&self, addr: SocketAddr, mut group: Vec<StoredReport>) {
        let request = if group.len() == 1 {
            let r = group.pop().expect("one report");
            ClientRequest::ReportStored {
                log: r.log,
                first: r.first,
                count: r.count,
                copyset: r.copyset,
                wave: r.wave,
            }
        } else {
            ClientRequest::ReportStoredMany(group)
        };
        match self.connector.call(addr, &request, self.timeout).await {
            Ok(ClientResponse::Ack) => {}
            other => tracing::debug!(%addr, answer = ?other, "report not applied"),
        }
    }
}
