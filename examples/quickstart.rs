//! The main job: a complete federated run on loopback.
//!
//!   cargo run --release --example quickstart
//!   cargo run --release --example quickstart -- --data movielens:../shared/data/ml-100k --rounds 30
//!   cargo run --release --example quickstart -- --target-epsilon 8 --delta 1e-4
//!
//! Creates a platform CA and one certificate per partner store with the project's own tooling,
//! starts the aggregator service and every store agent on 127.0.0.1 (real QUIC, mutual TLS),
//! and federates the fused recommender, each store training only on its own shoppers (the
//! built-in synthetic data by default; MovieLens-100K split into 11 stores by ZIP digit). Every
//! committed global model is evaluated on the held-out test items and a per-round table is
//! printed; `--report FILE` writes the numbers as JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use fedfuse_client::privacy::{StorePrivacy, StorePrivacyPolicy};
use fedfuse_client::trainer::{FusedTrainer, MomentExchange, PooledMoments, RoundLog, StoreData, UserLevelDp};
use fedfuse_client::{AgentOptions, Backoff, run_agent};
use fedfuse_data::evaluate::{EvalAccumulator, Holdout, evaluate_into};
use fedfuse_data::partition::hold_out_platform;
use fedfuse_data::source::DataSource;
use fedfuse_data::split::{Split, SplitConfig};
use fedfuse_data::synthetic::SyntheticConfig;
use fedfuse_model::catalog::ItemFeatures;
use fedfuse_model::device::{self, DeviceChoice};
use fedfuse_model::evaluate::FusedScorer;
use fedfuse_model::finetune::FUSION_PARAMETERS;
use fedfuse_model::fit::{ModelShape, TITLE_LEN};
use fedfuse_model::params::{import, unflatten};
use fedfuse_model::sequence::EncoderKind;
use fedfuse_model::train::TrainConfig;
use fedfuse_model::window::{CandidateConfig, SameTimeRuns};
use fedfuse_privacy::Budget;
use fedfuse_privacy::noise::{DEFAULT_GRID_EXPONENT, grid_inflation};
use fedfuse_privacy::plan::{Accountant, noise_multiplier_for};
use fedfuse_protocol::msgs::{Capabilities, DpRequirement, LocalWork, NoiseMode, PrivacyUnit, TrainingPlan};
use fedfuse_protocol::tensor::{UpdateEncoding, ValueEncoding};
use fedfuse_server::aggregate::AggregationRule;
use fedfuse_server::aggregate::optimizer::ServerOptimizerConfig;
use fedfuse_server::central_dp::{AdaptiveClipping, CentralDp};
use fedfuse_server::fine_tune::FusionFineTuner;
use fedfuse_server::layout::ModelLayout;
use fedfuse_server::pki::{self, InitOptions};
use fedfuse_server::pretrain::pretrain;
use fedfuse_server::round::RoundPolicy;
use fedfuse_server::schedule::LearningRateSchedule;
use fedfuse_server::service::{FineTuner, ServiceOptions, run_aggregator_with};
use fedfuse_server::state::{AggregatorState, Committed};
use fedfuse_transport::{AggregatorEndpoint, StoreEndpoint, TransportTuning};
use serde_json::json;

/// A complete federated run on 127.0.0.1: aggregator + one agent per store, real QUIC and
/// mutual TLS with certificates from the platform's own tooling.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// `synthetic` (built in) or `movielens:PATH` (11 stores by ZIP first digit).
    #[arg(long, default_value = "synthetic")]
    data: DataSource,
    /// Federated rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    /// Seeds the data generator, the model and the stores' training.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Shoppers in the synthetic data (its full default size is 20,000).
    #[arg(long, default_value_t = 3000)]
    shoppers: u32,
    /// Local epochs over the store's shoppers per round.
    #[arg(long, default_value_t = 1)]
    local_epochs: u32,
    /// Instead of --local-epochs, every store takes exactly this many optimiser steps a round
    /// (equal work whatever a store's size; 0: epochs).
    #[arg(long, default_value_t = 0)]
    local_steps: u32,
    /// Local learning rate (AdamW).
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// How the aggregator sets the local learning rate round by round: `constant` keeps --lr;
    /// `cosine` decays it from --lr in round 1 towards --lr × --min-lr-fraction after the last
    /// round, after --lr-hold-fraction of the rounds at --lr (on MovieLens-100K neither a full nor
    /// a late cosine measured better than constant: BENCHMARKS.md).
    #[arg(long, default_value = "constant", value_parser = ["cosine", "constant"])]
    lr_schedule: String,
    #[arg(long, default_value_t = 0.05)]
    min_lr_fraction: f32,
    /// With `--lr-schedule cosine`: the share of --rounds offered the full --lr before the
    /// decay starts (0: decay from round 1).
    #[arg(long, default_value_t = 0.0)]
    lr_hold_fraction: f64,
    /// Windows per local batch.
    #[arg(long, default_value_t = 32)]
    batch_size: u32,
    /// Server optimiser: fedavg, fedavgm (FedAvg with server momentum), fedadam, fedyogi or
    /// fedadagrad.
    #[arg(long, default_value = "fedavg")]
    server_optimizer: String,
    /// Server learning rate.
    #[arg(long, default_value_t = 1.0)]
    server_lr: f32,
    /// With `--server-optimizer fedavgm`: the momentum β of the server's velocity (the step on a
    /// steady aggregate approaches --server-lr / (1 − β)).
    #[arg(long, default_value_t = 0.9)]
    server_momentum: f32,
    /// With `--server-optimizer fedavgm`: Nesterov momentum, the step taken along the velocity
    /// it is about to have (DiLoCo's outer optimiser: --server-lr 0.7 --server-momentum 0.9).
    #[arg(long)]
    server_nesterov: bool,
    /// How updates travel: f32, f16 or int8.
    #[arg(long, default_value = "f32")]
    encoding: String,
    /// Width of every embedding and of the sequence encoder (the MovieLens benchmarks use 64; the
    /// small default keeps the synthetic run quick).
    #[arg(long, default_value_t = 32)]
    dim: usize,
    /// How many of a shopper's most recent items the model reads (the benchmarks use 50).
    #[arg(long, default_value_t = 20)]
    max_len: usize,
    /// Hidden width of the MLP head.
    #[arg(long, default_value_t = 16)]
    head: usize,
    /// `attention` or `lstm`.
    #[arg(long, default_value = "attention")]
    encoder: EncoderKind,
    /// Dropout in the sequence encoder and the MLP head, while training.
    #[arg(long, default_value_t = ModelShape::default().dropout)]
    dropout: f64,
    /// `cpu` (burn's flex backend), `gpu` (wgpu on whatever adapter it finds) or `auto` (a real
    /// GPU through wgpu when there is one, else the CPU with a warning: a software Vulkan adapter
    /// is ~100× slower than flex, so `auto` passes it over).
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// User-level DP (one shopper = one privacy unit) inside every store, at this ε for the
    /// whole run: each store runs DP-SGD with the noise its own size needs.
    #[arg(long)]
    target_epsilon: Option<f64>,
    #[arg(long, default_value_t = 1e-4)]
    delta: f64,
    /// Store-level DP (one store = one privacy unit) on every published model, at this ε for the
    /// whole run: the aggregator clips each update (adaptively, to the median norm), adds the
    /// noise once to their sum and charges every round to its own ledger first.
    #[arg(long)]
    store_level_epsilon: Option<f64>,
    /// DP-SGD: expected shoppers per step in each store.
    #[arg(long, default_value_t = 16.0)]
    dp_batch: f64,
    /// DP-SGD: per-shopper clip norm.
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
    /// Hold this share of shoppers out of every store for the platform, which fine-tunes the
    /// fusion weights and head on them after each aggregation (0 turns fine-tuning off).
    #[arg(long, default_value_t = 0.0)]
    platform_share: f64,
    /// Before round 1 the platform trains the fused model for up to this many epochs on the
    /// shoppers it holds (--platform-share), keeping the epoch its own validation shoppers rank
    /// best, and the federation starts from that model instead of a random one: transfer
    /// learning from data the platform owns (`fedfuse-server run --init-model` in production).
    /// No store's data is read, so it costs no store any privacy. 0: a random start.
    #[arg(long, default_value_t = 0)]
    pretrain_epochs: usize,
    /// The parameters every store trains, as comma-separated path prefixes ("head_,alpha",
    /// "sequence.", "items.id"), or `fusion` for the fusion weights and MLP head the platform
    /// fine-tunes; the rest stay as the federation started. Every parameter when absent. Under
    /// user-level DP a store's noise grows with the square root of what it trains, so with
    /// --pretrain-epochs `--train-only fusion` lets private stores adapt a few thousand
    /// parameters of the platform's model instead of burying all of them in noise.
    #[arg(long, value_delimiter = ',')]
    train_only: Vec<String>,
    /// FedProx: the weight μ of the proximal term (μ/2)·‖w − w_global‖² that each store adds
    /// to its local loss, which holds its steps near the model it was offered (0: plain local
    /// training).
    #[arg(long, default_value_t = 0.0)]
    proximal_mu: f32,
    /// Every store corrects its drift from the federation (SCAFFOLD's control variates, from
    /// the store's own last round and how the global model moved; nothing more is sent). Not
    /// in DP rounds.
    #[arg(long)]
    drift_correction: bool,
    /// Candidates each store's sampled softmax draws from its batch's targets.
    #[arg(long, default_value_t = CandidateConfig::default().in_batch)]
    in_batch: usize,
    /// Candidates drawn uniformly from the catalog; with --in-batch, as many as the catalog
    /// has items turns the sampled softmax into the exact one over every item.
    #[arg(long, default_value_t = CandidateConfig::default().uniform)]
    uniform: usize,
    /// Leave each shopper's earlier items out of every prediction's softmax in the stores'
    /// training (DP-SGD rounds included) and the platform's pretraining (see
    /// train_centralized --exclude-seen).
    #[arg(long)]
    exclude_seen: bool,
    /// Every store scores only the last N positions of each training window, reading the
    /// items before them as context (see train_centralized --window-stride). Unset: disjoint
    /// windows.
    #[arg(long, value_name = "N")]
    window_stride: Option<usize>,
    /// Every store permutes each run of same-second training events afresh every epoch (with
    /// --target-epsilon, every time DP-SGD draws the shopper), so
    /// that the split's item-id tie-break is not learnt as an order (see train_centralized
    /// --shuffle-same-time).
    #[arg(long)]
    shuffle_same_time: bool,
    /// Put every shopper into one store: the federation's own machinery (the store's recipe,
    /// rounds, serving) with nothing to average, so a recipe's gap to centralized training can
    /// be told apart from what averaging across stores costs. A diagnostic, not a federation.
    #[arg(long)]
    pool_stores: bool,
    /// Start each round with fresh AdamW moments (by default a store keeps its own).
    #[arg(long)]
    forget_optimizer: bool,
    /// Start each store's round from the AdamW moments averaged over the stores' last round
    /// (weighted by examples) instead of its own: one preconditioner for every store, as a
    /// pooled store has. The stores pool them inside this process, not over the wire (which
    /// does not carry moments): a diagnostic of what sharing them would give.
    #[arg(long, conflicts_with = "forget_optimizer")]
    pool_moments: bool,
    /// Which model the run serves and reports as `final`: `last`, the last committed model;
    /// `best-validated`, the version the stores' own validation shoppers ranked best when it was
    /// offered (federated early stopping; DP stores report no validation, and it falls back to
    /// the last); `tail-average:K`, the average of the last K models, which the aggregator
    /// keeps after every round; or `tail-average:auto`, the average whose K (from 1, the last
    /// model, to 13) scores best on every store's validation shoppers, pooled by this harness as
    /// the stores would report them. Test numbers are never consulted. BENCHMARKS.md has what
    /// each one measured on MovieLens-100K.
    #[arg(long, default_value = "last")]
    serve: Serve,
    /// Write the per-round and final numbers as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// A bar over the rounds while the federation runs (the table comes after, once every model
/// is evaluated): the stores' mean training loss in the last round every store finished, and
/// the validation HR@10 of the model they were offered in it, pooled over their validation
/// shoppers as the aggregator sees it. Hidden when stderr is not a terminal.
async fn show_progress(
    bar: indicatif::ProgressBar,
    logs: Vec<Arc<std::sync::Mutex<Vec<RoundLog>>>>,
    validation_shoppers: Vec<usize>,
) {
    let mut shown = 0;
    loop {
        let finished: Vec<Vec<RoundLog>> = logs.iter().map(|l| l.lock().expect("log").clone()).collect();
        let done = finished
            .iter()
            .map(|l| l.iter().map(|r| r.round).max().unwrap_or(0))
            .min()
            .unwrap_or(0);
        if done > shown {
            shown = done;
            let of_round: Vec<(&RoundLog, usize)> = finished
                .iter()
                .zip(&validation_shoppers)
                .filter_map(|(l, n)| l.iter().find(|r| r.round == done).map(|r| (r, *n)))
                .collect();
            let losses: Vec<f64> = of_round.iter().map(|(r, _)| r.train_loss).filter(|l| l.is_finite()).collect();
            let (hits, shoppers) = of_round
                .iter()
                .filter_map(|(r, n)| r.validation_hr10.map(|hr| (hr * *n as f64, *n)))
                .fold((0.0, 0), |(h, s), (hr, n)| (h + hr, s + n));
            let mut msg = String::new();
            if !losses.is_empty() {
                msg.push_str(&format!("loss {:.4}", losses.iter().sum::<f64>() / losses.len() as f64));
            }
            if shoppers > 0 {
                msg.push_str(&format!("  offered model's val HR@10 {:.4}", hits / shoppers as f64));
            }
            bar.set_position(done);
            bar.set_message(msg);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Which model a run serves (`--serve`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Serve {
    Last,
    BestValidated,
    TailAverage(usize),
    TailAverageAuto,
}

impl std::str::FromStr for Serve {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "last" => Ok(Serve::Last),
            "best-validated" => Ok(Serve::BestValidated),
            "tail-average:auto" => Ok(Serve::TailAverageAuto),
            other => match other.strip_prefix("tail-average:").map(str::parse::<usize>) {
                Some(Ok(k)) if k > 0 => Ok(Serve::TailAverage(k)),
                _ => Err(format!(
                    "{other:?}: use last, best-validated, tail-average:K (K ≥ 1) or tail-average:auto"
                )),
            },
        }
    }
}

/// Epochs the platform's pretraining goes on without a better validation HR@10 before it stops
/// (the quality benchmark's patience).
const PRETRAIN_PATIENCE: usize = 10;

/// The averages `tail-average:auto` chooses among: short ones for a model that still moves,
/// long ones for one that oscillates around where it converged.
const TAIL_AVERAGE_CANDIDATES: [usize; 7] = [1, 2, 3, 5, 8, 10, 13];

fn server_optimizer(name: &str, lr: f32, momentum: f32, nesterov: bool) -> anyhow::Result<ServerOptimizerConfig> {
    Ok(match name {
        "fedavg" => ServerOptimizerConfig::FedAvg { lr },
        "fedavgm" => ServerOptimizerConfig::FedAvgM { lr, momentum, nesterov },
        "fedadam" => ServerOptimizerConfig::FedAdam {
            lr,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        },
        "fedyogi" => ServerOptimizerConfig::FedYogi {
            lr,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        },
        "fedadagrad" => ServerOptimizerConfig::FedAdagrad {
            lr,
            beta1: 0.0,
            tau: 1e-3,
        },
        other => anyhow::bail!("unknown server optimiser {other:?}: use fedavg, fedavgm, fedadam, fedyogi or fedadagrad"),
    })
    .and_then(|config| {
        config.check().map_err(anyhow::Error::msg)?;
        Ok(config)
    })
}

fn encoding(name: &str) -> anyhow::Result<UpdateEncoding> {
    Ok(UpdateEncoding::Dense(match name {
        "f32" => ValueEncoding::F32,
        "f16" => ValueEncoding::F16,
        "int8" => ValueEncoding::Int8,
        other => anyhow::bail!("unknown encoding {other:?}: use f32, f16 or int8"),
    }))
}

/// One store of the run.
struct Store {
    name: String,
    index: u16,
    shoppers: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Some(stride) = cli.window_stride
        && stride > cli.max_len
    {
        anyhow::bail!("--window-stride {stride} is more than --max-len {}", cli.max_len);
    }
    let started = Instant::now();
    let synthetic = SyntheticConfig {
        seed: cli.seed,
        shoppers: cli.shoppers,
        items: (cli.shoppers / 4).max(200),
        events: u64::from(cli.shoppers) * 25,
        ..SyntheticConfig::default()
    };
    let mut dataset = cli.data.load(&synthetic).with_context(|| format!("loading {}", cli.data))?;
    if cli.pool_stores {
        dataset.shoppers.iter_mut().for_each(|s| s.store = 0);
        dataset.stores = vec!["all-stores".into()];
    }
    let platform = if cli.platform_share > 0.0 {
        Some(hold_out_platform(&mut dataset, cli.platform_share, cli.seed).context("--platform-share")?)
    } else {
        None
    };
    let split = Arc::new(Split::new(&dataset, &SplitConfig::default())?);
    let features = ItemFeatures::from_catalog(&dataset.catalog);
    let shape = ModelShape {
        dim: cli.dim,
        max_len: cli.max_len,
        head: cli.head,
        encoder: cli.encoder,
        dropout: cli.dropout,
        ..ModelShape::default()
    };
    shape.check().map_err(anyhow::Error::msg)?;
    let base = device::select(cli.device)?;
    base.seed(cli.seed);
    // The starting global model, as the aggregator's layout and flat parameters.
    let start = FusedTrainer::initial_model(shape, &features, &base);
    let layout = ModelLayout::of_params(&start);
    let mut initial: Vec<f32> = start.iter().flat_map(|p| p.values.iter().copied()).collect();
    let dims = initial.len();
    let trainable: Vec<String> = cli
        .train_only
        .iter()
        .flat_map(|p| match p.as_str() {
            "fusion" => FUSION_PARAMETERS.map(String::from).to_vec(),
            other => vec![other.to_owned()],
        })
        .collect();
    let trained_values = layout
        .trained_values(&trainable)
        .map_err(|e| anyhow::anyhow!("--train-only: {e}"))?;
    if !trainable.is_empty() {
        eprintln!("the stores train {trained_values} of the model's {dims} parameters: {trainable:?}");
    }
    let sequences = split.train_sequences();
    let same_time = cli.shuffle_same_time.then(|| Arc::new(SameTimeRuns::from_split(&split)));
    if let Some(runs) = &same_time {
        eprintln!("shuffled every epoch: {runs}");
    }
    let cases_of = |store: u16, holdout: Holdout| -> Vec<usize> {
        let cases = match holdout {
            Holdout::Validation => &split.validation,
            Holdout::Test => &split.test,
        };
        cases
            .iter()
            .enumerate()
            .filter(|(_, c)| dataset.shoppers[c.shopper as usize].store == store)
            .map(|(i, _)| i)
            .collect()
    };
    let stores: Vec<Store> = dataset
        .stores
        .iter()
        .enumerate()
        .map(|(i, name)| Store {
            name: name.clone(),
            index: i as u16,
            shoppers: dataset
                .shoppers
                .iter()
                .enumerate()
                .filter(|(s, info)| info.store == i as u16 && sequences[*s].len() > 1)
                .count(),
        })
        .filter(|s| s.shoppers > 0 && Some(s.index) != platform)
        .collect();
    // The platform's shoppers' training sequences (every other shopper's empty, so that the
    // split's case indices stay valid): what it pretrains and fine-tunes on.
    let platform_sequences: Option<Vec<Vec<u32>>> = platform.map(|p| {
        sequences
            .iter()
            .enumerate()
            .map(|(s, seq)| {
                if dataset.shoppers[s].store == p {
                    seq.clone()
                } else {
                    Vec::new()
                }
            })
            .collect()
    });
    // Transfer learning: the platform's own shoppers train the model the federation starts from.
    let pretraining = match (cli.pretrain_epochs, platform.zip(platform_sequences.as_deref())) {
        (0, _) => None,
        (_, None) => anyhow::bail!("--pretrain-epochs needs --platform-share: the platform pretrains on the shoppers it holds"),
        (epochs, Some((p, own))) => {
            let config = TrainConfig {
                epochs,
                batch_size: 32,
                learning_rate: 1e-3,
                warmup_steps: 100,
                max_len: cli.max_len,
                window_stride: cli.window_stride,
                candidates: CandidateConfig {
                    in_batch: cli.in_batch,
                    uniform: cli.uniform,
                    exclude_seen: cli.exclude_seen,
                },
                seed: cli.seed,
                shuffle_same_time: same_time.clone(),
                ..TrainConfig::default()
            };
            let pretrained = pretrain(
                shape,
                &features,
                &base,
                own,
                &split,
                &cases_of(p, Holdout::Validation),
                &config,
                PRETRAIN_PATIENCE,
                |e| {
                    eprintln!(
                        "platform pretraining, epoch {}: loss {:.4}, platform validation HR@10 {:.4}",
                        e.train.epoch + 1,
                        e.train.mean_loss,
                        e.validation_hr10
                    )
                },
            )?;
            let shoppers = own.iter().filter(|s| s.len() > 1).count();
            let validation = pretrained.validation_hr10;
            println!(
                "platform pretraining on {shoppers} shoppers: epoch {} of {} kept (platform validation HR@10 {validation:.4}, random start {:.4}; {:.0} s); round 0 below is this model on the stores' test shoppers",
                pretrained.best_epoch,
                pretrained.epochs.len(),
                pretrained.validation_hr10_fresh,
                pretrained.seconds
            );
            anyhow::ensure!(
                pretrained.layout == layout,
                "the pretrained model's layout differs from the federation's"
            );
            initial = pretrained.params;
            Some(
                json!({"epochs": pretrained.epochs.len(), "best_epoch": pretrained.best_epoch, "shoppers": shoppers,
                "platform_validation_hr10": validation, "platform_validation_hr10_fresh": pretrained.validation_hr10_fresh, "seconds": pretrained.seconds}),
            )
        }
    };
    eprintln!(
        "{} shoppers, {} items, {} stores{}; {} rounds of {} local epoch(s); {} parameters",
        dataset.shoppers.len(),
        features.category.len(),
        stores.len(),
        platform.map_or(String::new(), |p| format!(
            " + {} platform shoppers",
            dataset.store_sizes()[p as usize]
        )),
        cli.rounds,
        cli.local_epochs,
        dims
    );

    let work = tempfile::tempdir()?;
    let pki_dir = pki::init(&work.path().join("platform"), &InitOptions::default())?;
    let (identity, trust) = pki_dir.aggregator_tls()?;
    let fine_tuner: Option<Box<dyn FineTuner>> = platform.zip(platform_sequences.clone()).map(|(p, own)| {
        Box::new(FusionFineTuner::new(
            shape,
            &features,
            base.clone(),
            own,
            split.clone(),
            cases_of(p, Holdout::Validation),
            TrainConfig {
                epochs: 2,
                batch_size: cli.batch_size as usize,
                learning_rate: 1e-3,
                min_learning_rate: 1e-3,
                max_len: cli.max_len,
                seed: cli.seed,
                ..TrainConfig::default()
            },
        )) as Box<dyn FineTuner>
    });
    let dp = cli.target_epsilon.is_some();
    // The noise multiplier each store's size needs for ε over every round it will train
    // (calibrated once: the PLD search takes seconds per store).
    let sigmas: Vec<f64> = match cli.target_epsilon {
        Some(epsilon) => stores
            .iter()
            .map(|st| {
                let q = (cli.dp_batch / st.shoppers as f64).min(1.0);
                let steps = cli.rounds * LocalWork::of(cli.local_epochs, cli.local_steps).dp_sgd_steps(q);
                noise_multiplier_for(epsilon * 0.99, cli.delta, q, steps, Accountant::Pld).map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<_>>()?,
        None => Vec::new(),
    };
    let central_dp = match cli.store_level_epsilon {
        None => None,
        Some(epsilon) => {
            // Every round is charged as a full-participation Gaussian: z for ε over all rounds.
            let z = noise_multiplier_for(epsilon * 0.99, cli.delta, 1.0, cli.rounds.max(1), Accountant::Pld)
                .map_err(anyhow::Error::msg)?;
            Some(CentralDp {
                noise_multiplier: z,
                clip_norm: 1.0,
                expected_stores: stores.len() as f64,
                epsilon_max: epsilon,
                delta: cli.delta,
                // The count's noise at z_b = z costs the update 15% more noise (Andrew et al.).
                adaptive: Some(AdaptiveClipping {
                    target_quantile: 0.5,
                    learning_rate: 0.2,
                    count_noise_multiplier: z,
                }),
                grid_exponent: DEFAULT_GRID_EXPONENT,
            })
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(stores.len() + 2)
        .enable_all()
        .build()?;
    let state_dir = work.path().join("state");
    let mut logs = Vec::new();
    let (service_report, runs) = runtime.block_on(async {
        let endpoint = Arc::new(AggregatorEndpoint::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            identity,
            &trust,
            TransportTuning::default(),
        )?);
        let addr = endpoint.local_addr()?;
        let policy = RoundPolicy {
            min_stores: stores.len(),
            quorum: stores.len(),
            rounds: cli.rounds,
            deadline_ms: 3_600_000,
            seed: cli.seed,
            // With DP, a store's weight must not depend on its data.
            aggregation: if dp {
                AggregationRule::UniformMean {
                    expected_stores: Some(stores.len() as f64),
                }
            } else {
                AggregationRule::ExampleWeightedMean
            },
            optimizer: server_optimizer(&cli.server_optimizer, cli.server_lr, cli.server_momentum, cli.server_nesterov)?,
            fine_tune: platform.is_some(),
            central_dp: central_dp.clone(),
            ..RoundPolicy::default()
        };
        let options = ServiceOptions {
            policy,
            plan: TrainingPlan {
                work: LocalWork::of(cli.local_epochs, cli.local_steps),
                learning_rate: cli.lr,
                batch_size: cli.batch_size,
                proximal_mu: {
                    anyhow::ensure!(
                        cli.proximal_mu.is_finite() && cli.proximal_mu >= 0.0,
                        "--proximal-mu {} must be a number ≥ 0",
                        cli.proximal_mu
                    );
                    (cli.proximal_mu > 0.0).then_some(cli.proximal_mu)
                },
                update_encoding: encoding(&cli.encoding)?,
                // The platform requires user-level DP at least as strong as its largest store
                // needs (the smallest σ): a store that applied less would refuse, and an update
                // without its privacy spend would be rejected.
                dp: dp.then(|| DpRequirement {
                    unit: PrivacyUnit::Shopper,
                    noise_mode: NoiseMode::Local,
                    min_noise_multiplier: sigmas.iter().copied().fold(f64::INFINITY, f64::min),
                    max_clip_norm: cli.clip_norm,
                    max_sampling_rate: 1.0,
                    delta: cli.delta,
                }),
                trainable: trainable.clone(),
            },
            schedule: if cli.lr_schedule == "constant" {
                LearningRateSchedule::Constant
            } else {
                LearningRateSchedule::Cosine {
                    min_learning_rate: cli.lr * cli.min_lr_fraction,
                    hold_rounds: (cli.rounds as f64 * cli.lr_hold_fraction.clamp(0.0, 1.0)).round() as u64,
                }
            },
            capabilities: Capabilities {
                update_encodings: UpdateEncoding::ALL.to_vec(),
                max_message_bytes: 1 << 30,
            },
            chunk_bytes: 4 << 20,
            tick: Duration::from_millis(100),
            tail_average: match cli.serve {
                Serve::TailAverage(k) => k,
                _ => 0,
            },
        };
        let state = AggregatorState::open(&state_dir)?;
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let service = tokio::spawn(run_aggregator_with(
            endpoint,
            state,
            Some((layout.clone(), initial)),
            options,
            stopped,
            fine_tuner,
        ));
        let mut agents = Vec::new();
        let moment_pool: Arc<dyn MomentExchange> = Arc::new(PooledMoments::default());
        for (i, store) in stores.iter().enumerate() {
            let bundle = pki_dir.issue_store(&store.name, 1)?;
            let own: Vec<Vec<u32>> = sequences
                .iter()
                .enumerate()
                .map(|(s, seq)| {
                    if dataset.shoppers[s].store == store.index {
                        seq.clone()
                    } else {
                        Vec::new()
                    }
                })
                .collect();
            let data = StoreData {
                features: features.clone(),
                sequences: own,
                validation: Some((split.clone(), cases_of(store.index, Holdout::Validation))),
            };
            let mut trainer = FusedTrainer::new(shape, data, base.clone(), cli.seed + i as u64)
                .with_candidates(CandidateConfig {
                    in_batch: cli.in_batch,
                    uniform: cli.uniform,
                    exclude_seen: cli.exclude_seen,
                })
                .with_window_stride(cli.window_stride)
                .with_same_time_shuffle(same_time.clone());
            if cli.forget_optimizer {
                trainer = trainer.forget_optimizer_state();
            }
            if cli.pool_moments {
                trainer = trainer.with_pooled_moments(moment_pool.clone(), store.index);
            }
            if cli.drift_correction {
                trainer = trainer.with_drift_correction();
            }
            if let Some(epsilon) = cli.target_epsilon {
                let sigma = sigmas[i];
                let inflate = grid_inflation(cli.clip_norm, dims, DEFAULT_GRID_EXPONENT);
                let policy = StorePrivacyPolicy {
                    budget: Budget {
                        epsilon_max: epsilon,
                        delta: cli.delta,
                    },
                    noise_multiplier: sigma * inflate,
                    clip_norm: cli.clip_norm,
                    grid_exponent: DEFAULT_GRID_EXPONENT,
                };
                let guard = StorePrivacy::open(&store.name, policy, &work.path().join(format!("{}.ledger.jsonl", store.name)))?;
                trainer = trainer.with_user_level_dp(UserLevelDp {
                    guard,
                    expected_batch: cli.dp_batch,
                    noise_multiplier: sigma * inflate,
                    clip_norm: cli.clip_norm,
                    negatives: CandidateConfig::default().uniform,
                });
            }
            logs.push((store.name.clone(), trainer.log.clone()));
            agents.push(tokio::spawn(async move {
                let (identity, trust) = bundle.tls().map_err(|e| e.to_string())?;
                let endpoint =
                    StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default()).map_err(|e| e.to_string())?;
                let opts = AgentOptions {
                    software_version: env!("CARGO_PKG_VERSION").into(),
                    capabilities: Capabilities {
                        update_encodings: UpdateEncoding::ALL.to_vec(),
                        max_message_bytes: 1 << 30,
                    },
                    max_model_bytes: 1 << 30,
                    rounding_seed: i as u64,
                };
                run_agent(
                    &endpoint,
                    addr,
                    &bundle.aggregator_name,
                    &mut trainer,
                    &opts,
                    Backoff::default(),
                    None,
                )
                .await
                .map_err(|e| e.to_string())
            }));
        }
        let bar = indicatif::ProgressBar::new(cli.rounds).with_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] round {pos}/{len} {msg} ETA {eta}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        let progress = tokio::spawn(show_progress(
            bar.clone(),
            logs.iter().map(|(_, log)| log.clone()).collect(),
            stores.iter().map(|s| cases_of(s.index, Holdout::Validation).len()).collect(),
        ));
        let report = service.await;
        progress.abort();
        bar.finish_and_clear();
        let report = report?.context("aggregator")?;
        let mut runs = Vec::new();
        for a in agents {
            runs.push(a.await?.map_err(anyhow::Error::msg)?);
        }
        anyhow::Ok((report, runs))
    })?;
    let federation_seconds = started.elapsed().as_secs_f64();

    // Evaluate every committed global model on the stores' shoppers' test items.
    let eval_catalog = features.to_tensors(features.vocabulary(TITLE_LEN), &base);
    let config = shape.config(&features.vocabulary(TITLE_LEN));
    let state = AggregatorState::open(&state_dir)?;
    let test_cases: Vec<usize> = stores.iter().flat_map(|s| cases_of(s.index, Holdout::Test)).collect();
    let round_logs = |round: u64| -> Vec<RoundLog> {
        logs.iter()
            .flat_map(|(_, l)| {
                l.lock()
                    .expect("log")
                    .iter()
                    .filter(|r| r.round == round)
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    // The stores' pooled validation of each version, measured in the round it was offered in.
    let validated: std::collections::HashMap<u64, f64> = service_report
        .rounds
        .iter()
        .filter_map(|r| {
            let get = |k: &str| r.metrics.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
            Some((get("federated_validation_version")? as u64, get("federated_validation_hr10")?))
        })
        .collect();
    let evaluate = |snapshot: &fedfuse_server::state::ModelSnapshot,
                    holdout: Holdout,
                    cases: &[usize]|
     -> anyhow::Result<fedfuse_data::evaluate::Evaluation> {
        let shapes: Vec<(String, Vec<usize>)> = snapshot
            .layout
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.shape.iter().map(|d| *d as usize).collect()))
            .collect();
        let model = import(config.init(&base), &unflatten(&shapes, &snapshot.params)?)?;
        let mut acc = EvalAccumulator::default();
        evaluate_into(
            &mut FusedScorer::new(&model, &eval_catalog),
            &split,
            holdout,
            cases,
            256,
            &mut acc,
        );
        Ok(acc.finish(10))
    };
    println!(
        "\n{:>5} {:>7} {:>10} {:>9} {:>9} {:>12} {:>8} {:>9}",
        "round", "stores", "train loss", "HR@10", "NDCG@10", "HR@10 (99)", "max ε", "val HR@10"
    );
    let mut rounds = Vec::new();
    let mut evaluations = std::collections::HashMap::new();
    let mut last = None;
    for r in &service_report.rounds {
        let snapshot = state.load(&Committed {
            version: r.version,
            next_round: r.round_id + 1,
            content_hash: r.content_hash,
        })?;
        let e = evaluate(&snapshot, Holdout::Test, &test_cases)?;
        let logs = round_logs(r.round_id);
        let losses: Vec<f64> = logs.iter().map(|l| l.train_loss).filter(|l| l.is_finite()).collect();
        let loss = (!losses.is_empty()).then(|| losses.iter().sum::<f64>() / losses.len() as f64);
        let eps = logs
            .iter()
            .filter_map(|l| l.epsilon)
            .fold(None, |m: Option<f64>, e| Some(m.map_or(e, |m| m.max(e))));
        let val = validated.get(&r.version).copied();
        println!(
            "{:>5} {:>7} {:>10} {:>9.4} {:>9.4} {:>12.4} {:>8} {:>9}",
            r.round_id,
            r.updates,
            loss.map_or("-".into(), |l| format!("{l:.4}")),
            e.full.overall.mean.hit_rate,
            e.full.overall.mean.ndcg,
            e.sampled.overall.mean.hit_rate,
            eps.map_or("-".into(), |e| format!("{e:.3}")),
            val.map_or("-".into(), |v| format!("{v:.4}"))
        );
        rounds.push(
            json!({"round": r.round_id, "stores": r.updates, "train_loss": loss, "max_epsilon": eps,
            "hr10_full": e.full.overall.mean.hit_rate, "ndcg10_full": e.full.overall.mean.ndcg,
            "hr10_sampled": e.sampled.overall.mean.hit_rate, "ndcg10_sampled": e.sampled.overall.mean.ndcg,
            "hr10_full_distinct_timestamps": e.full.distinct_timestamps.mean.hit_rate,
            "version": r.version, "federated_validation_hr10": val,
            "metrics": r.metrics.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>()}),
        );
        last = Some((r.version, r.round_id));
        evaluations.insert(r.version, e);
    }
    let (last_version, last_round) = last.context("no model was committed")?;
    let validation_cases: Vec<usize> = stores.iter().flat_map(|s| cases_of(s.index, Holdout::Validation)).collect();
    // Selection looks at validation only; the test numbers of every version are printed for
    // the reader, never consulted.
    let last_e = evaluations
        .get(&last_version)
        .context("the last model was evaluated")?
        .clone();
    let mut tail_candidates = Vec::new();
    let (served_version, served_why, e) = match (&service_report.best_validated, cli.serve) {
        (Some(b), Serve::BestValidated) => (
            b.version,
            format!(
                "best federated validation HR@10 {:.4} ({} shoppers of {} stores, measured in round {})",
                b.hr10, b.shoppers, b.stores, b.round_id
            ),
            evaluations.get(&b.version).context("the served model was evaluated")?.clone(),
        ),
        (None, Serve::BestValidated) => (
            last_version,
            format!("the last (round {last_round}): no store reported validation"),
            last_e.clone(),
        ),
        (_, Serve::TailAverage(_)) => {
            let averaged = service_report
                .tail_average
                .as_ref()
                .context("the aggregator recorded no averaged model")?;
            let snapshot = state.load_tail_average(averaged)?;
            (
                averaged.last_version(),
                format!(
                    "the average of the last {} models (rounds {:?})",
                    averaged.versions.len(),
                    averaged.rounds
                ),
                evaluate(&snapshot, Holdout::Test, &test_cases)?,
            )
        }
        (_, Serve::TailAverageAuto) => {
            println!(
                "\n{:>4} {:>9} {:>13} {:>9} {:>9}",
                "K", "rounds", "val HR@10", "HR@10", "NDCG@10"
            );
            let mut best: Option<(f64, f64, usize)> = None;
            for k in TAIL_AVERAGE_CANDIDATES {
                let Some((averaged, snapshot)) = state.average_of_last(k)? else {
                    break;
                };
                if averaged.versions.len() < k {
                    break;
                }
                let val = evaluate(&snapshot, Holdout::Validation, &validation_cases)?;
                let test = evaluate(&snapshot, Holdout::Test, &test_cases)?;
                let (vh, vn) = (val.full.overall.mean.hit_rate, val.full.overall.mean.ndcg);
                println!(
                    "{k:>4} {:>9} {vh:>13.4} {:>9.4} {:>9.4}",
                    format!("{}-{}", averaged.rounds[0], averaged.rounds[averaged.rounds.len() - 1]),
                    test.full.overall.mean.hit_rate,
                    test.full.overall.mean.ndcg
                );
                if best.is_none_or(|(bh, bn, _)| vh > bh || (vh == bh && vn > bn)) {
                    best = Some((vh, vn, tail_candidates.len()));
                }
                tail_candidates.push((k, averaged, vh, vn, test));
            }
            let (vh, _, i) = best.context("no model to average")?;
            let (k, averaged, _, _, test) = tail_candidates[i].clone();
            (
                averaged.last_version(),
                format!(
                    "the average of the last {k} models (rounds {:?}), validation HR@10 {vh:.4}",
                    averaged.rounds
                ),
                test,
            )
        }
        (_, Serve::Last) => (last_version, format!("the last (round {last_round})"), last_e.clone()),
    };
    println!(
        "served model: version {served_version}, {served_why}: HR@10 {:.4}, NDCG@10 {:.4} (last model: {:.4}, {:.4})",
        e.full.overall.mean.hit_rate, e.full.overall.mean.ndcg, last_e.full.overall.mean.hit_rate, last_e.full.overall.mean.ndcg
    );
    let store_name = |s: &u16| dataset.stores.get(*s as usize).cloned().unwrap_or_default();
    let worst = e
        .full
        .by_store
        .iter()
        .min_by(|a, b| a.1.mean.hit_rate.total_cmp(&b.1.mean.hit_rate));
    if let Some((s, m)) = worst {
        println!(
            "worst store: {} (HR@10 {:.4} over {} shoppers)",
            store_name(s),
            m.mean.hit_rate,
            m.cases
        );
    }
    for (round, metrics) in &service_report.fine_tuning {
        let get = |k: &str| metrics.iter().find(|(n, _)| n == k).map_or(f64::NAN, |(_, v)| *v);
        println!(
            "fine-tuning after round {round}: platform validation HR@10 {:.4} → {:.4}, NDCG@10 {:.4} → {:.4} ({})",
            get("fine_tune_validation_hr10_before"),
            get("fine_tune_validation_hr10_after"),
            get("fine_tune_validation_ndcg10_before"),
            get("fine_tune_validation_ndcg10_after"),
            if get("fine_tune_kept") > 0.5 { "kept" } else { "discarded" }
        );
    }
    let bytes_up: u64 = runs.iter().map(|a| a.bytes_up).sum();
    let bytes_down: u64 = runs.iter().map(|a| a.bytes_down).sum();
    let epsilon: serde_json::Map<String, serde_json::Value> = logs
        .iter()
        .map(|(name, l)| {
            (
                name.clone(),
                json!(l.lock().expect("log").iter().filter_map(|r| r.epsilon).next_back()),
            )
        })
        .collect();
    if let Some(eps) = service_report.central_epsilon {
        println!(
            "store-level ε spent by the published models: {eps:.3} (budget {}, δ {}){}",
            cli.store_level_epsilon.unwrap_or(f64::NAN),
            cli.delta,
            if service_report.budget_spent {
                "; the budget stopped the federation"
            } else {
                ""
            }
        );
    }
    println!(
        "bytes up {bytes_up}, down {bytes_down} ({:.0} up per store and round); federation {federation_seconds:.1} s, total {:.1} s",
        bytes_up as f64 / (stores.len() as f64 * cli.rounds.max(1) as f64),
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = cli.report {
        let report = json!({
            "data": cli.data.to_string(),
            "config": {"rounds": cli.rounds, "local_epochs": cli.local_epochs, "local_steps": cli.local_steps, "lr": cli.lr, "lr_schedule": cli.lr_schedule, "min_lr_fraction": cli.min_lr_fraction, "lr_hold_fraction": cli.lr_hold_fraction, "batch_size": cli.batch_size,
                "server_optimizer": cli.server_optimizer, "server_lr": cli.server_lr, "server_momentum": cli.server_momentum, "server_nesterov": cli.server_nesterov, "proximal_mu": cli.proximal_mu, "drift_correction": cli.drift_correction, "in_batch": cli.in_batch, "uniform": cli.uniform, "exclude_seen": cli.exclude_seen, "window_stride": cli.window_stride, "shuffle_same_time": cli.shuffle_same_time, "encoding": cli.encoding,
                "dim": cli.dim, "max_len": cli.max_len, "head": cli.head, "dropout": cli.dropout, "seed": cli.seed,
                "target_epsilon": cli.target_epsilon, "store_level_epsilon": cli.store_level_epsilon, "delta": cli.delta, "platform_share": cli.platform_share, "pretrain_epochs": cli.pretrain_epochs, "train_only": trainable, "trained_parameters": trained_values, "pool_stores": cli.pool_stores, "pool_moments": cli.pool_moments, "forget_optimizer": cli.forget_optimizer, "serve": format!("{:?}", cli.serve)},
            "rounds": rounds,
            "pretraining": pretraining,
            "fine_tuning": service_report.fine_tuning.iter().map(|(r, m)| json!({"round": r,
                "metrics": m.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>()})).collect::<Vec<_>>(),
            "tail_average_candidates": tail_candidates.iter().map(|(k, a, vh, vn, t)| json!({"k": k, "rounds": a.rounds,
                "validation_hr10_full": vh, "validation_ndcg10_full": vn,
                "hr10_full": t.full.overall.mean.hit_rate, "ndcg10_full": t.full.overall.mean.ndcg})).collect::<Vec<_>>(),
            "last": {
                "version": last_version, "round": last_round,
                "hr10_full": last_e.full.overall.mean.hit_rate, "ndcg10_full": last_e.full.overall.mean.ndcg,
                "hr10_sampled": last_e.sampled.overall.mean.hit_rate, "ndcg10_sampled": last_e.sampled.overall.mean.ndcg,
            },
            "final": {
                "version": served_version, "served": served_why,
                "hr10_full": e.full.overall.mean.hit_rate, "ndcg10_full": e.full.overall.mean.ndcg,
                "hr10_sampled": e.sampled.overall.mean.hit_rate, "ndcg10_sampled": e.sampled.overall.mean.ndcg,
                "hr10_full_distinct_timestamps": e.full.distinct_timestamps.mean.hit_rate,
                "ndcg10_full_distinct_timestamps": e.full.distinct_timestamps.mean.ndcg,
                "cases": e.full.overall.cases, "cases_distinct_timestamps": e.full.distinct_timestamps.cases,
                "per_store": e.full.by_store.iter().map(|(s, m)| (store_name(s), json!({"hr10": m.mean.hit_rate, "ndcg10": m.mean.ndcg, "cases": m.cases}))).collect::<serde_json::Map<_, _>>(),
                "worst_store": worst.map(|(s, m)| json!({"store": store_name(s), "hr10": m.mean.hit_rate})),
                "epsilon": epsilon,
                "store_level_epsilon": service_report.central_epsilon,
                "bytes_up": bytes_up, "bytes_down": bytes_down,
                "seconds": federation_seconds,
            }
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("report written to {}", path.display());
        let ledger = state_dir.join("privacy-ledger.jsonl");
        if ledger.exists() {
            // The aggregator's ledger outlives the run's temporary folder, for the auditor.
            let kept = path.with_extension("ledger.jsonl");
            std::fs::copy(&ledger, &kept)?;
            eprintln!("aggregator's privacy ledger copied to {}", kept.display());
        }
    }
    Ok(())
}
