//! Exact discrete Gaussian noise, fast.
//!
//! Floating-point Gaussian samplers leak their input through the low bits of the output
//! (Mironov 2012; Jin et al. 2021), so every value a store releases is noised on a fixed grid
//! of granularity 2^k instead: the value is rounded to the grid and an exact sample of the
//! discrete Gaussian N_Z(0, σ²) in grid units is added. opendp's `make_gaussian` does exactly
//! this with arbitrary-precision rationals, at 10⁴–10⁵ samples per second; this module runs
//! the same algorithm of Canonne, Kamath and Steinke (2020) — discrete Laplace proposals
//! (their Alg. 2) accepted with probability exp(−(|y| − σ²/t)²/(2σ²)) by exact Bernoulli(exp(−γ))
//! trials (their Alg. 1) — in 64-bit integer arithmetic (see [`DiscreteGaussian`]), fed by ChaCha20 seeded from the OS,
//! and in parallel over chunks. Every probability is an exact rational; no float is consulted.
//!
//! Two conservative choices: σ in grid units is rounded *up* to an integer (more noise than
//! asked, never less), and the rounding of the input to the grid is charged to the L2
//! sensitivity as √d·2^k, as opendp does. A product of integers that would overflow (it takes
//! |y| beyond 2^63 grid units, an event of probability below e^(−2^30)) rejects the proposal
//! rather than panic.

use rand::{RngCore, SeedableRng, TryRngCore};
use rand_chacha::ChaCha20Rng;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NoiseError {
    #[error("noise scale {0} must be finite and positive")]
    BadScale(f64),
    #[error("grid exponent {k}: σ/2^k = {grid_sigma} must lie in [1, 2^32)")]
    BadGrid { k: i32, grid_sigma: f64 },
    #[error("{values} values but {noise} presampled noise draws")]
    BadPresampled { values: usize, noise: usize },
    #[error("value {value} at index {index} is not finite or too large for the grid")]
    BadValue { index: usize, value: f32 },
    #[error("the operating system's random source failed: {0}")]
    Entropy(String),
}

/// Uniform integer in [0, bound) from 64 random bits, without bias (Lemire 2019).
#[inline]
fn below_u64(rng: &mut impl RngCore, bound: u64) -> u64 {
    let mut m = u128::from(rng.next_u64()) * u128::from(bound);
    if (m as u64) < bound {
        let threshold = bound.wrapping_neg() % bound;
        while (m as u64) < threshold {
            m = u128::from(rng.next_u64()) * u128::from(bound);
        }
    }
    (m >> 64) as u64
}

/// Uniform integer in [0, bound) from 32 random bits: most Bernoulli trials here have small
/// denominators, and ChaCha20 output is the sampler's main cost.
#[inline]
fn below_u32(rng: &mut impl RngCore, bound: u32) -> u32 {
    let mut m = u64::from(rng.next_u32()) * u64::from(bound);
    if (m as u32) < bound {
        let threshold = bound.wrapping_neg() % bound;
        while (m as u32) < threshold {
            m = u64::from(rng.next_u32()) * u64::from(bound);
        }
    }
    (m >> 32) as u32
}

/// Uniform integer in [0, bound): 32-, 64- or 128-bit path by the size of the bound.
#[inline]
fn below_u128(rng: &mut impl RngCore, bound: u128) -> u128 {
    if let Ok(b) = u32::try_from(bound) {
        return u128::from(below_u32(rng, b));
    }
    if let Ok(b) = u64::try_from(bound) {
        return u128::from(below_u64(rng, b));
    }
    let mask = u128::MAX >> (bound - 1).leading_zeros();
    loop {
        let x = ((u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())) & mask;
        if x < bound {
            return x;
        }
    }
}

/// Bernoulli(num/den), exactly.
#[inline]
fn bernoulli(rng: &mut impl RngCore, num: u128, den: u128) -> bool {
    below_u128(rng, den) < num
}

/// Bernoulli(exp(−num/den)) for num ≤ den (CKS20 Alg. 1): count k while Bernoulli(γ/k)
/// succeeds; exp(−γ) is the probability that the count stops at an odd k.
#[inline]
fn bernoulli_exp_le1(rng: &mut impl RngCore, num: u128, den: u128) -> bool {
    // With γ = 1 the first trial, Bernoulli(1), is certain: skip its draw.
    let mut k: u128 = if num == den { 2 } else { 1 };
    loop {
        let Some(den_k) = den.checked_mul(k) else { return k % 2 == 1 };
        if bernoulli(rng, num, den_k) {
            k += 1;
        } else {
            return k % 2 == 1;
        }
    }
}

/// Bernoulli(exp(−num/den)) for any γ ≥ 0: ⌊γ⌋ Bernoulli(exp(−1)) trials, then the remainder.
#[inline]
fn bernoulli_exp(rng: &mut impl RngCore, mut num: u128, den: u128) -> bool {
    while num > den {
        if !bernoulli_exp_le1(rng, 1, 1) {
            return false;
        }
        num -= den;
    }
    bernoulli_exp_le1(rng, num, den)
}

/// The discrete Laplace with integer scale t ≥ 1: P(y) ∝ exp(−|y|/t).
#[inline]
fn discrete_laplace(rng: &mut impl RngCore, t: u64) -> i64 {
    loop {
        let positive = rng.next_u32() & 1 == 1;
        // Geometric with rate 1/t (opendp's sample_geometric_exp_fast with x = 1/t).
        let mut u = below_u128(rng, u128::from(t)) as u64;
        while !bernoulli_exp_le1(rng, u128::from(u), u128::from(t)) {
            u = below_u128(rng, u128::from(t)) as u64;
        }
        let mut v: u64 = 0;
        while bernoulli_exp_le1(rng, 1, 1) {
            v += 1;
        }
        let Some(magnitude) = v
            .checked_mul(t)
            .and_then(|x| x.checked_add(u))
            .and_then(|x| i64::try_from(x).ok())
        else {
            continue;
        };
        if positive || magnitude != 0 {
            return if positive { magnitude } else { -magnitude };
        }
    }
}

/// The discrete Gaussian N_Z(0, σ²) with integer σ (CKS20 Alg. 3).
///
/// The discrete Laplace proposal has scale t = σ rather than CKS's ⌊σ⌋ + 1: any t > 0 gives an
/// exact sampler (the acceptance probability exp(−(|y| − σ²/t)²/(2σ²)) is the density ratio up
/// to a constant), and t = σ makes σ²/t an integer, which keeps every Bernoulli denominator
/// below 2^64 for σ ≤ 2^31, so each trial costs one 64-bit draw. The efficiency loss against
/// t = σ + 1 is negligible for the σ of thousands to millions of grid units used here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscreteGaussian {
    sigma: u64,
}

impl DiscreteGaussian {
    pub fn new(sigma: u64) -> Self {
        Self { sigma: sigma.max(1) }
    }

    pub fn sigma(&self) -> u64 {
        self.sigma
    }

    #[inline]
    pub fn sample(&self, rng: &mut impl RngCore) -> i64 {
        let sigma = u128::from(self.sigma);
        let den = 2 * sigma * sigma;
        loop {
            let y = discrete_laplace(rng, self.sigma);
            // Accept with probability exp(−(|y| − σ)² / (2σ²)).
            let diff = u128::from(y.unsigned_abs()).abs_diff(sigma);
            let Some(num) = diff.checked_mul(diff) else { continue };
            if bernoulli_exp(rng, num, den) {
                return y;
            }
        }
    }
}

/// Gaussian noise on the grid 2^k, as released values get it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridGaussian {
    /// Grid exponent: values live on multiples of 2^k (k = −20 by default).
    pub k: i32,
    /// The standard deviation asked for, in value units.
    pub sigma: f64,
    grid: DiscreteGaussian,
}

/// How much rounding `dims` coordinates to the grid 2^k raises an L2 sensitivity: multiply a
/// noise multiplier by this before drawing, and the multiplier charged over the rounded
/// sensitivity is still the one asked for.
pub fn grid_inflation(l2_sensitivity: f64, dims: usize, k: i32) -> f64 {
    (l2_sensitivity + (dims as f64).sqrt() * 2f64.powi(k)) / l2_sensitivity
}

/// A grid fine enough that rounding costs little sensitivity, coarse enough for 64-bit sums.
pub const DEFAULT_GRID_EXPONENT: i32 = -20;

impl GridGaussian {
    pub fn new(sigma: f64, k: i32) -> Result<Self, NoiseError> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(NoiseError::BadScale(sigma));
        }
        let grid_sigma = sigma * 2f64.powi(-k);
        if !(1.0..4_294_967_296.0).contains(&grid_sigma) {
            return Err(NoiseError::BadGrid { k, grid_sigma });
        }
        Ok(Self {
            k,
            sigma,
            grid: DiscreteGaussian::new(grid_sigma.ceil() as u64),
        })
    }

    /// The L2 sensitivity after rounding `dims` coordinates to the grid: each coordinate moves
    /// by at most half a grid step, so two rounded vectors are at most √d·2^k further apart.
    pub fn effective_sensitivity(&self, l2_sensitivity: f64, dims: usize) -> f64 {
        l2_sensitivity * grid_inflation(l2_sensitivity, dims, self.k)
    }

    /// The noise multiplier to charge: the σ asked for over the effective sensitivity.
    pub fn noise_multiplier(&self, l2_sensitivity: f64, dims: usize) -> f64 {
        self.sigma / self.effective_sensitivity(l2_sensitivity, dims)
    }

    /// zCDP ρ of one release (Bun & Steinke 2016): (Δ_eff/σ)²/2.
    pub fn rho(&self, l2_sensitivity: f64, dims: usize) -> f64 {
        let m = self.noise_multiplier(l2_sensitivity, dims);
        0.5 / (m * m)
    }

    /// Rounds each value to the grid and adds exact discrete Gaussian noise, using `rng`.
    pub fn add_with(&self, values: &mut [f32], rng: &mut impl RngCore) -> Result<(), NoiseError> {
        let scale = 2f64.powi(-self.k);
        let step = 2f64.powi(self.k);
        for (index, v) in values.iter_mut().enumerate() {
            let x = (f64::from(*v) * scale).round();
            if !x.is_finite() || x.abs() >= 2f64.powi(62) {
                return Err(NoiseError::BadValue { index, value: *v });
            }
            let noisy = x as i64 + self.grid.sample(rng);
            *v = (noisy as f64 * step) as f32;
        }
        Ok(())
    }

    /// Rounds each value to the grid and adds `noise`, exact discrete Gaussian samples in grid
    /// units drawn for this call alone (by [`NoisePrefetch`]); lengths must match.
    pub fn add_presampled(&self, values: &mut [f32], noise: &[i64]) -> Result<(), NoiseError> {
        if values.len() != noise.len() {
            return Err(NoiseError::BadPresampled {
                values: values.len(),
                noise: noise.len(),
            });
        }
        let scale = 2f64.powi(-self.k);
        let step = 2f64.powi(self.k);
        for (index, (v, n)) in values.iter_mut().zip(noise).enumerate() {
            let x = (f64::from(*v) * scale).round();
            if !x.is_finite() || x.abs() >= 2f64.powi(62) {
                return Err(NoiseError::BadValue { index, value: *v });
            }
            *v = ((x as i64 + n) as f64 * step) as f32;
        }
        Ok(())
    }

    /// Noises `values` in place in parallel chunks, each with its own ChaCha20 seeded from
    /// the operating system. Fails (rather than falling back to anything weaker) if the OS
    /// cannot provide entropy.
    pub fn add(&self, values: &mut [f32]) -> Result<(), NoiseError> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let chunk = values.len().div_ceil(threads).max(1 << 14);
        let mut seeds = Vec::new();
        for _ in 0..values.len().div_ceil(chunk) {
            let mut seed = [0u8; 32];
            rand::rngs::OsRng
                .try_fill_bytes(&mut seed)
                .map_err(|e| NoiseError::Entropy(e.to_string()))?;
            seeds.push(seed);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = values
                .chunks_mut(chunk)
                .zip(seeds)
                .enumerate()
                .map(|(i, (part, seed))| {
                    s.spawn(move || {
                        let mut rng = ChaCha20Rng::from_seed(seed);
                        self.add_with(part, &mut rng).map_err(|e| match e {
                            NoiseError::BadValue { index, value } => NoiseError::BadValue {
                                index: index + i * chunk,
                                value,
                            },
                            other => other,
                        })
                    })
                })
                .collect();
            handles.into_iter().try_for_each(|h| h.join().expect("noise worker panicked"))
        })
    }
}

/// Noise drawn ahead on a thread of its own while the caller computes what it will noise.
///
/// The noise never depends on the data, so a DP-SGD step's noise can be drawn while its
/// gradients are computed, taking the draw off the step's critical path. Each vector of `len`
/// samples comes from a ChaCha20 freshly seeded from the operating system and is handed out
/// once; at most two wait in memory. [`take`](Self::take) never blocks: when the next vector
/// is not ready yet the caller noises directly with [`GridGaussian::add`], so prefetching can
/// only save time. Dropping it ends the thread after its current draw.
pub struct NoisePrefetch {
    noise: GridGaussian,
    len: usize,
    ready: std::sync::mpsc::Receiver<Vec<i64>>,
}

impl NoisePrefetch {
    pub fn spawn(noise: GridGaussian, len: usize) -> Self {
        let (tx, ready) = std::sync::mpsc::sync_channel(1);
        let grid = noise.grid;
        std::thread::Builder::new()
            .name("noise-prefetch".into())
            .spawn(move || {
                loop {
                    let mut seed = [0u8; 32];
                    // No entropy, no prefetched noise: `take` then returns None and the caller's
                    // direct path reports the error.
                    if rand::rngs::OsRng.try_fill_bytes(&mut seed).is_err() {
                        return;
                    }
                    let mut rng = ChaCha20Rng::from_seed(seed);
                    let draw: Vec<i64> = (0..len).map(|_| grid.sample(&mut rng)).collect();
                    if tx.send(draw).is_err() {
                        return;
                    }
                }
            })
            .ok();
        Self { noise, len, ready }
    }

    pub fn noise(&self) -> &GridGaussian {
        &self.noise
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next prefetched vector, if it is ready.
    pub fn take(&self) -> Option<Vec<i64>> {
        self.ready.try_recv().ok()
    }

    /// Waits for the next vector (for tests and callers with nothing else to do).
    pub fn wait(&self) -> Option<Vec<i64>> {
        self.ready.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded(seed: u64) -> ChaCha20Rng {
        ChaCha20Rng::seed_from_u64(seed)
    }

    /// The exact pmf of N_Z(0, σ²) on [−m, m].
    fn pmf(sigma: f64, m: i64) -> Vec<f64> {
        let w: Vec<f64> = (-10 * m..=10 * m)
            .map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp())
            .collect();
        let z: f64 = w.iter().sum();
        (-m..=m)
            .map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp() / z)
            .collect()
    }

    #[test]
    fn uniform_draws_are_uniform_on_every_path() {
        let mut rng = seeded(5);
        for bound in [3u128, 1000, (1 << 40) + 7, (1u128 << 80) + 3] {
            let n = 30_000;
            let mut low_third = 0;
            for _ in 0..n {
                let x = below_u128(&mut rng, bound);
                assert!(x < bound);
                low_third += usize::from(x < bound / 3);
            }
            let share = low_third as f64 / n as f64;
            assert!(
                (share - (bound / 3) as f64 / bound as f64).abs() < 0.015,
                "bound {bound}: {share}"
            );
        }
    }

    #[test]
    fn samples_follow_the_exact_discrete_gaussian() {
        // Chi-square goodness of fit on [−12, 12] for σ = 3 (tails pooled), 200k samples.
        let g = DiscreteGaussian::new(3);
        let mut rng = seeded(7);
        let n = 200_000;
        let m = 12i64;
        let mut counts = vec![0u64; (2 * m + 3) as usize];
        for _ in 0..n {
            let y = g.sample(&mut rng);
            let bin = if y < -m {
                0
            } else if y > m {
                (2 * m + 2) as usize
            } else {
                (y + m + 1) as usize
            };
            counts[bin] += 1;
        }
        let p = pmf(3.0, m);
        let tail = (1.0 - p.iter().sum::<f64>()) / 2.0;
        let expected: Vec<f64> = std::iter::once(tail)
            .chain(p.iter().copied())
            .chain(std::iter::once(tail))
            .map(|q| q * n as f64)
            .collect();
        let chi2: f64 = counts
            .iter()
            .zip(&expected)
            .filter(|(_, e)| **e >= 5.0)
            .map(|(c, e)| (*c as f64 - e).powi(2) / e)
            .sum();
        // 24 degrees of freedom or so: the 99.9% quantile is 51.2.
        assert!(chi2 < 51.2, "chi2 {chi2}");
    }

    #[test]
    fn large_sigma_has_the_right_variance_and_no_bias() {
        let g = DiscreteGaussian::new(1 << 20);
        let mut rng = seeded(11);
        let n = 100_000;
        let (mut sum, mut sq) = (0f64, 0f64);
        for _ in 0..n {
            let y = g.sample(&mut rng) as f64;
            sum += y;
            sq += y * y;
        }
        let s = (1u64 << 20) as f64;
        let mean = sum / n as f64;
        let var = sq / n as f64 - mean * mean;
        // Standard errors: mean σ/√n ≈ 0.0032σ; variance σ²·√(2/n) ≈ 0.0045σ².
        assert!(mean.abs() < 5.0 * s / (n as f64).sqrt(), "mean {mean}");
        assert!((var / (s * s) - 1.0).abs() < 0.025, "var ratio {}", var / (s * s));
    }

    #[test]
    fn grid_noise_rounds_up_sigma_and_charges_rounding() {
        let g = GridGaussian::new(1.0000001, -20).unwrap();
        assert_eq!(g.grid.sigma(), (1u64 << 20) + 1);
        assert!(g.effective_sensitivity(1.0, 1_000_000) > 1.0);
        assert!((g.effective_sensitivity(1.0, 1_000_000) - (1.0 + 1000.0 / 1_048_576.0)).abs() < 1e-12);
        assert!(GridGaussian::new(1e-9, -20).is_err());
        assert!(GridGaussian::new(f64::NAN, -20).is_err());
        let mut v = vec![0.5f32, f32::INFINITY];
        assert!(matches!(
            g.add_with(&mut v, &mut seeded(1)),
            Err(NoiseError::BadValue { index: 1, .. })
        ));
    }

    #[test]
    fn parallel_noising_changes_every_value_by_about_sigma() {
        let g = GridGaussian::new(0.5, -16).unwrap();
        let mut v = vec![1.0f32; 200_000];
        g.add(&mut v).unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
        let var = v.iter().map(|x| (f64::from(*x) - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() / 0.5 - 1.0).abs() < 0.02, "sd {}", var.sqrt());
    }

    #[test]
    fn prefetched_noise_is_fresh_every_time_and_has_the_same_law() {
        let g = GridGaussian::new(0.5, -16).unwrap();
        let pre = NoisePrefetch::spawn(g, 200_000);
        let a = pre.wait().unwrap();
        let b = pre.wait().unwrap();
        assert_eq!((a.len(), b.len()), (200_000, 200_000));
        assert_ne!(a[..100], b[..100], "a vector was handed out twice");
        let mut v = vec![1.0f32; 200_000];
        g.add_presampled(&mut v, &a).unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
        let var = v.iter().map(|x| (f64::from(*x) - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() / 0.5 - 1.0).abs() < 0.02, "sd {}", var.sqrt());
        // Values stay on the grid.
        assert!(v.iter().all(|x| (f64::from(*x) * 65536.0).fract() == 0.0));
        assert!(matches!(
            g.add_presampled(&mut [0.0; 3], &a[..2]),
            Err(NoiseError::BadPresampled { values: 3, noise: 2 })
        ));
        assert!(matches!(
            g.add_presampled(&mut [f32::NAN], &a[..1]),
            Err(NoiseError::BadValue { index: 0, .. })
        ));
    }
}
