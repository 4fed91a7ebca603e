//! The fedfuse aggregator, as a library: the `fedfuse-server` binary is a thin shell over it.
//!
//! - [`pki`]: the platform CA and store certificates (`init`, `issue-store`, `revoke-store`).
//! - [`config`]: the aggregator's TOML configuration.
//! - [`layout`], [`validate`]: the global model's tensors, and the checks an update must pass.
//! - [`aggregate`]: streaming aggregation rules and server optimisers.
//! - [`central_dp`]: client-level DP-FedAvg noised by the aggregator, charged to its own ledger.
//! - [`service`]: the async driver: QUIC sessions in, coordinator actions out, commits persisted.
//! - [`fine_tune`]: the platform's fine-tuning of the fused model on its own shoppers.
//! - [`pretrain`]: the model a new federation starts from, trained on the platform's shoppers.
//! - [`schedule`]: the learning rate the aggregator offers, round by round.
//! - [`selection`]: the model to serve, by the stores' pooled validation of each version.
//! - [`safetensors`]: model import and export for PyTorch users.
//! - [`state`]: the embedded database and model blobs, for crash-safe resumption.
//! - [`round`]: the [`round::RoundCoordinator`] state machine: events in, actions out, no I/O.

pub mod aggregate;
pub mod central_dp;
pub mod config;
pub mod fine_tune;
pub mod layout;
pub mod pki;
pub mod pretrain;
pub mod round;
pub mod safetensors;
pub mod schedule;
pub mod selection;
pub mod service;
pub mod state;
pub mod tail_average;
pub mod validate;
