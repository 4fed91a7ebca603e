//! Differential privacy for fedfuse: what a release costs, and the record that proves it.
//!
//! - [`event`]: [`DpEvent`], a release described the way Google's `dp_accounting` describes it
//!   (Gaussian, Poisson-sampled, self-composed, composed), so a Python auditor can replay it;
//! - [`rdp`]: the Rényi-DP accountant for the Poisson-subsampled Gaussian (Mironov, Talwar,
//!   Zhang 2019) with the improved RDP → (ε, δ) conversion (Canonne, Kamath, Steinke 2020);
//! - [`pld`]: the privacy-loss-distribution accountant (connect-the-dots discretisation of
//!   Doroshenko et al. 2022, FFT composition), tighter than RDP;
//! - [`fedavg`]: client-level DP-FedAvg: clipping, central or local noise, adaptive clipping;
//! - [`noise`]: exact discrete Gaussian noise on a 2^k grid, in fixed-width integers, fast;
//! - [`plan`]: the inverse, the noise multiplier needed for a target (ε, δ);
//! - [`audit`]: an auditor's independent recomputation of a ledger;
//! - [`ledger`]: the hash-chained, fsynced JSON-lines [`PrivacyLedger`] and the budget check
//!   that makes a store whose budget is spent refuse to train.
//!
//! Both accountants bound the *continuous* Gaussian mechanism. fedfuse samples an exact
//! discrete Gaussian instead (floating-point samplers leak, Mironov 2012); Canonne, Kamath and
//! Steinke (2020) show the discrete Gaussian's Rényi and hockey-stick divergences are no larger
//! than the continuous one's at the same σ for integer-valued sensitivity, and Kairouz, Liu and
//! Steinke (2021) extend this to the subsampled, composed setting, so the continuous accountants
//! remain valid upper bounds once the grid rounding is charged to the sensitivity.

pub mod audit;
pub mod event;
pub mod fedavg;
pub mod ledger;
pub mod noise;
pub mod plan;
pub mod pld;
pub mod rdp;
mod special;

pub use event::DpEvent;
pub use ledger::{Budget, LedgerEntry, LedgerError, PrivacyLedger, Release, Spend};

/// Errors from accounting itself (as opposed to the ledger's I/O).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AccountingError {
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("no finite bound: {0}")]
    Unbounded(String),
}
