//! Messages over a QUIC connection: one unidirectional stream per message.
//!
//! A stream per message keeps framing trivial (a stream's end is the frame's end, checked),
//! lets a slow large message never block a heartbeat's stream, and gives backpressure for
//! free: opening a stream waits while the peer's stream limit is reached, and writing waits on
//! flow control. Streams are accepted in the order they were opened, so messages are
//! delivered in send order.

use std::collections::VecDeque;

use fedfuse_protocol::frame::{HEADER_LEN, MAX_MODEL_CHUNK_BYTES};
use fedfuse_protocol::msgs::{ModelChunk, ModelManifest, chunk_ranges};
use fedfuse_protocol::{FrameHeader, Message, MessageKind};
use tokio::sync::Mutex;

use crate::error::TransportError;

/// Largest message body accepted before the handshake agreed a limit: a Hello, Welcome or
/// Refused is a few hundred bytes, and a peer must not make the other side allocate the
/// frame format's gigabyte before saying who it is and what it can take.
pub const HANDSHAKE_MAX_MESSAGE_BYTES: u64 = 64 * 1024;

/// A connection to an authenticated peer.
pub struct PeerConnection {
    conn: quinn::Connection,
    peer_id: String,
    max_body: std::sync::atomic::AtomicU64,
    /// Messages that arrived while a model download was reading chunks.
    pending: Mutex<VecDeque<Message>>,
}

impl PeerConnection {
    pub(crate) fn new(conn: quinn::Connection, peer_id: String, max_body: u64) -> Self {
        Self {
            conn,
            peer_id,
            max_body: max_body.into(),
            pending: Mutex::new(VecDeque::new()),
        }
    }

    /// The store's name from its certificate (aggregator side) or the aggregator's verified
    /// server name (store side).
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    pub fn remote_address(&self) -> std::net::SocketAddr {
        self.conn.remote_address()
    }

    /// Sets the largest body accepted from the peer: the negotiated `max_message_bytes` once
    /// the handshake is done (until then, [`HANDSHAKE_MAX_MESSAGE_BYTES`]).
    pub fn set_max_message_bytes(&self, max: u64) {
        self.max_body.store(max, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends an encoded frame on a fresh stream.
    pub async fn send_frame(&self, frame: &[u8]) -> Result<(), TransportError> {
        let mut stream = self.conn.open_uni().await?;
        stream.write_all(frame).await?;
        // Only fails if the stream was already reset, which the write above would have seen.
        let _ = stream.finish();
        Ok(())
    }

    pub async fn send(&self, msg: &Message) -> Result<(), TransportError> {
        self.send_frame(&msg.encode()?).await
    }

    /// Receives the next message, in send order.
    pub async fn recv(&self) -> Result<Message, TransportError> {
        if let Some(msg) = self.pending.lock().await.pop_front() {
            return Ok(msg);
        }
        self.recv_from_wire().await
    }

    async fn recv_from_wire(&self) -> Result<Message, TransportError> {
        let (kind, body) = self.recv_frame().await?;
        Ok(Message::decode(kind, &body)?)
    }

    /// Receives the next frame without decoding its body (for relaying, or for measuring the
    /// transport apart from the codec). The size limit is still checked before buffering.
    /// Reads straight from the wire: messages queued during [`recv_model`](Self::recv_model)
    /// are left for [`recv`](Self::recv).
    pub async fn recv_frame(&self) -> Result<(MessageKind, Vec<u8>), TransportError> {
        let mut stream = self.conn.accept_uni().await?;
        let mut head = [0u8; HEADER_LEN];
        stream.read_exact(&mut head).await?;
        // The limit is checked before the body is allocated.
        let header = FrameHeader::parse(&head, self.max_body.load(std::sync::atomic::Ordering::Relaxed))?;
        let mut body = vec![0u8; header.body_len as usize];
        stream.read_exact(&mut body).await?;
        // One message per stream: a byte after the frame is a protocol violation (an error
        // here, from the size limit of 0). A peer that never finishes its stream stalls only
        // its own session, which the round deadline bounds.
        stream.read_to_end(0).await?;
        Ok((header.kind, body))
    }

    /// Receives the next message and insists on its kind.
    pub async fn expect(&self, expected: &'static str, kind: MessageKind) -> Result<Message, TransportError> {
        let msg = self.recv().await?;
        if msg.kind() != kind {
            return Err(TransportError::Unexpected {
                expected,
                got: msg.kind(),
            });
        }
        Ok(msg)
    }

    /// Sends a model blob as `ModelChunk`s written straight from `blob`: no second copy of the
    /// model is made, only one small frame prefix per chunk.
    pub async fn send_model(&self, manifest: &ModelManifest, blob: &[u8]) -> Result<(), TransportError> {
        if blob.len() as u64 != manifest.total_bytes {
            return Err(TransportError::Model(format!(
                "blob is {} bytes, manifest says {}",
                blob.len(),
                manifest.total_bytes
            )));
        }
        for range in chunk_ranges(manifest) {
            let bytes = &blob[range.start as usize..range.end as usize];
            let prefix = ModelChunk::frame_prefix(manifest.version, range.start, bytes.len());
            let mut stream = self.conn.open_uni().await?;
            stream.write_all(&prefix).await?;
            stream.write_all(bytes).await?;
            let _ = stream.finish();
        }
        Ok(())
    }

    /// Receives the blob a manifest announced into one buffer of exactly its size, and checks
    /// its content hash. Chunks must tile the blob exactly once; other messages that arrive
    /// meanwhile are kept for [`recv`](Self::recv).
    pub async fn recv_model(&self, manifest: &ModelManifest, max_model_bytes: u64) -> Result<Vec<u8>, TransportError> {
        if manifest.total_bytes > max_model_bytes {
            return Err(TransportError::Model(format!(
                "model of {} bytes exceeds this store's limit of {max_model_bytes}",
                manifest.total_bytes
            )));
        }
        let total = manifest.total_bytes as usize;
        let mut blob = vec![0u8; total];
        let expected: Vec<_> = chunk_ranges(manifest).collect();
        let mut seen = vec![false; expected.len()];
        let step = u64::from(manifest.chunk_bytes).clamp(1, MAX_MODEL_CHUNK_BYTES as u64);
        let mut remaining = expected.len();
        while remaining > 0 {
            let chunk = match self.recv_from_wire().await? {
                Message::ModelChunk(c) => c,
                other => {
                    self.pending.lock().await.push_back(other);
                    continue;
                }
            };
            let index = (chunk.offset / step) as usize;
            let ok = chunk.version == manifest.version
                && expected
                    .get(index)
                    .is_some_and(|r| r.start == chunk.offset && r.end - r.start == chunk.bytes.len() as u64)
                && !seen[index];
            if !ok {
                return Err(TransportError::Model(format!(
                    "unexpected chunk: version {} offset {} length {}",
                    chunk.version,
                    chunk.offset,
                    chunk.bytes.len()
                )));
            }
            seen[index] = true;
            remaining -= 1;
            let start = chunk.offset as usize;
            blob[start..start + chunk.bytes.len()].copy_from_slice(&chunk.bytes);
        }
        if fedfuse_protocol::content_hash(&blob) != manifest.content_hash {
            return Err(TransportError::Model("content hash mismatch".into()));
        }
        Ok(blob)
    }

    /// Ends a session politely: waits (up to `grace`) for the peer to close after it has read
    /// our last messages, then closes. Dropping a connection instead would discard whatever
    /// stream data is still unsent or unacknowledged.
    pub async fn close_gracefully(&self, reason: &str, grace: std::time::Duration) {
        let _ = tokio::time::timeout(grace, self.conn.closed()).await;
        self.close(reason);
    }

    pub fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }

    /// Resolves when the connection is closed, with the reason.
    pub async fn closed(&self) -> quinn::ConnectionError {
        self.conn.closed().await
    }

    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }
}
