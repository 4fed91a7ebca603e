//! safetensors import and export, so PyTorch users can read the global model and a federation
//! can start from a model trained elsewhere.
//!
//! Format: an 8-byte little-endian header length, a JSON header mapping tensor names to
//! `{"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}` (plus an optional
//! `__metadata__` of strings), then the raw little-endian data. Only F32 is read or written.
//! Reading checks every length, offset and shape against the file before touching the data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::layout::{ModelLayout, TensorSpec};

/// Largest header accepted (the format's own reference implementation uses 100 MB).
const MAX_HEADER: u64 = 100 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a valid safetensors file: {detail}")]
    Invalid { path: PathBuf, detail: String },
}

#[derive(Serialize, Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// Writes the model as safetensors, tensors in layout order, atomically.
pub fn write(
    path: &Path,
    layout: &ModelLayout,
    params: &[f32],
    metadata: &BTreeMap<String, String>,
) -> Result<(), crate::pki::PkiError> {
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".into(),
            serde_json::to_value(metadata).expect("strings serialise"),
        );
    }
    let mut offset = 0u64;
    for t in layout.tensors() {
        let bytes = t.len() as u64 * 4;
        let entry = Entry {
            dtype: "F32".into(),
            shape: t.shape.iter().map(|d| u64::from(*d)).collect(),
            data_offsets: [offset, offset + bytes],
        };
        header.insert(t.name.clone(), serde_json::to_value(entry).expect("entries serialise"));
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&header).expect("a header serialises");
    // Pad with spaces so the data starts 8-byte aligned, as the reference writer does.
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + json.len() + params.len() * 4);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for v in params {
        out.extend_from_slice(&v.to_le_bytes());
    }
    crate::pki::write_atomic(path, &out, 0o644)
}

/// Reads an F32 safetensors file into a layout (sorted by data offset) and flat parameters.
pub fn read(path: &Path) -> Result<(ModelLayout, Vec<f32>), SafetensorsError> {
    let bytes = std::fs::read(path).map_err(|source| SafetensorsError::Io {
        path: path.to_owned(),
        source,
    })?;
    let invalid = |detail: String| SafetensorsError::Invalid {
        path: path.to_owned(),
        detail,
    };
    let head: [u8; 8] = bytes
        .get(..8)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| invalid("shorter than its header length".into()))?;
    let header_len = u64::from_le_bytes(head);
    if header_len > MAX_HEADER || 8 + header_len > bytes.len() as u64 {
        return Err(invalid(format!("header length {header_len} does not fit the file")));
    }
    let data = &bytes[8 + header_len as usize..];
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + header_len as usize]).map_err(|e| invalid(format!("header JSON: {e}")))?;
    let mut entries = Vec::new();
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let e: Entry = serde_json::from_value(value).map_err(|e| invalid(format!("tensor {name:?}: {e}")))?;
        if e.dtype != "F32" {
            return Err(invalid(format!("tensor {name:?} is {}, only F32 is supported", e.dtype)));
        }
        let elements = e
            .shape
            .iter()
            .try_fold(1u64, |n, d| n.checked_mul(*d))
            .filter(|n| *n <= u64::from(u32::MAX))
            .ok_or_else(|| invalid(format!("tensor {name:?} has an absurd shape {:?}", e.shape)))?;
        let [begin, end] = e.data_offsets;
        if begin > end || end > data.len() as u64 || end - begin != elements * 4 {
            return Err(invalid(format!(
                "tensor {name:?}: offsets {begin}..{end} do not hold {elements} f32 values"
            )));
        }
        let shape = e
            .shape
            .iter()
            .map(|d| u32::try_from(*d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| invalid(format!("tensor {name:?}: dimension too large")))?;
        // What the federation could not store or send to its stores is refused here, on import.
        fedfuse_protocol::tensor::checked_elements(&name, &shape).map_err(|e| invalid(e.to_string()))?;
        entries.push((begin, end, TensorSpec { name, shape }));
    }
    entries.sort_by_key(|(b, _, _)| *b);
    let mut expected = 0;
    let mut params = Vec::with_capacity(data.len() / 4);
    for (begin, end, spec) in &entries {
        if *begin != expected {
            return Err(invalid(format!(
                "tensor {:?} overlaps or leaves a gap at byte {begin}",
                spec.name
            )));
        }
        expected = *end;
        params.extend(
            data[*begin as usize..*end as usize]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        );
    }
    Ok((ModelLayout::new(entries.into_iter().map(|(_, _, s)| s).collect()), params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ModelLayout {
        ModelLayout::new(vec![
            TensorSpec {
                name: "item_embedding.weight".into(),
                shape: vec![3, 2],
            },
            TensorSpec {
                name: "fusion.alpha".into(),
                shape: vec![4],
            },
        ])
    }

    #[test]
    fn round_trip_is_exact_and_the_layout_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let params: Vec<f32> = (0..10).map(|i| i as f32 * 0.5 - 1.0).collect();
        write(&path, &layout(), &params, &BTreeMap::from([("format".into(), "pt".into())])).unwrap();
        let (l, p) = read(&path).unwrap();
        assert_eq!((l, p), (layout(), params));
        let bytes = std::fs::read(&path).unwrap();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!((8 + header_len) % 8, 0, "data is 8-byte aligned");
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        write(&path, &layout(), &[0.0; 10], &BTreeMap::new()).unwrap();
        let good = std::fs::read(&path).unwrap();
        let mut cases: Vec<Vec<u8>> = vec![vec![], good[..5].to_vec(), good[..good.len() - 4].to_vec()];
        let mut huge = good.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        cases.push(huge);
        let text = String::from_utf8_lossy(&good).to_string();
        cases.push(text.replace("F32", "F16").into_bytes());
        cases.push(
            text.replace("\"data_offsets\":[0,24]", "\"data_offsets\":[4,28]")
                .into_bytes(),
        );
        for (i, bytes) in cases.into_iter().enumerate() {
            std::fs::write(&path, bytes).unwrap();
            assert!(matches!(read(&path), Err(SafetensorsError::Invalid { .. })), "case {i}");
        }
    }

    #[test]
    fn a_tensor_the_wire_cannot_carry_is_refused_on_import() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        for (spec, want) in [
            (
                TensorSpec {
                    name: String::new(),
                    shape: vec![2],
                },
                "name must be 1..=",
            ),
            (
                TensorSpec {
                    name: "deep".into(),
                    shape: vec![1; 9],
                },
                "rank 9 exceeds",
            ),
        ] {
            let n = spec.len();
            write(&path, &ModelLayout::new(vec![spec]), &vec![0.0; n], &BTreeMap::new()).unwrap();
            let err = read(&path).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
