//! The `fedfuse` package holds the project's runnable examples (`examples/`), its cross-crate
//! integration tests (`tests/`) and its benchmarks (`benches/`). The library itself lives in
//! the workspace crates it re-exports.

pub use fedfuse_privacy as privacy;
#[cfg(feature = "platform")]
pub use fedfuse_protocol as protocol;
#[cfg(feature = "platform")]
pub use fedfuse_server as server;
#[cfg(feature = "platform")]
pub use fedfuse_transport as transport;
