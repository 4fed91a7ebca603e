//! `fedfuse-server`: the platform's command line.

use std::path::PathBuf;

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use fedfuse_protocol::msgs::{Capabilities, TrainingPlan};
use fedfuse_protocol::tensor::UpdateEncoding;
use fedfuse_server::config::ServerConfig;
use fedfuse_server::pki::{self, InitOptions, PlatformDir};
use fedfuse_server::service::{FineTuner, ServiceOptions, run_aggregator_with};
use fedfuse_server::state::AggregatorState;

/// The fedfuse aggregator and the platform's certificate tooling.
///
/// A federation starts with `init`, which creates the platform CA and the aggregator's
/// certificate. Each partner store then gets a bundle from `issue-store`; hand it to the store
/// over a secure channel. A store whose key leaks, or who leaves, is cut off by `revoke-store`.
#[derive(Parser)]
#[command(name = "fedfuse-server", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a platform directory: CA, aggregator key and certificate, empty revocation list,
    /// store registry, and a commented config.toml.
    ///
    /// Example: fedfuse-server init --dir platform/ --aggregator-name agg.example.com --san 10.0.0.5
    Init {
        /// Directory to create or fill; private keys inside are written with mode 0600.
        #[arg(long)]
        dir: PathBuf,
        /// The name stores verify the aggregator's certificate against.
        #[arg(long, default_value = fedfuse_server::config::DEFAULT_AGGREGATOR_NAME)]
        aggregator_name: String,
        /// Extra DNS names or IP addresses for the aggregator certificate (repeatable).
        #[arg(long = "san", default_values = ["localhost", "127.0.0.1", "::1"])]
        extra_names: Vec<String>,
        /// Organisation name in the CA certificate.
        #[arg(long, default_value = "fedfuse platform")]
        platform_name: String,
        /// Replace an existing CA. Every bundle issued under the old CA stops working.
        #[arg(long)]
        force: bool,
    },
    /// Issue a certificate to a partner store and write its bundle (key, certificate, CA).
    ///
    /// Example: fedfuse-server issue-store --dir platform/ --store berlin-01 --out berlin-01.bundle.toml
    IssueStore {
        #[arg(long)]
        dir: PathBuf,
        /// The store's name: 1-64 of a-z, 0-9, '-', '_'. It becomes the certificate's common
        /// name, which is how the aggregator knows the store.
        #[arg(long)]
        store: String,
        /// Where to write the bundle (mode 0600: it holds the store's private key).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Revoke a store's certificate: its serial goes on the CRL, and the aggregator refuses it
    /// from the next handshake on.
    RevokeStore {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        store: String,
    },
    /// Run the aggregator: accept stores, run rounds as [round] in the config says, commit each
    /// new model to the state directory. Resumes from the last committed round after a restart.
    ///
    /// Example: fedfuse-server run --config platform/config.toml --init-model pretrained.safetensors
    Run {
        #[arg(long)]
        config: PathBuf,
        /// Starting model for a new federation (F32 safetensors, e.g. one pretrained by the
        /// platform); without it a fresh [model] is initialised. Ignored when resuming.
        #[arg(long)]
        init_model: Option<PathBuf>,
    },
    /// Train the model a new federation starts from on the platform's own shoppers ([platform]
    /// in the config: its data and which shoppers are the platform's), keeping the epoch whose
    /// model ranks their validation items best, and write it as safetensors for `run
    /// --init-model`. Reads no store's data, so it costs no store any privacy; the model has
    /// the config's [model] shape.
    ///
    /// Example: fedfuse-server pretrain --config platform/config.toml --out pretrained.safetensors
    Pretrain {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Passes over the platform's shoppers at most.
        #[arg(long, default_value_t = 50)]
        epochs: usize,
        /// Stop after this many epochs without a better validation HR@10 (ties go to NDCG@10).
        #[arg(long, default_value_t = 10)]
        patience: usize,
        /// Windows per batch (centralized training; the stores' batch is [plan] batch_size).
        #[arg(long, default_value_t = 32)]
        batch_size: usize,
        /// AdamW's peak rate, after 100 warm-up steps, on a cosine over the epochs.
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        /// `auto` (the GPU through wgpu, else the CPU), `gpu` or `cpu`.
        #[arg(long, default_value = "auto")]
        device: fedfuse_model::device::DeviceChoice,
    },
    /// Show the federation's state: the current model, every committed round, every store with
    /// its accepted updates and reported ε.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
    /// Write a global model in a format other tools read.
    ///
    /// Example: fedfuse-server export --config platform/config.toml --format safetensors --out model.safetensors
    Export {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = ExportFormat::Safetensors)]
        format: ExportFormat,
        /// Which model: the latest committed; the version the stores' validation shoppers
        /// ranked best when it was offered (the latest when none reported; the latest itself
        /// is validated only once it is offered in a further round); or the average of the
        /// last [serve] tail_average models (an error when the config keeps none).
        #[arg(long, value_enum, default_value_t = ExportModel::Latest)]
        model: ExportModel,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportModel {
    /// The best version by the stores' pooled validation HR@10.
    BestValidated,
    /// The last committed version.
    Latest,
    /// The average of the last models, as recorded after the latest round.
    TailAverage,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// Hugging Face safetensors, F32, readable from PyTorch.
    Safetensors,
}

/// The platform's own data: the catalog and the shoppers it owns.
struct PlatformData {
    dataset: fedfuse_data::Dataset,
    split: Arc<fedfuse_data::Split>,
    features: fedfuse_model::catalog::ItemFeatures,
    store: u16,
}

impl PlatformData {
    fn load(config: &ServerConfig) -> anyhow::Result<Self> {
        let source: fedfuse_data::source::DataSource = config.platform.data.parse().map_err(anyhow::Error::msg)?;
        let synthetic = fedfuse_data::SyntheticConfig {
            seed: config.platform.synthetic_seed,
            ..Default::default()
        };
        let mut dataset = source.load(&synthetic).with_context(|| format!("[platform] data {source}"))?;
        let store = match dataset.stores.iter().position(|s| *s == config.platform.store) {
            Some(i) => i as u16,
            None => fedfuse_data::partition::hold_out_platform(&mut dataset, config.platform.hold_out, config.round.seed)
                .context("[platform] hold_out")?,
        };
        let split = Arc::new(fedfuse_data::Split::new(&dataset, &Default::default())?);
        let features = fedfuse_model::catalog::ItemFeatures::from_catalog(&dataset.catalog);
        Ok(Self {
            dataset,
            split,
            features,
            store,
        })
    }

    fn fresh_model(&self, config: &ServerConfig) -> (fedfuse_server::layout::ModelLayout, Vec<f32>) {
        let device = burn::tensor::Device::flex();
        device.seed(config.round.seed);
        let vocabulary = self.features.vocabulary(fedfuse_model::fit::TITLE_LEN);
        let params = fedfuse_model::params::export(&config.model.config(&vocabulary).init(&device));
        let layout = fedfuse_server::layout::ModelLayout::of_params(&params);
        (layout, params.into_iter().flat_map(|p| p.values).collect())
    }

    fn owns(&self, shopper: u32) -> bool {
        self.dataset.shoppers[shopper as usize].store == self.store
    }

    /// The platform's shoppers' training sequences (every other shopper's empty, so that the
    /// split's case indices stay valid).
    fn own_sequences(&self) -> Vec<Vec<u32>> {
        self.split
            .train_sequences()
            .into_iter()
            .enumerate()
            .map(|(s, seq)| if self.owns(s as u32) { seq } else { Vec::new() })
            .collect()
    }

    fn own_validation_cases(&self) -> Vec<usize> {
        self.split
            .validation
            .iter()
            .enumerate()
            .filter(|(_, c)| self.owns(c.shopper))
            .map(|(i, _)| i)
            .collect()
    }

    fn fine_tuner(&self, config: &ServerConfig) -> anyhow::Result<Box<dyn FineTuner>> {
        let sequences = self.own_sequences();
        let cases = self.own_validation_cases();
        anyhow::ensure!(!cases.is_empty(), "[platform] owns no shoppers to fine-tune on");
        let lr = config.platform.fine_tune_learning_rate;
        Ok(Box::new(fedfuse_server::fine_tune::FusionFineTuner::new(
            config.model,
            &self.features,
            fedfuse_model::device::select(fedfuse_model::device::DeviceChoice::Auto)?,
            sequences,
            self.split.clone(),
            cases,
            fedfuse_model::train::TrainConfig {
                epochs: config.platform.fine_tune_epochs,
                batch_size: config.plan.batch_size as usize,
                learning_rate: lr,
                min_learning_rate: lr,
                max_len: config.model.max_len,
                seed: config.round.seed,
                ..Default::default()
            },
        )))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A round's recorded metrics as `status` shows them: the stores' pooled validation of the model
/// they were offered and the platform's fine-tuning in words, anything else as `name=value`.
fn round_summary(metrics: &[(String, f64)]) -> String {
    let get = |k: &str| metrics.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    let mut parts = Vec::new();
    if let (Some(version), Some(hr), Some(ndcg)) = (
        get("federated_validation_version"),
        get("federated_validation_hr10"),
        get("federated_validation_ndcg10"),
    ) {
        parts.push(format!(
            "stores' validation of version {version}: HR@10 {hr:.4} NDCG@10 {ndcg:.4} ({} shoppers, {} stores)",
            get("federated_validation_shoppers").unwrap_or(0.0),
            get("federated_validation_stores").unwrap_or(0.0),
        ));
    }
    if let (Some(before), Some(after)) = (
        get("fine_tune_validation_hr10_before"),
        get("fine_tune_validation_hr10_after"),
    ) {
        let kept = match get("fine_tune_kept") {
            Some(k) if k > 0.0 => "kept",
            Some(_) => "discarded",
            None => "",
        };
        let ndcg = match (
            get("fine_tune_validation_ndcg10_before"),
            get("fine_tune_validation_ndcg10_after"),
        ) {
            (Some(b), Some(a)) => format!(", NDCG@10 {b:.4} -> {a:.4}"),
            _ => String::new(),
        };
        parts.push(
            format!("platform fine-tuning: HR@10 {before:.4} -> {after:.4}{ndcg} {kept}")
                .trim_end()
                .to_string(),
        );
    }
    let described = |k: &str| k.starts_with("federated_validation_") || k.starts_with("fine_tune_") && k != "fine_tune_seconds";
    for (name, value) in metrics.iter().filter(|(n, _)| !described(n)) {
        if value.fract() == 0.0 && value.abs() < 1e15 {
            parts.push(format!("{name}={value}"));
        } else {
            parts.push(format!("{name}={value:.4}"));
        }
    }
    parts.join("; ")
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
        Command::Init {
            dir,
            aggregator_name,
            extra_names,
            platform_name,
            force,
        } => {
            let opts = InitOptions {
                platform_name,
                aggregator_name,
                extra_names,
                force,
                ..InitOptions::default()
            };
            pki::init(&dir, &opts).with_context(|| format!("initialising {}", dir.display()))?;
            println!("platform created in {}", dir.display());
            println!(
                "next: fedfuse-server issue-store --dir {} --store NAME --out NAME.bundle.toml",
                dir.display()
            );
        }
        Command::IssueStore { dir, store, out, days } => {
            let platform = PlatformDir::open(&dir)?;
            let bundle = platform.issue_store(&store, days)?;
            pki::save_bundle(&bundle, &out)?;
            println!(
                "issued store {store:?} (valid {days} days): bundle written to {}",
                out.display()
            );
        }
        Command::RevokeStore { dir, store } => {
            PlatformDir::open(&dir)?.revoke_store(&store)?;
            println!("revoked store {store:?}; {} updated", dir.join(pki::CRL).display());
        }
        Command::Pretrain {
            config,
            out,
            epochs,
            patience,
            batch_size,
            lr,
            device,
        } => {
            let config = ServerConfig::load(&config)?;
            let platform_data = PlatformData::load(&config)?;
            let device = fedfuse_model::device::select(device)?;
            device.seed(config.round.seed);
            let sequences = platform_data.own_sequences();
            let shoppers = sequences.iter().filter(|s| s.len() > 1).count();
            println!(
                "pretraining on the platform's {shoppers} shoppers ({} of [platform] data), at most {epochs} epochs",
                config.platform.store
            );
            let train = fedfuse_model::train::TrainConfig {
                epochs,
                batch_size,
                learning_rate: lr,
                warmup_steps: 100,
                max_len: config.model.max_len,
                seed: config.round.seed,
                progress: true,
                ..Default::default()
            };
            let pretrained = fedfuse_server::pretrain::pretrain(
                config.model,
                &platform_data.features,
                &device,
                &sequences,
                &platform_data.split,
                &platform_data.own_validation_cases(),
                &train,
                patience,
                |e| {
                    println!(
                        "epoch {:>3}: loss {:.4}, validation HR@10 {:.4} ({:.0} predictions/s)",
                        e.train.epoch + 1,
                        e.train.mean_loss,
                        e.validation_hr10,
                        e.train.examples as f64 / e.train.seconds.max(1e-9)
                    )
                },
            )?;
            let metadata = std::collections::BTreeMap::from([
                ("fedfuse_model".to_owned(), "pretrained on the platform's shoppers".to_owned()),
                ("epoch".to_owned(), pretrained.best_epoch.to_string()),
                ("validation_hr10".to_owned(), format!("{:.4}", pretrained.validation_hr10)),
            ]);
            fedfuse_server::safetensors::write(&out, &pretrained.layout, &pretrained.params, &metadata)?;
            println!(
                "kept epoch {} of {}: platform validation HR@10 {:.4} (random start {:.4}); {} parameters written to {} ({:.0} s)",
                pretrained.best_epoch,
                pretrained.epochs.len(),
                pretrained.validation_hr10,
                pretrained.validation_hr10_fresh,
                pretrained.params.len(),
                out.display(),
                pretrained.seconds
            );
        }
        Command::Run { config, init_model } => {
            let config = ServerConfig::load(&config)?;
            let platform_data = PlatformData::load(&config)?;
            let initial = match init_model {
                Some(p) => Some(fedfuse_server::safetensors::read(&p).with_context(|| format!("reading {}", p.display()))?),
                // A new federation without a pretrained model starts from a fresh one of [model].
                None => Some(platform_data.fresh_model(&config)),
            };
            if let Some((layout, _)) = &initial {
                layout
                    .trained_values(&config.plan.trainable)
                    .map_err(|e| anyhow::anyhow!("[plan] trainable: {e}"))?;
            }
            let fine_tuner: Option<Box<dyn FineTuner>> = config
                .round
                .fine_tune
                .then(|| platform_data.fine_tuner(&config))
                .transpose()?;
            let platform = PlatformDir::open(&config.pki.dir)?;
            let (identity, trust) = platform.aggregator_tls()?;
            let runtime = tokio::runtime::Runtime::new()?;
            let report = runtime.block_on(async {
                let endpoint = Arc::new(fedfuse_transport::AggregatorEndpoint::bind(
                    config.server.listen,
                    identity,
                    &trust,
                    config.transport.clone(),
                )?);
                println!("aggregator listening on {} as {}", endpoint.local_addr()?, config.server.name);
                let state = AggregatorState::open(&config.state.dir)?;
                let (stop, stopped) = tokio::sync::watch::channel(false);
                tokio::spawn(async move {
                    if tokio::signal::ctrl_c().await.is_ok() {
                        let _ = stop.send(true);
                    }
                });
                config.round.optimizer.check().map_err(anyhow::Error::msg)?;
                let opts = ServiceOptions {
                    policy: config.round.clone(),
                    plan: TrainingPlan {
                        work: config.plan.local_work(),
                        learning_rate: config.plan.learning_rate,
                        batch_size: config.plan.batch_size,
                        proximal_mu: config.plan.proximal_mu().map_err(anyhow::Error::msg)?,
                        update_encoding: config.plan.update_encoding().map_err(anyhow::Error::msg)?,
                        dp: config.plan.dp_requirement().map_err(anyhow::Error::msg)?,
                        trainable: config.plan.trainable.clone(),
                    },
                    schedule: config.plan.schedule().map_err(anyhow::Error::msg)?,
                    capabilities: Capabilities {
                        update_encodings: UpdateEncoding::ALL.to_vec(),
                        max_message_bytes: 1 << 30,
                    },
                    chunk_bytes: 4 << 20,
                    tick: std::time::Duration::from_millis(100),
                    tail_average: config.serve.tail_average,
                };
                anyhow::Ok(run_aggregator_with(endpoint, state, initial, opts, stopped, fine_tuner).await?)
            })?;
            println!("stopped at model version {} ({})", report.version, hex(&report.content_hash));
        }
        Command::Status { config } => {
            let config = ServerConfig::load(&config)?;
            let state = AggregatorState::open(&config.state.dir)?;
            match state.committed()? {
                None => println!("no model committed yet in {}", config.state.dir.display()),
                Some(c) => println!(
                    "model version {}  hash {}  next round {}",
                    c.version,
                    hex(&c.content_hash),
                    c.next_round
                ),
            }
            match state.best_validated()? {
                None => println!("no store has reported validation yet: the latest model is served"),
                Some(b) => println!(
                    "best validated: version {} (HR@10 {:.4}, NDCG@10 {:.4} over {} shoppers of {} stores, measured in round {})",
                    b.version, b.hr10, b.ndcg10, b.shoppers, b.stores, b.round_id
                ),
            }
            if let Some(a) = state.tail_average()? {
                println!(
                    "averaged model: versions {:?} (rounds {:?}), hash {}",
                    a.versions,
                    a.rounds,
                    hex(&a.content_hash)
                );
            }
            println!("\n{:>6} {:>8} {:>8}  hash", "round", "version", "updates");
            for r in state.rounds()? {
                println!(
                    "{:>6} {:>8} {:>8}  {}  {}",
                    r.round_id,
                    r.version,
                    r.updates,
                    &hex(&r.content_hash)[..16],
                    round_summary(&r.metrics)
                );
            }
            println!(
                "\n{:<20} {:>8} {:>10} {:>10} {:>8}",
                "store", "updates", "last round", "epsilon", "delta"
            );
            for (name, s) in state.stores()? {
                let eps = s.epsilon_total.map_or("-".into(), |e| format!("{e:.4}"));
                let delta = s.delta.map_or("-".into(), |d| format!("{d:.0e}"));
                println!(
                    "{name:<20} {:>8} {:>10} {eps:>10} {delta:>8}",
                    s.accepted_updates, s.last_round
                );
            }
            // The aggregator's own releases (central DP), recomputed from its ledger.
            let ledger = state.ledger_path();
            if ledger.exists() {
                for a in fedfuse_privacy::audit::audit_ledger(&ledger)? {
                    println!(
                        "\ncentral DP ({}): {} releases, ε {:.4} (RDP {:.4}, PLD {:.4}) of {} at δ {:.0e}{}",
                        ledger.display(),
                        a.releases,
                        a.eps_rdp.min(a.eps_pld),
                        a.eps_rdp,
                        a.eps_pld,
                        a.epsilon_max,
                        a.delta,
                        if a.ok() { "" } else { "  AUDIT FAILED" }
                    );
                }
            }
        }
        Command::Export {
            config,
            format: ExportFormat::Safetensors,
            model,
            out,
        } => {
            let config = ServerConfig::load(&config)?;
            let state = AggregatorState::open(&config.state.dir)?;
            let committed = state.committed()?.context("no model committed yet")?;
            let (model, why) = match (model, state.best_validated()?) {
                (ExportModel::BestValidated, Some(best)) => (
                    state.load_validated(&best)?,
                    format!("best validated, HR@10 {:.4} over {} shoppers", best.hr10, best.shoppers),
                ),
                (ExportModel::BestValidated, None) => (state.load(&committed)?, "latest: no validation reported".into()),
                (ExportModel::Latest, _) => (state.load(&committed)?, "latest".into()),
                (ExportModel::TailAverage, _) => {
                    let averaged = state
                        .tail_average()?
                        .context("no averaged model recorded: set [serve] tail_average and run a round")?;
                    (
                        state.load_tail_average(&averaged)?,
                        format!("average of versions {:?}", averaged.versions),
                    )
                }
            };
            let metadata = std::collections::BTreeMap::from([
                ("format".to_string(), "pt".to_string()),
                ("fedfuse_version".to_string(), model.version.to_string()),
                ("fedfuse_blake3".to_string(), hex(&model.content_hash)),
            ]);
            fedfuse_server::safetensors::write(&out, &model.layout, &model.params, &metadata)?;
            println!("model version {} ({why}) written to {}", model.version, out.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::round_summary;

    fn m(pairs: &[(&str, f64)]) -> Vec<(String, f64)> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_round_reads_in_words() {
        let text = round_summary(&m(&[
            ("federated_validation_version", 1.0),
            ("federated_validation_hr10", 0.45950459),
            ("federated_validation_ndcg10", 0.3448),
            ("federated_validation_shoppers", 7186.0),
            ("federated_validation_stores", 2.0),
            ("fine_tune_validation_hr10_before", 0.086),
            ("fine_tune_validation_hr10_after", 0.0753),
            ("fine_tune_validation_ndcg10_before", 0.031),
            ("fine_tune_validation_ndcg10_after", 0.028),
            ("fine_tune_kept", 0.0),
            ("fine_tune_seconds", 1.25),
        ]));
        assert_eq!(
            text,
            "stores' validation of version 1: HR@10 0.4595 NDCG@10 0.3448 (7186 shoppers, 2 stores); \
             platform fine-tuning: HR@10 0.0860 -> 0.0753, NDCG@10 0.0310 -> 0.0280 discarded; fine_tune_seconds=1.2500"
        );
        // Unknown metrics pass through; whole numbers print without decimals.
        assert_eq!(
            round_summary(&m(&[("updates_rejected", 3.0), ("x", 0.5)])),
            "updates_rejected=3; x=0.5000"
        );
        assert_eq!(round_summary(&[]), "");
    }
}
