//! The platform's fine-tuner for the fused recommender: after each aggregation, train the
//! fusion (α, the content scale, the MLP head) on shoppers the platform owns, keep it if it
//! ranks their validation items better, and record the gain with the round. See
//! [`fedfuse_model::finetune`].

use std::sync::Arc;

use burn::tensor::Device;
use fedfuse_data::split::Split;
use fedfuse_model::catalog::{CatalogTensors, ItemFeatures};
use fedfuse_model::finetune::fine_tune_fusion;
use fedfuse_model::fit::{ModelShape, TITLE_LEN};
use fedfuse_model::fused::FusedConfig;
use fedfuse_model::params::{export, import, unflatten};
use fedfuse_model::train::TrainConfig;

use crate::layout::ModelLayout;
use crate::service::{FineTuned, FineTuner};

pub struct FusionFineTuner {
    config: FusedConfig,
    device: Device,
    train_catalog: CatalogTensors,
    eval_catalog: CatalogTensors,
    /// The platform's own shoppers' training sequences.
    sequences: Vec<Vec<u32>>,
    split: Arc<Split>,
    validation_cases: Vec<usize>,
    train: TrainConfig,
}

impl FusionFineTuner {
    /// `device` is plain (training runs on its autodiff twin).
    pub fn new(
        shape: ModelShape,
        features: &ItemFeatures,
        device: Device,
        sequences: Vec<Vec<u32>>,
        split: Arc<Split>,
        validation_cases: Vec<usize>,
        train: TrainConfig,
    ) -> Self {
        let vocabulary = features.vocabulary(TITLE_LEN);
        Self {
            config: shape.config(&vocabulary),
            train_catalog: features.to_tensors(vocabulary, &device.clone().autodiff()),
            eval_catalog: features.to_tensors(vocabulary, &device),
            device,
            sequences,
            split,
            validation_cases,
            train,
        }
    }
}

impl FineTuner for FusionFineTuner {
    fn fine_tune(&mut self, _version: u64, layout: &ModelLayout, params: &[f32]) -> Result<FineTuned, String> {
        let shapes: Vec<(String, Vec<usize>)> = layout
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.shape.iter().map(|d| *d as usize).collect()))
            .collect();
        let named = unflatten(&shapes, params).map_err(|e| e.to_string())?;
        let model = import(self.config.init(&self.device), &named).map_err(|e| e.to_string())?;
        let (tuned, r) = fine_tune_fusion(
            &model,
            &self.config,
            &self.train_catalog,
            &self.eval_catalog,
            &self.sequences,
            &self.split,
            &self.validation_cases,
            &self.train,
        )
        .map_err(|e| e.to_string())?;
        let flat: Vec<f32> = export(&tuned).into_iter().flat_map(|p| p.values).collect();
        Ok(FineTuned {
            params: flat,
            metrics: vec![
                ("fine_tune_validation_hr10_before".into(), r.hr10_before),
                ("fine_tune_validation_hr10_after".into(), r.hr10_after),
                ("fine_tune_validation_ndcg10_before".into(), r.ndcg10_before),
                ("fine_tune_validation_ndcg10_after".into(), r.ndcg10_after),
                ("fine_tune_kept".into(), if r.kept { 1.0 } else { 0.0 }),
                ("fine_tune_seconds".into(), r.seconds),
            ],
        })
    }
}
