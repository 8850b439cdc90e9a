//! The QUIC transport: quinn endpoints with mutual TLS, one bidirectional stream per request
//! (request → response) or per server-push stream (read streams, digests), length-framed rkyv
//! messages, deadlines on connect and on every request, connection reuse, graceful shutdown.
//!
//! - [`tls`]: the cluster CA, certificates, rustls configurations.
//! - [`server`]: [`Server`] accepts connections, dispatches each stream by ALPN to a
//!   [`Service`], enforces frame limits and request deadlines.
//! - [`client`]: [`Connector`] keeps one connection per peer and offers [`Connector::call`] and
//!   [`Connector::open`].
//!
//! A node serves both protocols on one UDP port; the negotiated ALPN picks the protocol.

mod client;
mod endpoint;
mod framing;
mod server;
pub mod tls;

use std::time::Duration;

pub use client::{ClientStream, Connector, ControlSink, PushSource};
#[cfg(feature = "fault-injection")]
pub use endpoint::FAULTS_FILE_ENV;
pub use framing::Frame;
pub use server::{ConnectionCount, PushSink, RequestContext, Server, ServerStream, Service};
pub use tls::{
    CertKind, NODE_SERVER_NAME, TlsError, TlsIdentity, generate_cluster_certs, issue_cert,
};

use crate::limits::Limits;
use crate::wire::client::{ClientRequest, ClientResponse};
use crate::wire::node::{NodeRequest, NodeResponse};
use crate::wire::{DecodeError, EncodeError, ErrorCode, FrameError, RemoteError, WireMessage};

/// `host:port` as a socket address: parsed when it is one, else looked up, within `timeout`
/// (a resolver may hang). The one place node addresses and seeds are resolved.
pub async fn resolve(address: &str, timeout: Duration) -> Option<std::net::SocketAddr> {
    if let Ok(addr) = address.parse() {
        return Some(addr);
    }
    match tokio::time::timeout(timeout, tokio::net::lookup_host(address)).await {
        Ok(Ok(mut addrs)) => addrs.next(),
        _ => None,
    }
}

/// ALPN of the client ↔ node protocol.
pub const ALPN_CLIENT: &[u8] = b"tally-client/1";
/// ALPN of the node ↔ node protocol.
pub const ALPN_NODE: &[u8] = b"tally-node/1";

/// QUIC application error codes used when closing streams and connections.
pub mod codes {
    use quinn::VarInt;
    /// Normal end.
    pub const OK: VarInt = VarInt::from_u32(0);
    /// The endpoint is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(1);
    /// A frame broke a limit or could not be decoded.
    pub const REFUSED: VarInt = VarInt::from_u32(2);
    /// The request's deadline passed.
    pub const TIMEOUT: VarInt = VarInt::from_u32(3);
    /// The peer acknowledged nothing for a whole request: presumed dead or cut off.
    pub const PEER_SILENT: VarInt = VarInt::from_u32(4);
}

/// One of Tally's protocols: its message types and ALPN.
pub trait Protocol: Send + Sync + 'static {
    type Request: WireMessage + std::fmt::Debug;
    type Response: WireMessage + std::fmt::Debug;
    const ALPN: &'static [u8];
}

/// The client ↔ node protocol.
#[derive(Debug)]
pub struct ClientProtocol;

impl Protocol for ClientProtocol {
    type Request = ClientRequest;
    type Response = ClientResponse;
    const ALPN: &'static [u8] = ALPN_CLIENT;
}

/// The node ↔ node protocol.
#[derive(Debug)]
pub struct NodeProtocol;

impl Protocol for NodeProtocol {
    type Request = NodeRequest;
    type Response = NodeResponse;
    const ALPN: &'static [u8] = ALPN_NODE;
}

/// Timeouts and limits of an endpoint.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub limits: Limits,
    /// Deadline for establishing a connection (handshake included).
    pub connect_timeout: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Keep-alive pings, so idle but wanted connections survive NATs and idle timeouts.
    pub keep_alive: Duration,
    /// Streams a peer may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// On shutdown, how long in-flight requests may take before connections are closed.
    pub shutdown_grace: Duration,
    /// How long a peer may take to deliver the first frame of a stream it opened. A stream
    /// whose request never completes (a sender that died or stalls mid-frame) is dropped after
    /// this, instead of holding a task until the connection idles out.
    pub request_read_timeout: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            limits: Limits::default(),
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(5),
            max_concurrent_streams: 1024,
            shutdown_grace: Duration::from_secs(5),
            request_read_timeout: Duration::from_secs(10),
        }
    }
}

impl TransportConfig {
    pub(crate) fn quic(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        let frame = u32::try_from(self.limits.max_frame_bytes).unwrap_or(u32::MAX);
        let in_flight = u32::try_from(self.limits.max_in_flight_bytes).unwrap_or(u32::MAX);
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_concurrent_streams))
            .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
            // Flow control bounds what a peer can make us buffer: one frame per stream, the
            // in-flight limit per connection.
            .stream_receive_window(quinn::VarInt::from_u32(frame))
            .receive_window(quinn::VarInt::from_u32(in_flight.max(frame)))
            .keep_alive_interval(Some(self.keep_alive));
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(endpoint::MAX_UDP_PAYLOAD);
        t.mtu_discovery_config(Some(mtu));
        if let Ok(idle) = quinn::IdleTimeout::try_from(self.idle_timeout) {
            t.max_idle_timeout(Some(idle));
        }
        t
    }
}

/// Errors of the transport, as seen by the caller of a request.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot connect to {addr}: {detail}")]
    Connect {
        addr: std::net::SocketAddr,
        detail: String,
    },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The peer did not acknowledge anything within this long of the request going out: it is
    /// dead, frozen or cut off (see `Connector::call_watched`). The request may have arrived.
    #[error("peer silent for {0:?} (not even a transport acknowledgement)")]
    PeerSilent(Duration),
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: usize, max: usize },
    #[error("peer refused the frame: {0}")]
    Frame(#[from] FrameError),
    #[error("peer answered with an error: {0}")]
    Remote(RemoteError),
    #[error(transparent)]
    Decode(DecodeError),
    #[error(transparent)]
    Encode(EncodeError),
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    #[error("the peer closed the stream without an answer")]
    NoAnswer,
    #[error("unexpected {0:?} frame")]
    UnexpectedFrame(crate::wire::FrameKind),
    #[error("endpoint is shutting down")]
    Shutdown,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot bind endpoint: {0}")]
    Bind(std::io::Error),
}

impl TransportError {
    /// Whether the same request may succeed if retried later (perhaps on another connection).
    pub fn is_retryable(&self) -> bool {
        match self {
            TransportError::Connect { .. }
            | TransportError::Timeout(_)
            | TransportError::PeerSilent(_)
            | TransportError::ConnectionLost(_)
            | TransportError::NoAnswer => true,
            TransportError::Remote(e) => e.code.is_retryable(),
            _ => false,
        }
    }

    /// Whether a request that was sent may have been applied although no answer came back.
    pub fn may_have_been_applied(&self) -> bool {
        match self {
            TransportError::Timeout(_)
            | TransportError::PeerSilent(_)
            | TransportError::ConnectionLost(_)
            | TransportError::NoAnswer => true,
            TransportError::Remote(e) => e.code == ErrorCode::Timeout,
            _ => false,
        }
    }
}
