//! Server-side fine-tuning of the global model on data the platform owns.
//!
//! After each aggregation the platform trains only the fusion: the branch weights α, the
//! content branch's scale and the MLP head, with everything the stores learned (item tables,
//! sequence encoder) frozen. The platform's own shoppers (for MovieLens, a set kept out of
//! every store) are its training data and their validation items its yardstick; the tuned
//! model is kept only if it ranks those validation items better, and the gain is reported
//! either way.

use burn::prelude::*;
use fedfuse_data::split::Split;

use crate::catalog::CatalogTensors;
use crate::evaluate::validation_hr10_ndcg10;
use crate::fused::FusedRecommender;
use crate::params::{export, import};
use crate::train::{InvalidTrainConfig, TrainConfig, train};

/// Parameter path prefixes fine-tuning may change.
pub const FUSION_PARAMETERS: [&str; 3] = ["alpha", "content_scale", "head_"];

/// What fine-tuning did to the platform's validation metrics (full ranking, @10).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FineTuneReport {
    pub hr10_before: f64,
    pub hr10_after: f64,
    pub ndcg10_before: f64,
    pub ndcg10_after: f64,
    /// Whether the tuned model was kept (it did not lower validation NDCG@10).
    pub kept: bool,
    pub seconds: f64,
}

/// Fine-tunes the fusion of `model` (plain device) on the platform's `sequences`, validated on
/// `validation_cases` of `split`. `train_catalog` lives on the autodiff twin of the device of
/// `eval_catalog`. Returns the model to publish.
#[allow(clippy::too_many_arguments)]
pub fn fine_tune_fusion(
    model: &FusedRecommender,
    config: &crate::fused::FusedConfig,
    train_catalog: &CatalogTensors,
    eval_catalog: &CatalogTensors,
    sequences: &[Vec<u32>],
    split: &Split,
    validation_cases: &[usize],
    train_config: &TrainConfig,
) -> Result<(FusedRecommender, FineTuneReport), InvalidTrainConfig> {
    let started = std::time::Instant::now();
    let (hr0, ndcg0, _) = validation_hr10_ndcg10(model, eval_catalog, split, validation_cases);
    let device = train_catalog.category.device();
    let trainable = import(config.init(&device), &export(model)).expect("the same architecture");
    let tc = TrainConfig {
        trainable: FUSION_PARAMETERS.iter().map(|p| p.to_string()).collect(),
        ..train_config.clone()
    };
    let (tuned, _) = train(trainable, train_catalog, sequences, &tc, |_, _| true)?;
    let tuned = tuned.valid();
    let (hr1, ndcg1, _) = validation_hr10_ndcg10(&tuned, eval_catalog, split, validation_cases);
    let kept = ndcg1 >= ndcg0;
    let report = FineTuneReport {
        hr10_before: hr0,
        hr10_after: hr1,
        ndcg10_before: ndcg0,
        ndcg10_after: ndcg1,
        kept,
        seconds: started.elapsed().as_secs_f64(),
    };
    Ok((if kept { tuned } else { model.clone() }, report))
}
