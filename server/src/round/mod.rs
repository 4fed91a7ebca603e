//! The round coordinator: a pure state machine, in the manner of `quinn-proto`.
//!
//! Events go in (a store connected or left, an update arrived, time passed, fine-tuning
//! finished), actions come out (offer a round, accept or reject an update, commit a new model,
//! start fine-tuning, report a failed round). The coordinator owns the global parameters and
//! the round's streaming aggregate but performs no I/O: the QUIC layer turns actions into
//! messages, the storage layer persists `Commit`s, and tests drive it event by event.
//!
//! A round is offered to a sample of the connected stores and closes as soon as every
//! participant still connected has reported (if that makes quorum), or at its deadline. A
//! round that cannot reach quorum fails and the next one starts from the same model. Updates
//! for another round, from stores not offered the round, or sent twice are rejected with their
//! reason; so is anything `validate` refuses. Nothing rejected touches the aggregate.

mod policy;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use fedfuse_protocol::msgs::{RejectionReason, UpdateUpload};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

pub use policy::RoundPolicy;

use crate::aggregate::optimizer::{ServerOptimizer, ServerOptimizerState};
use crate::aggregate::{AggregationRule, RoundAggregate};
use crate::layout::ModelLayout;
use crate::validate::{UpdateRules, validate};

pub type StoreId = String;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connected {
        store: StoreId,
    },
    Gone {
        store: StoreId,
    },
    Update {
        store: StoreId,
        upload: UpdateUpload,
    },
    /// Time passed; `now_ms` is the driver's clock (Unix milliseconds).
    Tick {
        now_ms: u64,
    },
    /// The driver released round `round_id`'s clipped sum under central DP (charged to the
    /// ledger, noised, averaged): `delta` is what the server optimiser applies.
    Privatized {
        round_id: u64,
        delta: Arc<Vec<f32>>,
        next_clip_norm: f64,
    },
    /// The release failed: nothing was published. `budget_spent` ends the federation.
    PrivatizeFailed {
        round_id: u64,
        reason: String,
        budget_spent: bool,
    },
    /// Server-side fine-tuning of `version` finished with these parameters (the aggregated
    /// ones again when fine-tuning failed or did not help).
    FineTuned {
        version: u64,
        params: Arc<Vec<f32>>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Offer round `round_id` on model `version` to `store`; it closes at `deadline_ms`.
    Offer {
        store: StoreId,
        round_id: u64,
        version: u64,
        deadline_ms: u64,
    },
    Accepted {
        store: StoreId,
        round_id: u64,
        updates_in_round: u32,
    },
    Rejected {
        store: StoreId,
        round_id: u64,
        reason: RejectionReason,
    },
    /// A new global model: persist it (atomically) before publishing it.
    Commit {
        round_id: u64,
        version: u64,
        params: Arc<Vec<f32>>,
        updates: usize,
        /// The server optimiser's moments after this round, to persist with the model (none
        /// for plain FedAvg).
        optimizer: Option<Arc<ServerOptimizerState>>,
    },
    /// Fine-tune the aggregated model `version` on platform data, then send
    /// `Event::FineTuned`; the round commits (with the tuned parameters) only then.
    FineTune {
        round_id: u64,
        version: u64,
        params: Arc<Vec<f32>>,
    },
    /// Central DP: charge the release to the ledger, then noise `sum` (updates clipped to
    /// `clip_norm`, summed unweighted) and send `Event::Privatized`. No model exists before.
    Privatize {
        round_id: u64,
        sum: Arc<Vec<f32>>,
        clip_norm: f64,
        within: Vec<bool>,
    },
    RoundFailed {
        round_id: u64,
        reason: String,
    },
    /// The federation's privacy budget allows no further round; `Finished` follows.
    BudgetSpent,
    /// The configured number of rounds is done.
    Finished,
}

struct OpenRound {
    id: u64,
    participants: BTreeSet<StoreId>,
    reported: BTreeSet<StoreId>,
    aggregate: RoundAggregate,
    /// Central DP: each accepted update's within-C bit, for adaptive clipping.
    within: Vec<bool>,
    deadline_ms: u64,
}

/// Central DP's state in the coordinator: the bound updates are clipped to and how many more
/// releases the budget allows (the driver computes both from its ledger).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CentralClipping {
    pub clip_norm: f64,
    pub rounds_allowed: u64,
}

enum Phase {
    Idle,
    Collecting(OpenRound),
    Privatizing { round_id: u64, updates: usize },
    FineTuning { round_id: u64, version: u64, updates: usize },
    Finished,
}

pub struct RoundCoordinator {
    policy: RoundPolicy,
    layout: ModelLayout,
    params: Vec<f32>,
    version: u64,
    next_round: u64,
    committed: u64,
    optimizer: ServerOptimizer,
    connected: BTreeSet<StoreId>,
    phase: Phase,
    now_ms: u64,
    spill_dir: PathBuf,
    central: Option<CentralClipping>,
    privacy: Option<fedfuse_protocol::msgs::DpRequirement>,
    /// The parameters the plan trains (path prefixes; empty: all).
    trainable: Vec<String>,
}

impl RoundCoordinator {
    /// Starts (or resumes, from the last committed state) a federation.
    pub fn new(
        policy: RoundPolicy,
        layout: ModelLayout,
        params: Vec<f32>,
        version: u64,
        next_round: u64,
        spill_dir: PathBuf,
    ) -> Self {
        assert_eq!(params.len(), layout.len(), "parameters do not match the layout");
        Self {
            optimizer: ServerOptimizer::new(policy.optimizer, layout.len()),
            policy,
            layout,
            params,
            version,
            next_round,
            committed: 0,
            connected: BTreeSet::new(),
            phase: Phase::Idle,
            now_ms: 0,
            spill_dir,
            central: None,
            privacy: None,
            trainable: Vec::new(),
        }
    }

    /// Continues the server optimiser from the moments committed with the model it resumes
    /// from. An error (another optimiser, another model size) leaves fresh moments in place.
    pub fn resume_optimizer(&mut self, saved: ServerOptimizerState) -> Result<(), String> {
        self.optimizer = ServerOptimizer::resume(self.policy.optimizer, self.layout.len(), saved)?;
        Ok(())
    }

    /// The plan requires DP of the stores: every update without a privacy spend is rejected
    /// (`RejectionReason::PrivacyNotApplied`), and one whose spend is weaker than `required`
    /// (`RejectionReason::PrivacyBelowRequirement`), never aggregated.
    pub fn requiring_privacy(mut self, required: fedfuse_protocol::msgs::DpRequirement) -> Self {
        self.privacy = Some(required);
        self
    }

    /// The plan trains only the parameters under these path prefixes: an update that moves
    /// any other is rejected (`RejectionReason::Malformed`, naming the tensor).
    pub fn training_only(mut self, prefixes: Vec<String>) -> Self {
        self.trainable = prefixes;
        self
    }

    /// Runs every round under central DP: updates are clipped to `clip_norm` and summed, and
    /// each round's sum goes out as `Action::Privatize`; after `rounds_allowed` releases the
    /// federation stops.
    pub fn with_central_dp(mut self, central: CentralClipping) -> Self {
        self.central = Some(central);
        self
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn params(&self) -> &[f32] {
        &self.params
    }

    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Connected { store } => {
                self.connected.insert(store);
            }
            Event::Gone { store } => {
                self.connected.remove(&store);
                if let Phase::Collecting(round) = &mut self.phase
                    && !round.reported.contains(&store)
                {
                    round.participants.remove(&store);
                }
            }
            Event::Update { store, upload } => self.on_update(store, upload, &mut out),
            Event::Tick { now_ms } => self.now_ms = self.now_ms.max(now_ms),
            Event::Privatized {
                round_id,
                delta,
                next_clip_norm,
            } => {
                if let Phase::Privatizing { round_id: r, updates } = self.phase
                    && r == round_id
                {
                    if let Some(c) = &mut self.central
                        && next_clip_norm.is_finite()
                        && next_clip_norm > 0.0
                    {
                        c.clip_norm = next_clip_norm;
                    }
                    self.phase = Phase::Idle;
                    self.apply(round_id, updates, &delta, &mut out);
                }
            }
            Event::PrivatizeFailed {
                round_id,
                reason,
                budget_spent,
            } => {
                if let Phase::Privatizing { round_id: r, .. } = self.phase
                    && r == round_id
                {
                    self.phase = Phase::Idle;
                    if let Some(c) = &mut self.central {
                        // Nothing was charged unless the budget ran out: the release is owed back.
                        c.rounds_allowed = if budget_spent { 0 } else { c.rounds_allowed.saturating_add(1) };
                    }
                    out.push(Action::RoundFailed { round_id, reason });
                }
            }
            Event::FineTuned { version, params } => {
                if let Phase::FineTuning {
                    round_id,
                    version: v,
                    updates,
                } = self.phase
                    && v == version
                {
                    // A tuned model of the wrong size is ignored: the aggregate commits as is.
                    if params.len() == self.params.len() {
                        self.params = params.as_ref().clone();
                    }
                    self.phase = Phase::Idle;
                    self.committed += 1;
                    out.push(Action::Commit {
                        round_id,
                        version,
                        params: Arc::new(self.params.clone()),
                        updates,
                        optimizer: self.optimizer.state().map(Arc::new),
                    });
                }
            }
        }
        self.progress(&mut out);
        out
    }

    fn on_update(&mut self, store: StoreId, upload: UpdateUpload, out: &mut Vec<Action>) {
        let round_id = upload.round_id;
        let reject = |reason| Action::Rejected {
            store: store.clone(),
            round_id,
            reason,
        };
        let Phase::Collecting(round) = &mut self.phase else {
            out.push(reject(RejectionReason::RoundClosed { round_id }));
            return;
        };
        if round_id != round.id {
            out.push(reject(RejectionReason::RoundClosed { round_id }));
            return;
        }
        if !round.participants.contains(&store) {
            out.push(reject(RejectionReason::Malformed {
                detail: format!("store {store:?} was not offered round {round_id}"),
            }));
            return;
        }
        if round.reported.contains(&store) {
            out.push(reject(RejectionReason::Malformed {
                detail: format!("second update for round {round_id}"),
            }));
            return;
        }
        let rules = UpdateRules {
            round_id: round.id,
            base_version: self.version,
            norm_bound: self.policy.norm_bound,
            privacy: self.privacy.clone(),
            trainable: self.trainable.clone(),
        };
        match validate(&upload, &self.layout, &rules) {
            Err(reason) => out.push(reject(reason)),
            Ok(mut valid) => match self
                .central
                .as_ref()
                .map(|c| fedfuse_privacy::fedavg::clip_update(&mut valid.delta, c.clip_norm))
                .transpose()
                .map_err(|e| e.to_string())
                .and_then(|clipped| {
                    if let Some(c) = clipped {
                        round.within.push(c.within);
                    }
                    let weight = self
                        .policy
                        .max_examples_per_store
                        .map_or(valid.example_count, |cap| valid.example_count.min(cap));
                    round.aggregate.add(&valid.delta, weight).map_err(|e| e.to_string())
                }) {
                Err(detail) => out.push(reject(RejectionReason::Malformed { detail })),
                Ok(()) => {
                    round.reported.insert(store.clone());
                    out.push(Action::Accepted {
                        store,
                        round_id,
                        updates_in_round: round.reported.len() as u32,
                    });
                }
            },
        }
    }

    /// Closes, fails or opens rounds as the state now allows.
    fn progress(&mut self, out: &mut Vec<Action>) {
        loop {
            match &self.phase {
                Phase::Finished | Phase::FineTuning { .. } | Phase::Privatizing { .. } => return,
                Phase::Idle => {
                    if self.policy.rounds > 0 && self.committed >= self.policy.rounds {
                        self.phase = Phase::Finished;
                        out.push(Action::Finished);
                        return;
                    }
                    if self.central.is_some_and(|c| c.rounds_allowed == 0) {
                        self.phase = Phase::Finished;
                        out.push(Action::BudgetSpent);
                        out.push(Action::Finished);
                        return;
                    }
                    // Never open a round that could not reach quorum: it would fail at once and
                    // reopen forever.
                    if self.connected.len() < self.policy.min_stores.max(self.policy.quorum).max(1) {
                        return;
                    }
                    self.open_round(out);
                    return;
                }
                Phase::Collecting(round) => {
                    let all_in = round.reported.len() == round.participants.len();
                    let reachable = round.participants.len() >= self.policy.quorum;
                    let expired = self.now_ms >= round.deadline_ms;
                    let enough = round.reported.len() >= self.policy.quorum;
                    if (all_in || expired) && enough {
                        self.close_round(out);
                    } else if expired || !reachable {
                        let Phase::Collecting(round) = std::mem::replace(&mut self.phase, Phase::Idle) else {
                            unreachable!()
                        };
                        out.push(Action::RoundFailed {
                            round_id: round.id,
                            reason: format!(
                                "{} of {} updates by {}; quorum is {}",
                                round.reported.len(),
                                round.participants.len(),
                                if expired {
                                    "the deadline"
                                } else {
                                    "the time too few stores remained"
                                },
                                self.policy.quorum
                            ),
                        });
                    } else {
                        return;
                    }
                }
            }
        }
    }

    fn open_round(&mut self, out: &mut Vec<Action>) {
        let id = self.next_round;
        self.next_round += 1;
        let mut pool: Vec<StoreId> = self.connected.iter().cloned().collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.policy.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        pool.shuffle(&mut rng);
        let wanted = ((pool.len() as f64 * self.policy.sample_fraction).ceil() as usize)
            .clamp(self.policy.quorum.min(pool.len()), pool.len());
        pool.truncate(wanted);
        let deadline_ms = self.now_ms.saturating_add(self.policy.deadline_ms);
        // Central DP sums the clipped updates unweighted; the driver divides after the noise.
        let rule = match self.central {
            Some(_) => AggregationRule::UniformMean {
                expected_stores: Some(1.0),
            },
            None => self.policy.aggregation,
        };
        let aggregate = match RoundAggregate::new(rule, self.layout.len(), &self.spill_dir) {
            Ok(a) => a,
            Err(e) => {
                out.push(Action::RoundFailed {
                    round_id: id,
                    reason: e.to_string(),
                });
                return;
            }
        };
        for store in &pool {
            out.push(Action::Offer {
                store: store.clone(),
                round_id: id,
                version: self.version,
                deadline_ms,
            });
        }
        self.phase = Phase::Collecting(OpenRound {
            id,
            participants: pool.into_iter().collect(),
            reported: BTreeSet::new(),
            aggregate,
            within: Vec::new(),
            deadline_ms,
        });
    }

    fn close_round(&mut self, out: &mut Vec<Action>) {
        let Phase::Collecting(round) = std::mem::replace(&mut self.phase, Phase::Idle) else {
            return;
        };
        let updates = round.aggregate.count();
        match round.aggregate.finish() {
            Err(e) => out.push(Action::RoundFailed {
                round_id: round.id,
                reason: e.to_string(),
            }),
            Ok(sum) => match &mut self.central {
                Some(c) => {
                    c.rounds_allowed = c.rounds_allowed.saturating_sub(1);
                    self.phase = Phase::Privatizing {
                        round_id: round.id,
                        updates,
                    };
                    out.push(Action::Privatize {
                        round_id: round.id,
                        sum: Arc::new(sum),
                        clip_norm: c.clip_norm,
                        within: round.within,
                    });
                }
                None => self.apply(round.id, updates, &sum, out),
            },
        }
    }

    /// Applies a round's aggregate through the server optimiser: a new version, fine-tuned
    /// first when the policy says so, then committed.
    fn apply(&mut self, round_id: u64, updates: usize, delta: &[f32], out: &mut Vec<Action>) {
        self.optimizer.step(&mut self.params, delta);
        self.version += 1;
        let params = Arc::new(self.params.clone());
        if self.policy.fine_tune {
            self.phase = Phase::FineTuning {
                round_id,
                version: self.version,
                updates,
            };
            out.push(Action::FineTune {
                round_id,
                version: self.version,
                params,
            });
        } else {
            self.committed += 1;
            out.push(Action::Commit {
                round_id,
                version: self.version,
                params,
                updates,
                optimizer: self.optimizer.state().map(Arc::new),
            });
        }
    }
}

#[cfg(test)]
mod tests;
