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

/// What the platform serves besides the latest model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSection {
    /// Average the last this many trained models after every round (0: none).
    pub tail_average: usize,
}

/// What every round asks the stores to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanSection {
    pub local_epochs: u32,
    /// When above 0, every store takes exactly this many optimiser steps a round instead of
    /// `local_epochs` passes.
    pub local_steps: u32,
    pub learning_rate: f32,
    /// Windows per local batch.
    pub batch_size: u32,
    /// `f32`, `f16` or `int8`.
    pub encoding: String,
    /// FedProx μ (0: plain local training).
    pub proximal_mu: f32,
    /// `cosine` (from `learning_rate`, after `hold_rounds` at it, down to `min_learning_rate`
    /// at the end of `[round] rounds`) or `constant`.
    pub learning_rate_schedule: String,
    pub min_learning_rate: f32,
    /// Rounds at the full `learning_rate` before the cosine starts.
    pub hold_rounds: u64,
    /// Path prefixes of the parameters the stores train (empty: all of them).
    pub trainable: Vec<String>,
    /// The weakest DP every store must apply (`[plan.dp]`); none when absent.
    pub dp: Option<PlanDpSection>,
}

/// `[plan.dp]`: what the platform requires of every store's local DP. A store may always do
/// more; one that applies less, or none, refuses the round instead of training, and an update
/// that carries no privacy spend is rejected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanDpSection {
    /// `shopper` (user-level DP-SGD inside the store) or `store` (the store's whole update).
    pub unit: String,
    pub min_noise_multiplier: f64,
    pub max_clip_norm: f64,
    /// Largest Poisson sampling rate of DP-SGD (1: no limit).
    #[serde(default = "one")]
    pub max_sampling_rate: f64,
    pub delta: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for PlanSection {
    fn default() -> Self {
        Self {
            local_epochs: 1,
            local_steps: 0,
            learning_rate: 1e-3,
            batch_size: 32,
            encoding: "f32".into(),
            proximal_mu: 0.0,
            learning_rate_schedule: "constant".into(),
            min_learning_rate: 1e-4,
            hold_rounds: 0,
            trainable: Vec::new(),
            dp: None,
        }
    }
}

impl PlanSection {
    /// What each round asks of a store: `local_steps` steps when set, else `local_epochs`.
    pub fn local_work(&self) -> fedfuse_protocol::msgs::LocalWork {
        fedfuse_protocol::msgs::LocalWork::of(self.local_epochs, self.local_steps)
    }

    pub fn schedule(&self) -> Result<crate::schedule::LearningRateSchedule, String> {
        use crate::schedule::LearningRateSchedule;
        match self.learning_rate_schedule.as_str() {
            "constant" => Ok(LearningRateSchedule::Constant),
            "cosine" => {
                let schedule = LearningRateSchedule::Cosine {
                    min_learning_rate: self.min_learning_rate,
                    hold_rounds: self.hold_rounds,
                };
                schedule.check(self.learning_rate).map_err(|e| format!("[plan] {e}"))?;
                Ok(schedule)
            }
            other => Err(format!("[plan] learning_rate_schedule {other:?}: use cosine or constant")),
        }
    }

    /// The FedProx μ an offer carries: none for 0 (plain local training). A negative or NaN μ
    /// is refused here, since a store would otherwise train without the term it was asked for
    /// and nobody would notice.
    pub fn proximal_mu(&self) -> Result<Option<f32>, String> {
        let mu = self.proximal_mu;
        if !(mu.is_finite() && mu >= 0.0) {
            return Err(format!("[plan] proximal_mu = {mu} must be a number ≥ 0"));
        }
        Ok((mu > 0.0).then_some(mu))
    }

    /// The DP requirement every offer carries, checked for sense.
    pub fn dp_requirement(&self) -> Result<Option<fedfuse_protocol::msgs::DpRequirement>, String> {
        use fedfuse_protocol::msgs::{DpRequirement, NoiseMode, PrivacyUnit};
        let Some(dp) = &self.dp else { return Ok(None) };
        let unit = match dp.unit.as_str() {
            "shopper" => PrivacyUnit::Shopper,
            "store" => PrivacyUnit::Store,
            other => return Err(format!("[plan.dp] unit {other:?}: use shopper or store")),
        };
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(format!("[plan.dp] {name} = {v} must be a positive number"))
            }
        };
        let max_sampling_rate = positive("max_sampling_rate", dp.max_sampling_rate)?;
        if max_sampling_rate > 1.0 {
            return Err(format!("[plan.dp] max_sampling_rate = {max_sampling_rate} must be at most 1"));
        }
        let delta = positive("delta", dp.delta)?;
        if delta >= 1.0 {
            return Err(format!("[plan.dp] delta = {delta} must be below 1"));
        }
        Ok(Some(DpRequirement {
            unit,
            noise_mode: NoiseMode::Local,
            min_noise_multiplier: positive("min_noise_multiplier", dp.min_noise_multiplier)?,
            max_clip_norm: positive("max_clip_norm", dp.max_clip_norm)?,
            max_sampling_rate,
            delta,
        }))
    }

    pub fn update_encoding(&self) -> Result<fedfuse_protocol::tensor::UpdateEncoding, String> {
        use fedfuse_protocol::tensor::{UpdateEncoding, ValueEncoding};
        Ok(UpdateEncoding::Dense(match self.encoding.as_str() {
            "f32" => ValueEncoding::F32,
            "f16" => ValueEncoding::F16,
            "int8" => ValueEncoding::Int8,
            other => return Err(format!("[plan] encoding {other:?}: use f32, f16 or int8")),
        }))
    }
}

/// The platform's own data: the catalog every store's item ids refer to and, for pretraining and
/// fine-tuning, the shoppers the platform owns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlatformSection {
    /// `synthetic`, `movielens:PATH` or `csv:DIR`; relative paths from this file.
    pub data: String,
    pub synthetic_seed: u64,
    /// The store of the data whose shoppers are the platform's; when the data has no such
    /// store, `hold_out` of all shoppers become it.
    pub store: String,
    pub hold_out: f64,
    /// Fine-tuning of the fusion after each aggregation (with [round] fine_tune = true).
    pub fine_tune_epochs: usize,
    pub fine_tune_learning_rate: f64,
}

impl Default for PlatformSection {
    fn default() -> Self {
        Self {
            data: "synthetic".into(),
            synthetic_seed: 7,
            store: fedfuse_data::partition::PLATFORM_STORE.into(),
            hold_out: 0.1,
            fine_tune_epochs: 2,
            fine_tune_learning_rate: 1e-3,
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
    pub plan: PlanSection,
    pub model: fedfuse_model::fit::ModelShape,
    pub platform: PlatformSection,
    pub serve: ServeSection,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{path}: {detail}")]
    Invalid { path: PathBuf, detail: String },
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
        config.model.check().map_err(|detail| ConfigError::Invalid {
            path: path.to_owned(),
            detail,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        if config.pki.dir.is_relative() {
            config.pki.dir = base.join(&config.pki.dir);
        }
        if config.state.dir.is_relative() {
            config.state.dir = base.join(&config.state.dir);
        }
        if let Some((kind, rest)) = config.platform.data.split_once(':')
            && Path::new(rest).is_relative()
        {
            config.platform.data = format!("{kind}:{}", base.join(rest).display());
        }
        Ok(config)
    }

    /// The configuration as TOML, every field commented.
    pub fn to_commented_toml(&self) -> String {
        let t = &self.transport;
        let r = &self.round;
        let (pl, m, pf) = (&self.plan, &self.model, &self.platform);
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
# How the aggregate is applied: {{ optimizer = "fed_avg", lr = 1.0 }}; {{ optimizer = "fed_avg_m",
# lr = 1.0, momentum = 0.9, nesterov = false }} (server momentum, Hsu et al. 2019; nesterov = true
# looks ahead along the velocity, DiLoCo's outer step with lr = 0.7); or fed_adagrad / fed_adam /
# fed_yogi with lr, beta1, (beta2,) tau (Reddi et al. 2021).
optimizer = {optimizer}
# Reject updates whose L2 norm exceeds this (uncomment to enable).
{norm}
# In an example-weighted mean a store's update weighs at most this many examples: its count is
# its own claim, which the aggregator cannot check, so without a cap one store can outweigh the
# rest (uncomment to enable).
{max_examples}
# Fine-tune each new global model's fusion (α, content scale, MLP head) on the platform's own
# shoppers ([platform]) before the round commits; kept only if their validation improves.
fine_tune = {fine_tune}

# Store-level DP on every published model (client-level DP-FedAvg, Andrew et al. 2021): each
# update is clipped to clip_norm, the sum gets exact discrete Gaussian noise of std
# noise_multiplier × clip_norm once, here, and is divided by the fixed expected_stores
# (`aggregation` above is then not used: DP needs every store to weigh the same). Every
# round is charged to <state dir>/privacy-ledger.jsonl (fsynced) before its model exists, at
# q = 1 (no amplification by sampling is claimed); when the next round would bring ε above
# epsilon_max at delta, the federation stops. `adaptive` makes clip_norm follow a quantile of
# update norms; its noised count is charged inside noise_multiplier. Audit with
# `cargo run --example dp_accounting -- --ledger <state dir>/privacy-ledger.jsonl`.
{central}
[plan]
# What each round asks of the stores: local epochs over their shoppers, AdamW learning rate,
# windows per batch, and how the update travels (f32, f16 or int8 with unbiased rounding).
local_epochs = {le}
# When above 0, every store takes exactly this many optimiser steps a round instead of
# local_epochs passes: equal work whatever its size.
local_steps = {ls}
learning_rate = {lr:?}
batch_size = {bs}
encoding = "{enc}"
# FedProx proximal term μ (0: plain local training).
proximal_mu = {mu:?}
# The rate offered round by round: "cosine" keeps learning_rate for hold_rounds rounds, then
# decays it to min_learning_rate after [round] rounds (constant when rounds = 0), as a
# centralized trainer's schedule would; "constant" offers learning_rate every round. FedAvg
# keeps improving at the full rate for long, so hold most of the run (BENCHMARKS.md). Every
# offered rate must stay in (0, 1]: learning_rate at most 1, min_learning_rate above 0.
learning_rate_schedule = "{lrs}"
min_learning_rate = {minlr:?}
hold_rounds = {hold}
# Parameters the stores train, as path prefixes ("alpha", "content_scale", "head_",
# "sequence.", "items.id"); [] trains all. Under user-level DP a store's noise grows with the
# square root of the coordinates it trains, so with a model the platform pretrained
# (`fedfuse-server pretrain`, then `run --init-model`) ["alpha", "content_scale", "head_"]
# lets private stores adapt the fusion alone and keep the rest as pretrained.
trainable = {trainable:?}
{plan_dp}
[model]
# The fused recommender every store trains; stores must configure the same [model].
{model_keys}
[platform]
# The platform's data: the catalog every item id refers to (`synthetic`, `movielens:PATH` or
# `csv:DIR`; relative to this file) and the shoppers the platform owns, which `pretrain` trains
# the starting model on and fine-tuning tunes the fusion on: the data's store named `store`, or
# else a `hold_out` share of all shoppers.
data = "{pdata}"
synthetic_seed = {pseed}
store = "{pstore}"
hold_out = {phold:?}
fine_tune_epochs = {fte}
fine_tune_learning_rate = {ftlr:?}

[serve]
# After every round, average the last this many trained models into one more model to serve
# (`export --model tail-average`): the global model jumps from round to round around where it
# has converged, and the average of its last iterates lands nearer the middle. It costs the
# stores nothing and never changes what they train from. 0 keeps no average.
tail_average = {tail}
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
            max_examples = r
                .max_examples_per_store
                .map_or("# max_examples_per_store = 100000".to_string(), |m| {
                    format!("max_examples_per_store = {m}")
                }),
            fine_tune = r.fine_tune,
            central = central_dp_block(r.central_dp.as_ref()),
            le = pl.local_epochs,
            ls = pl.local_steps,
            lr = pl.learning_rate,
            bs = pl.batch_size,
            enc = pl.encoding,
            mu = pl.proximal_mu,
            lrs = pl.learning_rate_schedule,
            minlr = pl.min_learning_rate,
            hold = pl.hold_rounds,
            trainable = pl.trainable,
            plan_dp = plan_dp_block(pl.dp.as_ref()),
            model_keys = m.commented_toml(),
            pdata = pf.data,
            pseed = pf.synthetic_seed,
            pstore = pf.store,
            phold = pf.hold_out,
            fte = pf.fine_tune_epochs,
            ftlr = pf.fine_tune_learning_rate,
            tail = self.serve.tail_average,
        )
    }
}

/// `[round.central_dp]` as TOML: the configured values, or a commented example.
fn plan_dp_block(dp: Option<&PlanDpSection>) -> String {
    let intro = "# Local DP every store must apply: unit \"shopper\" (user-level DP-SGD) or \"store\" (its\n\
                 # whole update clipped and noised before it leaves). A store may do more; one that\n\
                 # applies less or none refuses the round, and an update without a privacy spend is\n\
                 # rejected. Absent: no requirement.\n";
    match dp {
        None => format!(
            "{intro}# [plan.dp]\n# unit = \"store\"\n# min_noise_multiplier = 1.0\n# max_clip_norm = 1.0\n\
             # max_sampling_rate = 1.0\n# delta = 1e-5\n"
        ),
        Some(d) => format!(
            "{intro}[plan.dp]\nunit = \"{}\"\nmin_noise_multiplier = {:?}\nmax_clip_norm = {:?}\n\
             max_sampling_rate = {:?}\ndelta = {:?}\n",
            d.unit, d.min_noise_multiplier, d.max_clip_norm, d.max_sampling_rate, d.delta
        ),
    }
}

fn central_dp_block(dp: Option<&crate::central_dp::CentralDp>) -> String {
    let Some(dp) = dp else {
        return "# [round.central_dp]\n# noise_multiplier = 1.0\n# clip_norm = 1.0\n# expected_stores = 10.0\n\
                # epsilon_max = 8.0\n# delta = 1e-5\n# grid_exponent = -20\n\
                # adaptive = { target_quantile = 0.5, learning_rate = 0.2, count_noise_multiplier = 2.0 }\n"
            .into();
    };
    let mut out = format!(
        "[round.central_dp]\nnoise_multiplier = {:?}\nclip_norm = {:?}\nexpected_stores = {:?}\n\
         epsilon_max = {:?}\ndelta = {:?}\ngrid_exponent = {}\n",
        dp.noise_multiplier, dp.clip_norm, dp.expected_stores, dp.epsilon_max, dp.delta, dp.grid_exponent
    );
    if let Some(a) = &dp.adaptive {
        out.push_str(&format!(
            "adaptive = {{ target_quantile = {:?}, learning_rate = {:?}, count_noise_multiplier = {:?} }}\n",
            a.target_quantile, a.learning_rate, a.count_noise_multiplier
        ));
    }
    out
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
    #[test]
    fn a_proximal_mu_is_offered_when_positive_and_refused_when_negative_or_nan() {
        let mut plan = super::PlanSection::default();
        assert_eq!(plan.proximal_mu(), Ok(None));
        plan.proximal_mu = 0.01;
        assert_eq!(plan.proximal_mu(), Ok(Some(0.01)));
        for bad in [-0.1, f32::NAN, f32::INFINITY] {
            plan.proximal_mu = bad;
            let err = plan.proximal_mu().unwrap_err();
            assert!(err.contains("proximal_mu"), "{err}");
        }
    }

    use super::*;
    use crate::aggregate::AggregationRule;
    use crate::aggregate::optimizer::ServerOptimizerConfig;

    #[test]
    fn local_steps_replace_local_epochs_when_set() {
        use fedfuse_protocol::msgs::LocalWork;
        let parsed: ServerConfig = toml::from_str("[plan]\nlocal_epochs = 3\n").unwrap();
        assert_eq!(parsed.plan.local_work(), LocalWork::Epochs(3));
        let parsed: ServerConfig = toml::from_str("[plan]\nlocal_epochs = 3\nlocal_steps = 40\n").unwrap();
        assert_eq!(parsed.plan.local_work(), LocalWork::Steps(40));
    }

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
        config.round.max_examples_per_store = Some(5000);
        config.plan.encoding = "int8".into();
        config.model.dim = 32;
        config.platform.hold_out = 0.25;
        config.serve.tail_average = 5;
        config.plan.learning_rate_schedule = "cosine".into();
        config.plan.hold_rounds = 12;
        config.plan.trainable = vec!["alpha".into(), "head_".into()];
        config.plan.dp = Some(PlanDpSection {
            unit: "shopper".into(),
            min_noise_multiplier: 0.8,
            max_clip_norm: 1.5,
            max_sampling_rate: 0.05,
            delta: 1e-4,
        });
        config.round.central_dp = Some(crate::central_dp::CentralDp {
            noise_multiplier: 1.25,
            clip_norm: 0.5,
            expected_stores: 11.0,
            epsilon_max: 8.0,
            delta: 1e-5,
            adaptive: Some(crate::central_dp::AdaptiveClipping {
                target_quantile: 0.5,
                learning_rate: 0.2,
                count_noise_multiplier: 0.75,
            }),
            grid_exponent: -18,
        });
        let parsed: ServerConfig = toml::from_str(&config.to_commented_toml()).unwrap();
        assert_eq!(parsed, config);
        let defaults: ServerConfig = toml::from_str(&ServerConfig::default().to_commented_toml()).unwrap();
        assert_eq!(defaults, ServerConfig::default());
    }

    #[test]
    fn a_plan_dp_section_becomes_the_offered_requirement_and_nonsense_is_an_error() {
        use fedfuse_protocol::msgs::PrivacyUnit;
        let parsed: ServerConfig =
            toml::from_str("[plan.dp]\nunit = \"store\"\nmin_noise_multiplier = 1.1\nmax_clip_norm = 0.5\ndelta = 1e-5\n")
                .unwrap();
        let req = parsed.plan.dp_requirement().unwrap().expect("a requirement");
        assert_eq!(req.unit, PrivacyUnit::Store);
        assert_eq!(
            (req.min_noise_multiplier, req.max_clip_norm, req.max_sampling_rate, req.delta),
            (1.1, 0.5, 1.0, 1e-5)
        );
        assert_eq!(ServerConfig::default().plan.dp_requirement().unwrap(), None);
        let bad = |dp: PlanDpSection| {
            PlanSection {
                dp: Some(dp),
                ..PlanSection::default()
            }
            .dp_requirement()
            .unwrap_err()
        };
        let ok = PlanDpSection {
            unit: "store".into(),
            min_noise_multiplier: 1.0,
            max_clip_norm: 1.0,
            max_sampling_rate: 1.0,
            delta: 1e-5,
        };
        assert!(
            bad(PlanDpSection {
                unit: "user".into(),
                ..ok.clone()
            })
            .contains("unit")
        );
        assert!(
            bad(PlanDpSection {
                min_noise_multiplier: f64::NAN,
                ..ok.clone()
            })
            .contains("min_noise_multiplier")
        );
        assert!(
            bad(PlanDpSection {
                max_clip_norm: 0.0,
                ..ok.clone()
            })
            .contains("max_clip_norm")
        );
        assert!(
            bad(PlanDpSection {
                max_sampling_rate: 2.0,
                ..ok.clone()
            })
            .contains("max_sampling_rate")
        );
        assert!(bad(PlanDpSection { delta: 1.0, ..ok }).contains("delta"));
    }

    #[test]
    fn unknown_keys_are_errors_not_silently_ignored() {
        let err = toml::from_str::<ServerConfig>("[server]\nlisten_addr = \"1.2.3.4:5\"\n").unwrap_err();
        assert!(err.to_string().contains("listen_addr"), "{err}");
    }
}
