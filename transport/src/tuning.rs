//! Transport settings. quinn's defaults are sized for many small flows on the open internet
//! (a 1.25 MB stream window, a 1200-byte initial MTU with discovery capped at 1452); a model
//! update is hundreds of megabytes on one connection, so we open the windows and let MTU
//! discovery climb as far as the path allows.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportTuning {
    /// Bytes a peer may send on one stream before we read them.
    pub stream_window: u64,
    /// Bytes a peer may send on the whole connection before we read them.
    pub connection_window: u64,
    /// Bytes we keep in flight unacknowledged, across streams.
    pub send_window: u64,
    /// Streams (= messages) a peer may have open toward us at once.
    pub max_concurrent_streams: u32,
    /// MTU to start with; 1200 is safe on every path.
    pub initial_mtu: u16,
    /// Highest MTU discovery may probe. Discovery only keeps what the path acknowledges, so a
    /// high ceiling is safe: on Ethernet it settles near 1500, on loopback near 64 KiB.
    pub mtu_discovery_upper_bound: u16,
    /// Let the kernel segment large sends (UDP GSO) where it can.
    pub segmentation_offload: bool,
    /// UDP socket send and receive buffer, in bytes (the kernel caps it at
    /// `net.core.rmem_max` / `wmem_max`). The default of about 208 KB holds only three 64 KiB
    /// datagrams: a burst overflows it, and the losses read as an MTU black hole.
    pub socket_buffer_bytes: usize,
    /// Milliseconds between QUIC keep-alive probes on an idle connection.
    pub keep_alive_ms: u64,
    /// Milliseconds of silence after which a connection is considered lost.
    pub idle_timeout_ms: u64,
}

impl Default for TransportTuning {
    fn default() -> Self {
        Self {
            stream_window: 64 << 20,
            connection_window: 256 << 20,
            send_window: 128 << 20,
            max_concurrent_streams: 64,
            initial_mtu: 1200,
            mtu_discovery_upper_bound: 65_487,
            segmentation_offload: true,
            socket_buffer_bytes: 4 << 20,
            keep_alive_ms: 5_000,
            idle_timeout_ms: 30_000,
        }
    }
}

impl TransportTuning {
    /// quinn's own defaults (with our keep-alive and idle timeout), as the benchmark baseline.
    pub fn quinn_defaults() -> Self {
        Self {
            stream_window: 1_250_000,
            connection_window: u64::from(u32::MAX),
            send_window: 10_000_000,
            max_concurrent_streams: 100,
            initial_mtu: 1200,
            mtu_discovery_upper_bound: 1452,
            socket_buffer_bytes: 0,
            ..Self::default()
        }
    }

    /// Binds a UDP socket with the configured buffer sizes (0 leaves the OS default).
    pub(crate) fn bind_udp(&self, addr: std::net::SocketAddr) -> std::io::Result<std::net::UdpSocket> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )?;
        if addr.is_ipv6() {
            // Dual-stack where the OS allows it; not fatal where it does not.
            let _ = socket.set_only_v6(false);
        }
        if self.socket_buffer_bytes > 0 {
            // Best effort: the kernel silently caps these at its maximum.
            let _ = socket.set_recv_buffer_size(self.socket_buffer_bytes);
            let _ = socket.set_send_buffer_size(self.socket_buffer_bytes);
            let got = socket.recv_buffer_size().unwrap_or(0);
            if got < self.socket_buffer_bytes {
                tracing::debug!(
                    wanted = self.socket_buffer_bytes,
                    got,
                    "UDP receive buffer capped by the kernel (net.core.rmem_max)"
                );
            }
        }
        socket.bind(&addr.into())?;
        Ok(socket.into())
    }

    pub(crate) fn transport_config(&self) -> Arc<quinn::TransportConfig> {
        let var = |v: u64| quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX);
        let mut t = quinn::TransportConfig::default();
        t.stream_receive_window(var(self.stream_window))
            .receive_window(var(self.connection_window))
            .send_window(self.send_window)
            .max_concurrent_uni_streams(self.max_concurrent_streams.into())
            .max_concurrent_bidi_streams(0u32.into())
            .initial_mtu(self.initial_mtu.max(1200))
            .enable_segmentation_offload(self.segmentation_offload)
            .keep_alive_interval(Some(Duration::from_millis(self.keep_alive_ms)))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms))
                    .unwrap_or(quinn::IdleTimeout::from(quinn::VarInt::MAX)),
            ));
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.mtu_discovery_upper_bound.max(self.initial_mtu));
        t.mtu_discovery_config(Some(mtu));
        Arc::new(t)
    }
}
