//! Errors from decoding untrusted bytes and from encoding our own messages.

use crate::frame::MessageKind;

/// Why bytes from a peer were not accepted. Every variant is a normal outcome on hostile or
/// broken input; none of them means a bug on our side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("{kind:?} frame of {len} bytes exceeds its limit of {limit} bytes")]
    Oversized { kind: MessageKind, len: u64, limit: u64 },
    #[error("truncated input: needed {needed} more bytes")]
    Truncated { needed: usize },
    #[error("malformed {kind:?} body: {detail}")]
    Malformed { kind: MessageKind, detail: String },
    #[error("{kind:?} body has {extra} trailing bytes")]
    TrailingBytes { kind: MessageKind, extra: usize },
    #[error("peer speaks protocol version {theirs}, we speak {ours}")]
    VersionMismatch { ours: u16, theirs: u16 },
    #[error("invalid tensor {name:?}: {detail}")]
    InvalidTensor { name: String, detail: String },
}

/// Why we could not encode a message of our own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{kind:?} message of {len} bytes exceeds its limit of {limit} bytes")]
    Oversized { kind: MessageKind, len: u64, limit: u64 },
    #[error("serialization failed: {0}")]
    Serialize(String),
    #[error("cannot encode tensor {name:?}: {detail}")]
    Tensor { name: String, detail: String },
}
