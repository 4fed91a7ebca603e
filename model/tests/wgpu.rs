//! The GPU code path (wgpu) against the CPU (flex) on the same tiny training.
//!
//! Without a GPU this runs on Mesa's software Vulkan (lavapipe), which CI installs; it is
//! ~100× slower than flex, so the training is tiny. Where no Vulkan adapter exists at all the
//! test says so and passes, unless `FEDFUSE_REQUIRE_GPU=1` (set by CI) makes that a failure.

use burn::module::Module;
use burn::tensor::Device;
use fedfuse_model::catalog::ItemFeatures;
use fedfuse_model::fused::FusedConfig;
use fedfuse_model::item_tower::ItemTowerConfig;
use fedfuse_model::params::{export, import};
use fedfuse_model::sequence::SequenceEncoderConfig;
use fedfuse_model::train::{TrainConfig, train};
use fedfuse_model::window::CandidateConfig;

#[test]
fn wgpu_training_matches_flex() {
    let gpu = match Device::wgpu_options().init() {
        Ok(d) => d,
        Err(e) => {
            assert!(
                std::env::var("FEDFUSE_REQUIRE_GPU").is_err(),
                "FEDFUSE_REQUIRE_GPU is set but wgpu found no adapter: {e}"
            );
            eprintln!("skipping: no wgpu adapter ({e}); install mesa-vulkan-drivers for lavapipe");
            return;
        }
    };
    let cpu = Device::flex();
    let f = ItemFeatures {
        category: vec![1, 1, 2, 2, 3, 3],
        brand: vec![1, 2, 1, 2, 1, 2],
        price_band: vec![1, 2, 3, 1, 2, 3],
        title: vec![vec![1, 2], vec![2], vec![3], vec![4, 1], vec![5], vec![]],
        genres: vec![vec![]; 6],
    };
    let vocabulary = f.vocabulary(2);
    let config = FusedConfig::new(
        ItemTowerConfig::for_vocabulary(&vocabulary, 8),
        SequenceEncoderConfig::new(8, 4).with_dropout(0.0).with_layers(1),
    )
    .with_head(4);
    cpu.seed(1);
    let start = export(&config.init(&cpu));
    let sequences: Vec<Vec<u32>> = (0..6u32).map(|s| (0..6).map(|k| (s + k) % 6).collect()).collect();
    let train_config = TrainConfig {
        epochs: 2,
        batch_size: 3,
        learning_rate: 1e-2,
        max_len: 4,
        candidates: CandidateConfig {
            in_batch: 2,
            uniform: 2,
            exclude_seen: false,
        },
        ..TrainConfig::default()
    };
    let run = |device: &Device| {
        let d = device.clone().autodiff();
        let model = import(config.init(&d), &start).unwrap();
        let (model, reports) =
            train(model, &f.to_tensors(vocabulary, &d), &sequences, &train_config, |_, _| true).expect("a valid config");
        (export(&model.valid()), reports.last().unwrap().mean_loss)
    };
    let (on_cpu, loss_cpu) = run(&cpu);
    let (on_gpu, loss_gpu) = run(&gpu);
    assert!(
        (loss_cpu - loss_gpu).abs() <= 1e-3 * loss_cpu.abs(),
        "loss {loss_cpu} (flex) vs {loss_gpu} (wgpu)"
    );
    let mut worst = 0f32;
    for (a, b) in on_cpu.iter().zip(&on_gpu) {
        assert_eq!(a.name, b.name);
        for (x, y) in a.values.iter().zip(&b.values) {
            worst = worst.max((x - y).abs());
        }
    }
    assert!(worst <= 1e-3, "largest parameter difference {worst}");
    // Training moved the parameters, so agreeing is not trivial.
    let moved = start
        .iter()
        .zip(&on_cpu)
        .flat_map(|(a, b)| a.values.iter().zip(&b.values).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    assert!(
        moved > 10.0 * worst.max(1e-6),
        "training moved parameters by {moved}, devices differ by {worst}"
    );
}
