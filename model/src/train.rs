//! Training: next-item prediction with a sampled softmax.
//!
//! Every position of every shopper's training sequence is an example (the items before it,
//! the last `max_len` of them, predict it). The candidates of a batch are its own targets
//! (in-batch negatives). Popular items are over-represented among them, so each candidate's
//! logit is corrected by −log q (its share of training events; Yi et al. 2019), and a column
//! holding the row's own target item again (another shopper's identical target) is masked so
//! the model is never taught to rank the true item below itself. AdamW with a cosine schedule.

use burn::lr_scheduler::cosine::CosineAnnealingLrSchedulerConfig;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::{Bool, Int, TensorData};

use crate::catalog::CatalogTensors;
use crate::fused::FusedRecommender;

#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub min_learning_rate: f64,
    pub weight_decay: f32,
    pub max_len: usize,
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 256,
            learning_rate: 1e-3,
            min_learning_rate: 1e-5,
            weight_decay: 1e-4,
            max_len: 50,
            seed: 7,
        }
    }
}

/// One training example: shopper index and the position of its target in the sequence.
pub type Example = (u32, u32);

/// All (shopper, position ≥ 1) pairs.
pub fn examples(sequences: &[Vec<u32>]) -> Vec<Example> {
    sequences
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| (1..seq.len() as u32).map(move |p| (s as u32, p)))
        .collect()
}

/// The last `max_len` items before `end`, as model ids (data id + 1), left-padded with 0.
pub fn left_padded(sequence: &[u32], end: usize, max_len: usize) -> Vec<i64> {
    let start = end.saturating_sub(max_len);
    let items = &sequence[start..end];
    let mut out = vec![crate::PAD; max_len - items.len()];
    out.extend(items.iter().map(|i| i64::from(*i) + 1));
    out
}

/// A batch on `device`: histories `[B, L]`, targets `[B]`, the duplicate-target mask `[B, B]`
/// and the −log q correction `[1, B]`.
pub struct Batch {
    pub history: Tensor<2, Int>,
    pub target: Tensor<1, Int>,
    pub duplicate: Tensor<2, Bool>,
    pub log_q: Tensor<2>,
}

pub fn batch(sequences: &[Vec<u32>], examples: &[Example], item_counts: &[u32], max_len: usize, device: &Device) -> Batch {
    let b = examples.len();
    let mut history = Vec::with_capacity(b * max_len);
    let mut targets = Vec::with_capacity(b);
    for &(s, p) in examples {
        let seq = &sequences[s as usize];
        history.extend(left_padded(seq, p as usize, max_len));
        targets.push(seq[p as usize]);
    }
    let total: f64 = item_counts.iter().map(|c| f64::from(*c)).sum::<f64>().max(1.0);
    let log_q: Vec<f32> = targets
        .iter()
        .map(|t| ((f64::from(item_counts.get(*t as usize).copied().unwrap_or(0)).max(1.0)) / total).ln() as f32)
        .collect();
    let duplicate: Vec<bool> = (0..b)
        .flat_map(|i| (0..b).map(move |j| (i, j)))
        .map(|(i, j)| i != j && targets[i] == targets[j])
        .collect();
    Batch {
        history: Tensor::from_data(TensorData::new(history, [b, max_len]), device),
        target: Tensor::from_data(
            TensorData::new(targets.iter().map(|t| i64::from(*t) + 1).collect::<Vec<_>>(), [b]),
            device,
        ),
        duplicate: Tensor::from_data(TensorData::new(duplicate, [b, b]), device),
        log_q: Tensor::from_data(TensorData::new(log_q, [1, b]), device),
    }
}

/// In-batch sampled-softmax loss of a batch (scalar tensor).
pub fn loss(model: &FusedRecommender, batch: &Batch, catalog: &CatalogTensors) -> Tensor<1> {
    let device = batch.history.device();
    let scores = model
        .score(&model.encode(batch.history.clone(), catalog), batch.target.clone(), catalog)
        .fused;
    let b = batch.target.dims()[0];
    let logits = (scores - batch.log_q.clone()).mask_fill(batch.duplicate.clone(), -1e9);
    let labels = Tensor::<1, Int>::arange(0..b as i64, &device);
    CrossEntropyLossConfig::new().init(&device).forward(logits, labels)
}

/// What an epoch did.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    pub epoch: usize,
    pub mean_loss: f64,
    pub examples: usize,
    pub seconds: f64,
}

/// Trains `model` (on an autodiff device) for `config.epochs`, calling `after_epoch` after
/// each; it returns `false` to stop early.
pub fn train(
    mut model: FusedRecommender,
    catalog: &CatalogTensors,
    sequences: &[Vec<u32>],
    item_counts: &[u32],
    config: &TrainConfig,
    mut after_epoch: impl FnMut(&EpochReport, &FusedRecommender) -> bool,
) -> (FusedRecommender, Vec<EpochReport>) {
    let device = catalog.category.device();
    let mut all = examples(sequences);
    let steps_per_epoch = all.len().div_ceil(config.batch_size.max(1)).max(1);
    let mut optim = AdamWConfig::new().with_weight_decay(config.weight_decay).init();
    let mut schedule = CosineAnnealingLrSchedulerConfig::new(config.learning_rate, steps_per_epoch * config.epochs.max(1))
        .with_min_lr(config.min_learning_rate)
        .init()
        .expect("a learning rate in (0, 1]");
    let mut rng = config.seed;
    let mut reports = Vec::new();
    for epoch in 0..config.epochs {
        // Deterministic Fisher–Yates shuffle (splitmix64), so CPU runs repeat exactly.
        for i in (1..all.len()).rev() {
            rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            all.swap(i, ((z ^ (z >> 31)) % (i as u64 + 1)) as usize);
        }
        let start = std::time::Instant::now();
        let mut total = 0.0;
        for chunk in all.chunks(config.batch_size.max(2)) {
            if chunk.len() < 2 {
                continue;
            }
            let b = batch(sequences, chunk, item_counts, config.max_len, &device);
            let l = loss(&model, &b, catalog);
            total += f64::from(l.clone().into_scalar::<f32>()) * chunk.len() as f64;
            let grads = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(schedule.step(), model, grads);
        }
        let report = EpochReport {
            epoch,
            mean_loss: total / all.len().max(1) as f64,
            examples: all.len(),
            seconds: start.elapsed().as_secs_f64(),
        };
        let go_on = after_epoch(&report, &model);
        reports.push(report);
        if !go_on {
            break;
        }
    }
    (model, reports)
}
