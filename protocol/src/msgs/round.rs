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
    /// Path prefixes of the parameters a store trains this round; empty: every parameter.
    /// Under user-level DP the noise a step needs grows with the square root of the
    /// coordinates it is added to, so a platform that pretrained the model can ask private
    /// stores to adapt only a small part of it (the fusion head, say) and keep the rest.
    pub trainable: Vec<String>,
}

/// Most parameter prefixes a plan may name.
pub const MAX_TRAINABLE_PREFIXES: usize = 256;
/// Longest parameter prefix a plan may name, in bytes.
pub const MAX_PREFIX_BYTES: usize = 256;

/// Most local epochs a plan may ask for in one round.
pub const MAX_LOCAL_EPOCHS: u32 = 1_000;
/// Most optimiser steps a plan may ask of a store in one round, DP-SGD's 1/q steps an epoch
/// included: beyond it a round would not end before its deadline, whatever the hardware.
pub const MAX_LOCAL_STEPS: u64 = 10_000_000;

impl TrainingPlan {
    /// Whether a store can train this plan: a learning rate in (0, 1], FedProx μ ≥ 0, local
    /// work within [`MAX_LOCAL_EPOCHS`] / [`MAX_LOCAL_STEPS`], and DP parameters that are
    /// numbers in range. The plan arrives from the network: a store checks it before it
    /// trains and leaves with the reason rather than crash, spin or train on NaN.
    pub fn check(&self) -> Result<(), String> {
        let lr = self.learning_rate;
        if !(lr > 0.0 && lr <= 1.0) {
            return Err(format!("learning rate {lr} is not in (0, 1]"));
        }
        if let Some(mu) = self.proximal_mu
            && !(mu.is_finite() && mu >= 0.0)
        {
            return Err(format!("proximal μ {mu} is not a number ≥ 0"));
        }
        match self.work {
            LocalWork::Epochs(e) if e > MAX_LOCAL_EPOCHS => {
                return Err(format!("{e} local epochs, more than {MAX_LOCAL_EPOCHS}"));
            }
            LocalWork::Steps(k) if u64::from(k) > MAX_LOCAL_STEPS => {
                return Err(format!("{k} local steps, more than {MAX_LOCAL_STEPS}"));
            }
            _ => {}
        }
        if self.trainable.len() > MAX_TRAINABLE_PREFIXES {
            return Err(format!(
                "{} trainable parameter prefixes, more than {MAX_TRAINABLE_PREFIXES}",
                self.trainable.len()
            ));
        }
        if let Some(p) = self.trainable.iter().find(|p| p.is_empty() || p.len() > MAX_PREFIX_BYTES) {
            return Err(format!(
                "a trainable parameter prefix of {} bytes (1 to {MAX_PREFIX_BYTES})",
                p.len()
            ));
        }
        if let Some(dp) = &self.dp {
            dp.check(&self.work)?;
        }
        Ok(())
    }
}

impl DpRequirement {
    /// Noise and clip norm positive numbers, the sampling rate in (0, 1] and low enough work
    /// for `work` at it, δ in (0, 1).
    pub fn check(&self, work: &LocalWork) -> Result<(), String> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("DP {name} {v} is not a positive number"))
            }
        };
        positive("noise multiplier", self.min_noise_multiplier)?;
        positive("clip norm", self.max_clip_norm)?;
        positive("sampling rate", self.max_sampling_rate)?;
        if self.max_sampling_rate > 1.0 {
            return Err(format!("DP sampling rate {} is above 1", self.max_sampling_rate));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return Err(format!("DP delta {} is not in (0, 1)", self.delta));
        }
        let steps = work.dp_sgd_steps(self.max_sampling_rate);
        if steps > MAX_LOCAL_STEPS {
            return Err(format!(
                "DP-SGD at sampling rate {} takes {steps} steps a round, more than {MAX_LOCAL_STEPS}",
                self.max_sampling_rate
            ));
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::ValueEncoding;

    fn plan() -> TrainingPlan {
        TrainingPlan {
            work: LocalWork::Epochs(2),
            learning_rate: 3e-3,
            batch_size: 8,
            proximal_mu: None,
            update_encoding: UpdateEncoding::Dense(ValueEncoding::F32),
            dp: Some(DpRequirement {
                unit: PrivacyUnit::Shopper,
                noise_mode: NoiseMode::Local,
                min_noise_multiplier: 1.0,
                max_clip_norm: 1.0,
                max_sampling_rate: 0.05,
                delta: 1e-5,
            }),
            trainable: Vec::new(),
        }
    }

    #[test]
    fn a_sensible_plan_passes() {
        assert_eq!(plan().check(), Ok(()));
        let plain = TrainingPlan { dp: None, ..plan() };
        assert_eq!(plain.check(), Ok(()));
    }

    #[test]
    fn a_plan_no_store_could_train_says_what_is_wrong() {
        let cases: Vec<(TrainingPlan, &str)> = vec![
            (
                TrainingPlan {
                    learning_rate: 0.0,
                    ..plan()
                },
                "learning rate 0 is not in (0, 1]",
            ),
            (
                TrainingPlan {
                    learning_rate: 1.5,
                    ..plan()
                },
                "learning rate 1.5",
            ),
            (
                TrainingPlan {
                    learning_rate: f32::NAN,
                    ..plan()
                },
                "learning rate NaN",
            ),
            (
                TrainingPlan {
                    proximal_mu: Some(-0.1),
                    ..plan()
                },
                "proximal μ -0.1",
            ),
            (
                TrainingPlan {
                    work: LocalWork::Epochs(5_000),
                    ..plan()
                },
                "5000 local epochs",
            ),
            (
                TrainingPlan {
                    work: LocalWork::Steps(u32::MAX),
                    ..plan()
                },
                "4294967295 local steps",
            ),
            (
                TrainingPlan {
                    trainable: vec![String::new()],
                    ..plan()
                },
                "a trainable parameter prefix of 0 bytes",
            ),
            (
                TrainingPlan {
                    trainable: vec!["h".repeat(MAX_PREFIX_BYTES + 1)],
                    ..plan()
                },
                "prefix of 257 bytes",
            ),
            (
                TrainingPlan {
                    trainable: vec!["head_".into(); MAX_TRAINABLE_PREFIXES + 1],
                    ..plan()
                },
                "257 trainable parameter prefixes",
            ),
        ];
        for (p, want) in cases {
            let err = p.check().unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
        let dp = |f: &dyn Fn(&mut DpRequirement)| {
            let mut p = plan();
            f(p.dp.as_mut().unwrap());
            p.check().unwrap_err()
        };
        assert!(dp(&|d| d.min_noise_multiplier = f64::INFINITY).contains("noise multiplier inf"));
        assert!(dp(&|d| d.max_clip_norm = 0.0).contains("clip norm 0"));
        assert!(dp(&|d| d.max_sampling_rate = 2.0).contains("sampling rate 2 is above 1"));
        assert!(dp(&|d| d.delta = 1.0).contains("delta 1 is not in (0, 1)"));
        // Two epochs at q = 1e-9 would be 2e9 DP-SGD steps: a store that tried would not stop.
        assert!(dp(&|d| d.max_sampling_rate = 1e-9).contains("steps a round, more than 10000000"));
    }
}
