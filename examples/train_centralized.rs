//! Train the fused recommender on one machine and evaluate it under the project's protocol.
//!
//!   cargo run --release --example train_centralized -- --data movielens:../shared/data/ml-100k --report report.json
//!   cargo run --release --example train_centralized -- --data synthetic --epochs 3
//!   cargo run --release --example train_centralized -- --data movielens:PATH --branches fused,cf,content,seq,mlp --seeds 1,2,3
//!   cargo run --release --example train_centralized -- --data movielens:PATH --mode local-only
//!
//! Prints a table (full ranking decides; sampled is for comparison with the literature) and
//! writes the numbers as JSON with --report.

// The report is one `json!` literal, deeper than serde_json's default macro recursion allows.
#![recursion_limit = "256"]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use fedfuse_data::evaluate::Evaluation;
use fedfuse_data::metrics::{MeanMetrics, MetricsReport};
use fedfuse_data::source::DataSource;
use fedfuse_data::split::{Split, SplitConfig};
use fedfuse_model::device::{self, DeviceChoice};
use fedfuse_model::fit::{
    DpPlan, DpSpend, Experiment, Grouping, ModelShape, Outcome, Selection, run_dp_experiment, run_experiment,
};
use fedfuse_model::fused::Scoring;
use fedfuse_model::sequence::EncoderKind;
use fedfuse_model::train::{Objective, TrainConfig};
use fedfuse_model::window::{CandidateConfig, SameTimeRuns};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One model on every shopper (the reference every federated run is compared with).
    Pooled,
    /// One model per store, trained and evaluated on that store's shoppers only.
    LocalOnly,
}

/// Centralized training of the fused recommender, with early stopping on validation HR@10
/// (full ranking) and a test report by full ranking and against 99 sampled negatives.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// `synthetic` (the built-in generator) or `movielens:PATH` (a MovieLens-100K folder).
    #[arg(long, default_value = "synthetic")]
    data: DataSource,
    /// Write the results as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// `auto` (a real GPU through wgpu when there is one, else the CPU with a warning; a software
    /// Vulkan adapter is passed over), `gpu` (wgpu on whatever adapter it finds) or `cpu` (flex).
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// What to train, comma-separated, each a separate model: `fused` (all branches, learned
    /// fusion), a single branch trained alone (cf, content, seq, mlp) or `sasrec` (the seq branch
    /// reading and scoring items by ID alone: the SASRec baseline, trained by the same loop).
    #[arg(long, default_value = "fused", value_delimiter = ',')]
    branches: Vec<String>,
    /// `pooled` or `local-only` (every store alone).
    #[arg(long, value_enum, default_value = "pooled")]
    mode: Mode,
    /// Training seeds, comma-separated; results are reported per seed and as the mean.
    #[arg(long, default_value = "7", value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Seed of the split's sampled negatives (fixed across training seeds).
    #[arg(long, default_value_t = 2024)]
    split_seed: u64,
    /// Upper bound on epochs; early stopping usually ends sooner.
    #[arg(long, default_value_t = 200)]
    epochs: usize,
    /// Epochs without a better validation HR@10 before stopping.
    #[arg(long, default_value_t = 10)]
    patience: usize,
    /// Test the mean of the weights after every epoch from this one (1-based) to the last,
    /// instead of the best validated epoch (stochastic weight averaging; set --patience to
    /// --epochs so that the fit reaches them). Unset: the best validated epoch.
    #[arg(long, value_name = "EPOCH")]
    average_from: Option<usize>,
    /// Windows (of up to --max-len predictions) per batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Linear warm-up steps before the cosine decay.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Items of history the model reads (and predictions per training window).
    #[arg(long, default_value_t = 50)]
    max_len: usize,
    /// Score only the last N positions of each training window, with the items before them as
    /// context, so that predictions train from as much history as they are served with (costs
    /// max-len / N forward passes per epoch). Unset: disjoint windows, every position scored.
    #[arg(long, value_name = "N")]
    window_stride: Option<usize>,
    /// Permute each run of same-second training events afresh every epoch (with
    /// --target-epsilon, every time DP-SGD draws the shopper). The split orders
    /// such events by item id (half of MovieLens-100K's consecutive pairs share a second), so
    /// a model trained in that order learns id order, which only helps on test targets
    /// decided by the same tie-break; shuffled, it learns the shoppers' taste alone.
    #[arg(long)]
    shuffle_same_time: bool,
    /// Hidden width of the MLP head.
    #[arg(long, default_value_t = 16)]
    head: usize,
    /// Sequence encoder: `attention` (SASRec) or `lstm`.
    #[arg(long, default_value = "attention")]
    encoder: EncoderKind,
    #[arg(long, default_value_t = 2)]
    layers: usize,
    #[arg(long, default_value_t = 0.2)]
    dropout: f64,
    /// `softmax` (sampled, log-q corrected) or `bpr`.
    #[arg(long, default_value = "softmax")]
    loss: Objective,
    /// Negatives drawn from the batch's own targets.
    #[arg(long, default_value_t = 256)]
    in_batch: usize,
    /// Negatives drawn uniformly from the catalog (with --in-batch covering the catalog, the
    /// exact softmax is used).
    #[arg(long, default_value_t = 256)]
    uniform: usize,
    /// Weight of each branch's own loss beside the fused loss (deep supervision).
    #[arg(long, default_value_t = 0.0)]
    branch_loss: f64,
    /// Leave the shopper's earlier items out of each prediction's softmax (the target
    /// excepted). Evaluation ranks the catalog minus the shopper's history, so training
    /// against those items only spends capacity on scores that are never used.
    #[arg(long)]
    exclude_seen: bool,
    /// No progress bar or per-epoch lines.
    #[arg(long)]
    quiet: bool,
    /// Train with user-level DP-SGD (one shopper = one privacy unit) to this ε for the whole
    /// run, instead of early-stopped non-private training.
    #[arg(long)]
    target_epsilon: Option<f64>,
    /// δ of the DP guarantee.
    #[arg(long, default_value_t = 1e-4)]
    delta: f64,
    /// DP-SGD: expected shoppers per step (the sampling rate is this over the shoppers).
    #[arg(long, default_value_t = 64.0)]
    dp_batch: f64,
    /// DP-SGD: passes over the shoppers.
    #[arg(long, default_value_t = 20.0)]
    dp_epochs: f64,
    /// DP-SGD: per-shopper clip norm.
    #[arg(long, default_value_t = 1.0)]
    clip_norm: f64,
}

fn mean_metrics(m: &MeanMetrics) -> Value {
    json!({"hr10": m.mean.hit_rate, "ndcg10": m.mean.ndcg, "recall10": m.mean.recall, "precision10": m.mean.precision, "f1_10": m.mean.f1, "mrr": m.mean.mrr, "cases": m.cases})
}

fn summary(e: &Evaluation) -> Value {
    json!({
        "hr10_full": e.full.overall.mean.hit_rate,
        "ndcg10_full": e.full.overall.mean.ndcg,
        "hr10_sampled": e.sampled.overall.mean.hit_rate,
        "ndcg10_sampled": e.sampled.overall.mean.ndcg,
    })
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let scorings = cli
        .branches
        .iter()
        .map(|b| b.parse::<Scoring>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let dataset = cli
        .data
        .load(&Default::default())
        .with_context(|| format!("loading {}", cli.data))?;
    eprintln!("{}", dataset.quality_report());
    let split = Split::new(
        &dataset,
        &SplitConfig {
            seed: cli.split_seed,
            ..Default::default()
        },
    )?;
    let base = device::select(cli.device)?;
    let device_name = device::name(&base);
    let shape = ModelShape {
        dim: cli.dim,
        max_len: cli.max_len,
        head: cli.head,
        encoder: cli.encoder,
        layers: cli.layers,
        heads: 2,
        dropout: cli.dropout,
    };
    let train = TrainConfig {
        epochs: cli.epochs,
        batch_size: cli.batch_size,
        learning_rate: cli.lr,
        warmup_steps: cli.warmup,
        weight_decay: cli.weight_decay,
        max_len: cli.max_len,
        window_stride: cli.window_stride,
        shuffle_same_time: cli.shuffle_same_time.then(|| {
            let runs = SameTimeRuns::from_split(&split);
            eprintln!("shuffled every epoch: {runs}");
            Arc::new(runs)
        }),
        candidates: CandidateConfig {
            in_batch: cli.in_batch,
            uniform: cli.uniform,
            exclude_seen: cli.exclude_seen,
        },
        objective: cli.loss,
        branch_loss_weight: cli.branch_loss,
        progress: !cli.quiet,
        ..TrainConfig::default()
    };
    let grouping = match cli.mode {
        Mode::Pooled => Grouping::Pooled,
        Mode::LocalOnly => Grouping::PerStore,
    };
    let plan = cli.target_epsilon.map(|e| DpPlan {
        target_epsilon: e,
        delta: cli.delta,
        expected_batch: cli.dp_batch,
        epochs: cli.dp_epochs,
        clip_norm: cli.clip_norm,
        learning_rate: cli.lr,
        negatives: cli.uniform,
    });
    let mut runs: Vec<(String, u64, Outcome)> = Vec::new();
    let mut spends: Vec<DpSpend> = Vec::new();
    for (branch, &scoring) in cli.branches.iter().zip(&scorings) {
        let experiment = Experiment {
            dataset: &dataset,
            split: &split,
            device: base.clone(),
            shape,
            train: train.clone(),
            patience: cli.patience,
            selection: cli.average_from.map_or(Selection::BestValidated, Selection::AverageFrom),
            scoring,
            grouping,
        };
        for &seed in &cli.seeds {
            let quiet = cli.quiet;
            let outcome = match &plan {
                None => run_experiment(&experiment, seed, |group, e| {
                    if !quiet {
                        eprintln!(
                            "{group} epoch {:>3}  loss {:.4}  {:.0} examples/s  val HR@10 {:.4}  NDCG@10 {:.4}  distinct-ts HR@10 {:.4} ({})",
                            e.train.epoch + 1,
                            e.train.mean_loss,
                            e.train.examples as f64 / e.train.seconds.max(1e-9),
                            e.validation_hr10,
                            e.validation_ndcg10,
                            e.validation_hr10_distinct_timestamps,
                            e.validation_cases_distinct_timestamps
                        );
                    }
                })?,
                Some(plan) => {
                    let (outcome, spent) = run_dp_experiment(&experiment, plan, seed, |group, steps, hr| {
                        if !quiet {
                            eprintln!("{group} DP-SGD step {steps:>5}  val HR@10 {hr:.4}");
                        }
                    })
                    .map_err(anyhow::Error::msg)?;
                    for s in &spent {
                        eprintln!(
                            "DP-SGD: σ {:.4}, q {:.4}, {} steps → ε {:.3} (RDP) / {:.3} (PLD) at δ {}; {:.0}% of shoppers clipped",
                            s.noise_multiplier,
                            s.sampling_rate,
                            s.steps,
                            s.epsilon_rdp,
                            s.epsilon_pld,
                            cli.delta,
                            100.0 * s.clipped_fraction
                        );
                    }
                    spends.extend(spent);
                    outcome
                }
            };
            for ((n, (hr, ndcg)), best) in outcome
                .averaged_epochs
                .iter()
                .zip(&outcome.served_validation)
                .zip(&outcome.best_epochs)
            {
                if *n > 0 {
                    eprintln!(
                        "tested: the mean of the last {n} epochs' weights, validation HR@10 {hr:.4} NDCG@10 {ndcg:.4} (best single epoch: {best})"
                    );
                }
            }
            print_table(&format!("{branch}, seed {seed}"), &outcome.test);
            runs.push((branch.clone(), seed, outcome));
        }
    }

    // Means over seeds, per trained configuration.
    let mean_of = |branch: &str, f: &dyn Fn(&Evaluation) -> f64| -> f64 {
        let v: Vec<f64> = runs
            .iter()
            .filter(|(b, _, _)| b == branch)
            .map(|(_, _, o)| f(&o.test))
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let first = &cli.branches[0];
    let (_, _, head) = runs.iter().find(|(b, _, _)| b == first).context("no run")?;
    let alone: serde_json::Map<String, Value> = cli
        .branches
        .iter()
        .map(|b| {
            (
                b.clone(),
                json!({
                    "hr10_full": mean_of(b, &|e| e.full.overall.mean.hit_rate),
                    "ndcg10_full": mean_of(b, &|e| e.full.overall.mean.ndcg),
                    "hr10_sampled": mean_of(b, &|e| e.sampled.overall.mean.hit_rate),
                    "ndcg10_sampled": mean_of(b, &|e| e.sampled.overall.mean.ndcg),
                    "hr10_full_distinct_timestamps": mean_of(b, &|e| e.full.distinct_timestamps.mean.hit_rate),
                    "ndcg10_full_distinct_timestamps": mean_of(b, &|e| e.full.distinct_timestamps.mean.ndcg),
                }),
            )
        })
        .collect();
    let e = &head.test;
    let store_name = |s: &u16| dataset.stores.get(*s as usize).cloned().unwrap_or_else(|| s.to_string());
    let report = json!({
        "data": cli.data.to_string(),
        "mode": match cli.mode { Mode::Pooled => "pooled", Mode::LocalOnly => "local-only" },
        "branches": first,
        "seeds": cli.seeds,
        "hr10_full": mean_of(first, &|e| e.full.overall.mean.hit_rate),
        "ndcg10_full": mean_of(first, &|e| e.full.overall.mean.ndcg),
        "hr10_sampled": mean_of(first, &|e| e.sampled.overall.mean.hit_rate),
        "ndcg10_sampled": mean_of(first, &|e| e.sampled.overall.mean.ndcg),
        "distinct_timestamps": {
            "full": mean_metrics(&e.full.distinct_timestamps),
            "sampled": mean_metrics(&e.sampled.distinct_timestamps),
        },
        "alone": alone,
        "per_seed": runs.iter().map(|(b, s, o)| json!({"branches": b, "seed": s, "test": summary(&o.test), "best_epochs": o.best_epochs, "averaged_epochs": o.averaged_epochs, "served_validation": o.served_validation, "fusion_weights": o.fusion_weights})).collect::<Vec<_>>(),
        "per_branch": e.components_full.iter().map(|(n, r)| (n.clone(), mean_metrics(&r.overall))).collect::<serde_json::Map<_, _>>(),
        "per_store": e.full.by_store.iter().map(|(s, m)| (store_name(s), mean_metrics(m))).collect::<serde_json::Map<_, _>>(),
        "worst_store": worst_store(&e.full).map(|(s, m)| json!({"store": store_name(&s), "hr10": m.mean.hit_rate, "cases": m.cases})),
        "cold_start": {
            "items_under_5_train_events": mean_metrics(&e.full.cold_items),
            "shoppers_with_at_most_2_history_items": mean_metrics(&e.full.short_history),
        },
        "full": mean_metrics(&e.full.overall),
        "sampled": mean_metrics(&e.sampled.overall),
        "dp": plan.map(|p| json!({
            "target_epsilon": p.target_epsilon, "delta": p.delta, "expected_batch": p.expected_batch,
            "epochs": p.epochs, "clip_norm": p.clip_norm,
            "runs": spends.iter().map(|s| json!({"noise_multiplier": s.noise_multiplier, "sampling_rate": s.sampling_rate,
                "steps": s.steps, "epsilon_rdp": s.epsilon_rdp, "epsilon_pld": s.epsilon_pld, "clipped_fraction": s.clipped_fraction})).collect::<Vec<_>>(),
        })),
        "train_examples_per_sec": head.examples_per_second,
        "train_seconds": head.train_seconds,
        "device": device_name,
        "seconds": started.elapsed().as_secs_f64(),
        "config": {
            "dim": cli.dim, "max_len": cli.max_len, "head": cli.head, "encoder": format!("{:?}", cli.encoder),
            "layers": cli.layers, "dropout": cli.dropout, "lr": cli.lr, "batch_size": cli.batch_size,
            "loss": format!("{:?}", cli.loss), "in_batch": cli.in_batch, "uniform": cli.uniform, "exclude_seen": cli.exclude_seen,
            "patience": cli.patience, "average_from": cli.average_from, "max_epochs": cli.epochs, "split_seed": cli.split_seed,
            "window_stride": cli.window_stride, "shuffle_same_time": cli.shuffle_same_time, "warmup": cli.warmup, "weight_decay": cli.weight_decay,
        },
    });
    if cli.branches.len() > 1 || cli.seeds.len() > 1 {
        println!("\nmean over seeds {:?}, test, full ranking (sampled):", cli.seeds);
        for b in &cli.branches {
            println!(
                "  {:<10} HR@10 {:.4} ({:.4})  NDCG@10 {:.4} ({:.4})",
                b,
                mean_of(b, &|e| e.full.overall.mean.hit_rate),
                mean_of(b, &|e| e.sampled.overall.mean.hit_rate),
                mean_of(b, &|e| e.full.overall.mean.ndcg),
                mean_of(b, &|e| e.sampled.overall.mean.ndcg),
            );
        }
    }
    if let Some(path) = cli.report {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

fn worst_store(r: &MetricsReport) -> Option<(u16, MeanMetrics)> {
    r.by_store
        .iter()
        .min_by(|a, b| a.1.mean.hit_rate.total_cmp(&b.1.mean.hit_rate))
        .map(|(s, m)| (*s, *m))
}

fn print_table(title: &str, e: &Evaluation) {
    println!("\n{:<34} {:>8} {:>8}", format!("test: {title}"), "HR@10", "NDCG@10");
    let row = |name: &str, m: &MeanMetrics| println!("{:<34} {:>8.4} {:>8.4}", name, m.mean.hit_rate, m.mean.ndcg);
    row("full ranking", &e.full.overall);
    row("99 sampled negatives", &e.sampled.overall);
    row("distinct-timestamp slice, full", &e.full.distinct_timestamps);
    row("cold items (<5 train events), full", &e.full.cold_items);
    for (name, r) in &e.components_full {
        row(&format!("branch {name} of this model, full"), &r.overall);
    }
}
