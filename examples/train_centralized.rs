//! Train the fused recommender on one machine and evaluate it under the project's protocol.
//!
//!   cargo run --release --example train_centralized -- --data movielens:../shared/data/ml-100k --report report.json
//!   cargo run --release --example train_centralized -- --data synthetic --epochs 3
//!
//! Prints a table (full ranking decides; sampled is for comparison with the literature) and
//! writes the numbers as JSON with --report.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fedfuse_data::source::DataSource;
use fedfuse_data::split::{Split, SplitConfig};
use fedfuse_model::catalog::ItemFeatures;
use fedfuse_model::device::{self, DeviceChoice};
use fedfuse_model::evaluate::{Holdout, evaluate};
use fedfuse_model::fused::{BRANCHES, FusedConfig};
use fedfuse_model::item_tower::ItemTowerConfig;
use fedfuse_model::sequence::SequenceEncoderConfig;
use fedfuse_model::train::{TrainConfig, train};
use serde_json::json;

/// Centralized training of the fused recommender (the reference every federated run is
/// compared with).
#[derive(Parser)]
struct Cli {
    /// `synthetic` (the built-in generator) or `movielens:PATH` (a MovieLens-100K folder).
    #[arg(long, default_value = "synthetic")]
    data: DataSource,
    /// Write the results as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// `auto` (GPU if wgpu finds one), `gpu` or `cpu`.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Train only these branches' fused score: `fused` (default) or one of cf, content, seq, mlp.
    #[arg(long, default_value = "fused")]
    branches: String,
    #[arg(long, default_value_t = 10)]
    epochs: usize,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    #[arg(long, default_value_t = 64)]
    dim: usize,
    #[arg(long, default_value_t = 50)]
    max_len: usize,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    let cli = Cli::parse();
    let started = Instant::now();
    let dataset = cli
        .data
        .load(&Default::default())
        .with_context(|| format!("loading {}", cli.data))?;
    eprintln!("{}", dataset.quality_report());
    let split = Split::new(
        &dataset,
        &SplitConfig {
            seed: cli.seed,
            ..Default::default()
        },
    )?;
    let features = ItemFeatures::from_catalog(&dataset.catalog);
    let vocabulary = features.vocabulary(8);
    let base = device::select(cli.device)?;
    let device_name = device::name(&base);
    base.seed(cli.seed);
    let train_device = base.clone().autodiff();
    let train_catalog = features.to_tensors(vocabulary, &train_device);
    let eval_catalog = features.to_tensors(vocabulary, &base);
    let config = FusedConfig::new(
        ItemTowerConfig::for_vocabulary(&vocabulary, cli.dim),
        SequenceEncoderConfig::new(cli.dim, cli.max_len),
    );
    let mut model = config.init(&train_device);
    model.only = match cli.branches.as_str() {
        "fused" => None,
        b => Some(
            BRANCHES
                .iter()
                .position(|n| *n == b)
                .with_context(|| format!("unknown branch {b:?}"))?,
        ),
    };
    let sequences = split.train_sequences();
    let train_config = TrainConfig {
        epochs: cli.epochs,
        batch_size: cli.batch_size,
        learning_rate: cli.lr,
        max_len: cli.max_len,
        seed: cli.seed,
        ..TrainConfig::default()
    };
    // Early stopping on validation HR@10 (full ranking), keeping the best model.
    let mut best: Option<(f64, fedfuse_model::fused::FusedRecommender)> = None;
    let mut since_best = 0;
    let train_started = Instant::now();
    let (_, epochs) = train(
        model,
        &train_catalog,
        &sequences,
        split.train_item_counts(),
        &train_config,
        |report, m| {
            let valid = burn::module::Module::valid(m);
            let e = evaluate(&valid, &eval_catalog, &split, Holdout::Validation, cli.max_len, 128, 10);
            let hr = e.full.overall.mean.hit_rate;
            eprintln!(
                "epoch {:>2}  loss {:.4}  {:.0} examples/s  val HR@10 {:.4}  NDCG@10 {:.4}",
                report.epoch + 1,
                report.mean_loss,
                report.examples as f64 / report.seconds,
                hr,
                e.full.overall.mean.ndcg
            );
            if best.as_ref().is_none_or(|(b, _)| hr > *b) {
                best = Some((hr, valid));
                since_best = 0;
            } else {
                since_best += 1;
            }
            since_best < 3
        },
    );
    let train_seconds = train_started.elapsed().as_secs_f64();
    let examples_seen: usize = epochs.iter().map(|e| e.examples).sum();
    let (_, model) = best.context("no epoch ran")?;
    let e = evaluate(&model, &eval_catalog, &split, Holdout::Test, cli.max_len, 128, 10);
    let m = |r: &fedfuse_data::metrics::MetricsReport| json!({"hr10": r.overall.mean.hit_rate, "ndcg10": r.overall.mean.ndcg, "cases": r.overall.cases});
    let report = json!({
        "data": cli.data.to_string(),
        "branches": cli.branches,
        "hr10_full": e.full.overall.mean.hit_rate,
        "ndcg10_full": e.full.overall.mean.ndcg,
        "hr10_sampled": e.sampled.overall.mean.hit_rate,
        "ndcg10_sampled": e.sampled.overall.mean.ndcg,
        "distinct_timestamps_full": m(&fedfuse_data::metrics::MetricsReport { overall: e.full.distinct_timestamps, ..e.full.clone() }),
        "per_branch": e.per_branch_full.iter().map(|(n, r)| (n.clone(), m(r))).collect::<serde_json::Map<_, _>>(),
        "per_store": e.full.by_store.iter().map(|(s, r)| (dataset.stores.get(*s as usize).cloned().unwrap_or_else(|| s.to_string()), json!({"hr10": r.mean.hit_rate, "ndcg10": r.mean.ndcg, "cases": r.cases}))).collect::<serde_json::Map<_, _>>(),
        "cold_start": {"items": {"hr10": e.full.cold_items.mean.hit_rate, "cases": e.full.cold_items.cases}, "short_history": {"hr10": e.full.short_history.mean.hit_rate, "cases": e.full.short_history.cases}},
        "fusion_weights": model.fusion_weights(),
        "train_examples_per_sec": examples_seen as f64 / train_seconds,
        "epochs": epochs.len(),
        "device": device_name,
        "seconds": started.elapsed().as_secs_f64(),
    });
    println!("\n{:<28} {:>8} {:>8}", "test (best val epoch)", "HR@10", "NDCG@10");
    println!(
        "{:<28} {:>8.4} {:>8.4}",
        "fused, full ranking", e.full.overall.mean.hit_rate, e.full.overall.mean.ndcg
    );
    println!(
        "{:<28} {:>8.4} {:>8.4}",
        "fused, 99 sampled", e.sampled.overall.mean.hit_rate, e.sampled.overall.mean.ndcg
    );
    println!(
        "{:<28} {:>8.4} {:>8.4}",
        "distinct-timestamp slice", e.full.distinct_timestamps.mean.hit_rate, e.full.distinct_timestamps.mean.ndcg
    );
    for (name, r) in &e.per_branch_full {
        println!(
            "{:<28} {:>8.4} {:>8.4}",
            format!("branch {name}, full"),
            r.overall.mean.hit_rate,
            r.overall.mean.ndcg
        );
    }
    if let Some(path) = cli.report {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

/// Warnings (such as the fallback to the CPU) go to stderr; `RUST_LOG` raises the level.
fn tracing_subscriber_init() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
}
