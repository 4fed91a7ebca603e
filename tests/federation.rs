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
use fedfuse_protocol::msgs::{
    Capabilities, Hello, LocalWork, Metric, RejectionReason, TrainingPlan, UpdateUpload, validation_metric,
};
use fedfuse_protocol::tensor::{NamedTensor, UpdateEncoding, ValueEncoding};
use fedfuse_server::aggregate::AggregationRule;
use fedfuse_server::layout::{ModelLayout, TensorSpec};
use fedfuse_server::pki::{self, InitOptions, PlatformDir, StoreBundle};
use fedfuse_server::round::RoundPolicy;
use fedfuse_server::schedule::LearningRateSchedule;
use fedfuse_server::service::{FineTuned, FineTuner, ServiceOptions, ServiceReport, run_aggregator, run_aggregator_with};
use fedfuse_server::state::AggregatorState;
use fedfuse_transport::{AggregatorEndpoint, PeerConnection, StoreEndpoint, TransportTuning};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const PARAMS: usize = 4;

struct TowardTarget {
    target: Vec<f32>,
    examples: u64,
    poison: bool,
    /// (round, learning rate) of every offer trained on.
    offered_rates: OfferedRates,
    /// What the store's validation shoppers make of the offered parameters: (HR@10, NDCG@10,
    /// shoppers), reported with the update.
    validation: Option<Validation>,
}

type Validation = fn(&[f32]) -> (f64, f64, f64);

impl TowardTarget {
    /// An honest store of one example, pulling every parameter towards `t`.
    fn honest(t: f32) -> Self {
        Self {
            target: target(t),
            examples: 1,
            poison: false,
            offered_rates: Default::default(),
            validation: None,
        }
    }
}

type OfferedRates = Arc<std::sync::Mutex<Vec<(u64, f32)>>>;

impl LocalTrainer for TowardTarget {
    fn train(&mut self, round: u64, shapes: &[TensorShape], params: &[f32], plan: &TrainingPlan) -> Result<LocalUpdate, String> {
        self.offered_rates.lock().unwrap().push((round, plan.learning_rate));
        assert_eq!(shapes, &[("w".to_string(), vec![PARAMS as u32])]);
        let mut delta: Vec<f32> = self.target.iter().zip(params).map(|(t, p)| t - p).collect();
        if self.poison {
            delta[1] = f32::NAN;
        }
        let metrics = self.validation.map_or_else(Vec::new, |v| {
            let (hr, ndcg, shoppers) = v(params);
            [
                (validation_metric::HR10, hr),
                (validation_metric::NDCG10, ndcg),
                (validation_metric::SHOPPERS, shoppers),
            ]
            .map(|(name, value)| Metric {
                name: name.into(),
                value,
            })
            .to_vec()
        });
        Ok(LocalUpdate {
            delta,
            example_count: self.examples,
            metrics,
            privacy_spend: None,
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
    options_with(policy, LearningRateSchedule::Constant)
}

fn options_with(policy: RoundPolicy, schedule: LearningRateSchedule) -> ServiceOptions {
    ServiceOptions {
        policy,
        plan: TrainingPlan {
            work: LocalWork::Epochs(1),
            learning_rate: 0.01,
            batch_size: 64,
            proximal_mu: None,
            update_encoding: UpdateEncoding::Dense(ValueEncoding::F32),
            dp: None,
            trainable: Vec::new(),
        },
        schedule,
        capabilities: caps(),
        chunk_bytes: 1 << 20,
        tick: Duration::from_millis(50),
        tail_average: 0,
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

/// The platform's aggregator endpoint on a free loopback port.
fn bind_aggregator(platform: &PlatformDir) -> Arc<AggregatorEndpoint> {
    let (identity, trust) = platform.aggregator_tls().unwrap();
    Arc::new(
        AggregatorEndpoint::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            identity,
            &trust,
            TransportTuning::default(),
        )
        .unwrap(),
    )
}

fn start(
    platform_dir: &tempfile::TempDir,
    state_dir: &std::path::Path,
    opts: ServiceOptions,
) -> (SocketAddr, watch::Sender<bool>, JoinHandle<ServiceReport>) {
    let platform = PlatformDir::open(platform_dir.path()).unwrap();
    let endpoint = bind_aggregator(&platform);
    let addr = endpoint.local_addr().unwrap();
    let state = AggregatorState::open(state_dir).unwrap();
    let (stop, stopped) = watch::channel(false);
    let service = tokio::spawn(async move {
        run_aggregator(endpoint, state, Some((layout(), vec![0.0; PARAMS])), opts, stopped)
            .await
            .unwrap()
    });
    (addr, stop, service)
}

fn federation(state_dir: &std::path::Path, policy: RoundPolicy) -> Federation {
    federation_with(state_dir, options(policy))
}

fn federation_with(state_dir: &std::path::Path, opts: ServiceOptions) -> Federation {
    let dir = tempfile::tempdir().unwrap();
    let platform = pki::init(dir.path(), &InitOptions::default()).unwrap();
    let (addr, stop, service) = start(&dir, state_dir, opts);
    Federation {
        _pki: dir,
        platform,
        addr,
        stop,
        service,
    }
}

impl Federation {
    /// A store agent running the honest stand-in trainer toward `target`.
    fn spawn_store(&self, name: &str, target_value: f32, examples: u64, poison: bool) -> JoinHandle<AgentReport> {
        let bundle = self.platform.issue_store(name, 1).unwrap();
        tokio::spawn(store(
            bundle,
            self.addr,
            TowardTarget {
                target: target(target_value),
                examples,
                poison,
                offered_rates: Default::default(),
                validation: None,
            },
        ))
    }

    /// A store driven by hand up to its first offer (model received), for tests that then
    /// send what no honest agent would. The endpoint is returned so it outlives the connection.
    async fn take_first_offer_by_hand(&self, name: &str) -> (StoreEndpoint, PeerConnection, fedfuse_protocol::msgs::RoundOffer) {
        let bundle = self.platform.issue_store(name, 1).unwrap();
        let (identity, trust) = bundle.tls().unwrap();
        let endpoint = StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default()).unwrap();
        let conn = endpoint.connect(self.addr, &bundle.aggregator_name).await.unwrap();
        conn.send(&Message::Hello(Hello::current(name, caps()))).await.unwrap();
        assert!(matches!(conn.recv().await.unwrap(), Message::Welcome(_)));
        let Message::RoundOffer(offer) = conn.recv().await.unwrap() else {
            panic!("no offer")
        };
        conn.recv_model(&offer.model, 1 << 20).await.unwrap();
        (endpoint, conn, offer)
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

/// A store's answer to `offer` sent by hand: `w` moved by `value` everywhere, in f32.
fn upload_of(offer: &fedfuse_protocol::msgs::RoundOffer, example_count: u64, value: f32) -> Message {
    Message::UpdateUpload(UpdateUpload {
        round_id: offer.round_id,
        base_model_version: offer.model.version,
        example_count,
        metrics: vec![],
        privacy_spend: None,
        tensors: vec![
            NamedTensor::encode(
                "w",
                &[PARAMS as u32],
                &[value; PARAMS],
                UpdateEncoding::Dense(ValueEncoding::F32),
                0,
            )
            .unwrap(),
        ],
    })
}

fn assert_close(got: &[f32], want: f32) {
    assert!(got.iter().all(|g| (g - want).abs() < 1e-5), "{got:?} vs {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_stores_complete_three_rounds() {
    let state = tempfile::tempdir().unwrap();
    let f = federation(state.path(), policy(3, 3, 3));
    let stores = [("a", 1.0, 1), ("b", 2.0, 1), ("c", 5.0, 2)].map(|(name, t, examples)| f.spawn_store(name, t, examples, false));
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
    let good = [("a", 1.0), ("b", 3.0)].map(|(name, t)| f.spawn_store(name, t, 1, false));
    // The third store takes its offer, starts uploading a huge poisoned update, and dies.
    let (endpoint, conn, offer) = f.take_first_offer_by_hand("doomed").await;
    let upload = upload_of(&offer, 1_000_000, 1e6).encode().unwrap();
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
    let stores =
        [("a", 1.0, false), ("b", 3.0, false), ("nan", 100.0, true)].map(|(name, t, poison)| f.spawn_store(name, t, 1, poison));
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
    let reports: Vec<AgentReport> = futures_join(stores.into()).await;
    let nan = reports.iter().find(|r| r.store_id == "nan").unwrap();
    assert!(
        matches!(&nan.rejected[..], [(1, RejectionReason::NonFinite { .. })]),
        "{:?}",
        nan.rejected
    );
    assert!(nan.accepted.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongly_shaped_update_is_rejected_with_its_reason_and_never_applied() {
    let state = tempfile::tempdir().unwrap();
    let f = federation(
        state.path(),
        RoundPolicy {
            deadline_ms: 2_000,
            ..policy(3, 2, 1)
        },
    );
    let good = [("a", 1.0), ("b", 3.0)].map(|(name, t)| f.spawn_store(name, t, 1, false));
    // The third store answers its offer with a tensor of the wrong shape.
    let (_endpoint, conn, offer) = f.take_first_offer_by_hand("shaped").await;
    let wrong = [PARAMS as u32 + 1];
    conn.send(&Message::UpdateUpload(UpdateUpload {
        round_id: offer.round_id,
        base_model_version: offer.model.version,
        example_count: 1_000,
        metrics: vec![],
        privacy_spend: None,
        tensors: vec![
            NamedTensor::encode("w", &wrong, &[1e6; PARAMS + 1], UpdateEncoding::Dense(ValueEncoding::F32), 0).unwrap(),
        ],
    }))
    .await
    .unwrap();
    let verdict = loop {
        match conn.recv().await.unwrap() {
            Message::UpdateRejected(r) => break r,
            Message::Heartbeat(_) => continue,
            other => panic!("expected a rejection, got {:?}", other.kind()),
        }
    };
    assert!(
        matches!(&verdict.reason, RejectionReason::WrongShape { name, expected, got } if name == "w" && expected == &[PARAMS as u32] && got == &wrong),
        "{:?}",
        verdict.reason
    );
    let report = tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    // The rejected update touched nothing: the mean of the two good ones.
    assert_close(&report.params, 2.0);
    assert!(
        report
            .rejected
            .iter()
            .any(|(s, _, r)| s == "shaped" && matches!(r, RejectionReason::WrongShape { .. }))
    );
    for s in good {
        assert_eq!(s.await.unwrap().accepted, vec![1]);
    }
    conn.close("done");
}

/// A plan that freezes `w` (it trains only `head_`): the offer carries that over the wire, an
/// update moving `w` is rejected naming it, and the same store's update that leaves `w` out
/// is then taken, so the model stays where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_moving_a_parameter_the_plan_froze_is_rejected_and_a_still_one_taken() {
    let state = tempfile::tempdir().unwrap();
    let mut opts = options(RoundPolicy {
        deadline_ms: 10_000,
        ..policy(1, 1, 1)
    });
    opts.plan.trainable = vec!["head_".into()];
    let f = federation_with(state.path(), opts);
    let (_endpoint, conn, offer) = f.take_first_offer_by_hand("mover").await;
    assert_eq!(offer.plan.trainable, vec!["head_".to_string()]);
    let upload = |w: f32| upload_of(&offer, 1, w);
    let verdict = |conn: PeerConnection| async move {
        loop {
            match conn.recv().await.unwrap() {
                Message::Heartbeat(_) => continue,
                other => break (other, conn),
            }
        }
    };
    conn.send(&upload(1.0)).await.unwrap();
    let (answer, conn) = verdict(conn).await;
    match answer {
        Message::UpdateRejected(r) => assert!(
            matches!(&r.reason, RejectionReason::Malformed { detail } if detail.contains("\"w\" changed, but the round's plan does not train it")),
            "{:?}",
            r.reason
        ),
        other => panic!("expected a rejection, got {:?}", other.kind()),
    }
    // The frozen tensor may be left out: it did not move.
    let Message::UpdateUpload(mut still) = upload(0.0) else {
        unreachable!()
    };
    still.tensors.clear();
    conn.send(&Message::UpdateUpload(still)).await.unwrap();
    let (answer, conn) = verdict(conn).await;
    assert!(matches!(answer, Message::UpdateAccepted(_)), "{:?}", answer.kind());
    let report = tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    assert_close(&report.params, 0.0);
    assert!(matches!(&report.rejected[..], [(s, 1, RejectionReason::Malformed { .. })] if s == "mover"));
    conn.close("done");
}

struct Slow(TowardTarget);

impl LocalTrainer for Slow {
    fn train(&mut self, round: u64, shapes: &[TensorShape], params: &[f32], plan: &TrainingPlan) -> Result<LocalUpdate, String> {
        std::thread::sleep(Duration::from_millis(400));
        self.0.train(round, shapes, params, plan)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_reconnect_with_backoff_after_the_aggregator_is_lost_and_finish() {
    let state = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let platform = pki::init(dir.path(), &InitOptions::default()).unwrap();
    // A fixed port, so the restarted aggregator is where the stores look for it.
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let serve = |rounds: u64| {
        let (identity, trust) = platform.aggregator_tls().unwrap();
        // The lost aggregator's socket goes once its last connection task has ended.
        let mut tries = 0;
        let endpoint = loop {
            match AggregatorEndpoint::bind(addr, identity.clone(), &trust, TransportTuning::default()) {
                Ok(e) => break Arc::new(e),
                Err(e) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                    let _ = e;
                }
                Err(e) => panic!("cannot rebind {addr}: {e}"),
            }
        };
        let state = AggregatorState::open(state.path()).unwrap();
        let (stop, stopped) = watch::channel(false);
        let e = endpoint.clone();
        let task = tokio::spawn(async move {
            run_aggregator(
                e,
                state,
                Some((layout(), vec![0.0; PARAMS])),
                options(policy(2, 2, rounds)),
                stopped,
            )
            .await
        });
        (endpoint, stop, task)
    };
    let (endpoint, _stop, task) = serve(3);
    let agents: Vec<_> = [("a", 1.0), ("b", 3.0)]
        .into_iter()
        .map(|(name, t)| {
            let bundle = platform.issue_store(name, 1).unwrap();
            tokio::spawn(async move {
                let (identity, trust) = bundle.tls().unwrap();
                let endpoint = StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default()).unwrap();
                let opts = AgentOptions {
                    software_version: "test".into(),
                    capabilities: caps(),
                    max_model_bytes: 1 << 20,
                    rounding_seed: 1,
                };
                // Slow enough that the aggregator is lost in the middle of the federation.
                let mut trainer = Slow(TowardTarget {
                    target: target(t),
                    examples: 1,
                    poison: false,
                    offered_rates: Default::default(),
                    validation: None,
                });
                let backoff = fedfuse_client::Backoff {
                    initial: Duration::from_millis(100),
                    max: Duration::from_millis(800),
                    attempts: 50,
                };
                fedfuse_client::run_agent(&endpoint, addr, &bundle.aggregator_name, &mut trainer, &opts, backoff, None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    // Wait for round 1 to commit, then lose the aggregator without a goodbye.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        // The aggregator holds the database open; round 1's model blob shows it committing.
        if state.path().join("models/v00000001.bin").exists() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "round 1 never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.abort();
    endpoint.close();
    drop(endpoint);
    // The aborted task lets go of the database at its next await, which an fsync in progress
    // can delay well past any fixed sleep on a loaded disk: wait for the handle, with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let reopened = loop {
        match AggregatorState::open(state.path()) {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the lost aggregator kept its database: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let before = reopened.committed().unwrap().unwrap().version;
    drop(reopened);
    assert!(before >= 1);
    // A new aggregator on the same address and state resumes for two more rounds; the stores
    // come back by themselves.
    let (_endpoint, _stop2, task) = serve(2);
    let report = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.version, before + 2, "two more rounds committed after the loss");
    assert_close(&report.params, 2.0);
    for a in agents {
        let run = tokio::time::timeout(Duration::from_secs(30), a).await.unwrap().unwrap();
        assert!(run.sessions >= 2, "the store reconnected ({} sessions)", run.sessions);
        assert!(!run.interruptions.is_empty());
        assert!(run.trained_rounds.contains(&(before + 2)), "{:?}", run.trained_rounds);
    }
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
            .map(|(b, t)| tokio::spawn(store(b.clone(), addr, TowardTarget::honest(t))))
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
    let (addr, _stop, service) = start(&f._pki, state.path(), options(policy(2, 2, 1)));
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

mod private {
    //! Client-level DP on the wire: the ledger is durable before the update leaves, and a
    //! store whose budget is spent leaves instead of training.

    use fedfuse_client::privacy::{StorePrivacy, StorePrivacyPolicy};
    use fedfuse_client::run_private_session;
    use fedfuse_privacy::Budget;
    use fedfuse_protocol::msgs::*;
    use fedfuse_server::state::encode_model;

    use super::*;

    fn dp_plan() -> TrainingPlan {
        TrainingPlan {
            dp: Some(DpRequirement {
                unit: PrivacyUnit::Store,
                noise_mode: NoiseMode::Local,
                min_noise_multiplier: 1.0,
                max_clip_norm: 1.0,
                max_sampling_rate: 1.0,
                delta: 1e-5,
            }),
            ..options(policy(1, 1, 1)).plan
        }
    }

    /// A hand-driven aggregator: welcome, offer one round, return the store's next message
    /// along with the ledger as it stood when that message arrived.
    async fn one_round(
        epsilon_max: f64,
        guarded: bool,
    ) -> (
        Message,
        Vec<fedfuse_privacy::LedgerEntry>,
        AgentReport,
        std::path::PathBuf,
        tempfile::TempDir,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let platform = pki::init(&dir.path().join("pki"), &InitOptions::default()).unwrap();
        let (identity, trust) = platform.aggregator_tls().unwrap();
        let agg = AggregatorEndpoint::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            identity,
            &trust,
            TransportTuning::default(),
        )
        .unwrap();
        let addr = agg.local_addr().unwrap();
        let bundle = platform.issue_store("berlin", 1).unwrap();
        let ledger_path = dir.path().join("berlin.ledger.jsonl");
        let blob = encode_model(&layout(), &[0.0; PARAMS]).unwrap();
        let aggregator = {
            let ledger_path = ledger_path.clone();
            async move {
                let conn = agg.accept().await.unwrap().unwrap();
                let Message::Hello(_) = conn.recv().await.unwrap() else {
                    panic!("no hello")
                };
                conn.send(&Message::Welcome(Welcome {
                    protocol_version: fedfuse_protocol::PROTOCOL_VERSION,
                    store_id: conn.peer_id().into(),
                    session_id: 1,
                    capabilities: caps(),
                    heartbeat_interval_ms: 1000,
                }))
                .await
                .unwrap();
                let model = ModelManifest {
                    version: 0,
                    content_hash: fedfuse_protocol::content_hash(&blob),
                    total_bytes: blob.len() as u64,
                    chunk_bytes: 1 << 16,
                };
                conn.send(&Message::RoundOffer(RoundOffer {
                    round_id: 1,
                    model: model.clone(),
                    plan: dp_plan(),
                    deadline_unix_ms: u64::MAX,
                }))
                .await
                .unwrap();
                conn.send_model(&model, &blob).await.unwrap();
                let reply = conn.recv().await.unwrap();
                // The moment the store's message arrives: what does its ledger hold?
                let ledger = fedfuse_privacy::ledger::verify(&ledger_path).unwrap();
                if matches!(reply, Message::UpdateUpload(_)) {
                    conn.send(&Message::UpdateAccepted(UpdateAccepted {
                        round_id: 1,
                        updates_in_round: 1,
                    }))
                    .await
                    .unwrap();
                    conn.send(&Message::Bye(Bye { reason: "done".into() })).await.unwrap();
                }
                conn.close_gracefully("done", Duration::from_secs(2)).await;
                (reply, ledger)
            }
        };
        let store = {
            let ledger_path = ledger_path.clone();
            async move {
                let (identity, trust) = bundle.tls().unwrap();
                let endpoint = StoreEndpoint::new(Some(&identity), &trust, &TransportTuning::default()).unwrap();
                let conn = endpoint.connect(addr, &bundle.aggregator_name).await.unwrap();
                let policy = StorePrivacyPolicy {
                    budget: Budget {
                        epsilon_max,
                        delta: 1e-5,
                    },
                    noise_multiplier: 0.5, // weaker than the round asks: the round's 1.0 wins
                    clip_norm: 2.0,        // looser than the round allows: the round's 1.0 wins
                    grid_exponent: -20,
                };
                let mut guard = StorePrivacy::open("berlin", policy, &ledger_path).unwrap();
                let opts = AgentOptions {
                    software_version: "test".into(),
                    capabilities: caps(),
                    max_model_bytes: 1 << 20,
                    rounding_seed: 1,
                };
                let mut trainer = TowardTarget {
                    target: target(3.0),
                    examples: 1,
                    poison: false,
                    offered_rates: Default::default(),
                    validation: None,
                };
                run_private_session(&conn, &mut trainer, &opts, guarded.then_some(&mut guard))
                    .await
                    .unwrap()
            }
        };
        let ((reply, ledger), report) = tokio::join!(aggregator, store);
        (reply, ledger, report, ledger_path, dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ledger_entry_is_on_disk_before_the_update_is_sent() {
        let (reply, ledger, report, _, _dir) = one_round(20.0, true).await;
        let Message::UpdateUpload(upload) = reply else {
            panic!("expected an update, got {reply:?}")
        };
        let spend = upload.privacy_spend.expect("a DP update carries its spend");
        assert_eq!(ledger.len(), 1, "the entry was durable when the update arrived");
        let entry = &ledger[0];
        let hex: String = spend.ledger_entry_hash.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, entry.hash, "the upload names its ledger entry");
        assert_eq!((entry.release.round, entry.release.clip_norm), (1, 1.0));
        // The noise is raised by the grid rounding's share of the sensitivity, so the σ charged
        // (over C plus the rounding) meets the round's 1.0, only just: the aggregator checks it.
        let charged = entry.release.noise_multiplier;
        assert!((1.0 - 1e-12..1.0001).contains(&charged), "{charged}");
        assert_eq!(spend.noise_multiplier, charged);
        // The update's norm after clipping (≤ 1) plus noise of std 1 per coordinate is not the
        // raw delta of norm 6: the store sent a privatised update.
        let values = upload.tensors[0].to_f32(&[PARAMS as u32]).unwrap();
        assert!(values.iter().any(|v| (v - 3.0).abs() > 1e-3));
        assert_eq!(report.accepted, vec![1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_over_budget_refuses_to_train_and_says_why() {
        // One Gaussian release at z ≈ 1 costs ε ≈ 4.5 at δ = 1e-5: a budget of 1 cannot pay.
        let (reply, ledger, report, _, _dir) = one_round(1.0, true).await;
        let Message::Bye(bye) = reply else {
            panic!("expected a goodbye, got {reply:?}")
        };
        assert!(bye.reason.contains("refuses to train"), "{}", bye.reason);
        assert!(ledger.is_empty(), "nothing charged");
        assert!(report.trained_rounds.is_empty());
        assert_eq!(report.refused.as_deref(), Some(bye.reason.as_str()));
    }

    /// A store configured without DP never trains a round that requires it: it says why and
    /// leaves, and nothing of its data is sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_without_dp_refuses_a_round_that_requires_it() {
        let (reply, ledger, report, _, _dir) = one_round(20.0, false).await;
        let Message::Bye(bye) = reply else {
            panic!("expected a goodbye, got {reply:?}")
        };
        assert!(bye.reason.contains("requires store-level DP"), "{}", bye.reason);
        assert!(bye.reason.contains("mode = \"store\""), "{}", bye.reason);
        assert!(ledger.is_empty());
        assert!(report.trained_rounds.is_empty());
        assert_eq!(report.refused.as_deref(), Some(bye.reason.as_str()));
    }
}

/// Central DP on real QUIC: each round's model exists only after its release is on the
/// aggregator's ledger, the chain audits clean, and the budget, not the round count, ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_dp_charges_the_aggregators_ledger_before_each_model_and_stops_at_the_budget() {
    use fedfuse_server::central_dp::{CentralDp, CentralPrivacy};
    let state = tempfile::tempdir().unwrap();
    let dp = CentralDp {
        noise_multiplier: 2.0,
        clip_norm: 1.0,
        expected_stores: 3.0,
        epsilon_max: 4.0,
        delta: 1e-5,
        adaptive: None,
        grid_exponent: -20,
    };
    // What the accountant allows, asked of a scratch ledger the same way the service will.
    let scratch = tempfile::tempdir().unwrap();
    let allowed = CentralPrivacy::open(dp.clone(), &scratch.path().join("l.jsonl"), PARAMS)
        .unwrap()
        .rounds_allowed(10)
        .unwrap();
    assert!((1..10).contains(&allowed), "{allowed}");
    let f = federation(
        state.path(),
        RoundPolicy {
            central_dp: Some(dp.clone()),
            ..policy(3, 3, 10)
        },
    );
    // Targets 0.1, 0.2, 0.3: every update is within C, the noiseless average would be 0.2.
    let stores = [("a", 0.1), ("b", 0.2), ("c", 0.3)].map(|(name, t)| f.spawn_store(name, t, 1, false));
    let report = tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    assert!(report.budget_spent);
    let committed: Vec<_> = report.rounds.iter().filter(|r| r.round_id > 0).collect();
    assert_eq!(committed.len() as u64, allowed);
    let ledger_path = state.path().join("privacy-ledger.jsonl");
    let entries = fedfuse_privacy::ledger::verify(&ledger_path).unwrap();
    assert_eq!(entries.len() as u64, allowed);
    for (entry, round) in entries.iter().zip(&committed) {
        assert_eq!(entry.release.round, round.round_id);
        assert!(
            entry.unix_ms <= round.unix_ms,
            "round {} committed before its charge",
            round.round_id
        );
        assert_eq!(entry.release.steps, 1);
        assert_eq!(entry.release.sampling_probability, 1.0);
        assert!(entry.release.noise_multiplier >= 2.0);
    }
    let audit = fedfuse_privacy::audit::audit_ledger(&ledger_path).unwrap();
    assert_eq!(audit.len(), 1);
    assert!(audit[0].ok(), "{:?}", audit[0]);
    let eps = report.central_epsilon.unwrap();
    assert!(eps <= 4.0 && (eps - audit[0].eps_pld.min(audit[0].eps_rdp)).abs() < 1e-9);
    // The published model is noised: std z·C/3 ≈ 0.67 per coordinate and round.
    assert!(report.params.iter().all(|p| p.is_finite()));
    assert!(report.params.iter().any(|p| (p - 0.2).abs() > 1e-3), "{:?}", report.params);
    for s in stores {
        assert_eq!(s.await.unwrap().accepted.len() as u64, allowed);
    }
}

/// The learning rate each offer carries follows the aggregator's schedule, round by round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_carry_the_scheduled_learning_rate() {
    let state = tempfile::tempdir().unwrap();
    let schedule = LearningRateSchedule::Cosine {
        min_learning_rate: 0.001,
        hold_rounds: 0,
    };
    let f = federation_with(state.path(), options_with(policy(2, 2, 4), schedule));
    let rates: Vec<OfferedRates> = (0..2).map(|_| Default::default()).collect();
    let stores: Vec<_> = ["a", "b"]
        .iter()
        .zip(&rates)
        .map(|(name, r)| {
            tokio::spawn(store(
                f.platform.issue_store(name, 1).unwrap(),
                f.addr,
                TowardTarget {
                    target: target(1.0),
                    examples: 1,
                    poison: false,
                    offered_rates: r.clone(),
                    validation: None,
                },
            ))
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    futures_join(stores).await;
    // options() offers 0.01; cosine over 4 rounds towards 0.001.
    let want: Vec<(u64, f32)> = (1..=4).map(|r| (r, schedule.rate(0.01, r, 4))).collect();
    assert_eq!(want[0].1, 0.01);
    assert!(want.windows(2).all(|w| w[1].1 < w[0].1));
    for r in &rates {
        assert_eq!(*r.lock().unwrap(), want);
    }
}

/// The aggregator pools the stores' validation of each offered version, shopper-weighted,
/// from accepted updates only, and remembers the best version as the one to serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_best_version_by_pooled_store_validation_is_the_one_served() {
    let state = tempfile::tempdir().unwrap();
    // The poisoned store's update is rejected each round, so rounds close at the deadline.
    let f = federation(
        state.path(),
        RoundPolicy {
            deadline_ms: 2_000,
            ..policy(3, 2, 2)
        },
    );
    let spawn = |name: &str, target_value: f32, poison: bool, validation: Validation| {
        tokio::spawn(store(
            f.platform.issue_store(name, 1).unwrap(),
            f.addr,
            TowardTarget {
                target: target(target_value),
                examples: 1,
                poison,
                offered_rates: Default::default(),
                validation: Some(validation),
            },
        ))
    };
    // Store a likes parameters near 2 (10 shoppers), b is indifferent (0.5 of 30 shoppers),
    // and the poisoned store claims a perfect score for 1000 shoppers: counted, it would win.
    let stores = vec![
        spawn("a", 1.0, false, |p| (1.0 / (1.0 + f64::from(p[0] - 2.0).powi(2)), 0.1, 10.0)),
        spawn("b", 5.0, false, |_| (0.5, 0.2, 30.0)),
        spawn("liar", 9.0, true, |_| (1.0, 1.0, 1000.0)),
    ];
    let report = tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    futures_join(stores).await;
    // Version 0 (all zeros) was validated in round 1: (0.2·10 + 0.5·30) / 40 = 0.425;
    // version 1 (the mean of 1 and 5, all 3s) in round 2: (0.5·10 + 0.5·30) / 40 = 0.5.
    // Version 2 (3s again) was never offered, so never validated.
    assert_close(&report.params, 3.0);
    let best = report.best_validated.clone().expect("stores reported validation");
    assert_eq!((best.version, best.round_id, best.shoppers, best.stores), (1, 2, 40, 2));
    assert!(
        (best.hr10 - 0.5).abs() < 1e-12 && (best.ndcg10 - 0.175).abs() < 1e-12,
        "{best:?}"
    );
    let hr_of_round = |round: u64| {
        let r = report.rounds.iter().find(|r| r.round_id == round).unwrap();
        r.metrics
            .iter()
            .find(|(n, _)| n == "federated_validation_hr10")
            .map(|(_, v)| *v)
    };
    assert!((hr_of_round(1).unwrap() - 0.425).abs() < 1e-12);
    assert_eq!(hr_of_round(2), Some(0.5));
    // What is served after a restart: the validated blob, checked against its hash.
    let reopened = AggregatorState::open(state.path()).unwrap();
    let served = reopened.load_validated(&reopened.best_validated().unwrap().unwrap()).unwrap();
    assert_eq!((served.version, served.params), (1, vec![3.0; PARAMS]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aggregator_keeps_the_average_of_the_last_models_beside_the_latest() {
    let state = tempfile::tempdir().unwrap();
    // A server learning rate of ½ makes the model move every round: 1.625, 2.4375, 2.84375
    // toward the example-weighted target 3.25, so the average of the last two differs from
    // every version.
    let mut opts = options(RoundPolicy {
        optimizer: fedfuse_server::aggregate::optimizer::ServerOptimizerConfig::FedAvg { lr: 0.5 },
        ..policy(3, 3, 3)
    });
    opts.tail_average = 2;
    let f = federation_with(state.path(), opts);
    let stores = [("a", 1.0, 1), ("b", 2.0, 1), ("c", 5.0, 2)].map(|(name, t, examples)| f.spawn_store(name, t, examples, false));
    let report = tokio::time::timeout(Duration::from_secs(60), f.service)
        .await
        .unwrap()
        .unwrap();
    for s in stores {
        s.await.unwrap();
    }
    assert_close(&report.params, 2.84375);
    let averaged = report.tail_average.clone().expect("the average was kept");
    assert_eq!((averaged.versions.clone(), averaged.rounds.clone()), (vec![2, 3], vec![2, 3]));
    // After a restart the averaged blob loads by its recorded hash; the latest is untouched.
    let reopened = AggregatorState::open(state.path()).unwrap();
    assert_eq!(reopened.tail_average().unwrap(), Some(averaged.clone()));
    let served = reopened.load_tail_average(&averaged).unwrap();
    assert_close(&served.params, (2.4375 + 2.84375) / 2.0);
    let latest = reopened.load(&reopened.committed().unwrap().unwrap()).unwrap();
    assert_close(&latest.params, 2.84375);
}

/// An aggregator whose plan no store could train, whose schedule would come to offer one, or
/// whose round policy cannot run, does not start, and says which value is wrong: stores would
/// otherwise refuse every offer (or, before they checked, crash on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_with_a_plan_no_store_could_train_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let platform = pki::init(dir.path(), &InitOptions::default()).unwrap();
    let mut too_fast = options(policy(1, 1, 1));
    too_fast.plan.learning_rate = 2.0;
    let to_zero = options_with(
        policy(1, 1, 3),
        LearningRateSchedule::Cosine {
            min_learning_rate: 0.0,
            hold_rounds: 0,
        },
    );
    let no_one = options(RoundPolicy {
        sample_fraction: f64::NAN,
        ..policy(1, 1, 1)
    });
    for (opts, want) in [
        (too_fast, "learning rate 2 is not in (0, 1]"),
        (to_zero, "min_learning_rate 0 must be above 0"),
        (no_one, "sample_fraction = NaN"),
    ] {
        let endpoint = bind_aggregator(&platform);
        let state_dir = tempfile::tempdir().unwrap();
        let state = AggregatorState::open(state_dir.path()).unwrap();
        let (_stop, stopped) = watch::channel(false);
        let err = run_aggregator(endpoint, state, Some((layout(), vec![0.0; PARAMS])), opts, stopped)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
}

/// A platform fine-tuner with a bug.
struct PanickingTuner;

impl FineTuner for PanickingTuner {
    fn fine_tune(&mut self, _version: u64, _layout: &ModelLayout, _params: &[f32]) -> Result<FineTuned, String> {
        panic!("a bug in the fine-tuner")
    }
}

/// Fine-tuning runs on a blocking thread; a panic there once left the round waiting for it
/// forever. Now it is the round's fine-tuning error: the aggregate is published untuned and
/// the federation goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_fine_tuner_costs_the_rounds_tuning_not_the_federation() {
    let dir = tempfile::tempdir().unwrap();
    let platform = pki::init(dir.path(), &InitOptions::default()).unwrap();
    let endpoint = bind_aggregator(&platform);
    let addr = endpoint.local_addr().unwrap();
    let state_dir = tempfile::tempdir().unwrap();
    let state = AggregatorState::open(state_dir.path()).unwrap();
    let (_stop, stopped) = watch::channel(false);
    let opts = options(RoundPolicy {
        fine_tune: true,
        ..policy(2, 2, 2)
    });
    let service = tokio::spawn(run_aggregator_with(
        endpoint,
        state,
        Some((layout(), vec![0.0; PARAMS])),
        opts,
        stopped,
        Some(Box::new(PanickingTuner)),
    ));
    let stores: Vec<_> = [("a", 1.0), ("b", 3.0)]
        .iter()
        .map(|&(name, t)| tokio::spawn(store(platform.issue_store(name, 1).unwrap(), addr, TowardTarget::honest(t))))
        .collect();
    let report = tokio::time::timeout(Duration::from_secs(60), service)
        .await
        .expect("the federation finishes")
        .unwrap()
        .unwrap();
    assert_eq!(report.version, 2);
    assert_close(&report.params, 2.0);
    assert!(report.fine_tuning.is_empty(), "no round kept a tuning");
    for s in futures_join(stores).await {
        assert_eq!(s.accepted, vec![1, 2]);
    }
}
