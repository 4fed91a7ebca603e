//! The fedfuse aggregator, as a library: the `fedfuse-server` binary is a thin shell over it.
//!
//! - [`pki`]: the platform CA and store certificates (`init`, `issue-store`, `revoke-store`).
//! - [`config`]: the aggregator's TOML configuration.

pub mod config;
pub mod pki;
