//! Keeping a session alive and ending it.

use serde::{Deserialize, Serialize};

/// Application-level liveness, on top of QUIC keep-alives: it proves the peer's event loop,
/// not just its socket, is alive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: u64,
    pub unix_ms: u64,
}

/// A clean goodbye, so the other side can tell a departure from a dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bye {
    pub reason: String,
}
