//! The store's privacy guard for client-level DP-FedAvg with local noise.
//!
//! Order matters and is fixed here: check the budget, clip, *charge the ledger and fsync it*,
//! and only then add noise and let the update go. The noise and clip actually used are the
//! stronger of the store's own policy and the round's requirement; the noise multiplier
//! charged accounts for rounding to the noise grid. A store whose next release would pass its
//! budget refuses to train, and says why.

use std::path::Path;

use fedfuse_privacy::fedavg::clip_update;
use fedfuse_privacy::ledger::{Mechanism, NoiseMode, PrivacyUnit};
use fedfuse_privacy::noise::GridGaussian;
use fedfuse_privacy::{Budget, LedgerError, PrivacyLedger, Release};
use fedfuse_protocol::msgs::{PrivacySpend, TrainingPlan};

#[derive(Debug, thiserror::Error)]
pub enum PrivacyError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("noise: {0}")]
    Noise(#[from] fedfuse_privacy::noise::NoiseError),
    #[error("the round asks for DP on {0:?}, this store applies client-level DP only")]
    UnsupportedUnit(fedfuse_protocol::msgs::PrivacyUnit),
    #[error(
        "this store accounts its ε at δ = {own:e}, above the round's δ = {required:e}: its guarantee would be weaker than the round asks"
    )]
    DeltaAboveRequirement { own: f64, required: f64 },
}

/// The store's own DP policy: never weaker than this, whatever a round asks.
#[derive(Debug, Clone, PartialEq)]
pub struct StorePrivacyPolicy {
    pub budget: Budget,
    pub noise_multiplier: f64,
    pub clip_norm: f64,
    /// Noise grid 2^k.
    pub grid_exponent: i32,
}

pub struct StorePrivacy {
    store: String,
    policy: StorePrivacyPolicy,
    ledger: PrivacyLedger,
}

impl StorePrivacy {
    pub fn open(store: impl Into<String>, policy: StorePrivacyPolicy, ledger_path: &Path) -> Result<Self, PrivacyError> {
        Ok(Self {
            store: store.into(),
            policy,
            ledger: PrivacyLedger::open(ledger_path)?,
        })
    }

    pub fn ledger(&self) -> &PrivacyLedger {
        &self.ledger
    }

    /// Whether this store's δ is as small as the round's: its ε is accounted at its own δ,
    /// and an ε at a larger δ promises less than the round requires (the aggregator would
    /// reject the update), so the store refuses before it trains.
    pub fn meets_round_delta(&self, plan: &TrainingPlan) -> Result<(), PrivacyError> {
        match &plan.dp {
            Some(dp) if self.policy.budget.delta > dp.delta * (1.0 + 1e-9) => Err(PrivacyError::DeltaAboveRequirement {
                own: self.policy.budget.delta,
                required: dp.delta,
            }),
            _ => Ok(()),
        }
    }

    /// The release this round would make: its parameters and the noise that realises them.
    fn release(&self, round: u64, plan: &TrainingPlan, dims: usize) -> Result<(Release, GridGaussian), PrivacyError> {
        self.meets_round_delta(plan)?;
        let (mut z, mut clip) = (self.policy.noise_multiplier, self.policy.clip_norm);
        if let Some(dp) = &plan.dp {
            if dp.unit != fedfuse_protocol::msgs::PrivacyUnit::Store {
                return Err(PrivacyError::UnsupportedUnit(dp.unit));
            }
            z = z.max(dp.min_noise_multiplier);
            clip = clip.min(dp.max_clip_norm);
            // The charged σ is over the grid-rounded sensitivity: ask for enough that it, not
            // only the σ asked for, meets the requirement (the aggregator checks the charge).
            let inflation = fedfuse_privacy::noise::grid_inflation(clip, dims, self.policy.grid_exponent);
            z = z.max(dp.min_noise_multiplier * inflation);
        }
        let noise = GridGaussian::new(z * clip, self.policy.grid_exponent)?;
        let release = Release {
            store: self.store.clone(),
            round,
            unit: PrivacyUnit::Store,
            mechanism: Mechanism::DpFedAvg,
            noise_mode: NoiseMode::Local,
            // Charged against the sensitivity after rounding to the grid.
            noise_multiplier: noise.noise_multiplier(clip, dims),
            // Every round the store takes part in counts in full: no amplification claimed.
            sampling_probability: 1.0,
            steps: 1,
            clip_norm: clip,
        };
        Ok((release, noise))
    }

    /// Refuses early (before training) if this round would pass the budget.
    pub fn check(&self, round: u64, plan: &TrainingPlan, dims: usize) -> Result<(), PrivacyError> {
        let (release, _) = self.release(round, plan, dims)?;
        self.ledger.preview(&release, &self.policy.budget)?;
        Ok(())
    }

    /// The release of `steps` user-level DP-SGD steps (Poisson rate `q`, charged noise
    /// multiplier `noise_multiplier`, per-shopper clip `clip_norm`) in `round`.
    pub fn dp_sgd_release(&self, round: u64, noise_multiplier: f64, q: f64, steps: u64, clip_norm: f64) -> Release {
        Release {
            store: self.store.clone(),
            round,
            unit: PrivacyUnit::Shopper,
            mechanism: Mechanism::DpSgd,
            noise_mode: NoiseMode::Local,
            noise_multiplier,
            sampling_probability: q,
            steps,
            clip_norm,
        }
    }

    /// Whether `release` still fits the budget (nothing is written).
    pub fn check_release(&self, release: &Release) -> Result<(), PrivacyError> {
        self.ledger.preview(release, &self.policy.budget)?;
        Ok(())
    }

    /// Charges `release` to the ledger and fsyncs it, *before* the training whose output it
    /// covers may leave the store; refuses (writing nothing) when it would pass the budget.
    pub fn charge_release(&mut self, release: Release) -> Result<PrivacySpend, PrivacyError> {
        let entry = self.ledger.charge(release, &self.policy.budget)?;
        Ok(spend_of(&entry))
    }

    /// The store's policy.
    pub fn policy(&self) -> &StorePrivacyPolicy {
        &self.policy
    }

    /// Clips `delta`, charges the ledger (durably), then noises `delta` in place.
    pub fn privatize(&mut self, round: u64, plan: &TrainingPlan, delta: &mut [f32]) -> Result<PrivacySpend, PrivacyError> {
        let (release, noise) = self.release(round, plan, delta.len())?;
        clip_update(delta, release.clip_norm)?;
        // `charge` checks the budget itself and writes nothing when it refuses.
        let entry = self.ledger.charge(release, &self.policy.budget)?;
        noise.add(delta)?;
        Ok(spend_of(&entry))
    }
}

/// What the aggregator is told of a ledger entry (its mirror of the store's ledger head).
fn spend_of(entry: &fedfuse_privacy::LedgerEntry) -> PrivacySpend {
    let mut ledger_entry_hash = [0u8; 32];
    for (i, byte) in ledger_entry_hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&entry.hash[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    PrivacySpend {
        noise_multiplier: entry.release.noise_multiplier,
        sampling_rate: entry.release.sampling_probability,
        steps: entry.release.steps as u32,
        clip_norm: entry.release.clip_norm,
        delta: entry.delta,
        epsilon_total: entry.spent_after.claimed(),
        ledger_entry_hash,
    }
}
