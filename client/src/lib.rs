//! The store agent: the store's side of a federation session.
//!
//! It says hello, then for each round offered downloads the global model (hash-checked), hands
//! it to a [`LocalTrainer`] (the store's own training, on its own data; nothing about a
//! shopper leaves it but the update), encodes the update as the round's plan asks, uploads it,
//! and records the aggregator's verdict. Training is behind a trait so the same session code
//! serves the burn trainer, tests and benchmarks.

pub mod config;
pub mod privacy;
pub mod trainer;

use std::time::Duration;

use fedfuse_model::params::selected;
use fedfuse_protocol::msgs::{Bye, Capabilities, Hello, Metric, RejectionReason, TrainingPlan, UpdateUpload, decode_model_blob};
use fedfuse_protocol::tensor::{NamedTensor, UpdateEncoding};
use fedfuse_protocol::{Message, msgs::RefusalReason};
use fedfuse_transport::{PeerConnection, TransportError};

/// A tensor's name and shape, as the offered model declares them.
pub type TensorShape = (String, Vec<u32>);

/// What local training produced: the delta (trained minus offered parameters, flat, in the
/// model's tensor order), how many examples it saw, and metrics to report. A trainer that ran
/// user-level DP-SGD reports what it charged to the store's ledger in `privacy_spend`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalUpdate {
    pub delta: Vec<f32>,
    pub example_count: u64,
    pub metrics: Vec<Metric>,
    pub privacy_spend: Option<fedfuse_protocol::msgs::PrivacySpend>,
}

/// The store's training, on the store's data.
pub trait LocalTrainer: Send {
    /// Why this store will not train round `round_id` (its privacy budget is spent, say), or
    /// `None`. Asked before every round; a refusing store says goodbye with the reason.
    fn refuses(&self, _round_id: u64, _plan: &TrainingPlan) -> Option<String> {
        None
    }

    /// Which DP this trainer applies to what it returns: `Some(PrivacyUnit::Shopper)` for
    /// user-level DP-SGD. A round that requires DP the store applies neither here nor in its
    /// client-level guard is refused, never trained without it.
    fn privacy_unit(&self) -> Option<fedfuse_protocol::msgs::PrivacyUnit> {
        None
    }

    fn train(
        &mut self,
        round_id: u64,
        shapes: &[TensorShape],
        params: &[f32],
        plan: &TrainingPlan,
    ) -> Result<LocalUpdate, String>;
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("the aggregator refused this store: {0}")]
    Refused(RefusalReason),
    #[error("the aggregator sent a bad model: {0}")]
    BadModel(String),
    #[error("local training failed in round {round}: {detail}")]
    Training { round: u64, detail: String },
    #[error("privacy: {0}")]
    Privacy(#[from] privacy::PrivacyError),
    #[error("gave up after {attempts} attempts to reach the aggregator; last: {last}")]
    GaveUp { attempts: u32, last: String },
}

/// How one session went.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentReport {
    pub store_id: String,
    pub trained_rounds: Vec<u64>,
    pub accepted: Vec<u64>,
    pub rejected: Vec<(u64, RejectionReason)>,
    pub last_model_version: Option<u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    /// Why the store stopped training, if its privacy budget ran out.
    pub refused: Option<String>,
}

/// Options for a store session.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub software_version: String,
    pub capabilities: Capabilities,
    /// Largest model the store will download.
    pub max_model_bytes: u64,
    /// Seed of int8 stochastic rounding (fresh entropy in production).
    pub rounding_seed: u64,
}

/// Runs one session on an established connection until the aggregator says goodbye.
pub async fn run_session(
    conn: &PeerConnection,
    trainer: &mut dyn LocalTrainer,
    opts: &AgentOptions,
) -> Result<AgentReport, AgentError> {
    run_private_session(conn, trainer, opts, None).await
}

/// As [`run_session`], with client-level DP: every update is clipped, charged to the store's
/// ledger and noised before it leaves; when the budget would be exceeded the store says why
/// and leaves instead of training.
pub async fn run_private_session(
    conn: &PeerConnection,
    trainer: &mut dyn LocalTrainer,
    opts: &AgentOptions,
    mut guard: Option<&mut privacy::StorePrivacy>,
) -> Result<AgentReport, AgentError> {
    conn.send(&Message::Hello(Hello::current(
        opts.software_version.clone(),
        opts.capabilities.clone(),
    )))
    .await?;
    let mut report = AgentReport::default();
    match conn.recv().await? {
        Message::Welcome(w) => {
            conn.set_max_message_bytes(w.capabilities.max_message_bytes);
            report.store_id = w.store_id;
        }
        Message::Refused(r) => return Err(AgentError::Refused(r.reason)),
        other => {
            return Err(AgentError::Transport(TransportError::Unexpected {
                expected: "Welcome",
                got: other.kind(),
            }));
        }
    }
    loop {
        match conn.recv().await? {
            Message::RoundOffer(offer) => {
                let blob = conn.recv_model(&offer.model, opts.max_model_bytes).await?;
                report.bytes_down += blob.len() as u64;
                let tensors = decode_model_blob(&blob).map_err(|e| AgentError::BadModel(e.to_string()))?;
                let shapes: Vec<TensorShape> = tensors.iter().map(|(t, _)| (t.name.clone(), t.shape.clone())).collect();
                let params: Vec<f32> = tensors.into_iter().flat_map(|(_, v)| v).collect();
                let unmet = offer
                    .plan
                    .check()
                    .err()
                    .map(|e| format!("the aggregator's plan cannot be trained: {e}"))
                    .or_else(|| unmet_requirement(offer.plan.dp.as_ref(), trainer.privacy_unit(), guard.is_some()));
                if let Some(reason) = unmet.or_else(|| trainer.refuses(offer.round_id, &offer.plan)) {
                    tracing::warn!(%reason, "not training");
                    let _ = conn.send(&Message::Bye(Bye { reason: reason.clone() })).await;
                    conn.close_gracefully("not training", Duration::from_secs(1)).await;
                    report.refused = Some(reason);
                    return Ok(report);
                }
                if let Some(guard) = guard.as_deref() {
                    match guard.check(offer.round_id, &offer.plan, params.len()) {
                        Ok(()) => {}
                        Err(privacy::PrivacyError::Ledger(e @ fedfuse_privacy::LedgerError::BudgetExceeded { .. })) => {
                            let reason = e.to_string();
                            tracing::warn!(%reason, "privacy budget spent");
                            let _ = conn.send(&Message::Bye(Bye { reason: reason.clone() })).await;
                            conn.close_gracefully("budget spent", Duration::from_secs(1)).await;
                            report.refused = Some(reason);
                            return Ok(report);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                // Training is long CPU or GPU work: keep it off the async workers' hands so the
                // connection's keep-alives and acknowledgements continue meanwhile.
                let mut update = tokio::task::block_in_place(|| trainer.train(offer.round_id, &shapes, &params, &offer.plan))
                    .map_err(|detail| AgentError::Training {
                        round: offer.round_id,
                        detail,
                    })?;
                report.trained_rounds.push(offer.round_id);
                report.last_model_version = Some(offer.model.version);
                let spend = match guard.as_deref_mut() {
                    Some(guard) => Some(privatize_trained(
                        guard,
                        offer.round_id,
                        &offer.plan,
                        &shapes,
                        &mut update.delta,
                    )?),
                    None => update.privacy_spend.take(),
                };
                if offer.plan.dp.is_some() && spend.is_none() {
                    // A trainer that claimed DP and released nothing charged: never sent.
                    return Err(AgentError::Training {
                        round: offer.round_id,
                        detail: "the round requires DP and training charged no privacy spend".into(),
                    });
                }
                let mut upload = encode_update(&offer, &shapes, update, opts.rounding_seed)?;
                upload.privacy_spend = spend;
                let frame = Message::UpdateUpload(upload).encode().map_err(TransportError::from)?;
                report.bytes_up += frame.len() as u64;
                conn.send_frame(&frame).await?;
            }
            Message::UpdateAccepted(a) => report.accepted.push(a.round_id),
            Message::UpdateRejected(r) => {
                tracing::warn!(round = r.round_id, reason = %r.reason, "update rejected");
                report.rejected.push((r.round_id, r.reason));
            }
            Message::Heartbeat(_) => {}
            Message::Bye(_) => {
                let _ = conn
                    .send(&Message::Bye(Bye {
                        reason: "goodbye".into(),
                    }))
                    .await;
                conn.close_gracefully("session over", Duration::from_secs(1)).await;
                return Ok(report);
            }
            other => tracing::warn!(kind = ?other.kind(), "unexpected message ignored"),
        }
    }
}

/// Why a store cannot meet the DP a round requires, if it cannot: user-level DP needs a trainer
/// that applies it, client-level DP the store's guard.
fn unmet_requirement(
    required: Option<&fedfuse_protocol::msgs::DpRequirement>,
    trainer_applies: Option<fedfuse_protocol::msgs::PrivacyUnit>,
    guarded: bool,
) -> Option<String> {
    use fedfuse_protocol::msgs::PrivacyUnit;
    let req = required?;
    let met = match req.unit {
        PrivacyUnit::Shopper => trainer_applies == Some(PrivacyUnit::Shopper),
        PrivacyUnit::Store => guarded,
    };
    (!met).then(|| {
        let mode = match req.unit {
            PrivacyUnit::Shopper => "shopper",
            PrivacyUnit::Store => "store",
        };
        format!(
            "the round requires {mode}-level DP (noise multiplier ≥ {}, clip ≤ {}) and this store applies none; \
             set [privacy] mode = \"{mode}\" to take part",
            req.min_noise_multiplier, req.max_clip_norm
        )
    })
}

/// Client-level DP of an update: clipped, charged and noised over the coordinates the plan
/// trains only. The frozen ones never leave (`encode_update` sends no frozen tensor), so noise
/// there would be wasted and the grid's rounding charge would count coordinates not released.
fn privatize_trained(
    guard: &mut privacy::StorePrivacy,
    round: u64,
    plan: &TrainingPlan,
    shapes: &[TensorShape],
    delta: &mut [f32],
) -> Result<fedfuse_protocol::msgs::PrivacySpend, privacy::PrivacyError> {
    match trained_mask(shapes, plan) {
        None => guard.privatize(round, plan, delta),
        Some(mask) => fedfuse_privacy::fedavg::on_trained(delta, &mask, |v| guard.privatize(round, plan, v)),
    }
}

/// Which coordinates of a model laid out as `shapes` the plan trains; `None` when it trains
/// every one.
fn trained_mask(shapes: &[TensorShape], plan: &TrainingPlan) -> Option<Vec<bool>> {
    if plan.trainable.is_empty() {
        return None;
    }
    Some(
        shapes
            .iter()
            .flat_map(|(name, shape)| {
                let len: usize = shape.iter().map(|d| *d as usize).product();
                std::iter::repeat_n(selected(name, &plan.trainable), len)
            })
            .collect(),
    )
}

/// The update as it travels: one tensor per trained parameter (a frozen one is left out, and
/// must not have moved: a trainer that moved it is an error, nothing is sent).
fn encode_update(
    offer: &fedfuse_protocol::msgs::RoundOffer,
    shapes: &[TensorShape],
    update: LocalUpdate,
    seed: u64,
) -> Result<UpdateUpload, AgentError> {
    let total: usize = shapes
        .iter()
        .map(|(_, s)| s.iter().map(|d| *d as usize).product::<usize>())
        .sum();
    if update.delta.len() != total {
        return Err(AgentError::Training {
            round: offer.round_id,
            detail: format!("trainer returned {} values for a model of {total}", update.delta.len()),
        });
    }
    let mut offset = 0;
    let mut tensors = Vec::with_capacity(shapes.len());
    for (i, (name, shape)) in shapes.iter().enumerate() {
        let len: usize = shape.iter().map(|d| *d as usize).product();
        if !selected(name, &offer.plan.trainable) {
            if update.delta[offset..offset + len].iter().any(|v| *v != 0.0) {
                return Err(AgentError::Training {
                    round: offer.round_id,
                    detail: format!("the trainer moved {name}, which the round's plan does not train"),
                });
            }
            offset += len;
            continue;
        }
        // Row-sparse only for 2-D tensors; others go dense in the same value encoding.
        let encoding = match offer.plan.update_encoding {
            UpdateEncoding::RowSparse(v) if shape.len() != 2 => UpdateEncoding::Dense(v),
            e => e,
        };
        tensors.push(
            NamedTensor::encode(
                name.clone(),
                shape,
                &update.delta[offset..offset + len],
                encoding,
                seed.wrapping_add(i as u64),
            )
            .map_err(TransportError::from)?,
        );
        offset += len;
    }
    Ok(UpdateUpload {
        round_id: offer.round_id,
        base_model_version: offer.model.version,
        example_count: update.example_count,
        metrics: update.metrics,
        privacy_spend: None,
        tensors,
    })
}

/// How a store retries after losing the aggregator: exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Give up after this many failed attempts in a row (0: never).
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            attempts: 0,
        }
    }
}

/// What a store's whole run did, over every session it needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentRun {
    /// The last session's report (the one that ended the run).
    pub last: AgentReport,
    pub sessions: u32,
    /// Failed connection attempts and lost sessions, with what happened.
    pub interruptions: Vec<String>,
    pub trained_rounds: Vec<u64>,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Connects to the aggregator and runs sessions until the federation says goodbye or the
/// store refuses to go on, reconnecting with `backoff` after a network loss (the aggregator
/// offers the current round again to a store that comes back). Errors other than the
/// network's end the run.
pub async fn run_agent(
    endpoint: &fedfuse_transport::StoreEndpoint,
    addr: std::net::SocketAddr,
    server_name: &str,
    trainer: &mut dyn LocalTrainer,
    opts: &AgentOptions,
    backoff: Backoff,
    mut guard: Option<&mut privacy::StorePrivacy>,
) -> Result<AgentRun, AgentError> {
    let mut run = AgentRun::default();
    let mut delay = backoff.initial;
    let mut failures = 0u32;
    let mut jitter = opts.rounding_seed ^ 0x0005_DEEC_E66D;
    loop {
        let outcome = match endpoint.connect(addr, server_name).await {
            Ok(conn) => {
                run.sessions += 1;
                let trained_before = run.trained_rounds.len();
                let result = run_private_session(&conn, trainer, opts, guard.as_deref_mut()).await;
                match result {
                    Ok(report) => {
                        run.trained_rounds.extend(&report.trained_rounds);
                        run.bytes_up += report.bytes_up;
                        run.bytes_down += report.bytes_down;
                        run.last = report;
                        return Ok(run);
                    }
                    Err(AgentError::Transport(e)) => {
                        if run.trained_rounds.len() > trained_before {
                            failures = 0;
                            delay = backoff.initial;
                        }
                        format!("session lost: {e}")
                    }
                    Err(other) => return Err(other),
                }
            }
            Err(e) => format!("cannot connect: {e}"),
        };
        failures += 1;
        tracing::warn!(%outcome, attempt = failures, retry_in_ms = delay.as_millis() as u64, "aggregator unreachable");
        run.interruptions.push(outcome.clone());
        if backoff.attempts > 0 && failures >= backoff.attempts {
            return Err(AgentError::GaveUp {
                attempts: failures,
                last: outcome,
            });
        }
        // Up to 25% jitter so that stores cut off together do not return together.
        jitter = jitter.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let spread = (jitter >> 33) as f64 / (1u64 << 31) as f64;
        tokio::time::sleep(delay.mul_f64(1.0 + 0.25 * spread)).await;
        delay = (delay * 2).min(backoff.max);
    }
}

#[cfg(test)]
mod tests {
    use fedfuse_protocol::msgs::{DpRequirement, LocalWork, ModelManifest, NoiseMode, PrivacyUnit, RoundOffer};
    use fedfuse_protocol::tensor::ValueEncoding;

    use super::*;
    use crate::privacy::{StorePrivacy, StorePrivacyPolicy};

    fn shapes() -> Vec<TensorShape> {
        vec![("emb".into(), vec![3, 2]), ("head_out".into(), vec![2])]
    }

    fn offer(trainable: &[&str]) -> RoundOffer {
        RoundOffer {
            round_id: 1,
            model: ModelManifest {
                version: 0,
                content_hash: [0; 32],
                total_bytes: 0,
                chunk_bytes: 1,
            },
            plan: TrainingPlan {
                work: LocalWork::Epochs(1),
                learning_rate: 0.01,
                batch_size: 8,
                proximal_mu: None,
                update_encoding: UpdateEncoding::Dense(ValueEncoding::F32),
                dp: Some(DpRequirement {
                    unit: PrivacyUnit::Store,
                    noise_mode: NoiseMode::Local,
                    min_noise_multiplier: 1.0,
                    max_clip_norm: 1.0,
                    max_sampling_rate: 1.0,
                    delta: 1e-5,
                }),
                trainable: trainable.iter().map(|p| p.to_string()).collect(),
            },
            deadline_unix_ms: u64::MAX,
        }
    }

    fn update(delta: Vec<f32>) -> LocalUpdate {
        LocalUpdate {
            delta,
            example_count: 1,
            metrics: vec![],
            privacy_spend: None,
        }
    }

    /// A plan training `head_`: client-level DP noises only the head's coordinates, and the
    /// upload carries the head alone; a trainer that moved the frozen table sends nothing.
    #[test]
    fn a_store_releases_only_what_the_plan_trains() {
        let dir = tempfile::tempdir().unwrap();
        let policy = StorePrivacyPolicy {
            budget: fedfuse_privacy::Budget {
                epsilon_max: 1e6,
                delta: 1e-5,
            },
            noise_multiplier: 1.0,
            clip_norm: 1.0,
            grid_exponent: -20,
        };
        let mut guard = StorePrivacy::open("berlin", policy, &dir.path().join("ledger.jsonl")).unwrap();
        let offer = offer(&["head_"]);
        let mut delta = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, -0.4];
        let spend = privatize_trained(&mut guard, 1, &offer.plan, &shapes(), &mut delta).unwrap();
        assert!(spend.noise_multiplier >= 1.0);
        assert_eq!(&delta[..6], &[0.0; 6], "the frozen table is not noised");
        assert!(delta[6] != 0.3 && delta[7] != -0.4, "the head is noised: {delta:?}");
        let upload = encode_update(&offer, &shapes(), update(delta.clone()), 1).unwrap();
        assert_eq!(upload.tensors.len(), 1);
        assert_eq!(upload.tensors[0].name, "head_out");
        assert_eq!(upload.tensors[0].to_f32(&[2]).unwrap(), delta[6..].to_vec());
        let moved = encode_update(&offer, &shapes(), update(vec![0.1; 8]), 1)
            .unwrap_err()
            .to_string();
        assert!(moved.contains("moved emb, which the round's plan does not train"), "{moved}");
        // A plan that trains everything sends everything.
        let all = encode_update(&self::offer(&[]), &shapes(), update(vec![0.1; 8]), 1).unwrap();
        assert_eq!(all.tensors.len(), 2);
    }
}
