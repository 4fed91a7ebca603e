//! The fused model's speed on the GPU (burn's wgpu backend) against the CPU (flex), in one run
//! on the same data, model shape and batches: training next-item predictions per second and
//! recommendations (top 10 over the catalog) per second, each device after its own warm-up
//! (wgpu compiles and autotunes its kernels on first use). Prints a table and writes it into
//! BENCHMARKS.md.
//!
//!   cargo bench --bench device_speed                        # the built-in synthetic data
//!   cargo bench --bench device_speed -- --data movielens:../shared/data/ml-100k
//!   cargo bench --bench device_speed -- --steps 2 --shoppers 64 --no-write   # a short check
//!
//! Without a GPU, wgpu finds Mesa's software Vulkan (lavapipe) if it is installed, ~100× slower
//! than flex: the table then measures the code path, not a GPU, and says which adapter ran.
//! Where wgpu finds no adapter at all it says so and measures flex alone.

#[path = "../bench/benchmarks_md.rs"]
mod benchmarks_md;
#[path = "../bench/timed_training.rs"]
mod timed_training;

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, DeviceKind};
use fedfuse_data::source::DataSource;
use fedfuse_data::split::{Split, SplitConfig};
use fedfuse_model::catalog::ItemFeatures;
use fedfuse_model::fit::{ModelShape, TITLE_LEN};
use fedfuse_model::recommend::Recommender;
use fedfuse_model::window::{SplitMix, Window, windows};
use timed_training::timed_training;

const BATCH: usize = 32;
const WARM_UP: usize = 5;

/// Training predictions per second and recommendations per second on one device.
struct Speed {
    train: f64,
    recommend: f64,
}

fn measure(device: &Device, dataset: &fedfuse_data::Dataset, split: &Split, steps: usize, shoppers: usize) -> Speed {
    let features = ItemFeatures::from_catalog(&dataset.catalog);
    let vocabulary = features.vocabulary(TITLE_LEN);
    let shape = ModelShape::default();
    device.seed(7);
    let train_device = device.clone().autodiff();
    let catalog = features.to_tensors(vocabulary, &train_device);
    let sequences = split.train_sequences();
    let mut all: Vec<Window> = windows(&sequences, shape.max_len);
    // The same shuffle and candidate draws on every device: the same batches.
    let mut rng = SplitMix(7);
    rng.shuffle(&mut all);
    let (model, train) = timed_training(
        shape.config(&vocabulary).init(&train_device),
        &catalog,
        &sequences,
        &all,
        dataset.catalog.len(),
        shape.max_len,
        (BATCH, steps, WARM_UP),
        &mut rng,
        &train_device,
    );
    let plain = model.valid();
    let plain_catalog = features.to_tensors(vocabulary, device);
    let counts: Vec<u32> = split.train_item_counts().to_vec();
    let recommender = Recommender::new(&plain, &plain_catalog, &dataset.catalog, &counts);
    let histories: Vec<Vec<u32>> = (0..split.test.len().min(shoppers))
        .map(|c| split.test_input_sequence(c))
        .collect();
    let _ = recommender.top_k(&histories[..histories.len().min(256)], 10);
    let t = Instant::now();
    let mut served = 0;
    for chunk in histories.chunks(256) {
        served += recommender
            .top_k(chunk, 10)
            .expect("every history item is in the catalog")
            .len();
    }
    Speed {
        train,
        recommend: served as f64 / t.elapsed().as_secs_f64(),
    }
}

/// The first wgpu adapter of each kind, a real GPU first; the kind names it in the table.
fn wgpu_device() -> Option<(Device, &'static str)> {
    let kinds = [
        (DeviceKind::DiscreteGpu(0), "discrete GPU"),
        (DeviceKind::IntegratedGpu(0), "integrated GPU"),
        (DeviceKind::VirtualGpu(0), "virtual GPU"),
        (DeviceKind::Cpu, "software Vulkan on the CPU (lavapipe), not a GPU"),
    ];
    kinds
        .into_iter()
        .find_map(|(kind, name)| Device::wgpu_options().device_kind(kind).init().ok().map(|d| (d, name)))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let source: DataSource = value("--data")
        .unwrap_or_else(|| "synthetic".into())
        .parse()
        .unwrap_or_else(|e| panic!("--data: {e}"));
    let steps: usize = value("--steps").map_or(60, |v| v.parse().expect("--steps takes an integer"));
    let shoppers: usize = value("--shoppers").map_or(2048, |v| v.parse().expect("--shoppers takes an integer"));
    let dataset = source.load(&Default::default()).expect("the data loads");
    let split = Split::new(&dataset, &SplitConfig::default()).expect("split");
    eprintln!("flex…");
    let flex = measure(&Device::flex(), &dataset, &split, steps, shoppers);
    let gpu = wgpu_device().map(|(device, kind)| {
        eprintln!("wgpu ({kind})…");
        (measure(&device, &dataset, &split, steps, shoppers), kind)
    });
    let shape = ModelShape::default();
    let data = match &source {
        DataSource::Synthetic => "the built-in synthetic data".to_string(),
        other => format!("{other:?}"),
    };
    let mut table = format!(
        "## Model speed: wgpu against flex\n\n`cargo bench --bench device_speed` on {}: {data} ({} shoppers, {} items), the fused model (dim {}, max_len {}), batches of {BATCH} windows with 256 in-batch + 256 uniform candidates, {steps} timed steps after {WARM_UP} warm-up on each device, in one run; recommendations: top 10 over the catalog minus the history for up to {shoppers} test shoppers in batches of 256. wgpu: {}.\n\n| measurement | flex (CPU) | wgpu | wgpu / flex |\n|---|---|---|---|\n",
        benchmarks_md::cpu_name(),
        split.test.len(),
        dataset.catalog.len(),
        shape.dim,
        shape.max_len,
        gpu.as_ref().map_or("no adapter found, not measured", |(_, kind)| kind),
    );
    let cell = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.0}"));
    let ratio = |g: Option<f64>, f: f64| g.map_or("-".to_string(), |g| format!("{:.2}×", g / f));
    let (gt, gr) = (gpu.as_ref().map(|(s, _)| s.train), gpu.as_ref().map(|(s, _)| s.recommend));
    table.push_str(&format!(
        "| training, next-item predictions / s | {:.0} | {} | {} |\n",
        flex.train,
        cell(gt),
        ratio(gt, flex.train)
    ));
    table.push_str(&format!(
        "| recommendations (top 10) / s | {:.0} | {} | {} |\n",
        flex.recommend,
        cell(gr),
        ratio(gr, flex.recommend)
    ));
    println!("{table}");
    if !args.iter().any(|a| a == "--no-write") {
        benchmarks_md::write_section(std::path::Path::new(env!("CARGO_MANIFEST_DIR")), "device-speed", &table);
    }
}
