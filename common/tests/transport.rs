//! The QUIC transport on loopback with real certificates: many concurrent requests, mutual TLS
//! refusal, frame limits that end one stream only, deadlines, push streams, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tally_common::transport::{
    ClientProtocol, Connector, RequestContext, Server, ServerStream, Service, TlsIdentity,
    TransportConfig, TransportError, generate_cluster_certs,
};
use tally_common::wire::client::{ClientRequest, ClientResponse};
use tally_common::wire::{ErrorCode, ReadFilter, StoreBatch, StoreRecord, StoreStatus};
use tally_common::{Copyset, Durability, Epoch, Esn, Limits, LogId, Lsn, NodeId, RecordFlags};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// Answers `GetTail{log}` with `Tail{log * 7}`, stores with `Stored`, never answers `Trim`
/// (to exercise deadlines), and holds `GetLogMetadata` until released (for shutdown).
struct TestService {
    entered: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

impl Service<ClientProtocol> for TestService {
    async fn call(&self, _ctx: RequestContext, req: ClientRequest) -> ClientResponse {
        match req {
            ClientRequest::GetTail { log } => ClientResponse::Tail {
                lsn: Lsn(log.0 * 7),
            },
            ClientRequest::Store(_) => ClientResponse::StoreResult(StoreStatus::Stored),
            ClientRequest::Trim { .. } => std::future::pending().await,
            ClientRequest::GetLogMetadata { .. } => {
                let _ = self.entered.send(());
                self.release.notified().await;
                ClientResponse::Ack
            }
            _ => ClientResponse::Ack,
        }
    }

    async fn open(
        &self,
        _ctx: RequestContext,
        req: ClientRequest,
        mut stream: ServerStream<ClientProtocol>,
    ) {
        let ClientRequest::StartRead { from, until, .. } = req else {
            stream
                .reject(tally_common::wire::RemoteError::new(
                    ErrorCode::BadRequest,
                    "not a read",
                ))
                .await;
            return;
        };
        // Push one gap per LSN up to the window, then wait for the client to widen it.
        let mut next = from;
        let mut window = from;
        while next <= until {
            if next > window {
                match stream.next_control().await {
                    Ok(Some(ClientRequest::ReadWindow { until })) => window = until,
                    _ => return,
                }
                continue;
            }
            let gap = ClientResponse::Gap {
                kind: tally_common::wire::GapKind::NoRecords,
                from: next,
                to: next,
            };
            if stream.push(&gap).await.is_err() {
                return;
            }
            next = next.next();
        }
        let _ = stream.push(&ClientResponse::ReadDone).await;
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    certs: std::path::PathBuf,
    server: Option<Server>,
    addr: SocketAddr,
    entered: mpsc::UnboundedReceiver<()>,
    release: Arc<Notify>,
}

fn server_limits() -> Limits {
    // Small frames on the server so the over-limit test needs little data.
    Limits {
        max_payload_bytes: 64 * 1024,
        max_frame_bytes: 128 * 1024,
        ..Limits::default()
    }
}

fn start() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    generate_cluster_certs(&certs, "test", &["127.0.0.1".to_owned()]).unwrap();
    let identity = TlsIdentity::load(&certs, "node").unwrap();
    let (tx, entered) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let service = Arc::new(TestService {
        entered: tx,
        release: release.clone(),
    });
    let config = TransportConfig {
        limits: server_limits(),
        ..TransportConfig::default()
    };
    let server = Server::builder(config, identity)
        .service::<ClientProtocol, _>(service)
        .bind("127.0.0.1:0".parse().unwrap(), CancellationToken::new())
        .unwrap();
    let addr = server.local_addr();
    Fixture {
        _dir: dir,
        certs,
        server: Some(server),
        addr,
        entered,
        release,
    }
}

fn client(certs: &std::path::Path) -> Connector<ClientProtocol> {
    let identity = TlsIdentity::load(certs, "client").unwrap();
    // The client allows larger frames than the server, so the server's limit is what refuses.
    let limits = Limits {
        max_payload_bytes: 4 << 20,
        max_frame_bytes: 8 << 20,
        ..Limits::default()
    };
    Connector::bind(
        &identity,
        TransportConfig {
            limits,
            ..TransportConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

const T: Duration = Duration::from_secs(10);

fn is_timeout(e: &TransportError) -> bool {
    matches!(e, TransportError::Timeout(_))
        || matches!(e, TransportError::Remote(r) if r.code == ErrorCode::Timeout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_over_sixteen_streams() {
    let fx = start();
    let client = Arc::new(client(&fx.certs));
    let mut tasks = Vec::new();
    for worker in 0..16u64 {
        let client = client.clone();
        let addr = fx.addr;
        tasks.push(tokio::spawn(async move {
            for i in 0..625u64 {
                let log = LogId(1 + worker * 1000 + i);
                let resp = client
                    .call(addr, &ClientRequest::GetTail { log }, T)
                    .await
                    .unwrap();
                assert_eq!(
                    resp,
                    ClientResponse::Tail {
                        lsn: Lsn(log.0 * 7)
                    }
                );
            }
            625u64
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    assert_eq!(answered, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_mtu_discovery_finds_loopback_jumbo_datagrams() {
    // Loopback carries 64 KiB datagrams: discovery must climb far past Ethernet's 1,452 bytes,
    // so a 1 KiB record or a read batch costs one packet (one seal, one ACK) instead of many.
    let fx = start();
    let client = client(&fx.certs);
    let log = LogId(1);
    let tail = ClientResponse::Tail { lsn: Lsn(7) };
    assert_eq!(
        client
            .call(fx.addr, &ClientRequest::GetTail { log }, T)
            .await
            .unwrap(),
        tail
    );
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let mtu = client.path_mtu(fx.addr).expect("a connection");
        if mtu >= 16 * 1024 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "path MTU stuck at {mtu} bytes"
        );
        // Each round trip carries the probes' ACKs: discovery moves on with the traffic.
        client
            .call(fx.addr, &ClientRequest::GetTail { log }, T)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn client_from_another_ca_is_refused() {
    let fx = start();
    let other = tempfile::tempdir().unwrap();
    generate_cluster_certs(other.path(), "other", &[]).unwrap();
    // Trusts the right CA, but presents a certificate signed by another one.
    let foreign = TlsIdentity::load(other.path(), "client").unwrap();
    let mine = TlsIdentity::load(&fx.certs, "client").unwrap();
    let identity = TlsIdentity {
        roots: mine.roots.clone(),
        chain: foreign.chain,
        key: foreign.key,
    };
    let intruder = Connector::<ClientProtocol>::bind(
        &identity,
        TransportConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let err = intruder
        .call(fx.addr, &ClientRequest::GetTail { log: LogId(1) }, T)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Connect { .. } | TransportError::ConnectionLost(_)
        ),
        "expected a refused connection, got {err:?}"
    );
    // A server certificate from another CA is refused by the client too.
    let distrusting = TlsIdentity {
        roots: foreign_roots(other.path()),
        ..mine
    };
    let c = Connector::<ClientProtocol>::bind(
        &distrusting,
        TransportConfig::default(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let err = c
        .call(fx.addr, &ClientRequest::GetTail { log: LogId(1) }, T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Connect { .. }),
        "expected a refused server, got {err:?}"
    );
    // The rightful client is still served.
    let ok = client(&fx.certs);
    assert_eq!(
        ok.call(fx.addr, &ClientRequest::GetTail { log: LogId(2) }, T)
            .await
            .unwrap(),
        ClientResponse::Tail { lsn: Lsn(14) }
    );
}

fn foreign_roots(dir: &std::path::Path) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    TlsIdentity::load(dir, "client").unwrap().roots
}

fn store(payload_bytes: usize) -> ClientRequest {
    let payload = vec![7u8; payload_bytes];
    ClientRequest::Store(StoreBatch {
        log: LogId(1),
        copyset: Copyset::new(vec![NodeId(1), NodeId(2)]).unwrap(),
        wave_or_seal: 1,
        flags: RecordFlags::NONE,
        durability: Durability::Durable,
        lng: Esn(0),
        records: vec![StoreRecord {
            lsn: Lsn::new(Epoch(1), Esn(1)),
            timestamp_ms: 1,
            payload_crc32: tally_common::payload_crc32(&payload),
            payload: payload.into(),
        }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_is_refused_and_other_streams_keep_working() {
    let fx = start();
    let client = Arc::new(client(&fx.certs));
    // A stream that is open while the big frame is refused.
    let (mut reader, first) = {
        let req = ClientRequest::StartRead {
            log: LogId(1),
            from: Lsn(1),
            until: Lsn(4),
            window_until: Lsn(1),
            filter: ReadFilter::default(),
        };
        let mut s = client.open(fx.addr, &req, T).await.unwrap();
        let first = s.next().await.unwrap();
        (s, first)
    };
    assert!(matches!(first, Some(ClientResponse::Gap { .. })));

    let small = client.call(fx.addr, &store(1024), T).await.unwrap();
    assert_eq!(small, ClientResponse::StoreResult(StoreStatus::Stored));

    let err = client.call(fx.addr, &store(1 << 20), T).await.unwrap_err();
    match &err {
        TransportError::Remote(e) => {
            assert_eq!(e.code, ErrorCode::TooLarge);
            assert!(
                e.message.contains("exceeds the limit of 131072 bytes"),
                "{}",
                e.message
            );
        }
        other => panic!("expected a TooLarge refusal, got {other:?}"),
    }

    // Same connection: the open stream and new requests still work.
    reader
        .control(&ClientRequest::ReadWindow { until: Lsn(4) })
        .await
        .unwrap();
    let mut rest = Vec::new();
    while let Some(msg) = reader.next().await.unwrap() {
        rest.push(msg);
    }
    assert_eq!(rest.len(), 4, "3 more gaps and ReadDone: {rest:?}");
    assert_eq!(rest.last(), Some(&ClientResponse::ReadDone));
    let again = client
        .call(fx.addr, &ClientRequest::GetTail { log: LogId(3) }, T)
        .await
        .unwrap();
    assert_eq!(again, ClientResponse::Tail { lsn: Lsn(21) });

    // A request the client itself cannot send is refused locally, before any I/O.
    let huge = store(9 << 20);
    let err = client.call(fx.addr, &huge, T).await.unwrap_err();
    assert!(
        matches!(err, TransportError::FrameTooLarge { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn request_past_its_deadline_times_out() {
    let fx = start();
    let client = client(&fx.certs);
    let err = client
        .call(
            fx.addr,
            &ClientRequest::Trim {
                log: LogId(1),
                upto: Lsn(5),
            },
            Duration::from_millis(200),
        )
        .await
        .unwrap_err();
    assert!(is_timeout(&err), "expected a timeout, got {err:?}");
    assert!(err.may_have_been_applied());
    // The connection is still good afterwards.
    let ok = client
        .call(fx.addr, &ClientRequest::GetTail { log: LogId(1) }, T)
        .await
        .unwrap();
    assert_eq!(ok, ClientResponse::Tail { lsn: Lsn(7) });
}

#[tokio::test]
async fn connecting_to_nobody_fails_within_the_deadline() {
    // A bound but silent UDP socket: the handshake never completes.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    generate_cluster_certs(dir.path(), "test", &[]).unwrap();
    let client = client(dir.path());
    let started = tokio::time::Instant::now();
    let err = client
        .call(
            silent.local_addr().unwrap(),
            &ClientRequest::GetClusterState,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            TransportError::Timeout(_) | TransportError::Connect { .. }
        ),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the deadline bounds the call"
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let mut fx = start();
    let client = Arc::new(client(&fx.certs));
    let c = client.clone();
    let addr = fx.addr;
    let in_flight = tokio::spawn(async move {
        c.call(addr, &ClientRequest::GetLogMetadata { log: LogId(1) }, T)
            .await
    });
    // Wait until the handler runs, then shut down while it is still working.
    fx.entered.recv().await.unwrap();
    let server = fx.server.take().unwrap();
    let shutdown = tokio::spawn(server.shutdown());
    fx.release.notify_one();
    assert_eq!(in_flight.await.unwrap().unwrap(), ClientResponse::Ack);
    shutdown.await.unwrap();
    // After shutdown nothing answers.
    let err = client
        .call(
            addr,
            &ClientRequest::GetTail { log: LogId(1) },
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
}

/// A peer speaking another protocol version gets a clear, typed refusal on that stream.
#[tokio::test]
async fn unknown_protocol_version_is_refused_clearly() {
    use tally_common::wire::{
        FRAME_HEADER_BYTES, FrameHeader, FrameKind, RemoteError, WireMessage,
    };
    let fx = start();
    let identity = TlsIdentity::load(&fx.certs, "client").unwrap();
    let tls = tally_common::transport::tls::client_config(
        &identity,
        tally_common::transport::ALPN_CLIENT,
    )
    .unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(fx.addr, tally_common::transport::NODE_SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let body = ClientRequest::GetClusterState.encode().unwrap();
    let mut header = FrameHeader {
        body_len: body.len() as u32,
        version: tally_common::wire::PROTOCOL_VERSION,
        kind: FrameKind::Request,
        timeout_ms: 1000,
    }
    .encode();
    header[4..6].copy_from_slice(&99u16.to_be_bytes());
    send.write_all(&header).await.unwrap();
    let _ = send.write_all(&body).await;
    let _ = send.finish();
    let answer = recv.read_to_end(1 << 16).await.unwrap();
    let head: [u8; FRAME_HEADER_BYTES] = answer[..FRAME_HEADER_BYTES].try_into().unwrap();
    let head = FrameHeader::decode(&head, 1 << 16).unwrap();
    assert_eq!(head.kind, FrameKind::Error);
    let err = RemoteError::decode(&answer[FRAME_HEADER_BYTES..], &Limits::default()).unwrap();
    assert_eq!(err.code, ErrorCode::UnsupportedVersion);
    assert!(
        err.message.contains("unsupported protocol version 99"),
        "{}",
        err.message
    );
}

/// A server with `config` and a raw quinn connection to it (to send what no `Connector` would).
async fn raw_pair(config: TransportConfig) -> (tempfile::TempDir, Server, quinn::Connection) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    generate_cluster_certs(&certs, "test", &["127.0.0.1".to_owned()]).unwrap();
    let (tx, _entered) = mpsc::unbounded_channel();
    let service = Arc::new(TestService {
        entered: tx,
        release: Arc::new(Notify::new()),
    });
    let server = Server::builder(config, TlsIdentity::load(&certs, "node").unwrap())
        .service::<ClientProtocol, _>(service)
        .bind("127.0.0.1:0".parse().unwrap(), CancellationToken::new())
        .unwrap();
    let identity = TlsIdentity::load(&certs, "client").unwrap();
    let tls = tally_common::transport::tls::client_config(
        &identity,
        tally_common::transport::ALPN_CLIENT,
    )
    .unwrap();
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let conn = endpoint
        .connect(
            server.local_addr(),
            tally_common::transport::NODE_SERVER_NAME,
        )
        .unwrap()
        .await
        .unwrap();
    (dir, server, conn)
}

/// A peer that opens a stream and stalls inside its request does not hold the stream past the
/// request read timeout.
#[tokio::test]
async fn stalled_request_is_dropped_after_the_read_timeout() {
    let config = TransportConfig {
        request_read_timeout: Duration::from_millis(200),
        ..TransportConfig::default()
    };
    let (_dir, _server, conn) = raw_pair(config).await;
    // Three bytes of a 12-byte header, then nothing: the server gives up on the stream.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0]).await.unwrap();
    let ended = tokio::time::timeout(T, recv.read_to_end(1 << 16))
        .await
        .expect("the server ends the stream");
    assert!(
        ended.is_err(),
        "the stream is reset, not answered: {ended:?}"
    );
}

/// Shutdown does not wait for a stream whose request never arrives (it would otherwise wait
/// out the whole grace period, here longer than the test's patience).
#[tokio::test]
async fn stalled_request_does_not_delay_shutdown() {
    let config = TransportConfig {
        request_read_timeout: Duration::from_secs(600),
        shutdown_grace: Duration::from_secs(600),
        ..TransportConfig::default()
    };
    let (_dir, server, conn) = raw_pair(config).await;
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0]).await.unwrap();
    // Make sure the server has the stream before shutting down: a full request on another
    // stream of the same connection is answered after the stalled one was accepted.
    let (mut s2, mut r2) = conn.open_bi().await.unwrap();
    let body =
        tally_common::wire::WireMessage::encode(&ClientRequest::GetTail { log: LogId(1) }).unwrap();
    let header = tally_common::wire::FrameHeader {
        body_len: body.len() as u32,
        version: tally_common::wire::PROTOCOL_VERSION,
        kind: tally_common::wire::FrameKind::Request,
        timeout_ms: 5000,
    }
    .encode();
    s2.write_all(&header).await.unwrap();
    s2.write_all(&body).await.unwrap();
    s2.finish().unwrap();
    r2.read_to_end(1 << 16).await.unwrap();
    tokio::time::timeout(T, server.shutdown())
        .await
        .expect("shutdown must not wait for the stalled stream");
}

/// A UDP relay between one client and a switchable upstream server, to move a peer "to a new
/// process on the same address" under an open connection.
async fn relay(upstream: Arc<std::sync::Mutex<SocketAddr>>) -> SocketAddr {
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let client: Arc<std::sync::Mutex<Option<SocketAddr>>> = Arc::default();
    let upstream_now = upstream.clone();
    {
        let (front, back, client) = (front.clone(), back.clone(), client.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client.lock().unwrap() = Some(from);
                let to = *upstream.lock().unwrap();
                let _ = back.send_to(&buf[..n], to).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = back.recv_from(&mut buf).await {
            // Only the current upstream is heard: the old one is as good as gone.
            if from != *upstream_now.lock().unwrap() {
                continue;
            }
            let to = *client.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to).await;
            }
        }
    });
    addr
}

/// A second server with the same certificates: the first one "restarted" on a new address.
fn another_server(certs: &std::path::Path) -> Server {
    let identity = TlsIdentity::load(certs, "node").unwrap();
    let (tx, _entered) = mpsc::unbounded_channel();
    let service = Arc::new(TestService {
        entered: tx,
        release: Arc::new(Notify::new()),
    });
    Server::builder(TransportConfig::default(), identity)
        .service::<ClientProtocol, _>(service)
        .bind("127.0.0.1:0".parse().unwrap(), CancellationToken::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_replaced_after_a_timeout() {
    // Server A, then server B with the same certificates: B plays A restarted on its address.
    let a = start();
    let b = another_server(&a.certs);
    let upstream = Arc::new(std::sync::Mutex::new(a.addr));
    let via = relay(upstream.clone()).await;
    let c = client(&a.certs);
    let tail = ClientRequest::GetTail { log: LogId(3) };
    let answer = c.call(via, &tail, T).await.unwrap();
    assert_eq!(answer, ClientResponse::Tail { lsn: Lsn(21) });

    // The address now leads to B, which knows nothing of the connection: it goes silent.
    *upstream.lock().unwrap() = b.local_addr();
    let err = c
        .call(via, &tail, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(is_timeout(&err), "{err:?}");
    // A delayed ACK of the exchange with A can still land during that first call (it left
    // the relay before the move), so the connection is judged silent by the first or, at the
    // latest, the second timed-out call on it. Then calls connect to B afresh instead of
    // waiting on the dead connection until its idle timeout (30 s).
    if let Err(err) = c.call(via, &tail, Duration::from_millis(300)).await {
        assert!(is_timeout(&err), "{err:?}");
    }
    let answer = c.call(via, &tail, T).await.unwrap();
    assert_eq!(answer, ClientResponse::Tail { lsn: Lsn(21) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_call_tells_a_silent_peer_from_a_slow_one() {
    let a = start();
    let b = another_server(&a.certs);
    let upstream = Arc::new(std::sync::Mutex::new(a.addr));
    let via = relay(upstream.clone()).await;
    let c = client(&a.certs);

    // Slow but alive: A never answers a Trim, yet acknowledges the request: the whole timeout.
    let trim = ClientRequest::Trim {
        log: LogId(1),
        upto: Lsn(1),
    };
    let err = c
        .call_watched(
            via,
            &trim,
            Duration::from_millis(600),
            Duration::from_millis(150),
        )
        .await
        .unwrap_err();
    // Our deadline or the server's (it runs the request under the frame's deadline).
    assert!(is_timeout(&err), "{err:?}");

    // Silent: the address now leads to B, which acknowledges nothing on this connection. (A
    // delayed ACK of the exchange with A may still make the first watched call wait for its
    // whole timeout; the second then meets pure silence.)
    *upstream.lock().unwrap() = b.local_addr();
    let tail = ClientRequest::GetTail { log: LogId(3) };
    let mut silent = None;
    for _ in 0..2 {
        match c
            .call_watched(
                via,
                &tail,
                Duration::from_secs(2),
                Duration::from_millis(150),
            )
            .await
        {
            Err(e @ TransportError::PeerSilent(_)) => {
                silent = Some(e);
                break;
            }
            Err(e) => assert!(is_timeout(&e), "{e:?}"),
            Ok(answer) => panic!("a silent peer answered {answer:?}"),
        }
    }
    let err = silent.expect("the peer is found silent");
    assert!(err.is_retryable() && err.may_have_been_applied());
    // The silent connection was closed: the next call reaches B on a fresh one.
    let answer = c.call(via, &tail, T).await.unwrap();
    assert_eq!(answer, ClientResponse::Tail { lsn: Lsn(21) });
}
