//! What user-level DP costs in quality: the fused model trained centralized on MovieLens-100K
//! with DP-SGD (one shopper = one privacy unit) at ε ∈ {1, 2, 4, 8}, δ = 1e-4, beside the same
//! model trained without DP, by full ranking and against 99 sampled negatives. The DP runs
//! train a fixed number of steps (validation is private data, so it does not pick the model);
//! ε is what the PLD accountant charges for the noise actually used (RDP beside it).
//! Prints a table and writes it into BENCHMARKS.md.
//!
//!   cargo bench --bench dp_utility
//!   cargo bench --bench dp_utility -- --epsilons 8 --dim 32 --lr 5e-3 --batch 256 --epochs 40
//!
//! Skips (and says so) when the MovieLens folder is absent.

#[path = "../bench/benchmarks_md.rs"]
mod benchmarks_md;

use std::path::PathBuf;
use std::time::Instant;

use fedfuse_data::evaluate::Evaluation;
use fedfuse_data::source::DataSource;
use fedfuse_data::split::{Split, SplitConfig};
use fedfuse_model::fit::{DpPlan, Experiment, Grouping, ModelShape, Selection, run_dp_experiment, run_experiment};
use fedfuse_model::fused::Scoring;
use fedfuse_model::train::TrainConfig;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a.iter().any(|x| x == "--list") {
        return;
    }
    let value = |flag: &str| a.iter().position(|x| x == flag).and_then(|i| a.get(i + 1)).cloned();
    let num = |flag: &str, default: f64| value(flag).map_or(default, |v| v.parse().expect("a number"));
    let data = value("--data").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-100k"),
        PathBuf::from,
    );
    if !data.join("u.data").exists() {
        eprintln!("skipping the DP utility benchmark: no MovieLens-100K at {}", data.display());
        return;
    }
    let epsilons: Vec<f64> = value("--epsilons")
        .unwrap_or_else(|| "1,2,4,8".into())
        .split(',')
        .map(|e| e.parse().expect("ε values"))
        .collect();
    let shape = ModelShape {
        dim: num("--dim", 32.0) as usize,
        head: num("--head", 8.0) as usize,
        ..ModelShape::default()
    };
    let (lr, batch, epochs, clip, delta) = (
        num("--lr", 5e-3),
        num("--batch", 256.0),
        num("--epochs", 40.0),
        num("--clip", 1.0),
        num("--delta", 1e-4),
    );
    let started = Instant::now();
    let dataset = DataSource::MovieLens(data)
        .load(&Default::default())
        .expect("MovieLens loads");
    let split = Split::new(&dataset, &SplitConfig::default()).expect("split");
    let experiment = Experiment {
        dataset: &dataset,
        split: &split,
        device: burn::tensor::Device::flex(),
        shape,
        train: TrainConfig {
            epochs: 200,
            batch_size: 32,
            warmup_steps: 100,
            max_len: shape.max_len,
            ..TrainConfig::default()
        },
        patience: 10,
        selection: Selection::BestValidated,
        scoring: Scoring::Fused,
        grouping: Grouping::Pooled,
    };
    let m = |e: &Evaluation| {
        [
            e.full.overall.mean.hit_rate,
            e.full.overall.mean.ndcg,
            e.sampled.overall.mean.hit_rate,
            e.sampled.overall.mean.ndcg,
        ]
    };
    let mut rows: Vec<(String, [f64; 4], String)> = Vec::new();
    eprintln!("non-private reference…");
    let plain = run_experiment(&experiment, 1, |_, _| {}).expect("the benchmark's config trains");
    rows.push((
        "no DP".into(),
        m(&plain.test),
        format!("early stopping on validation (best epoch {:?})", plain.best_epochs),
    ));
    for &epsilon in &epsilons {
        eprintln!("ε = {epsilon}…");
        let plan = DpPlan {
            target_epsilon: epsilon,
            delta,
            expected_batch: batch,
            epochs,
            clip_norm: clip,
            learning_rate: lr,
            negatives: 256,
        };
        let (outcome, spends) = run_dp_experiment(&experiment, &plan, 1, |_, _, _| {}).expect("a DP run");
        let s = spends[0];
        rows.push((
            format!("ε = {epsilon}"),
            m(&outcome.test),
            format!(
                "σ {:.3}, q {:.3}, {} steps; charged ε {:.3} (PLD) / {:.3} (RDP); {:.0}% of shoppers clipped",
                s.noise_multiplier,
                s.sampling_rate,
                s.steps,
                s.epsilon_pld,
                s.epsilon_rdp,
                100.0 * s.clipped_fraction
            ),
        ));
    }
    let mut table = format!(
        "## Utility under user-level DP on MovieLens-100K\n\n`cargo bench --bench dp_utility` ({} s). The fused model (dim {}, MLP head {}, max_len {}), centralized, test by full ranking and against 99 sampled negatives. DP-SGD: Poisson-sampled shoppers (expected {batch}), one window each, per-shopper clip {clip}, exact discrete Gaussian noise on every coordinate, AdamW lr {lr}, {epochs} passes over the shoppers, δ = {delta}, σ from the PLD accountant for the target ε.\n\n| privacy | HR@10 full | NDCG@10 full | HR@10 sampled | NDCG@10 sampled | how |\n|---|---|---|---|---|---|\n",
        started.elapsed().as_secs(),
        shape.dim,
        shape.head,
        shape.max_len
    );
    for (name, v, note) in &rows {
        table.push_str(&format!(
            "| {name} | {:.4} | {:.4} | {:.4} | {:.4} | {note} |\n",
            v[0], v[1], v[2], v[3]
        ));
    }
    println!("{table}");
    if !a.iter().any(|x| x == "--no-write") {
        benchmarks_md::write_section(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), "dp-utility", &table);
    }
}
