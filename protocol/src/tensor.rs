//! Named tensors and how their values travel.
//!
//! Values are carried as raw little-endian bytes rather than as serde sequences: a 50M-float
//! update would otherwise cost one serde call per element. Decoding checks every length and
//! index against the declared shape, so a hostile tensor can neither overrun nor over-allocate.

use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, EncodeError};

/// Most elements one tensor may declare (2^31): larger than any layer we train, small enough
/// that `elements * 4` never overflows on the platforms we run on.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 31;
/// Longest tensor name, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most dimensions of a tensor.
pub const MAX_RANK: usize = 8;

/// How the values of a dense tensor, or the rows of a row-sparse one, are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ValueEncoding {
    /// Exact.
    F32,
    /// IEEE half precision, round to nearest even.
    F16,
    /// One byte per value with a per-tensor scale, stochastically rounded so that the decoded
    /// value is an unbiased estimate of the original (FedAvg averages these, so bias would
    /// accumulate while variance averages out).
    Int8,
}

impl ValueEncoding {
    const fn width(self) -> usize {
        match self {
            ValueEncoding::F32 => 4,
            ValueEncoding::F16 => 2,
            ValueEncoding::Int8 => 1,
        }
    }
}

/// An encoding a store can use for an update, announced in its capabilities and chosen by the
/// aggregator in the training plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UpdateEncoding {
    Dense(ValueEncoding),
    /// Only rows with a non-zero entry are sent: an embedding table's update touches only the
    /// items a store has seen.
    RowSparse(ValueEncoding),
}

impl UpdateEncoding {
    pub const ALL: [UpdateEncoding; 6] = [
        UpdateEncoding::Dense(ValueEncoding::F32),
        UpdateEncoding::Dense(ValueEncoding::F16),
        UpdateEncoding::Dense(ValueEncoding::Int8),
        UpdateEncoding::RowSparse(ValueEncoding::F32),
        UpdateEncoding::RowSparse(ValueEncoding::F16),
        UpdateEncoding::RowSparse(ValueEncoding::Int8),
    ];
}

/// Encoded values: raw bytes plus what is needed to read them back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EncodedValues {
    F32(#[serde(with = "serde_bytes")] Vec<u8>),
    F16(#[serde(with = "serde_bytes")] Vec<u8>),
    Int8 {
        scale: f32,
        #[serde(with = "serde_bytes")]
        values: Vec<u8>,
    },
}

/// The payload of a named tensor. Not recursive on purpose: nested encodings would let a
/// hostile peer drive the decoder's stack as deep as it likes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TensorPayload {
    Dense(EncodedValues),
    RowSparse {
        /// Strictly increasing row indices into the first dimension.
        row_indices: Vec<u32>,
        /// The listed rows, concatenated.
        rows: EncodedValues,
    },
}

/// A tensor as it crosses the wire: a name that both sides' models agree on, a shape, values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<u32>,
    pub payload: TensorPayload,
}

fn tensor_err(name: &str, detail: impl Into<String>) -> DecodeError {
    DecodeError::InvalidTensor {
        name: name.chars().take(MAX_NAME_BYTES).collect(),
        detail: detail.into(),
    }
}

/// Checks a name and shape against what the wire carries (names of 1..=`MAX_NAME_BYTES`
/// bytes, rank ≤ `MAX_RANK`, ≤ [`MAX_TENSOR_ELEMENTS`] values) and returns the element count:
/// a model imported from elsewhere is checked with it before it becomes a federation's.
pub fn checked_elements(name: &str, shape: &[u32]) -> Result<u64, DecodeError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(tensor_err(name, format!("name must be 1..={MAX_NAME_BYTES} bytes")));
    }
    if shape.len() > MAX_RANK {
        return Err(tensor_err(name, format!("rank {} exceeds {MAX_RANK}", shape.len())));
    }
    let mut n: u64 = 1;
    for &d in shape {
        n = n
            .checked_mul(u64::from(d))
            .filter(|n| *n <= MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| tensor_err(name, format!("shape {shape:?} exceeds {MAX_TENSOR_ELEMENTS} elements")))?;
    }
    Ok(n)
}

impl EncodedValues {
    fn encoding(&self) -> ValueEncoding {
        match self {
            EncodedValues::F32(_) => ValueEncoding::F32,
            EncodedValues::F16(_) => ValueEncoding::F16,
            EncodedValues::Int8 { .. } => ValueEncoding::Int8,
        }
    }

    fn byte_len(&self) -> usize {
        match self {
            EncodedValues::F32(b) | EncodedValues::F16(b) => b.len(),
            EncodedValues::Int8 { values, .. } => values.len(),
        }
    }

    /// Encodes `values`. `seed` drives int8's stochastic rounding; pass fresh entropy in
    /// production (the rounding is a compression step after any DP noise, so it needs to be
    /// unbiased, not secret).
    pub fn encode(values: &[f32], encoding: ValueEncoding, seed: u64) -> Self {
        match encoding {
            ValueEncoding::F32 => {
                let mut out = vec![0u8; values.len() * 4];
                for (o, v) in out.chunks_exact_mut(4).zip(values) {
                    o.copy_from_slice(&v.to_le_bytes());
                }
                EncodedValues::F32(out)
            }
            ValueEncoding::F16 => {
                let mut out = vec![0u8; values.len() * 2];
                for (o, v) in out.chunks_exact_mut(2).zip(values) {
                    o.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
                }
                EncodedValues::F16(out)
            }
            ValueEncoding::Int8 => {
                let max_abs = values.iter().filter(|v| v.is_finite()).fold(0f32, |m, v| m.max(v.abs()));
                let scale = max_abs / 127.0;
                let mut out = vec![0u8; values.len()];
                if scale > 0.0 && scale.is_finite() {
                    let inv = 1.0 / scale;
                    let mut rng = SmallRng::seed_from_u64(seed);
                    for (o, v) in out.iter_mut().zip(values) {
                        // floor(x + u), u ~ U[0,1): E = x, so the decoded mean is unbiased.
                        let u = (rng.random::<u32>() >> 8) as f32 * (1.0 / (1u32 << 24) as f32);
                        let q = (v * inv + u).floor().clamp(-127.0, 127.0);
                        *o = (q as i8) as u8;
                    }
                }
                EncodedValues::Int8 { scale, values: out }
            }
        }
    }

    /// Decodes exactly `count` values into `out` (which must have that length).
    fn decode_into(&self, name: &str, out: &mut [f32]) -> Result<(), DecodeError> {
        let width = self.encoding().width();
        if self.byte_len() != out.len() * width {
            return Err(tensor_err(
                name,
                format!(
                    "{} value bytes, expected {} ({} values × {width})",
                    self.byte_len(),
                    out.len() * width,
                    out.len()
                ),
            ));
        }
        match self {
            EncodedValues::F32(b) => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
            EncodedValues::F16(b) => {
                for (o, c) in out.iter_mut().zip(b.chunks_exact(2)) {
                    *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
            EncodedValues::Int8 { scale, values } => {
                if !scale.is_finite() || *scale < 0.0 {
                    return Err(tensor_err(
                        name,
                        format!("int8 scale {scale} is not a finite non-negative number"),
                    ));
                }
                for (o, q) in out.iter_mut().zip(values) {
                    *o = f32::from(*q as i8) * scale;
                }
            }
        }
        Ok(())
    }
}

impl NamedTensor {
    /// Encodes a dense f32 tensor. Fails if `values` does not match `shape`.
    pub fn encode(
        name: impl Into<String>,
        shape: &[u32],
        values: &[f32],
        encoding: UpdateEncoding,
        seed: u64,
    ) -> Result<Self, EncodeError> {
        let name = name.into();
        let elements = checked_elements(&name, shape).map_err(|e| EncodeError::Tensor {
            name: name.clone(),
            detail: e.to_string(),
        })?;
        if elements != values.len() as u64 {
            return Err(EncodeError::Tensor {
                name,
                detail: format!("{} values for shape {shape:?} ({elements} elements)", values.len()),
            });
        }
        let payload = match encoding {
            UpdateEncoding::Dense(e) => TensorPayload::Dense(EncodedValues::encode(values, e, seed)),
            UpdateEncoding::RowSparse(e) => {
                let cols = match shape {
                    [_, cols] => *cols as usize,
                    _ => {
                        return Err(EncodeError::Tensor {
                            name,
                            detail: format!("row-sparse needs a 2-D shape, got {shape:?}"),
                        });
                    }
                };
                let mut row_indices = Vec::new();
                let mut kept = Vec::new();
                if cols > 0 {
                    for (i, row) in values.chunks_exact(cols).enumerate() {
                        if row.iter().any(|v| *v != 0.0) {
                            row_indices.push(i as u32);
                            kept.extend_from_slice(row);
                        }
                    }
                }
                TensorPayload::RowSparse {
                    row_indices,
                    rows: EncodedValues::encode(&kept, e, seed),
                }
            }
        };
        Ok(Self {
            name,
            shape: shape.to_vec(),
            payload,
        })
    }

    /// The number of elements the shape declares, after validating name and shape.
    pub fn element_count(&self) -> Result<u64, DecodeError> {
        checked_elements(&self.name, &self.shape)
    }

    /// Decodes to dense f32 values in row-major order, validating every length and index.
    ///
    /// The caller names the shape its model expects, and a tensor of any other shape is
    /// rejected before anything is allocated: a row-sparse tensor is an expansion (a few bytes
    /// can declare a table of 2^31 zeros), so the declared shape alone must never size an
    /// allocation. Values are returned as sent: rejecting NaN/inf is the aggregator's policy.
    pub fn to_f32(&self, expected_shape: &[u32]) -> Result<Vec<f32>, DecodeError> {
        if self.shape != expected_shape {
            return Err(tensor_err(
                &self.name,
                format!("shape {:?}, expected {expected_shape:?}", self.shape),
            ));
        }
        let n = self.element_count()? as usize;
        match &self.payload {
            TensorPayload::Dense(values) => {
                // Check the byte length before allocating the output.
                if values.byte_len() != n * values.encoding().width() {
                    return Err(tensor_err(
                        &self.name,
                        format!("{} value bytes for {n} elements", values.byte_len()),
                    ));
                }
                let mut out = vec![0f32; n];
                values.decode_into(&self.name, &mut out)?;
                Ok(out)
            }
            TensorPayload::RowSparse { row_indices, rows } => {
                let [n_rows, cols] = self.shape[..] else {
                    return Err(tensor_err(
                        &self.name,
                        format!("row-sparse needs a 2-D shape, got {:?}", self.shape),
                    ));
                };
                if let Some(w) = row_indices.windows(2).find(|w| w[0] >= w[1]) {
                    return Err(tensor_err(
                        &self.name,
                        format!("row indices not strictly increasing at {} then {}", w[0], w[1]),
                    ));
                }
                if let Some(&last) = row_indices.last().filter(|&&r| r >= n_rows) {
                    return Err(tensor_err(
                        &self.name,
                        format!("row index {last} out of range for {n_rows} rows"),
                    ));
                }
                let cols = cols as usize;
                let kept = row_indices.len() * cols;
                if rows.byte_len() != kept * rows.encoding().width() {
                    return Err(tensor_err(
                        &self.name,
                        format!("{} row bytes for {} rows of {cols}", rows.byte_len(), row_indices.len()),
                    ));
                }
                let mut dense_rows = vec![0f32; kept];
                rows.decode_into(&self.name, &mut dense_rows)?;
                let mut out = vec![0f32; n];
                for (r, row) in row_indices.iter().zip(dense_rows.chunks_exact(cols.max(1))) {
                    let start = *r as usize * cols;
                    out[start..start + cols].copy_from_slice(row);
                }
                Ok(out)
            }
        }
    }

    /// Bytes of encoded values this tensor carries (for accounting bytes on the wire).
    pub fn payload_bytes(&self) -> usize {
        match &self.payload {
            TensorPayload::Dense(v) => v.byte_len(),
            TensorPayload::RowSparse { row_indices, rows } => rows.byte_len() + row_indices.len() * 4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.01).collect()
    }

    #[test]
    fn f32_round_trip_is_exact() {
        let v = ramp(1000);
        let t = NamedTensor::encode("w", &[10, 100], &v, UpdateEncoding::Dense(ValueEncoding::F32), 0).unwrap();
        assert_eq!(t.to_f32(&t.shape).unwrap(), v);
    }

    #[test]
    fn f16_error_is_within_half_precision() {
        let v = ramp(1000);
        let t = NamedTensor::encode("w", &[1000], &v, UpdateEncoding::Dense(ValueEncoding::F16), 0).unwrap();
        for (a, b) in t.to_f32(&t.shape).unwrap().iter().zip(&v) {
            assert!((a - b).abs() <= b.abs() * 1e-3 + 1e-7, "{a} vs {b}");
        }
    }

    #[test]
    fn int8_stochastic_rounding_is_unbiased() {
        // 0.3 of the scale sits between two grid points: each decode is 0 or 1 step, and the
        // mean over many seeds must approach 0.3 steps.
        let v = vec![0.3f32, 127.0, -127.0];
        let mut sum = 0f64;
        let trials = 4000;
        for seed in 0..trials {
            let t = NamedTensor::encode("w", &[3], &v, UpdateEncoding::Dense(ValueEncoding::Int8), seed).unwrap();
            let d = t.to_f32(&t.shape).unwrap();
            assert_eq!(d[1], 127.0);
            assert_eq!(d[2], -127.0);
            assert!(d[0] == 0.0 || d[0] == 1.0);
            sum += f64::from(d[0]);
        }
        let mean = sum / trials as f64;
        // Bernoulli(0.3) over 4000 trials: sd ≈ 0.0072; allow 5 sd.
        assert!((mean - 0.3).abs() < 0.036, "mean {mean}");
    }

    #[test]
    fn row_sparse_keeps_only_touched_rows_and_restores_zeros() {
        let mut v = vec![0f32; 5 * 3];
        v[3..6].copy_from_slice(&[1.0, 2.0, 3.0]);
        v[12] = -4.0;
        let t = NamedTensor::encode("emb", &[5, 3], &v, UpdateEncoding::RowSparse(ValueEncoding::F32), 0).unwrap();
        let TensorPayload::RowSparse { row_indices, .. } = &t.payload else {
            panic!("dense")
        };
        assert_eq!(row_indices, &[1, 4]);
        assert_eq!(t.payload_bytes(), 2 * 3 * 4 + 2 * 4);
        assert_eq!(t.to_f32(&t.shape).unwrap(), v);
    }

    #[test]
    fn hostile_tensors_are_rejected_not_panicked_on() {
        let ok = NamedTensor::encode("emb", &[4, 2], &[1.0; 8], UpdateEncoding::RowSparse(ValueEncoding::F32), 0).unwrap();
        let mut cases = Vec::new();
        let mut t = ok.clone();
        t.shape = vec![u32::MAX, u32::MAX];
        cases.push(t);
        let mut t = ok.clone();
        t.shape = vec![1; 9];
        cases.push(t);
        let mut t = ok.clone();
        t.name = String::new();
        cases.push(t);
        let mut t = ok.clone();
        if let TensorPayload::RowSparse { row_indices, .. } = &mut t.payload {
            row_indices[3] = 9;
        }
        cases.push(t);
        let mut t = ok.clone();
        if let TensorPayload::RowSparse { row_indices, .. } = &mut t.payload {
            row_indices.swap(0, 1);
        }
        cases.push(t);
        let mut t = ok.clone();
        t.payload = TensorPayload::Dense(EncodedValues::F32(vec![0; 31]));
        cases.push(t);
        let mut t = ok.clone();
        t.payload = TensorPayload::Dense(EncodedValues::Int8 {
            scale: f32::NAN,
            values: vec![0; 8],
        });
        cases.push(t);
        let mut t = ok.clone();
        t.shape = vec![8];
        cases.push(t);
        for t in cases {
            assert!(matches!(t.to_f32(&t.shape), Err(DecodeError::InvalidTensor { .. })), "{t:?}");
        }
        // The fuzzer's find: a handful of bytes declaring a huge row-sparse table. Decoding
        // against the model's real shape refuses it without allocating the table.
        let mut t = ok;
        t.shape = vec![1 << 30, 2];
        if let TensorPayload::RowSparse { row_indices, rows } = &mut t.payload {
            row_indices.clear();
            *rows = EncodedValues::F32(vec![]);
        }
        assert!(matches!(t.to_f32(&[4, 2]), Err(DecodeError::InvalidTensor { .. })));
    }

    #[test]
    fn encode_rejects_mismatched_values() {
        let err = NamedTensor::encode("w", &[3, 3], &[0.0; 8], UpdateEncoding::Dense(ValueEncoding::F32), 0);
        assert!(matches!(err, Err(EncodeError::Tensor { .. })));
        let err = NamedTensor::encode("w", &[9], &[0.0; 9], UpdateEncoding::RowSparse(ValueEncoding::F32), 0);
        assert!(matches!(err, Err(EncodeError::Tensor { .. })));
    }
}
