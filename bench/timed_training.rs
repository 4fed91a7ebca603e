//! Shared by the speed benchmarks (included with `#[path]`): the timed training loop, so that
//! every table's "training predictions / s" measures the same work.

use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::Device;
use fedfuse_model::catalog::CatalogTensors;
use fedfuse_model::fused::FusedRecommender;
use fedfuse_model::train::{Objective, loss};
use fedfuse_model::window::{CandidateConfig, SplitMix, Window, batch};

/// Trains `model` on `steps + warm_up` batches of `batch_size` windows (sampled softmax,
/// AdamW 1e-3) and returns it with the next-item predictions per second of the timed steps,
/// batch building included. Each step reads its loss, which waits for the device, so an
/// asynchronous backend (wgpu) is timed to the step's end.
#[allow(clippy::too_many_arguments)]
pub fn timed_training(
    mut model: FusedRecommender,
    catalog: &CatalogTensors,
    sequences: &[Vec<u32>],
    windows: &[Window],
    n_items: usize,
    max_len: usize,
    (batch_size, steps, warm_up): (usize, usize, usize),
    rng: &mut SplitMix,
    device: &Device,
) -> (FusedRecommender, f64) {
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    let (mut predictions, mut seconds) = (0usize, 0f64);
    for (i, chunk) in windows.chunks(batch_size).take(steps + warm_up).enumerate() {
        let t = Instant::now();
        let b = batch(sequences, chunk, n_items, CandidateConfig::default(), max_len, rng, device);
        let l = loss(&model, &b, catalog, Objective::SampledSoftmax, 0.0);
        let grads = GradientsParams::from_grads(l.backward(), &model);
        model = optim.step(1e-3, model, grads);
        let _ = l.into_scalar::<f32>();
        if i >= warm_up {
            seconds += t.elapsed().as_secs_f64();
            predictions += b.predictions;
        }
    }
    (model, predictions as f64 / seconds)
}
