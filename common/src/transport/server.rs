//! The accepting side: one QUIC endpoint serving one or more protocols (chosen by ALPN), each
//! stream handled by a [`Service`]. Frame limits are checked before allocation; a refused frame
//! ends only its own stream. Every request runs under the deadline its frame carries.
//! Shutdown stops accepting, lets in-flight requests finish within a grace period, then closes.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::limits::Limits;
use crate::wire::{ErrorCode, FrameError, FrameKind, RemoteError, WireMessage};

use super::framing::{
    ReadFrameError, decode_error_to_remote, read_frame, truncate, write_error, write_frame,
};
use super::tls::{TlsIdentity, server_config};
use super::{Protocol, TransportConfig, TransportError, codes};

/// Who sent a request and until when it may run.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub peer: SocketAddr,
    /// The request's deadline; work not done by then is wasted (the caller gave up).
    pub deadline: Instant,
    /// Cancelled when the server shuts down; long-lived streams should end then.
    pub shutdown: CancellationToken,
}

/// The application side of one protocol.
pub trait Service<P: Protocol>: Send + Sync + 'static {
    /// Answers one unary request. Runs under `ctx.deadline`: if it is not done by then the
    /// caller receives a `Timeout` error and the future is dropped.
    fn call(
        &self,
        ctx: RequestContext,
        req: P::Request,
    ) -> impl Future<Output = P::Response> + Send;

    /// Serves a server-push stream opened by `req`. The default refuses streams.
    fn open(
        &self,
        _ctx: RequestContext,
        _req: P::Request,
        stream: ServerStream<P>,
    ) -> impl Future<Output = ()> + Send {
        async move {
            let mut stream = stream;
            stream
                .reject(RemoteError::new(
                    ErrorCode::BadRequest,
                    "this service opens no streams",
                ))
                .await;
        }
    }
}

/// The sending half of a server-push stream.
#[derive(Debug)]
pub struct PushSink<P: Protocol> {
    send: quinn::SendStream,
    max_frame_bytes: usize,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> PushSink<P> {
    /// Pushes one message. Fails when the client went away (or the message is too large).
    pub async fn push(&mut self, msg: &P::Response) -> Result<(), TransportError> {
        write_frame(
            &mut self.send,
            msg,
            FrameKind::Push,
            0,
            self.max_frame_bytes,
        )
        .await
    }

    /// Ends the stream with an error the client receives as [`TransportError::Remote`].
    pub async fn reject(&mut self, err: RemoteError) {
        write_error(&mut self.send, &err).await;
        let _ = self.send.finish();
    }

    /// Ends the stream normally.
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// A server-push stream: pushes go out through [`PushSink`], control messages from the client
/// come in through [`ServerStream::next_control`].
#[derive(Debug)]
pub struct ServerStream<P: Protocol> {
    sink: PushSink<P>,
    recv: quinn::RecvStream,
    limits: Limits,
}

impl<P: Protocol> ServerStream<P> {
    pub async fn push(&mut self, msg: &P::Response) -> Result<(), TransportError> {
        self.sink.push(msg).await
    }

    pub async fn reject(&mut self, err: RemoteError) {
        self.sink.reject(err).await
    }

    /// The next control message from the client; `Ok(None)` when it finished its side.
    pub async fn next_control(&mut self) -> Result<Option<P::Request>, TransportError> {
        next_control::<P>(&mut self.recv, &self.limits).await
    }

    /// Splits into the push half and a receiver of control messages, to use concurrently.
    pub fn split(self) -> (PushSink<P>, ControlSource<P>) {
        (
            self.sink,
            ControlSource {
                recv: self.recv,
                limits: self.limits,
                _protocol: PhantomData,
            },
        )
    }
}

/// The receiving half of a split [`ServerStream`].
#[derive(Debug)]
pub struct ControlSource<P: Protocol> {
    recv: quinn::RecvStream,
    limits: Limits,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> ControlSource<P> {
    pub async fn next_control(&mut self) -> Result<Option<P::Request>, TransportError> {
        next_control::<P>(&mut self.recv, &self.limits).await
    }
}

async fn next_control<P: Protocol>(
    recv: &mut quinn::RecvStream,
    limits: &Limits,
) -> Result<Option<P::Request>, TransportError> {
    match read_frame(recv, limits.max_frame_bytes).await {
        Ok(None) => Ok(None),
        Ok(Some(frame)) if frame.header.kind == FrameKind::Control => {
            frame.decode(limits).map(Some)
        }
        Ok(Some(frame)) => Err(TransportError::UnexpectedFrame(frame.header.kind)),
        Err(ReadFrameError::Refused(e)) => Err(TransportError::Frame(e)),
        Err(ReadFrameError::Io(e)) => Err(TransportError::ConnectionLost(e)),
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A protocol's service with its types erased, so one endpoint can route by ALPN.
trait StreamHandler: Send + Sync {
    fn handle(
        &self,
        peer: SocketAddr,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        shutdown: CancellationToken,
    ) -> BoxFuture;
}

struct Adapter<P, S> {
    service: Arc<S>,
    limits: Limits,
    request_read_timeout: Duration,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol, S: Service<P>> StreamHandler for Adapter<P, S> {
    fn handle(
        &self,
        peer: SocketAddr,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        shutdown: CancellationToken,
    ) -> BoxFuture {
        Box::pin(handle_stream::<P, S>(
            self.service.clone(),
            self.limits,
            self.request_read_timeout,
            peer,
            send,
            recv,
            shutdown,
        ))
    }
}

fn refusal(e: &FrameError) -> RemoteError {
    let code = match e {
        FrameError::TooLarge { .. } => ErrorCode::TooLarge,
        FrameError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
        FrameError::UnknownKind(_) | FrameError::Reserved(_) => ErrorCode::BadRequest,
    };
    RemoteError::new(code, e.to_string())
}

async fn handle_stream<P: Protocol, S: Service<P>>(
    service: Arc<S>,
    limits: Limits,
    request_read_timeout: Duration,
    peer: SocketAddr,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    shutdown: CancellationToken,
) {
    // The request must arrive within its own bound, and shutdown does not wait for it.
    let first = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(request_read_timeout, read_frame(&mut recv, limits.max_frame_bytes)) => r,
    };
    let Ok(first) = first else {
        debug!(%peer, timeout = ?request_read_timeout, "request not received in time; dropping the stream");
        let _ = recv.stop(codes::TIMEOUT);
        let _ = send.reset(codes::TIMEOUT);
        return;
    };
    let frame = match first {
        Ok(Some(frame)) => frame,
        Ok(None) => return,
        Err(ReadFrameError::Refused(e)) => {
            debug!(%peer, error = %e, "refused frame");
            // Tell the peer why, and stop its sending on this stream only.
            let _ = recv.stop(codes::REFUSED);
            write_error(&mut send, &refusal(&e)).await;
            let _ = send.finish();
            return;
        }
        Err(ReadFrameError::Io(e)) => {
            debug!(%peer, error = %e, "stream failed before a request");
            return;
        }
    };
    let arrived = Instant::now();
    let deadline = arrived + Duration::from_millis(u64::from(frame.header.timeout_ms));
    let ctx = RequestContext {
        peer,
        deadline,
        shutdown,
    };
    let kind = frame.header.kind;
    if !matches!(kind, FrameKind::Request | FrameKind::Open) {
        write_error(
            &mut send,
            &RemoteError::new(
                ErrorCode::BadRequest,
                format!("a stream must start with a request, got {kind:?}"),
            ),
        )
        .await;
        let _ = send.finish();
        return;
    }
    if frame.header.timeout_ms == 0 {
        write_error(
            &mut send,
            &RemoteError::new(ErrorCode::Timeout, "request arrived with no time left"),
        )
        .await;
        let _ = send.finish();
        return;
    }
    let req = match P::Request::decode(&frame.body, &limits) {
        Ok(req) => req,
        Err(e) => {
            debug!(%peer, error = %e, "undecodable request");
            write_error(&mut send, &decode_error_to_remote(&e)).await;
            let _ = send.finish();
            return;
        }
    };
    if kind == FrameKind::Open {
        let stream = ServerStream {
            sink: PushSink {
                send,
                max_frame_bytes: limits.max_frame_bytes,
                _protocol: PhantomData,
            },
            recv,
            limits,
        };
        service.open(ctx, req, stream).await;
        return;
    }
    match tokio::time::timeout_at(deadline, service.call(ctx, req)).await {
        Ok(resp) => {
            if let Err(e) = write_frame(
                &mut send,
                &resp,
                FrameKind::Response,
                0,
                limits.max_frame_bytes,
            )
            .await
            {
                match e {
                    TransportError::FrameTooLarge { .. } | TransportError::Encode(_) => {
                        warn!(%peer, error = %e, "response could not be sent");
                        write_error(
                            &mut send,
                            &RemoteError::new(ErrorCode::Internal, truncate(e.to_string())),
                        )
                        .await;
                    }
                    _ => debug!(%peer, error = %e, "peer went away before the response"),
                }
            }
        }
        Err(_) => {
            let waited = arrived.elapsed();
            write_error(
                &mut send,
                &RemoteError::new(
                    ErrorCode::Timeout,
                    format!("deadline passed after {waited:?}"),
                ),
            )
            .await;
        }
    }
    finish(send).await;
}

/// Finishes a stream and waits until the peer has the data, so a shutdown that waits for this
/// task does not close the connection under an answer still in flight.
async fn finish(mut send: quinn::SendStream) {
    if send.finish().is_ok() {
        let _ = send.stopped().await;
    }
}

/// Builds a [`Server`]: register one service per protocol, then [`ServerBuilder::bind`].
pub struct ServerBuilder {
    config: TransportConfig,
    identity: TlsIdentity,
    handlers: HashMap<&'static [u8], Arc<dyn StreamHandler>>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("protocols", &self.handlers.len())
            .finish()
    }
}

impl ServerBuilder {
    /// Serves protocol `P` with `service`.
    pub fn service<P: Protocol, S: Service<P>>(mut self, service: Arc<S>) -> Self {
        let adapter = Adapter::<P, S> {
            service,
            limits: self.config.limits,
            request_read_timeout: self.config.request_read_timeout,
            _protocol: PhantomData,
        };
        self.handlers.insert(P::ALPN, Arc::new(adapter));
        self
    }

    /// Binds the endpoint and starts accepting. The server runs until `shutdown` is cancelled
    /// or [`Server::shutdown`] is called.
    pub fn bind(
        self,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) -> Result<Server, TransportError> {
        let alpns: Vec<&[u8]> = self.handlers.keys().copied().collect();
        let tls = server_config(&self.identity, &alpns)?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TransportError::Tls(super::TlsError::Quic(e.to_string())))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server_config.transport_config(Arc::new(self.config.quic()));
        let endpoint =
            super::endpoint::bind(addr, Some(server_config)).map_err(TransportError::Bind)?;
        let local_addr = endpoint.local_addr().map_err(TransportError::Bind)?;
        let shutdown = shutdown.child_token();
        let tracker = TaskTracker::new();
        let run = tokio::spawn(accept_loop(
            endpoint.clone(),
            Arc::new(self.handlers),
            self.config.clone(),
            tracker,
            shutdown.clone(),
        ));
        Ok(Server {
            local_addr,
            connections: ConnectionCount(endpoint),
            shutdown,
            run: Some(run),
        })
    }
}

/// Counts the open QUIC connections of a [`Server`]'s endpoint (both directions).
#[derive(Debug, Clone)]
pub struct ConnectionCount(quinn::Endpoint);

impl ConnectionCount {
    /// Connections open now.
    pub fn get(&self) -> usize {
        self.0.open_connections()
    }
}

/// A running endpoint. Dropping it shuts it down without waiting.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    connections: ConnectionCount,
    shutdown: CancellationToken,
    run: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub fn builder(config: TransportConfig, identity: TlsIdentity) -> ServerBuilder {
        ServerBuilder {
            config,
            identity,
            handlers: HashMap::new(),
        }
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle that counts the endpoint's open connections (for metrics).
    pub fn connections(&self) -> ConnectionCount {
        self.connections.clone()
    }

    /// Stops accepting, lets in-flight requests finish (within the grace period), closes every
    /// connection and waits until the endpoint is idle.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(run) = self.run.take() {
            let _ = run.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    handlers: Arc<HashMap<&'static [u8], Arc<dyn StreamHandler>>>,
    config: TransportConfig,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        tracker.spawn(serve_connection(
            incoming,
            handlers.clone(),
            config.clone(),
            tracker.clone(),
            shutdown.clone(),
        ));
    }
    // Refuse new connections while the in-flight work drains.
    endpoint.set_server_config(None);
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(grace = ?config.shutdown_grace, "in-flight requests still running at shutdown; closing");
    }
    endpoint.close(codes::SHUTDOWN, b"shutdown");
    let _ = tokio::time::timeout(config.shutdown_grace, endpoint.wait_idle()).await;
}

async fn serve_connection(
    incoming: quinn::Incoming,
    handlers: Arc<HashMap<&'static [u8], Arc<dyn StreamHandler>>>,
    config: TransportConfig,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    let peer = incoming.remote_address();
    let conn = match tokio::time::timeout(config.connect_timeout, incoming).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            debug!(%peer, "handshake timed out");
            return;
        }
    };
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let Some(handler) = alpn.as_deref().and_then(|p| handlers.get(p)).cloned() else {
        conn.close(codes::REFUSED, b"unknown protocol");
        return;
    };
    loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => break,
            stream = conn.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(%peer, error = %e, "connection ended");
                    return;
                }
            },
        };
        tracker.spawn(handler.handle(peer, send, recv, shutdown.clone()));
    }
}
