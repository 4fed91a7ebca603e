//! The coordinator driven event by event, with no network and no clock.

use fedfuse_protocol::msgs::{RejectionReason, UpdateUpload};
use fedfuse_protocol::tensor::{NamedTensor, UpdateEncoding, ValueEncoding};

use super::*;
use crate::aggregate::AggregationRule;
use crate::aggregate::optimizer::ServerOptimizerConfig;
use crate::layout::TensorSpec;

fn layout() -> ModelLayout {
    ModelLayout::new(vec![TensorSpec {
        name: "w".into(),
        shape: vec![2],
    }])
}

fn policy() -> RoundPolicy {
    RoundPolicy {
        min_stores: 3,
        quorum: 2,
        deadline_ms: 1000,
        rounds: 3,
        aggregation: AggregationRule::UniformMean { expected_stores: None },
        ..RoundPolicy::default()
    }
}

fn coordinator(policy: RoundPolicy, dir: &tempfile::TempDir) -> RoundCoordinator {
    RoundCoordinator::new(policy, layout(), vec![0.0, 0.0], 0, 1, dir.path().to_owned())
}

fn update(round_id: u64, base: u64, values: [f32; 2]) -> UpdateUpload {
    UpdateUpload {
        round_id,
        base_model_version: base,
        example_count: 10,
        metrics: vec![],
        privacy_spend: None,
        tensors: vec![NamedTensor::encode("w", &[2], &values, UpdateEncoding::Dense(ValueEncoding::F32), 0).unwrap()],
    }
}

fn connect(c: &mut RoundCoordinator, stores: &[&str]) -> Vec<Action> {
    stores
        .iter()
        .flat_map(|s| c.handle(Event::Connected { store: s.to_string() }))
        .collect()
}

fn offers(actions: &[Action]) -> Vec<(String, u64, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Offer {
                store,
                round_id,
                version,
                ..
            } => Some((store.clone(), *round_id, *version)),
            _ => None,
        })
        .collect()
}

fn send(c: &mut RoundCoordinator, store: &str, upload: UpdateUpload) -> Vec<Action> {
    c.handle(Event::Update {
        store: store.into(),
        upload,
    })
}

#[test]
fn three_stores_three_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = coordinator(policy(), &dir);
    let mut actions = connect(&mut c, &["a", "b"]);
    assert!(offers(&actions).is_empty(), "no round before min_stores");
    actions = connect(&mut c, &["c"]);
    for round in 1..=3u64 {
        let offered = offers(&actions);
        assert_eq!(offered.len(), 3, "round {round}: {actions:?}");
        assert!(offered.iter().all(|(_, r, v)| *r == round && *v == round - 1));
        let mut all = Vec::new();
        for (i, store) in ["a", "b", "c"].into_iter().enumerate() {
            all.extend(send(&mut c, store, update(round, round - 1, [i as f32, 1.0])));
        }
        let commit = all.iter().find_map(|a| match a {
            Action::Commit {
                round_id,
                version,
                params,
                updates,
                ..
            } => Some((*round_id, *version, params.clone(), *updates)),
            _ => None,
        });
        let (r, v, params, n) = commit.expect("round commits once all stores report");
        assert_eq!((r, v, n), (round, round, 3));
        // Uniform mean of [0,1], [1,1], [2,1] is [1,1], added each round.
        assert_eq!(params.as_ref(), &vec![round as f32, round as f32]);
        actions = all;
    }
    assert!(actions.contains(&Action::Finished));
    assert_eq!(c.version(), 3);
}

#[test]
fn a_store_lost_mid_round_neither_stalls_nor_corrupts_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = coordinator(policy(), &dir);
    connect(&mut c, &["a", "b", "c"]);
    send(&mut c, "a", update(1, 0, [1.0, 1.0]));
    let gone = c.handle(Event::Gone { store: "c".into() });
    assert!(gone.is_empty());
    let done = send(&mut c, "b", update(1, 0, [3.0, 3.0]));
    let params = done.iter().find_map(|a| match a {
        Action::Commit { params, updates: 2, .. } => Some(params.clone()),
        _ => None,
    });
    assert_eq!(params.expect("closes with the two that remain").as_ref(), &vec![2.0, 2.0]);
    // c's late reconnect-and-upload for the closed round is refused.
    c.handle(Event::Connected { store: "c".into() });
    let late = send(&mut c, "c", update(1, 0, [100.0, 100.0]));
    assert!(late.iter().any(|a| matches!(
        a,
        Action::Rejected {
            reason: RejectionReason::RoundClosed { round_id: 1 },
            ..
        }
    )));
    assert_eq!(c.params(), &[2.0, 2.0]);
}

#[test]
fn bad_updates_are_rejected_with_reasons_and_never_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = coordinator(policy(), &dir);
    connect(&mut c, &["a", "b", "c"]);
    let nan = send(&mut c, "a", update(1, 0, [f32::NAN, 0.0]));
    assert!(matches!(
        &nan[0],
        Action::Rejected {
            reason: RejectionReason::NonFinite { .. },
            ..
        }
    ));
    let stale = send(&mut c, "a", update(1, 7, [1.0, 1.0]));
    assert!(matches!(
        &stale[0],
        Action::Rejected {
            reason: RejectionReason::StaleBase { expected: 0, got: 7 },
            ..
        }
    ));
    let mut shaped = update(1, 0, [1.0, 1.0]);
    shaped.tensors = vec![NamedTensor::encode("w", &[1, 2], &[1.0, 1.0], UpdateEncoding::Dense(ValueEncoding::F32), 0).unwrap()];
    assert!(matches!(
        &send(&mut c, "a", shaped)[0],
        Action::Rejected {
            reason: RejectionReason::WrongShape { .. },
            ..
        }
    ));
    assert!(matches!(
        &send(&mut c, "stranger", update(1, 0, [1.0, 1.0]))[0],
        Action::Rejected { .. }
    ));
    // After the rejections a may still send its real update, once.
    assert!(matches!(
        &send(&mut c, "a", update(1, 0, [2.0, 2.0]))[0],
        Action::Accepted { updates_in_round: 1, .. }
    ));
    assert!(matches!(
        &send(&mut c, "a", update(1, 0, [2.0, 2.0]))[0],
        Action::Rejected { .. }
    ));
    send(&mut c, "b", update(1, 0, [4.0, 4.0]));
    let done = send(&mut c, "c", update(1, 0, [6.0, 6.0]));
    assert!(done.iter().any(|a| matches!(a, Action::Commit { updates: 3, .. })));
    assert_eq!(c.params(), &[4.0, 4.0]);
}

#[test]
fn a_plan_that_requires_dp_rejects_updates_without_a_privacy_spend_or_with_a_weaker_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = coordinator(policy(), &dir).requiring_privacy(crate::validate::tests::a_requirement());
    connect(&mut c, &["a", "b", "c"]);
    assert!(matches!(
        &send(&mut c, "a", update(1, 0, [9.0, 9.0]))[0],
        Action::Rejected {
            reason: RejectionReason::PrivacyNotApplied,
            ..
        }
    ));
    let weak = UpdateUpload {
        privacy_spend: Some(fedfuse_protocol::msgs::PrivacySpend {
            noise_multiplier: 0.5,
            ..crate::validate::tests::a_spend()
        }),
        ..update(1, 0, [9.0, 9.0])
    };
    assert!(matches!(
        &send(&mut c, "b", weak)[0],
        Action::Rejected {
            reason: RejectionReason::PrivacyBelowRequirement { .. },
            ..
        }
    ));
    let spent = |values| UpdateUpload {
        privacy_spend: Some(crate::validate::tests::a_spend()),
        ..update(1, 0, values)
    };
    for (store, v) in [("a", 1.0), ("b", 2.0)] {
        assert!(matches!(&send(&mut c, store, spent([v, v]))[0], Action::Accepted { .. }));
    }
    let done = send(&mut c, "c", spent([3.0, 3.0]));
    assert!(done.iter().any(|a| matches!(a, Action::Commit { updates: 3, .. })));
    // The rejected 9.0s left no trace in the average.
    assert_eq!(c.params(), &[2.0, 2.0]);
}

/// One round of stores a, b (10 examples each, delta [1, 1]) and c (claims 10⁹, delta [4, 4]),
/// example-weighted: the committed model.
fn round_with_an_inflated_count(cap: Option<u64>) -> Vec<f32> {
    let dir = tempfile::tempdir().unwrap();
    let mut c = coordinator(
        RoundPolicy {
            aggregation: AggregationRule::ExampleWeightedMean,
            max_examples_per_store: cap,
            ..policy()
        },
        &dir,
    );
    connect(&mut c, &["a", "b", "c"]);
    send(&mut c, "a", update(1, 0, [1.0, 1.0]));
    send(&mut c, "b", update(1, 0, [1.0, 1.0]));
    let claimed = UpdateUpload {
        example_count: 1_000_000_000,
        ..update(1, 0, [4.0, 4.0])
    };
    let done = send(&mut c, "c", claimed);
    assert!(
        done.iter().any(|a| matches!(a, Action::Commit { updates: 3, .. })),
        "{done:?}"
    );
    c.params().to_vec()
}

#[test]
fn a_store_claiming_more_examples_weighs_no_more_than_the_cap() {
    // Uncapped, c's claim decides the round alone.
    let uncapped = round_with_an_inflated_count(None);
    assert!(uncapped.iter().all(|v| (v - 4.0).abs() < 1e-3), "{uncapped:?}");
    // Capped at 20: (10·1 + 10·1 + 20·4) / 40 = 2.5.
    assert_eq!(round_with_an_inflated_count(Some(20)), vec![2.5, 2.5]);
}

#[test]
fn deadlines_close_with_quorum_or_fail_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = coordinator(policy(), &dir);
    connect(&mut c, &["a", "b", "c"]);
    send(&mut c, "a", update(1, 0, [1.0, 1.0]));
    // One of three by the deadline: below quorum, the round fails, round 2 starts on version 0.
    let after = c.handle(Event::Tick { now_ms: 1000 });
    assert!(
        after.iter().any(|a| matches!(a, Action::RoundFailed { round_id: 1, .. })),
        "{after:?}"
    );
    assert_eq!(offers(&after).first().map(|o| (o.1, o.2)), Some((2, 0)));
    // Two of three by round 2's deadline: quorum, it commits.
    send(&mut c, "a", update(2, 0, [1.0, 1.0]));
    send(&mut c, "b", update(2, 0, [3.0, 3.0]));
    let after = c.handle(Event::Tick { now_ms: 2500 });
    assert!(
        after.iter().any(|a| matches!(
            a,
            Action::Commit {
                round_id: 2,
                version: 1,
                updates: 2,
                ..
            }
        )),
        "{after:?}"
    );
}

#[test]
fn fine_tuning_holds_the_next_round_and_its_result_is_the_next_base() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = coordinator(
        RoundPolicy {
            fine_tune: true,
            ..policy()
        },
        &dir,
    );
    connect(&mut c, &["a", "b", "c"]);
    for s in ["a", "b"] {
        send(&mut c, s, update(1, 0, [1.0, 1.0]));
    }
    let done = send(&mut c, "c", update(1, 0, [1.0, 1.0]));
    assert!(done.iter().any(|a| matches!(
        a,
        Action::FineTune {
            round_id: 1,
            version: 1,
            ..
        }
    )));
    assert!(offers(&done).is_empty(), "no offer while fine-tuning");
    assert!(
        !done.iter().any(|a| matches!(a, Action::Commit { .. })),
        "the round commits once, after fine-tuning"
    );
    // A result for another version is not this round's.
    assert!(
        c.handle(Event::FineTuned {
            version: 7,
            params: Arc::new(vec![5.0, 5.0]),
        })
        .is_empty()
    );
    let next = c.handle(Event::FineTuned {
        version: 1,
        params: Arc::new(vec![9.0, 9.0]),
    });
    assert!(
        next.iter().any(
            |a| matches!(a, Action::Commit { round_id: 1, version: 1, params, updates: 3, .. } if params.as_slice() == [9.0, 9.0])
        ),
        "{next:?}"
    );
    assert_eq!(offers(&next).len(), 3);
    assert_eq!(c.params(), &[9.0, 9.0]);
}

#[test]
fn a_restarted_coordinator_continues_at_the_next_round_from_the_committed_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = RoundCoordinator::new(policy(), layout(), vec![5.0, 5.0], 4, 5, dir.path().to_owned());
    let actions = connect(&mut c, &["a", "b", "c"]);
    assert!(offers(&actions).iter().all(|(_, r, v)| *r == 5 && *v == 4));
}

#[test]
fn sampling_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let sampled = |seed| {
        let p = RoundPolicy {
            sample_fraction: 0.5,
            seed,
            ..policy()
        };
        let mut c = coordinator(p, &dir);
        let stores: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
        let refs: Vec<&str> = stores.iter().map(String::as_str).collect();
        let mut o: Vec<String> = offers(&connect(&mut c, &refs)).into_iter().map(|o| o.0).collect();
        o.sort();
        o
    };
    // The round opens once min_stores (3) are connected, so it samples from the first three.
    assert_eq!(sampled(1), sampled(1));
    assert_eq!(sampled(1).len(), 2);
    let distinct: std::collections::BTreeSet<Vec<String>> = (0..12).map(sampled).collect();
    assert!(distinct.len() >= 2, "the seed never changes the sample");
}

fn privatize(actions: &[Action]) -> Option<(u64, Vec<f32>, f64, Vec<bool>)> {
    actions.iter().find_map(|a| match a {
        Action::Privatize {
            round_id,
            sum,
            clip_norm,
            within,
        } => Some((*round_id, sum.as_ref().clone(), *clip_norm, within.clone())),
        _ => None,
    })
}

#[test]
fn central_dp_clips_sums_and_publishes_only_what_the_driver_released() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = coordinator(policy(), &dir).with_central_dp(CentralClipping {
        clip_norm: 1.0,
        rounds_allowed: 2,
    });
    connect(&mut c, &["a", "b", "c"]);
    send(&mut c, "a", update(1, 0, [3.0, 4.0])); // norm 5: scaled to 1
    send(&mut c, "b", update(1, 0, [0.6, 0.0])); // within
    let closed = send(&mut c, "c", update(1, 0, [0.0, 0.0]));
    assert!(
        !closed.iter().any(|a| matches!(a, Action::Commit { .. })),
        "no model before the release"
    );
    let (round, sum, clip, within) = privatize(&closed).expect("the clipped sum goes to the driver");
    assert_eq!((round, clip, within), (1, 1.0, vec![false, true, true]));
    // Unweighted sum of the clipped updates: [0.6, 0.8] + [0.6, 0] + [0, 0].
    assert!((sum[0] - 1.2).abs() < 1e-5 && (sum[1] - 0.8).abs() < 1e-5, "{sum:?}");
    // Updates arriving meanwhile are for a closed round.
    let late = send(&mut c, "a", update(1, 0, [0.0, 0.0]));
    assert!(matches!(&late[0], Action::Rejected { .. }));
    // The driver's noised average is what the optimiser applies; the next round uses the new C.
    let next = c.handle(Event::Privatized {
        round_id: 1,
        delta: Arc::new(vec![0.5, -0.5]),
        next_clip_norm: 2.0,
    });
    assert!(next.iter().any(|a| matches!(
        a,
        Action::Commit {
            round_id: 1,
            version: 1,
            ..
        }
    )));
    assert_eq!(c.params(), &[0.5, -0.5]);
    assert_eq!(offers(&next).len(), 3);
    for s in ["a", "b"] {
        send(&mut c, s, update(2, 1, [3.0, 4.0]));
    }
    let (_, sum, clip, _) = privatize(&send(&mut c, "c", update(2, 1, [0.0, 0.0]))).unwrap();
    assert_eq!(clip, 2.0);
    assert!((sum[0] - 2.4).abs() < 1e-5, "{sum:?}");
    // A failed release (the ledger could not be written) publishes nothing and is owed back.
    let failed = c.handle(Event::PrivatizeFailed {
        round_id: 2,
        reason: "disk full".into(),
        budget_spent: false,
    });
    assert!(failed.iter().any(|a| matches!(a, Action::RoundFailed { round_id: 2, .. })));
    assert_eq!(c.params(), &[0.5, -0.5]);
    let retry = offers(&failed);
    assert_eq!(retry.len(), 3);
    assert!(retry.iter().all(|(_, r, v)| *r == 3 && *v == 1), "{retry:?}");
    for s in ["a", "b", "c"] {
        send(&mut c, s, update(3, 1, [0.1, 0.1]));
    }
    // The second release uses up the allowance: after it the federation stops, whatever the
    // configured rounds.
    let last = c.handle(Event::Privatized {
        round_id: 3,
        delta: Arc::new(vec![0.0, 0.0]),
        next_clip_norm: 2.0,
    });
    assert!(last.iter().any(|a| matches!(
        a,
        Action::Commit {
            round_id: 3,
            version: 2,
            ..
        }
    )));
    assert!(offers(&last).is_empty());
    assert!(
        last.contains(&Action::BudgetSpent) && last.contains(&Action::Finished),
        "{last:?}"
    );
}

#[test]
fn a_release_refused_for_budget_ends_the_federation() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = coordinator(policy(), &dir).with_central_dp(CentralClipping {
        clip_norm: 1.0,
        rounds_allowed: 5,
    });
    connect(&mut c, &["a", "b", "c"]);
    for s in ["a", "b", "c"] {
        send(&mut c, s, update(1, 0, [0.1, 0.1]));
    }
    let out = c.handle(Event::PrivatizeFailed {
        round_id: 1,
        reason: "over budget".into(),
        budget_spent: true,
    });
    assert!(
        out.contains(&Action::BudgetSpent) && out.contains(&Action::Finished),
        "{out:?}"
    );
    assert!(offers(&out).is_empty());
    assert_eq!(c.version(), 0);
}

/// Runs round `round` (3 stores, fixed updates) and returns the commit's model and moments.
fn momentum_round(c: &mut RoundCoordinator, round: u64) -> (Vec<f32>, Option<Arc<ServerOptimizerState>>) {
    let mut all = Vec::new();
    for (i, store) in ["a", "b", "c"].into_iter().enumerate() {
        let d = [0.1 * (i as f32 + 1.0), round as f32 * 0.5 - i as f32];
        all.extend(send(c, store, update(round, round - 1, d)));
    }
    all.into_iter()
        .find_map(|a| match a {
            Action::Commit { params, optimizer, .. } => Some((params.as_ref().clone(), optimizer)),
            _ => None,
        })
        .expect("the round commits")
}

#[test]
fn a_coordinator_resumed_with_its_committed_moments_continues_the_same_run() {
    let momentum = RoundPolicy {
        optimizer: ServerOptimizerConfig::FedAvgM {
            lr: 1.0,
            momentum: 0.9,
            nesterov: false,
        },
        quorum: 3,
        ..policy()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut straight = coordinator(momentum.clone(), &dir);
    connect(&mut straight, &["a", "b", "c"]);
    let (_, _) = momentum_round(&mut straight, 1);
    let (after_two, moments) = momentum_round(&mut straight, 2);
    let moments = moments.expect("FedAvgM commits its velocity");
    let (after_three, _) = momentum_round(&mut straight, 3);

    // A restarted aggregator: the committed model of round 2 and its moments.
    let mut resumed = RoundCoordinator::new(momentum.clone(), layout(), after_two.clone(), 2, 3, dir.path().to_owned());
    resumed.resume_optimizer(moments.as_ref().clone()).unwrap();
    connect(&mut resumed, &["a", "b", "c"]);
    assert_eq!(momentum_round(&mut resumed, 3).0, after_three);

    // Without the moments the same restart takes another step: what persisting them prevents.
    let mut cold = RoundCoordinator::new(momentum, layout(), after_two, 2, 3, dir.path().to_owned());
    connect(&mut cold, &["a", "b", "c"]);
    assert_ne!(momentum_round(&mut cold, 3).0, after_three);

    // Plain FedAvg keeps no moments, so it commits none.
    let mut plain = coordinator(RoundPolicy { quorum: 3, ..policy() }, &dir);
    connect(&mut plain, &["a", "b", "c"]);
    assert!(momentum_round(&mut plain, 1).1.is_none());
}
