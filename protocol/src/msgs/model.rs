//! The global model, downloaded in chunks so neither side holds it twice.

use serde::{Deserialize, Serialize};

use crate::ContentHash;
use crate::frame::MAX_MODEL_CHUNK_BYTES;

/// Identifies a model blob and how it will be chunked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelManifest {
    pub version: u64,
    pub content_hash: ContentHash,
    pub total_bytes: u64,
    pub chunk_bytes: u32,
}

/// One piece of a model blob. Chunks carry their offset, so they may travel on parallel
/// streams and arrive in any order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelChunk {
    pub version: u64,
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl ModelChunk {
    /// The frame header and body prefix of a chunk of `len` bytes, so a sender can write the
    /// chunk straight from its model buffer after it: `prefix ++ bytes` is exactly the frame
    /// `Message::ModelChunk(..).encode()` would build, without copying the bytes twice.
    pub fn frame_prefix(version: u64, offset: u64, len: usize) -> Vec<u8> {
        use crate::frame::{FrameHeader, HEADER_LEN, MessageKind};
        let mut out = vec![0u8; HEADER_LEN];
        out = postcard::to_extend(&(version, offset, len as u64), out).expect("writing to a Vec cannot fail");
        let body_len = (out.len() - HEADER_LEN + len) as u32;
        out[..HEADER_LEN].copy_from_slice(
            &FrameHeader {
                kind: MessageKind::ModelChunk,
                body_len,
            }
            .to_bytes(),
        );
        out
    }
}

/// The bytes of a global model as it is offered: its parameter tensors (f32, dense), postcard
/// encoded. Self-describing, so a store learns names and shapes from the model itself.
pub fn encode_model_blob(tensors: &[crate::tensor::NamedTensor]) -> Vec<u8> {
    postcard::to_allocvec(tensors).expect("writing to a Vec cannot fail")
}

/// Decodes a model blob, validating every tensor as it would an update's.
pub fn decode_model_blob(bytes: &[u8]) -> Result<Vec<(crate::tensor::NamedTensor, Vec<f32>)>, crate::DecodeError> {
    let tensors: Vec<crate::tensor::NamedTensor> = postcard::from_bytes(bytes).map_err(|e| crate::DecodeError::Malformed {
        kind: crate::MessageKind::ModelChunk,
        detail: format!("model blob: {e}"),
    })?;
    tensors
        .into_iter()
        .map(|t| {
            // Dense only: a row-sparse payload would let a few bytes declare a huge table.
            if !matches!(t.payload, crate::tensor::TensorPayload::Dense(_)) {
                return Err(crate::DecodeError::InvalidTensor {
                    name: t.name.clone(),
                    detail: "model blobs carry dense tensors only".into(),
                });
            }
            let values = t.to_f32(&t.shape.clone())?;
            Ok((t, values))
        })
        .collect()
}

/// The byte ranges a manifest's blob is cut into. An empty iterator for a zero-length blob;
/// a chunk size of 0 or above [`MAX_MODEL_CHUNK_BYTES`] is clamped into range.
pub fn chunk_ranges(manifest: &ModelManifest) -> impl Iterator<Item = std::ops::Range<u64>> {
    let step = u64::from(manifest.chunk_bytes).clamp(1, MAX_MODEL_CHUNK_BYTES as u64);
    let total = manifest.total_bytes;
    (0..total.div_ceil(step)).map(move |i| i * step..((i + 1) * step).min(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_blob_exactly_once() {
        let m = |total, chunk| ModelManifest {
            version: 1,
            content_hash: [0; 32],
            total_bytes: total,
            chunk_bytes: chunk,
        };
        assert_eq!(chunk_ranges(&m(10, 4)).collect::<Vec<_>>(), vec![0..4, 4..8, 8..10]);
        assert_eq!(chunk_ranges(&m(8, 4)).count(), 2);
        assert_eq!(chunk_ranges(&m(0, 4)).count(), 0);
        assert_eq!(chunk_ranges(&m(3, 0)).count(), 3);
    }

    #[test]
    fn model_blobs_round_trip_and_garbage_is_an_error() {
        use crate::tensor::{NamedTensor, UpdateEncoding, ValueEncoding};
        let t = NamedTensor::encode(
            "w",
            &[2, 2],
            &[1.0, 2.0, 3.0, 4.0],
            UpdateEncoding::Dense(ValueEncoding::F32),
            0,
        )
        .unwrap();
        let blob = encode_model_blob(std::slice::from_ref(&t));
        let back = decode_model_blob(&blob).unwrap();
        assert_eq!(back[0].1, vec![1.0, 2.0, 3.0, 4.0]);
        assert!(decode_model_blob(&blob[..blob.len() - 1]).is_err());
        assert!(decode_model_blob(&[0xff; 16]).is_err());
    }

    #[test]
    fn frame_prefix_plus_bytes_is_the_encoded_frame() {
        for len in [0usize, 1, 127, 128, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut frame = ModelChunk::frame_prefix(9, 1 << 40, len);
            frame.extend_from_slice(&bytes);
            let encoded = crate::Message::ModelChunk(ModelChunk {
                version: 9,
                offset: 1 << 40,
                bytes,
            })
            .encode()
            .unwrap();
            assert_eq!(frame, encoded, "len {len}");
        }
    }
}
