//! The inverse question: how much noise does a target (ε, δ) need?

use crate::{AccountingError, DpEvent, pld, rdp};

/// Which accountant answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accountant {
    Rdp,
    Pld,
}

impl Accountant {
    pub fn epsilon(self, event: &DpEvent, delta: f64) -> Result<f64, AccountingError> {
        match self {
            Accountant::Rdp => rdp::epsilon(event, delta),
            Accountant::Pld => pld::epsilon(event, delta),
        }
    }
}

/// The smallest noise multiplier (to 0.1%) whose `steps` Poisson-sampled Gaussian steps at rate
/// `q` stay within `target_epsilon` at `delta`. ε falls as σ grows, so bisection finds it; the
/// answer is the upper end of the final bracket, never below the true minimum.
pub fn noise_multiplier_for(
    target_epsilon: f64,
    delta: f64,
    q: f64,
    steps: u64,
    accountant: Accountant,
) -> Result<f64, AccountingError> {
    if !(target_epsilon > 0.0 && target_epsilon.is_finite()) {
        return Err(AccountingError::InvalidParameter(format!("target ε {target_epsilon}")));
    }
    let eps = |sigma: f64| accountant.epsilon(&DpEvent::dp_sgd(sigma, q, steps), delta);
    let rdp_eps = |sigma: f64| Accountant::Rdp.epsilon(&DpEvent::dp_sgd(sigma, q, steps), delta);
    // Bracket with RDP, which is cheap: PLD's ε is never above RDP's, so σ_RDP bounds σ_PLD.
    let mut hi = 1.0f64;
    while rdp_eps(hi)? > target_epsilon {
        hi *= 2.0;
        if hi > 1e6 {
            return Err(AccountingError::Unbounded(format!(
                "no σ up to 1e6 reaches ε = {target_epsilon}"
            )));
        }
    }
    let mut lo = hi / 2.0;
    while eps(lo)? <= target_epsilon {
        hi = lo;
        lo /= 2.0;
        if lo < 1e-3 {
            return Ok(hi);
        }
    }
    while (hi - lo) / hi > 1e-3 {
        let mid = 0.5 * (lo + hi);
        if eps(mid)? > target_epsilon { lo = mid } else { hi = mid }
    }
    Ok(hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_planned_sigma_meets_the_target_and_a_smaller_one_does_not() {
        for accountant in [Accountant::Rdp, Accountant::Pld] {
            let sigma = noise_multiplier_for(2.0, 1e-5, 0.02, 100, accountant).unwrap();
            let at = |s: f64| accountant.epsilon(&DpEvent::dp_sgd(s, 0.02, 100), 1e-5).unwrap();
            assert!(at(sigma) <= 2.0, "{accountant:?}: σ={sigma} gives ε={}", at(sigma));
            assert!(at(sigma * 0.99) > 2.0, "{accountant:?}: σ={sigma} is not minimal");
        }
        // PLD is tighter, so it needs less noise.
        let r = noise_multiplier_for(2.0, 1e-5, 0.02, 100, Accountant::Rdp).unwrap();
        let p = noise_multiplier_for(2.0, 1e-5, 0.02, 100, Accountant::Pld).unwrap();
        assert!(p < r);
    }
}
