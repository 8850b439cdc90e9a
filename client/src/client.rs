//! [`Client`]: the application's handle on a Tally cluster (DESIGN §6, LogDevice's `Client`).
//! It owns one QUIC connector (one connection per node, shared by every call), the cluster
//! view, the graylist shared by every append, and the background tasks (cluster refresh,
//! completion reports, buffered-writer batches). Cloning is cheap; every clone is the same
//! client.
//!
//! `append` and `append_batch` queue behind the appends of their log that wait; concurrent
//! appends to one log are coalesced into batches that share one grant, one STORE per copyset
//! member and one completion report, each batch sequenced (`sequence`) and written in waves
//! (`append`) on a task of its own, or on the caller's task when it is that caller's append
//! alone. Their errors say whether the records may have been appended
//! ([`AppendError::certainly_not_appended`]).

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use std::collections::HashMap;

use tally_common::transport::{ClientProtocol, Connector, TlsError, TlsIdentity, TransportError};
use tally_common::wire::client::ClientRequest;
use tally_common::{LogId, Lsn, NodeId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffered::{BufferedConfig, BufferedWriter};
use crate::cluster::{ClusterError, ClusterState, ClusterView};
use crate::config::{ClientConfig, ConfigError};
use crate::error::AppendError;
use crate::graylist::Graylist;
use crate::mux::{Mux, Reports, Sequences, Stores};
use crate::suspects::{Suspects, Takeovers, Verdict};

/// Why [`Client::connect`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is invalid (the field is named).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The CA or client certificate files are missing or unreadable.
    #[error("cannot load the client certificate: {0}")]
    Tls(#[from] TlsError),
    /// The local QUIC endpoint could not be opened.
    #[error("cannot open the QUIC endpoint: {0}")]
    Transport(#[from] TransportError),
    /// No seed answered with the cluster state.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// What the client's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: ClientConfig,
    pub(crate) connector: Arc<Connector<ClientProtocol>>,
    /// STOREs per storage node, batched across logs while a node is busy.
    pub(crate) stores: Arc<Mux<Stores>>,
    /// Grant requests per sequencer for logs running there, batched while two are on their
    /// way.
    pub(crate) sequences: Arc<Mux<Sequences>>,
    /// Completion reports per sequencer, batched while one is on its way.
    pub(crate) reports: Arc<Mux<Reports>>,
    pub(crate) cluster: ClusterView,
    graylist: Mutex<Graylist>,
    /// Running average of STORE round trips: the first wave's timeout follows it.
    pub(crate) store_latency: crate::latency::StoreLatency,
    /// Appends waiting per log, and the batches in flight (coalescing).
    pub(crate) queues: crate::append::Queues,
    pub(crate) tracker: TaskTracker,
    pub(crate) shutdown: CancellationToken,
    /// Sequencers found silent or unreachable, asked last for a while.
    suspects: Mutex<Suspects>,
    /// One liveness check at a time per suspect node (`owner_alive`).
    checks: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    /// Liveness checks sent so far (tests tell a takeover decided without one).
    checks_sent: AtomicU64,
    /// Logs this client made another node take over, asked there first for a while.
    takeovers: Mutex<Takeovers>,
}

impl Shared {
    fn suspects(&self) -> MutexGuard<'_, Suspects> {
        self.suspects.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` acknowledged a request but answered late: ask it last for
    /// `sequencer_suspect_for` (a redirect to it is checked first).
    pub(crate) fn suspect(&self, node: NodeId) {
        let now = std::time::Instant::now();
        self.suspects()
            .suspect(node, now, self.config.sequencer_suspect_for);
    }

    /// `node` did not acknowledge a request within the silence timeout, or could not be
    /// reached: the incarnation the cluster state names is taken for dead for
    /// `sequencer_dead_for`, then a suspect.
    pub(crate) fn silent(&self, node: NodeId) {
        let now = std::time::Instant::now();
        let incarnation = self.incarnation(node);
        self.suspects()
            .silent(node, incarnation, now, self.config.sequencer_suspect_for);
    }

    /// The incarnation of `node` in the current cluster state (0 when it is not there).
    fn incarnation(&self, node: NodeId) -> u64 {
        self.cluster
            .current()
            .node(node)
            .map_or(0, |n| n.incarnation)
    }

    fn takeovers(&self) -> MutexGuard<'_, Takeovers> {
        self.takeovers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `node` granted `log` to a `no_redirect` request: ask it first for `log` for a while.
    pub(crate) fn took_over(&self, log: LogId, node: NodeId) {
        let now = std::time::Instant::now();
        self.takeovers()
            .record(log, node, now, self.config.sequencer_suspect_for);
    }

    /// The node this client made take `log` over, while remembered.
    pub(crate) fn takeover_of(&self, log: LogId) -> Option<NodeId> {
        self.takeovers().node(log, std::time::Instant::now())
    }

    /// `node` no longer serves `log` for this client (it redirected or was unreachable).
    pub(crate) fn let_go(&self, log: LogId, node: NodeId) {
        self.takeovers().forget(log, node);
    }

    /// `node` answered: it is no longer a suspect.
    pub(crate) fn clear_suspect(&self, node: NodeId) {
        self.suspects().clear(node);
    }

    /// Whether `node` is a suspect now.
    pub(crate) fn is_suspect(&self, node: NodeId) -> bool {
        self.suspects().is_suspect(node, std::time::Instant::now())
    }

    /// Whether the sequencer `node`, named as a log's owner by another node, should be
    /// believed alive (see `suspects`): false while the incarnation the cluster state names
    /// was found silent within `sequencer_dead_for`; true unless it is a suspect and a
    /// liveness check — one cheap `GetClusterState` bounded by `sequencer_silence_timeout`,
    /// one at a time per node, its answer shared by every waiter — finds it silent or
    /// unreachable.
    pub(crate) async fn owner_alive(&self, node: NodeId) -> bool {
        let asked_at = std::time::Instant::now();
        let dead_for = self.config.sequencer_dead_for;
        let verdict = |shared: &Self| {
            let incarnation = shared.incarnation(node);
            shared.suspects().verdict(
                node,
                incarnation,
                std::time::Instant::now(),
                asked_at,
                dead_for,
            )
        };
        match verdict(self) {
            Verdict::Alive => return true,
            Verdict::Dead => return false,
            Verdict::Check => {}
        }
        let gate = {
            let mut checks = self.checks.lock().unwrap_or_else(|e| e.into_inner());
            checks.entry(node).or_default().clone()
        };
        let _turn = gate.lock().await;
        match verdict(self) {
            Verdict::Alive => return true,
            Verdict::Dead => return false,
            Verdict::Check => {}
        }
        let silence = self.config.sequencer_silence_timeout;
        self.checks_sent.fetch_add(1, Ordering::Relaxed);
        let answer = match self.cluster.address(node).await {
            Some(addr) => {
                self.connector
                    .call_watched(addr, &ClientRequest::GetClusterState, silence, silence)
                    .await
            }
            None => Err(TransportError::NoAnswer),
        };
        // Any answer, or a peer that acknowledged the request but answered late, is alive.
        let alive = matches!(
            answer,
            Ok(_) | Err(TransportError::Remote(_) | TransportError::Timeout(_))
        );
        if alive {
            tracing::debug!(%node, "suspect sequencer answered a liveness check");
            self.clear_suspect(node);
        } else {
            tracing::debug!(%node, "suspect sequencer failed a liveness check");
            self.silent(node);
        }
        alive
    }

    /// The graylist, locked for one synchronous step of an appender (never across an await).
    pub(crate) fn graylist(&self) -> MutexGuard<'_, Graylist> {
        self.graylist.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches the cluster state again in the background (a node was unreachable, or a
    /// redirect named a node the view does not know). Concurrent requests share one fetch.
    pub(crate) fn refresh_soon(self: &Arc<Self>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let shared = self.clone();
        self.tracker.spawn(async move {
            if let Err(e) = shared.cluster.refresh().await {
                tracing::debug!(error = %e, "cluster state refresh failed");
            }
        });
    }
}

/// A connection to one Tally cluster. See the module documentation.
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
}

impl Client {
    /// Validates `config`, loads the client certificate, fetches the cluster state from the
    /// seeds and starts refreshing it every `cluster_refresh_interval`.
    pub async fn connect(config: ClientConfig) -> Result<Client, ConnectError> {
        config.validate()?;
        let identity = TlsIdentity::load(&config.certs_dir, &config.cert_name)?;
        let connector = Arc::new(Connector::new(&identity, config.transport.clone())?);
        let cluster = ClusterView::fetch(
            config.seeds.clone(),
            connector.clone(),
            config.request_timeout,
        )
        .await?;
        let tracker = TaskTracker::new();
        let stores = Arc::new(Mux::new(connector.clone(), tracker.clone()));
        let sequences = Arc::new(Mux::watched(
            connector.clone(),
            tracker.clone(),
            Some(config.sequencer_silence_timeout),
        ));
        let reports = Arc::new(Mux::new(connector.clone(), tracker.clone()));
        let shared = Arc::new(Shared {
            stores,
            sequences,
            reports,
            graylist: Mutex::new(Graylist::new(config.graylist)),
            suspects: Mutex::new(Suspects::default()),
            checks: Mutex::new(HashMap::new()),
            checks_sent: AtomicU64::new(0),
            takeovers: Mutex::new(Takeovers::default()),
            store_latency: crate::latency::StoreLatency::default(),
            queues: crate::append::Queues::default(),
            config,
            connector,
            cluster,
            tracker,
            shutdown: CancellationToken::new(),
        });
        shared.tracker.spawn(refresh_loop(
            Arc::downgrade(&shared),
            shared.shutdown.clone(),
        ));
        Ok(Client { shared })
    }

    /// Appends one record to `log`; its LSN once R storage nodes have it.
    ///
    /// Concurrent appends to one log are coalesced: while a grant for the log is on its way,
    /// further appends wait and then go out together (one grant, one STORE per copyset
    /// member); each still gets its own LSN, and a failed batch fails each of its appends
    /// with the batch's error. The append takes its place in the log's queue when it is
    /// first polled, so appends a task issues one after the other get increasing LSNs.
    /// Dropping the future before its batch is sent withdraws the append; afterwards a batch
    /// shared with other appends goes on without it, and an append alone in its batch (the
    /// log was idle; it runs on the caller's task) ends with it, outcome unknown.
    pub async fn append(&self, log: LogId, payload: Vec<u8>) -> Result<Lsn, AppendError> {
        crate::append::append(&self.shared, log, vec![payload])
            .await
            .map(|lsns| *lsns.start())
    }

    /// Appends `payloads` to `log` as one batch: one grant of consecutive LSNs, one STORE per
    /// copyset member. All succeed or all fail together. Coalesced with other appends to the
    /// log like [`Client::append`], never split.
    pub async fn append_batch(
        &self,
        log: LogId,
        payloads: Vec<Vec<u8>>,
    ) -> Result<RangeInclusive<Lsn>, AppendError> {
        crate::append::append(&self.shared, log, payloads).await
    }

    /// A writer that gathers small appends to `log` into batches (see [`BufferedWriter`]).
    pub fn buffered_writer(
        &self,
        log: LogId,
        config: BufferedConfig,
    ) -> Result<BufferedWriter, ConfigError> {
        config.validate(&self.shared.config.transport.limits)?;
        Ok(BufferedWriter::start(self.shared.clone(), log, config))
    }

    /// The cluster state the client places copies and finds sequencers with.
    pub fn cluster(&self) -> Arc<ClusterState> {
        self.shared.cluster.current()
    }

    /// Fetches the cluster state now.
    pub async fn refresh_cluster(&self) -> Result<(), ClusterError> {
        self.shared.cluster.refresh().await
    }

    /// The configuration the client was connected with.
    pub fn config(&self) -> &ClientConfig {
        &self.shared.config
    }

    /// How many liveness checks of suspect sequencers this client has sent (diagnostics:
    /// a takeover from a node found silent needs none).
    pub fn liveness_checks_sent(&self) -> u64 {
        self.shared.checks_sent.load(Ordering::Relaxed)
    }

    /// STORE batches, grant requests and completion reports waiting for one of the requests
    /// in flight to their node to end, to go out together (diagnostics: a client whose nodes
    /// keep up has none).
    pub fn requests_waiting(&self) -> usize {
        self.shared.stores.waiting()
            + self.shared.sequences.waiting()
            + self.shared.reports.waiting()
    }

    /// What the client's tasks share (for the reader and admin calls, `read`, `admin`).
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops background work and waits for it: buffered writers stop taking records (what
    /// they hold but have not sent fails as `Shutdown`), batches already being appended and
    /// completion reports finish or time out, then the connections close. Appends started
    /// afterwards fail with `Shutdown`.
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
        self.shared.connector.close().await;
    }
}

/// Refreshes the cluster state periodically while the client exists.
async fn refresh_loop(shared: Weak<Shared>, shutdown: CancellationToken) {
    let Some(interval) = shared.upgrade().map(|s| s.config.cluster_refresh_interval) else {
        return;
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(e) = shared.cluster.refresh().await {
            tracing::warn!(error = %e, "periodic cluster state refresh failed");
        }
    }
}
