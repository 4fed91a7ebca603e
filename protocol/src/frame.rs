//! Frames: `kind: u8`, `len: u32` little-endian, then `len` bytes of postcard body.
//!
//! The length is checked against the limit of the kind *before* any body byte is buffered, so
//! a peer cannot make us allocate more than that limit by lying about a length.

use crate::error::DecodeError;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 5;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Largest model chunk a sender may put in one [`MessageKind::ModelChunk`] frame.
pub const MAX_MODEL_CHUNK_BYTES: usize = 16 * MIB as usize;

/// Every message kind on the wire, with its frozen one-byte code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum MessageKind {
    Hello = 0x01,
    Welcome = 0x02,
    Refused = 0x03,
    RoundOffer = 0x10,
    ModelChunk = 0x11,
    UpdateUpload = 0x20,
    UpdateAccepted = 0x21,
    UpdateRejected = 0x22,
    Heartbeat = 0x30,
    Bye = 0x31,
}

impl MessageKind {
    pub const ALL: [MessageKind; 10] = [
        MessageKind::Hello,
        MessageKind::Welcome,
        MessageKind::Refused,
        MessageKind::RoundOffer,
        MessageKind::ModelChunk,
        MessageKind::UpdateUpload,
        MessageKind::UpdateAccepted,
        MessageKind::UpdateRejected,
        MessageKind::Heartbeat,
        MessageKind::Bye,
    ];

    pub fn from_code(code: u8) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|k| *k as u8 == code)
            .ok_or(DecodeError::UnknownKind(code))
    }

    /// The hard ceiling on a body of this kind. A peer may announce a lower
    /// `max_message_bytes` in its capabilities; nothing can raise these.
    ///
    /// Control messages are tiny, so their limits are tight: a garbage length on a control
    /// frame is rejected before a single body byte is read. Model chunks are bounded by the
    /// chunk size; an update carries a whole model delta, hence the large ceiling.
    pub const fn hard_limit(self) -> u64 {
        match self {
            MessageKind::Hello | MessageKind::Welcome | MessageKind::Refused => 64 * KIB,
            MessageKind::RoundOffer => 64 * KIB,
            MessageKind::ModelChunk => MAX_MODEL_CHUNK_BYTES as u64 + 64,
            MessageKind::UpdateUpload => 1024 * MIB,
            MessageKind::UpdateAccepted | MessageKind::UpdateRejected => 64 * KIB,
            MessageKind::Heartbeat => 64,
            MessageKind::Bye => 4 * KIB,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: MessageKind,
    pub body_len: u32,
}

impl FrameHeader {
    /// Parses a header and checks the body length against `min(hard limit, max_body)`.
    pub fn parse(bytes: &[u8; HEADER_LEN], max_body: u64) -> Result<Self, DecodeError> {
        let kind = MessageKind::from_code(bytes[0])?;
        let body_len = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        let limit = kind.hard_limit().min(max_body);
        if u64::from(body_len) > limit {
            return Err(DecodeError::Oversized {
                kind,
                len: body_len.into(),
                limit,
            });
        }
        Ok(Self { kind, body_len })
    }

    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let len = self.body_len.to_le_bytes();
        [self.kind as u8, len[0], len[1], len[2], len[3]]
    }
}

/// Incremental deframer for a byte stream: push what arrived, pop whole frames.
///
/// Buffers at most one header plus one body, and the body only up to the limit checked on
/// its header, so memory stays bounded by the largest permitted frame.
#[derive(Debug)]
pub struct FrameDecoder {
    max_body: u64,
    buf: Vec<u8>,
    poisoned: Option<DecodeError>,
}

impl FrameDecoder {
    /// `max_body` lowers every kind's hard limit (for example to the peer-agreed maximum).
    pub fn new(max_body: u64) -> Self {
        Self {
            max_body,
            buf: Vec::new(),
            poisoned: None,
        }
    }

    /// Appends received bytes. After an error the stream is unrecoverable (we can no longer
    /// find frame boundaries), so further input is refused with the same error.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        // Validate the header as soon as it is complete, before buffering the body.
        let mut rest = bytes;
        while !rest.is_empty() {
            let want = match self.pending_header()? {
                None => HEADER_LEN - self.buf.len(),
                Some(h) => HEADER_LEN + h.body_len as usize - self.buf.len(),
            };
            if want == 0 {
                // A complete frame is waiting to be popped: keep further bytes after it.
                self.buf.extend_from_slice(rest);
                return Ok(());
            }
            let take = want.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            self.pending_header()?;
        }
        Ok(())
    }

    fn pending_header(&mut self) -> Result<Option<FrameHeader>, DecodeError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let head: [u8; HEADER_LEN] = self.buf[..HEADER_LEN].try_into().expect("length checked");
        match FrameHeader::parse(&head, self.max_body) {
            Ok(h) => Ok(Some(h)),
            Err(e) => {
                self.buf.clear();
                self.poisoned = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Returns the next complete frame's kind and body, if one is buffered.
    pub fn pop(&mut self) -> Result<Option<(MessageKind, Vec<u8>)>, DecodeError> {
        if let Some(err) = &self.poisoned {
            return Err(err.clone());
        }
        let Some(h) = self.pending_header()? else {
            return Ok(None);
        };
        let end = HEADER_LEN + h.body_len as usize;
        if self.buf.len() < end {
            return Ok(None);
        }
        let rest = self.buf.split_off(end);
        let mut frame = std::mem::replace(&mut self.buf, rest);
        frame.drain(..HEADER_LEN);
        // Re-validate any header that followed in the same push.
        self.pending_header()?;
        Ok(Some((h.kind, frame)))
    }

    /// Bytes still needed to complete the frame in progress (0 when one is ready or none begun).
    pub fn bytes_wanted(&self) -> usize {
        if self.buf.len() < HEADER_LEN {
            return if self.buf.is_empty() { 0 } else { HEADER_LEN - self.buf.len() };
        }
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        (HEADER_LEN + len as usize).saturating_sub(self.buf.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_unknown_codes_are_errors() {
        for k in MessageKind::ALL {
            assert_eq!(MessageKind::from_code(k as u8), Ok(k));
        }
        let known: Vec<u8> = MessageKind::ALL.iter().map(|k| *k as u8).collect();
        for code in 0..=255u8 {
            if !known.contains(&code) {
                assert_eq!(MessageKind::from_code(code), Err(DecodeError::UnknownKind(code)));
            }
        }
    }

    #[test]
    fn oversized_header_is_rejected_before_the_body_arrives() {
        let mut d = FrameDecoder::new(u64::MAX);
        let head = FrameHeader {
            kind: MessageKind::Heartbeat,
            body_len: 65,
        }
        .to_bytes();
        let err = d.push(&head).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Oversized {
                kind: MessageKind::Heartbeat,
                len: 65,
                limit: 64
            }
        );
        // The stream is poisoned: later bytes are refused with the same error.
        assert_eq!(d.push(&[0]).unwrap_err(), err);
        assert!(d.buf.is_empty(), "nothing of the oversized body was buffered");
    }

    #[test]
    fn negotiated_limit_lowers_the_hard_limit() {
        let head = FrameHeader {
            kind: MessageKind::UpdateUpload,
            body_len: 2048,
        }
        .to_bytes();
        assert!(FrameHeader::parse(&head, 4096).is_ok());
        assert!(matches!(
            FrameHeader::parse(&head, 1024),
            Err(DecodeError::Oversized { limit: 1024, .. })
        ));
    }

    #[test]
    fn frames_split_at_every_byte_boundary_reassemble() {
        let mut stream = Vec::new();
        for (kind, body) in [
            (MessageKind::Heartbeat, vec![1u8, 2, 3]),
            (MessageKind::Bye, vec![]),
            (MessageKind::Refused, vec![9u8; 300]),
        ] {
            stream.extend_from_slice(
                &FrameHeader {
                    kind,
                    body_len: body.len() as u32,
                }
                .to_bytes(),
            );
            stream.extend_from_slice(&body);
        }
        for split in 0..=stream.len() {
            let mut d = FrameDecoder::new(u64::MAX);
            let mut out = Vec::new();
            for part in [&stream[..split], &stream[split..]] {
                d.push(part).unwrap();
                while let Some(f) = d.pop().unwrap() {
                    out.push(f);
                }
            }
            assert_eq!(out.len(), 3, "split at {split}");
            assert_eq!(out[0], (MessageKind::Heartbeat, vec![1, 2, 3]));
            assert_eq!(out[1], (MessageKind::Bye, vec![]));
            assert_eq!(out[2].1.len(), 300);
            assert_eq!(d.bytes_wanted(), 0);
        }
    }

    #[test]
    fn partial_frame_reports_bytes_wanted() {
        let mut d = FrameDecoder::new(u64::MAX);
        d.push(&[MessageKind::Bye as u8, 10, 0]).unwrap();
        assert_eq!(d.bytes_wanted(), 2);
        d.push(&[0, 0, 1, 2]).unwrap();
        assert_eq!(d.bytes_wanted(), 8);
        assert_eq!(d.pop().unwrap(), None);
    }
}
