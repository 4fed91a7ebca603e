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
}
