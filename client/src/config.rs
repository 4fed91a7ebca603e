//! The store agent's TOML configuration. `fedfuse-client template` prints it with every
//! default spelled out and explained, so the file is its own documentation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fedfuse_model::fit::ModelShape;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSection {
    /// The bundle `fedfuse-server issue-store` wrote for this store; relative to the config.
    pub bundle: PathBuf,
    /// The aggregator's UDP address.
    pub aggregator: SocketAddr,
    /// Largest global model this store downloads, in MiB.
    pub max_model_mib: u64,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            bundle: PathBuf::from("store.bundle.toml"),
            aggregator: "127.0.0.1:7450".parse().expect("a valid default"),
            max_model_mib: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconnectSection {
    pub initial_ms: u64,
    pub max_ms: u64,
    /// Failed attempts in a row before giving up; 0 retries forever.
    pub attempts: u32,
}

impl Default for ReconnectSection {
    fn default() -> Self {
        Self {
            initial_ms: 500,
            max_ms: 30_000,
            attempts: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataSection {
    /// `synthetic`, `movielens:PATH` or `csv:DIR`; relative paths from the config file.
    pub source: String,
    /// For a dataset that holds several stores: whose shoppers are this store's ("" = all).
    pub store: String,
    /// Seed of the synthetic generator (ignored for other sources).
    pub synthetic_seed: u64,
    /// Seed of the evaluation split's sampled negatives.
    pub split_seed: u64,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            source: "synthetic".into(),
            store: String::new(),
            synthetic_seed: 7,
            split_seed: 2024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainingSection {
    /// `auto` (GPU if wgpu finds one, else CPU with a warning), `gpu` or `cpu`.
    pub device: String,
    pub in_batch: usize,
    pub uniform: usize,
    /// Leave the shopper's earlier items out of each prediction's softmax
    /// (`fedfuse_model::window::CandidateConfig::exclude_seen`).
    pub exclude_seen: bool,
    /// Score only the last this many positions of each training window, the rest read as
    /// context (`fedfuse_model::window::context_windows`); 0 cuts disjoint windows.
    pub window_stride: usize,
    /// Permute each run of same-timestamp training events afresh every epoch, so that the
    /// split's item-id tie-break is not learnt as an order (`fedfuse_model::window::SameTimeRuns`).
    pub shuffle_same_time: bool,
    /// Keep AdamW's moments from round to round.
    pub keep_optimizer_state: bool,
    /// Correct this store's drift from the federation (`fedfuse_model::drift`).
    pub drift_correction: bool,
    pub seed: u64,
}

impl Default for TrainingSection {
    fn default() -> Self {
        Self {
            device: "auto".into(),
            in_batch: 256,
            uniform: 256,
            exclude_seen: false,
            window_stride: 0,
            shuffle_same_time: false,
            keep_optimizer_state: true,
            drift_correction: false,
            seed: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrivacyMode {
    None,
    /// User-level DP-SGD inside the store (one shopper = one privacy unit).
    Shopper,
    /// Client-level DP-FedAvg: the whole update clipped and noised here.
    Store,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacySection {
    pub mode: PrivacyMode,
    pub epsilon_max: f64,
    pub delta: f64,
    pub noise_multiplier: f64,
    pub clip_norm: f64,
    /// DP-SGD: expected shoppers per step.
    pub expected_batch: f64,
    /// The hash-chained ledger; relative to the config file.
    pub ledger: PathBuf,
}

impl Default for PrivacySection {
    fn default() -> Self {
        Self {
            mode: PrivacyMode::None,
            epsilon_max: 8.0,
            delta: 1e-4,
            noise_multiplier: 1.0,
            clip_norm: 1.0,
            expected_batch: 32.0,
            ledger: PathBuf::from("privacy.ledger.jsonl"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    pub agent: AgentSection,
    pub reconnect: ReconnectSection,
    pub data: DataSection,
    pub model: ModelShape,
    pub training: TrainingSection,
    pub privacy: PrivacySection,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {detail}")]
    Parse { path: PathBuf, detail: String },
}

impl AgentConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut c: Self = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        c.model.check().map_err(|detail| ConfigError::Parse {
            path: path.to_owned(),
            detail,
        })?;
        if c.training.window_stride > c.model.max_len {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                detail: format!(
                    "[training] window_stride {} is more than [model] max_len {}",
                    c.training.window_stride, c.model.max_len
                ),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut c.agent.bundle, &mut c.privacy.ledger] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some((kind, rest)) = c.data.source.split_once(':')
            && Path::new(rest).is_relative()
        {
            c.data.source = format!("{kind}:{}", base.join(rest).display());
        }
        Ok(c)
    }

    /// The configuration as TOML, every field commented.
    pub fn to_commented_toml(&self) -> String {
        let (a, r, d, m, t, p) = (
            &self.agent,
            &self.reconnect,
            &self.data,
            &self.model,
            &self.training,
            &self.privacy,
        );
        let mode = match p.mode {
            PrivacyMode::None => "none",
            PrivacyMode::Shopper => "shopper",
            PrivacyMode::Store => "store",
        };
        format!(
            r#"# fedfuse store agent configuration, written by `fedfuse-client template`.

[agent]
# The bundle `fedfuse-server issue-store` wrote for this store: its private key, its
# certificate and the platform CA. Relative paths are taken from this file's directory.
bundle = "{bundle}"
# The aggregator's UDP address (its config's [server] listen).
aggregator = "{aggregator}"
# Largest global model this store will download, in MiB.
max_model_mib = {max_model_mib}

[reconnect]
# After a network loss the store reconnects with exponential backoff (plus up to 25% jitter)
# from initial_ms to max_ms; the aggregator offers the current round again.
initial_ms = {initial_ms}
max_ms = {max_ms}
# Failed attempts in a row before giving up; 0 retries forever.
attempts = {attempts}

[data]
# The store's interactions and catalog: `synthetic` (the built-in generator), `movielens:PATH`
# (a MovieLens-100K folder) or `csv:DIR` (interactions.csv, catalog.csv, shoppers.csv).
source = "{source}"
# When the data holds several stores (synthetic: store-00 … store-10; MovieLens by ZIP digit:
# zip-0 … zip-9, zip-other; a shoppers.csv with a store column): the one whose shoppers are this
# store's. Empty: every shopper in the data.
store = "{store}"
synthetic_seed = {synthetic_seed}
# Seed of the 99 sampled negatives of the evaluation split.
split_seed = {split_seed}

[model]
# Must match the aggregator's model: an offered model of another shape is refused by tensor.
{model_keys}
[training]
# `auto` (the GPU through wgpu if an adapter exists, else the CPU with a warning), `gpu`, `cpu`.
device = "{device}"
# Negatives per batch: draws from the batch's own targets and uniform draws from the catalog
# (log-q corrected). When the two cover the catalog (in_batch + uniform >= its items), the loss
# is the exact softmax over every item instead: on MovieLens-100K's 1,682 items it federated
# ahead of the sampled one in two of three seeds, at about twice the time a step (BENCHMARKS.md).
in_batch = {in_batch}
uniform = {uniform}
# true leaves the shopper's earlier items out of each prediction's softmax (the target
# excepted): recommendations never include them, so a model trained to push them down spends
# capacity on scores that are never used. DP-SGD rounds too (each shopper's mask comes from
# that shopper's own history, so the privacy charged does not change).
exclude_seen = {exclude_seen}
# Above 0: every training window reads [model] max_len items and scores only its last
# window_stride of them, so each prediction trains from at least max_len - window_stride items
# of history, as it is served (costs max_len / window_stride times the passes). 0 scores every
# position of disjoint windows, the first ones from a single item.
window_stride = {window_stride}
# Events at the same second are ordered by item id in the split; true permutes each such run
# afresh every epoch, so the model learns the shopper's taste rather than that order (the order
# inside a second says nothing about the shopper). DP-SGD rounds reorder each sampled shopper.
shuffle_same_time = {shuffle_same_time}
# Keep AdamW's moments from round to round (they are the store's own, never sent).
keep_optimizer_state = {keep}
# Correct this store's drift from the federation in non-private rounds: after every local step,
# add lr × (the global model's last move − this store's own, per step), SCAFFOLD's control
# variates from what the store already holds (nothing more is sent). BENCHMARKS.md has what it
# measured on MovieLens-100K.
drift_correction = {drift}
seed = {seed}

[privacy]
# none | shopper (user-level DP-SGD inside the store: every shopper's whole contribution is
# clipped and noised) | store (client-level DP-FedAvg: the whole update clipped and noised here).
mode = "{mode}"
# The store never spends more than ε = epsilon_max at δ = delta; a round that would pass it is
# refused, and the agent says why and leaves.
epsilon_max = {epsilon_max}
delta = {delta:e}
# Noise standard deviation over the clip norm, and the clip norm (per shopper or per update).
noise_multiplier = {noise_multiplier}
clip_norm = {clip_norm}
# DP-SGD: expected shoppers per step (the sampling rate is this over the store's shoppers).
expected_batch = {expected_batch}
# Hash-chained ledger of every release, fsynced before the release; auditors replay it.
ledger = "{ledger}"
"#,
            bundle = a.bundle.display(),
            aggregator = a.aggregator,
            max_model_mib = a.max_model_mib,
            initial_ms = r.initial_ms,
            max_ms = r.max_ms,
            attempts = r.attempts,
            source = d.source,
            store = d.store,
            synthetic_seed = d.synthetic_seed,
            split_seed = d.split_seed,
            model_keys = m.commented_toml(),
            device = t.device,
            in_batch = t.in_batch,
            uniform = t.uniform,
            exclude_seen = t.exclude_seen,
            window_stride = t.window_stride,
            shuffle_same_time = t.shuffle_same_time,
            keep = t.keep_optimizer_state,
            drift = t.drift_correction,
            seed = t.seed,
            epsilon_max = p.epsilon_max,
            delta = p.delta,
            noise_multiplier = p.noise_multiplier,
            clip_norm = p.clip_norm,
            expected_batch = p.expected_batch,
            ledger = p.ledger.display(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commented_template_parses_back_to_the_defaults() {
        let c = AgentConfig::default();
        let text = c.to_commented_toml();
        let back: AgentConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        // Settings away from their defaults are written out too.
        let mut c = AgentConfig::default();
        c.training.shuffle_same_time = true;
        c.training.window_stride = 25;
        let back: AgentConfig = toml::from_str(&c.to_commented_toml()).unwrap();
        assert_eq!(back, c);
        assert!(
            toml::from_str::<AgentConfig>("[agent]\nbundel = \"x\"\n").is_err(),
            "typos are refused"
        );
    }

    #[test]
    fn a_model_section_no_layer_could_build_is_refused_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.toml");
        for (model, want) in [
            ("dim = 64\nheads = 3\n", "dim = 64 must be a multiple of heads = 3"),
            ("max_len = 0\n", "max_len = 0: must be at least 1"),
            ("dropout = 1.0\n", "dropout = 1 must be in [0, 1)"),
        ] {
            std::fs::write(&path, format!("[model]\n{model}")).unwrap();
            let err = AgentConfig::load(&path).unwrap_err().to_string();
            assert!(err.contains(want) && err.contains("store.toml"), "{err}");
        }
        std::fs::write(&path, "[model]\ndim = 64\nheads = 4\n").unwrap();
        assert!(AgentConfig::load(&path).is_ok());
    }

    #[test]
    fn a_window_stride_beyond_the_window_is_refused_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.toml");
        std::fs::write(&path, "[model]\nmax_len = 20\n[training]\nwindow_stride = 21\n").unwrap();
        let err = AgentConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("window_stride 21 is more than [model] max_len 20") && err.contains("store.toml"),
            "{err}"
        );
        std::fs::write(&path, "[model]\nmax_len = 20\n[training]\nwindow_stride = 20\n").unwrap();
        assert_eq!(AgentConfig::load(&path).unwrap().training.window_stride, 20);
    }
}
