//! The fedfuse wire format.
//!
//! Every byte a store or the aggregator receives passes through this crate first, so it is
//! written to be safe on hostile input: decoding returns a typed [`DecodeError`], never panics,
//! and never allocates more than the size limit of the message kind it is reading.
//!
//! Layout (modelled on rustls' `msgs/`):
//! - [`frame`]: the length-prefixed frame header, per-kind size limits, and the incremental
//!   [`frame::FrameDecoder`] used on byte streams;
//! - [`msgs`]: one file per message family (handshake, round, model, update, session);
//! - [`tensor`]: named tensors and their [`tensor::UpdateEncoding`]s (f32, f16, int8 with
//!   stochastic rounding, row-sparse).
//!
//! Two things are frozen for every future protocol version so that peers of different versions
//! can always tell each other so: the frame header (`kind: u8`, `len: u32` little-endian) and
//! the first field of [`msgs::Hello`] (the protocol version).

pub mod error;
pub mod frame;
pub mod msgs;
pub mod tensor;

pub use error::{DecodeError, EncodeError};
pub use frame::{FrameDecoder, FrameHeader, MessageKind};
pub use msgs::Message;

/// The version of this wire format. Bumped on any change a peer of the previous version could
/// not decode.
///
/// 2: a round's `TrainingPlan` names the parameters a store trains (`trainable`).
pub const PROTOCOL_VERSION: u16 = 2;

/// The content hash used for model blobs and checkpoints (BLAKE3, 32 bytes).
pub type ContentHash = [u8; 32];

/// Hashes model bytes the way both peers must.
pub fn content_hash(bytes: &[u8]) -> ContentHash {
    *blake3::hash(bytes).as_bytes()
}
