//! The fused recommender, in burn 0.22.
//!
//! - [`device`]: run-time choice of GPU (wgpu) or CPU (flex), with a logged fallback;
//! - [`catalog`]: the catalog's content features as tensors on a device;
//! - [`item_tower`]: an item as its collaborative (ID) and content vectors;
//! - [`sequence`]: the shopper's recent items through causal self-attention (SASRec-style);
//! - [`fused`]: the branch scores (collaborative, content, sequence, MLP) and their learned
//!   weighted fusion;
//! - [`train`]: next-item training with an in-batch, log-q corrected sampled softmax;
//! - [`evaluate`]: full-ranking and sampled metrics, per branch and slice;
//! - [`params`]: the model as named f32 tensors, for federated averaging and export.
//!
//! Shoppers are represented only by their item history: no parameter belongs to a shopper, so
//! nothing shopper-specific can leave a store in an update.

pub mod catalog;
pub mod device;
pub mod evaluate;
pub mod fused;
pub mod item_tower;
pub mod params;
pub mod sequence;
pub mod train;

/// Item id 0 is padding everywhere: histories are left-padded with it and its embedding
/// rows are masked out of every score.
pub const PAD: i64 = 0;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("no GPU adapter: {0}")]
    NoGpu(String),
    #[error("parameter {name:?}: {detail}")]
    Parameter { name: String, detail: String },
}
