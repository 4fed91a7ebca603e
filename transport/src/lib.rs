//! QUIC with mutual TLS between the aggregator and its stores.
//!
//! - [`tls`]: rustls configurations. The aggregator accepts only certificates that chain to the
//!   platform CA and are not on its revocation list; a store trusts only the platform CA and
//!   checks the aggregator's name. A store's identity is read from its certificate.
//! - [`bundle`]: a store's credentials file ([`StoreBundle`]).
//! - [`tuning`]: quinn transport settings (flow-control windows, MTU discovery, keep-alive,
//!   idle timeout), tuned for bulk model transfer.
//! - [`endpoint`]: the aggregator's listening endpoint and a store's connecting endpoint.
//! - [`connection`]: [`PeerConnection`] moves `fedfuse-protocol` messages, one QUIC stream per
//!   message, and models in chunks straight from and into one buffer.

pub mod bundle;
pub mod connection;
pub mod endpoint;
pub mod error;
mod gso;
pub mod tls;
pub mod tuning;

pub use bundle::StoreBundle;
pub use connection::PeerConnection;
pub use endpoint::{AggregatorEndpoint, StoreEndpoint};
pub use error::TransportError;
pub use tls::{Identity, TrustAnchors};
pub use tuning::TransportTuning;

/// ALPN protocol id; a peer that does not offer it is not a fedfuse peer.
pub const ALPN: &[u8] = b"fedfuse/1";
