//! Messages, one file per family, and the codec that frames them.

mod handshake;
mod model;
mod round;
mod session;
mod update;

pub use handshake::{Capabilities, Hello, RefusalReason, Refused, Welcome, negotiate};
pub use model::{ModelChunk, ModelManifest, chunk_ranges, decode_model_blob, encode_model_blob};
pub use round::{DpRequirement, LocalWork, MAX_LOCAL_EPOCHS, MAX_LOCAL_STEPS, NoiseMode, PrivacyUnit, RoundOffer, TrainingPlan};
pub use session::{Bye, Heartbeat};
pub use update::{Metric, PrivacySpend, RejectionReason, UpdateAccepted, UpdateRejected, UpdateUpload, validation_metric};

use serde::{Serialize, de::DeserializeOwned};

use crate::error::{DecodeError, EncodeError};
use crate::frame::{FrameHeader, HEADER_LEN, MessageKind};

/// Every message of a store session.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    Refused(Refused),
    RoundOffer(RoundOffer),
    ModelChunk(ModelChunk),
    UpdateUpload(UpdateUpload),
    UpdateAccepted(UpdateAccepted),
    UpdateRejected(UpdateRejected),
    Heartbeat(Heartbeat),
    Bye(Bye),
}

fn put<T: Serialize>(out: Vec<u8>, body: &T) -> Result<Vec<u8>, EncodeError> {
    postcard::to_extend(body, out).map_err(|e| EncodeError::Serialize(e.to_string()))
}

fn take<T: DeserializeOwned>(kind: MessageKind, body: &[u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| DecodeError::Malformed {
        kind,
        detail: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { kind, extra: rest.len() });
    }
    Ok(value)
}

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::Welcome(_) => MessageKind::Welcome,
            Message::Refused(_) => MessageKind::Refused,
            Message::RoundOffer(_) => MessageKind::RoundOffer,
            Message::ModelChunk(_) => MessageKind::ModelChunk,
            Message::UpdateUpload(_) => MessageKind::UpdateUpload,
            Message::UpdateAccepted(_) => MessageKind::UpdateAccepted,
            Message::UpdateRejected(_) => MessageKind::UpdateRejected,
            Message::Heartbeat(_) => MessageKind::Heartbeat,
            Message::Bye(_) => MessageKind::Bye,
        }
    }

    /// A lower bound on the encoded size, used to allocate the frame once.
    fn size_hint(&self) -> usize {
        HEADER_LEN
            + match self {
                Message::ModelChunk(c) => c.bytes.len() + 32,
                Message::UpdateUpload(u) => u.tensors.iter().map(|t| t.payload_bytes() + t.name.len() + 32).sum::<usize>() + 256,
                _ => 128,
            }
    }

    /// Encodes header and body into one buffer, checking the kind's hard limit.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(self.size_hint());
        out.extend_from_slice(&[0; HEADER_LEN]);
        let mut out = match self {
            Message::Hello(m) => put(out, m),
            Message::Welcome(m) => put(out, m),
            Message::Refused(m) => put(out, m),
            Message::RoundOffer(m) => put(out, m),
            Message::ModelChunk(m) => put(out, m),
            Message::UpdateUpload(m) => put(out, m),
            Message::UpdateAccepted(m) => put(out, m),
            Message::UpdateRejected(m) => put(out, m),
            Message::Heartbeat(m) => put(out, m),
            Message::Bye(m) => put(out, m),
        }?;
        let kind = self.kind();
        let len = (out.len() - HEADER_LEN) as u64;
        if len > kind.hard_limit() {
            return Err(EncodeError::Oversized {
                kind,
                len,
                limit: kind.hard_limit(),
            });
        }
        let header = FrameHeader {
            kind,
            body_len: len as u32,
        };
        out[..HEADER_LEN].copy_from_slice(&header.to_bytes());
        Ok(out)
    }

    /// Decodes one body of the given kind. A `Hello` from another protocol version yields
    /// [`DecodeError::VersionMismatch`] even if the rest of its layout is foreign to us, so
    /// the peer can always be told which versions differ.
    pub fn decode(kind: MessageKind, body: &[u8]) -> Result<Self, DecodeError> {
        if body.len() as u64 > kind.hard_limit() {
            return Err(DecodeError::Oversized {
                kind,
                len: body.len() as u64,
                limit: kind.hard_limit(),
            });
        }
        Ok(match kind {
            MessageKind::Hello => {
                let theirs = Hello::peek_version(body)?;
                if theirs != crate::PROTOCOL_VERSION {
                    return Err(DecodeError::VersionMismatch {
                        ours: crate::PROTOCOL_VERSION,
                        theirs,
                    });
                }
                Message::Hello(take(kind, body)?)
            }
            MessageKind::Welcome => Message::Welcome(take(kind, body)?),
            MessageKind::Refused => Message::Refused(take(kind, body)?),
            MessageKind::RoundOffer => Message::RoundOffer(take(kind, body)?),
            MessageKind::ModelChunk => Message::ModelChunk(take(kind, body)?),
            MessageKind::UpdateUpload => Message::UpdateUpload(take(kind, body)?),
            MessageKind::UpdateAccepted => Message::UpdateAccepted(take(kind, body)?),
            MessageKind::UpdateRejected => Message::UpdateRejected(take(kind, body)?),
            MessageKind::Heartbeat => Message::Heartbeat(take(kind, body)?),
            MessageKind::Bye => Message::Bye(take(kind, body)?),
        })
    }

    /// Decodes one whole frame (header and body) from a buffer holding exactly that frame.
    pub fn decode_frame(frame: &[u8], max_body: u64) -> Result<Self, DecodeError> {
        let head: &[u8; HEADER_LEN] = frame
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(DecodeError::Truncated {
                needed: HEADER_LEN - frame.len().min(HEADER_LEN),
            })?;
        let header = FrameHeader::parse(head, max_body)?;
        let body = &frame[HEADER_LEN..];
        let want = header.body_len as usize;
        if body.len() < want {
            return Err(DecodeError::Truncated {
                needed: want - body.len(),
            });
        }
        if body.len() > want {
            return Err(DecodeError::TrailingBytes {
                kind: header.kind,
                extra: body.len() - want,
            });
        }
        Self::decode(header.kind, body)
    }
}
