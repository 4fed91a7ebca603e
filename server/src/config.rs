//! The aggregator's TOML configuration. `init` writes it with every default spelled out and
//! explained, so the file is its own documentation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fedfuse_transport::TransportTuning;
use serde::{Deserialize, Serialize};

use crate::round::RoundPolicy;

pub const DEFAULT_AGGREGATOR_NAME: &str = "aggregator.fedfuse.local";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7450";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    pub listen: SocketAddr,
    pub name: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            name: DEFAULT_AGGREGATOR_NAME.into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PkiSection {
    /// The platform directory holding the CA, the aggregator's key and the CRL; relative
    /// paths are taken from the config file's directory.
    pub dir: PathBuf,
}

impl Default for PkiSection {
    fn default() -> Self {
        Self { dir: PathBuf::from(".") }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateSection {
    /// Directory of the state database and model blobs; relative to the config file.
    pub dir: PathBuf,
}

impl Default for StateSection {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("state"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub server: ServerSection,
    pub pki: PkiSection,
    pub state: StateSection,
    pub transport: TransportTuning,
    pub round: RoundPolicy,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
}

impl ServerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Self = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if config.pki.dir.is_relative() {
            config.pki.dir = base.join(&config.pki.dir);
        }
        if config.state.dir.is_relative() {
            config.state.dir = base.join(&config.state.dir);
        }
        Ok(config)
    }

    /// The configuration as TOML, every field commented.
    pub fn to_commented_toml(&self) -> String {
        let t = &self.transport;
        let r = &self.round;
        let inline = |v: &dyn erased::Inline| v.inline();
        format!(
            r#"# fedfuse aggregator configuration, written by `fedfuse-server init`.
# Every value below is the default unless `init` was told otherwise.

[server]
# UDP address the aggregator's QUIC endpoint listens on.
listen = "{listen}"
# The name stores check the aggregator's certificate against; it must be one of the names
# `init` put in aggregator.pem (see `init --aggregator-name` and `--san`).
name = "{name}"

[pki]
# Directory with ca.pem, aggregator.pem/.key and crl.pem; relative to this file.
dir = "{dir}"

[state]
# The aggregator's database (rounds, stores, model versions) and model blobs; relative to this
# file. A restarted aggregator resumes from the last round committed here.
dir = "{state}"

[transport]
# Per-stream and per-connection receive windows in bytes. Large windows let one connection
# carry a model update at full speed; they bound what a peer can make us buffer.
stream_window = {sw}
connection_window = {cw}
# Bytes in flight unacknowledged, across all streams.
send_window = {snd}
# Messages (one stream each) a peer may have open toward us at once.
max_concurrent_streams = {mcs}
# Starting MTU (1200 is safe everywhere) and the highest MTU discovery may probe; discovery
# keeps only what the path acknowledges.
initial_mtu = {imtu}
mtu_discovery_upper_bound = {umtu}
# Hand large sends to the kernel in one call (UDP GSO) where supported.
segmentation_offload = {gso}
# UDP socket buffers in bytes; the kernel caps them at net.core.rmem_max / wmem_max. Too small a
# buffer drops bursts of large datagrams, which MTU discovery then mistakes for a black hole.
socket_buffer_bytes = {sock}
# Keep-alive probe interval and idle timeout, in milliseconds.
keep_alive_ms = {ka}
idle_timeout_ms = {idle}

[round]
# Share of connected stores offered each round (never fewer than `quorum`).
sample_fraction = {frac}
# Connected stores needed before a round starts.
min_stores = {min}
# Updates needed to aggregate; a round with fewer by its deadline fails and is retried.
quorum = {quorum}
# Milliseconds from offer to deadline.
deadline_ms = {deadline}
# Rounds to run; 0 runs until stopped.
rounds = {rounds}
# Seeds the choice of participants.
seed = {seed}
# How updates are combined: {{ rule = "example_weighted_mean" }}, {{ rule = "uniform_mean",
# expected_stores = N }} (with DP: a fixed denominator), {{ rule = "coordinate_median" }},
# {{ rule = "trimmed_mean", trim = 0.1 }}.
aggregation = {aggregation}
# How the aggregate is applied: {{ optimizer = "fed_avg", lr = 1.0 }}, or fed_adagrad / fed_adam /
# fed_yogi with lr, beta1, (beta2,) tau (Reddi et al. 2021).
optimizer = {optimizer}
# Reject updates whose L2 norm exceeds this (uncomment to enable).
{norm}
# Fine-tune each new global model on platform data before the next round.
fine_tune = {fine_tune}
"#,
            listen = self.server.listen,
            name = self.server.name,
            dir = self.pki.dir.display(),
            state = self.state.dir.display(),
            sw = t.stream_window,
            cw = t.connection_window,
            snd = t.send_window,
            mcs = t.max_concurrent_streams,
            imtu = t.initial_mtu,
            umtu = t.mtu_discovery_upper_bound,
            gso = t.segmentation_offload,
            sock = t.socket_buffer_bytes,
            ka = t.keep_alive_ms,
            idle = t.idle_timeout_ms,
            frac = r.sample_fraction,
            min = r.min_stores,
            quorum = r.quorum,
            deadline = r.deadline_ms,
            rounds = r.rounds,
            seed = r.seed,
            aggregation = inline(&r.aggregation),
            optimizer = inline(&r.optimizer),
            norm = r
                .norm_bound
                .map_or("# norm_bound = 10.0".to_string(), |b| format!("norm_bound = {b:?}")),
            fine_tune = r.fine_tune,
        )
    }
}

/// Tagged enums written as TOML inline tables (`{ rule = "…" }`), which `toml` only emits for
/// values nested in a table.
mod erased {
    pub trait Inline {
        fn inline(&self) -> String;
    }

    impl<T: serde::Serialize> Inline for T {
        fn inline(&self) -> String {
            #[derive(serde::Serialize)]
            struct Wrap<'a, T> {
                v: &'a T,
            }
            let text = toml::to_string(&Wrap { v: self }).expect("a policy value serialises");
            // `[v]\nkey = value\n…` → `{ key = value, … }`
            let fields: Vec<&str> = text.lines().skip(1).filter(|l| !l.trim().is_empty()).collect();
            format!("{{ {} }}", fields.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::AggregationRule;
    use crate::aggregate::optimizer::ServerOptimizerConfig;

    #[test]
    fn the_commented_template_parses_back_to_the_same_config() {
        let mut config = ServerConfig::default();
        config.server.name = "agg.example".into();
        config.transport.stream_window = 12345;
        config.round.aggregation = AggregationRule::TrimmedMean { trim: 0.1 };
        config.round.optimizer = ServerOptimizerConfig::FedAdam {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3,
        };
        config.round.norm_bound = Some(5.0);
        let parsed: ServerConfig = toml::from_str(&config.to_commented_toml()).unwrap();
        assert_eq!(parsed, config);
        let defaults: ServerConfig = toml::from_str(&ServerConfig::default().to_commented_toml()).unwrap();
        assert_eq!(defaults, ServerConfig::default());
    }

    #[test]
    fn unknown_keys_are_errors_not_silently_ignored() {
        let err = toml::from_str::<ServerConfig>("[server]\nlisten_addr = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }
}
