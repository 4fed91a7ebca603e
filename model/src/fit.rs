//! Fitting a model as an experiment does: train, evaluate on validation after every epoch,
//! keep the best epoch's model, stop when validation stops improving. Test data is never
//! looked at here.

use burn::prelude::*;
use fedfuse_data::evaluate::{EvalAccumulator, Holdout, evaluate_into};
use fedfuse_data::split::Split;

use crate::catalog::{CatalogTensors, Vocabulary};
use crate::evaluate::FusedScorer;
use crate::fused::{FusedConfig, FusedRecommender};
use crate::item_tower::ItemTowerConfig;
use crate::sequence::{EncoderKind, SequenceEncoderConfig};
use crate::train::{EpochReport, TrainConfig, train};

/// The model's hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelShape {
    pub dim: usize,
    pub max_len: usize,
    pub head: usize,
    pub encoder: EncoderKind,
    pub layers: usize,
    pub heads: usize,
    pub dropout: f64,
}

impl Default for ModelShape {
    fn default() -> Self {
        Self {
            dim: 64,
            max_len: 50,
            head: 16,
            encoder: EncoderKind::Attention,
            layers: 2,
            heads: 2,
            dropout: 0.2,
        }
    }
}

impl ModelShape {
    pub fn config(&self, vocabulary: &Vocabulary) -> FusedConfig {
        FusedConfig::new(
            ItemTowerConfig::for_vocabulary(vocabulary, self.dim),
            SequenceEncoderConfig::new(self.dim, self.max_len)
                .with_kind(self.encoder)
                .with_layers(self.layers)
                .with_heads(self.heads)
                .with_dropout(self.dropout),
        )
        .with_head(self.head)
    }
}

/// One epoch of a fit: training and the validation HR@10 / NDCG@10 (full ranking).
#[derive(Debug, Clone, PartialEq)]
pub struct FitEpoch {
    pub train: EpochReport,
    pub validation_hr10: f64,
    pub validation_ndcg10: f64,
}

pub struct Fitted {
    /// The best epoch's model, on the plain (non-autodiff) device.
    pub model: FusedRecommender,
    pub best_epoch: usize,
    pub epochs: Vec<FitEpoch>,
    pub train_seconds: f64,
}

impl Fitted {
    /// Next-item predictions trained on per second, over the whole fit.
    pub fn examples_per_second(&self) -> f64 {
        let examples: usize = self.epochs.iter().map(|e| e.train.examples).sum();
        let seconds: f64 = self.epochs.iter().map(|e| e.train.seconds).sum();
        examples as f64 / seconds.max(1e-9)
    }
}

/// Trains `model` (on an autodiff device; `train_catalog` there too) on `sequences`, validating
/// after every epoch on `validation_cases` of `split` with `eval_catalog` (plain device), and
/// stopping after `patience` epochs without a better validation HR@10.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    model: FusedRecommender,
    train_catalog: &CatalogTensors,
    eval_catalog: &CatalogTensors,
    sequences: &[Vec<u32>],
    split: &Split,
    validation_cases: &[usize],
    config: &TrainConfig,
    patience: usize,
    mut on_epoch: impl FnMut(&FitEpoch),
) -> Fitted {
    let started = std::time::Instant::now();
    let mut best: Option<(f64, usize, FusedRecommender)> = None;
    let mut epochs = Vec::new();
    let (last, _) = train(model, train_catalog, sequences, config, |report, m| {
        let valid = m.valid();
        let mut acc = EvalAccumulator::default();
        evaluate_into(
            &mut FusedScorer::new(&valid, eval_catalog),
            split,
            Holdout::Validation,
            validation_cases,
            256,
            &mut acc,
        );
        let e = acc.finish(10);
        let epoch = FitEpoch {
            train: report.clone(),
            validation_hr10: e.full.overall.mean.hit_rate,
            validation_ndcg10: e.full.overall.mean.ndcg,
        };
        on_epoch(&epoch);
        let better = best.as_ref().is_none_or(|(b, _, _)| epoch.validation_hr10 > *b);
        if better {
            best = Some((epoch.validation_hr10, report.epoch, valid));
        }
        epochs.push(epoch);
        let since_best = report.epoch - best.as_ref().map_or(0, |(_, e, _)| *e);
        since_best < patience.max(1)
    });
    let (_, best_epoch, model) = best.unwrap_or_else(|| (0.0, 0, last.valid()));
    Fitted {
        model,
        best_epoch,
        epochs,
        train_seconds: started.elapsed().as_secs_f64(),
    }
}
