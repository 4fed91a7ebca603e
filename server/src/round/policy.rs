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
    /// Fine-tune each new global model on platform data before the next round.
    pub fine_tune: bool,
    /// Store-level DP on every published model: updates clipped and summed unweighted, noise
    /// added once by the aggregator (`aggregation` is then ignored).
    pub central_dp: Option<CentralDp>,
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
            fine_tune: false,
            central_dp: None,
        }
    }
}
