//! The aggregator's offer of a round: which model to start from and how to train it.

use serde::{Deserialize, Serialize};

use super::model::ModelManifest;
use crate::tensor::UpdateEncoding;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum LocalWork {
    Steps(u32),
    Epochs(u32),
}

impl LocalWork {
    /// `steps` optimiser steps when above 0, else `epochs` passes: how a config that has
    /// both keys says which it means.
    pub fn of(epochs: u32, steps: u32) -> Self {
        match steps {
            0 => Self::Epochs(epochs),
            k => Self::Steps(k),
        }
    }

    /// DP-SGD steps this work takes at Poisson sampling rate `q` (an epoch is 1/q steps); at
    /// least one. What a store charges a round and what a whole run is calibrated for.
    pub fn dp_sgd_steps(&self, q: f64) -> u64 {
        match *self {
            Self::Epochs(e) => (f64::from(e.max(1)) / q).ceil().max(1.0) as u64,
            Self::Steps(k) => u64::from(k.max(1)),
        }
    }
}

/// Whose contribution the DP guarantee protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrivacyUnit {
    /// One shopper's whole history (user-level DP-SGD inside the store).
    Shopper,
    /// A store's whole update (client-level DP-FedAvg).
    Store,
}

/// Who adds the noise for client-level DP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoiseMode {
    Local,
    Central,
}

/// The weakest DP a store may apply this round. A store may always apply more (more noise,
/// a smaller clip norm, a lower sampling rate); its own policy can only tighten this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DpRequirement {
    pub unit: PrivacyUnit,
    pub noise_mode: NoiseMode,
    pub min_noise_multiplier: f64,
    pub max_clip_norm: f64,
    pub max_sampling_rate: f64,
    pub delta: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingPlan {
    pub work: LocalWork,
    pub learning_rate: f32,
    pub batch_size: u32,
    /// FedProx proximal term; `None` for plain local SGD.
    pub proximal_mu: Option<f32>,
    pub update_encoding: UpdateEncoding,
    /// `None` when the federation runs without DP.
    pub dp: Option<DpRequirement>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoundOffer {
    pub round_id: u64,
    /// The global model to start from; its bytes follow as `ModelChunk`s unless the store
    /// already holds a model with this content hash.
    pub model: ModelManifest,
    pub plan: TrainingPlan,
    /// Unix milliseconds after which the round closes and late updates are refused.
    pub deadline_unix_ms: u64,
}
