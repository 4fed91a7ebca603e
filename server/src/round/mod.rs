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

use crate::aggregate::RoundAggregate;
use crate::aggregate::optimizer::ServerOptimizer;
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
    },
    /// Fine-tune the aggregated model `version` on platform data, then send
    /// `Event::FineTuned`; the round commits (with the tuned parameters) only then.
    FineTune {
        round_id: u64,
        version: u64,
        params: Arc<Vec<f32>>,
    },
    RoundFailed {
        round_id: u64,
        reason: String,
    },
    /// The configured number of rounds is done.
    Finished,
}

struct OpenRound {
    id: u64,
    participants: BTreeSet<StoreId>,
    reported: BTreeSet<StoreId>,
    aggregate: RoundAggregate,
    deadline_ms: u64,
}

enum Phase {
    Idle,
    Collecting(OpenRound),
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
        }
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
        };
        match validate(&upload, &self.layout, &rules) {
            Err(reason) => out.push(reject(reason)),
            Ok(valid) => match round.aggregate.add(&valid.delta, valid.example_count) {
                Err(e) => out.push(reject(RejectionReason::Malformed { detail: e.to_string() })),
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
                Phase::Finished | Phase::FineTuning { .. } => return,
                Phase::Idle => {
                    if self.policy.rounds > 0 && self.committed >= self.policy.rounds {
                        self.phase = Phase::Finished;
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
        let deadline_ms = self.now_ms + self.policy.deadline_ms;
        let aggregate = match RoundAggregate::new(self.policy.aggregation, self.layout.len(), &self.spill_dir) {
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
            Ok(delta) => {
                self.optimizer.step(&mut self.params, &delta);
                self.version += 1;
                let params = Arc::new(self.params.clone());
                if self.policy.fine_tune {
                    self.phase = Phase::FineTuning {
                        round_id: round.id,
                        version: self.version,
                        updates,
                    };
                    out.push(Action::FineTune {
                        round_id: round.id,
                        version: self.version,
                        params,
                    });
                } else {
                    self.committed += 1;
                    out.push(Action::Commit {
                        round_id: round.id,
                        version: self.version,
                        params,
                        updates,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
