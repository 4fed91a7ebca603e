//! The main job: a complete federated run on loopback.
//!
//!   cargo run --release --example quickstart
//!
//! Creates a platform CA and one certificate per partner store with the project's own tooling,
//! starts the aggregator service and every store agent on 127.0.0.1 (real QUIC, mutual TLS),
//! and federates the fused recommender over the built-in synthetic e-commerce data, each store
//! training only on its own shoppers. Afterwards every committed global model is evaluated on
//! the held-out test items and a per-round table is printed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use burn::tensor::Device;
use clap::Parser;
use fedfuse_client::{AgentOptions, LocalTrainer, LocalUpdate, TensorShape, run_session};
use fedfuse_data::source::DataSource;
use fedfuse_data::split::{Split, SplitConfig};
use fedfuse_data::synthetic::SyntheticConfig;
use fedfuse_model::catalog::{ItemFeatures, Vocabulary};
use fedfuse_model::device::{self, DeviceChoice};
use fedfuse_data::evaluate::{Holdout, evaluate};
use fedfuse_model::evaluate::FusedScorer;
use fedfuse_model::fused::FusedConfig;
use fedfuse_model::item_tower::ItemTowerConfig;
use fedfuse_model::params::{export, import, unflatten};
use fedfuse_model::sequence::SequenceEncoderConfig;
use fedfuse_model::train::{TrainConfig, train};
use fedfuse_protocol::msgs::{Capabilities, LocalWork, Metric, TrainingPlan};
use fedfuse_protocol::tensor::{UpdateEncoding, ValueEncoding};
use fedfuse_server::aggregate::AggregationRule;
use fedfuse_server::layout::{ModelLayout, TensorSpec};
use fedfuse_server::pki::{self, InitOptions};
use fedfuse_server::round::RoundPolicy;
use fedfuse_server::service::{ServiceOptions, run_aggregator};
use fedfuse_server::state::{AggregatorState, Committed};
use fedfuse_transport::{AggregatorEndpoint, StoreEndpoint, TransportTuning};
use serde_json::json;

/// A complete federated run on 127.0.0.1: aggregator + one agent per store, real QUIC and mTLS.
#[derive(Parser)]
struct Cli {
    /// `synthetic` (built in) or `movielens:PATH` (stores by ZIP first digit).
    #[arg(long, default_value = "synthetic")]
    data: DataSource,
    /// Federated rounds.
    #[arg(long, default_value_t = 3)]
    rounds: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Shoppers in the synthetic data (20,000 is the generator's full size).
    #[arg(long, default_value_t = 3000)]
    shoppers: u32,
    /// Local epochs per round.
    #[arg(long, default_value_t = 1)]
    local_epochs: u32,
    #[arg(long, default_value_t = 32)]
    dim: usize,
    #[arg(long, default_value_t = 20)]
    max_len: usize,
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Write the per-round and final numbers as JSON here.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// A store's training: the fused model on the store's own shoppers only.
struct FusedTrainer {
    config: FusedConfig,
    features: ItemFeatures,
    vocabulary: Vocabulary,
    sequences: Vec<Vec<u32>>,
    device: Device,
    max_len: usize,
    seed: u64,
    losses: Arc<Mutex<Vec<(u64, f64)>>>,
}

impl LocalTrainer for FusedTrainer {
    fn train(&mut self, round: u64, shapes: &[TensorShape], params: &[f32], plan: &TrainingPlan) -> Result<LocalUpdate, String> {
        let device = self.device.clone().autodiff();
        let catalog = self.features.to_tensors(self.vocabulary, &device);
        let shapes: Vec<(String, Vec<usize>)> = shapes
            .iter()
            .map(|(n, s)| (n.clone(), s.iter().map(|d| *d as usize).collect()))
            .collect();
        let named = unflatten(&shapes, params).map_err(|e| e.to_string())?;
        let model = import(self.config.init(&device), &named).map_err(|e| e.to_string())?;
        let config = TrainConfig {
            epochs: match plan.work {
                LocalWork::Epochs(e) => e as usize,
                LocalWork::Steps(_) => 1,
            },
            batch_size: plan.batch_size as usize,
            learning_rate: f64::from(plan.learning_rate),
            max_len: self.max_len,
            seed: self.seed ^ round,
            ..TrainConfig::default()
        };
        let (model, reports) = train(model, &catalog, &self.sequences, &config, |_, _| true);
        let trained: HashMap<String, Vec<f32>> = export(&model).into_iter().map(|p| (p.name, p.values)).collect();
        let mut delta = Vec::with_capacity(params.len());
        for p in &named {
            let new = trained
                .get(&p.name)
                .ok_or_else(|| format!("trained model lacks {}", p.name))?;
            delta.extend(new.iter().zip(&p.values).map(|(n, o)| n - o));
        }
        let last = reports.last().ok_or("no epoch ran")?;
        self.losses.lock().unwrap().push((round, last.mean_loss));
        Ok(LocalUpdate {
            delta,
            example_count: last.examples as u64,
            metrics: vec![Metric {
                name: "train_loss".into(),
                value: last.mean_loss,
            }],
        })
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let started = Instant::now();
    let synthetic = SyntheticConfig {
        seed: cli.seed,
        shoppers: cli.shoppers,
        items: (cli.shoppers / 4).max(200),
        events: u64::from(cli.shoppers) * 25,
        ..SyntheticConfig::default()
    };
    let dataset = cli.data.load(&synthetic).with_context(|| format!("loading {}", cli.data))?;
    let split = Split::new(
        &dataset,
        &SplitConfig {
            seed: cli.seed,
            ..Default::default()
        },
    )?;
    let features = ItemFeatures::from_catalog(&dataset.catalog);
    let vocabulary = features.vocabulary(8);
    let base = device::select(cli.device)?;
    base.seed(cli.seed);
    let config = FusedConfig::new(
        ItemTowerConfig::for_vocabulary(&vocabulary, cli.dim),
        SequenceEncoderConfig::new(cli.dim, cli.max_len),
    );
    // The starting global model, as the aggregator's layout and flat parameters.
    let start = export(&config.init(&base));
    let layout = ModelLayout::new(
        start
            .iter()
            .map(|p| TensorSpec {
                name: p.name.clone(),
                shape: p.shape.iter().map(|d| *d as u32).collect(),
            })
            .collect(),
    );
    let initial: Vec<f32> = start.iter().flat_map(|p| p.values.iter().copied()).collect();

    // Each store's own shoppers, and its own item popularity.
    let sequences = split.train_sequences();
    let mut per_store: Vec<Vec<Vec<u32>>> = vec![Vec::new(); dataset.stores.len()];
    for (shopper, seq) in sequences.into_iter().enumerate() {
        if !seq.is_empty() {
            per_store[dataset.shoppers[shopper].store as usize].push(seq);
        }
    }
    let stores: Vec<(String, Vec<Vec<u32>>)> = dataset
        .stores
        .iter()
        .cloned()
        .zip(per_store)
        .filter(|(_, s)| !s.is_empty())
        .collect();
    eprintln!(
        "{} shoppers, {} items, {} stores; {} rounds of {} local epoch(s)",
        dataset.shoppers.len(),
        features.category.len(),
        stores.len(),
        cli.rounds,
        cli.local_epochs
    );

    let work = tempfile::tempdir()?;
    let platform = pki::init(&work.path().join("platform"), &InitOptions::default())?;
    let (identity, trust) = platform.aggregator_tls()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(stores.len() + 2)
        .enable_all()
        .build()?;
    let losses = Arc::new(Mutex::new(Vec::new()));
    let state_dir = work.path().join("state");
    let (service_report, agents) = runtime.block_on(async {
        let endpoint = Arc::new(AggregatorEndpoint::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            identity,
            &trust,
            TransportTuning::default(),
        )?);
        let addr = endpoint.local_addr()?;
        let policy = RoundPolicy {
            min_stores: stores.len(),
            quorum: stores.len(),
            rounds: cli.rounds,
            deadline_ms: 3_600_000,
            seed: cli.seed,
            aggregation: AggregationRule::ExampleWeightedMean,
            ..RoundPolicy::default()
        };
        let options = ServiceOptions {
            policy,
            plan: TrainingPlan {
                work: LocalWork::Epochs(cli.local_epochs),
                learning_rate: 2e-3,
                batch_size: 32,
                proximal_mu: None,
                update_encoding: UpdateEncoding::Dense(ValueEncoding::F32),
                dp: None,
            },
            capabilities: Capabilities {
                update_encodings: UpdateEncoding::ALL.to_vec(),
                max_message_bytes: 1 << 30,
            },
            chunk_bytes: 4 << 20,
            tick: Duration::from_millis(100),
        };
        let state = AggregatorState::open(&state_dir)?;
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        let service = tokio::spawn(run_aggregator(
            endpoint,
            state,
            Some((layout.clone(), initial)),
            options,
            stopped,
        ));
        let mut agents = Vec::new();
        for (i, (name, seqs)) in stores.iter().enumerate() {
            let bundle = platform.issue_store(name, 1)?;
            let mut trainer = FusedTrainer {
                config: config.clone(),
                features: features.clone(),
                vocabulary,
                sequences: seqs.clone(),
                device: base.clone(),
                max_len: cli.max_len,
                seed: cli.seed + i as u64,
                losses: losses.clone(),
            };
            agents.push(tokio::spawn(async move {
                let (identity, trust) = bundle.tls().map_err(|e| e.to_string())?;
                let endpoint =
                    StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default()).map_err(|e| e.to_string())?;
                let conn = endpoint
                    .connect(addr, &bundle.aggregator_name)
                    .await
                    .map_err(|e| e.to_string())?;
                let opts = AgentOptions {
                    software_version: env!("CARGO_PKG_VERSION").into(),
                    capabilities: Capabilities {
                        update_encodings: UpdateEncoding::ALL.to_vec(),
                        max_message_bytes: 1 << 30,
                    },
                    max_model_bytes: 1 << 30,
                    rounding_seed: i as u64,
                };
                run_session(&conn, &mut trainer, &opts).await.map_err(|e| e.to_string())
            }));
        }
        let report = service.await?.context("aggregator")?;
        let mut reports = Vec::new();
        for a in agents {
            reports.push(a.await?.map_err(anyhow::Error::msg)?);
        }
        anyhow::Ok((report, reports))
    })?;

    // Evaluate every committed global model on the held-out test items.
    let eval_catalog = features.to_tensors(vocabulary, &base);
    let state = AggregatorState::open(&state_dir)?;
    let losses = losses.lock().unwrap().clone();
    println!(
        "\n{:>5} {:>7} {:>10} {:>9} {:>9} {:>12}",
        "round", "stores", "train loss", "HR@10", "NDCG@10", "HR@10 (99)"
    );
    let mut rounds = Vec::new();
    let mut last = None;
    for r in &service_report.rounds {
        let snapshot = state.load(&Committed {
            version: r.version,
            next_round: r.round_id + 1,
            content_hash: r.content_hash,
        })?;
        let shapes: Vec<(String, Vec<usize>)> = snapshot
            .layout
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.shape.iter().map(|d| *d as usize).collect()))
            .collect();
        let named = unflatten(&shapes, &snapshot.params)?;
        let model = import(config.init(&base), &named)?;
        let e = evaluate(&mut FusedScorer::new(&model, &eval_catalog), &split, Holdout::Test, 256, 10);
        let round_losses: Vec<f64> = losses.iter().filter(|(k, _)| *k == r.round_id).map(|(_, l)| *l).collect();
        let loss = (!round_losses.is_empty()).then(|| round_losses.iter().sum::<f64>() / round_losses.len() as f64);
        println!(
            "{:>5} {:>7} {:>10} {:>9.4} {:>9.4} {:>12.4}",
            r.round_id,
            r.updates,
            loss.map_or("-".into(), |l| format!("{l:.4}")),
            e.full.overall.mean.hit_rate,
            e.full.overall.mean.ndcg,
            e.sampled.overall.mean.hit_rate
        );
        rounds.push(json!({"round": r.round_id, "stores": r.updates, "train_loss": loss,
            "hr10_full": e.full.overall.mean.hit_rate, "ndcg10_full": e.full.overall.mean.ndcg,
            "hr10_sampled": e.sampled.overall.mean.hit_rate, "ndcg10_sampled": e.sampled.overall.mean.ndcg}));
        last = Some(e);
    }
    let e = last.context("no model was committed")?;
    let worst = e
        .full
        .by_store
        .iter()
        .min_by(|a, b| a.1.mean.hit_rate.total_cmp(&b.1.mean.hit_rate));
    if let Some((s, m)) = worst {
        println!(
            "worst store: {} (HR@10 {:.4} over {} shoppers)",
            dataset.stores[*s as usize], m.mean.hit_rate, m.cases
        );
    }
    let bytes_up: u64 = agents.iter().map(|a| a.bytes_up).sum();
    let bytes_down: u64 = agents.iter().map(|a| a.bytes_down).sum();
    println!(
        "bytes up {bytes_up}, down {bytes_down}; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = cli.report {
        let report = json!({
            "rounds": rounds,
            "final": {
                "hr10_full": e.full.overall.mean.hit_rate, "ndcg10_full": e.full.overall.mean.ndcg,
                "hr10_sampled": e.sampled.overall.mean.hit_rate, "ndcg10_sampled": e.sampled.overall.mean.ndcg,
                "per_store_hr10_full": e.full.by_store.iter().map(|(s, m)| (dataset.stores[*s as usize].clone(), json!(m.mean.hit_rate))).collect::<serde_json::Map<_, _>>(),
                "epsilon": null,
                "bytes_up": bytes_up, "bytes_down": bytes_down,
                "seconds": started.elapsed().as_secs_f64(),
            }
        });
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}
