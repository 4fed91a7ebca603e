//! Whole federations on 127.0.0.1: the aggregator service and store agents over real QUIC
//! with certificates from the platform tooling, state in a real embedded database.
//!
//! The stores' training here is a deterministic stand-in (each store pulls the model toward
//! its own target), so the expected global model is known exactly; the fused recommender's
//! trainer plugs into the same `LocalTrainer` trait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fedfuse_client::{AgentOptions, AgentReport, LocalTrainer, LocalUpdate, TensorShape, run_session};
use fedfuse_protocol::Message;
use fedfuse_protocol::msgs::{Capabilities, Hello, LocalWork, RejectionReason, TrainingPlan, UpdateUpload};
use fedfuse_protocol::tensor::{NamedTensor, UpdateEncoding, ValueEncoding};
use fedfuse_server::aggregate::AggregationRule;
use fedfuse_server::layout::{ModelLayout, TensorSpec};
use fedfuse_server::pki::{self, InitOptions, PlatformDir, StoreBundle};
use fedfuse_server::round::RoundPolicy;
use fedfuse_server::service::{ServiceOptions, ServiceReport, run_aggregator};
use fedfuse_server::state::AggregatorState;
use fedfuse_transport::{AggregatorEndpoint, StoreEndpoint, TransportTuning};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const PARAMS: usize = 4;

struct TowardTarget {
    target: Vec<f32>,
    examples: u64,
    poison: bool,
}

impl LocalTrainer for TowardTarget {
    fn train(
        &mut self,
        _round: u64,
        shapes: &[TensorShape],
        params: &[f32],
        _plan: &TrainingPlan,
    ) -> Result<LocalUpdate, String> {
        assert_eq!(shapes, &[("w".to_string(), vec![PARAMS as u32])]);
        let mut delta: Vec<f32> = self.target.iter().zip(params).map(|(t, p)| t - p).collect();
        if self.poison {
            delta[1] = f32::NAN;
        }
        Ok(LocalUpdate {
            delta,
            example_count: self.examples,
            metrics: vec![],
        })
    }
}

fn layout() -> ModelLayout {
    ModelLayout::new(vec![TensorSpec {
        name: "w".into(),
        shape: vec![PARAMS as u32],
    }])
}

fn caps() -> Capabilities {
    Capabilities {
        update_encodings: UpdateEncoding::ALL.to_vec(),
        max_message_bytes: 1 << 30,
    }
}

fn options(policy: RoundPolicy) -> ServiceOptions {
    ServiceOptions {
        policy,
        plan: TrainingPlan {
            work: LocalWork::Epochs(1),
            learning_rate: 0.01,
            batch_size: 64,
            proximal_mu: None,
            update_encoding: UpdateEncoding::Dense(ValueEncoding::F32),
            dp: None,
        },
        capabilities: caps(),
        chunk_bytes: 1 << 20,
        tick: Duration::from_millis(50),
    }
}

fn policy(min_stores: usize, quorum: usize, rounds: u64) -> RoundPolicy {
    RoundPolicy {
        min_stores,
        quorum,
        rounds,
        deadline_ms: 20_000,
        aggregation: AggregationRule::ExampleWeightedMean,
        ..RoundPolicy::default()
    }
}

struct Federation {
    _pki: tempfile::TempDir,
    platform: PlatformDir,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    service: JoinHandle<ServiceReport>,
}

fn start(
    platform_dir: &tempfile::TempDir,
    state_dir: &std::path::Path,
    policy: RoundPolicy,
) -> (SocketAddr, watch::Sender<bool>, JoinHandle<ServiceReport>) {
    let platform = PlatformDir::open(platform_dir.path()).unwrap();
    let (identity, trust) = platform.aggregator_tls().unwrap();
    let endpoint = Arc::new(
        AggregatorEndpoint::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            identity,
            &trust,
            TransportTuning::default(),
        )
        .unwrap(),
    );
    let addr = endpoint.local_addr().unwrap();
    let state = AggregatorState::open(state_dir).unwrap();
    let (stop, stopped) = watch::channel(false);
    let service = tokio::spawn(async move {
        run_aggregator(endpoint, state, Some((layout(), vec![0.0; PARAMS])), options(policy), stopped)
            .await
            .unwrap()
    });
    (addr, stop, service)
}

fn federation(state_dir: &std::path::Path, policy: RoundPolicy) -> Federation {
    let dir = tempfile::tempdir().unwrap();
    let platform = pki::init(dir.path(), &InitOptions::default()).unwrap();
    let (addr, stop, service) = start(&dir, state_dir, policy);
    Federation {
        _pki: dir,
        platform,
        addr,
        stop,
        service,
    }
}

async fn store(bundle: StoreBundle, addr: SocketAddr, mut trainer: TowardTarget) -> AgentReport {
    let (identity, trust) = bundle.tls().unwrap();
    let endpoint = StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default()).unwrap();
    let conn = endpoint.connect(addr, &bundle.aggregator_name).await.unwrap();
    let opts = AgentOptions {
        software_version: "test".into(),
        capabilities: caps(),
        max_model_bytes: 1 << 20,
        rounding_seed: 1,
    };
    run_session(&conn, &mut trainer, &opts).await.unwrap()
}

fn target(v: f32) -> Vec<f32> {
    vec![v; PARAMS]
}

fn assert_close(got: &[f32], want: f32) {
    assert!(got.iter().all(|g| (g - want).abs() < 1e-5), "{got:?} vs {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stores_complete_three_rounds() {
    let state = tempfile::tempdir().unwrap();
    let f = federation(state.path(), policy(3, 3, 3));
    let stores = [("a", 1.0, 1), ("b", 2.0, 1), ("c", 5.0, 2)].map(|(name, t, examples)| {
        let bundle = f.platform.issue_store(name, 1).unwrap();
        tokio::spawn(store(
            bundle,
            f.addr,
            TowardTarget {
                target: target(t),
                examples,
                poison: false,
            },
        ))
    });
    let report = tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    // Example-weighted: (1·1 + 1·2 + 2·5) / 4 = 3.25, reached in round 1 and kept.
    assert_close(&report.params, 3.25);
    assert_eq!(report.version, 3);
    assert_eq!(
        report.rounds.iter().map(|r| (r.round_id, r.updates)).collect::<Vec<_>>(),
        vec![(0, 0), (1, 3), (2, 3), (3, 3)]
    );
    assert!(report.rejected.is_empty() && report.failed_rounds.is_empty());
    for s in stores {
        let r = s.await.unwrap();
        assert_eq!(r.accepted, vec![1, 2, 3]);
        assert!(r.bytes_up > 0 && r.bytes_down > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_killed_mid_upload_neither_stalls_nor_corrupts_the_round() {
    let state = tempfile::tempdir().unwrap();
    let f = federation(state.path(), policy(3, 2, 1));
    let good: Vec<_> = [("a", 1.0), ("b", 3.0)]
        .into_iter()
        .map(|(name, t)| {
            let bundle = f.platform.issue_store(name, 1).unwrap();
            tokio::spawn(store(
                bundle,
                f.addr,
                TowardTarget {
                    target: target(t),
                    examples: 1,
                    poison: false,
                },
            ))
        })
        .collect();
    // The third store takes its offer, starts uploading a huge poisoned update, and dies.
    let bundle = f.platform.issue_store("doomed", 1).unwrap();
    let (identity, trust) = bundle.tls().unwrap();
    let endpoint = StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default()).unwrap();
    let conn = endpoint.connect(f.addr, &bundle.aggregator_name).await.unwrap();
    conn.send(&Message::Hello(Hello::current("doomed", caps()))).await.unwrap();
    assert!(matches!(conn.recv().await.unwrap(), Message::Welcome(_)));
    let Message::RoundOffer(offer) = conn.recv().await.unwrap() else {
        panic!("no offer")
    };
    conn.recv_model(&offer.model, 1 << 20).await.unwrap();
    let upload = Message::UpdateUpload(UpdateUpload {
        round_id: offer.round_id,
        base_model_version: offer.model.version,
        example_count: 1_000_000,
        metrics: vec![],
        privacy_spend: None,
        tensors: vec![
            NamedTensor::encode(
                "w",
                &[PARAMS as u32],
                &[1e6; PARAMS],
                UpdateEncoding::Dense(ValueEncoding::F32),
                0,
            )
            .unwrap(),
        ],
    })
    .encode()
    .unwrap();
    conn.send_frame(&upload[..upload.len() / 2]).await.unwrap();
    conn.close("killed");
    drop(endpoint);
    let report = tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.rounds.last().map(|r| (r.round_id, r.updates)), Some((1, 2)));
    // Only the two complete updates count: mean of 1 and 3.
    assert_close(&report.params, 2.0);
    for s in good {
        assert_eq!(s.await.unwrap().accepted, vec![1]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nan_update_is_rejected_with_its_reason() {
    let state = tempfile::tempdir().unwrap();
    // The rejected store never sends a valid update, so the round closes at its deadline.
    let f = federation(
        state.path(),
        RoundPolicy {
            deadline_ms: 2_000,
            ..policy(3, 2, 1)
        },
    );
    let stores: Vec<_> = [("a", 1.0, false), ("b", 3.0, false), ("nan", 100.0, true)]
        .into_iter()
        .map(|(name, t, poison)| {
            let bundle = f.platform.issue_store(name, 1).unwrap();
            tokio::spawn(store(
                bundle,
                f.addr,
                TowardTarget {
                    target: target(t),
                    examples: 1,
                    poison,
                },
            ))
        })
        .collect();
    let report = tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    assert_close(&report.params, 2.0);
    assert!(
        matches!(&report.rejected[..], [(s, 1, RejectionReason::NonFinite { name })] if s == "nan" && name == "w"),
        "{:?}",
        report.rejected
    );
    let reports: Vec<AgentReport> = futures_join(stores).await;
    let nan = reports.iter().find(|r| r.store_id == "nan").unwrap();
    assert!(
        matches!(&nan.rejected[..], [(1, RejectionReason::NonFinite { .. })]),
        "{:?}",
        nan.rejected
    );
    assert!(nan.accepted.is_empty());
}

async fn futures_join(handles: Vec<JoinHandle<AgentReport>>) -> Vec<AgentReport> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_aggregator_continues_at_the_next_round_from_the_same_model() {
    let state = tempfile::tempdir().unwrap();
    let f = federation(state.path(), policy(2, 2, 2));
    let bundles: Vec<StoreBundle> = ["a", "b"].iter().map(|n| f.platform.issue_store(n, 1).unwrap()).collect();
    let run = |addr: SocketAddr| {
        bundles
            .iter()
            .zip([1.0, 3.0])
            .map(|(b, t)| {
                tokio::spawn(store(
                    b.clone(),
                    addr,
                    TowardTarget {
                        target: target(t),
                        examples: 1,
                        poison: false,
                    },
                ))
            })
            .collect::<Vec<_>>()
    };
    let first = run(f.addr);
    let before = tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    futures_join(first).await;
    assert_eq!(before.version, 2);
    drop(f.stop);

    // The aggregator process is gone; a new one opens the same state directory.
    let (addr, _stop, service) = start(&f._pki, state.path(), policy(2, 2, 1));
    let second = run(addr);
    let after = tokio::time::timeout(Duration::from_secs(60), service).await.unwrap().unwrap();
    for r in futures_join(second).await {
        assert_eq!(r.trained_rounds, vec![3], "resumes at round k+1");
        assert_eq!(r.last_model_version, Some(2), "from the committed model");
    }
    let resumed = after.rounds.iter().find(|r| r.round_id == 2).unwrap();
    assert_eq!(
        resumed.content_hash, before.content_hash,
        "same model hash across the restart"
    );
    assert_eq!(after.version, 3);
}
