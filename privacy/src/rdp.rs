//! Rényi-DP accounting for the Poisson-subsampled Gaussian.
//!
//! The RDP of one step at order α is log A_α / (α − 1), with A_α from Mironov, Talwar and Zhang
//! (2019): a finite binomial sum for integer α, a two-sided series with erfc terms for
//! fractional α (summed in magnitude, an upper bound). RDP composes by addition, order by order; (ε, δ) comes from the conversion of
//! Canonne, Kamath and Steinke (2020, Prop. 12), minimised over the orders. The orders and the
//! stopping rules are those of Google's `dp_accounting`, so the two agree to rounding: where its
//! fractional series does not converge within 1000 terms the order is dropped (treated as
//! infinite), which can only make ε larger, never smaller.

use crate::AccountingError;
use crate::event::{DpEvent, SampledGaussian};
use crate::special::{log_add, log_binom, log_erfc};

/// `dp_accounting`'s default orders: 1.1 … 10.9 in steps of 0.1, 11 … 63, and 128 … 1024.
pub fn default_orders() -> Vec<f64> {
    (1..100)
        .map(|x| 1.0 + f64::from(x) / 10.0)
        .chain((11..64).map(f64::from))
        .chain([128.0, 256.0, 512.0, 1024.0])
        .collect()
}

const MAX_FRACTIONAL_TERMS: usize = 1000;

fn log_a_int(q: f64, sigma: f64, alpha: u32) -> f64 {
    let mut log_a = f64::NEG_INFINITY;
    let a = f64::from(alpha);
    for i in 0..=alpha {
        let i = f64::from(i);
        let (log_binom, _) = log_binom(a, i);
        let log_coef = log_binom + i * q.ln() + (a - i) * (-q).ln_1p();
        log_a = log_add(log_a, log_coef + (i * i - i) / (2.0 * sigma * sigma));
    }
    log_a
}

/// The fractional-order series, as `dp_accounting` 0.6 evaluates it: the magnitudes of all
/// terms are added (an upper bound on A_α, since some binomial coefficients are negative), and
/// the sum stops once both tails are shrinking and 30 nats below the total. `None` when that
/// does not happen within 1000 terms: the order is then unusable.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> Option<f64> {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let s2 = sigma * sigma;
    let z0 = s2 * (1.0 / q - 1.0).ln() + 0.5;
    let log1mq = (-q).ln_1p();
    for i in 0..MAX_FRACTIONAL_TERMS {
        let i = i as f64;
        let (log_coef, _sign) = log_binom(alpha, i);
        let j = alpha - i;
        let log_t0 = log_coef + i * q.ln() + j * log1mq;
        let log_t1 = log_coef + j * q.ln() + i * log1mq;
        let log_e0 = 0.5f64.ln() + log_erfc((i - z0) / (std::f64::consts::SQRT_2 * sigma));
        let log_e1 = 0.5f64.ln() + log_erfc((z0 - j) / (std::f64::consts::SQRT_2 * sigma));
        let log_s0 = log_t0 + (i * i - i) / (2.0 * s2) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * s2) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return Some(total);
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    None
}

/// RDP of one step of the Poisson-subsampled Gaussian at `order` (∞ where unusable).
pub fn rdp_one_step(noise_multiplier: f64, q: f64, order: f64) -> f64 {
    if noise_multiplier == 0.0 {
        return f64::INFINITY;
    }
    if q == 0.0 {
        return 0.0;
    }
    if q == 1.0 {
        return order / (2.0 * noise_multiplier * noise_multiplier);
    }
    let log_a = if order.fract() == 0.0 && order <= f64::from(u32::MAX) {
        Some(log_a_int(q, noise_multiplier, order as u32))
    } else {
        log_a_frac(q, noise_multiplier, order)
    };
    log_a.map_or(f64::INFINITY, |l| l / (order - 1.0))
}

/// The RDP curve of a whole event, one value per order.
pub fn rdp_curve(event: &DpEvent, orders: &[f64]) -> Result<Vec<f64>, AccountingError> {
    let mut total = vec![0.0; orders.len()];
    for SampledGaussian {
        noise_multiplier,
        sampling_probability,
        count,
    } in event.terms()?
    {
        for (t, &order) in total.iter_mut().zip(orders) {
            *t += count as f64 * rdp_one_step(noise_multiplier, sampling_probability, order);
        }
    }
    Ok(total)
}

/// ε at `delta` from an RDP curve, and the order that attains it.
pub fn epsilon_from_rdp(orders: &[f64], rdp: &[f64], delta: f64) -> Result<(f64, f64), AccountingError> {
    if !(delta > 0.0 && delta < 1.0) {
        return Err(AccountingError::InvalidParameter(format!("delta {delta} must be in (0, 1)")));
    }
    let mut best = (f64::INFINITY, f64::NAN);
    for (&a, &r) in orders.iter().zip(rdp) {
        let eps = if delta * delta + (-r).exp_m1() > 0.0 {
            // The KL bound δ ≤ sqrt(1 − e^{−KL}) already gives ε = 0.
            0.0
        } else if a > 1.01 {
            r + (-1.0 / a).ln_1p() - (delta * a).ln() / (a - 1.0)
        } else {
            f64::INFINITY
        };
        if eps < best.0 {
            best = (eps, a);
        }
    }
    if best.0.is_infinite() {
        return Err(AccountingError::Unbounded("every RDP order is infinite".into()));
    }
    Ok((best.0.max(0.0), best.1))
}

/// ε of `event` at `delta` by RDP over the default orders.
pub fn epsilon(event: &DpEvent, delta: f64) -> Result<f64, AccountingError> {
    let orders = default_orders();
    epsilon_from_rdp(&orders, &rdp_curve(event, &orders)?, delta).map(|(e, _)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_batch_gaussian_has_the_closed_form() {
        // q = 1: RDP(α) = α / (2σ²) per step.
        assert_eq!(rdp_one_step(2.0, 1.0, 3.0), 3.0 / 8.0);
        // Subsampling can only help.
        assert!(rdp_one_step(2.0, 0.1, 3.0) < 3.0 / 8.0);
    }

    #[test]
    fn integer_and_fractional_series_agree_where_they_meet() {
        // The fractional series at an order next to an integer lands next to the integer sum
        // (where all binomial coefficients are positive, so the magnitude sum is exact).
        let a = rdp_one_step(1.5, 0.05, 4.0);
        let b = rdp_one_step(1.5, 0.05, 4.0 + 1e-9);
        assert!((a - b).abs() / a < 1e-6, "{a} vs {b}");
    }

    #[test]
    fn more_steps_and_more_sampling_cost_more() {
        let e = |sigma, q, steps| epsilon(&DpEvent::dp_sgd(sigma, q, steps), 1e-5).unwrap();
        assert!(e(1.0, 0.01, 100) < e(1.0, 0.01, 1000));
        assert!(e(1.0, 0.01, 100) < e(1.0, 0.1, 100));
        assert!(e(2.0, 0.01, 100) < e(1.0, 0.01, 100));
    }
}
