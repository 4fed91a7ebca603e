//! The store's local training of the fused recommender: the [`LocalTrainer`] a store agent runs.
//!
//! Each round the offered global model is loaded by parameter path into the store's own model
//! (so the store's AdamW moments, keyed by parameter, carry over from round to round), trained
//! on the store's shoppers only, and returned as a delta. With user-level DP the store runs
//! DP-SGD instead: the release (σ, q, steps, C) is charged to the store's ledger and fsynced
//! *before* training starts, and a store whose next round would pass its budget refuses to
//! train. Before training, the offered model is evaluated on the store's own validation
//! shoppers, for the store's log.

use std::sync::{Arc, Mutex};

use burn::module::Module;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Device;
use fedfuse_data::split::Split;
use fedfuse_model::catalog::{CatalogTensors, ItemFeatures, Vocabulary};
use fedfuse_model::dpsgd::{DpSgdConfig, train_dp_sgd};
use fedfuse_model::drift::{StepShift, shift_from_last_round};
use fedfuse_model::dropout::seed_dropout_on_this_thread;
use fedfuse_model::evaluate::validation_hr10_ndcg10;
use fedfuse_model::fit::{ModelShape, TITLE_LEN};
use fedfuse_model::fused::{FusedConfig, FusedRecommender};
use fedfuse_model::moments::{NamedMoments, export_moments, import_moments};
use fedfuse_model::params::{export, import, selected, unflatten};
use fedfuse_model::train::{TrainConfig, train_with};
use fedfuse_model::window::{CandidateConfig, SameTimeRuns};
use fedfuse_privacy::noise::GridGaussian;
use fedfuse_protocol::msgs::{LocalWork, MAX_LOCAL_STEPS, Metric, TrainingPlan, validation_metric};

use crate::privacy::StorePrivacy;
use crate::{LocalTrainer, LocalUpdate, TensorShape};

/// The store's data as the trainer needs it.
pub struct StoreData {
    pub features: ItemFeatures,
    /// One training sequence per shopper (data item ids, oldest first); shoppers of other
    /// stores, if the indexing keeps them, are empty.
    pub sequences: Vec<Vec<u32>>,
    /// The split and the store's validation cases in it, to evaluate offered models on.
    pub validation: Option<(Arc<Split>, Vec<usize>)>,
}

/// User-level DP-SGD settings of a store: its guard (ledger and budget) and how each round
/// spends it.
pub struct UserLevelDp {
    pub guard: StorePrivacy,
    /// Expected shoppers per step; q = this over the store's shoppers.
    pub expected_batch: f64,
    /// Noise multiplier σ (before the grid-rounding correction charged to the ledger).
    pub noise_multiplier: f64,
    pub clip_norm: f64,
    /// Uniform candidates per step.
    pub negatives: usize,
}

/// Where stores pool their AdamW moments between rounds, so each starts a round from the
/// moments averaged over the stores (one preconditioner estimated from every shopper, as a
/// single pooled store would have) instead of its own. Only [`PooledMoments`], an in-process
/// pool for the quickstart's diagnostics, exists: the wire does not carry moments yet.
pub trait MomentExchange: Send + Sync {
    /// What this store's optimiser held after training `round` on `examples` predictions.
    fn deposit(&self, round: u64, store: u16, examples: usize, moments: NamedMoments);
    /// The moments to start `round` from: the example-weighted mean over the stores of the
    /// latest earlier round any store deposited, if any.
    fn before(&self, round: u64) -> Option<NamedMoments>;
}

/// Each store's examples and moments after one round, by store.
type RoundMoments = std::collections::BTreeMap<u16, (usize, NamedMoments)>;

/// Every store's moments in one process, by round.
#[derive(Default)]
pub struct PooledMoments {
    rounds: Mutex<std::collections::BTreeMap<u64, RoundMoments>>,
}

impl MomentExchange for PooledMoments {
    fn deposit(&self, round: u64, store: u16, examples: usize, moments: NamedMoments) {
        let mut rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        rounds.entry(round).or_default().insert(store, (examples, moments));
        // Older rounds are never asked for again once a later one holds moments.
        while rounds.len() > 2 {
            rounds.pop_first();
        }
    }

    fn before(&self, round: u64) -> Option<NamedMoments> {
        let rounds = self.rounds.lock().unwrap_or_else(|e| e.into_inner());
        let (_, stores) = rounds.range(..round).next_back()?;
        let parts: Vec<(f64, &NamedMoments)> = stores.values().map(|(n, m)| (*n as f64, m)).collect();
        match NamedMoments::weighted_mean(&parts) {
            Ok(mean) if !mean.is_empty() => Some(mean),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!("pooled moments of round {round} disagree, each store keeps its own: {e}");
                None
            }
        }
    }
}

/// A store's local optimiser before it has stepped.
fn store_optimizer() -> ModuleOptimizer {
    AdamWConfig::new().with_weight_decay(1e-4).init()
}

/// What the drift correction keeps from a store's last round.
struct DriftMemory {
    round: u64,
    /// The model the store was offered in that round.
    offered: Vec<f32>,
    /// The store's displacement in that round without the correction it applied.
    own_move: Vec<f32>,
    steps: usize,
    learning_rate: f64,
}

/// One round as the store saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundLog {
    pub round: u64,
    /// The offered model on the store's own validation shoppers (full ranking).
    pub validation_hr10: Option<f64>,
    pub validation_ndcg10: Option<f64>,
    pub train_loss: f64,
    pub examples: usize,
    pub seconds: f64,
    /// ε spent so far (DP stores).
    pub epsilon: Option<f64>,
}

pub struct FusedTrainer {
    config: FusedConfig,
    shape: ModelShape,
    data: StoreData,
    device: Device,
    train_catalog: CatalogTensors,
    eval_catalog: CatalogTensors,
    /// The store's model and optimiser, kept between rounds.
    kept: Option<(FusedRecommender, ModuleOptimizer)>,
    keep_optimizer: bool,
    candidates: CandidateConfig,
    window_stride: Option<usize>,
    /// Permute same-timestamp training events every epoch (`window::SameTimeRuns`).
    same_time: Option<Arc<SameTimeRuns>>,
    seed: u64,
    dp: Option<UserLevelDp>,
    /// Every parameter's path and size: a plan's trained subset is counted on it (the
    /// dimension the noise-grid rounding is charged for).
    layout: Vec<(String, usize)>,
    /// Correct this store's drift (`fedfuse_model::drift`) in non-private rounds.
    drift_correction: bool,
    drift_memory: Option<DriftMemory>,
    /// Where this store pools its moments with the others' (and which store it is there).
    moments: Option<(Arc<dyn MomentExchange>, u16)>,
    pub log: Arc<Mutex<Vec<RoundLog>>>,
}

impl FusedTrainer {
    /// `device` is the plain device (training uses its autodiff twin).
    pub fn new(shape: ModelShape, data: StoreData, device: Device, seed: u64) -> Self {
        let vocabulary: Vocabulary = data.features.vocabulary(TITLE_LEN);
        let train_device = device.clone().autodiff();
        let config = shape.config(&vocabulary);
        Self {
            layout: export(&config.init(&device))
                .into_iter()
                .map(|p| (p.name, p.values.len()))
                .collect(),
            config,
            shape,
            train_catalog: data.features.to_tensors(vocabulary, &train_device),
            eval_catalog: data.features.to_tensors(vocabulary, &device),
            data,
            device,
            kept: None,
            keep_optimizer: true,
            candidates: CandidateConfig::default(),
            window_stride: None,
            same_time: None,
            seed,
            dp: None,
            drift_correction: false,
            drift_memory: None,
            moments: None,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Corrects this store's drift from the federation in every non-private round that follows
    /// one it trained (SCAFFOLD's control variates from what the store already holds:
    /// `fedfuse_model::drift`). Nothing more is sent.
    pub fn with_drift_correction(mut self) -> Self {
        self.drift_correction = true;
        self
    }

    /// Trains with user-level DP-SGD from now on.
    pub fn with_user_level_dp(mut self, dp: UserLevelDp) -> Self {
        self.dp = Some(dp);
        self
    }

    /// Pool this store's AdamW moments with the other stores' through `exchange` and start every
    /// non-private round from their mean (DP-SGD rounds keep their own optimiser).
    pub fn with_pooled_moments(mut self, exchange: Arc<dyn MomentExchange>, store: u16) -> Self {
        self.moments = Some((exchange, store));
        self
    }

    /// Start every round with fresh AdamW moments instead of the store's own.
    pub fn forget_optimizer_state(mut self) -> Self {
        self.keep_optimizer = false;
        self
    }

    pub fn with_candidates(mut self, candidates: CandidateConfig) -> Self {
        self.candidates = candidates;
        self
    }

    /// Train on context windows scoring their last `stride` positions (`None` or 0: disjoint
    /// windows); non-private rounds only (DP-SGD cuts its own windows).
    pub fn with_window_stride(mut self, stride: Option<usize>) -> Self {
        self.window_stride = stride.filter(|s| *s > 0);
        self
    }

    /// Train on the store's sequences with each run of same-timestamp events permuted afresh
    /// every epoch, or every time DP-SGD draws a shopper (the runs must fit
    /// `StoreData::sequences`): the split's id-order tie-break is then not learnt.
    pub fn with_same_time_shuffle(mut self, runs: Option<Arc<SameTimeRuns>>) -> Self {
        self.same_time = runs;
        self
    }

    /// The global model as named tensors, for the layout an aggregator starts from.
    pub fn initial_model(shape: ModelShape, features: &ItemFeatures, device: &Device) -> Vec<fedfuse_model::params::NamedParam> {
        export(&shape.config(&features.vocabulary(TITLE_LEN)).init(device))
    }

    /// Parameters the plan's `trainable` prefixes select (all of them when it names none).
    fn trained_params(&self, trainable: &[String]) -> usize {
        self.layout
            .iter()
            .filter(|(name, _)| selected(name, trainable))
            .map(|(_, n)| n)
            .sum()
    }

    /// A plan whose trained subset selects nothing in this store's model (another model's
    /// names, a typo) is refused rather than trained as a no-op.
    fn check_trainable(&self, plan: &TrainingPlan) -> Result<usize, String> {
        match self.trained_params(&plan.trainable) {
            0 => Err(format!(
                "the plan trains {:?}, which names no parameter of this store's model",
                plan.trainable
            )),
            n => Ok(n),
        }
    }

    fn shoppers(&self) -> usize {
        self.data.sequences.iter().filter(|s| s.len() > 1).count()
    }

    /// Passes over the data and the step cap a plan asks of plain local training.
    fn local_work(plan: &TrainingPlan) -> (usize, Option<usize>) {
        match plan.work {
            LocalWork::Epochs(e) => (e.max(1) as usize, None),
            LocalWork::Steps(k) => (1, Some(k.max(1) as usize)),
        }
    }

    /// The DP-SGD run and ledger release a round would make.
    fn dp_round(&self, round: u64, plan: &TrainingPlan) -> Option<Result<(DpSgdConfig, fedfuse_privacy::Release), String>> {
        let dp = self.dp.as_ref()?;
        Some((|| {
            dp.guard.meets_round_delta(plan).map_err(|e| e.to_string())?;
            let mut sigma = dp.noise_multiplier;
            let mut clip = dp.clip_norm;
            let mut q = (dp.expected_batch / self.shoppers().max(1) as f64).min(1.0);
            // Never weaker than the round asks.
            if let Some(req) = &plan.dp {
                sigma = sigma.max(req.min_noise_multiplier);
                clip = clip.min(req.max_clip_norm);
                if req.max_sampling_rate > 0.0 {
                    q = q.min(req.max_sampling_rate);
                }
            }
            let steps = plan.work.dp_sgd_steps(q);
            if steps > MAX_LOCAL_STEPS {
                return Err(format!(
                    "DP-SGD at this store's sampling rate {q} takes {steps} steps a round, more than {MAX_LOCAL_STEPS}: raise expected_batch"
                ));
            }
            let steps = steps as usize;
            let grid = fedfuse_privacy::noise::DEFAULT_GRID_EXPONENT;
            // Only the trained coordinates are noised and released.
            let dims = self.check_trainable(plan)?;
            if let Some(req) = &plan.dp {
                // What is charged (and what the aggregator checks) is σ over the sensitivity
                // after rounding to the noise grid, a little above the clip norm: ask for that
                // much more, so the charged σ meets the requirement rather than falling just
                // short of it.
                let inflation = fedfuse_privacy::noise::grid_inflation(clip, dims, grid);
                sigma = sigma.max(req.min_noise_multiplier * inflation);
            }
            let charged = GridGaussian::new(sigma * clip, grid)
                .map_err(|e| e.to_string())?
                .noise_multiplier(clip, dims);
            let release = dp.guard.dp_sgd_release(round, charged, q, steps as u64, clip);
            let config = DpSgdConfig {
                sampling_rate: q,
                noise_multiplier: sigma,
                clip_norm: clip,
                steps,
                learning_rate: f64::from(plan.learning_rate),
                max_len: self.shape.max_len,
                negatives: dp.negatives,
                grid_exponent: grid,
                shuffle_same_time: self.same_time.clone(),
                trainable: plan.trainable.clone(),
                exclude_seen: self.candidates.exclude_seen,
                ..DpSgdConfig::default()
            };
            Ok((config, release))
        })())
    }

    /// HR@10 and NDCG@10 by full ranking over this store's validation shoppers, and their count.
    fn validate(&self, model: &FusedRecommender) -> Option<(f64, f64, usize)> {
        let (split, cases) = self.data.validation.as_ref()?;
        Some(validation_hr10_ndcg10(model, &self.eval_catalog, split, cases))
    }
}

impl LocalTrainer for FusedTrainer {
    fn privacy_unit(&self) -> Option<fedfuse_protocol::msgs::PrivacyUnit> {
        self.dp.as_ref().map(|_| fedfuse_protocol::msgs::PrivacyUnit::Shopper)
    }

    fn refuses(&self, round_id: u64, plan: &TrainingPlan) -> Option<String> {
        if let Err(e) = self.check_trainable(plan) {
            return Some(e);
        }
        match self.dp_round(round_id, plan)? {
            Err(e) => Some(e),
            Ok((_, release)) => self
                .dp
                .as_ref()
                .and_then(|dp| dp.guard.check_release(&release).err())
                .map(|e| e.to_string()),
        }
    }

    fn train(&mut self, round: u64, shapes: &[TensorShape], params: &[f32], plan: &TrainingPlan) -> Result<LocalUpdate, String> {
        let started = std::time::Instant::now();
        let seed = self.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // This round's dropout masks come from this store's seed, even beside other stores in
        // one process (the round trains on this thread from here to the end).
        seed_dropout_on_this_thread(seed);
        let shapes: Vec<(String, Vec<usize>)> = shapes
            .iter()
            .map(|(n, s)| (n.clone(), s.iter().map(|d| *d as usize).collect()))
            .collect();
        let offered = unflatten(&shapes, params).map_err(|e| e.to_string())?;
        let plain = import(self.config.init(&self.device), &offered).map_err(|e| format!("the offered model: {e}"))?;
        let validation = self.validate(&plain);
        let train_device = self.device.clone().autodiff();
        // The correction applied this round (if any), its steps and rate, for the next one.
        let mut drift: Option<(Option<Vec<f32>>, usize, f64)> = None;
        let (trained, loss, examples, spend) = match self.dp_round(round, plan) {
            Some(planned) => {
                let (config, release) = planned?;
                let dp = self.dp.as_mut().expect("dp_round found settings");
                // The ledger entry is on disk before any training whose result may leave.
                let spend = dp.guard.charge_release(release).map_err(|e| e.to_string())?;
                let model = import(self.config.init(&train_device), &offered).map_err(|e| e.to_string())?;
                let (model, report) =
                    train_dp_sgd(model, &self.train_catalog, &self.data.sequences, &config).map_err(|e| e.to_string())?;
                (model.valid(), report.mean_loss, report.sampled, Some(spend))
            }
            None => {
                let (model, mut optim) = match self.kept.take() {
                    Some((model, optim)) if self.keep_optimizer => (import(model, &offered).map_err(|e| e.to_string())?, optim),
                    _ => (
                        import(self.config.init(&train_device), &offered).map_err(|e| e.to_string())?,
                        store_optimizer(),
                    ),
                };
                if let Some(pooled) = self.moments.as_ref().and_then(|(exchange, _)| exchange.before(round)) {
                    optim = import_moments(&model, store_optimizer(), &pooled).map_err(|e| format!("the pooled moments: {e}"))?;
                }
                let lr = f64::from(plan.learning_rate);
                // The last round's memory counts only if it was the round just before.
                let shift = self
                    .drift_memory
                    .as_ref()
                    .filter(|m| self.drift_correction && m.round + 1 == round && m.offered.len() == params.len())
                    .and_then(|m| {
                        let global_move: Vec<f32> = params.iter().zip(&m.offered).map(|(x, p)| x - p).collect();
                        shift_from_last_round(&global_move, &m.own_move, m.steps, m.learning_rate)
                    });
                let step_shift = match &shift {
                    Some(flat) => Some(Arc::new(StepShift::new(unflatten(&shapes, flat).map_err(|e| e.to_string())?))),
                    None => None,
                };
                let (epochs, max_steps) = Self::local_work(plan);
                let config = TrainConfig {
                    epochs,
                    max_steps,
                    batch_size: plan.batch_size.max(1) as usize,
                    learning_rate: lr,
                    // Constant within a round: the aggregator schedules the rate across rounds.
                    min_learning_rate: lr,
                    warmup_steps: 0,
                    max_len: self.shape.max_len,
                    window_stride: self.window_stride,
                    shuffle_same_time: self.same_time.clone(),
                    candidates: self.candidates,
                    proximal_mu: f64::from(plan.proximal_mu.unwrap_or(0.0)),
                    seed,
                    step_shift,
                    trainable: plan.trainable.clone(),
                    ..TrainConfig::default()
                };
                let (model, reports) = train_with(
                    model,
                    &mut optim,
                    &self.train_catalog,
                    &self.data.sequences,
                    &config,
                    |_, _| true,
                )
                .map_err(|e| e.to_string())?;
                let examples: usize = reports.iter().map(|r| r.examples).sum();
                let steps: usize = reports.iter().map(|r| r.steps).sum();
                let loss = reports.last().map_or(f64::NAN, |r| r.mean_loss);
                let plain = model.valid();
                if let Some((exchange, store)) = &self.moments {
                    let moments = export_moments(&model, &optim).map_err(|e| format!("this store's moments: {e}"))?;
                    exchange.deposit(round, *store, examples, moments);
                }
                self.kept = Some((model, optim));
                drift = self.drift_correction.then_some((shift, steps, lr));
                (plain, loss, examples, None)
            }
        };
        let trained = export(&trained);
        let mut delta = Vec::with_capacity(params.len());
        for (new, old) in trained.iter().zip(&offered) {
            if new.name != old.name || new.values.len() != old.values.len() {
                return Err(format!("trained tensor {} does not match offered {}", new.name, old.name));
            }
            delta.extend(new.values.iter().zip(&old.values).map(|(n, o)| n - o));
        }
        // A private round leaves no memory: the next round trains uncorrected.
        self.drift_memory = drift.map(|(shift, steps, lr)| {
            // Every step moved by lr · shift; what is left is the store's own walk.
            let applied = (steps as f64 * lr) as f32;
            let own_move = match &shift {
                Some(s) => delta.iter().zip(s).map(|(d, s)| d - applied * s).collect(),
                None => delta.clone(),
            };
            DriftMemory {
                round,
                offered: params.to_vec(),
                own_move,
                steps,
                learning_rate: lr,
            }
        });
        self.log.lock().expect("log lock").push(RoundLog {
            round,
            validation_hr10: validation.map(|v| v.0),
            validation_ndcg10: validation.map(|v| v.1),
            train_loss: loss,
            examples,
            seconds: started.elapsed().as_secs_f64(),
            epsilon: spend.as_ref().map(|s| s.epsilon_total),
        });
        // Without DP the store shares its loss and its view of the offered model; with DP
        // those are computed from the data without noise and stay in the store.
        let metrics = if spend.is_none() {
            let mut m = vec![Metric {
                name: "train_loss".into(),
                value: loss,
            }];
            if let Some((hr, ndcg, shoppers)) = validation
                && shoppers > 0
            {
                m.push(Metric {
                    name: validation_metric::HR10.into(),
                    value: hr,
                });
                m.push(Metric {
                    name: validation_metric::NDCG10.into(),
                    value: ndcg,
                });
                m.push(Metric {
                    name: validation_metric::SHOPPERS.into(),
                    value: shoppers as f64,
                });
            }
            m
        } else {
            Vec::new()
        };
        Ok(LocalUpdate {
            delta,
            // DP updates are averaged uniformly (bounded sensitivity), so the count is only a
            // label; without DP it weights the mean.
            example_count: examples.max(1) as u64,
            metrics,
            privacy_spend: spend,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fedfuse_model::sequence::EncoderKind;
    use fedfuse_protocol::msgs::{DpRequirement, NoiseMode, PrivacyUnit};
    use fedfuse_protocol::tensor::{UpdateEncoding, ValueEncoding};

    fn tiny_store(seed: u64) -> FusedTrainer {
        let features = ItemFeatures {
            category: vec![1, 1, 2, 2, 3, 3, 1, 2],
            brand: vec![1, 2, 1, 2, 1, 2, 1, 2],
            price_band: vec![1, 2, 3, 1, 2, 3, 1, 2],
            title: vec![vec![1, 2], vec![2], vec![3], vec![4, 1], vec![5], vec![], vec![6], vec![2, 6]],
            genres: vec![vec![]; 8],
        };
        let sequences = (0..12u32).map(|s| (0..7).map(|k| (s * 3 + k) % 8).collect()).collect();
        let shape = ModelShape {
            dim: 8,
            max_len: 6,
            head: 4,
            encoder: EncoderKind::Attention,
            layers: 1,
            heads: 2,
            // Dropout draws a mask per step: the draws whose order must not matter.
            dropout: 0.3,
        };
        let data = StoreData {
            features,
            sequences,
            validation: None,
        };
        FusedTrainer::new(shape, data, Device::flex(), seed).with_candidates(CandidateConfig {
            in_batch: 3,
            uniform: 3,
            exclude_seen: false,
        })
    }

    fn plan() -> TrainingPlan {
        TrainingPlan {
            work: LocalWork::Epochs(2),
            learning_rate: 1e-2,
            batch_size: 3,
            proximal_mu: None,
            update_encoding: UpdateEncoding::Dense(ValueEncoding::F32),
            dp: None,
            trainable: Vec::new(),
        }
    }

    /// A round's user-level DP requirement: σ ≥ 1, clip ≤ `max_clip_norm`, any sampling rate, δ.
    fn shopper_level(max_clip_norm: f64, delta: f64) -> DpRequirement {
        DpRequirement {
            unit: PrivacyUnit::Shopper,
            noise_mode: NoiseMode::Local,
            min_noise_multiplier: 1.0,
            max_clip_norm,
            max_sampling_rate: 1.0,
            delta,
        }
    }

    /// The global model a tiny store's federation would start from.
    fn tiny_initial_model() -> Vec<fedfuse_model::params::NamedParam> {
        let s = tiny_store(1);
        FusedTrainer::initial_model(s.shape, &s.data.features, &s.device)
    }

    /// A model as an offer carries it: the tensors' names and shapes, and their values in one run.
    fn layout_and_values(model: &[fedfuse_model::params::NamedParam]) -> (Vec<TensorShape>, Vec<f32>) {
        let shapes = model
            .iter()
            .map(|p| (p.name.clone(), p.shape.iter().map(|d| *d as u32).collect()))
            .collect();
        (shapes, model.iter().flat_map(|p| p.values.iter().copied()).collect())
    }

    /// A tiny store with user-level DP: its own σ and clip norm, its budget's δ, a ledger in `dir`.
    fn dp_store(dir: &std::path::Path, delta: f64, noise_multiplier: f64, clip_norm: f64) -> FusedTrainer {
        use crate::privacy::{StorePrivacy, StorePrivacyPolicy};
        let policy = StorePrivacyPolicy {
            budget: fedfuse_privacy::Budget { epsilon_max: 1e6, delta },
            noise_multiplier,
            clip_norm,
            grid_exponent: fedfuse_privacy::noise::DEFAULT_GRID_EXPONENT,
        };
        let guard = StorePrivacy::open("berlin", policy, &dir.join("ledger.jsonl")).unwrap();
        tiny_store(1).with_user_level_dp(UserLevelDp {
            guard,
            expected_batch: 2.0,
            noise_multiplier,
            clip_norm,
            negatives: 3,
        })
    }

    /// Two rounds of one store, from the same offered model each round.
    fn two_rounds(mut store: FusedTrainer, start: &[fedfuse_model::params::NamedParam]) -> Vec<Vec<f32>> {
        let (shapes, flat) = layout_and_values(start);
        (1..=2)
            .map(|round| store.train(round, &shapes, &flat, &plan()).expect("trains").delta)
            .collect()
    }

    /// Stores pooling their moments start round 2 from the example-weighted mean of what both
    /// held after round 1; round 1 (nothing pooled yet) trains as a store on its own does.
    #[test]
    fn pooled_moments_are_the_stores_example_weighted_mean_and_change_the_next_round() {
        let (shapes, flat) = layout_and_values(&tiny_initial_model());
        let pool: Arc<dyn MomentExchange> = Arc::new(PooledMoments::default());
        assert!(pool.before(1).is_none(), "nothing pooled before any round");
        let mut alone = tiny_store(1);
        let mut first = tiny_store(1).with_pooled_moments(pool.clone(), 0);
        // Another store: fewer shoppers, so the two weigh differently.
        let mut second = tiny_store(2).with_pooled_moments(pool.clone(), 1);
        second.data.sequences.truncate(5);

        let a = first.train(1, &shapes, &flat, &plan()).unwrap();
        let b = second.train(1, &shapes, &flat, &plan()).unwrap();
        assert_eq!(alone.train(1, &shapes, &flat, &plan()).unwrap().delta, a.delta);
        assert_ne!(a.example_count, b.example_count);
        let own = |s: &FusedTrainer| {
            let (model, optim) = s.kept.as_ref().unwrap();
            export_moments(model, optim).unwrap()
        };
        let expected = NamedMoments::weighted_mean(&[
            (a.example_count as f64, &own(&first)),
            (b.example_count as f64, &own(&second)),
        ])
        .unwrap();
        let pooled = pool.before(2).expect("round 1 pooled");
        assert_eq!(pooled, expected);
        assert_ne!(pooled, own(&first), "the mean is not one store's own");
        assert_eq!(pool.before(1), None, "round 1 starts from nothing");

        let pooled_round = first.train(2, &shapes, &flat, &plan()).unwrap().delta;
        let own_round = alone.train(2, &shapes, &flat, &plan()).unwrap().delta;
        assert_ne!(pooled_round, own_round, "round 2 started from the pooled moments");
    }

    /// The σ charged to the ledger (over the clip norm plus the noise grid's rounding) is what
    /// the aggregator checks against the round's requirement: it must meet it, not fall short
    /// by the rounding. A small clip norm makes the rounding's share large enough to see.
    #[test]
    fn a_dp_round_charges_at_least_the_noise_multiplier_the_round_requires() {
        let dir = tempfile::tempdir().unwrap();
        let store = dp_store(dir.path(), 1e-5, 0.5, 2.0);
        let required = shopper_level(0.01, 1e-5);
        let plan = TrainingPlan {
            dp: Some(required),
            ..plan()
        };
        let (config, release) = store.dp_round(1, &plan).expect("a DP store").expect("a release");
        assert_eq!(config.clip_norm, 0.01);
        let inflation = fedfuse_privacy::noise::grid_inflation(0.01, store.trained_params(&[]), config.grid_exponent);
        assert!(inflation > 1.001, "the rounding's share is visible: {inflation}");
        assert!(
            (config.noise_multiplier - inflation).abs() < 1e-12,
            "{}",
            config.noise_multiplier
        );
        let charged = release.noise_multiplier;
        assert!((1.0 - 1e-12..1.0 + 1e-9).contains(&charged), "charged {charged}");
    }

    /// `LocalWork::Steps(k)` is k optimiser steps, not a pass: on 12 equal windows in batches
    /// of 3 (4 steps a pass), 2 steps train half the predictions of one epoch and 6 steps one
    /// and a half epochs' worth.
    #[test]
    fn a_steps_plan_trains_exactly_that_many_batches() {
        let (shapes, flat) = layout_and_values(&tiny_initial_model());
        let examples = |work: LocalWork| {
            let plan = TrainingPlan { work, ..plan() };
            tiny_store(1).train(1, &shapes, &flat, &plan).expect("trains").example_count
        };
        let epoch = examples(LocalWork::Epochs(1));
        assert!(epoch > 0);
        assert_eq!(2 * examples(LocalWork::Steps(2)), epoch);
        assert_eq!(2 * examples(LocalWork::Steps(6)), 3 * epoch);
    }

    /// A store whose ε is stated at a larger δ than the round's would promise less than the
    /// round requires: it refuses before training and charges nothing.
    #[test]
    fn a_store_refuses_a_round_whose_delta_is_below_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = dp_store(dir.path(), 1e-4, 1.0, 1.0);
        let with_delta = |delta: f64| TrainingPlan {
            dp: Some(shopper_level(1.0, delta)),
            ..plan()
        };
        let why = store.refuses(1, &with_delta(1e-5)).expect("refused");
        assert!(why.contains("δ = 1e-4") && why.contains("δ = 1e-5"), "{why}");
        // The round's own δ, or a looser one, is fine.
        assert_eq!(store.refuses(1, &with_delta(1e-4)), None);
        assert_eq!(store.refuses(1, &with_delta(1e-3)), None);
        assert!(store.dp.as_ref().unwrap().guard.ledger().entries().is_empty());
    }

    /// SCAFFOLD's control variates cancel for a store whose last move was the federation's:
    /// alone in a federation, the corrected store trains exactly as an uncorrected one; once
    /// the global model moved otherwise than the store did, its training is steered.
    #[test]
    fn the_drift_correction_is_nothing_for_a_store_that_moved_as_the_federation_did() {
        let (shapes, x0) = layout_and_values(&tiny_initial_model());
        let rounds = |corrected: bool, global_step: f32| {
            let mut store = tiny_store(1);
            if corrected {
                store = store.with_drift_correction();
            }
            let d1 = store.train(1, &shapes, &x0, &plan()).expect("trains").delta;
            let x1: Vec<f32> = x0.iter().zip(&d1).map(|(x, d)| x + global_step * d).collect();
            let d2 = store.train(2, &shapes, &x1, &plan()).expect("trains").delta;
            (d1, d2)
        };
        let plain = rounds(false, 1.0);
        let alone = rounds(true, 1.0);
        assert_eq!(alone, plain, "a store alone was corrected");
        // The federation moved twice as far as this store did: round 2 is steered, round 1 not.
        let (plain1, plain2) = rounds(false, 2.0);
        let (steered1, steered2) = rounds(true, 2.0);
        assert_eq!(steered1, plain1);
        let moved: f32 = steered2.iter().zip(&plain2).map(|(a, b)| (a - b).abs()).sum();
        assert!(moved > 1e-3, "the correction changed nothing: {moved}");
    }

    /// The quickstart runs every store in one process: each store's update must depend on its
    /// own seed and data only, not on how its training interleaves with the others'.
    #[test]
    fn a_store_trains_the_same_beside_other_stores_as_alone() {
        let first = tiny_store(1);
        let start = FusedTrainer::initial_model(first.shape, &first.data.features, &first.device);
        let alone = two_rounds(first, &start);
        assert!(alone[0].iter().any(|d| d.abs() > 1e-4), "training moved nothing");
        // A different seed draws different dropout masks and negatives.
        assert!(
            two_rounds(tiny_store(2), &start) != alone,
            "seeds 1 and 2 trained the same update"
        );
        for _ in 0..2 {
            let start = &start;
            let beside = std::thread::scope(|s| {
                let others: Vec<_> = (2..4)
                    .map(|seed| s.spawn(move || two_rounds(tiny_store(seed), start)))
                    .collect();
                let ours = s.spawn(move || two_rounds(tiny_store(1), start));
                others.into_iter().for_each(|o| drop(o.join().unwrap()));
                ours.join().unwrap()
            });
            let differing = beside
                .iter()
                .flatten()
                .zip(alone.iter().flatten())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(differing, 0, "coordinates that changed beside other stores");
        }
    }

    /// A plan that trains only the fusion: plain and DP-SGD rounds send a delta that is zero
    /// on every other parameter, the DP round sizes its noise-grid charge by the trained
    /// coordinates only, and a plan naming no parameter of the model is refused.
    #[test]
    fn a_plan_training_only_the_fusion_changes_only_the_fusion() {
        let start = tiny_initial_model();
        let (shapes, flat) = layout_and_values(&start);
        let fusion: Vec<String> = fedfuse_model::finetune::FUSION_PARAMETERS.map(String::from).to_vec();
        let plan = TrainingPlan {
            trainable: fusion.clone(),
            ..plan()
        };
        let dir = tempfile::tempdir().unwrap();
        let dp_plan = TrainingPlan {
            work: LocalWork::Steps(3),
            dp: Some(shopper_level(1.0, 1e-5)),
            ..plan.clone()
        };
        let mut dp = dp_store(dir.path(), 1e-5, 1.0, 1.0);
        let (config, _) = dp.dp_round(1, &dp_plan).expect("a DP store").expect("a release");
        assert_eq!(config.trainable, fusion);
        let trained = dp.trained_params(&fusion);
        let all = dp.trained_params(&[]);
        assert!(trained > 0 && trained < all / 2, "{trained} fusion parameters of {all}");
        for (store, plan) in [(&mut tiny_store(1), &plan), (&mut dp, &dp_plan)] {
            let delta = store.train(1, &shapes, &flat, plan).expect("trains").delta;
            let mut offset = 0;
            let mut moved = 0;
            for p in &start {
                let d = &delta[offset..offset + p.values.len()];
                offset += p.values.len();
                if selected(&p.name, &fusion) {
                    moved += usize::from(d.iter().any(|v| *v != 0.0));
                } else {
                    assert!(d.iter().all(|v| *v == 0.0), "{} moved (DP: {})", p.name, plan.dp.is_some());
                }
            }
            assert!(moved >= 4, "the fusion moved in {moved} tensors (DP: {})", plan.dp.is_some());
        }
        let typo = TrainingPlan {
            trainable: vec!["heads".into()],
            ..plan
        };
        let refusal = tiny_store(1).refuses(1, &typo).expect("refused");
        assert!(refusal.contains("names no parameter"), "{refusal}");
    }
}
