//! Client-level DP-FedAvg with the noise added by the aggregator, once per round.
//!
//! Stores that trust the platform with their clipped updates (but not the world with the
//! published model) get store-level DP at a fraction of the noise local DP needs: one noise
//! draw of std z·C on the *sum* of updates instead of one per store (n draws sum to √n times
//! that). The [`RoundCoordinator`](crate::round::RoundCoordinator) clips every accepted update
//! to C and sums them; this module is the release: it charges the aggregator's own privacy
//! ledger (hash-chained, fsynced) and only then adds the exact discrete Gaussian noise, divides
//! by the fixed expected number of stores (never the realised count, which would make one
//! store's presence visible in the divisor), and moves the adaptive clip bound.
//!
//! Accounting is deliberately conservative: every round is charged as a full-participation
//! Gaussian (q = 1). The coordinator samples a fixed share of whichever stores are connected,
//! which is not Poisson sampling over a fixed population, so amplification by subsampling is
//! not claimed.

use std::path::Path;

use fedfuse_privacy::fedavg::{AdaptiveClip, on_trained, update_noise_multiplier};
use fedfuse_privacy::ledger::{Mechanism, NoiseMode, PrivacyUnit};
use fedfuse_privacy::noise::{DEFAULT_GRID_EXPONENT, GridGaussian, NoiseError, grid_inflation};
use fedfuse_privacy::{Budget, DpEvent, LedgerEntry, LedgerError, PrivacyLedger, Release, Spend};
use serde::{Deserialize, Serialize};

/// The name the aggregator's releases carry in its ledger: each protects every store at once.
pub const FEDERATION: &str = "federation";

/// `[round.central_dp]`: store-level DP on every published model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralDp {
    /// z: the noise's standard deviation over the clip bound, for the whole round (the
    /// adaptive-clipping count included).
    pub noise_multiplier: f64,
    /// C: every store's update is scaled to at most this L2 norm (the start value when
    /// adaptive).
    pub clip_norm: f64,
    /// The fixed denominator of the average: how many stores a round expects.
    pub expected_stores: f64,
    /// The federation's budget: no model is published that would bring ε above this at δ.
    pub epsilon_max: f64,
    pub delta: f64,
    /// Follow a quantile of update norms instead of a fixed C (Andrew et al. 2021).
    #[serde(default)]
    pub adaptive: Option<AdaptiveClipping>,
    /// log2 of the noise grid.
    #[serde(default = "default_grid_exponent")]
    pub grid_exponent: i32,
}

fn default_grid_exponent() -> i32 {
    DEFAULT_GRID_EXPONENT
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdaptiveClipping {
    /// γ: the share of updates that should fall within C.
    pub target_quantile: f64,
    /// η: the geometric step of C per round.
    pub learning_rate: f64,
    /// z_b: noise multiplier of the within-C count; must exceed z/2.
    pub count_noise_multiplier: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum CentralDpError {
    #[error("[round.central_dp] {0}")]
    Config(String),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Noise(#[from] NoiseError),
}

impl CentralDpError {
    /// Whether the federation's budget, not a fault, stopped the release.
    pub fn budget_spent(&self) -> bool {
        matches!(self, Self::Ledger(LedgerError::BudgetExceeded { .. }))
    }
}

impl CentralDp {
    pub fn validate(&self) -> Result<(), CentralDpError> {
        let bad = |m: String| Err(CentralDpError::Config(m));
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier > 0.0) {
            return bad(format!("noise_multiplier {} must be > 0", self.noise_multiplier));
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return bad(format!("clip_norm {} must be > 0", self.clip_norm));
        }
        if !(self.expected_stores.is_finite() && self.expected_stores >= 1.0) {
            return bad(format!("expected_stores {} must be ≥ 1", self.expected_stores));
        }
        if !(self.epsilon_max.is_finite() && self.epsilon_max > 0.0) {
            return bad(format!("epsilon_max {} must be > 0", self.epsilon_max));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return bad(format!("delta {} must lie in (0, 1)", self.delta));
        }
        if let Some(a) = &self.adaptive {
            if !((0.0..=1.0).contains(&a.target_quantile) && a.learning_rate.is_finite() && a.learning_rate > 0.0) {
                return bad(format!(
                    "adaptive: target_quantile {} must lie in [0, 1] and learning_rate {} be > 0",
                    a.target_quantile, a.learning_rate
                ));
            }
            if update_noise_multiplier(self.noise_multiplier, a.count_noise_multiplier).is_none() {
                return bad(format!(
                    "adaptive: count_noise_multiplier {} must exceed noise_multiplier / 2 = {}, or the count alone spends the round's budget",
                    a.count_noise_multiplier,
                    self.noise_multiplier / 2.0
                ));
            }
        }
        Ok(())
    }

    fn budget(&self) -> Budget {
        Budget {
            epsilon_max: self.epsilon_max,
            delta: self.delta,
        }
    }
}

/// What one release produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Released {
    /// The noised average update, ready for the server optimiser.
    pub delta: Vec<f32>,
    /// C for the next round.
    pub next_clip_norm: f64,
    /// The ledger entry, durable before the noise was drawn.
    pub entry: LedgerEntry,
}

/// The aggregator's side of central DP: its ledger, its budget, its clip bound.
pub struct CentralPrivacy {
    config: CentralDp,
    ledger: PrivacyLedger,
    dims: usize,
    /// Which coordinates the plan trains (`None`: all). The others arrive as zeros in every
    /// accepted update, so the sum's sensitivity lives on the trained ones alone and only
    /// they are noised.
    trained: Option<Vec<bool>>,
}

impl CentralPrivacy {
    /// Opens (or starts) the aggregator's ledger at `ledger_path`; a broken chain is refused.
    pub fn open(config: CentralDp, ledger_path: &Path, dims: usize) -> Result<Self, CentralDpError> {
        config.validate()?;
        Ok(Self {
            ledger: PrivacyLedger::open(ledger_path)?,
            config,
            dims,
            trained: None,
        })
    }

    /// Noise only the coordinates `trained` marks: those of the parameters the plan trains,
    /// whose updates the coordinator has checked are zero everywhere else.
    pub fn training_only(mut self, trained: Vec<bool>) -> Result<Self, CentralDpError> {
        if trained.len() != self.dims {
            return Err(CentralDpError::Config(format!(
                "a mask of {} coordinates for a model of {}",
                trained.len(),
                self.dims
            )));
        }
        if trained.iter().all(|t| *t) {
            return Ok(self);
        }
        self.trained = Some(trained);
        Ok(self)
    }

    /// Coordinates the noise covers.
    fn noised_dims(&self) -> usize {
        self.trained.as_ref().map_or(self.dims, |m| m.iter().filter(|t| **t).count())
    }

    pub fn ledger(&self) -> &PrivacyLedger {
        &self.ledger
    }

    /// The clip bound to use next: the configured one for a new federation, the last round's
    /// for a resumed one (the adaptive step after it was not recorded; it is a heuristic, the
    /// guarantee does not depend on it).
    pub fn clip_norm(&self) -> f64 {
        self.ledger
            .entries()
            .iter()
            .rev()
            .find(|e| e.release.store == FEDERATION)
            .map_or(self.config.clip_norm, |e| e.release.clip_norm)
    }

    /// What the federation has spent.
    pub fn spent(&self) -> Result<Spend, CentralDpError> {
        Ok(self.ledger.spent(FEDERATION, self.config.delta)?)
    }

    /// How many more rounds the budget allows, at most `cap`. Computed at the configured z;
    /// every real release is charged at an effective z at least that large (grid rounding only
    /// adds noise), so a round this allows never fails its charge for lack of budget.
    pub fn rounds_allowed(&self, cap: u64) -> Result<u64, CentralDpError> {
        let past: Vec<DpEvent> = self
            .ledger
            .entries()
            .iter()
            .filter(|e| e.release.store == FEDERATION)
            .map(|e| e.event.clone())
            .collect();
        let fits = |k: u64| -> Result<bool, CentralDpError> {
            let mut events = past.clone();
            events.push(DpEvent::dp_sgd(self.config.noise_multiplier, 1.0, k));
            let spend = Spend::of(&events, self.config.delta).map_err(LedgerError::from)?;
            Ok(spend.claimed() <= self.config.epsilon_max)
        };
        if !fits(1)? {
            return Ok(0);
        }
        let (mut lo, mut hi) = (1u64, cap.max(1));
        if fits(hi)? {
            return Ok(hi);
        }
        // fits(lo) and not fits(hi).
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if fits(mid)? { lo = mid } else { hi = mid }
        }
        Ok(lo)
    }

    /// Releases round `round`'s average: charges the ledger (returning only once the entry is
    /// on disk), then noises `sum` (the sum of updates each clipped to `clip_norm`) and divides
    /// by the expected number of stores. `within` holds each update's within-C bit. On any
    /// error nothing is released; a failed charge leaves the ledger as it was.
    pub fn release(&mut self, round: u64, sum: &[f32], clip_norm: f64, within: &[bool]) -> Result<Released, CentralDpError> {
        let c = &self.config;
        let z_update = match &c.adaptive {
            Some(a) => update_noise_multiplier(c.noise_multiplier, a.count_noise_multiplier)
                .ok_or_else(|| CentralDpError::Config("count noise too small".into()))?,
            None => c.noise_multiplier,
        };
        // The grid rounding moves the sensitivity a little above C: scale the noise with it so
        // the effective multiplier is at least z_update.
        let dims = self.noised_dims();
        let inflate = grid_inflation(clip_norm, dims, c.grid_exponent);
        let noise = GridGaussian::new(z_update * clip_norm * inflate, c.grid_exponent)?;
        let z_update_effective = noise.noise_multiplier(clip_norm, dims);
        let z_effective = match &c.adaptive {
            Some(a) => (z_update_effective.powi(-2) + (2.0 * a.count_noise_multiplier).powi(-2)).powf(-0.5),
            None => z_update_effective,
        };
        let release = Release {
            store: FEDERATION.into(),
            round,
            unit: PrivacyUnit::Store,
            mechanism: Mechanism::DpFedAvg,
            noise_mode: NoiseMode::Central,
            noise_multiplier: z_effective,
            sampling_probability: 1.0,
            steps: 1,
            clip_norm,
        };
        let budget = c.budget();
        let entry = self.ledger.charge(release, &budget)?;
        let mut delta = sum.to_vec();
        match &self.trained {
            None => noise.add(&mut delta)?,
            Some(mask) => on_trained(&mut delta, mask, |v| noise.add(v))?,
        }
        let inv = (1.0 / c.expected_stores) as f32;
        delta.iter_mut().for_each(|v| *v *= inv);
        let next_clip_norm = match &c.adaptive {
            Some(a) => {
                let mut ac = AdaptiveClip {
                    clip: clip_norm,
                    target_quantile: a.target_quantile,
                    learning_rate: a.learning_rate,
                    count_noise_multiplier: a.count_noise_multiplier,
                };
                ac.update(within, c.expected_stores)?
            }
            None => clip_norm,
        };
        Ok(Released {
            delta,
            next_clip_norm,
            entry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CentralDp {
        CentralDp {
            noise_multiplier: 1.0,
            clip_norm: 1.0,
            expected_stores: 4.0,
            epsilon_max: 10.0,
            delta: 1e-5,
            adaptive: None,
            grid_exponent: DEFAULT_GRID_EXPONENT,
        }
    }

    #[test]
    fn the_entry_is_durable_before_the_noised_average_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let mut dp = CentralPrivacy::open(config(), &path, 10_000).unwrap();
        let sum = vec![0.5f32; 10_000];
        let released = dp.release(1, &sum, 1.0, &[true; 3]).unwrap();
        // A fresh reader finds the entry; the chain verifies.
        let on_disk = fedfuse_privacy::ledger::verify(&path).unwrap();
        assert_eq!(on_disk, vec![released.entry.clone()]);
        let e = &on_disk[0];
        assert_eq!(
            (e.release.unit, e.release.mechanism, e.release.noise_mode),
            (PrivacyUnit::Store, Mechanism::DpFedAvg, NoiseMode::Central)
        );
        assert!(e.release.noise_multiplier >= 1.0 && e.release.noise_multiplier < 1.01);
        // Mean 0.5/4, noise std z·C/4 = 0.25 per coordinate.
        let n = released.delta.len() as f64;
        let mean = released.delta.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
        let var = released.delta.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 0.125).abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 0.25).abs() < 0.01, "std {}", var.sqrt());
    }

    /// A plan training part of the model: the frozen coordinates come out as the sum left
    /// them (zero, as every accepted update sends them), the trained ones noised at the same
    /// standard deviation as without a mask.
    #[test]
    fn with_a_trained_mask_only_the_trained_coordinates_are_noised() {
        let dir = tempfile::tempdir().unwrap();
        let mask: Vec<bool> = (0..10_000).map(|i| i % 4 == 0).collect();
        let mut dp = CentralPrivacy::open(config(), &dir.path().join("ledger.jsonl"), 10_000)
            .unwrap()
            .training_only(mask.clone())
            .unwrap();
        let sum: Vec<f32> = mask.iter().map(|t| if *t { 0.5 } else { 0.0 }).collect();
        let released = dp.release(1, &sum, 1.0, &[true; 3]).unwrap();
        let (trained, frozen): (Vec<_>, Vec<_>) = released.delta.iter().zip(&mask).partition(|(_, t)| **t);
        assert!(frozen.iter().all(|(v, _)| **v == 0.0), "a frozen coordinate was noised");
        let n = trained.len() as f64;
        assert_eq!(n, 2500.0);
        let mean = trained.iter().map(|(v, _)| f64::from(**v)).sum::<f64>() / n;
        let sd = (trained.iter().map(|(v, _)| (f64::from(**v) - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!((mean - 0.125).abs() < 0.02, "mean {mean}");
        assert!((sd - 0.25).abs() < 0.02, "std {sd}");
        let wrong = CentralPrivacy::open(config(), &dir.path().join("other.jsonl"), 10).unwrap();
        assert!(wrong.training_only(vec![true; 9]).is_err());
    }

    #[test]
    fn an_unwritable_ledger_releases_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // The ledger's folder does not exist: opening finds no entries, the charge cannot write.
        let path = dir.path().join("gone").join("ledger.jsonl");
        let mut dp = CentralPrivacy::open(config(), &path, 2).unwrap();
        let err = dp.release(1, &[0.1, 0.2], 1.0, &[true]).unwrap_err();
        assert!(matches!(err, CentralDpError::Ledger(LedgerError::Io { .. })), "{err}");
        assert!(!err.budget_spent());
        assert!(dp.ledger().entries().is_empty());
        assert!(!path.exists());
    }

    #[test]
    fn the_budget_allows_what_the_accountant_says_and_the_charge_agrees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let tight = CentralDp {
            epsilon_max: 3.0,
            ..config()
        };
        let mut dp = CentralPrivacy::open(tight.clone(), &path, 4).unwrap();
        let allowed = dp.rounds_allowed(1000).unwrap();
        // z = 1, δ = 1e-5, ε ≤ 3: a Gaussian composed k times is a Gaussian at z/√k; ε(z=1) ≈ 4.4
        // already exceeds 3, so not even one round fits.
        assert_eq!(allowed, 0);
        let roomy = CentralDp {
            noise_multiplier: 5.0,
            ..tight
        };
        let mut dp2 = CentralPrivacy::open(roomy, &dir.path().join("l2.jsonl"), 4).unwrap();
        let allowed = dp2.rounds_allowed(1000).unwrap();
        assert!((2..1000).contains(&allowed), "{allowed}");
        for r in 0..allowed {
            dp2.release(r + 1, &[0.0; 4], 1.0, &[true]).unwrap();
        }
        assert_eq!(dp2.rounds_allowed(1000).unwrap(), 0);
        let err = dp2.release(allowed + 1, &[0.0; 4], 1.0, &[true]).unwrap_err();
        assert!(err.budget_spent(), "{err}");
        assert_eq!(dp2.ledger().entries().len() as u64, allowed);
        assert!(dp2.spent().unwrap().claimed() <= 3.0);
        // A resumed federation sees the same spend.
        let reopened = CentralPrivacy::open(dp2.config.clone(), &dir.path().join("l2.jsonl"), 4).unwrap();
        assert_eq!(reopened.rounds_allowed(1000).unwrap(), 0);
        assert!(dp.release(1, &[0.0; 4], 1.0, &[true]).unwrap_err().budget_spent());
    }

    #[test]
    fn adaptive_clipping_moves_the_bound_and_charges_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = CentralDp {
            noise_multiplier: 2.0,
            epsilon_max: 50.0,
            adaptive: Some(AdaptiveClipping {
                target_quantile: 0.5,
                learning_rate: 0.2,
                count_noise_multiplier: 1.5,
            }),
            expected_stores: 400.0,
            ..config()
        };
        let mut dp = CentralPrivacy::open(cfg, &dir.path().join("l.jsonl"), 4).unwrap();
        // Every update was clipped (all beyond C): C grows by about e^(0.2·0.5), the count's
        // noise (std 1.5 of 400) moving that by well under 1%.
        let r = dp.release(1, &[0.0; 4], 1.0, &[false; 400]).unwrap();
        assert!((r.next_clip_norm - 0.1f64.exp()).abs() < 0.01, "{}", r.next_clip_norm);
        // The round as a whole is charged at (at least) the configured total z.
        let z = r.entry.release.noise_multiplier;
        assert!((2.0..2.02).contains(&z), "{z}");
        assert_eq!(dp.clip_norm(), 1.0);
        let bad = CentralDp {
            adaptive: Some(AdaptiveClipping {
                target_quantile: 0.5,
                learning_rate: 0.2,
                // z_b ≤ z/2: the count alone would spend the round's budget.
                count_noise_multiplier: 0.4,
            }),
            ..config()
        };
        assert!(bad.validate().is_err());
    }
}
