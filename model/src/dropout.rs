//! Dropout whose masks follow from the training thread's own seed.
//!
//! burn's `Dropout` draws its masks from the backend's single, process-wide generator. Two
//! trainers running at once in one process — the quickstart's eleven store agents — interleave
//! their draws in whatever order the scheduler picks, so the same seeds give a different
//! federation on every run, and serialising the trainers to share that generator in turn
//! costs the quickstart half its speed on two cores. Here every thread has its own generator
//! instead: a trainer seeds it with [`seed_dropout_on_this_thread`] before it trains (a local
//! training runs on one thread from start to end), and the masks are drawn on the host and
//! uploaded, which for masks the size of a batch of activations is noise beside the matmuls.

use std::cell::RefCell;

use burn::config::Config;
use burn::module::{Content, DisplaySettings, Flag, Module, ModuleDisplay, Param};
use burn::tensor::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

thread_local! {
    static MASKS: RefCell<ChaCha8Rng> = RefCell::new(ChaCha8Rng::seed_from_u64(0));
}

/// Restarts this thread's dropout masks from `seed`: what this thread trains from now on
/// depends on the seed, not on what other threads draw.
pub fn seed_dropout_on_this_thread(seed: u64) {
    MASKS.with(|m| *m.borrow_mut() = ChaCha8Rng::seed_from_u64(seed));
}

#[derive(Config, Debug)]
pub struct SeededDropoutConfig {
    /// The probability of zeroing an element during training.
    pub prob: f64,
}

impl SeededDropoutConfig {
    /// The probability is clamped into [0, 0.99]: a configuration error should not turn into
    /// a panic deep inside a training step.
    pub fn init(&self) -> SeededDropout {
        let prob = if self.prob.is_finite() {
            self.prob.clamp(0.0, 0.99)
        } else {
            0.0
        };
        SeededDropout {
            prob,
            training: Param::from_bool(true),
        }
    }
}

/// Zeroes each element with probability `prob` during training and scales the rest by
/// `1 / (1 - prob)`, as burn's `Dropout` does; the identity when evaluating.
#[derive(Module, Debug)]
#[module(custom_display)]
pub struct SeededDropout {
    pub prob: f64,
    /// Cleared by `valid()` and by freezing, as burn's own dropout flag is.
    training: Param<Flag>,
}

impl SeededDropout {
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D> {
        if !self.training.is_enabled() || !input.device().is_autodiff() || self.prob == 0.0 {
            return input;
        }
        let keep = 1.0 - self.prob;
        let shape = input.shape();
        let n = shape.num_elements();
        let scale = (1.0 / keep) as f32;
        let mask: Vec<f32> = MASKS.with(|m| {
            let mut rng = m.borrow_mut();
            (0..n).map(|_| if rng.random::<f64>() < keep { scale } else { 0.0 }).collect()
        });
        let mask = Tensor::<D>::from_data(TensorData::new(mask, shape), &input.device());
        input * mask
    }
}

impl ModuleDisplay for SeededDropout {
    fn custom_settings(&self) -> Option<DisplaySettings> {
        DisplaySettings::new().with_new_line_after_attribute(false).optional()
    }

    fn custom_content(&self, content: Content) -> Option<Content> {
        content.add("prob", &self.prob).optional()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn masked(seed: u64) -> Vec<f32> {
        let device = Device::flex().autodiff();
        let dropout = SeededDropoutConfig::new(0.25).init();
        seed_dropout_on_this_thread(seed);
        let mut out = Vec::new();
        for _ in 0..20 {
            let x = Tensor::<2>::ones([16, 32], &device);
            out.extend(dropout.forward(x).into_data().try_to_vec::<f32>().unwrap());
            std::thread::yield_now();
        }
        out
    }

    #[test]
    fn masks_drop_the_configured_share_and_keep_the_expectation() {
        let values = masked(3);
        let dropped = values.iter().filter(|v| **v == 0.0).count() as f64 / values.len() as f64;
        assert!((dropped - 0.25).abs() < 0.02, "dropped {dropped}");
        let mean = values.iter().map(|v| f64::from(*v)).sum::<f64>() / values.len() as f64;
        assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
        assert!(values.iter().all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
    }

    #[test]
    fn evaluation_is_the_identity() {
        let dropout = SeededDropoutConfig::new(0.5).init();
        let x = Tensor::<2>::ones([4, 4], &Device::flex());
        assert_eq!(dropout.forward(x).into_data().try_to_vec::<f32>().unwrap(), vec![1.0; 16]);
        let train = Device::flex().autodiff();
        let valid = dropout.valid();
        let x = Tensor::<2>::ones([4, 4], &train);
        assert_eq!(valid.forward(x).into_data().try_to_vec::<f32>().unwrap(), vec![1.0; 16]);
    }

    /// Threads drawing at once each get exactly what their seed gives alone.
    #[test]
    fn concurrent_threads_each_draw_what_their_seed_gives_alone() {
        let (alone_a, alone_b) = (masked(11), masked(12));
        assert!(alone_a != alone_b);
        for _ in 0..4 {
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| masked(11));
                let b = s.spawn(|| masked(12));
                (a.join().unwrap(), b.join().unwrap())
            });
            assert!(a == alone_a && b == alone_b);
        }
    }
}
