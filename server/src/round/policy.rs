//! How rounds run, as configured in the aggregator's TOML.

use serde::{Deserialize, Serialize};

use crate::aggregate::AggregationRule;
use crate::aggregate::optimizer::ServerOptimizerConfig;
use crate::central_dp::CentralDp;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoundPolicy {
    /// Share of connected stores offered each round (at least `quorum` of them).
    pub sample_fraction: f64,
    /// Connected stores needed before a round starts.
    pub min_stores: usize,
    /// Updates needed to aggregate; fewer by the deadline and the round fails.
    pub quorum: usize,
    /// Milliseconds from offer to deadline.
    pub deadline_ms: u64,
    /// Rounds to run; 0 runs until stopped.
    pub rounds: u64,
    /// Seeds the choice of participants.
    pub seed: u64,
    pub aggregation: AggregationRule,
    pub optimizer: ServerOptimizerConfig,
    /// Reject updates with a larger L2 norm.
    pub norm_bound: Option<f64>,
    /// In an example-weighted mean, a store's update weighs at most this many examples. A
    /// store's example count is its own claim, which the aggregator cannot verify: without a
    /// cap one store saying 10⁹ outweighs every other store of the round.
    pub max_examples_per_store: Option<u64>,
    /// Fine-tune each new global model on platform data before the next round.
    pub fine_tune: bool,
    /// Store-level DP on every published model: updates clipped and summed unweighted, noise
    /// added once by the aggregator (`aggregation` is then ignored).
    pub central_dp: Option<CentralDp>,
}

impl RoundPolicy {
    /// Values the rounds can run with: a sampling fraction in (0, 1], a quorum and a deadline
    /// above 0, a positive norm bound, a uniform mean's denominator of at least one store, a
    /// trim below one half, and a valid server optimiser and central DP. A NaN here would not
    /// fail loudly: it would average every model into NaN or sample no store, round after round.
    pub fn check(&self) -> Result<(), String> {
        if !(self.sample_fraction > 0.0 && self.sample_fraction <= 1.0) {
            return Err(format!(
                "[round] sample_fraction = {} must be in (0, 1]",
                self.sample_fraction
            ));
        }
        if self.quorum == 0 || self.deadline_ms == 0 {
            return Err("[round] quorum and deadline_ms must be above 0".into());
        }
        if let Some(b) = self.norm_bound
            && !(b.is_finite() && b > 0.0)
        {
            return Err(format!("[round] norm_bound = {b} must be a positive number"));
        }
        if self.max_examples_per_store == Some(0) {
            return Err("[round] max_examples_per_store = 0 would weigh every update at nothing".into());
        }
        match self.aggregation {
            AggregationRule::UniformMean {
                expected_stores: Some(n),
            } if !(n.is_finite() && n >= 1.0) => {
                return Err(format!("[round.aggregation] expected_stores = {n} must be a number ≥ 1"));
            }
            AggregationRule::TrimmedMean { trim } if !(0.0..0.5).contains(&trim) => {
                return Err(format!("[round.aggregation] trim = {trim} must be in [0, 0.5)"));
            }
            _ => {}
        }
        self.optimizer.check()?;
        if let Some(dp) = &self.central_dp {
            dp.validate().map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

impl Default for RoundPolicy {
    fn default() -> Self {
        Self {
            sample_fraction: 1.0,
            min_stores: 2,
            quorum: 2,
            deadline_ms: 600_000,
            rounds: 0,
            seed: 0,
            aggregation: AggregationRule::ExampleWeightedMean,
            optimizer: ServerOptimizerConfig::default(),
            norm_bound: None,
            max_examples_per_store: None,
            fine_tune: false,
            central_dp: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_the_rounds_cannot_run_with_names_the_value() {
        assert_eq!(RoundPolicy::default().check(), Ok(()));
        let bad = |p: RoundPolicy, want: &str| {
            let err = p.check().unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        };
        let d = RoundPolicy::default;
        bad(
            RoundPolicy {
                sample_fraction: f64::NAN,
                ..d()
            },
            "sample_fraction = NaN",
        );
        bad(
            RoundPolicy {
                sample_fraction: 0.0,
                ..d()
            },
            "sample_fraction = 0",
        );
        bad(RoundPolicy { quorum: 0, ..d() }, "quorum and deadline_ms");
        bad(
            RoundPolicy {
                norm_bound: Some(-1.0),
                ..d()
            },
            "norm_bound = -1",
        );
        bad(
            RoundPolicy {
                max_examples_per_store: Some(0),
                ..d()
            },
            "max_examples_per_store = 0",
        );
        bad(
            RoundPolicy {
                aggregation: AggregationRule::UniformMean {
                    expected_stores: Some(f64::NAN),
                },
                ..d()
            },
            "expected_stores = NaN",
        );
        bad(
            RoundPolicy {
                aggregation: AggregationRule::TrimmedMean { trim: 0.5 },
                ..d()
            },
            "trim = 0.5",
        );
    }
}
