//! A UDP socket wrapper that keeps GSO batches within what the kernel accepts.
//!
//! quinn 0.11 hands the socket GSO batches of up to `max_transmit_segments × MTU` bytes, but
//! Linux refuses a single UDP send over 64 KiB with `EMSGSIZE`, and quinn-udp discards that
//! error as if it were a failed MTU probe (quinn-rs/quinn#2199). With a 1452-byte MTU the
//! batches happen to fit; once MTU discovery climbs (jumbo frames, loopback), whole batches
//! vanish, the losses read as an MTU black hole, and the path falls back to 1200 bytes. Here an
//! over-large batch is cut into legal sends, so GSO and large MTUs work together.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Largest UDP payload one send may carry: 65 535 minus the IPv6 and UDP headers (the IPv4
/// limit, 65 507, is higher, so one constant is safe for both).
pub const MAX_SEND_BYTES: usize = 65_535 - 40 - 8;

/// Splits one GSO transmit's contents into the byte ranges of legal sends: whole segments, at
/// most [`MAX_SEND_BYTES`] per send.
pub fn split_batch(len: usize, segment_size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let per_send = (MAX_SEND_BYTES / segment_size.max(1)).max(1) * segment_size.max(1);
    (0..len.div_ceil(per_send)).map(move |i| i * per_send..((i + 1) * per_send).min(len))
}

pub(crate) struct GsoSafeSocket {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl GsoSafeSocket {
    pub(crate) fn wrap(inner: Arc<dyn AsyncUdpSocket>) -> Arc<dyn AsyncUdpSocket> {
        Arc::new(Self { inner })
    }
}

impl fmt::Debug for GsoSafeSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GsoSafeSocket").field("inner", &self.inner).finish()
    }
}

impl AsyncUdpSocket for GsoSafeSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let segment_size = match transmit.segment_size {
            Some(s) if transmit.contents.len() > MAX_SEND_BYTES => s,
            _ => return self.inner.try_send(transmit),
        };
        for (i, range) in split_batch(transmit.contents.len(), segment_size).enumerate() {
            let contents = &transmit.contents[range];
            let part = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents,
                segment_size: (contents.len() > segment_size).then_some(segment_size),
                src_ip: transmit.src_ip,
            };
            match self.inner.try_send(&part) {
                Ok(()) => {}
                // Nothing sent yet: quinn will retry the whole transmit when writable.
                Err(e) if i == 0 => return Err(e),
                // Part of the batch is out; the rest is lost like any dropped datagram and
                // QUIC's loss recovery resends it. Retrying the whole batch would duplicate.
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(&self, cx: &mut Context, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> Poll<io::Result<usize>> {
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
    fn batches_split_into_whole_segments_within_the_send_limit() {
        let parts: Vec<_> = split_batch(64 * 1452, 1452).collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|r| r.len() <= MAX_SEND_BYTES && r.len() % 1452 == 0));
        assert_eq!(parts.last().unwrap().end, 64 * 1452);
        // A final short segment stays whole at the end.
        let parts: Vec<_> = split_batch(3 * 65_000 + 10, 65_000).collect();
        assert_eq!(parts, vec![0..65_000, 65_000..130_000, 130_000..195_000, 195_000..195_010]);
        // Small batches are one send.
        assert_eq!(split_batch(10 * 1200, 1200).count(), 1);
    }
}
