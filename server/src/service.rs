//! The aggregator service: the async driver around the [`RoundCoordinator`].
//!
//! Each store connection gets a reader task (messages in → coordinator events) and a writer
//! task (coordinator actions → messages out); `PeerConnection::recv` is not cancel-safe, so
//! reading and writing never share a `select!`. One coordinator task owns all round state:
//! it feeds events to the state machine, executes the actions it returns, and persists every
//! commit through [`AggregatorState`] before the new model is offered.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fedfuse_protocol::PROTOCOL_VERSION;
use fedfuse_protocol::msgs::{
    Bye, Capabilities, ModelManifest, RefusalReason, Refused, RejectionReason, RoundOffer, TrainingPlan, UpdateAccepted,
    UpdateRejected, Welcome, negotiate,
};
use fedfuse_protocol::{Message, MessageKind};
use fedfuse_transport::{AggregatorEndpoint, PeerConnection, TransportError};
use tokio::sync::{mpsc, watch};

use crate::central_dp::{CentralDpError, CentralPrivacy};
use crate::layout::ModelLayout;
use crate::round::{Action, CentralClipping, Event, RoundCoordinator, RoundPolicy, StoreId};
use crate::schedule::LearningRateSchedule;
use crate::selection::{ValidatedModel, ValidationTally};
use crate::state::{AggregatorState, RoundRecord, StateError};
use crate::tail_average::AveragedModel;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error("a new federation needs a starting model (layout and parameters)")]
    NoModel,
    #[error("[round] fine_tune = true, but no fine-tuner was given (configure [fine_tune])")]
    FineTuneUnavailable,
    #[error(transparent)]
    CentralDp(#[from] CentralDpError),
    #[error("the plan offered to stores: {0}")]
    Plan(String),
    #[error("the round policy: {0}")]
    Policy(String),
}

/// How the service runs rounds and what it offers.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub policy: RoundPolicy,
    /// Sent with every offer, its learning rate set by `schedule` for the round.
    pub plan: TrainingPlan,
    pub schedule: LearningRateSchedule,
    pub capabilities: Capabilities,
    pub chunk_bytes: u32,
    /// How often the coordinator sees the clock.
    pub tick: Duration,
    /// After every commit, average the last this many trained models and record that as the
    /// averaged model to serve ([`crate::tail_average`]); 0 keeps no average.
    pub tail_average: usize,
}

/// What fine-tuning produced: the parameters to publish (the input again when tuning did not
/// help) and metrics to record with the round.
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuned {
    pub params: Vec<f32>,
    pub metrics: Vec<(String, f64)>,
}

/// The platform's fine-tuning of each aggregated model on data it owns. Runs on a blocking
/// thread; an error keeps the aggregated model.
pub trait FineTuner: Send + 'static {
    fn fine_tune(&mut self, version: u64, layout: &ModelLayout, params: &[f32]) -> Result<FineTuned, String>;
}

/// What a finished (or stopped) service reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceReport {
    pub version: u64,
    pub content_hash: [u8; 32],
    pub params: Vec<f32>,
    pub rounds: Vec<RoundRecord>,
    pub rejected: Vec<(StoreId, u64, RejectionReason)>,
    pub failed_rounds: Vec<(u64, String)>,
    /// Per fine-tuned round: its metrics.
    pub fine_tuning: Vec<(u64, Vec<(String, f64)>)>,
    /// Central DP: ε spent by the federation so far (the smaller of RDP and PLD), and whether
    /// the budget stopped it.
    pub central_epsilon: Option<f64>,
    pub budget_spent: bool,
    /// The version the stores' pooled validation ranked best, for a platform that serves by
    /// validation. `None`
    /// when no store reported validation (DP federations, stores without validation data).
    pub best_validated: Option<ValidatedModel>,
    /// The average of the last `tail_average` models, when the options asked for one.
    pub tail_average: Option<AveragedModel>,
}

#[derive(Default)]
struct Reported {
    spend: Option<fedfuse_protocol::msgs::PrivacySpend>,
    metrics: Vec<fedfuse_protocol::msgs::Metric>,
}

enum Outbound {
    Message(Message),
    /// A heartbeat's echo; counted, so a store that sends them faster than it reads cannot
    /// queue them without end.
    Echo(Message),
    Offer(RoundOffer, Arc<Vec<u8>>),
    Bye,
}

/// `work`'s result, or what it panicked with: work handed to a blocking thread must answer the
/// coordinator either way, or the round it belongs to would wait for it forever.
fn unless_it_panics<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    })
}

/// Heartbeat echoes a session queues behind a busy writer (a model download, a peer that does
/// not read) before it drops further ones.
const MAX_QUEUED_ECHOES: usize = 4;

enum Inbound {
    Register(StoreId, u64, mpsc::UnboundedSender<Outbound>),
    /// A session ended; forwarded as `Event::Gone` only if it is still the store's current
    /// one (a store that reconnected must not lose its new session to the old one's end).
    Ended(StoreId, u64),
    Event(Event),
    FineTuned(u64, u64, Result<FineTuned, String>),
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the aggregator until the policy's rounds are done or `shutdown` turns true. Resumes
/// from `state` when it holds a committed model; otherwise starts from `initial`.
pub async fn run_aggregator(
    endpoint: Arc<AggregatorEndpoint>,
    state: AggregatorState,
    initial: Option<(ModelLayout, Vec<f32>)>,
    opts: ServiceOptions,
    shutdown: watch::Receiver<bool>,
) -> Result<ServiceReport, ServiceError> {
    run_aggregator_with(endpoint, state, initial, opts, shutdown, None).await
}

/// As [`run_aggregator`], with the platform's fine-tuner (needed when the policy fine-tunes).
pub async fn run_aggregator_with(
    endpoint: Arc<AggregatorEndpoint>,
    state: AggregatorState,
    initial: Option<(ModelLayout, Vec<f32>)>,
    opts: ServiceOptions,
    mut shutdown: watch::Receiver<bool>,
    fine_tuner: Option<Box<dyn FineTuner>>,
) -> Result<ServiceReport, ServiceError> {
    if opts.policy.fine_tune && fine_tuner.is_none() {
        return Err(ServiceError::FineTuneUnavailable);
    }
    opts.policy.check().map_err(ServiceError::Policy)?;
    // A plan stores would refuse (or a schedule that would reach one) fails here, at start.
    opts.plan
        .check()
        .and_then(|()| opts.schedule.check(opts.plan.learning_rate))
        .map_err(ServiceError::Plan)?;
    let fine_tuner = fine_tuner.map(|f| Arc::new(std::sync::Mutex::new(f)));
    let (mut snapshot, next_round, moments) = match state.committed()? {
        Some(c) => (state.load(&c)?, c.next_round, state.load_optimizer(&c)?),
        None => {
            let (layout, params) = initial.ok_or(ServiceError::NoModel)?;
            (state.commit(0, 0, &layout, &params, 0)?, 1, None)
        }
    };
    tracing::info!(version = snapshot.version, next_round, "aggregator starting");
    let spill = std::env::temp_dir();
    let mut coordinator = RoundCoordinator::new(
        opts.policy.clone(),
        snapshot.layout.clone(),
        snapshot.params.clone(),
        snapshot.version,
        next_round,
        spill,
    );
    if let Some(moments) = moments
        && let Err(why) = coordinator.resume_optimizer(moments)
    {
        // The model is intact; only the optimiser restarts, as it would after a policy change.
        tracing::warn!(%why, "server optimiser starts from fresh moments");
    }
    if let Some(required) = &opts.plan.dp {
        coordinator = coordinator.requiring_privacy(required.clone());
    }
    coordinator = coordinator.training_only(opts.plan.trainable.clone());
    // Central DP: the aggregator's own ledger, beside its database; a broken chain stops it.
    let central = match &opts.policy.central_dp {
        Some(config) => {
            let trained = snapshot.layout.trained_mask(&opts.plan.trainable);
            let privacy =
                CentralPrivacy::open(config.clone(), &state.ledger_path(), snapshot.layout.len())?.training_only(trained)?;
            let cap = if opts.policy.rounds > 0 { opts.policy.rounds } else { 1 << 20 };
            let rounds_allowed = privacy.rounds_allowed(cap)?;
            tracing::info!(
                rounds_allowed,
                epsilon_spent = privacy.spent()?.claimed(),
                epsilon_max = config.epsilon_max,
                ledger = %privacy.ledger().path().display(),
                "central DP"
            );
            coordinator = coordinator.with_central_dp(CentralClipping {
                clip_norm: privacy.clip_norm(),
                rounds_allowed,
            });
            Some(Arc::new(std::sync::Mutex::new(privacy)))
        }
        None => None,
    };
    let (inbound_tx, mut inbound_rx) = mpsc::unbounded_channel::<Inbound>();
    let acceptor = {
        let endpoint = endpoint.clone();
        let caps = opts.capabilities.clone();
        let inbound = inbound_tx.clone();
        tokio::spawn(async move {
            while let Some(attempt) = endpoint.accept().await {
                match attempt {
                    Ok(conn) => {
                        tokio::spawn(session(conn, inbound.clone(), caps.clone()));
                    }
                    Err(e) => tracing::warn!(error = %e, "refused a connection"),
                }
            }
        })
    };
    let mut report = ServiceReport {
        version: snapshot.version,
        content_hash: snapshot.content_hash,
        params: Vec::new(),
        rounds: Vec::new(),
        rejected: Vec::new(),
        failed_rounds: Vec::new(),
        fine_tuning: Vec::new(),
        central_epsilon: None,
        budget_spent: false,
        best_validated: None,
        tail_average: None,
    };
    let mut sessions: HashMap<StoreId, (u64, mpsc::UnboundedSender<Outbound>)> = HashMap::new();
    // What an update reported beside its delta (privacy spend, validation of the offered
    // model), held until the coordinator accepts it: a rejected update's reports count for nothing.
    let mut reported: HashMap<(StoreId, u64), Reported> = HashMap::new();
    let mut tallies: HashMap<u64, ValidationTally> = HashMap::new();
    let mut blob = Arc::new(std::mem::take(&mut snapshot.blob));
    let mut ticker = tokio::time::interval(opts.tick);
    let mut finished = false;
    let mut pending = coordinator.handle(Event::Tick { now_ms: unix_ms() });
    loop {
        for action in pending.drain(..) {
            match action {
                Action::Offer {
                    store,
                    round_id,
                    version,
                    deadline_ms,
                } => {
                    let offer = RoundOffer {
                        round_id,
                        model: ModelManifest {
                            version,
                            content_hash: snapshot.content_hash,
                            total_bytes: blob.len() as u64,
                            chunk_bytes: opts.chunk_bytes,
                        },
                        plan: TrainingPlan {
                            learning_rate: opts.schedule.rate(opts.plan.learning_rate, round_id, opts.policy.rounds),
                            ..opts.plan.clone()
                        },
                        deadline_unix_ms: deadline_ms,
                    };
                    if let Some((_, tx)) = sessions.get(&store) {
                        let _ = tx.send(Outbound::Offer(offer, blob.clone()));
                    }
                }
                Action::Accepted {
                    store,
                    round_id,
                    updates_in_round,
                } => {
                    let r = reported.remove(&(store.clone(), round_id)).unwrap_or_default();
                    state.record_update(&store, round_id, r.spend.as_ref())?;
                    tallies.entry(round_id).or_default().add(&r.metrics);
                    if let Some((_, tx)) = sessions.get(&store) {
                        let _ = tx.send(Outbound::Message(Message::UpdateAccepted(UpdateAccepted {
                            round_id,
                            updates_in_round,
                        })));
                    }
                }
                Action::Rejected { store, round_id, reason } => {
                    tracing::warn!(%store, round_id, %reason, "update rejected");
                    reported.remove(&(store.clone(), round_id));
                    if let Some((_, tx)) = sessions.get(&store) {
                        let _ = tx.send(Outbound::Message(Message::UpdateRejected(UpdateRejected {
                            round_id,
                            reason: reason.clone(),
                        })));
                    }
                    report.rejected.push((store, round_id, reason));
                }
                Action::Commit {
                    round_id,
                    version,
                    params,
                    updates,
                    optimizer,
                } => {
                    // The round's stores validated its base model: the one offered until now.
                    if let Some(validated) = tallies
                        .remove(&round_id)
                        .and_then(|t| t.finish(snapshot.version, snapshot.content_hash, round_id))
                    {
                        let best = state.record_validation(&validated)?;
                        tracing::info!(
                            round_id,
                            version = validated.version,
                            hr10 = validated.hr10,
                            shoppers = validated.shoppers,
                            best,
                            "federated validation"
                        );
                    }
                    snapshot = state.commit_with_optimizer(
                        round_id,
                        version,
                        &snapshot.layout,
                        &params,
                        updates,
                        optimizer.as_deref(),
                    )?;
                    blob = Arc::new(std::mem::take(&mut snapshot.blob));
                    tracing::info!(round_id, version, updates, "round committed");
                    if opts.tail_average > 0
                        && let Some(averaged) = state.commit_average_of_last(opts.tail_average)?
                    {
                        tracing::info!(round_id, versions = ?averaged.versions, "averaged the last models");
                    }
                }
                Action::FineTune {
                    round_id,
                    version,
                    params,
                } => {
                    let tuner = fine_tuner.clone().ok_or(ServiceError::FineTuneUnavailable)?;
                    let layout = snapshot.layout.clone();
                    let done = inbound_tx.clone();
                    tracing::info!(round_id, version, "fine-tuning");
                    tokio::task::spawn_blocking(move || {
                        // A panic inside the tuner must still answer, or the round would wait
                        // for fine-tuning forever: it becomes an error, and the aggregate is
                        // published untuned.
                        let result = match tuner.lock() {
                            Ok(mut t) => unless_it_panics(|| t.fine_tune(version, &layout, &params))
                                .unwrap_or_else(|what| Err(format!("the fine-tuner panicked: {what}"))),
                            Err(_) => Err("the fine-tuner panicked before".into()),
                        };
                        let result = result.map(|r| {
                            if r.params.len() == params.len() {
                                r
                            } else {
                                FineTuned {
                                    params: params.to_vec(),
                                    metrics: vec![],
                                }
                            }
                        });
                        let _ = done.send(Inbound::FineTuned(round_id, version, result));
                    });
                }
                Action::Privatize {
                    round_id,
                    sum,
                    clip_norm,
                    within,
                } => {
                    let Some(privacy) = central.clone() else {
                        let _ = inbound_tx.send(Inbound::Event(Event::PrivatizeFailed {
                            round_id,
                            reason: "central DP release without a ledger".into(),
                            budget_spent: false,
                        }));
                        continue;
                    };
                    let done = inbound_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let event = match privacy.lock() {
                            Err(_) => Event::PrivatizeFailed {
                                round_id,
                                reason: "the ledger's lock was poisoned".into(),
                                budget_spent: false,
                            },
                            Ok(mut p) => match unless_it_panics(|| p.release(round_id, &sum, clip_norm, &within)) {
                                // Whether a release that panicked was charged is unknown: the
                                // federation stops, as if the budget were spent, rather than
                                // risk releasing past it.
                                Err(what) => Event::PrivatizeFailed {
                                    round_id,
                                    reason: format!("the central DP release panicked: {what}"),
                                    budget_spent: true,
                                },
                                Ok(Ok(r)) => {
                                    tracing::info!(
                                        round_id,
                                        noise_multiplier = r.entry.release.noise_multiplier,
                                        clip_norm,
                                        next_clip_norm = r.next_clip_norm,
                                        epsilon = r.entry.spent_after.claimed(),
                                        "central DP release charged and noised"
                                    );
                                    Event::Privatized {
                                        round_id,
                                        delta: Arc::new(r.delta),
                                        next_clip_norm: r.next_clip_norm,
                                    }
                                }
                                Ok(Err(e)) => Event::PrivatizeFailed {
                                    round_id,
                                    budget_spent: e.budget_spent(),
                                    reason: e.to_string(),
                                },
                            },
                        };
                        let _ = done.send(Inbound::Event(event));
                    });
                }
                Action::BudgetSpent => {
                    tracing::warn!("the federation's privacy budget allows no further round");
                    report.budget_spent = true;
                }
                Action::RoundFailed { round_id, reason } => {
                    tracing::warn!(round_id, %reason, "round failed");
                    tallies.remove(&round_id);
                    report.failed_rounds.push((round_id, reason));
                }
                Action::Finished => finished = true,
            }
        }
        if finished {
            break;
        }
        tokio::select! {
            msg = inbound_rx.recv() => match msg {
                Some(Inbound::Register(store, id, tx)) => {
                    sessions.insert(store, (id, tx));
                }
                Some(Inbound::Ended(store, id)) => {
                    if sessions.get(&store).is_some_and(|(current, _)| *current == id) {
                        sessions.remove(&store);
                        pending = coordinator.handle(Event::Gone { store });
                    }
                }
                Some(Inbound::FineTuned(round_id, version, result)) => {
                    let params = match result {
                        Ok(t) => {
                            tracing::info!(round_id, version, metrics = ?t.metrics, "fine-tuned");
                            state.record_round_metrics(round_id, &t.metrics)?;
                            report.fine_tuning.push((round_id, t.metrics));
                            Arc::new(t.params)
                        }
                        Err(e) => {
                            tracing::warn!(round_id, version, error = %e, "fine-tuning failed; publishing the aggregate");
                            Arc::new(coordinator.params().to_vec())
                        }
                    };
                    pending = coordinator.handle(Event::FineTuned { version, params });
                }
                Some(Inbound::Event(event)) => {
                    if let Event::Update { store, upload } = &event {
                        reported.insert(
                            (store.clone(), upload.round_id),
                            Reported {
                                spend: upload.privacy_spend.clone(),
                                metrics: upload.metrics.clone(),
                            },
                        );
                    }
                    pending = coordinator.handle(event);
                }
                None => break,
            },
            _ = ticker.tick() => pending = coordinator.handle(Event::Tick { now_ms: unix_ms() }),
            _ = shutdown.changed() => break,
        }
    }
    for (_, tx) in sessions.values() {
        let _ = tx.send(Outbound::Bye);
    }
    // Give the stores a moment to read their goodbyes before the endpoint goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    acceptor.abort();
    endpoint.close();
    report.version = snapshot.version;
    report.content_hash = snapshot.content_hash;
    report.params = snapshot.params.clone();
    report.rounds = state.rounds()?;
    report.best_validated = state.best_validated()?;
    report.tail_average = state.tail_average()?;
    if let Some(p) = &central
        && let Ok(p) = p.lock()
    {
        report.central_epsilon = Some(p.spent()?.claimed());
    }
    Ok(report)
}

static SESSIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

async fn session(conn: PeerConnection, inbound: mpsc::UnboundedSender<Inbound>, caps: Capabilities) {
    let session_id = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let conn = Arc::new(conn);
    let store = conn.peer_id().to_owned();
    let hello = match conn.recv().await {
        Ok(Message::Hello(h)) => Ok(h),
        Err(TransportError::Decode(e)) => Err(e),
        Ok(other) => {
            tracing::warn!(%store, kind = ?other.kind(), "expected Hello");
            conn.close("expected Hello");
            return;
        }
        Err(e) => {
            tracing::warn!(%store, error = %e, "connection lost before Hello");
            return;
        }
    };
    let agreed = match negotiate(hello, &caps) {
        Ok(a) => a,
        Err(reason) => {
            tracing::warn!(%store, %reason, "refused");
            let _ = conn.send(&Message::Refused(Refused { reason })).await;
            conn.close_gracefully("refused", Duration::from_secs(2)).await;
            return;
        }
    };
    conn.set_max_message_bytes(agreed.max_message_bytes);
    let welcome = Message::Welcome(Welcome {
        protocol_version: PROTOCOL_VERSION,
        store_id: store.clone(),
        session_id: unix_ms(),
        capabilities: agreed,
        heartbeat_interval_ms: 5_000,
    });
    if conn.send(&welcome).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let echoes_queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let _ = inbound.send(Inbound::Register(store.clone(), session_id, tx.clone()));
    let _ = inbound.send(Inbound::Event(Event::Connected { store: store.clone() }));
    let writer = {
        let conn = conn.clone();
        let echoes_queued = echoes_queued.clone();
        tokio::spawn(async move {
            while let Some(out) = rx.recv().await {
                let sent = match out {
                    Outbound::Message(m) => conn.send(&m).await,
                    Outbound::Echo(m) => {
                        echoes_queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        conn.send(&m).await
                    }
                    Outbound::Offer(offer, blob) => match conn.send(&Message::RoundOffer(offer.clone())).await {
                        Ok(()) => conn.send_model(&offer.model, &blob).await,
                        Err(e) => Err(e),
                    },
                    Outbound::Bye => {
                        let _ = conn
                            .send(&Message::Bye(Bye {
                                reason: "federation finished".into(),
                            }))
                            .await;
                        conn.close_gracefully("federation finished", Duration::from_secs(2)).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        })
    };
    loop {
        match conn.recv().await {
            Ok(Message::UpdateUpload(upload)) => {
                let _ = inbound.send(Inbound::Event(Event::Update {
                    store: store.clone(),
                    upload,
                }));
            }
            Ok(Message::Heartbeat(hb)) => {
                // A few echoes in the queue already answer for liveness; more are dropped.
                if echoes_queued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < MAX_QUEUED_ECHOES {
                    let _ = tx.send(Outbound::Echo(Message::Heartbeat(hb)));
                } else {
                    echoes_queued.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok(Message::Bye(_)) => break,
            Ok(other) if other.kind() == MessageKind::Hello => {
                let _ = tx.send(Outbound::Message(Message::Refused(Refused {
                    reason: RefusalReason::Other {
                        detail: "already in session".into(),
                    },
                })));
            }
            Ok(other) => tracing::warn!(%store, kind = ?other.kind(), "unexpected message ignored"),
            Err(e) => {
                tracing::info!(%store, error = %e, "store connection ended");
                break;
            }
        }
    }
    let _ = inbound.send(Inbound::Ended(store, session_id));
    writer.abort();
    conn.close("session over");
}
