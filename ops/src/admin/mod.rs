//! A node's admin HTTP port (DESIGN §11, Observability), plain HTTP/1.1 on its own TCP
//! address (`admin_listen`), served by axum on the node's tokio runtime:
//!
//! - `GET /metrics`: Prometheus metrics of this node in the OpenMetrics text format (the
//!   recorded ones of `tally_common::metrics` and the scrape-time ones of [`NodeProbe`]);
//! - `GET /health`: 200 `{"status":"ok",…}` while the process is up and its roles run, 503
//!   with the problems otherwise (e.g. LogsDB went read-only after a write error);
//! - `GET /ready`: 200 once the node is healthy, in membership and can take writes (free
//!   disk above the minimum), 503 otherwise;
//! - `GET /`: the status page, the cluster at a glance ([`page`]), gathered from this node's
//!   membership view and epoch store and its peers' `GetNodeStatus` answers ([`cluster`]);
//! - `GET /status.json`: the same as JSON (the shape of `tally status --json`).
//!
//! Layout: [`probe`] (what the node knows about itself: status, health, scrape-time metrics,
//! rates), [`cluster`] (the cluster status both the page and `tally status` show), [`page`]
//! (its HTML). The port has no authentication: bind it to a private address.

pub mod cluster;
pub mod page;
pub mod probe;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tally_common::transport::{ClientProtocol, Connector};
use tally_epochstore::EpochStore;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::node::AdminListen;

pub use cluster::ClusterStatus;
pub use probe::NodeProbe;

/// Status pages gathered at once; more concurrent requests get 503 rather than queueing.
const MAX_CONCURRENT_GATHERS: usize = 4;

/// What the handlers share.
#[derive(Debug)]
pub struct AdminState {
    /// The node's view of itself.
    pub probe: Arc<NodeProbe>,
    /// The node's metrics, with the probe registered as a collector.
    pub registry: Registry,
    /// Client-protocol connector (the node's identity) for asking peers their status.
    pub connector: Option<Arc<Connector<ClientProtocol>>>,
    /// The epoch store (the log list of the status page).
    pub store: Arc<dyn EpochStore>,
    gathers: Semaphore,
}

impl AdminState {
    /// The state of a node's admin port.
    pub fn new(
        probe: Arc<NodeProbe>,
        registry: Registry,
        connector: Option<Arc<Connector<ClientProtocol>>>,
        store: Arc<dyn EpochStore>,
    ) -> AdminState {
        AdminState {
            probe,
            registry,
            connector,
            store,
            gathers: Semaphore::new(MAX_CONCURRENT_GATHERS),
        }
    }
}

/// A bound admin server; it stops when the shutdown token given to [`bind`] is cancelled.
#[derive(Debug)]
pub struct AdminServer {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the server stopped (after its shutdown token was cancelled).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// The router of the admin port.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/status.json", get(status_json))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
}

/// Binds `listen` (falling back to an ephemeral port if it may) and serves the admin port
/// until `shutdown`.
pub async fn bind(
    listen: AdminListen,
    state: Arc<AdminState>,
    shutdown: CancellationToken,
) -> std::io::Result<AdminServer> {
    let node = state.probe.id();
    let listener = match tokio::net::TcpListener::bind(listen.addr).await {
        Ok(listener) => listener,
        Err(e) if listen.fallback && listen.addr.port() != 0 => {
            let any = SocketAddr::new(listen.addr.ip(), 0);
            tracing::warn!(%node, addr = %listen.addr, error = %e,
                "admin port taken; using an ephemeral port instead (set admin_listen to choose)");
            tokio::net::TcpListener::bind(any).await?
        }
        Err(e) => return Err(e),
    };
    let addr = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(%node, error = %e, "admin HTTP server stopped");
        }
    });
    tracing::info!(%node, %addr, "admin HTTP port listening");
    Ok(AdminServer { addr, task })
}

fn json(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let text = tally_common::metrics::encode(&state.registry);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn verdict(state: &AdminState, problems: Vec<String>, good: &str) -> Response {
    let probe = &state.probe;
    let ok = problems.is_empty();
    let body = serde_json::json!({
        "status": if ok { good } else { "unavailable" },
        "node": probe.id().0,
        "problems": problems,
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(code, &body)
}

async fn health(State(state): State<Arc<AdminState>>) -> Response {
    let problems = state.probe.health();
    verdict(&state, problems, "ok")
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    let problems = state.probe.readiness();
    verdict(&state, problems, "ready")
}

async fn gather(state: &AdminState) -> Result<ClusterStatus, Response> {
    let Ok(_permit) = state.gathers.try_acquire() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "too many status requests at once; retry\n",
        )
            .into_response());
    };
    Ok(cluster::gather_local(&state.probe, state.connector.as_ref(), &*state.store).await)
}

async fn status_json(State(state): State<Arc<AdminState>>) -> Response {
    match gather(&state).await {
        Ok(status) => match serde_json::to_value(&status) {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        Err(resp) => resp,
    }
}

async fn status_page(State(state): State<Arc<AdminState>>) -> Response {
    let status = match gather(&state).await {
        Ok(status) => status,
        Err(resp) => return resp,
    };
    let probe = &state.probe;
    let roles = match (probe.roles().sequencer, probe.roles().storage) {
        (true, true) => "sequencer, storage",
        (true, false) => "sequencer",
        _ => "storage",
    };
    let me = probe.status();
    let html = page::render(
        &status,
        (probe.id().0, roles, &me.version, me.uptime_ms / 1000),
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}
