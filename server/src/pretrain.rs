//! Transfer learning for a new federation: the platform trains the fused model on the shoppers
//! it owns and the federation starts from that model instead of a random one
//! (`fedfuse-server pretrain`, then `run --init-model`). Only the platform's own data is read,
//! so no store spends privacy on it; the stores' rounds then refine a model that already ranks,
//! instead of spending their first rounds (and, with DP, their budget) on what the platform's
//! shoppers already teach.

use burn::module::Module;
use burn::tensor::Device;
use fedfuse_data::split::Split;
use fedfuse_model::catalog::ItemFeatures;
use fedfuse_model::evaluate::validation_hr10_ndcg10;
use fedfuse_model::fit::{FitEpoch, ModelShape, Selection, TITLE_LEN, fit};
use fedfuse_model::params::export;
use fedfuse_model::train::{InvalidTrainConfig, TrainConfig};

use crate::layout::ModelLayout;

#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("the platform owns no shopper with a validation item to pretrain on")]
    NoValidationShoppers,
    #[error(transparent)]
    Train(#[from] InvalidTrainConfig),
}

/// The model a federation starts from, and how its pretraining went.
pub struct Pretrained {
    pub layout: ModelLayout,
    pub params: Vec<f32>,
    /// The kept epoch, 1-based.
    pub best_epoch: usize,
    pub epochs: Vec<FitEpoch>,
    /// The platform's validation HR@10 (full ranking) of the random start and of the kept model.
    pub validation_hr10_fresh: f64,
    pub validation_hr10: f64,
    pub seconds: f64,
}

/// Trains a fresh model of `shape` on `sequences` (the platform's shoppers; others empty) for
/// up to `config.epochs`, stopping after `patience` epochs without a better HR@10 on
/// `validation_cases` of `split`, and keeps the best epoch. `device` is plain (training runs on
/// its autodiff twin); its seed decides the random start.
#[allow(clippy::too_many_arguments)]
pub fn pretrain(
    shape: ModelShape,
    features: &ItemFeatures,
    device: &Device,
    sequences: &[Vec<u32>],
    split: &Split,
    validation_cases: &[usize],
    config: &TrainConfig,
    patience: usize,
    on_epoch: impl FnMut(&FitEpoch),
) -> Result<Pretrained, PretrainError> {
    if validation_cases.is_empty() {
        return Err(PretrainError::NoValidationShoppers);
    }
    let vocabulary = features.vocabulary(TITLE_LEN);
    let train_device = device.clone().autodiff();
    let eval_catalog = features.to_tensors(vocabulary, device);
    let fresh = shape.config(&vocabulary).init(&train_device);
    let validation_hr10_fresh = validation_hr10_ndcg10(&fresh.valid(), &eval_catalog, split, validation_cases).0;
    let fitted = fit(
        fresh,
        &features.to_tensors(vocabulary, &train_device),
        &eval_catalog,
        sequences,
        split,
        validation_cases,
        config,
        patience,
        Selection::BestValidated,
        on_epoch,
    )?;
    let named = export(&fitted.model);
    Ok(Pretrained {
        layout: ModelLayout::of_params(&named),
        params: named.into_iter().flat_map(|p| p.values).collect(),
        best_epoch: fitted.best_epoch + 1,
        validation_hr10: fitted.epochs[fitted.best_epoch].validation_hr10,
        validation_hr10_fresh,
        seconds: fitted.train_seconds,
        epochs: fitted.epochs,
    })
}
