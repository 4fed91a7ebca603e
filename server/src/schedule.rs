//! The local learning rate across a federation's rounds.
//!
//! Stores train at a constant rate within a round, so whatever decay a centralized trainer gets
//! from its cosine schedule, a federation gets only if the aggregator lowers the rate it offers
//! round by round. Without it FedAvg ends the run at the full step size, circling the optimum
//! instead of settling into it.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "schedule", rename_all = "snake_case")]
pub enum LearningRateSchedule {
    /// Every round offers the plan's rate.
    Constant,
    /// Cosine decay from the plan's rate in round 1 to `min_learning_rate` after the last
    /// configured round. A federation without a round limit has no end to decay to, so it
    /// stays constant.
    Cosine { min_learning_rate: f32 },
}

impl LearningRateSchedule {
    /// The rate to offer in round `round_id` (counted from 1) of `rounds` (0: no limit).
    pub fn rate(&self, base: f32, round_id: u64, rounds: u64) -> f32 {
        match *self {
            Self::Constant => base,
            Self::Cosine { .. } if rounds == 0 => base,
            Self::Cosine { min_learning_rate } => {
                let done = (round_id.saturating_sub(1)).min(rounds) as f64 / rounds as f64;
                let cos = 0.5 * (1.0 + (std::f64::consts::PI * done).cos());
                (f64::from(min_learning_rate) + (f64::from(base) - f64::from(min_learning_rate)) * cos) as f32
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_starts_at_the_base_rate_and_decays_towards_the_minimum() {
        let s = LearningRateSchedule::Cosine { min_learning_rate: 1e-4 };
        assert_eq!(s.rate(1e-2, 1, 10), 1e-2);
        let mid = s.rate(1e-2, 6, 10);
        assert!((mid - (1e-4 + (1e-2 - 1e-4) * 0.5)).abs() < 1e-7, "{mid}");
        let rates: Vec<f32> = (1..=10).map(|r| s.rate(1e-2, r, 10)).collect();
        assert!(rates.windows(2).all(|w| w[1] < w[0]), "{rates:?}");
        // The last round is close to, not at, the minimum: after it the schedule would reach it.
        assert!(rates[9] > 1e-4 && rates[9] < 4e-4, "{}", rates[9]);
        // Resumed beyond the limit (a restarted federation that already ran its rounds).
        assert!((s.rate(1e-2, 12, 10) - 1e-4).abs() < 1e-9);
    }

    #[test]
    fn without_a_round_limit_or_with_constant_the_rate_stays() {
        let s = LearningRateSchedule::Cosine { min_learning_rate: 1e-4 };
        assert_eq!(s.rate(3e-3, 40, 0), 3e-3);
        assert_eq!(LearningRateSchedule::Constant.rate(3e-3, 40, 10), 3e-3);
    }
}
