//! The connecting side: one connection per peer, reused by every request to it and re-made
//! when it dies; each request on its own stream, under one deadline that covers connecting,
//! sending and the answer.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::limits::Limits;
use crate::wire::FrameKind;

use super::framing::{ReadFrameError, encode_frame, read_frame, write_encoded, write_frame};
use super::tls::{NODE_SERVER_NAME, TlsIdentity, client_config};
use super::{Protocol, TransportConfig, TransportError, codes};

type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

/// Makes requests of protocol `P` to any number of peers.
pub struct Connector<P: Protocol> {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    config: TransportConfig,
    server_name: String,
    conns: Mutex<HashMap<SocketAddr, Slot>>,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> std::fmt::Debug for Connector<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("alpn", &String::from_utf8_lossy(P::ALPN))
            .finish()
    }
}

impl<P: Protocol> Connector<P> {
    /// A connector on an ephemeral local UDP port (IPv4 any address).
    pub fn new(identity: &TlsIdentity, config: TransportConfig) -> Result<Self, TransportError> {
        Self::bind(identity, config, SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// A connector whose endpoint is bound to `local`.
    pub fn bind(
        identity: &TlsIdentity,
        config: TransportConfig,
        local: SocketAddr,
    ) -> Result<Self, TransportError> {
        let tls = client_config(identity, P::ALPN)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TransportError::Tls(super::TlsError::Quic(e.to_string())))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        client_config.transport_config(Arc::new(config.quic()));
        let endpoint = super::endpoint::bind(local, None).map_err(TransportError::Bind)?;
        Ok(Connector {
            endpoint,
            client_config,
            config,
            server_name: NODE_SERVER_NAME.to_owned(),
            conns: Mutex::new(HashMap::new()),
            _protocol: PhantomData,
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }

    /// The largest UDP payload the open connection to `addr` sends (path MTU discovery's
    /// current answer); `None` without a connection or while one is being made.
    pub fn path_mtu(&self, addr: SocketAddr) -> Option<u16> {
        let slot = self
            .conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)?
            .clone();
        let guard = slot.try_lock().ok()?;
        let conn = guard.as_ref()?;
        Some(conn.stats().path.current_mtu)
    }

    /// Sends one request and waits for its answer, all within `timeout`.
    pub async fn call(
        &self,
        addr: SocketAddr,
        req: &P::Request,
        timeout: Duration,
    ) -> Result<P::Response, TransportError> {
        self.call_inner(addr, req, timeout, None).await
    }

    /// Like [`Connector::call`], but fails early with [`TransportError::PeerSilent`] (and
    /// closes the connection) when the peer has not acknowledged anything `silent_after`
    /// after the request went out. A live peer acknowledges packets within milliseconds even
    /// when its answer takes long, so a slow answer still gets the whole `timeout`, while a
    /// dead, frozen or cut-off peer is given up on quickly (sequencer failover).
    pub async fn call_watched(
        &self,
        addr: SocketAddr,
        req: &P::Request,
        timeout: Duration,
        silent_after: Duration,
    ) -> Result<P::Response, TransportError> {
        self.call_inner(addr, req, timeout, Some(silent_after))
            .await
    }

    async fn call_inner(
        &self,
        addr: SocketAddr,
        req: &P::Request,
        timeout: Duration,
        silent_after: Option<Duration>,
    ) -> Result<P::Response, TransportError> {
        let deadline = Instant::now() + timeout;
        let max_frame = self.config.limits.max_frame_bytes;
        // Encode first: a request over the limit fails here, before any I/O.
        let (header, body) = encode_frame(req, FrameKind::Request, timeout_ms(timeout), max_frame)?;
        // The connection the request went out on and how many ACK frames it had received, so
        // a timeout can tell a silent peer (dead, frozen, cut off) from a slow one: a live peer
        // acknowledges the request's packets within milliseconds even if it answers late.
        // (Datagrams are no signal: a restarted peer answers a dead connection's packets with
        // stateless resets the connection cannot verify, and those count as received.)
        let mut used: Option<(quinn::Connection, u64)> = None;
        let exchange = async {
            let (conn, mut send, mut recv) = self.open_bi(addr, deadline).await?;
            let rx = conn.stats().frame_rx.acks;
            used = Some((conn.clone(), rx));
            let answer = async {
                match write_encoded(&mut send, &header, &body).await {
                    Ok(()) => {
                        let _ = send.finish();
                    }
                    // The peer refused the frame and stopped our sending; its reason follows.
                    Err(quinn::WriteError::Stopped(_)) => {}
                    Err(e) => return Err(TransportError::ConnectionLost(e.to_string())),
                }
                match read_frame(&mut recv, max_frame).await {
                    Ok(Some(frame))
                        if matches!(frame.header.kind, FrameKind::Response | FrameKind::Error) =>
                    {
                        frame.decode::<P::Response>(&self.config.limits)
                    }
                    Ok(Some(frame)) => Err(TransportError::UnexpectedFrame(frame.header.kind)),
                    Ok(None) => Err(TransportError::NoAnswer),
                    Err(ReadFrameError::Refused(e)) => Err(TransportError::Frame(e)),
                    Err(ReadFrameError::Io(e)) => Err(TransportError::ConnectionLost(e)),
                }
            };
            let Some(after) = silent_after else {
                return answer.await;
            };
            // Checked once, `silent_after` after the request went out: any ACK by then proves
            // the peer alive (later silence is normal while it works on the answer).
            tokio::pin!(answer);
            tokio::select! {
                result = &mut answer => return result,
                () = tokio::time::sleep(after) => {}
            }
            if self.retire_if_silent(addr, &conn, rx) {
                return Err(TransportError::PeerSilent(after));
            }
            answer.await
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(result) => result,
            Err(_) => {
                if let Some((conn, rx)) = &used {
                    self.retire_if_silent(addr, conn, *rx);
                }
                Err(TransportError::Timeout(timeout))
            }
        }
    }

    /// Closes `conn` when not one ACK arrived on it since it had received `rx_before`:
    /// a peer that does not even acknowledge a request is dead, frozen or cut off, and a
    /// restarted one would never answer on the old connection. Later calls connect afresh
    /// (and fail fast if the peer is still gone) instead of waiting on it until idle timeout.
    /// Returns whether it closed the connection.
    fn retire_if_silent(&self, addr: SocketAddr, conn: &quinn::Connection, rx_before: u64) -> bool {
        if conn.stats().frame_rx.acks != rx_before {
            return false;
        }
        tracing::debug!(%addr, "peer silent: closing the connection");
        conn.close(codes::PEER_SILENT, b"peer silent");
        true
    }

    /// Opens a server-push stream with `req`. `timeout` bounds connecting and sending the
    /// request; reading pushes has no deadline (the caller decides how long to wait).
    pub async fn open(
        &self,
        addr: SocketAddr,
        req: &P::Request,
        timeout: Duration,
    ) -> Result<ClientStream<P>, TransportError> {
        let deadline = Instant::now() + timeout;
        let max_frame = self.config.limits.max_frame_bytes;
        let (header, body) = encode_frame(req, FrameKind::Open, timeout_ms(timeout), max_frame)?;
        let opening = async {
            let (_, mut send, recv) = self.open_bi(addr, deadline).await?;
            write_encoded(&mut send, &header, &body)
                .await
                .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
            Ok(ClientStream {
                send,
                recv,
                limits: self.config.limits,
                _protocol: PhantomData,
            })
        };
        tokio::time::timeout_at(deadline, opening)
            .await
            .unwrap_or(Err(TransportError::Timeout(timeout)))
    }

    /// Closes every connection and the endpoint.
    pub async fn close(&self) {
        self.endpoint.close(codes::SHUTDOWN, b"closed");
        let _ = tokio::time::timeout(self.config.shutdown_grace, self.endpoint.wait_idle()).await;
    }

    /// Opens a stream on the cached connection to `addr`, connecting (once, shared by
    /// concurrent callers) when there is none or it died.
    async fn open_bi(
        &self,
        addr: SocketAddr,
        deadline: Instant,
    ) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), TransportError> {
        let slot = {
            let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            conns.entry(addr).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref() {
            if conn.close_reason().is_none() {
                match conn.open_bi().await {
                    Ok((send, recv)) => return Ok((conn.clone(), send, recv)),
                    // Died between the check and the open: connect afresh below.
                    Err(e) => tracing::debug!(%addr, error = %e, "cached connection is gone"),
                }
            }
            *guard = None;
        }
        let connect_deadline = deadline.min(Instant::now() + self.config.connect_timeout);
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), addr, &self.server_name)
            .map_err(|e| TransportError::Connect {
                addr,
                detail: e.to_string(),
            })?;
        let conn = match tokio::time::timeout_at(connect_deadline, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                return Err(TransportError::Connect {
                    addr,
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                return Err(TransportError::Connect {
                    addr,
                    detail: "connect timed out".into(),
                });
            }
        };
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| TransportError::ConnectionLost(e.to_string()))?;
        *guard = Some(conn.clone());
        Ok((conn, send, recv))
    }
}

fn timeout_ms(timeout: Duration) -> u32 {
    u32::try_from(timeout.as_millis())
        .unwrap_or(u32::MAX)
        .max(1)
}

/// The client side of a server-push stream.
#[derive(Debug)]
pub struct ClientStream<P: Protocol> {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    limits: Limits,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> ClientStream<P> {
    /// The next pushed message; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<P::Response>, TransportError> {
        next_push::<P>(&mut self.recv, &self.limits).await
    }

    /// Sends a control message (e.g. a window update) to the server.
    pub async fn control(&mut self, msg: &P::Request) -> Result<(), TransportError> {
        send_control::<P>(&mut self.send, msg, &self.limits).await
    }

    /// Ends the stream from this side.
    pub fn close(mut self) {
        let _ = self.send.finish();
        let _ = self.recv.stop(codes::OK);
    }

    /// Splits into a sender of control messages and a receiver of pushes, to use
    /// concurrently (reading a frame is not cancel safe, so one task cannot `select!` between
    /// reading pushes and sending controls on the unsplit stream).
    pub fn split(self) -> (ControlSink<P>, PushSource<P>) {
        (
            ControlSink {
                send: self.send,
                limits: self.limits,
                _protocol: PhantomData,
            },
            PushSource {
                recv: self.recv,
                limits: self.limits,
                _protocol: PhantomData,
            },
        )
    }
}

async fn send_control<P: Protocol>(
    send: &mut quinn::SendStream,
    msg: &P::Request,
    limits: &Limits,
) -> Result<(), TransportError> {
    write_frame(send, msg, FrameKind::Control, 0, limits.max_frame_bytes).await
}

async fn next_push<P: Protocol>(
    recv: &mut quinn::RecvStream,
    limits: &Limits,
) -> Result<Option<P::Response>, TransportError> {
    match read_frame(recv, limits.max_frame_bytes).await {
        Ok(None) => Ok(None),
        Ok(Some(frame)) if matches!(frame.header.kind, FrameKind::Push | FrameKind::Error) => {
            frame.decode(limits).map(Some)
        }
        Ok(Some(frame)) => Err(TransportError::UnexpectedFrame(frame.header.kind)),
        Err(ReadFrameError::Refused(e)) => Err(TransportError::Frame(e)),
        Err(ReadFrameError::Io(e)) => Err(TransportError::ConnectionLost(e)),
    }
}

/// The sending half of a split [`ClientStream`].
#[derive(Debug)]
pub struct ControlSink<P: Protocol> {
    send: quinn::SendStream,
    limits: Limits,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> ControlSink<P> {
    /// Sends a control message (e.g. a window update) to the server.
    pub async fn control(&mut self, msg: &P::Request) -> Result<(), TransportError> {
        send_control::<P>(&mut self.send, msg, &self.limits).await
    }

    /// Finishes this side of the stream (no more controls).
    pub fn finish(mut self) {
        let _ = self.send.finish();
    }
}

/// The receiving half of a split [`ClientStream`].
#[derive(Debug)]
pub struct PushSource<P: Protocol> {
    recv: quinn::RecvStream,
    limits: Limits,
    _protocol: PhantomData<fn() -> P>,
}

impl<P: Protocol> PushSource<P> {
    /// The next pushed message; `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<P::Response>, TransportError> {
        next_push::<P>(&mut self.recv, &self.limits).await
    }

    /// Stops receiving: the server's further pushes fail at once.
    pub fn stop(mut self) {
        let _ = self.recv.stop(codes::OK);
    }
}
