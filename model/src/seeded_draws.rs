//! Random draws that follow from one seed even when several trainers share a process.
//!
//! burn's backends draw every random tensor (dropout masks, initial weights) from a single
//! generator per process, which `Device::seed` resets. Two trainers running at once — the
//! quickstart's eleven store agents, or a store beside a platform that initialises a model —
//! interleave their draws in whatever order the scheduler picks, so the same seeds give a
//! different federation on every run. Holding [`SeededDraws`] for as long as a trainer draws
//! makes its draws a function of its own seed alone; the others wait, which on one machine
//! costs little, since burn already spreads each operation over the cores.

use std::sync::{Mutex, MutexGuard, PoisonError};

use burn::tensor::Device;

static DRAWS: Mutex<()> = Mutex::new(());

/// The process's random generator, seeded and held: no other holder draws until it drops.
#[must_use = "the draws are only yours while the guard lives"]
pub struct SeededDraws {
    _held: MutexGuard<'static, ()>,
}

impl SeededDraws {
    /// Waits for the generator, then seeds it through `device` (every backend's generator is
    /// reached by seeding a device of that backend).
    pub fn hold(device: &Device, seed: u64) -> Self {
        // A holder that panicked left nothing half-done behind: the next one reseeds.
        let held = DRAWS.lock().unwrap_or_else(PoisonError::into_inner);
        device.seed(seed);
        Self { _held: held }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tensor};

    fn draws(device: &Device, seed: u64) -> Vec<f32> {
        let _draws = SeededDraws::hold(device, seed);
        let mut out = Vec::new();
        for _ in 0..50 {
            let t = Tensor::<1>::random([64], Distribution::Uniform(0.0, 1.0), device);
            out.extend(t.into_data().try_to_vec::<f32>().unwrap());
            std::thread::yield_now();
        }
        out
    }

    /// Two threads drawing at once each get exactly what they get alone.
    #[test]
    fn concurrent_holders_each_draw_what_their_seed_gives_alone() {
        let device = Device::flex();
        let (alone_a, alone_b) = (draws(&device, 11), draws(&device, 12));
        assert_ne!(alone_a, alone_b);
        for _ in 0..4 {
            let (a, b) = std::thread::scope(|s| {
                let a = s.spawn(|| draws(&device, 11));
                let b = s.spawn(|| draws(&device, 12));
                (a.join().unwrap(), b.join().unwrap())
            });
            assert_eq!(a, alone_a);
            assert_eq!(b, alone_b);
        }
    }
}
