//! `fedfuse-client`: a partner store's agent.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use fedfuse_client::config::{AgentConfig, PrivacyMode};
use fedfuse_client::privacy::{StorePrivacy, StorePrivacyPolicy};
use fedfuse_client::trainer::{FusedTrainer, StoreData, UserLevelDp};
use fedfuse_client::{AgentOptions, Backoff, run_agent};
use fedfuse_data::source::DataSource;
use fedfuse_data::split::{Split, SplitConfig};
use fedfuse_data::synthetic::SyntheticConfig;
use fedfuse_model::catalog::ItemFeatures;
use fedfuse_model::device::{self, DeviceChoice};
use fedfuse_model::window::{CandidateConfig, SameTimeRuns};
use fedfuse_privacy::Budget;
use fedfuse_protocol::msgs::Capabilities;
use fedfuse_protocol::tensor::UpdateEncoding;
use fedfuse_transport::{StoreBundle, StoreEndpoint, TransportTuning};

/// A partner store's agent for a fedfuse federation.
///
/// The store keeps its shoppers' data: it connects to the platform's aggregator over QUIC with
/// its own certificate, takes each round's offer, trains the fused recommender on its own
/// shoppers (with user-level DP if configured, charged to its ledger before anything leaves),
/// and uploads only the update. It reconnects with backoff if the network goes.
///
/// Start with `fedfuse-client template > store.toml`, point `bundle` at the file
/// `fedfuse-server issue-store` gave you, then `fedfuse-client run --config store.toml`.
#[derive(Parser)]
#[command(name = "fedfuse-client", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join the federation and train until the aggregator says goodbye or the privacy budget
    /// is spent.
    ///
    /// Example: fedfuse-client run --config store.toml
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a commented configuration with every default, to start from.
    ///
    /// Example: fedfuse-client template --store berlin-01 --data-store store-03 > berlin-01.toml
    Template {
        /// This store's name, as `fedfuse-server issue-store --store` gave it: fills in the
        /// bundle's file name.
        #[arg(long)]
        store: Option<String>,
        /// Which of the data's stores holds this store's shoppers ([data] store), when the data
        /// holds several: `store-00` … `store-10` in the built-in synthetic data, `zip-0` …
        /// `zip-9` and `zip-other` in MovieLens-100K. Left out: every shopper in the data (a
        /// store whose files are its own).
        #[arg(long)]
        data_store: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,cubecl=warn,wgpu_core=warn,wgpu_hal=warn,naga=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Template { store, data_store } => {
            let mut c = AgentConfig::default();
            if let Some(s) = store {
                c.agent.bundle = PathBuf::from(format!("{s}.bundle.toml"));
            }
            if let Some(s) = data_store {
                c.data.store = s;
            }
            print!("{}", c.to_commented_toml());
            Ok(())
        }
        Command::Run { config } => run(&config),
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = AgentConfig::load(path)?;
    let bundle = StoreBundle::load(&config.agent.bundle)?;
    let (identity, trust) = bundle.tls()?;
    let source: DataSource = config.data.source.parse().map_err(anyhow::Error::msg)?;
    let synthetic = SyntheticConfig {
        seed: config.data.synthetic_seed,
        ..SyntheticConfig::default()
    };
    let dataset = source.load(&synthetic).with_context(|| format!("loading {source}"))?;
    let split = Arc::new(Split::new(
        &dataset,
        &SplitConfig {
            seed: config.data.split_seed,
            ..SplitConfig::default()
        },
    )?);
    let store_index = if config.data.store.is_empty() {
        None
    } else {
        match dataset.stores.iter().position(|s| *s == config.data.store) {
            Some(i) => Some(i as u16),
            None => bail!(
                "[data] store {:?} is not in {source}; it has: {}",
                config.data.store,
                dataset.stores.join(", ")
            ),
        }
    };
    let mine = |shopper: u32| store_index.is_none_or(|s| dataset.shoppers[shopper as usize].store == s);
    let sequences: Vec<Vec<u32>> = split
        .train_sequences()
        .into_iter()
        .enumerate()
        .map(|(s, seq)| if mine(s as u32) { seq } else { Vec::new() })
        .collect();
    let validation: Vec<usize> = split
        .validation
        .iter()
        .enumerate()
        .filter(|(_, c)| mine(c.shopper))
        .map(|(i, _)| i)
        .collect();
    tracing::info!(
        store = %bundle.store,
        data_store = if config.data.store.is_empty() { "(all)" } else { config.data.store.as_str() },
        shoppers = sequences.iter().filter(|s| !s.is_empty()).count(),
        "data loaded from {source}"
    );
    let choice: DeviceChoice = config.training.device.parse().map_err(anyhow::Error::msg)?;
    let device = device::select(choice)?;
    let data = StoreData {
        features: ItemFeatures::from_catalog(&dataset.catalog),
        sequences,
        validation: Some((split.clone(), validation)),
    };
    let mut trainer = FusedTrainer::new(config.model, data, device, config.training.seed)
        .with_candidates(CandidateConfig {
            in_batch: config.training.in_batch,
            uniform: config.training.uniform,
            exclude_seen: config.training.exclude_seen,
        })
        .with_window_stride(Some(config.training.window_stride))
        .with_same_time_shuffle(
            config
                .training
                .shuffle_same_time
                .then(|| Arc::new(SameTimeRuns::from_split(&split))),
        );
    if !config.training.keep_optimizer_state {
        trainer = trainer.forget_optimizer_state();
    }
    if config.training.drift_correction {
        trainer = trainer.with_drift_correction();
    }
    let p = &config.privacy;
    let policy = StorePrivacyPolicy {
        budget: Budget {
            epsilon_max: p.epsilon_max,
            delta: p.delta,
        },
        noise_multiplier: p.noise_multiplier,
        clip_norm: p.clip_norm,
        grid_exponent: fedfuse_privacy::noise::DEFAULT_GRID_EXPONENT,
    };
    let mut store_guard = None;
    match p.mode {
        PrivacyMode::None => {}
        PrivacyMode::Shopper => {
            let guard = StorePrivacy::open(bundle.store.clone(), policy, &p.ledger)?;
            trainer = trainer.with_user_level_dp(UserLevelDp {
                guard,
                expected_batch: p.expected_batch,
                noise_multiplier: p.noise_multiplier,
                clip_norm: p.clip_norm,
                negatives: config.training.uniform,
            });
        }
        PrivacyMode::Store => store_guard = Some(StorePrivacy::open(bundle.store.clone(), policy, &p.ledger)?),
    }
    let runtime = tokio::runtime::Runtime::new()?;
    let run = runtime.block_on(async {
        let endpoint = StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default())?;
        let opts = AgentOptions {
            software_version: env!("CARGO_PKG_VERSION").into(),
            capabilities: Capabilities {
                update_encodings: UpdateEncoding::ALL.to_vec(),
                max_message_bytes: 1 << 30,
            },
            max_model_bytes: config.agent.max_model_mib << 20,
            rounding_seed: rand_seed(),
        };
        let backoff = Backoff {
            initial: Duration::from_millis(config.reconnect.initial_ms),
            max: Duration::from_millis(config.reconnect.max_ms),
            attempts: config.reconnect.attempts,
        };
        anyhow::Ok(
            run_agent(
                &endpoint,
                config.agent.aggregator,
                &bundle.aggregator_name,
                &mut trainer,
                &opts,
                backoff,
                store_guard.as_mut(),
            )
            .await?,
        )
    })?;
    println!(
        "{:>6} {:>12} {:>12} {:>10} {:>9} {:>8}",
        "round", "offered HR", "offered NDCG", "loss", "examples", "ε"
    );
    for r in trainer.log.lock().expect("log").iter() {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        println!(
            "{:>6} {:>12} {:>12} {:>10.4} {:>9} {:>8}",
            r.round,
            f(r.validation_hr10),
            f(r.validation_ndcg10),
            r.train_loss,
            r.examples,
            f(r.epsilon)
        );
    }
    println!(
        "{} rounds trained in {} session(s), {} interruption(s); {} bytes up, {} down",
        run.trained_rounds.len(),
        run.sessions,
        run.interruptions.len(),
        run.bytes_up,
        run.bytes_down
    );
    if let Some(reason) = run.last.refused {
        println!("stopped training: {reason}");
    }
    Ok(())
}

/// Fresh entropy for int8 stochastic rounding.
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (std::process::id() as u64).rotate_left(32)
}
