//! User-level DP-SGD inside a store: the privacy unit is one shopper.
//!
//! Each step Poisson-samples shoppers with rate q, takes one window of each sampled shopper's
//! history, computes **every sampled shopper's own gradient in one backward pass**, clips each
//! to L2 norm C, sums them, adds exact discrete Gaussian noise of standard deviation σC to every
//! coordinate (all parameters, every table row: which rows a shopper touches is private too),
//! and divides by the expected batch size qN (the fixed denominator keeps the sensitivity at C).
//!
//! burn has no vmap, so per-shopper gradients come from making the model per-shopper:
//! - every dense parameter (they all carry a leading axis of 1, see [`crate::dense`]) is
//!   expanded to one copy per shopper, `[B, …]`, and made a leaf;
//! - embedding tables are not expanded (a 1,683 × 64 table per shopper would be wasteful):
//!   the item vectors each shopper's computation reads (its history, its targets, the shared
//!   candidates; ID and content vector apart) are the leaves, `[B, N, d]`. A content vector is
//!   linear in the table rows it is made of, so each row's gradient follows from the vector's.
//!
//! One batched forward and one `backward()` then leave shopper b's gradient in slice b of
//! every leaf. A table's per-shopper gradient is the scatter-add of the row gradients implied by
//! that shopper's vector gradients (rows repeat: an item seen twice, a category shared by two
//! items); norms are taken
//! after the scatter, per shopper, so they are exact. The clipped sums are scattered into the
//! tables and registered with the optimiser like ordinary gradients.
//!
//! Candidates are uniform draws from the catalog, shared by the batch: in-batch negatives (other
//! shoppers' targets) would make one shopper's gradient depend on another's data and void the
//! sensitivity bound. Noise comes from `fedfuse-privacy` (exact, on a 2^k grid, ChaCha20 from the
//! OS); its grid rounding is charged to the sensitivity by the caller's accounting.

use std::collections::HashMap;
use std::sync::Arc;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use fedfuse_privacy::noise::{GridGaussian, NoiseError, NoisePrefetch};
use rand::{Rng, SeedableRng, TryRngCore};
use rand_chacha::ChaCha20Rng;

use crate::catalog::CatalogTensors;
use crate::fused::FusedRecommender;
use crate::params::selected;
use crate::train::{Objective, objective_loss};
use crate::window::{CandidateConfig, SameTimeRuns, SplitMix, TrainBatch, Window, batch, windows};

#[derive(Debug, thiserror::Error)]
pub enum DpSgdError {
    #[error("DP-SGD needs per-shopper weights; {0} cannot be expanded per shopper")]
    Unsupported(String),
    #[error("noise: {0}")]
    Noise(#[from] NoiseError),
    #[error("the operating system's random source failed: {0}")]
    Entropy(String),
    #[error("invalid DP-SGD setting: {0}")]
    Invalid(String),
}

/// Settings of one DP-SGD run.
#[derive(Debug, Clone, PartialEq)]
pub struct DpSgdConfig {
    /// Poisson sampling rate q of each shopper per step.
    pub sampling_rate: f64,
    /// σ: noise standard deviation over the clip norm.
    pub noise_multiplier: f64,
    /// C: each shopper's gradient is clipped to this L2 norm.
    pub clip_norm: f64,
    pub steps: usize,
    pub learning_rate: f64,
    pub weight_decay: f32,
    pub max_len: usize,
    /// Uniform candidates per step, shared by the batch.
    pub negatives: usize,
    pub objective: Objective,
    /// Noise grid 2^k.
    pub grid_exponent: i32,
    /// Permute each sampled shopper's same-timestamp events afresh every time it is drawn
    /// (as [`crate::train::TrainConfig::shuffle_same_time`] does every epoch), so that private
    /// rounds do not learn the split's item-id tie-break either. The reordering stays inside
    /// one shopper's own sequence and is decided by that shopper's own timestamps, so each
    /// clipped per-shopper gradient still depends on that shopper alone: the sensitivity, and
    /// so the privacy charged, is unchanged.
    pub shuffle_same_time: Option<Arc<SameTimeRuns>>,
    /// Path prefixes of the parameters trained (empty: all). Clipping, noise and the step
    /// cover only these, the rest stay exactly as they were: the noise a step adds grows with
    /// the square root of the coordinates it covers while a clipped gradient's norm does not,
    /// so a private store adapting a few thousand parameters of a pretrained model sees a
    /// signal that noise over all of them would bury. What is released is still one Gaussian
    /// mechanism per step at sensitivity C: the accounting does not change.
    pub trainable: Vec<String>,
    /// Leave each position's earlier items out of its softmax
    /// ([`CandidateConfig::exclude_seen`]). The mask is read from the shopper's own sequence
    /// alone, so each clipped per-shopper gradient still depends on that shopper alone and the
    /// privacy charged is unchanged.
    pub exclude_seen: bool,
}

impl Default for DpSgdConfig {
    fn default() -> Self {
        Self {
            sampling_rate: 0.05,
            noise_multiplier: 1.0,
            clip_norm: 1.0,
            steps: 100,
            learning_rate: 1e-3,
            weight_decay: 0.0,
            max_len: 50,
            negatives: 256,
            objective: Objective::SampledSoftmax,
            grid_exponent: fedfuse_privacy::noise::DEFAULT_GRID_EXPONENT,
            shuffle_same_time: None,
            trainable: Vec::new(),
            exclude_seen: false,
        }
    }
}

/// Table paths in the order of [`ItemRows`]' row tensors.
const TABLES: [&str; 6] = [
    "items.id.weight",
    "items.category.weight",
    "items.brand.weight",
    "items.price_band.weight",
    "items.token.weight",
    "items.genre.weight",
];

/// Gathered rows of one kind (history, targets or candidates) for one table.
struct RowSource {
    table: usize,
    /// `[B, n / per, d]`: the gradient of the vector entry j feeds.
    grads: Vec<f32>,
    /// `[E, n]`, E = 1 when shared by the batch.
    indices: Vec<usize>,
    n: usize,
    /// Entries per gradient row (a bag's length; 1 for single-valued features).
    per: usize,
    /// `[E, n]` factor of each entry (a bag's mask over its size); `None`: 1.
    scale: Option<Arc<Vec<f32>>>,
    shared: bool,
}

/// Every sampled shopper's gradient, from one backward pass.
pub struct ShopperGradients {
    pub shoppers: usize,
    /// Σ over shoppers of each one's mean loss (kept inside the store: it is not private).
    pub loss_sum: f64,
    dim: usize,
    /// Dense parameters: path, parameter shape, `[B × numel]` values.
    dense: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Table row counts, in `TABLES` order.
    table_rows: [usize; 6],
    rows: Vec<RowSource>,
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap_or_default()
}

fn indices<const D: usize>(t: &Tensor<D, Int>) -> Vec<usize> {
    t.to_data()
        .try_to_vec_as::<i64>()
        .unwrap_or_default()
        .into_iter()
        .map(|i| i.max(0) as usize)
        .collect()
}

/// Makes one copy per shopper of every trained parameter outside the item tables, as leaves.
struct PerShopper<'a> {
    shoppers: usize,
    trainable: &'a [String],
    path: Vec<String>,
    failed: Option<String>,
}

impl ModuleMapper for PerShopper<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.path.first().is_some_and(|p| p == "items") || !selected(&self.path.join("."), self.trainable) {
            return param;
        }
        let t = param.val();
        let mut shape = t.dims();
        if shape[0] != 1 {
            self.failed.get_or_insert_with(|| self.path.join("."));
            return param;
        }
        shape[0] = self.shoppers;
        Param::from_tensor(Tensor::from_inner(t.inner().expand(shape)).require_grad())
    }
}

/// Reads the per-shopper gradients of the expanded model's trained dense leaves.
struct DenseGrads<'a> {
    grads: &'a burn::tensor::Gradients,
    trainable: &'a [String],
    path: Vec<String>,
    out: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for DenseGrads<'_> {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.path.first().is_some_and(|p| p == "items") || !selected(&self.path.join("."), self.trainable) {
            return;
        }
        let t = param.val();
        let mut shape = t.dims().to_vec();
        shape[0] = 1;
        let g = t
            .grad(self.grads)
            .map(values)
            .unwrap_or_else(|| vec![0.0; t.dims().iter().product()]);
        self.out.push((self.path.join("."), shape, g));
    }
}

/// Parameter ids and shapes by path.
#[derive(Default)]
struct Ids {
    path: Vec<String>,
    out: HashMap<String, (ParamId, Vec<usize>)>,
}

impl ModuleVisitor for Ids {
    fn enter_module(&mut self, name: &str, _container: &str) {
        self.path.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.out.insert(self.path.join("."), (param.id, param.val().dims().to_vec()));
    }
}

/// The vectors as leaves (constants when no table is trained): expanded to `shoppers` copies
/// first when shared by the batch.
fn leaves(vectors: crate::item_tower::ItemVectors, expand: Option<usize>, grad: bool) -> crate::item_tower::ItemVectors {
    // Expanding happens on the plain tensor: a leaf must not be the output of an op.
    let leaf = |t: Tensor<3>| {
        let mut shape = t.dims();
        if let Some(b) = expand {
            shape[0] = b;
        }
        let leaf = Tensor::from_inner(t.inner().expand(shape));
        if grad { leaf.require_grad() } else { leaf }
    };
    crate::item_tower::ItemVectors {
        id: leaf(vectors.id),
        content: leaf(vectors.content),
    }
}

fn table_sizes(model: &FusedRecommender) -> [usize; 6] {
    let t = &model.items;
    [&t.id, &t.category, &t.brand, &t.price_band, &t.token, &t.genre].map(|e| e.weight.dims()[0])
}

/// Each shopper's gradient of its own mean loss over its window's predictions, for the
/// shoppers (rows) of `batch`, in one forward and one backward pass, over the parameters
/// `trainable` selects (all when empty; see [`DpSgdConfig::trainable`]). `model` lives on an
/// autodiff device.
pub fn shopper_gradients(
    model: &FusedRecommender,
    catalog: &CatalogTensors,
    batch: &TrainBatch,
    objective: Objective,
    trainable: &[String],
) -> Result<ShopperGradients, DpSgdError> {
    let b = batch.history.dims()[0];
    let mut expand = PerShopper {
        shoppers: b,
        trainable,
        path: Vec::new(),
        failed: None,
    };
    let expanded = model.clone().map(&mut expand);
    // A frozen LSTM runs as it is; a trained one fails here, its weights being 2-D.
    if let Some(path) = expand.failed {
        return Err(DpSgdError::Unsupported(
            if model.sequence.is_lstm() && path.starts_with("sequence.") {
                format!("{path} (burn's Lstm keeps 2-D weights: freeze the encoder with the plan's trainable parameters)")
            } else {
                path
            },
        ));
    }
    // Leaves are the item vectors (ID and content) each shopper's computation reads. A content
    // vector is linear in its table rows (category + brand + price band + bag means), so each
    // row's gradient follows from the vector's, on the CPU, without per-shopper copies of
    // every bag row.
    let history = model.items.rows(batch.history.clone(), catalog);
    let targets = model.items.rows(batch.target.clone(), catalog);
    let candidates = model.items.rows(batch.candidates.clone(), catalog);
    let tables_trained = TABLES.map(|t| selected(t, trainable));
    let any_table = tables_trained.iter().any(|t| *t);
    let (history_v, targets_v, candidates_v) = (
        leaves(history.vectors(), None, any_table),
        leaves(targets.vectors(), None, any_table),
        leaves(candidates.vectors(), Some(b), any_table),
    );
    let states = expanded.encode_vectors(batch.history.clone(), &history_v);
    let positive = expanded.score_pairs(&states, &targets_v).fused - batch.log_q_target.clone();
    let negative = expanded.score(&states, &candidates_v).fused - batch.log_q_candidates.clone();
    let per_position = objective_loss(positive, negative, batch.collides.clone(), objective);
    let count = batch.weight.clone().sum_dim(1).clamp_min(1.0); // [B, 1, 1]
    let per_shopper = (per_position * batch.weight.clone()).sum_dim(1) / count;
    let total = per_shopper.sum();
    let loss_sum = f64::from(total.clone().into_scalar::<f32>());
    let grads = total.backward();

    let mut dense = DenseGrads {
        grads: &grads,
        trainable,
        path: Vec::new(),
        out: Vec::new(),
    };
    expanded.visit(&mut dense);
    let dim = model.items.id.weight.dims()[1];
    let mut rows = Vec::new();
    let sources = [
        (&history, &history_v, false),
        (&targets, &targets_v, false),
        (&candidates, &candidates_v, true),
    ];
    for (source, vectors, shared) in sources.into_iter().filter(|_| any_table) {
        let idx = &source.indices;
        let n = vectors.id.dims()[1];
        let grad = |t: &Tensor<3>| t.grad(&grads).map(values).unwrap_or_else(|| vec![0.0; b * n * dim]);
        let (id, content) = (grad(&vectors.id), grad(&vectors.content));
        let single = |table: usize, grads: Vec<f32>, index: &Tensor<2, Int>| RowSource {
            table,
            grads,
            indices: indices(index),
            n,
            per: 1,
            scale: None,
            shared,
        };
        rows.push(single(0, id, &idx.id));
        rows.push(single(1, content.clone(), &idx.category));
        rows.push(single(2, content.clone(), &idx.brand));
        rows.push(single(3, content.clone(), &idx.price_band));
        for (table, index, mask) in [(4, &idx.title, &source.title_mask), (5, &idx.genre, &source.genre_mask)] {
            let l = index.dims()[2];
            let mask = mask.clone();
            let weights = (mask.clone() / mask.sum_dim(2).clamp_min(1.0)).inner();
            rows.push(RowSource {
                table,
                grads: content.clone(),
                indices: indices(index),
                n: n * l,
                per: l,
                scale: Some(Arc::new(values(Tensor::<3>::from_inner(weights)))),
                shared,
            });
        }
    }
    rows.retain(|r| tables_trained[r.table]);
    Ok(ShopperGradients {
        shoppers: b,
        loss_sum,
        dim,
        dense: dense.out,
        table_rows: table_sizes(model),
        rows,
    })
}

/// Scratch for one shopper's table gradients: dense buffers with a list of touched rows, so
/// a shopper costs what it touches, not the table size.
struct Scratch {
    values: Vec<Vec<f32>>,
    stamp: Vec<Vec<u32>>,
    touched: Vec<Vec<usize>>,
    generation: u32,
}

impl ShopperGradients {
    fn scratch(&self) -> Scratch {
        Scratch {
            values: self.table_rows.iter().map(|r| vec![0.0; r * self.dim]).collect(),
            stamp: self.table_rows.iter().map(|r| vec![0; *r]).collect(),
            touched: vec![Vec::new(); 6],
            generation: 0,
        }
    }

    /// Scatters shopper `b`'s row gradients into `scratch`; returns its squared norm over
    /// tables and dense parameters.
    fn gather_shopper(&self, b: usize, s: &mut Scratch) -> f64 {
        s.generation += 1;
        let d = self.dim;
        for t in &mut s.touched {
            t.clear();
        }
        for src in &self.rows {
            let base = if src.shared { 0 } else { b * src.n };
            let rows_per_shopper = src.n / src.per;
            let values = &mut s.values[src.table];
            for j in 0..src.n {
                let factor = src.scale.as_ref().map_or(1.0, |w| w[base + j]);
                if factor == 0.0 {
                    continue;
                }
                let row = b * rows_per_shopper + j / src.per;
                let g = &src.grads[row * d..(row + 1) * d];
                let r = src.indices[base + j].min(self.table_rows[src.table].saturating_sub(1));
                if s.stamp[src.table][r] != s.generation {
                    s.stamp[src.table][r] = s.generation;
                    s.touched[src.table].push(r);
                    values[r * d..(r + 1) * d].fill(0.0);
                }
                for (v, x) in values[r * d..(r + 1) * d].iter_mut().zip(g) {
                    *v += factor * x;
                }
            }
        }
        let mut norm2 = 0f64;
        for (t, rows) in s.touched.iter().enumerate() {
            for &r in rows {
                norm2 += s.values[t][r * d..(r + 1) * d]
                    .iter()
                    .map(|v| f64::from(*v).powi(2))
                    .sum::<f64>();
            }
        }
        for (_, _, g) in &self.dense {
            let numel = g.len() / self.shoppers;
            norm2 += g[b * numel..(b + 1) * numel]
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>();
        }
        norm2
    }

    /// Each shopper's gradient norm.
    pub fn norms(&self) -> Vec<f64> {
        let mut s = self.scratch();
        (0..self.shoppers).map(|b| self.gather_shopper(b, &mut s).sqrt()).collect()
    }

    /// Shopper `b`'s whole gradient by parameter path, tables scattered to full size.
    pub fn of_shopper(&self, b: usize) -> HashMap<String, Vec<f32>> {
        let mut s = self.scratch();
        self.gather_shopper(b, &mut s);
        let mut out = HashMap::new();
        for (t, name) in TABLES.iter().enumerate() {
            let mut full = vec![0f32; self.table_rows[t] * self.dim];
            for &r in &s.touched[t] {
                full[r * self.dim..(r + 1) * self.dim].copy_from_slice(&s.values[t][r * self.dim..(r + 1) * self.dim]);
            }
            out.insert(name.to_string(), full);
        }
        for (path, _, g) in &self.dense {
            let numel = g.len() / self.shoppers;
            out.insert(path.clone(), g[b * numel..(b + 1) * numel].to_vec());
        }
        out
    }

    /// Σ_b min(1, C/‖g_b‖)·g_b by parameter path (full shapes), and the norms ‖g_b‖.
    pub fn clipped_sum(&self, clip: f64) -> (HashMap<String, Vec<f32>>, Vec<f64>) {
        let d = self.dim;
        let mut s = self.scratch();
        let mut tables: Vec<Vec<f32>> = self.table_rows.iter().map(|r| vec![0f32; r * d]).collect();
        let mut dense: Vec<Vec<f32>> = self
            .dense
            .iter()
            .map(|(_, _, g)| vec![0f32; g.len() / self.shoppers.max(1)])
            .collect();
        let mut norms = Vec::with_capacity(self.shoppers);
        for b in 0..self.shoppers {
            let norm = self.gather_shopper(b, &mut s).sqrt();
            norms.push(norm);
            let factor = if norm > clip { (clip / norm) as f32 } else { 1.0 };
            for (t, rows) in s.touched.iter().enumerate() {
                for &r in rows {
                    for (o, v) in tables[t][r * d..(r + 1) * d].iter_mut().zip(&s.values[t][r * d..(r + 1) * d]) {
                        *o += factor * v;
                    }
                }
            }
            for ((_, _, g), out) in self.dense.iter().zip(&mut dense) {
                let numel = out.len();
                for (o, v) in out.iter_mut().zip(&g[b * numel..(b + 1) * numel]) {
                    *o += factor * v;
                }
            }
        }
        let mut out: HashMap<String, Vec<f32>> = TABLES.iter().map(|t| t.to_string()).zip(tables).collect();
        out.extend(self.dense.iter().map(|(p, _, _)| p.clone()).zip(dense));
        (out, norms)
    }
}

/// What a DP-SGD run did.
#[derive(Debug, Clone, PartialEq)]
pub struct DpSgdReport {
    pub steps: usize,
    /// Shoppers sampled over all steps.
    pub sampled: usize,
    /// Fraction of sampled shoppers whose gradient was clipped.
    pub clipped_fraction: f64,
    /// Mean over sampled shoppers of their loss: for the store's own logs only, as it is
    /// computed from the data without noise and must not be released.
    pub mean_loss: f64,
    pub seconds: f64,
}

fn register(grads: &mut GradientsParams, id: ParamId, shape: &[usize], values: Vec<f32>, device: &Device) {
    let data = |s: &[usize]| TensorData::new(values.clone(), s.to_vec());
    match shape.len() {
        1 => grads.register::<1>(id, Tensor::from_data(data(shape), device)),
        2 => grads.register::<2>(id, Tensor::from_data(data(shape), device)),
        3 => grads.register::<3>(id, Tensor::from_data(data(shape), device)),
        4 => grads.register::<4>(id, Tensor::from_data(data(shape), device)),
        r => unreachable!("no parameter of rank {r} in the fused model"),
    }
}

/// One DP-SGD step at a time: clip per shopper, sum, noise every coordinate, divide by the
/// expected batch size, and step AdamW (the noisy gradient is all the optimiser ever sees).
pub struct DpSgdStepper {
    /// The trained parameters: only these are clipped, noised and stepped.
    ids: Vec<(String, ParamId, Vec<usize>)>,
    trainable: Vec<String>,
    noise: GridGaussian,
    /// The next step's noise for every parameter, drawn while this step's gradients compute.
    prefetch: NoisePrefetch,
    clip_norm: f64,
    expected_batch: f64,
    learning_rate: f64,
    objective: Objective,
    optim: ModuleOptimizer,
    device: Device,
}

/// What one step saw (for the store's own log only).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    pub shoppers: usize,
    pub clipped: usize,
    pub loss_sum: f64,
}

impl DpSgdStepper {
    /// For `model` (whose parameters it will update) under `config`, with `expected_batch`
    /// shoppers per step in expectation.
    pub fn new(model: &FusedRecommender, config: &DpSgdConfig, expected_batch: f64, device: &Device) -> Result<Self, DpSgdError> {
        let mut ids = Ids::default();
        model.visit(&mut ids);
        let mut ids: Vec<(String, ParamId, Vec<usize>)> = ids
            .out
            .into_iter()
            .filter(|(p, _)| selected(p, &config.trainable))
            .map(|(p, (id, s))| (p, id, s))
            .collect();
        if ids.is_empty() {
            return Err(DpSgdError::Invalid(format!(
                "no parameter of the model starts with any of {:?}",
                config.trainable
            )));
        }
        ids.sort_by(|a, b| a.0.cmp(&b.0));
        let noise = GridGaussian::new(config.noise_multiplier * config.clip_norm, config.grid_exponent)?;
        let params: usize = ids.iter().map(|(_, _, shape)| shape.iter().product::<usize>()).sum();
        Ok(Self {
            ids,
            trainable: config.trainable.clone(),
            prefetch: NoisePrefetch::spawn(noise, params),
            noise,
            clip_norm: config.clip_norm,
            expected_batch,
            learning_rate: config.learning_rate,
            objective: config.objective,
            optim: AdamWConfig::new().with_weight_decay(config.weight_decay).init(),
            device: device.clone().inner(),
        })
    }

    /// One step on `batch` (one window per sampled shopper; `None` when the Poisson sample
    /// came out empty, which still releases a noise-only step).
    pub fn step(
        &mut self,
        model: FusedRecommender,
        catalog: &CatalogTensors,
        batch: Option<&TrainBatch>,
    ) -> Result<(FusedRecommender, StepStats), DpSgdError> {
        let mut stats = StepStats::default();
        let mut sums: HashMap<String, Vec<f32>> = HashMap::new();
        if let Some(b) = batch {
            let g = shopper_gradients(&model, catalog, b, self.objective, &self.trainable)?;
            let (s, norms) = g.clipped_sum(self.clip_norm);
            stats = StepStats {
                shoppers: norms.len(),
                clipped: norms.iter().filter(|n| **n > self.clip_norm).count(),
                loss_sum: g.loss_sum,
            };
            sums = s;
        }
        let mut grads = GradientsParams::new();
        let scale = 1.0 / self.expected_batch.max(1e-12) as f32;
        let prefetched = self.prefetch.take();
        let mut offset = 0;
        for (path, id, shape) in &self.ids {
            let numel: usize = shape.iter().product();
            let mut v = sums.remove(path).unwrap_or_else(|| vec![0.0; numel]);
            match &prefetched {
                Some(noise) => self.noise.add_presampled(&mut v, &noise[offset..offset + numel])?,
                None => self.noise.add(&mut v)?,
            }
            offset += numel;
            v.iter_mut().for_each(|x| *x *= scale);
            register(&mut grads, *id, shape, v, &self.device);
        }
        Ok((self.optim.step(self.learning_rate, model, grads), stats))
    }
}

/// Trains `model` (autodiff device) with user-level DP-SGD on `sequences` (one per shopper).
/// The privacy this costs — `steps` compositions of the Poisson-sampled Gaussian with the
/// noise multiplier `GridGaussian::noise_multiplier` reports — must be charged to the
/// store's ledger *before* calling this; nothing here writes a ledger.
pub fn train_dp_sgd(
    model: FusedRecommender,
    catalog: &CatalogTensors,
    sequences: &[Vec<u32>],
    config: &DpSgdConfig,
) -> Result<(FusedRecommender, DpSgdReport), DpSgdError> {
    train_dp_sgd_with(model, catalog, sequences, config, usize::MAX, |_, _| {})
}

/// As [`train_dp_sgd`], calling `every(report so far, model)` after every `every_steps` steps
/// (for progress and evaluation; what it computes is the caller's to keep private).
pub fn train_dp_sgd_with(
    mut model: FusedRecommender,
    catalog: &CatalogTensors,
    sequences: &[Vec<u32>],
    config: &DpSgdConfig,
    every_steps: usize,
    mut every: impl FnMut(&DpSgdReport, &FusedRecommender),
) -> Result<(FusedRecommender, DpSgdReport), DpSgdError> {
    if !(config.sampling_rate > 0.0 && config.sampling_rate <= 1.0) {
        return Err(DpSgdError::Invalid(format!("sampling rate {}", config.sampling_rate)));
    }
    if !(config.clip_norm > 0.0 && config.clip_norm.is_finite()) {
        return Err(DpSgdError::Invalid(format!("clip norm {}", config.clip_norm)));
    }
    if let Some(runs) = &config.shuffle_same_time {
        runs.check(sequences).map_err(|e| DpSgdError::Invalid(e.to_string()))?;
    }
    let started = std::time::Instant::now();
    let device = catalog.category.device();
    let n_items = catalog.vocabulary.items - 1;
    // Every shopper's windows; a sampled shopper contributes one of them, drawn at random.
    let mut by_shopper: Vec<Vec<Window>> = vec![Vec::new(); sequences.len()];
    for w in windows(sequences, config.max_len) {
        by_shopper[w.shopper as usize].push(w);
    }
    let population = sequences.len();
    let expected = config.sampling_rate * population as f64;
    let mut seed = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut seed)
        .map_err(|e| DpSgdError::Entropy(e.to_string()))?;
    let mut sampler = ChaCha20Rng::from_seed(seed);
    let mut draws = SplitMix(sampler.random());
    let mut stepper = DpSgdStepper::new(&model, config, expected, &device)?;
    let (mut sampled, mut clipped, mut loss_total, mut loss_count) = (0usize, 0usize, 0f64, 0usize);
    let report = |steps: usize, sampled: usize, clipped: usize, loss_total: f64, loss_count: usize| DpSgdReport {
        steps,
        sampled,
        clipped_fraction: clipped as f64 / sampled.max(1) as f64,
        mean_loss: loss_total / loss_count.max(1) as f64,
        seconds: started.elapsed().as_secs_f64(),
    };
    for step in 0..config.steps {
        // Poisson sampling: every shopper independently with probability q.
        let mut batch_windows: Vec<Window> = Vec::new();
        for w in &by_shopper {
            if sampler.random::<f64>() < config.sampling_rate && !w.is_empty() {
                batch_windows.push(w[sampler.random_range(0..w.len())]);
            }
        }
        // With the shuffle, the sampled shoppers' sequences reordered, and their windows
        // pointed at them (a window's positions do not depend on the order).
        let reordered: Option<Vec<Vec<u32>>> = config.shuffle_same_time.as_ref().map(|runs| {
            batch_windows
                .iter_mut()
                .enumerate()
                .map(|(local, w)| {
                    let mut seq = sequences[w.shopper as usize].clone();
                    runs.shuffle_shopper(w.shopper as usize, &mut seq, &mut draws);
                    w.shopper = local as u32;
                    seq
                })
                .collect()
        });
        let b = (!batch_windows.is_empty()).then(|| {
            let candidates = CandidateConfig {
                in_batch: 0,
                uniform: config.negatives,
                exclude_seen: config.exclude_seen,
            };
            batch(
                reordered.as_deref().unwrap_or(sequences),
                &batch_windows,
                n_items,
                candidates,
                config.max_len,
                &mut draws,
                &device,
            )
        });
        let (next, stats) = stepper.step(model, catalog, b.as_ref())?;
        model = next;
        sampled += stats.shoppers;
        clipped += stats.clipped;
        loss_total += stats.loss_sum;
        loss_count += stats.shoppers;
        if (step + 1) % every_steps.max(1) == 0 {
            every(&report(step + 1, sampled, clipped, loss_total, loss_count), &model);
        }
    }
    let done = report(config.steps, sampled, clipped, loss_total, loss_count);
    Ok((model, done))
}
