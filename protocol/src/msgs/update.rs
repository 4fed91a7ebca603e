//! A store's update and the aggregator's verdict on it.

use serde::{Deserialize, Serialize};

use crate::tensor::NamedTensor;

/// Metric names a store reports about the model it was offered, measured on its own
/// validation shoppers before it trained: the aggregator pools them into one federated
/// validation score per model version and serves the best one.
pub mod validation_metric {
    /// Hit rate at 10 by full ranking, a mean over the store's validation shoppers.
    pub const HR10: &str = "offered_validation_hr10";
    pub const NDCG10: &str = "offered_validation_ndcg10";
    /// How many validation shoppers the two means are over: the pooling weight.
    pub const SHOPPERS: &str = "offered_validation_shoppers";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub value: f64,
}

/// What this round's training cost in privacy, in the terms of `dp_accounting`'s `DpEvent`s
/// (a Poisson-sampled Gaussian self-composed `steps` times), so the aggregator can mirror the
/// store's ledger and an auditor can replay it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrivacySpend {
    pub noise_multiplier: f64,
    pub sampling_rate: f64,
    pub steps: u32,
    pub clip_norm: f64,
    pub delta: f64,
    /// The store's ε after this round, by its own accountant.
    pub epsilon_total: f64,
    /// Hash of the store's ledger entry for this release, written before the upload.
    pub ledger_entry_hash: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateUpload {
    pub round_id: u64,
    pub base_model_version: u64,
    pub example_count: u64,
    pub metrics: Vec<Metric>,
    /// `None` only in federations run without DP.
    pub privacy_spend: Option<PrivacySpend>,
    /// Model delta (trained minus base), one entry per parameter tensor.
    pub tensors: Vec<NamedTensor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateAccepted {
    pub round_id: u64,
    /// How many updates the round holds now, for the store's progress display.
    pub updates_in_round: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RejectionReason {
    UnknownTensor {
        name: String,
    },
    MissingTensor {
        name: String,
    },
    WrongShape {
        name: String,
        expected: Vec<u32>,
        got: Vec<u32>,
    },
    NonFinite {
        name: String,
    },
    StaleBase {
        expected: u64,
        got: u64,
    },
    NormTooLarge {
        norm: f64,
        bound: f64,
    },
    RoundClosed {
        round_id: u64,
    },
    EncodingNotOffered,
    Malformed {
        detail: String,
    },
    /// The round requires DP and the update carries no privacy spend: whatever the store did,
    /// it did not account for a release.
    PrivacyNotApplied,
    /// The privacy spend is weaker than the round's DP requirement (a lower noise multiplier,
    /// a larger clip norm or sampling rate than it allows): the update was released under
    /// less privacy than the platform asked for, so it is not aggregated.
    PrivacyBelowRequirement {
        detail: String,
    },
}

impl std::fmt::Display for RejectionReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectionReason::UnknownTensor { name } => write!(f, "unknown tensor {name:?}"),
            RejectionReason::MissingTensor { name } => write!(f, "missing tensor {name:?}"),
            RejectionReason::WrongShape { name, expected, got } => {
                write!(f, "tensor {name:?} has shape {got:?}, expected {expected:?}")
            }
            RejectionReason::NonFinite { name } => write!(f, "tensor {name:?} holds NaN or infinity"),
            RejectionReason::StaleBase { expected, got } => {
                write!(f, "update is based on model version {got}, the round uses {expected}")
            }
            RejectionReason::NormTooLarge { norm, bound } => {
                write!(f, "update norm {norm} exceeds the bound {bound}")
            }
            RejectionReason::RoundClosed { round_id } => write!(f, "round {round_id} is closed"),
            RejectionReason::EncodingNotOffered => write!(f, "update encoding was not the one offered"),
            RejectionReason::Malformed { detail } => write!(f, "malformed update: {detail}"),
            RejectionReason::PrivacyNotApplied => {
                write!(f, "the round requires DP and the update carries no privacy spend")
            }
            RejectionReason::PrivacyBelowRequirement { detail } => {
                write!(f, "the privacy spend is weaker than the round requires: {detail}")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRejected {
    pub round_id: u64,
    pub reason: RejectionReason,
}
