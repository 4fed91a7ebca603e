//! The fused recommender, in burn 0.22.
//!
//! - [`device`]: run-time choice of GPU (wgpu) or CPU (flex), with a logged fallback;
//! - [`catalog`]: the catalog's content features as tensors on a device;
//! - [`item_tower`]: an item as its collaborative (ID) and content vectors;
//! - [`dense`], [`attention`]: layers whose weights can be expanded per shopper (DP-SGD);
//! - [`sequence`]: the shopper's recent items through causal self-attention (SASRec-style) or
//!   an LSTM, at every position;
//! - [`fused`]: the branch scores (collaborative, content, sequence, MLP) and their learned
//!   weighted fusion;
//! - [`window`]: training windows and batches with sampled candidates;
//! - [`train`]: next-item training at every position, sampled softmax (log-q corrected) or BPR;
//! - [`evaluate`]: the model as a scorer for the evaluation protocol, per branch;
//! - [`finetune`]: the platform's fine-tuning of the fusion on its own data;
//! - [`fit`]: training with early stopping on validation, as experiments run it;
//! - [`dpsgd`]: user-level DP-SGD with per-shopper gradients from one backward pass;
//! - [`recommend`]: top-K with an optional search query and per-item explanations;
//! - [`params`]: the model as named f32 tensors, for federated averaging and export;
//! - [`moments`]: AdamW's moments by parameter name, so stores can share one preconditioner.
//!
//! Shoppers are represented only by their item history: no parameter belongs to a shopper, so
//! nothing shopper-specific can leave a store in an update.

pub mod attention;
pub mod catalog;
pub mod dense;
pub mod device;
pub mod dpsgd;
pub mod drift;
pub mod dropout;
pub mod evaluate;
pub mod finetune;
pub mod fit;
pub mod fused;
pub mod item_tower;
pub mod moments;
pub mod param_mean;
pub mod params;
pub mod recommend;
pub mod sequence;
pub mod train;
pub mod window;

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
