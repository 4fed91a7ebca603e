//! Client-level DP-FedAvg: each store's whole update is one record.
//!
//! A store's update Δ is clipped to L2 norm C; the sum of clipped updates gets Gaussian noise
//! of standard deviation z·C, either once by the aggregator (central) or by each store on its
//! own update (local: n independent noises of std z·C sum to std z·C·√n, n times the variance
//! central DP needs, the price of not trusting the aggregator). The sum is divided by a fixed
//! denominator, the expected number of stores, never the realised one: a realised count would
//! let one store's presence change the divisor, breaking the sensitivity bound.
//!
//! Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy 2021) tracks a target quantile γ of
//! update norms: each store reports whether its norm was within C, the aggregator noises that
//! count, and C follows C ← C·exp(−η(b̄ − γ)). The count is a second release, so the update's
//! noise multiplier is raised to keep the round's total at z (their Theorem 1):
//! z_Δ = (z^−2 − (2 z_b)^−2)^−1/2.

use crate::noise::{GridGaussian, NoiseError};

/// What clipping did to one update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clipped {
    /// Norm before clipping.
    pub norm: f64,
    /// Whether the norm was within the clip bound (the bit adaptive clipping counts).
    pub within: bool,
}

/// Scales `update` in place so its L2 norm is at most `clip`. A non-finite update is an
/// error: it could not be bounded, and bounding is the whole point.
pub fn clip_update(update: &mut [f32], clip: f64) -> Result<Clipped, NoiseError> {
    if !(clip.is_finite() && clip > 0.0) {
        return Err(NoiseError::BadScale(clip));
    }
    let mut sq = 0f64;
    for (index, v) in update.iter().enumerate() {
        if !v.is_finite() {
            return Err(NoiseError::BadValue { index, value: *v });
        }
        sq += f64::from(*v) * f64::from(*v);
    }
    let norm = sq.sqrt();
    if norm > clip {
        // Scale by a factor rounded down so the f32 result stays within the bound.
        let scale = (clip / norm) * (1.0 - 1e-6);
        for v in update.iter_mut() {
            *v = (f64::from(*v) * scale) as f32;
        }
    }
    Ok(Clipped {
        norm,
        within: norm <= clip,
    })
}

/// Runs `release` (clip, charge, noise) on the coordinates of `update` that `trained` marks,
/// as one vector, and writes the result back: when a round trains part of the model the rest
/// is not released, so neither the clip, the noise nor the grid's rounding charge may cover it.
/// `trained` has one flag per coordinate.
pub fn on_trained<T, E>(update: &mut [f32], trained: &[bool], release: impl FnOnce(&mut [f32]) -> Result<T, E>) -> Result<T, E> {
    debug_assert_eq!(update.len(), trained.len());
    let mut values: Vec<f32> = update.iter().zip(trained).filter(|(_, t)| **t).map(|(v, _)| *v).collect();
    let out = release(&mut values)?;
    for ((v, _), released) in update.iter_mut().zip(trained).filter(|(_, t)| **t).zip(values) {
        *v = released;
    }
    Ok(out)
}

/// The update noise multiplier that, with a count released at `count_noise_multiplier`,
/// keeps the round's privacy at `total_noise_multiplier`. `None` if the count alone would
/// already spend the whole budget (z_b ≤ z/2).
pub fn update_noise_multiplier(total_noise_multiplier: f64, count_noise_multiplier: f64) -> Option<f64> {
    let rest = total_noise_multiplier.powi(-2) - (2.0 * count_noise_multiplier).powi(-2);
    (rest > 0.0).then(|| rest.powf(-0.5))
}

/// Adds the DP-FedAvg noise to a sum of `dims` clipped coordinates and divides by the expected
/// number of stores. `noise_multiplier` is z for central noise; for local noise each store calls
/// this on its own clipped update with `expected_stores = 1` before sending.
pub fn noise_and_average(
    sum: &mut [f32],
    clip: f64,
    noise_multiplier: f64,
    expected_stores: f64,
    grid_exponent: i32,
) -> Result<(), NoiseError> {
    let noise = GridGaussian::new(noise_multiplier * clip, grid_exponent)?;
    noise.add(sum)?;
    let inv = (1.0 / expected_stores) as f32;
    sum.iter_mut().for_each(|v| *v *= inv);
    Ok(())
}

/// The aggregator's adaptive clip bound.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveClip {
    pub clip: f64,
    /// γ: the share of updates that should fall within the bound.
    pub target_quantile: f64,
    /// η: geometric step size.
    pub learning_rate: f64,
    /// z_b: noise multiplier of the within-bound count (sensitivity 1).
    pub count_noise_multiplier: f64,
}

impl AdaptiveClip {
    /// Folds one round's within-bound bits into the bound. `expected_stores` is the fixed
    /// denominator of the round; the count is noised with the exact sampler.
    pub fn update(&mut self, within: &[bool], expected_stores: f64) -> Result<f64, NoiseError> {
        let count = within.iter().filter(|b| **b).count() as f32;
        let mut noisy = [count];
        GridGaussian::new(self.count_noise_multiplier, -10)?.add(&mut noisy)?;
        let fraction = f64::from(noisy[0]) / expected_stores;
        self.clip *= (-self.learning_rate * (fraction - self.target_quantile)).exp();
        Ok(self.clip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_trained_releases_the_marked_coordinates_only() {
        let mut update = vec![1.0f32, 2.0, 3.0, 4.0];
        let seen = on_trained(&mut update, &[false, true, false, true], |v: &mut [f32]| {
            let seen = v.to_vec();
            v.iter_mut().for_each(|x| *x *= 10.0);
            Ok::<_, ()>(seen)
        })
        .unwrap();
        assert_eq!(seen, vec![2.0, 4.0]);
        assert_eq!(update, vec![1.0, 20.0, 3.0, 40.0]);
    }

    #[test]
    fn clipping_bounds_the_norm_and_leaves_small_updates_alone() {
        let mut big = vec![3.0f32, 4.0];
        let c = clip_update(&mut big, 1.0).unwrap();
        assert_eq!(
            c,
            Clipped {
                norm: 5.0,
                within: false
            }
        );
        let n = big.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt();
        assert!(n <= 1.0 && n > 0.999, "{n}");
        let mut small = vec![0.3f32, 0.4];
        assert!(clip_update(&mut small, 1.0).unwrap().within);
        assert_eq!(small, vec![0.3, 0.4]);
        assert!(clip_update(&mut [f32::NAN], 1.0).is_err());
        assert!(clip_update(&mut [1.0], 0.0).is_err());
    }

    #[test]
    fn the_count_release_raises_the_update_noise() {
        // Andrew et al.'s example: z = 1, z_b = 10 → z_Δ = (1 − 1/400)^−1/2 ≈ 1.00125.
        let z = update_noise_multiplier(1.0, 10.0).unwrap();
        assert!((z - (1.0f64 - 1.0 / 400.0).powf(-0.5)).abs() < 1e-12);
        assert!(z > 1.0);
        assert_eq!(update_noise_multiplier(1.0, 0.5), None);
    }

    #[test]
    fn adaptive_clipping_tracks_the_target_quantile() {
        // Update norms uniform on [0, 10): the median is 5.
        let norms: Vec<f64> = (0..100).map(|i| f64::from(i) / 10.0).collect();
        let mut ac = AdaptiveClip {
            clip: 0.5,
            target_quantile: 0.5,
            learning_rate: 0.2,
            count_noise_multiplier: 1.0,
        };
        for _ in 0..300 {
            let within: Vec<bool> = norms.iter().map(|n| *n <= ac.clip).collect();
            ac.update(&within, norms.len() as f64).unwrap();
        }
        assert!((ac.clip - 5.0).abs() < 0.5, "clip {}", ac.clip);
    }

    #[test]
    fn central_noise_has_std_z_c_over_the_denominator() {
        let mut sum = vec![0f32; 100_000];
        noise_and_average(&mut sum, 2.0, 1.5, 10.0, -20).unwrap();
        let var = sum.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / sum.len() as f64;
        // std = z·C / n = 1.5·2/10 = 0.3
        assert!((var.sqrt() - 0.3).abs() < 0.005, "std {}", var.sqrt());
    }
}
