//! The global model as the aggregator sees it: named tensors laid end to end in one flat f32
//! vector. Aggregation is arithmetic on flat vectors; names and shapes matter only at the edge,
//! when an update is validated against them.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<u32>,
}

impl TensorSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().map(|d| *d as usize).product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tensor names, shapes and their offsets in the flat parameter vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLayout {
    tensors: Vec<TensorSpec>,
    offsets: Vec<usize>,
    total: usize,
}

impl ModelLayout {
    pub fn new(tensors: Vec<TensorSpec>) -> Self {
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut total = 0;
        for t in &tensors {
            offsets.push(total);
            total += t.len();
        }
        Self { tensors, offsets, total }
    }

    /// The layout of a model exported as named tensors, in their order.
    pub fn of_params(params: &[fedfuse_model::params::NamedParam]) -> Self {
        Self::new(
            params
                .iter()
                .map(|p| TensorSpec {
                    name: p.name.clone(),
                    shape: p.shape.iter().map(|d| *d as u32).collect(),
                })
                .collect(),
        )
    }

    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Index and offset of a tensor by name.
    pub fn find(&self, name: &str) -> Option<(usize, usize)> {
        self.tensors.iter().position(|t| t.name == name).map(|i| (i, self.offsets[i]))
    }

    /// Checks a plan's trained parameter prefixes against this model and returns how many
    /// values they select. Each prefix must name at least one tensor: a typo among several
    /// would otherwise leave a federation silently training less than its operator asked.
    pub fn trained_values(&self, prefixes: &[String]) -> Result<usize, String> {
        if let Some(p) = prefixes
            .iter()
            .find(|p| !self.tensors.iter().any(|t| t.name.starts_with(p.as_str())))
        {
            return Err(format!("{p:?} names no parameter of the model"));
        }
        Ok(self.trained_mask(prefixes).iter().filter(|t| **t).count())
    }

    /// One flag per value of the flat vector: whether `prefixes` select its tensor.
    pub fn trained_mask(&self, prefixes: &[String]) -> Vec<bool> {
        self.tensors
            .iter()
            .flat_map(|t| std::iter::repeat_n(fedfuse_model::params::selected(&t.name, prefixes), t.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trained_prefixes_count_what_they_select_and_a_stray_one_is_an_error() {
        let spec = |name: &str, shape: &[u32]| TensorSpec {
            name: name.into(),
            shape: shape.to_vec(),
        };
        let layout = ModelLayout::new(vec![
            spec("items.id.weight", &[10, 4]),
            spec("head_out.weight", &[1, 4, 1]),
            spec("head_out.bias", &[1, 1, 1]),
            spec("alpha", &[1, 4]),
        ]);
        assert_eq!(layout.trained_values(&[]), Ok(49));
        assert_eq!(layout.trained_values(&["head_".into(), "alpha".into()]), Ok(9));
        let err = layout.trained_values(&["head_".into(), "haed_".into()]).unwrap_err();
        assert!(err.contains("\"haed_\" names no parameter"), "{err}");
    }
}
