//! One Tally node in this process: the storage and/or sequencer roles behind one QUIC endpoint
//! that serves both ALPNs, registered once in membership. `tally server` runs one of these;
//! `tally dev` runs several in one process.
//!
//! An endpoint routes one `Service<ClientProtocol>` per ALPN, so a node with both roles uses
//! [`NodeService`], which sends storage and metadata requests to the storage role and the rest
//! (`Sequence`, `ReportStored`, `GetTail`, `CreateLog`) to the sequencer role. [`start`] brings
//! a node up in the order that keeps every request answerable (roles, then the endpoint, then
//! the membership record with the bound address); [`RunningNode::shutdown`] reverses it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tally_common::NodeId;
use tally_common::meta::{NodeInfo, Roles, StorageState};
use tally_common::metrics::NodeMetrics;
use tally_common::transport::{
    ClientProtocol, Connector, NodeProtocol, RequestContext, Server, ServerStream, Service,
    TlsIdentity, TransportConfig,
};
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::wire::{ErrorCode, RemoteError};
use tally_epochstore::{EpochStore, NodeLease};
use tally_sequencer::runtime::{self as sequencer, SequencerConfig, SequencerDeps, SequencerNode};
use tally_storage_node::server::{self as storage, StorageConfig, StorageDeps, StorageNode};
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminServer, AdminState, NodeProbe};

/// The client-protocol service of a node: routes each request to the role that serves it
/// (`GetNodeStatus` is the node's own: its [`NodeProbe`] answers).
#[derive(Debug)]
pub struct NodeService {
    pub storage: Option<Arc<StorageNode>>,
    pub sequencer: Option<Arc<SequencerNode>>,
    /// Answers `GetNodeStatus`.
    pub probe: Arc<NodeProbe>,
}

impl Service<ClientProtocol> for NodeService {
    async fn call(&self, ctx: RequestContext, req: ClientRequest) -> ClientResponse {
        if let ClientRequest::GetNodeStatus = req {
            return ClientResponse::NodeStatus(Box::new(self.probe.status()));
        }
        match (&self.storage, &self.sequencer) {
            (Some(storage), Some(_)) if StorageNode::serves(&req) => {
                match storage.handle_client(ctx, req).await {
                    Some(resp) => resp,
                    None => ClientResponse::Error(RemoteError::new(
                        ErrorCode::Internal,
                        "storage role declined a request it claims to serve",
                    )),
                }
            }
            (_, Some(sequencer)) => sequencer.call(ctx, req).await,
            (Some(storage), None) => Service::<ClientProtocol>::call(&**storage, ctx, req).await,
            (None, None) => ClientResponse::Error(RemoteError::new(
                ErrorCode::Internal,
                "this node runs no role",
            )),
        }
    }

    async fn open(
        &self,
        ctx: RequestContext,
        req: ClientRequest,
        mut stream: ServerStream<ClientProtocol>,
    ) {
        // Push streams (reads) belong to the storage role.
        match &self.storage {
            Some(storage) => Service::<ClientProtocol>::open(&**storage, ctx, req, stream).await,
            None => {
                stream
                    .reject(RemoteError::new(
                        ErrorCode::BadRequest,
                        "this node runs only the sequencer role; read from storage nodes",
                    ))
                    .await;
            }
        }
    }
}

/// Everything needed to start one node (the roles' own configs carry their knobs).
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub id: NodeId,
    pub roles: Roles,
    pub listen: SocketAddr,
    /// Address registered in membership; `None`: the bound address.
    pub advertise: Option<String>,
    /// Directory with `ca.pem` and `node.pem` / `node.key`.
    pub certs_dir: PathBuf,
    pub transport: TransportConfig,
    /// Used when `roles.storage`.
    pub storage: StorageConfig,
    /// Used when `roles.sequencer`.
    pub sequencer: SequencerConfig,
    /// Membership lease of a sequencer-only node (a storage node uses `storage.lease_ttl`).
    pub lease_ttl: Duration,
    /// The admin HTTP port (`/metrics`, `/health`, `/ready`, the status page); `None`: none.
    pub admin: Option<AdminListen>,
}

/// Where a node's admin HTTP port listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminListen {
    /// TCP address (port 0: ephemeral).
    pub addr: SocketAddr,
    /// When `addr` cannot be bound, take an ephemeral port on the same IP instead of failing
    /// (the `auto` default, whose port is a guess; an address an operator names is strict).
    pub fallback: bool,
}

/// A started node. Shut it down with [`RunningNode::shutdown`].
#[derive(Debug)]
pub struct RunningNode {
    pub id: NodeId,
    /// The endpoint's bound address.
    pub addr: SocketAddr,
    /// The membership record this node registered.
    pub info: NodeInfo,
    /// The admin HTTP port's bound address, if the node has one.
    pub admin_addr: Option<SocketAddr>,
    metrics: NodeMetrics,
    probe: Arc<NodeProbe>,
    /// Stops the admin port and the rate sampler (a child of the node's shutdown token).
    observability: CancellationToken,
    admin: Option<AdminServer>,
    sampler: tokio::task::JoinHandle<()>,
    server: Server,
    storage: Option<storage::StorageRuntime>,
    sequencer: Option<sequencer::SequencerRuntime>,
    /// The membership lease of a sequencer-only node (a storage role holds its own).
    lease: Option<NodeLease>,
}

impl RunningNode {
    pub fn storage(&self) -> Option<Arc<StorageNode>> {
        self.storage.as_ref().map(|s| s.node())
    }

    pub fn sequencer(&self) -> Option<Arc<SequencerNode>> {
        self.sequencer.as_ref().map(|s| s.node())
    }

    /// The node's metrics handles (what its roles record).
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// What the node knows about itself (status, health, readiness).
    pub fn probe(&self) -> &Arc<NodeProbe> {
        &self.probe
    }

    /// Drains the endpoint, stops the sequencer, deregisters (revoking the lease) and closes
    /// LogsDB cleanly.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let id = self.id;
        self.observability.cancel();
        if let Some(admin) = self.admin {
            admin.stopped().await;
        }
        let _ = self.sampler.await;
        self.server.shutdown().await;
        // The probe holds the roles: LogsDB closes cleanly only once it is gone.
        drop(self.probe);
        if let Some(seq) = self.sequencer {
            seq.shutdown().await;
        }
        if let Some(lease) = self.lease
            && let Err(e) = lease.deregister().await
        {
            tracing::warn!(node = %id, error = %e, "cannot deregister");
        }
        if let Some(storage) = self.storage {
            storage
                .shutdown()
                .await
                .with_context(|| format!("node {id}: storage role did not stop cleanly"))?;
        }
        tracing::info!(node = %id, "node stopped");
        Ok(())
    }
}

/// Starts the roles of `spec`, binds its endpoint and registers it in membership.
pub async fn start(
    spec: NodeSpec,
    store: Arc<dyn EpochStore>,
    shutdown: CancellationToken,
) -> anyhow::Result<RunningNode> {
    let id = spec.id;
    anyhow::ensure!(
        spec.roles.storage || spec.roles.sequencer,
        "node {id}: no role to run (roles must name sequencer and/or storage)"
    );
    let identity = TlsIdentity::load(&spec.certs_dir, "node").with_context(|| {
        format!(
            "node {id}: cannot load the node certificate from {}",
            spec.certs_dir.display()
        )
    })?;
    let storage = if spec.roles.storage {
        let deps = StorageDeps::new(store.clone());
        Some(
            storage::run(spec.storage.clone(), deps, shutdown.clone())
                .await
                .with_context(|| format!("node {id}: cannot start the storage role"))?,
        )
    } else {
        None
    };
    let sequencer = if spec.roles.sequencer {
        let releases = Arc::new(
            Connector::<NodeProtocol>::new(&identity, spec.transport.clone())
                .with_context(|| format!("node {id}: cannot open the release connector"))?,
        );
        let deps = SequencerDeps {
            store: store.clone(),
            releases,
        };
        Some(
            sequencer::run(spec.sequencer.clone(), deps, shutdown.clone())
                .await
                .with_context(|| format!("node {id}: cannot start the sequencer role"))?,
        )
    } else {
        None
    };
    let metrics = NodeMetrics {
        sequencer: spec.sequencer.metrics.clone(),
        storage: spec.storage.metrics.clone(),
    };
    let observability = shutdown.child_token();
    let probe = Arc::new(NodeProbe::new(
        id,
        spec.roles,
        metrics.clone(),
        storage.as_ref().map(|s| s.node()),
        sequencer.as_ref().map(|s| s.node()),
        shutdown.clone(),
    ));
    let service = Arc::new(NodeService {
        storage: storage.as_ref().map(|s| s.node()),
        sequencer: sequencer.as_ref().map(|s| s.node()),
        probe: probe.clone(),
    });
    let peers = match spec.admin {
        Some(_) => Some(Arc::new(
            Connector::<ClientProtocol>::new(&identity, spec.transport.clone())
                .with_context(|| format!("node {id}: cannot open the status connector"))?,
        )),
        None => None,
    };
    let mut builder =
        Server::builder(spec.transport.clone(), identity).service::<ClientProtocol, _>(service);
    if let Some(storage) = &storage {
        builder = builder.service::<NodeProtocol, _>(storage.node());
    }
    let server = builder
        .bind(spec.listen, shutdown.clone())
        .with_context(|| format!("node {id}: cannot listen on {}", spec.listen))?;
    let addr = server.local_addr();
    probe.set_connections(server.connections());
    let admin = match spec.admin {
        Some(listen) => {
            let mut registry = metrics.registry();
            registry.register_collector(Box::new(probe.clone()));
            let state = Arc::new(AdminState::new(
                probe.clone(),
                registry,
                peers,
                store.clone(),
            ));
            let admin = admin::bind(listen, state, observability.clone())
                .await
                .with_context(|| {
                    format!(
                        "node {id}: cannot listen on {} (admin HTTP port)",
                        listen.addr
                    )
                })?;
            probe.set_admin(admin.local_addr().to_string());
            Some(admin)
        }
        None => None,
    };
    let admin_addr = admin.as_ref().map(AdminServer::local_addr);
    let sampler = tokio::spawn(probe.clone().sample_loop(observability.clone()));
    let address = spec.advertise.clone().unwrap_or_else(|| addr.to_string());
    let (info, lease) = match &storage {
        Some(storage) => {
            let info = storage
                .register(address, spec.roles)
                .await
                .with_context(|| format!("node {id}: cannot register in membership"))?;
            (info, None)
        }
        None => {
            let info = NodeInfo {
                id,
                address,
                roles: spec.roles,
                location: spec.storage.location.clone(),
                weight: spec.storage.weight,
                state: StorageState::ReadWrite,
                incarnation: NodeInfo::new_incarnation(),
            };
            let lease = store
                .register_node(info.clone(), spec.lease_ttl)
                .await
                .with_context(|| format!("node {id}: cannot register in membership"))?;
            (info, Some(lease))
        }
    };
    tracing::info!(node = %id, %addr, admin = ?admin_addr, roles = ?spec.roles, "node started");
    Ok(RunningNode {
        id,
        addr,
        info,
        admin_addr,
        metrics,
        probe,
        observability,
        admin,
        sampler,
        server,
        storage,
        sequencer,
        lease,
    })
}

/// Waits until every membership view of `node` (the sequencer's, the storage role's) holds
/// each of `members`, so requests it answers see the whole cluster.
pub async fn wait_for_members(node: &RunningNode, members: &[NodeId]) {
    if let Some(seq) = node.sequencer() {
        let mut rx = seq.membership().subscribe();
        // The sender lives as long as the node; an error means it is gone: stop waiting.
        let _ = rx
            .wait_for(|view| members.iter().all(|id| view.nodes.contains_key(id)))
            .await;
    }
    if let Some(storage) = node.storage() {
        let mut rx = storage.cluster().subscribe();
        loop {
            let (nodes, _) = storage.cluster().snapshot();
            if members.iter().all(|id| nodes.iter().any(|n| n.id == *id)) {
                break;
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
}
