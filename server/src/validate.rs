//! Update validation: an update is accepted whole or not at all.
//!
//! Every check runs before anything touches the round's aggregate, so a rejected update leaves
//! no trace but the rejection (sent to the store with its reason, and logged).

use fedfuse_protocol::msgs::{DpRequirement, PrivacySpend, RejectionReason, UpdateUpload};

use crate::layout::ModelLayout;

/// What a round accepts.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateRules {
    pub round_id: u64,
    pub base_version: u64,
    /// Largest L2 norm of a whole update (norm bounding); `None` to skip.
    pub norm_bound: Option<f64>,
    /// The DP the round's plan requires: an update must account for its release with a spend
    /// at least this strong.
    pub privacy: Option<DpRequirement>,
    /// The parameters the round's plan trains (path prefixes; empty: all): an update that
    /// moves any other is not what was asked for, and is rejected.
    pub trainable: Vec<String>,
}

/// A validated update: the flat delta in layout order and its weight.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidUpdate {
    pub delta: Vec<f32>,
    pub example_count: u64,
    pub norm: f64,
}

/// Relative slack for the floating-point round trip of a store's calibration: a store that
/// raised its σ to exactly the requirement may land an ulp below it.
const SPEND_SLACK: f64 = 1e-9;

/// A spend is as strong as the requirement: noise multiplier at least, clip norm and sampling
/// rate at most what the round allows. The spend states what the store charged to its own
/// ledger (σ over the grid-rounded sensitivity), so this is the privacy actually claimed.
fn spend_meets(spend: &PrivacySpend, required: &DpRequirement) -> Result<(), RejectionReason> {
    let weaker = |detail: String| Err(RejectionReason::PrivacyBelowRequirement { detail });
    let finite = [spend.noise_multiplier, spend.clip_norm, spend.sampling_rate, spend.delta];
    if finite.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return weaker(format!(
            "noise multiplier {}, clip norm {}, sampling rate {}, delta {} must be positive numbers",
            spend.noise_multiplier, spend.clip_norm, spend.sampling_rate, spend.delta
        ));
    }
    // The store's ε is stated at its δ: at a larger δ than the round's it promises less.
    if spend.delta > required.delta * (1.0 + SPEND_SLACK) {
        return weaker(format!("delta {:e} above the allowed {:e}", spend.delta, required.delta));
    }
    if spend.noise_multiplier < required.min_noise_multiplier * (1.0 - SPEND_SLACK) {
        return weaker(format!(
            "noise multiplier {} below the required {}",
            spend.noise_multiplier, required.min_noise_multiplier
        ));
    }
    if spend.clip_norm > required.max_clip_norm * (1.0 + SPEND_SLACK) {
        return weaker(format!(
            "clip norm {} above the allowed {}",
            spend.clip_norm, required.max_clip_norm
        ));
    }
    if required.max_sampling_rate > 0.0 && spend.sampling_rate > required.max_sampling_rate * (1.0 + SPEND_SLACK) {
        return weaker(format!(
            "sampling rate {} above the allowed {}",
            spend.sampling_rate, required.max_sampling_rate
        ));
    }
    Ok(())
}

/// Checks an upload against the layout and the round, decoding it into one flat delta.
pub fn validate(upload: &UpdateUpload, layout: &ModelLayout, rules: &UpdateRules) -> Result<ValidUpdate, RejectionReason> {
    if upload.round_id != rules.round_id {
        return Err(RejectionReason::RoundClosed {
            round_id: upload.round_id,
        });
    }
    if upload.base_model_version != rules.base_version {
        return Err(RejectionReason::StaleBase {
            expected: rules.base_version,
            got: upload.base_model_version,
        });
    }
    if let Some(required) = &rules.privacy {
        let spend = upload.privacy_spend.as_ref().ok_or(RejectionReason::PrivacyNotApplied)?;
        spend_meets(spend, required)?;
    }
    let mut seen = vec![false; layout.tensors().len()];
    for t in &upload.tensors {
        let (index, _) = layout
            .find(&t.name)
            .ok_or_else(|| RejectionReason::UnknownTensor { name: t.name.clone() })?;
        if std::mem::replace(&mut seen[index], true) {
            return Err(RejectionReason::Malformed {
                detail: format!("tensor {:?} sent twice", t.name),
            });
        }
        let spec = &layout.tensors()[index];
        if t.shape != spec.shape {
            return Err(RejectionReason::WrongShape {
                name: t.name.clone(),
                expected: spec.shape.clone(),
                got: t.shape.clone(),
            });
        }
    }
    // A tensor the plan does not train may be left out: it did not move.
    if let Some(i) = seen
        .iter()
        .zip(layout.tensors())
        .position(|(s, t)| !s && fedfuse_model::params::selected(&t.name, &rules.trainable))
    {
        return Err(RejectionReason::MissingTensor {
            name: layout.tensors()[i].name.clone(),
        });
    }
    let mut delta = vec![0f32; layout.len()];
    let mut sq = 0f64;
    for t in &upload.tensors {
        let (index, offset) = layout.find(&t.name).expect("checked above");
        let spec = &layout.tensors()[index];
        let values = t
            .to_f32(&spec.shape)
            .map_err(|e| RejectionReason::Malformed { detail: e.to_string() })?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(RejectionReason::NonFinite { name: t.name.clone() });
        }
        if !fedfuse_model::params::selected(&t.name, &rules.trainable) && values.iter().any(|v| *v != 0.0) {
            return Err(RejectionReason::Malformed {
                detail: format!("tensor {:?} changed, but the round's plan does not train it", t.name),
            });
        }
        sq += values.iter().map(|v| f64::from(*v) * f64::from(*v)).sum::<f64>();
        delta[offset..offset + values.len()].copy_from_slice(&values);
    }
    let norm = sq.sqrt();
    if let Some(bound) = rules.norm_bound
        && norm > bound
    {
        return Err(RejectionReason::NormTooLarge { norm, bound });
    }
    Ok(ValidUpdate {
        delta,
        example_count: upload.example_count,
        norm,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use fedfuse_protocol::tensor::{NamedTensor, UpdateEncoding, ValueEncoding};

    use super::*;
    use crate::layout::TensorSpec;

    fn layout() -> ModelLayout {
        ModelLayout::new(vec![
            TensorSpec {
                name: "emb".into(),
                shape: vec![3, 2],
            },
            TensorSpec {
                name: "head".into(),
                shape: vec![2],
            },
        ])
    }

    fn tensor(name: &str, shape: &[u32], values: &[f32]) -> NamedTensor {
        NamedTensor::encode(name, shape, values, UpdateEncoding::Dense(ValueEncoding::F32), 0).unwrap()
    }

    fn upload(tensors: Vec<NamedTensor>) -> UpdateUpload {
        UpdateUpload {
            round_id: 4,
            base_model_version: 9,
            example_count: 10,
            metrics: vec![],
            privacy_spend: None,
            tensors,
        }
    }

    const RULES: UpdateRules = UpdateRules {
        round_id: 4,
        base_version: 9,
        norm_bound: Some(10.0),
        privacy: None,
        trainable: Vec::new(),
    };

    /// A plan that trains only `head`: an update moving `emb` is rejected whole, naming it;
    /// one that leaves `emb` at zero (as every encoding sends an untouched tensor) is taken.
    #[test]
    fn an_update_moving_a_parameter_the_plan_froze_is_rejected() {
        let rules = UpdateRules {
            trainable: vec!["head".into()],
            ..RULES
        };
        let moved = upload(vec![
            tensor("emb", &[3, 2], &[0.0, 0.0, 0.0, 0.0, 1e-6, 0.0]),
            tensor("head", &[2], &[1.0, 0.0]),
        ]);
        match validate(&moved, &layout(), &rules).unwrap_err() {
            RejectionReason::Malformed { detail } => {
                assert!(
                    detail.contains("\"emb\" changed, but the round's plan does not train it"),
                    "{detail}"
                )
            }
            other => panic!("{other:?}"),
        }
        for encoding in [ValueEncoding::F32, ValueEncoding::F16, ValueEncoding::Int8] {
            let enc = |name: &str, shape: &[u32], values: &[f32]| {
                NamedTensor::encode(name, shape, values, UpdateEncoding::Dense(encoding), 3).unwrap()
            };
            let still = upload(vec![enc("emb", &[3, 2], &[0.0; 6]), enc("head", &[2], &[0.5, -0.25])]);
            let v = validate(&still, &layout(), &rules).unwrap_or_else(|e| panic!("{encoding:?}: {e:?}"));
            assert_eq!(&v.delta[..6], &[0.0; 6], "{encoding:?}");
            assert!(v.delta[6] > 0.4 && v.delta[7] < -0.2, "{encoding:?}: {:?}", v.delta);
        }
        // The frozen tensor may be left out (it did not move); the trained one may not.
        let without = validate(&upload(vec![tensor("head", &[2], &[1.0, 2.0])]), &layout(), &rules).unwrap();
        assert_eq!(without.delta, vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 2.0]);
        assert_eq!(
            validate(&upload(vec![tensor("emb", &[3, 2], &[0.0; 6])]), &layout(), &rules).unwrap_err(),
            RejectionReason::MissingTensor { name: "head".into() }
        );
    }

    #[test]
    fn a_good_update_becomes_one_flat_delta_in_layout_order() {
        let up = upload(vec![
            tensor("head", &[2], &[7.0, 8.0]),
            tensor("emb", &[3, 2], &[1.0, 2.0, 0.0, 0.0, 0.0, 1.0]),
        ]);
        let v = validate(
            &up,
            &layout(),
            &UpdateRules {
                norm_bound: None,
                ..RULES
            },
        )
        .unwrap();
        assert_eq!(v.delta, vec![1.0, 2.0, 0.0, 0.0, 0.0, 1.0, 7.0, 8.0]);
        assert!((v.norm - (1.0f64 + 4.0 + 1.0 + 49.0 + 64.0).sqrt()).abs() < 1e-9);
    }

    #[test]
    fn every_bad_update_is_rejected_with_its_reason() {
        let emb = || tensor("emb", &[3, 2], &[0.0; 6]);
        let head = || tensor("head", &[2], &[0.0; 2]);
        let l = layout();
        type Expect = fn(&RejectionReason) -> bool;
        let cases: Vec<(UpdateUpload, Expect)> = vec![
            (
                upload(vec![emb()]),
                |r| matches!(r, RejectionReason::MissingTensor { name } if name == "head"),
            ),
            (upload(vec![emb(), head(), tensor("extra", &[1], &[0.0])]), |r| {
                matches!(r, RejectionReason::UnknownTensor { .. })
            }),
            (upload(vec![emb(), tensor("head", &[1, 2], &[0.0; 2])]), |r| {
                matches!(r, RejectionReason::WrongShape { .. })
            }),
            (upload(vec![emb(), tensor("head", &[2], &[f32::NAN, 0.0])]), |r| {
                matches!(r, RejectionReason::NonFinite { .. })
            }),
            (upload(vec![emb(), tensor("head", &[2], &[f32::INFINITY, 0.0])]), |r| {
                matches!(r, RejectionReason::NonFinite { .. })
            }),
            (upload(vec![emb(), tensor("head", &[2], &[100.0, 0.0])]), |r| {
                matches!(r, RejectionReason::NormTooLarge { .. })
            }),
            (upload(vec![emb(), head(), head()]), |r| {
                matches!(r, RejectionReason::Malformed { .. })
            }),
            (
                UpdateUpload {
                    base_model_version: 8,
                    ..upload(vec![emb(), head()])
                },
                |r| matches!(r, RejectionReason::StaleBase { expected: 9, got: 8 }),
            ),
            (
                UpdateUpload {
                    round_id: 3,
                    ..upload(vec![emb(), head()])
                },
                |r| matches!(r, RejectionReason::RoundClosed { round_id: 3 }),
            ),
        ];
        for (up, check) in cases {
            let err = validate(&up, &l, &RULES).unwrap_err();
            assert!(check(&err), "{err:?}");
        }
    }

    /// A spend as a DP store's upload carries it (one Gaussian release at z = 1).
    pub(crate) fn a_spend() -> fedfuse_protocol::msgs::PrivacySpend {
        fedfuse_protocol::msgs::PrivacySpend {
            noise_multiplier: 1.0,
            sampling_rate: 1.0,
            steps: 1,
            clip_norm: 1.0,
            delta: 1e-5,
            epsilon_total: 4.5,
            ledger_entry_hash: [7; 32],
        }
    }

    /// The requirement `a_spend` just meets.
    pub(crate) fn a_requirement() -> DpRequirement {
        DpRequirement {
            unit: fedfuse_protocol::msgs::PrivacyUnit::Shopper,
            noise_mode: fedfuse_protocol::msgs::NoiseMode::Local,
            min_noise_multiplier: 1.0,
            max_clip_norm: 1.0,
            max_sampling_rate: 1.0,
            delta: 1e-5,
        }
    }

    #[test]
    fn a_spend_weaker_than_the_requirement_is_rejected_with_what_falls_short() {
        let rules = UpdateRules {
            privacy: Some(a_requirement()),
            ..RULES
        };
        let with = |spend: PrivacySpend| UpdateUpload {
            privacy_spend: Some(spend),
            ..upload(vec![tensor("emb", &[3, 2], &[0.0; 6]), tensor("head", &[2], &[1.0, 0.0])])
        };
        // One ulp under σ = 1 is the calibration's rounding, not a weaker release.
        let at_the_edge = PrivacySpend {
            noise_multiplier: 1.0 - f64::EPSILON,
            ..a_spend()
        };
        assert!(validate(&with(at_the_edge), &layout(), &rules).is_ok());
        let cases = [
            (
                PrivacySpend {
                    noise_multiplier: 0.99,
                    ..a_spend()
                },
                "noise multiplier 0.99",
            ),
            (
                PrivacySpend {
                    clip_norm: 1.5,
                    ..a_spend()
                },
                "clip norm 1.5",
            ),
            (
                PrivacySpend {
                    sampling_rate: 1.01,
                    ..a_spend()
                },
                "sampling rate 1.01",
            ),
            (
                PrivacySpend {
                    noise_multiplier: f64::NAN,
                    ..a_spend()
                },
                "positive numbers",
            ),
            (
                PrivacySpend {
                    clip_norm: 0.0,
                    ..a_spend()
                },
                "positive numbers",
            ),
            (
                PrivacySpend {
                    delta: 1e-3,
                    ..a_spend()
                },
                "delta 1e-3 above the allowed 1e-5",
            ),
            (
                PrivacySpend {
                    delta: f64::INFINITY,
                    ..a_spend()
                },
                "positive numbers",
            ),
        ];
        for (spend, says) in cases {
            match validate(&with(spend), &layout(), &rules).unwrap_err() {
                RejectionReason::PrivacyBelowRequirement { detail } => assert!(detail.contains(says), "{detail}"),
                other => panic!("{other:?}"),
            }
        }
        // A stronger spend than required is taken.
        let stronger = PrivacySpend {
            noise_multiplier: 2.0,
            clip_norm: 0.5,
            sampling_rate: 0.1,
            delta: 1e-7,
            ..a_spend()
        };
        assert!(validate(&with(stronger), &layout(), &rules).is_ok());
    }

    #[test]
    fn a_round_that_requires_dp_takes_only_updates_that_account_for_it() {
        let rules = UpdateRules {
            privacy: Some(a_requirement()),
            ..RULES
        };
        let good = || upload(vec![tensor("emb", &[3, 2], &[0.0; 6]), tensor("head", &[2], &[1.0, 0.0])]);
        assert_eq!(
            validate(&good(), &layout(), &rules).unwrap_err(),
            RejectionReason::PrivacyNotApplied
        );
        let spent = UpdateUpload {
            privacy_spend: Some(a_spend()),
            ..good()
        };
        assert_eq!(validate(&spent, &layout(), &rules).unwrap().delta[6], 1.0);
        // Without the requirement, an update without a spend is taken as before.
        assert!(validate(&good(), &layout(), &RULES).is_ok());
    }
}
