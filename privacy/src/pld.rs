//! Privacy-loss-distribution accounting: tighter ε than RDP for the same mechanism.
//!
//! A mechanism's privacy loss L = ln(P(x)/Q(x)), x ~ P, determines its whole (ε, δ) curve
//! through the hockey-stick divergence δ(ε) = E[(1 − e^{ε−L})₊]. We discretise L by
//! *connect-the-dots* (Doroshenko, Ghazi, Kamath, Kumar, Manurangsi 2022): atoms on a grid
//! whose δ equals the true δ at every grid point and interpolates it linearly in e^ε between
//! them. δ is convex in e^ε, so the interpolation lies above it: the discrete PLD is
//! pessimistic, and so is any composition of pessimistic PLDs. Composition is convolution,
//! done as one FFT power over a window chosen by Chernoff bounds; the mass outside the window
//! (at most `TAIL_MASS`) is moved to +∞, pessimistically. Both neighbouring relations (add and
//! remove one record) are tracked and the larger ε is reported, as `dp_accounting` does.

use std::f64::consts::SQRT_2;

use rustfft::FftPlanner;
use rustfft::num_complex::Complex64;

use crate::AccountingError;
use crate::event::{DpEvent, SampledGaussian};
use crate::special::{log_add, log_erfc, normal_cdf, normal_sf};

/// Grid spacing of privacy-loss values, as in `dp_accounting`.
pub const DEFAULT_INTERVAL: f64 = 1e-4;
/// Mass of the noise distribution's tails left off the grid before composition (e^{-50}).
const LOG_MASS_TRUNCATION: f64 = -50.0;
/// Mass a composition may leave outside its window; it goes to +∞.
const TAIL_MASS: f64 = 1e-15;
/// Largest privacy loss put on a grid. e^{±L} leaves f64 beyond ~709 and no ε that large
/// protects anyone, so a single step's losses above it go to +∞ (connect-the-dots' mass past
/// the last grid point) and losses below −MAX_LOSS are lifted to it: both pessimistic.
const MAX_LOSS: f64 = 600.0;
/// Largest FFT the accountant will run (2^25 points, 512 MiB of complex numbers). Beyond it
/// the grid is coarsened, which stays pessimistic.
const MAX_FFT: usize = 1 << 25;

/// A discrete privacy-loss distribution: `pmf[i]` is the mass at loss `(offset + i) · interval`.
#[derive(Debug, Clone)]
pub struct Pld {
    pub interval: f64,
    pub offset: i64,
    pub pmf: Vec<f64>,
    pub infinity_mass: f64,
}

/// Which neighbouring datasets the loss compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Neighbour {
    /// P has the record (a mixture, under Poisson sampling), Q does not.
    Remove,
    /// P lacks the record, Q has it.
    Add,
}

/// The exact δ(ε) of the Poisson-subsampled Gaussian (sensitivity 1, noise σ, rate q).
pub fn subsampled_gaussian_delta(sigma: f64, q: f64, relation: Neighbour, eps: f64) -> f64 {
    let s2 = sigma * sigma;
    let d = match relation {
        Neighbour::Remove => {
            // L(x) = ln(1 − q + q·e^{(2x−1)/(2σ²)}), increasing; L > ε ⇔ x > x_ε.
            let inner = eps.exp() - (1.0 - q);
            if inner <= 0.0 {
                return -eps.exp_m1();
            }
            let x = s2 * (inner / q).ln() + 0.5;
            (1.0 - q) * normal_sf(x / sigma) + q * normal_sf((x - 1.0) / sigma) - eps.exp() * normal_sf(x / sigma)
        }
        Neighbour::Add => {
            // L(x) = −ln(1 − q + q·e^{(2x−1)/(2σ²)}), decreasing; L > ε ⇔ x < x_ε.
            let inner = (-eps).exp() - (1.0 - q);
            if inner <= 0.0 {
                return 0.0;
            }
            let x = s2 * (inner / q).ln() + 0.5;
            normal_cdf(x / sigma) - eps.exp() * ((1.0 - q) * normal_cdf(x / sigma) + q * normal_cdf((x - 1.0) / sigma))
        }
    };
    d.clamp(0.0, 1.0)
}

/// z with P(Z < z) = e^{log_mass}, by bisection on the exact log tail.
fn normal_log_quantile(log_mass: f64) -> f64 {
    let (mut lo, mut hi) = (-60.0f64, 0.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        let log_tail = 0.5f64.ln() + log_erfc(-mid / SQRT_2);
        if log_tail < log_mass { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// The range of privacy losses worth a grid: the loss at the noise distribution's e^{-50}
/// quantiles on either side (beyond them, connect-the-dots puts the mass at the ends).
fn loss_bounds(sigma: f64, q: f64, relation: Neighbour) -> (f64, f64) {
    let z = normal_log_quantile(LOG_MASS_TRUNCATION).abs() * sigma;
    // ln(q·e^{(2x−1)/(2σ²)} + 1 − q) in log space: for σ below ~0.03 the exponent passes 709
    // and e^{…} would be +∞ (and, before, made the grid infinitely coarse and ε 0).
    let loss = |x: f64| {
        let l = log_add((2.0 * x - 1.0) / (2.0 * sigma * sigma) + q.ln(), (-q).ln_1p());
        match relation {
            Neighbour::Remove => l,
            Neighbour::Add => -l,
        }
    };
    let (a, b) = (loss(-z), loss(1.0 + z));
    (a.min(b).max(-MAX_LOSS), a.max(b).min(MAX_LOSS))
}

impl Pld {
    /// Connect-the-dots from an exact δ(ε) on the grid `interval · [lo, hi]`.
    pub fn connect_the_dots(delta: impl Fn(f64) -> f64, lo: i64, hi: i64, interval: f64) -> Self {
        let hi = hi.max(lo + 1);
        let eps: Vec<f64> = (lo..=hi).map(|i| i as f64 * interval).collect();
        let deltas: Vec<f64> = eps.iter().map(|&e| delta(e)).collect();
        let n = eps.len();
        // On [ε_{i−1}, ε_i] the discrete δ is A − B_i·e^ε with B_i the slope in e^ε; the atom
        // at ε_i carries e^{ε_i}·(B_i − B_{i+1}), and the mass at +∞ is δ(ε_n).
        let slope = |i: usize| (deltas[i - 1] - deltas[i]).max(0.0) / (eps[i].exp() - eps[i - 1].exp());
        let mut pmf = vec![0.0; n];
        for i in 1..n {
            let next = if i + 1 < n { slope(i + 1) } else { 0.0 };
            pmf[i] = (eps[i].exp() * (slope(i) - next)).max(0.0);
        }
        let infinity_mass = deltas[n - 1];
        pmf[0] = (1.0 - infinity_mass - pmf[1..].iter().sum::<f64>()).max(0.0);
        Self {
            interval,
            offset: lo,
            pmf,
            infinity_mass,
        }
    }

    /// The PLD of one step of the Poisson-subsampled Gaussian; `steps` Gaussian steps at q = 1
    /// compose exactly into one Gaussian of noise σ/√steps.
    pub fn subsampled_gaussian(sigma: f64, q: f64, relation: Neighbour, interval: f64) -> Self {
        let (lo, hi) = loss_bounds(sigma, q, relation);
        Self::connect_the_dots(
            |e| subsampled_gaussian_delta(sigma, q, relation, e),
            (lo / interval).floor() as i64,
            (hi / interval).ceil() as i64,
            interval,
        )
    }

    fn log_mgf(&self, lambda: f64) -> f64 {
        // ln Σ p_i e^{λ·k_i} over grid indices k_i, in log-sum-exp form.
        let terms = self.pmf.iter().enumerate().filter(|(_, p)| **p > 0.0);
        let max = terms
            .clone()
            .map(|(i, p)| p.ln() + lambda * (self.offset + i as i64) as f64)
            .fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = terms
            .map(|(i, p)| (p.ln() + lambda * (self.offset + i as i64) as f64 - max).exp())
            .sum();
        max + sum.ln()
    }

    /// Grid-index window holding all but `TAIL_MASS` of the `times`-fold composition, from
    /// Chernoff bounds over a range of exponents.
    fn composition_window(&self, times: u64) -> (i64, i64) {
        let t = times as f64;
        let lo_all = self.offset as f64 * t;
        let hi_all = (self.offset + self.pmf.len() as i64 - 1) as f64 * t;
        let log_tail = (TAIL_MASS / 2.0).ln();
        let (mut lo, mut hi) = (lo_all, hi_all);
        // Any exponent gives a valid bound; a coarse ladder of them is tight enough.
        for k in (-40..=20).step_by(3) {
            let lambda = 2f64.powf(f64::from(k) / 2.0);
            hi = hi.min((t * self.log_mgf(lambda) - log_tail) / lambda);
            lo = lo.max(-(t * self.log_mgf(-lambda) - log_tail) / lambda);
        }
        (lo.floor().max(lo_all) as i64, hi.ceil().min(hi_all) as i64)
    }

    /// The `times`-fold composition with itself.
    pub fn self_compose(&self, times: u64) -> Self {
        if times == 1 {
            return self.clone();
        }
        let (lo, hi) = self.composition_window(times);
        let width = (hi - lo + 1) as usize;
        let n = width.max(self.pmf.len()).next_power_of_two();
        let mut buf: Vec<Complex64> = (0..n)
            .map(|i| Complex64::new(self.pmf.get(i).copied().unwrap_or(0.0), 0.0))
            .collect();
        let mut planner = FftPlanner::new();
        planner.plan_fft_forward(n).process(&mut buf);
        let t = times as f64;
        for z in &mut buf {
            // z^T in polar form: exact in magnitude, no T-fold rounding.
            *z = Complex64::from_polar(z.norm().powf(t), z.arg() * t);
        }
        planner.plan_fft_inverse(n).process(&mut buf);
        // Circular index r holds composed index T·offset + r (mod n); place it in the window.
        let base = self.offset * times as i64;
        let mut pmf = vec![0.0; width];
        for (r, z) in buf.iter().enumerate() {
            let v = z.re / n as f64;
            if v <= 0.0 {
                continue;
            }
            let k = lo + (base + r as i64 - lo).rem_euclid(n as i64);
            if k <= hi {
                pmf[(k - lo) as usize] += v;
            }
        }
        let finite = 1.0 - self.infinity_mass;
        let infinity_mass = 1.0 - finite.powf(t);
        // Whatever of the finite mass the window lost goes to +∞.
        let kept: f64 = pmf.iter().sum();
        let lost = (finite.powf(t) - kept).max(0.0) + TAIL_MASS;
        Self {
            interval: self.interval,
            offset: lo,
            pmf,
            infinity_mass: (infinity_mass + lost).min(1.0),
        }
    }

    /// This PLD on a grid at least as coarse, every loss rounded up to the grid point at or
    /// above it: larger losses only raise δ(ε), so the result stays pessimistic. A finer
    /// `interval` than this PLD's returns it unchanged (refining would need the exact δ).
    pub fn coarsened(&self, interval: f64) -> Self {
        if interval.is_nan() || interval <= self.interval {
            return self.clone();
        }
        let ratio = self.interval / interval;
        let index = |k: i64| (k as f64 * ratio).ceil() as i64;
        let lo = index(self.offset);
        let hi = index(self.offset + self.pmf.len() as i64 - 1).max(lo);
        let mut pmf = vec![0.0; (hi - lo + 1) as usize];
        for (i, &mass) in self.pmf.iter().enumerate() {
            pmf[(index(self.offset + i as i64) - lo) as usize] += mass;
        }
        Self {
            interval,
            offset: lo,
            pmf,
            infinity_mass: self.infinity_mass,
        }
    }

    /// The composition of two PLDs, on the coarser of their grids: terms of one ledger may
    /// need different grids (a term whose losses span more than [`MAX_FFT`] fine points is
    /// coarsened on its own), and the finer one is coarsened to meet it.
    pub fn compose(&self, other: &Self) -> Self {
        let interval = self.interval.max(other.interval);
        let (a, b) = (self.coarsened(interval), other.coarsened(interval));
        a.compose_on_one_grid(&b)
    }

    fn compose_on_one_grid(&self, other: &Self) -> Self {
        debug_assert_eq!(self.interval, other.interval);
        let width = (self.pmf.len() + other.pmf.len()).saturating_sub(1).max(1);
        let n = width.next_power_of_two();
        let mut planner = FftPlanner::new();
        let fwd = planner.plan_fft_forward(n);
        let mut a: Vec<Complex64> = (0..n)
            .map(|i| Complex64::new(self.pmf.get(i).copied().unwrap_or(0.0), 0.0))
            .collect();
        let mut b: Vec<Complex64> = (0..n)
            .map(|i| Complex64::new(other.pmf.get(i).copied().unwrap_or(0.0), 0.0))
            .collect();
        fwd.process(&mut a);
        fwd.process(&mut b);
        for (x, y) in a.iter_mut().zip(&b) {
            *x *= y;
        }
        planner.plan_fft_inverse(n).process(&mut a);
        let pmf = a[..width].iter().map(|z| (z.re / n as f64).max(0.0)).collect();
        Self {
            interval: self.interval,
            offset: self.offset + other.offset,
            pmf,
            infinity_mass: 1.0 - (1.0 - self.infinity_mass) * (1.0 - other.infinity_mass),
        }
    }

    /// δ at `eps`: the mass at +∞ plus Σ p_i (1 − e^{ε − L_i}) over atoms above ε.
    pub fn delta_for_epsilon(&self, eps: f64) -> f64 {
        let mut d = self.infinity_mass;
        for (i, p) in self.pmf.iter().enumerate().rev() {
            let l = (self.offset + i as i64) as f64 * self.interval;
            if l <= eps {
                break;
            }
            d += p * -(eps - l).exp_m1();
        }
        d.min(1.0)
    }

    /// The smallest ε ≥ 0 with δ(ε) ≤ `delta`, solved exactly inside the segment where the
    /// piecewise δ(ε) = m∞ + S − e^ε·T (sums over atoms above ε) crosses `delta`.
    pub fn epsilon_for_delta(&self, delta: f64) -> f64 {
        if self.infinity_mass > delta {
            return f64::INFINITY;
        }
        let atoms: Vec<(f64, f64)> = self
            .pmf
            .iter()
            .enumerate()
            .filter(|(_, p)| **p > 0.0)
            .map(|(i, p)| ((self.offset + i as i64) as f64 * self.interval, *p))
            .collect();
        // T = Σ p·e^{−L} is kept as ln T: composed losses reach the hundreds, where e^{−L}
        // underflows.
        let (mut s, mut log_t) = (0.0f64, f64::NEG_INFINITY);
        for k in (0..atoms.len()).rev() {
            let (l, p) = atoms[k];
            s += p;
            log_t = log_add(log_t, p.ln() - l);
            // δ at the bottom of the segment [L_{k−1}, L_k), where atoms ≥ k are above ε.
            let at_bottom = match k {
                0 => self.infinity_mass + s,
                _ => self.infinity_mass + s - (atoms[k - 1].0 + log_t).exp(),
            };
            if at_bottom > delta {
                return ((self.infinity_mass + s - delta).ln() - log_t).max(0.0);
            }
        }
        0.0
    }
}

impl Pld {
    /// The lowest grid loss whose mass above (with +∞) reaches `delta`: an upper bound on ε.
    /// This is what `dp_accounting` returns once e^{−loss} underflows (losses above ~745),
    /// kept to explain the one place the two accountants part: ours solves the crossing in log
    /// space instead.
    pub fn grid_epsilon_for_delta(&self, delta: f64) -> f64 {
        let mut mass = self.infinity_mass;
        for (i, p) in self.pmf.iter().enumerate().rev() {
            mass += p;
            if mass >= delta {
                return ((self.offset + i as i64) as f64 * self.interval).max(0.0);
            }
        }
        0.0
    }
}

/// ε of the Gaussian mechanism with noise σ (sensitivity 1) at `delta`, exactly, by bisection
/// on δ(ε) = Φ(−ε/μ + μ/2) − e^ε·Φ(−ε/μ − μ/2), μ = 1/σ (Balle & Wang 2018), evaluated in log
/// space so that large ε (many composed steps) does not overflow.
pub fn gaussian_epsilon(sigma: f64, delta: f64) -> f64 {
    let mu = 1.0 / sigma;
    let log_cdf = |z: f64| 0.5f64.ln() + log_erfc(-z / SQRT_2);
    let delta_at = |eps: f64| normal_cdf(-eps / mu + mu / 2.0) - (eps + log_cdf(-eps / mu - mu / 2.0)).exp();
    if delta_at(0.0) <= delta {
        return 0.0;
    }
    let mut hi = 1.0;
    while delta_at(hi) > delta {
        hi *= 2.0;
    }
    let mut lo = 0.0;
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if delta_at(mid) > delta { lo = mid } else { hi = mid }
    }
    hi
}

/// Returns the ε of the event, `None` when it is not a single Gaussian block (q = 1).
fn single_gaussian(terms: &[SampledGaussian]) -> Option<f64> {
    match terms {
        [t] if t.sampling_probability == 1.0 && t.count > 0 => Some(t.noise_multiplier / (t.count as f64).sqrt()),
        _ => None,
    }
}

/// ε of `event` at `delta` by PLD, with the default grid (coarsened, pessimistically, only if
/// the composition would need an FFT over [`MAX_FFT`] points).
pub fn epsilon(event: &DpEvent, delta: f64) -> Result<f64, AccountingError> {
    epsilon_with_interval(event, delta, DEFAULT_INTERVAL)
}

pub fn epsilon_with_interval(event: &DpEvent, delta: f64, interval: f64) -> Result<f64, AccountingError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(AccountingError::InvalidParameter(format!("delta {delta} must be in (0, 1)")));
    }
    // Blocks with the same σ and q merge into one self-composition: a store's ledger repeats
    // the same round many times, and one FFT power beats a chain of convolutions.
    let mut terms: Vec<SampledGaussian> = Vec::new();
    for t in event.terms()? {
        match terms
            .iter_mut()
            .find(|m| m.noise_multiplier == t.noise_multiplier && m.sampling_probability == t.sampling_probability)
        {
            Some(m) => m.count += t.count,
            None => terms.push(t),
        }
    }
    // A full-batch Gaussian composes into one Gaussian: answer exactly, no grid.
    if let Some(sigma) = single_gaussian(&terms) {
        return Ok(gaussian_epsilon(sigma, delta));
    }
    let mut worst = 0.0f64;
    for relation in [Neighbour::Remove, Neighbour::Add] {
        let mut total: Option<Pld> = None;
        for &term in &terms {
            let pld = term_pld(term, relation, interval);
            total = Some(match total {
                None => pld,
                Some(t) => t.compose(&pld),
            });
        }
        let eps = total.map_or(0.0, |t| t.epsilon_for_delta(delta));
        worst = worst.max(eps);
    }
    Ok(worst)
}

fn term_pld(term: SampledGaussian, relation: Neighbour, interval: f64) -> Pld {
    let SampledGaussian {
        noise_multiplier: sigma,
        sampling_probability: q,
        count,
    } = term;
    if count == 0 || q == 0.0 {
        return Pld {
            interval,
            offset: 0,
            pmf: vec![1.0],
            infinity_mass: 0.0,
        };
    }
    // Grids are coarsened (pessimistically) until the single step fits in MAX_FFT points.
    let fitting = |sigma: f64, q: f64, mut interval: f64| {
        let (lo, hi) = loss_bounds(sigma, q, relation);
        while (hi - lo) / interval > MAX_FFT as f64 / 4.0 {
            interval *= 2.0;
        }
        interval
    };
    if q == 1.0 {
        // Exact: T Gaussian steps with noise σ are one Gaussian step with noise σ/√T.
        let sigma = sigma / (count as f64).sqrt();
        return Pld::subsampled_gaussian(sigma, 1.0, relation, fitting(sigma, 1.0, interval));
    }
    let mut interval = fitting(sigma, q, interval);
    loop {
        let one = Pld::subsampled_gaussian(sigma, q, relation, interval);
        let (lo, hi) = one.composition_window(count);
        if ((hi - lo + 1) as usize) <= MAX_FFT {
            return one.self_compose(count);
        }
        interval *= 2.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_delta_matches_the_closed_form() {
        // For q = 1, δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) with μ = 1/σ (Balle & Wang 2018).
        for (sigma, eps) in [(1.0, 0.5), (2.0, 0.1), (0.7, 3.0)] {
            let mu = 1.0 / sigma;
            let exact = normal_cdf(-eps / mu + mu / 2.0) - eps.exp() * normal_cdf(-eps / mu - mu / 2.0);
            for rel in [Neighbour::Remove, Neighbour::Add] {
                let ours = subsampled_gaussian_delta(sigma, 1.0, rel, eps);
                assert!((ours - exact).abs() < 1e-12, "{sigma} {eps} {rel:?}: {ours} vs {exact}");
            }
        }
    }

    #[test]
    fn exact_gaussian_epsilon_matches_the_discretised_pld() {
        for (sigma, delta) in [(1.0, 1e-5), (0.3, 1e-6), (3.0, 1e-3)] {
            let exact = gaussian_epsilon(sigma, delta);
            let grid = Pld::subsampled_gaussian(sigma, 1.0, Neighbour::Remove, 1e-4).epsilon_for_delta(delta);
            // The grid is pessimistic, by at most a grid step or so.
            assert!(
                grid >= exact - 1e-9 && grid - exact < 1e-3,
                "σ={sigma}: exact {exact}, grid {grid}"
            );
        }
    }

    #[test]
    fn connect_the_dots_is_exact_at_grid_points_and_pessimistic_between() {
        let (sigma, q) = (1.0, 0.1);
        let pld = Pld::subsampled_gaussian(sigma, q, Neighbour::Remove, 1e-2);
        let mass: f64 = pld.pmf.iter().sum::<f64>() + pld.infinity_mass;
        assert!((mass - 1.0).abs() < 1e-9, "mass {mass}");
        for eps in [0.0, 0.3, 1.0, 2.5] {
            let exact = subsampled_gaussian_delta(sigma, q, Neighbour::Remove, eps);
            let discrete = pld.delta_for_epsilon(eps);
            assert!(
                (discrete - exact).abs() <= 1e-9 + exact * 1e-6,
                "grid point {eps}: {discrete} vs {exact}"
            );
            let mid = eps + 0.005;
            let exact_mid = subsampled_gaussian_delta(sigma, q, Neighbour::Remove, mid);
            assert!(pld.delta_for_epsilon(mid) >= exact_mid - 1e-15, "not pessimistic at {mid}");
        }
    }

    #[test]
    fn epsilon_for_delta_inverts_delta_for_epsilon() {
        let pld = Pld::subsampled_gaussian(0.8, 0.05, Neighbour::Remove, 1e-3).self_compose(50);
        for delta in [1e-3, 1e-5, 1e-7] {
            let eps = pld.epsilon_for_delta(delta);
            assert!(
                (pld.delta_for_epsilon(eps) - delta).abs() <= delta * 1e-6,
                "δ={delta}: ε={eps}"
            );
        }
    }

    #[test]
    fn fft_self_composition_equals_repeated_composition() {
        let one = Pld::subsampled_gaussian(1.0, 0.2, Neighbour::Remove, 1e-2);
        let by_fft = one.self_compose(4);
        let two = one.compose(&one);
        let by_pairs = two.compose(&two);
        for delta in [1e-3, 1e-6] {
            let (a, b) = (by_fft.epsilon_for_delta(delta), by_pairs.epsilon_for_delta(delta));
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn coarsening_keeps_the_mass_and_only_raises_delta() {
        let fine = Pld::subsampled_gaussian(1.0, 0.2, Neighbour::Remove, 1e-2);
        let coarse = fine.coarsened(4e-2);
        assert_eq!(coarse.interval, 4e-2);
        let mass = |p: &Pld| p.pmf.iter().sum::<f64>() + p.infinity_mass;
        assert!((mass(&coarse) - mass(&fine)).abs() < 1e-12);
        for eps in [0.0, 0.1, 0.37, 1.0, 2.5] {
            let (f, c) = (fine.delta_for_epsilon(eps), coarse.delta_for_epsilon(eps));
            assert!(c >= f - 1e-15, "ε {eps}: coarse δ {c} below fine δ {f}");
        }
        // Rounding each loss up by less than one coarse step costs at most that step in ε.
        for delta in [1e-3, 1e-6] {
            let (f, c) = (fine.epsilon_for_delta(delta), coarse.epsilon_for_delta(delta));
            assert!(c >= f && c <= f + 4e-2, "δ {delta}: {c} vs {f}");
        }
        assert_eq!(fine.coarsened(1e-3).interval, 1e-2, "never refined");
    }

    #[test]
    fn terms_on_different_grids_compose_on_the_coarser_one() {
        // σ = 0.04 spans more losses than MAX_FFT points of the default grid hold, so its term
        // is coarsened while σ = 1 keeps the default grid: a ledger holding both (a resumed
        // run whose noise changed) used to stop the accountant with a grid mismatch.
        let delta = 1e-5;
        let gaussians = DpEvent::Composed {
            events: vec![DpEvent::dp_sgd(1.0, 1.0, 1), DpEvent::dp_sgd(0.04, 1.0, 1)],
        };
        let eps = epsilon(&gaussians, delta).expect("mixed grids compose");
        // Two Gaussians are one with 1/σ² = 1/1² + 1/0.04².
        let exact = gaussian_epsilon((1.0 + 1.0 / 0.0016f64).recip().sqrt(), delta);
        assert!(eps >= exact - 1e-9 && eps <= exact * 1.01, "{eps} vs exact {exact}");

        let mixed = DpEvent::Composed {
            events: vec![DpEvent::dp_sgd(1.0, 0.01, 1000), DpEvent::dp_sgd(0.04, 1.0, 1)],
        };
        let eps = epsilon(&mixed, delta).expect("mixed grids compose");
        let alone = epsilon(&DpEvent::dp_sgd(0.04, 1.0, 1), delta).unwrap();
        let rdp = crate::rdp::epsilon(&mixed, delta).unwrap();
        assert!(
            eps > alone && eps <= rdp,
            "PLD {eps}, the coarse term alone {alone}, RDP {rdp}"
        );
    }

    #[test]
    fn almost_no_noise_is_almost_no_privacy_not_zero_epsilon() {
        // σ = 0.01: the step's losses reach the thousands, past where e^L is finite; the grid
        // once became infinitely coarse here and reported ε = 0.
        for event in [
            DpEvent::dp_sgd(0.01, 0.5, 10),
            DpEvent::Composed {
                events: vec![DpEvent::dp_sgd(1.0, 1.0, 1), DpEvent::dp_sgd(0.01, 1.0, 1)],
            },
        ] {
            let eps = epsilon(&event, 1e-5).unwrap();
            assert!(eps > 100.0, "{event:?}: ε {eps}");
        }
    }
}
