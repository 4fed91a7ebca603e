//! Training: next-item prediction at every position of every window (see [`crate::window`]),
//! with a sampled softmax (in-batch and uniform candidates, log-q corrected) or BPR, AdamW and
//! a cosine schedule with linear warm-up.

use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softplus};
use indicatif::{ProgressBar, ProgressStyle};

use crate::catalog::CatalogTensors;
use crate::fused::FusedRecommender;
use crate::window::{CandidateConfig, SameTimeRuns, SplitMix, TrainBatch, Window, batch, context_windows};

/// The training objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    /// Softmax over the target and the batch's candidates, log-q corrected.
    SampledSoftmax,
    /// Bayesian personalised ranking: the target above each candidate.
    Bpr,
}

impl std::str::FromStr for Objective {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "softmax" | "sampled-softmax" => Ok(Self::SampledSoftmax),
            "bpr" => Ok(Self::Bpr),
            other => Err(format!("unknown loss {other:?}: use softmax or bpr")),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Passes over the windows; ignored when `max_steps` is set.
    pub epochs: usize,
    /// Stop after this many optimiser steps, however many passes that takes (a federated
    /// round's `LocalWork::Steps`): stores then do equal work whatever their size.
    pub max_steps: Option<usize>,
    /// Windows per batch.
    pub batch_size: usize,
    pub learning_rate: f64,
    pub min_learning_rate: f64,
    /// Steps of linear warm-up before the cosine decay.
    pub warmup_steps: usize,
    pub weight_decay: f32,
    pub max_len: usize,
    /// Score only the last `stride` positions of each window and fill the rest with earlier
    /// items as context (`window::context_windows`); `None` cuts disjoint windows.
    pub window_stride: Option<usize>,
    pub candidates: CandidateConfig,
    pub objective: Objective,
    pub seed: u64,
    /// Show a progress bar (loss, examples/s, ETA) on stderr.
    pub progress: bool,
    /// FedProx (Li et al. 2020): μ/2·‖w − w₀‖² added to the loss, with w₀ the model training
    /// started from, which keeps a store near the global model (0: off).
    pub proximal_mu: f64,
    /// Weight of each branch's own loss beside the fused one (0: the fused loss alone).
    pub branch_loss_weight: f64,
    /// Train only parameters whose path starts with one of these (all when empty): the
    /// platform fine-tunes the fusion weights and head this way.
    pub trainable: Vec<String>,
    /// Added to the parameters after every optimiser step, times that step's learning rate:
    /// a federated store's drift correction (`drift::StepShift`); none in plain training.
    pub step_shift: Option<std::sync::Arc<crate::drift::StepShift>>,
    /// Permute each run of same-timestamp training events afresh every epoch
    /// ([`SameTimeRuns`]), so that the split's item-id tie-break is not learnt as an order;
    /// `None` trains on the split's order.
    pub shuffle_same_time: Option<std::sync::Arc<SameTimeRuns>>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            max_steps: None,
            batch_size: 64,
            learning_rate: 1e-3,
            min_learning_rate: 1e-5,
            warmup_steps: 0,
            weight_decay: 1e-4,
            max_len: 50,
            window_stride: None,
            candidates: CandidateConfig::default(),
            objective: Objective::SampledSoftmax,
            seed: 7,
            progress: false,
            branch_loss_weight: 0.0,
            proximal_mu: 0.0,
            trainable: Vec::new(),
            step_shift: None,
            shuffle_same_time: None,
        }
    }
}

/// A training configuration no optimiser could run; it may come from a federation's offer,
/// so it is an error to report, not a panic.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("training configuration: {0}")]
pub struct InvalidTrainConfig(pub String);

impl TrainConfig {
    /// The rates are numbers with 0 < rate ≤ 1 and 0 ≤ min ≤ rate (what burn's cosine
    /// schedule takes), windows hold at least one item, and FedProx μ is a number ≥ 0.
    pub fn check(&self) -> Result<(), InvalidTrainConfig> {
        let (lr, min) = (self.learning_rate, self.min_learning_rate);
        if !(lr > 0.0 && lr <= 1.0) {
            return Err(InvalidTrainConfig(format!("learning rate {lr} must be in (0, 1]")));
        }
        if !(0.0..=lr).contains(&min) {
            return Err(InvalidTrainConfig(format!(
                "minimum learning rate {min} must be in [0, {lr}]"
            )));
        }
        if self.max_len == 0 {
            return Err(InvalidTrainConfig("max_len must be at least 1".into()));
        }
        if let Some(stride) = self.window_stride
            && !(1..=self.max_len).contains(&stride)
        {
            return Err(InvalidTrainConfig(format!(
                "window stride {stride} must be in 1..={} (max_len)",
                self.max_len
            )));
        }
        if !(self.proximal_mu >= 0.0 && self.proximal_mu.is_finite()) {
            return Err(InvalidTrainConfig(format!(
                "proximal μ {} must be a number ≥ 0",
                self.proximal_mu
            )));
        }
        Ok(())
    }
}

/// The loss of a batch (scalar): mean over its predictions.
pub fn loss(
    model: &FusedRecommender,
    batch: &TrainBatch,
    catalog: &CatalogTensors,
    objective: Objective,
    branch_weight: f64,
) -> Tensor<1> {
    let per_position = position_losses(model, batch, catalog, objective, branch_weight);
    (per_position * batch.weight.clone()).sum() / (batch.predictions.max(1) as f64)
}

/// Loss at every position, `[B, T, 1]` (meaningless where `batch.weight` is 0).
/// With `branch_weight` > 0 every branch's own loss is added with that weight (deep
/// supervision): each branch then ranks well on its own, and the fusion combines strong
/// members instead of parts that are only useful together.
pub fn position_losses(
    model: &FusedRecommender,
    batch: &TrainBatch,
    catalog: &CatalogTensors,
    objective: Objective,
    branch_weight: f64,
) -> Tensor<3> {
    let states = model.encode(batch.history.clone(), catalog);
    let targets = model.item_vectors(batch.target.clone(), catalog);
    let candidates = model.item_vectors(batch.candidates.clone(), catalog);
    let positive = model.score_pairs(&states, &targets);
    let negative = model.score(&states, &candidates);
    let corrected = |p: Tensor<3>, n: Tensor<3>| {
        objective_loss(
            p - batch.log_q_target.clone(),
            n - batch.log_q_candidates.clone(),
            batch.collides.clone(),
            objective,
        )
    };
    let mut loss = corrected(positive.fused, negative.fused);
    if branch_weight > 0.0 && model.only.is_none() {
        for (p, n) in positive.branches.into_iter().zip(negative.branches) {
            if let (Some(p), Some(n)) = (p, n) {
                loss = loss + corrected(p, n).mul_scalar(branch_weight);
            }
        }
    }
    loss
}

/// `positive` `[B, T, 1]`, `negative` `[B, T, C]` (corrected logits), `collides` marks the
/// candidates equal to the target, which are left out → `[B, T, 1]`.
pub fn objective_loss(
    positive: Tensor<3>,
    negative: Tensor<3>,
    collides: Tensor<3, burn::tensor::Bool>,
    objective: Objective,
) -> Tensor<3> {
    match objective {
        Objective::SampledSoftmax => {
            let logits = Tensor::cat(vec![positive, negative.mask_fill(collides, -1e9)], 2);
            log_softmax(logits, 2).narrow(2, 0, 1).neg()
        }
        Objective::Bpr => {
            let keep = collides.bool_not().float();
            let kept = keep.clone().sum_dim(2).clamp_min(1.0);
            (softplus(negative - positive, 1.0) * keep).sum_dim(2) / kept
        }
    }
}

/// FedProx's anchor: the parameters training started from, by path.
struct Proximal {
    start: std::collections::HashMap<String, burn::tensor::TensorData>,
}

impl Proximal {
    fn anchor(model: &FusedRecommender) -> Self {
        Self {
            start: crate::params::export(model)
                .into_iter()
                .map(|p| (p.name, burn::tensor::TensorData::new(p.values, p.shape)))
                .collect(),
        }
    }

    /// ‖w − w₀‖² over every parameter (scalar, differentiable in w).
    fn term(&self, model: &FusedRecommender) -> Tensor<1> {
        struct Sum<'a> {
            start: &'a std::collections::HashMap<String, burn::tensor::TensorData>,
            path: Vec<String>,
            total: Option<Tensor<1>>,
        }
        impl burn::module::ModuleVisitor for Sum<'_> {
            fn enter_module(&mut self, name: &str, _: &str) {
                self.path.push(name.to_owned());
            }
            fn exit_module(&mut self, _: &str, _: &str) {
                self.path.pop();
            }
            fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
                if let Some(w0) = self.start.get(&self.path.join(".")) {
                    let w = param.val();
                    let w0 = Tensor::<D>::from_data(w0.clone(), &w.device());
                    let d = (w - w0).powf_scalar(2.0).sum();
                    self.total = Some(match self.total.take() {
                        Some(t) => t + d,
                        None => d,
                    });
                }
            }
        }
        let mut sum = Sum {
            start: &self.start,
            path: Vec::new(),
            total: None,
        };
        model.visit(&mut sum);
        sum.total.unwrap_or_else(|| Tensor::zeros([1], &model.alpha.val().device()))
    }
}

/// The ids of the parameters under `prefixes` (`None`: train everything).
fn trainable_ids(model: &FusedRecommender, prefixes: &[String]) -> Option<Vec<burn::module::ParamId>> {
    struct Ids<'a> {
        prefixes: &'a [String],
        path: Vec<String>,
        out: Vec<burn::module::ParamId>,
    }
    impl burn::module::ModuleVisitor for Ids<'_> {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.path.push(name.to_owned());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if crate::params::selected(&self.path.join("."), self.prefixes) {
                self.out.push(param.id);
            }
        }
    }
    if prefixes.is_empty() {
        return None;
    }
    let mut ids = Ids {
        prefixes,
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut ids);
    Some(ids.out)
}

/// What an epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub mean_loss: f64,
    /// Next-item predictions trained on.
    pub examples: usize,
    /// Optimiser steps taken.
    pub steps: usize,
    pub seconds: f64,
}

/// Trains `model` (on an autodiff device) for `config.epochs`, calling `after_epoch` after
/// each; it returns `false` to stop early. A config [`TrainConfig::check`] refuses is an error.
pub fn train(
    model: FusedRecommender,
    catalog: &CatalogTensors,
    sequences: &[Vec<u32>],
    config: &TrainConfig,
    after_epoch: impl FnMut(&EpochReport, &FusedRecommender) -> bool,
) -> Result<(FusedRecommender, Vec<EpochReport>), InvalidTrainConfig> {
    let mut optim = AdamWConfig::new().with_weight_decay(config.weight_decay).init();
    train_with(model, &mut optim, catalog, sequences, config, after_epoch)
}

/// As [`train`], with the caller's optimiser, whose state (keyed by parameter id) carries over
/// between calls: a store keeps its AdamW moments from round to round this way.
pub fn train_with(
    mut model: FusedRecommender,
    optim: &mut ModuleOptimizer,
    catalog: &CatalogTensors,
    sequences: &[Vec<u32>],
    config: &TrainConfig,
    mut after_epoch: impl FnMut(&EpochReport, &FusedRecommender) -> bool,
) -> Result<(FusedRecommender, Vec<EpochReport>), InvalidTrainConfig> {
    config.check()?;
    if let Some(runs) = &config.shuffle_same_time {
        runs.check(sequences).map_err(|e| InvalidTrainConfig(e.to_string()))?;
    }
    let device = catalog.category.device();
    let n_items = catalog.vocabulary.items - 1;
    let mut all: Vec<Window> = context_windows(sequences, config.max_len, config.window_stride.unwrap_or(config.max_len));
    let batch_size = config.batch_size.max(1);
    let steps_per_epoch = all.len().div_ceil(batch_size).max(1);
    let (epochs, total_steps) = match config.max_steps {
        Some(k) => (k.max(1).div_ceil(steps_per_epoch), k.max(1)),
        None => (config.epochs, steps_per_epoch * config.epochs.max(1)),
    };
    let warmup = config.warmup_steps.min(total_steps / 2);
    let mut schedule = CosineAnnealingLrSchedulerConfig::new(config.learning_rate, (total_steps - warmup).max(1))
        .with_min_lr(config.min_learning_rate)
        .init()
        .map_err(InvalidTrainConfig)?;
    let mut rng = SplitMix(config.seed);
    // Its own stream, so that turning the shuffle on leaves the window order as it was.
    let mut tie_rng = SplitMix(config.seed ^ 0x7135_5A3E_0F0D_E125);
    // Dropout masks follow from the seed too, whatever else trains in this process.
    crate::dropout::seed_dropout_on_this_thread(config.seed ^ 0xD50F_0A7E_5EED_0001);
    let trainable = trainable_ids(&model, &config.trainable);
    let anchor = (config.proximal_mu > 0.0).then(|| Proximal::anchor(&model));
    let mut reports = Vec::new();
    let mut step = 0usize;
    let bar = if config.progress {
        let bar = ProgressBar::new(total_steps as u64);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] epoch {prefix} {msg} ETA {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    for epoch in 0..epochs {
        rng.shuffle(&mut all);
        let reordered = config
            .shuffle_same_time
            .as_ref()
            .map(|runs| runs.shuffled(sequences, &mut tie_rng));
        let sequences = reordered.as_deref().unwrap_or(sequences);
        bar.set_prefix(format!("{}/{}", epoch + 1, epochs));
        let start = std::time::Instant::now();
        let (mut total, mut examples, mut epoch_steps) = (0.0, 0usize, 0usize);
        for chunk in all.chunks(batch_size) {
            if step >= total_steps {
                break;
            }
            let b = batch(
                sequences,
                chunk,
                n_items,
                config.candidates,
                config.max_len,
                &mut rng,
                &device,
            );
            if b.predictions == 0 {
                continue;
            }
            let mut l = loss(&model, &b, catalog, config.objective, config.branch_loss_weight);
            if let Some(anchor) = &anchor {
                l = l + anchor.term(&model).mul_scalar(config.proximal_mu / 2.0);
            }
            let value = f64::from(l.clone().into_scalar::<f32>());
            total += value * b.predictions as f64;
            examples += b.predictions;
            let mut raw = l.backward();
            let grads = match &trainable {
                None => GradientsParams::from_grads(raw, &model),
                Some(ids) => GradientsParams::from_params(&mut raw, &model, ids),
            };
            let lr = if step < warmup {
                config.learning_rate * (step + 1) as f64 / warmup as f64
            } else {
                schedule.step().base()
            };
            model = optim.step(lr, model, grads);
            if let Some(shift) = &config.step_shift {
                model = shift.apply(model, lr);
            }
            step += 1;
            epoch_steps += 1;
            bar.inc(1);
            bar.set_message(format!(
                "loss {:.4}  {:.0} examples/s",
                total / examples.max(1) as f64,
                examples as f64 / start.elapsed().as_secs_f64().max(1e-9)
            ));
        }
        let report = EpochReport {
            epoch,
            mean_loss: total / examples.max(1) as f64,
            examples,
            steps: epoch_steps,
            seconds: start.elapsed().as_secs_f64(),
        };
        let go_on = after_epoch(&report, &model);
        reports.push(report);
        if !go_on {
            break;
        }
    }
    bar.finish_and_clear();
    Ok((model, reports))
}
