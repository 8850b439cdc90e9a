//! Binding QUIC endpoints, with optional network fault injection for chaos tests.
//!
//! Every endpoint (server or connector) is bound here. With the cargo feature
//! `fault-injection` and the environment variable `TALLY_NET_FAULTS_FILE` set, the endpoint's
//! UDP socket drops every datagram it would send to an address listed in that file (one
//! `ip:port` per line; `#` comments). A thread re-reads the file every 50 ms, so a chaos
//! nemesis cuts and heals links by rewriting it (write a temporary file and rename it over).
//! A cut between processes A and B is both files naming the other's address: each side's
//! sends are dropped, so neither requests nor answers cross. Without the feature, or without
//! the variable, endpoints are plain sockets and nothing is checked per datagram.
//!
//! Every socket asks for [`SOCKET_BUFFER_BYTES`] of kernel receive and send buffer. A QUIC
//! endpoint carries all of a node's connections on one UDP socket; with Linux's default
//! (`net.core.rmem_default`, 208 KiB) a burst of STOREs or read pushes overflows it whenever
//! the process is briefly descheduled, the kernel drops datagrams (`RcvbufErrors` in
//! `/proc/net/snmp`), and each drop costs a loss recovery: a retransmission at best, a probe
//! timeout of tens to hundreds of milliseconds at a flight's tail. The kernel caps the size
//! at `net.core.rmem_max` / `wmem_max`; a node that gets less than [`SOCKET_BUFFER_MIN_BYTES`]
//! says so once in its log (`ops/setup.sh` and docs/OPERATIONS.md raise the limits).
//!
//! Datagrams are as large as the path carries. Every endpoint accepts UDP payloads up to
//! [`MAX_UDP_PAYLOAD`] and runs path MTU discovery up to it (`TransportConfig::quic`): from
//! QUIC's safe 1,200 bytes it probes upwards right after the handshake and settles on what the
//! path delivers — about 1,450 bytes on plain Ethernet, 8,950 with jumbo frames, 64 KiB on
//! loopback. Fewer, larger packets mean fewer seals, header protections and ACKs per megabyte,
//! all of it CPU in user space. A path that later shrinks is caught by QUIC's black-hole
//! detection, which falls back to 1,200 bytes and probes again.
//!
//! quinn sizes an endpoint's receive buffers as the largest payload times the segments the
//! kernel may coalesce into one read (GRO) times the batch of reads: with 64 KiB payloads and
//! Linux's 64 segments, 128 MiB per endpoint. A coalesced read never exceeds 64 KiB (GRO and
//! GSO stop there), so [`ReceiveSized`] reports just enough segments for 64 KiB: 4 MiB.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

/// Kernel buffer asked for on each endpoint's UDP socket, each way.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;
/// Below this (after the kernel's cap), the log says how to raise the cap.
pub const SOCKET_BUFFER_MIN_BYTES: usize = 2 << 20;

/// Largest UDP payload an endpoint accepts and path MTU discovery searches up to: the most an
/// IPv4 datagram carries (65,535 bytes less 20 of IP and 8 of UDP header).
pub(crate) const MAX_UDP_PAYLOAD: u16 = 65_507;

/// The most the kernel hands over in one coalesced (GRO) read.
const MAX_COALESCED_READ: usize = 64 << 10;

/// A UDP socket bound to `addr` with [`SOCKET_BUFFER_BYTES`] of buffer asked for each way.
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a kernel that refuses keeps its default, which works, only with more loss.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    static WARNED: AtomicBool = AtomicBool::new(false);
    if let Ok(got) = socket.recv_buffer_size()
        && got < SOCKET_BUFFER_MIN_BYTES
        && !WARNED.swap(true, Ordering::Relaxed)
    {
        tracing::warn!(
            got,
            wanted = SOCKET_BUFFER_BYTES,
            "the kernel capped the UDP receive buffer: bursts may be dropped and retransmitted; \
             raise it with `sysctl -w net.core.rmem_max={SOCKET_BUFFER_BYTES} \
             net.core.wmem_max={SOCKET_BUFFER_BYTES}`"
        );
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Binds a QUIC endpoint on `addr`: a server when `server_config` is given, else client only.
pub(crate) fn bind(
    addr: SocketAddr,
    server_config: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime found for the QUIC endpoint"))?;
    let socket = runtime.wrap_udp_socket(udp_socket(addr)?)?;
    #[cfg(feature = "fault-injection")]
    let socket = faults::wrap(socket);
    let socket = ReceiveSized::wrap(socket);
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(|e| std::io::Error::other(format!("{e}")))?;
    quinn::Endpoint::new_with_abstract_socket(config, server_config, socket, runtime)
}

/// A UDP socket that asks quinn for receive buffers of [`MAX_COALESCED_READ`] per read.
#[derive(Debug)]
struct ReceiveSized {
    inner: std::sync::Arc<dyn quinn::AsyncUdpSocket>,
    receive_segments: usize,
}

impl ReceiveSized {
    fn wrap(inner: std::sync::Arc<dyn quinn::AsyncUdpSocket>) -> std::sync::Arc<Self> {
        let receive_segments = receive_segments(inner.max_receive_segments());
        std::sync::Arc::new(ReceiveSized {
            inner,
            receive_segments,
        })
    }
}

/// Segments of [`MAX_UDP_PAYLOAD`] that cover one coalesced read, at most what the socket
/// coalesces.
fn receive_segments(socket_segments: usize) -> usize {
    MAX_COALESCED_READ
        .div_ceil(usize::from(MAX_UDP_PAYLOAD))
        .min(socket_segments)
        .max(1)
}

impl quinn::AsyncUdpSocket for ReceiveSized {
    fn create_io_poller(self: std::sync::Arc<Self>) -> std::pin::Pin<Box<dyn quinn::UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &quinn::udp::Transmit<'_>) -> std::io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [quinn::udp::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.receive_segments
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(feature = "fault-injection")]
mod faults {
    use std::collections::HashSet;
    use std::io::{self, IoSliceMut};
    use std::net::SocketAddr;
    use std::path::{Path, PathBuf};
    use std::pin::Pin;
    use std::sync::{Arc, OnceLock, RwLock};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use quinn::udp::{RecvMeta, Transmit};
    use quinn::{AsyncUdpSocket, UdpPoller};

    /// The environment variable naming the blocked-addresses file.
    pub const FAULTS_FILE_ENV: &str = "TALLY_NET_FAULTS_FILE";

    /// Addresses this process must not send to, shared by every endpoint of the process.
    #[derive(Debug, Default)]
    struct Blocked(RwLock<HashSet<SocketAddr>>);

    static BLOCKED: OnceLock<Option<Arc<Blocked>>> = OnceLock::new();

    fn blocked() -> Option<Arc<Blocked>> {
        BLOCKED
            .get_or_init(|| {
                let path = PathBuf::from(std::env::var_os(FAULTS_FILE_ENV)?);
                let blocked = Arc::new(Blocked::default());
                let shared = blocked.clone();
                std::thread::Builder::new()
                    .name("net-faults".into())
                    .spawn(move || {
                        loop {
                            let set = read_rules(&path);
                            *shared.0.write().unwrap_or_else(|p| p.into_inner()) = set;
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    })
                    .ok()?;
                tracing::warn!("network fault injection is on ({FAULTS_FILE_ENV})");
                Some(blocked)
            })
            .clone()
    }

    /// Parses the rules file; a missing or unreadable file blocks nothing.
    fn read_rules(path: &Path) -> HashSet<SocketAddr> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.parse().ok())
            .collect()
    }

    pub(super) fn wrap(socket: Arc<dyn AsyncUdpSocket>) -> Arc<dyn AsyncUdpSocket> {
        match blocked() {
            Some(blocked) => Arc::new(FaultySocket {
                inner: socket,
                blocked,
            }),
            None => socket,
        }
    }

    /// A UDP socket that silently drops datagrams to blocked destinations.
    #[derive(Debug)]
    struct FaultySocket {
        inner: Arc<dyn AsyncUdpSocket>,
        blocked: Arc<Blocked>,
    }

    impl AsyncUdpSocket for FaultySocket {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            self.inner.clone().create_io_poller()
        }

        fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
            let cut = self
                .blocked
                .0
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&transmit.destination);
            if cut {
                // As if the network lost it.
                return Ok(());
            }
            self.inner.try_send(transmit)
        }

        fn poll_recv(
            &self,
            cx: &mut Context<'_>,
            bufs: &mut [IoSliceMut<'_>],
            meta: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            self.inner.poll_recv(cx, bufs, meta)
        }

        fn local_addr(&self) -> io::Result<SocketAddr> {
            self.inner.local_addr()
        }

        fn max_transmit_segments(&self) -> usize {
            self.inner.max_transmit_segments()
        }

        fn max_receive_segments(&self) -> usize {
            self.inner.max_receive_segments()
        }

        fn may_fragment(&self) -> bool {
            self.inner.may_fragment()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn rules_parse_addresses_and_ignore_the_rest() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("rules");
            std::fs::write(
                &path,
                "127.0.0.1:4501\n# a comment\n\n 127.0.0.1:4502 # cut\nnot an address\n",
            )
            .unwrap();
            let rules = read_rules(&path);
            assert_eq!(rules.len(), 2);
            assert!(rules.contains(&"127.0.0.1:4502".parse().unwrap()));
            assert!(read_rules(&dir.path().join("missing")).is_empty());
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use faults::FAULTS_FILE_ENV;

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket gets the buffer asked for, up to the kernel's cap: Linux reports twice the
    /// size set (the other half is its bookkeeping), so a socket left at the default
    /// (`rmem_default`, reported doubled) fails this wherever the cap is above the default.
    #[test]
    fn sockets_ask_for_large_buffers() {
        let cap = |key: &str| -> usize {
            std::fs::read_to_string(format!("/proc/sys/net/core/{key}"))
                .expect("Linux reports its socket buffer caps")
                .trim()
                .parse()
                .expect("a number")
        };
        let socket = socket2::Socket::from(udp_socket("127.0.0.1:0".parse().unwrap()).unwrap());
        let recv = socket.recv_buffer_size().unwrap();
        let send = socket.send_buffer_size().unwrap();
        assert!(
            recv >= 2 * SOCKET_BUFFER_BYTES.min(cap("rmem_max")),
            "{recv}"
        );
        assert!(
            send >= 2 * SOCKET_BUFFER_BYTES.min(cap("wmem_max")),
            "{send}"
        );
    }

    /// quinn's receive buffer per read is the payload limit times these segments: it must
    /// hold the largest coalesced read, and no more than two payloads' worth.
    #[test]
    fn receive_buffers_hold_one_coalesced_read() {
        let per_read = |segments: usize| usize::from(MAX_UDP_PAYLOAD) * receive_segments(segments);
        // Linux with GRO (64 segments), without it (1), and anything in between.
        for socket_segments in [64, 16, 2] {
            assert!(per_read(socket_segments) >= MAX_COALESCED_READ);
            assert!(per_read(socket_segments) <= 2 * MAX_COALESCED_READ);
        }
        assert_eq!(receive_segments(1), 1);
    }
}
