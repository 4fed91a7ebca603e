//! Speed of the fused recommender on the CPU, side by side with the PyTorch reference of the
//! same architecture on the same data in the same run (`bench/torch_reference.sh`, which makes
//! its own venv): training next-item predictions per second, recommendations (top 10 over the
//! whole catalog) per second, and one user-level DP-SGD step against one non-private step of
//! the same model and batch, ours and Opacus'. Prints a table and writes it into BENCHMARKS.md.
//!
//!   cargo bench --bench model_speed                  # ../shared/data/ml-100k
//!   cargo bench --bench model_speed -- --no-torch    # fedfuse only
//!
//! Skips (and says so) when the MovieLens folder is absent. Run it on an otherwise idle
//! machine: both sides use the same two threads.

#[path = "../bench/benchmarks_md.rs"]
mod benchmarks_md;
#[path = "../bench/timed_training.rs"]
mod timed_training;

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Device;
use fedfuse_data::source::DataSource;
use fedfuse_data::split::{Split, SplitConfig};
use fedfuse_model::catalog::ItemFeatures;
use fedfuse_model::dpsgd::{DpSgdConfig, DpSgdStepper};
use fedfuse_model::fit::{ModelShape, TITLE_LEN};
use fedfuse_model::recommend::Recommender;
use fedfuse_model::train::{Objective, loss};
use fedfuse_model::window::{CandidateConfig, SplitMix, Window, batch, windows};
use timed_training::timed_training;

const BATCH: usize = 32;
const STEPS: usize = 60;
const DP_STEPS: usize = 5;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let data = args
        .iter()
        .position(|a| a == "--data")
        .and_then(|i| args.get(i + 1))
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ml-100k"),
            PathBuf::from,
        );
    if !data.join("u.data").exists() {
        eprintln!("skipping the speed benchmark: no MovieLens-100K at {}", data.display());
        return;
    }
    let with_torch = !args.iter().any(|a| a == "--no-torch");
    let dataset = DataSource::MovieLens(data.clone())
        .load(&Default::default())
        .expect("MovieLens loads");
    let split = Split::new(&dataset, &SplitConfig::default()).expect("split");
    let features = ItemFeatures::from_catalog(&dataset.catalog);
    let vocabulary = features.vocabulary(TITLE_LEN);
    let shape = ModelShape::default();
    let config = shape.config(&vocabulary);
    let device = Device::flex();
    device.seed(7);
    let train_device = device.clone().autodiff();
    let catalog = features.to_tensors(vocabulary, &train_device);
    let sequences = split.train_sequences();
    let n_items = dataset.catalog.len();
    let mut all: Vec<Window> = windows(&sequences, shape.max_len);
    let mut rng = SplitMix(7);
    rng.shuffle(&mut all);

    // Training throughput, batch building included.
    eprintln!("training…");
    let (model, train_rate) = timed_training(
        config.init(&train_device),
        &catalog,
        &sequences,
        &all,
        n_items,
        shape.max_len,
        (BATCH, STEPS, 5),
        &mut rng,
        &train_device,
    );

    // Recommendations: top 10 over the catalog minus the history, for every evaluated shopper.
    eprintln!("recommending…");
    let plain = model.valid();
    let plain_catalog = features.to_tensors(vocabulary, &device);
    let counts: Vec<u32> = split.train_item_counts().to_vec();
    let recommender = Recommender::new(&plain, &plain_catalog, &dataset.catalog, &counts);
    let histories: Vec<Vec<u32>> = (0..split.test.len()).map(|c| split.test_input_sequence(c)).collect();
    let t = Instant::now();
    let mut served = 0;
    for _ in 0..2 {
        for chunk in histories.chunks(256) {
            served += recommender
                .top_k(chunk, 10)
                .expect("every history item is in the catalog")
                .len();
        }
    }
    let rec_rate = served as f64 / t.elapsed().as_secs_f64();

    // One DP-SGD step against one plain step on the same 32 shoppers (one window each) and the
    // same 256 uniform candidates.
    eprintln!("DP-SGD step…");
    let mut last_window: Vec<Window> = Vec::new();
    for w in &all {
        if !last_window.iter().any(|x| x.shopper == w.shopper) {
            last_window.push(*w);
        }
        if last_window.len() == BATCH {
            break;
        }
    }
    let uniform = CandidateConfig {
        in_batch: 0,
        uniform: 256,
        exclude_seen: false,
    };
    let b = batch(
        &sequences,
        &last_window,
        n_items,
        uniform,
        shape.max_len,
        &mut rng,
        &train_device,
    );
    let mut model = config.init(&train_device);
    let mut optim = AdamWConfig::new().init();
    let mut plain_s = Vec::new();
    for i in 0..DP_STEPS + 2 {
        let t = Instant::now();
        let l = loss(&model, &b, &catalog, Objective::SampledSoftmax, 0.0);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(1e-3, model, grads);
        if i >= 2 {
            plain_s.push(t.elapsed().as_secs_f64());
        }
    }
    let dp_config = DpSgdConfig {
        noise_multiplier: 1.0,
        clip_norm: 1.0,
        max_len: shape.max_len,
        negatives: 256,
        ..DpSgdConfig::default()
    };
    let mut stepper = DpSgdStepper::new(&model, &dp_config, BATCH as f64, &train_device).expect("a DP stepper");
    let mut dp_s = Vec::new();
    for i in 0..DP_STEPS + 2 {
        let t = Instant::now();
        let (next, _) = stepper.step(model, &catalog, Some(&b)).expect("a DP step");
        model = next;
        if i >= 2 {
            dp_s.push(t.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (plain_step, dp_step) = (median(&mut plain_s), median(&mut dp_s));

    let torch = with_torch.then(|| {
        eprintln!("PyTorch reference (bench/torch_reference.sh; first run creates its venv)…");
        let out = std::env::temp_dir().join("fedfuse-torch-reference.json");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bench/torch_reference.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .args(["--data", &data.display().to_string(), "--dp", "--steps", &STEPS.to_string()])
            .args(["--batch-size", &BATCH.to_string(), "--dp-steps", &DP_STEPS.to_string()])
            .args(["--out", &out.display().to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("bash runs");
        assert!(status.success(), "the PyTorch reference failed");
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).expect("its JSON")).expect("JSON");
        v
    });
    let f = |v: &Option<serde_json::Value>, k: &str| v.as_ref().and_then(|v| v[k].as_f64());
    let cell = |x: Option<f64>, fmt: &dyn Fn(f64) -> String| x.map_or("-".to_string(), fmt);
    let ratio = |ours: f64, theirs: Option<f64>| theirs.map_or("-".into(), |t| format!("{:.2}×", ours / t));
    let torch_version = torch
        .as_ref()
        .and_then(|v| v["torch"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "not run".into());
    let opacus_version = torch
        .as_ref()
        .and_then(|v| v["opacus"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "not run".into());
    let mut table = format!(
        "## Model speed on the CPU against PyTorch\n\n`cargo bench --bench model_speed` on {}: MovieLens-100K, the fused model (dim {}, max_len {}, MLP head {}, {} parameters), batches of {BATCH} windows with 256 in-batch + 256 uniform candidates, {STEPS} timed steps after 5 warm-up; reference: `bench/torch_reference.sh` (torch {torch_version}, opacus {opacus_version}, same architecture, data and batches, 2 threads) in the same run. DP-SGD: one step on the same {BATCH} shoppers (one window each, 256 uniform candidates), clip 1, σ = 1; median of {DP_STEPS}; the DP step's noise for the next step is drawn on a thread of its own while the gradients compute (`NoisePrefetch`). {}\n\n| measurement | fedfuse (burn flex) | PyTorch | fedfuse / PyTorch |\n|---|---|---|---|\n",
        benchmarks_md::cpu_name(),
        shape.dim,
        shape.max_len,
        shape.head,
        plain.num_params(),
        malloc_note()
    );
    let tr = f(&torch, "train_examples_per_sec");
    table.push_str(&format!(
        "| training, next-item predictions / s | {train_rate:.0} | {} | {} |\n",
        cell(tr, &|x| format!("{x:.0}")),
        ratio(train_rate, tr)
    ));
    let rr = f(&torch, "recommendations_per_sec");
    table.push_str(&format!(
        "| recommendations (top 10 of 1,682) / s | {rec_rate:.0} | {} | {} |\n",
        cell(rr, &|x| format!("{x:.0}")),
        ratio(rec_rate, rr)
    ));
    let (tp, td) = (f(&torch, "plain_step_seconds"), f(&torch, "dp_step_seconds"));
    table.push_str(&format!(
        "| non-private step, s | {plain_step:.4} | {} | {} |\n",
        cell(tp, &|x| format!("{x:.4}")),
        ratio(plain_step, tp)
    ));
    table.push_str(&format!(
        "| DP-SGD step (per-shopper clip + noise), s | {dp_step:.4} | {} (Opacus) | {} |\n",
        cell(td, &|x| format!("{x:.4}")),
        ratio(dp_step, td)
    ));
    table.push_str(&format!(
        "| DP-SGD step / non-private step | {:.2}× | {} | |\n",
        dp_step / plain_step,
        cell(f(&torch, "dp_ratio"), &|x| format!("{x:.2}×"))
    ));
    println!("{table}");
    if !args.iter().any(|a| a == "--no-write") {
        benchmarks_md::write_section(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), "model-speed", &table);
    }
}

/// glibc's allocator settings change burn's CPU speed by up to 2× (it otherwise maps and unmaps
/// each step's large buffers afresh), so the table says which were in force, for both sides.
fn malloc_note() -> String {
    let vars = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_"];
    let set: Vec<String> = vars
        .iter()
        .filter_map(|v| std::env::var(v).ok().map(|x| format!("{v}={x}")))
        .collect();
    if set.is_empty() {
        "glibc malloc at its defaults.".into()
    } else {
        format!(
            "Run with glibc malloc tuned (`{}`, as `bench/federation.sh` sets), for both sides.",
            set.join(" ")
        )
    }
}
