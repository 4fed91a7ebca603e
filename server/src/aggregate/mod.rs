//! Combining validated updates into one model delta, then applying it.
//!
//! - [`mean`]: the streaming (example-weighted or uniform) mean, FedAvg's aggregate;
//! - [`robust`]: coordinate-wise median and trimmed mean, spilling updates to disk;
//! - [`optimizer`]: server optimisers that apply the aggregate (FedAvg step, FedAdagrad,
//!   FedAdam, FedYogi; Reddi et al. 2021).
//!
//! Every rule keeps memory O(model size), whatever the number of stores.

pub mod mean;
pub mod optimizer;
pub mod robust;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum AggregateError {
    #[error("update has {got} parameters, the model {expected}")]
    WrongLength { expected: usize, got: usize },
    #[error("no update to aggregate")]
    Empty,
    #[error("spill file {path}: {source}")]
    Spill {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// How a round's updates are combined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum AggregationRule {
    /// Weighted by each store's example count (FedAvg).
    ExampleWeightedMean,
    /// Every store counts the same. With DP the denominator must not depend on the data, so
    /// this divides by `expected_stores` when given, not by the number that arrived.
    UniformMean {
        expected_stores: Option<f64>,
    },
    CoordinateMedian,
    /// Drops the `trim` fraction of largest and of smallest values per coordinate.
    TrimmedMean {
        trim: f64,
    },
}

/// One streaming aggregate of a round.
pub enum RoundAggregate {
    Mean(mean::StreamingMean),
    Robust(robust::SpilledUpdates),
}

impl RoundAggregate {
    pub fn new(rule: AggregationRule, params: usize, spill_dir: &std::path::Path) -> Result<Self, AggregateError> {
        Ok(match rule {
            AggregationRule::ExampleWeightedMean => Self::Mean(mean::StreamingMean::new(params, true, None)),
            AggregationRule::UniformMean { expected_stores } => {
                Self::Mean(mean::StreamingMean::new(params, false, expected_stores))
            }
            AggregationRule::CoordinateMedian => {
                Self::Robust(robust::SpilledUpdates::new(params, spill_dir, robust::RobustRule::Median)?)
            }
            AggregationRule::TrimmedMean { trim } => Self::Robust(robust::SpilledUpdates::new(
                params,
                spill_dir,
                robust::RobustRule::TrimmedMean(trim),
            )?),
        })
    }

    pub fn add(&mut self, delta: &[f32], example_count: u64) -> Result<(), AggregateError> {
        match self {
            Self::Mean(m) => m.add(delta, example_count as f64),
            Self::Robust(r) => r.add(delta),
        }
    }

    pub fn count(&self) -> usize {
        match self {
            Self::Mean(m) => m.count(),
            Self::Robust(r) => r.count(),
        }
    }

    pub fn finish(self) -> Result<Vec<f32>, AggregateError> {
        match self {
            Self::Mean(m) => m.finish(),
            Self::Robust(r) => r.finish(),
        }
    }
}
