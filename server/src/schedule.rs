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
    /// The plan's rate for the first `hold_rounds` rounds, then cosine decay to
    /// `min_learning_rate` after the last configured round. A federation without a round limit
    /// has no end to decay to, so it stays constant.
    ///
    /// Holding matters because FedAvg's global model keeps improving at the full rate long after
    /// a centralized trainer would start decaying (on MovieLens-100K, 30 constant rounds beat 20
    /// cosine ones): decaying only over the last rounds lets the federation first travel, then
    /// settle (the warm-up-stable-decay shape).
    Cosine {
        min_learning_rate: f32,
        #[serde(default)]
        hold_rounds: u64,
    },
}

impl LearningRateSchedule {
    /// Every rate offered stays in (0, 1], as a store requires: the cosine's floor above 0
    /// and at most `base` (rounds past the last, after a failed round, are offered the floor).
    pub fn check(&self, base: f32) -> Result<(), String> {
        match *self {
            Self::Cosine { min_learning_rate, .. } if !(min_learning_rate > 0.0 && min_learning_rate <= base) => Err(format!(
                "min_learning_rate {min_learning_rate} must be above 0 and at most learning_rate {base}"
            )),
            _ => Ok(()),
        }
    }

    /// The rate to offer in round `round_id` (counted from 1) of `rounds` (0: no limit).
    pub fn rate(&self, base: f32, round_id: u64, rounds: u64) -> f32 {
        match *self {
            Self::Constant => base,
            Self::Cosine { .. } if rounds == 0 => base,
            Self::Cosine {
                min_learning_rate,
                hold_rounds,
            } => {
                let hold = hold_rounds.min(rounds - 1);
                let done = (round_id.saturating_sub(1 + hold)).min(rounds - hold) as f64 / (rounds - hold) as f64;
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
        let s = LearningRateSchedule::Cosine {
            min_learning_rate: 1e-4,
            hold_rounds: 0,
        };
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
    fn held_cosine_keeps_the_base_rate_then_decays_over_the_remaining_rounds() {
        let held = LearningRateSchedule::Cosine {
            min_learning_rate: 1e-4,
            hold_rounds: 6,
        };
        let plain = LearningRateSchedule::Cosine {
            min_learning_rate: 1e-4,
            hold_rounds: 0,
        };
        for r in 1..=7 {
            assert_eq!(held.rate(1e-2, r, 10), 1e-2, "round {r}");
        }
        // Rounds 7..=10 of the held schedule are rounds 1..=4 of a plain cosine over 4 rounds.
        for r in 7..=10 {
            assert_eq!(held.rate(1e-2, r, 10), plain.rate(1e-2, r - 6, 4), "round {r}");
        }
        assert!(held.rate(1e-2, 10, 10) < 2e-3);
        // A hold beyond the round limit still leaves the last round to decay towards.
        let all = LearningRateSchedule::Cosine {
            min_learning_rate: 1e-4,
            hold_rounds: 50,
        };
        assert_eq!(all.rate(1e-2, 10, 10), 1e-2);
        assert!((all.rate(1e-2, 11, 10) - 1e-4).abs() < 1e-9);
    }

    #[test]
    fn without_a_round_limit_or_with_constant_the_rate_stays() {
        let s = LearningRateSchedule::Cosine {
            min_learning_rate: 1e-4,
            hold_rounds: 5,
        };
        assert_eq!(s.rate(3e-3, 40, 0), 3e-3);
        assert_eq!(LearningRateSchedule::Constant.rate(3e-3, 40, 10), 3e-3);
    }

    #[test]
    fn a_schedule_that_would_offer_zero_or_more_than_the_base_rate_is_refused() {
        let to = |min| LearningRateSchedule::Cosine {
            min_learning_rate: min,
            hold_rounds: 0,
        };
        assert_eq!(to(1e-4).check(3e-3), Ok(()));
        // Past the last round (failed rounds use up round ids) the cosine offers its floor.
        assert_eq!(to(1e-4).rate(3e-3, 25, 20), 1e-4);
        for bad in [0.0, -1e-4, f32::NAN, 4e-3] {
            assert!(
                to(bad).check(3e-3).unwrap_err().contains("must be above 0 and at most"),
                "{bad}"
            );
        }
        assert_eq!(LearningRateSchedule::Constant.check(3e-3), Ok(()));
    }
}
