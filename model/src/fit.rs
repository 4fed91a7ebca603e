//! Fitting a model as an experiment does: train, evaluate on validation after every epoch,
//! keep the best epoch's model, stop when validation stops improving. Test data is never
//! looked at here.

use burn::prelude::*;
use fedfuse_data::Dataset;
use fedfuse_data::evaluate::{EvalAccumulator, Evaluation, Holdout, evaluate_into};
use fedfuse_data::split::Split;

use fedfuse_privacy::DpEvent;
use fedfuse_privacy::noise::GridGaussian;
use fedfuse_privacy::plan::{Accountant, noise_multiplier_for};

use crate::catalog::{CatalogTensors, ItemFeatures, Vocabulary};
use crate::dpsgd::{DpSgdConfig, train_dp_sgd_with};
use crate::evaluate::FusedScorer;
use crate::fused::{FusedConfig, FusedRecommender, Scoring};
use crate::item_tower::ItemTowerConfig;
use crate::sequence::{EncoderKind, SequenceEncoderConfig};
use crate::train::InvalidTrainConfig;
use crate::train::{EpochReport, TrainConfig, train};

/// The model's hyper-parameters. The aggregator and every store must agree on them (an offered
/// model of another shape is refused by parameter name and shape).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelShape {
    pub dim: usize,
    pub max_len: usize,
    pub head: usize,
    pub encoder: EncoderKind,
    pub layers: usize,
    pub heads: usize,
    pub dropout: f64,
}

impl ModelShape {
    /// Widths and lengths of at least 1, attention heads that divide `dim`, dropout in
    /// [0, 1): a `[model]` section from a config file is checked before anything is built
    /// from it, since the layers would only assert.
    pub fn check(&self) -> Result<(), String> {
        for (key, v) in [
            ("dim", self.dim),
            ("max_len", self.max_len),
            ("head", self.head),
            ("heads", self.heads),
        ] {
            if v == 0 {
                return Err(format!("[model] {key} = 0: must be at least 1"));
            }
        }
        if self.encoder == EncoderKind::Attention && !self.dim.is_multiple_of(self.heads) {
            return Err(format!(
                "[model] dim = {} must be a multiple of heads = {}",
                self.dim, self.heads
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("[model] dropout = {} must be in [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// The keys of a `[model]` TOML section, each with what it sets, for the commented config
    /// files the aggregator and the store agent write: both must describe the same model, so
    /// they share one text.
    pub fn commented_toml(&self) -> String {
        format!(
            "# Width of every item and interest vector.\n\
             dim = {}\n\
             # Recent items of a shopper's history the sequence encoder reads.\n\
             max_len = {}\n\
             # Hidden width of the MLP fusion head.\n\
             head = {}\n\
             # Sequence encoder: \"Attention\" (causal self-attention, SASRec-style) or \"Lstm\".\n\
             encoder = \"{:?}\"\n\
             # Attention blocks, and heads per block.\n\
             layers = {}\n\
             heads = {}\n\
             dropout = {:?}\n",
            self.dim, self.max_len, self.head, self.encoder, self.layers, self.heads, self.dropout
        )
    }
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
    /// Validation HR@10 of the shoppers whose validation item and the event before it have
    /// distinct timestamps, and how many they are: the item-id tie-break decides the rest's
    /// target, which a model trained in the split's order can score on by learnt id order.
    /// Reported, not selected on (early stopping reads the whole validation set).
    pub validation_hr10_distinct_timestamps: f64,
    pub validation_cases_distinct_timestamps: usize,
}

/// Which model a fit returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// The epoch with the best validation HR@10 (ties broken by NDCG@10).
    #[default]
    BestValidated,
    /// The mean of the weights after every epoch from this one (1-based) to the last one
    /// trained: stochastic weight averaging (Izmailov et al. 2018). On MovieLens-100K single
    /// epochs' validation HR@10 swings by ±0.01 from one epoch to the next late in a cosine
    /// schedule, so the best epoch is a noisy maximum; the average keeps what the late epochs
    /// share (BENCHMARKS.md: with seen items left out of the softmax it lifted the shoppers
    /// free of the split's id-order tie-break, without them nothing measurable). A fit that
    /// stops before this epoch serves its best validated epoch.
    AverageFrom(usize),
}

pub struct Fitted {
    /// The served model ([`Selection`]), on the plain (non-autodiff) device.
    pub model: FusedRecommender,
    /// The best single epoch (0-based), whichever model is served.
    pub best_epoch: usize,
    /// Epochs whose weights the served model averages (0: the best epoch is served).
    pub averaged_epochs: usize,
    /// Validation HR@10 and NDCG@10 of the served model.
    pub served_validation: (f64, f64),
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
/// stopping after `patience` epochs without a better validation HR@10 (ties broken by NDCG@10).
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
    selection: Selection,
    mut on_epoch: impl FnMut(&FitEpoch),
) -> Result<Fitted, InvalidTrainConfig> {
    let started = std::time::Instant::now();
    let mut best: Option<((f64, f64), usize, FusedRecommender)> = None;
    let mut epochs = Vec::new();
    let mut average = WeightSum::default();
    let mut averaging_failed = None;
    let validate = |model: &FusedRecommender| {
        let mut acc = EvalAccumulator::default();
        evaluate_into(
            &mut FusedScorer::new(model, eval_catalog),
            split,
            Holdout::Validation,
            validation_cases,
            256,
            &mut acc,
        );
        acc.finish(10)
    };
    let (last, _) = train(model, train_catalog, sequences, config, |report, m| {
        let valid = m.valid();
        if let Selection::AverageFrom(first) = selection
            && report.epoch + 1 >= first
            && let Err(e) = average.add(&crate::params::export(&valid))
        {
            averaging_failed = Some(e);
            return false;
        }
        let e = validate(&valid);
        let epoch = FitEpoch {
            train: report.clone(),
            validation_hr10: e.full.overall.mean.hit_rate,
            validation_ndcg10: e.full.overall.mean.ndcg,
            validation_hr10_distinct_timestamps: e.full.distinct_timestamps.mean.hit_rate,
            validation_cases_distinct_timestamps: e.full.distinct_timestamps.cases,
        };
        on_epoch(&epoch);
        let score = (epoch.validation_hr10, epoch.validation_ndcg10);
        if best.as_ref().is_none_or(|(b, _, _)| improves(score, *b)) {
            best = Some((score, report.epoch, valid));
        }
        epochs.push(epoch);
        let since_best = report.epoch - best.as_ref().map_or(0, |(_, e, _)| *e);
        since_best < patience.max(1)
    })?;
    let (best_score, best_epoch, best_model) = best.unwrap_or_else(|| ((0.0, 0.0), 0, last.valid()));
    let averaging = |e: &dyn std::fmt::Display| InvalidTrainConfig(format!("averaging the epochs' weights: {e}"));
    if let Some(e) = averaging_failed {
        return Err(averaging(&e));
    }
    let averaged_epochs = average.count();
    let (model, served_validation) = if averaged_epochs == 0 {
        (best_model, best_score)
    } else {
        let mean = average.finish().map_err(|e| averaging(&e))?;
        let averaged = crate::params::import(last.valid(), &mean).map_err(|e| averaging(&e))?;
        let e = validate(&averaged);
        (averaged, (e.full.overall.mean.hit_rate, e.full.overall.mean.ndcg))
    };
    Ok(Fitted {
        model,
        best_epoch,
        averaged_epochs,
        served_validation,
        epochs,
        train_seconds: started.elapsed().as_secs_f64(),
    })
}

/// The mean of whole models, by name, for [`Selection::AverageFrom`].
#[derive(Default)]
struct WeightSum {
    layout: Vec<(String, Vec<usize>)>,
    mean: crate::param_mean::ParamMean,
}

impl WeightSum {
    fn add(&mut self, params: &[crate::params::NamedParam]) -> Result<(), crate::param_mean::ParamMeanError> {
        if self.layout.is_empty() {
            self.layout = params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect();
        }
        let flat: Vec<f32> = params.iter().flat_map(|p| p.values.iter().copied()).collect();
        self.mean.add(&flat)
    }

    fn count(&self) -> usize {
        self.mean.models()
    }

    fn finish(self) -> Result<Vec<crate::params::NamedParam>, String> {
        let flat = self.mean.finish().map_err(|e| e.to_string())?;
        crate::params::unflatten(&self.layout, &flat).map_err(|e| e.to_string())
    }
}

/// Whether an epoch's validation (HR@10, NDCG@10) beats the best so far. A tie on HR@10 goes
/// to NDCG@10: on a few dozen validation shoppers HR@10 moves in steps of one shopper and can
/// sit level for many epochs while the ranking still improves (a platform's 76 shoppers on
/// MovieLens-100K held 0.0789 for 10 epochs, and patience stopped a fit whose loss still fell).
fn improves(score: (f64, f64), best: (f64, f64)) -> bool {
    score.0 > best.0 || (score.0 == best.0 && score.1 > best.1)
}

/// Who trains together in an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    /// One model on every shopper.
    Pooled,
    /// One model per store, trained, validated and tested on that store's shoppers only.
    PerStore,
}

/// An experiment: data, model and training settings.
pub struct Experiment<'a> {
    pub dataset: &'a Dataset,
    pub split: &'a Split,
    /// The plain device (training runs on its autodiff twin).
    pub device: Device,
    pub shape: ModelShape,
    pub train: TrainConfig,
    pub patience: usize,
    /// Which epoch's (or epochs') model is tested.
    pub selection: Selection,
    /// Fused, one branch alone, or SASRec.
    pub scoring: Scoring,
    pub grouping: Grouping,
}

/// A finished experiment: the test evaluation (over every group's shoppers) and how it went.
pub struct Outcome {
    pub test: Evaluation,
    /// Per group.
    pub fusion_weights: Vec<Vec<f32>>,
    /// Per group, 1-based.
    pub best_epochs: Vec<usize>,
    /// Per group: epochs averaged into the tested model (0: its best epoch was tested).
    pub averaged_epochs: Vec<usize>,
    /// Per group: validation HR@10 and NDCG@10 of the tested model.
    pub served_validation: Vec<(f64, f64)>,
    pub examples_per_second: f64,
    pub train_seconds: f64,
}

/// The shoppers of each group and their validation and test case indices.
pub struct Group {
    pub name: String,
    pub sequences: Vec<Vec<u32>>,
    pub validation_cases: Vec<usize>,
    pub test_cases: Vec<usize>,
}

/// Splits the shoppers into groups. Sequences keep their shopper index (others are empty) so
/// that the split's case indices stay valid.
pub fn groups(dataset: &Dataset, split: &Split, grouping: Grouping) -> Vec<Group> {
    let sequences = split.train_sequences();
    let members: Vec<(String, Vec<bool>)> = match grouping {
        Grouping::Pooled => vec![("all".into(), vec![true; dataset.shoppers.len()])],
        Grouping::PerStore => dataset
            .stores
            .iter()
            .enumerate()
            .map(|(s, name)| (name.clone(), dataset.shoppers.iter().map(|i| i.store as usize == s).collect()))
            .collect(),
    };
    members
        .into_iter()
        .map(|(name, member)| {
            let is = |s: u32| member.get(s as usize).copied().unwrap_or(false);
            let cases = |h: &[fedfuse_data::split::EvalCase]| -> Vec<usize> {
                h.iter().enumerate().filter(|(_, c)| is(c.shopper)).map(|(i, _)| i).collect()
            };
            Group {
                name,
                sequences: sequences
                    .iter()
                    .enumerate()
                    .map(|(s, seq)| if is(s as u32) { seq.clone() } else { Vec::new() })
                    .collect(),
                validation_cases: cases(&split.validation),
                test_cases: cases(&split.test),
            }
        })
        .filter(|g| !g.test_cases.is_empty())
        .collect()
}

/// Runs `experiment` with `seed`: fits each group with early stopping and evaluates its best
/// model on its test cases. `on_epoch(group, epoch)` sees every epoch.
pub fn run_experiment(
    experiment: &Experiment,
    seed: u64,
    mut on_epoch: impl FnMut(&str, &FitEpoch),
) -> Result<Outcome, InvalidTrainConfig> {
    let features = ItemFeatures::from_catalog(&experiment.dataset.catalog);
    let vocabulary = features.vocabulary(TITLE_LEN);
    let train_device = experiment.device.clone().autodiff();
    let train_catalog = features.to_tensors(vocabulary, &train_device);
    let eval_catalog = features.to_tensors(vocabulary, &experiment.device);
    let config = TrainConfig {
        seed,
        ..experiment.train.clone()
    };
    let mut test = EvalAccumulator::default();
    let (mut weights, mut best_epochs) = (Vec::new(), Vec::new());
    let (mut averaged_epochs, mut served_validation) = (Vec::new(), Vec::new());
    let (mut examples, mut seconds, mut train_seconds) = (0.0, 0.0, 0.0);
    for group in groups(experiment.dataset, experiment.split, experiment.grouping) {
        experiment.device.seed(seed);
        let mut model = experiment.shape.config(&vocabulary).init(&train_device);
        experiment.scoring.apply(&mut model);
        let fitted = fit(
            model,
            &train_catalog,
            &eval_catalog,
            &group.sequences,
            experiment.split,
            &group.validation_cases,
            &config,
            experiment.patience,
            experiment.selection,
            |e| on_epoch(&group.name, e),
        )?;
        evaluate_into(
            &mut FusedScorer::new(&fitted.model, &eval_catalog),
            experiment.split,
            Holdout::Test,
            &group.test_cases,
            256,
            &mut test,
        );
        weights.push(fitted.model.fusion_weights());
        best_epochs.push(fitted.best_epoch + 1);
        averaged_epochs.push(fitted.averaged_epochs);
        served_validation.push(fitted.served_validation);
        examples += fitted.epochs.iter().map(|e| e.train.examples as f64).sum::<f64>();
        seconds += fitted.epochs.iter().map(|e| e.train.seconds).sum::<f64>();
        train_seconds += fitted.train_seconds;
    }
    Ok(Outcome {
        test: test.finish(10),
        fusion_weights: weights,
        best_epochs,
        averaged_epochs,
        served_validation,
        examples_per_second: examples / seconds.max(1e-9),
        train_seconds,
    })
}

/// Title tokens (and genres) kept per item.
pub const TITLE_LEN: usize = 8;

/// User-level DP for a whole training run: the budget and how the run spends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpPlan {
    pub target_epsilon: f64,
    pub delta: f64,
    /// Expected shoppers per step (q = this / shoppers).
    pub expected_batch: f64,
    /// Passes over the shoppers: steps = epochs / q.
    pub epochs: f64,
    pub clip_norm: f64,
    pub learning_rate: f64,
    pub negatives: usize,
}

/// What a DP run spent, by both accountants, for the noise actually charged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DpSpend {
    pub noise_multiplier: f64,
    pub sampling_rate: f64,
    pub steps: usize,
    pub epsilon_rdp: f64,
    pub epsilon_pld: f64,
    pub clipped_fraction: f64,
}

/// The DP-SGD settings that meet `plan` for a group of `shoppers` with a model of `dims`
/// parameters: σ from the PLD accountant for the target, raised so that the multiplier
/// charged after rounding to the noise grid is still that σ.
pub fn plan_dp_sgd(plan: &DpPlan, shoppers: usize, dims: usize, max_len: usize) -> Result<(DpSgdConfig, DpSpend), String> {
    let q = (plan.expected_batch / shoppers.max(1) as f64).min(1.0);
    let steps = (plan.epochs / q).ceil().max(1.0) as usize;
    let sigma =
        noise_multiplier_for(plan.target_epsilon, plan.delta, q, steps as u64, Accountant::Pld).map_err(|e| e.to_string())?;
    let grid = fedfuse_privacy::noise::DEFAULT_GRID_EXPONENT;
    let inflate = fedfuse_privacy::noise::grid_inflation(plan.clip_norm, dims, grid);
    let config = DpSgdConfig {
        sampling_rate: q,
        noise_multiplier: sigma * inflate,
        clip_norm: plan.clip_norm,
        steps,
        learning_rate: plan.learning_rate,
        max_len,
        negatives: plan.negatives,
        grid_exponent: grid,
        ..DpSgdConfig::default()
    };
    let charged = GridGaussian::new(config.noise_multiplier * config.clip_norm, grid)
        .map_err(|e| e.to_string())?
        .noise_multiplier(config.clip_norm, dims);
    let event = DpEvent::dp_sgd(charged, q, steps as u64);
    let spend = DpSpend {
        noise_multiplier: charged,
        sampling_rate: q,
        steps,
        epsilon_rdp: Accountant::Rdp.epsilon(&event, plan.delta).map_err(|e| e.to_string())?,
        epsilon_pld: Accountant::Pld.epsilon(&event, plan.delta).map_err(|e| e.to_string())?,
        clipped_fraction: 0.0,
    };
    Ok((config, spend))
}

/// Runs `experiment` with user-level DP-SGD under `plan` instead of early-stopped training: a
/// fixed number of steps (validation is private data, so it may not pick the model), then the
/// test evaluation. `on_epoch(group, steps, validation HR@10)` is for the operator's eyes.
pub fn run_dp_experiment(
    experiment: &Experiment,
    plan: &DpPlan,
    seed: u64,
    mut on_epoch: impl FnMut(&str, usize, f64),
) -> Result<(Outcome, Vec<DpSpend>), String> {
    let features = ItemFeatures::from_catalog(&experiment.dataset.catalog);
    let vocabulary = features.vocabulary(TITLE_LEN);
    let train_device = experiment.device.clone().autodiff();
    let train_catalog = features.to_tensors(vocabulary, &train_device);
    let eval_catalog = features.to_tensors(vocabulary, &experiment.device);
    let mut test = EvalAccumulator::default();
    let (mut weights, mut spends) = (Vec::new(), Vec::new());
    let (mut examples, mut train_seconds) = (0.0, 0.0);
    for group in groups(experiment.dataset, experiment.split, experiment.grouping) {
        experiment.device.seed(seed);
        let mut model = experiment.shape.config(&vocabulary).init(&train_device);
        experiment.scoring.apply(&mut model);
        let shoppers = group.sequences.iter().filter(|s| s.len() > 1).count();
        let dims = model.num_params();
        let (mut config, mut spend) = plan_dp_sgd(plan, shoppers, dims, experiment.shape.max_len)?;
        config.shuffle_same_time = experiment.train.shuffle_same_time.clone();
        config.exclude_seen = experiment.train.candidates.exclude_seen;
        let per_epoch = (1.0 / config.sampling_rate).ceil() as usize;
        let (model, report) = train_dp_sgd_with(model, &train_catalog, &group.sequences, &config, per_epoch, |r, m| {
            let valid = m.valid();
            let mut acc = EvalAccumulator::default();
            evaluate_into(
                &mut FusedScorer::new(&valid, &eval_catalog),
                experiment.split,
                Holdout::Validation,
                &group.validation_cases,
                256,
                &mut acc,
            );
            on_epoch(&group.name, r.steps, acc.finish(10).full.overall.mean.hit_rate);
        })
        .map_err(|e| e.to_string())?;
        let model = model.valid();
        evaluate_into(
            &mut FusedScorer::new(&model, &eval_catalog),
            experiment.split,
            Holdout::Test,
            &group.test_cases,
            256,
            &mut test,
        );
        spend.clipped_fraction = report.clipped_fraction;
        spends.push(spend);
        weights.push(model.fusion_weights());
        examples += report.sampled as f64;
        train_seconds += report.seconds;
    }
    Ok((
        Outcome {
            test: test.finish(10),
            fusion_weights: weights,
            best_epochs: Vec::new(),
            averaged_epochs: Vec::new(),
            served_validation: Vec::new(),
            examples_per_second: examples / train_seconds.max(1e-9),
            train_seconds,
        },
        spends,
    ))
}

#[cfg(test)]
mod tests {
    use super::improves;

    #[test]
    fn a_validation_tie_on_hr10_goes_to_ndcg10() {
        let best = (0.0789, 0.0310);
        assert!(improves((0.0789, 0.0311), best), "same HR@10, better NDCG@10");
        assert!(!improves((0.0789, 0.0310), best), "a full tie is no improvement");
        assert!(!improves((0.0789, 0.0300), best));
        assert!(improves((0.0800, 0.0200), best), "HR@10 decides first");
        assert!(!improves((0.0700, 0.0900), best));
    }
}
