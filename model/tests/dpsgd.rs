//! Per-shopper gradients from one backward pass against the oracle: each shopper's batch
//! run alone through the ordinary model, one backward pass per shopper.

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use fedfuse_model::catalog::{CatalogTensors, ItemFeatures};
use fedfuse_model::dpsgd::{DpSgdConfig, shopper_gradients, train_dp_sgd};
use fedfuse_model::fused::{FusedConfig, FusedRecommender};
use fedfuse_model::item_tower::ItemTowerConfig;
use fedfuse_model::sequence::{EncoderKind, SequenceEncoderConfig};
use fedfuse_model::train::{Objective, position_losses};
use fedfuse_model::window::{CandidateConfig, SplitMix, TrainBatch, batch, windows};

const ITEMS: usize = 12;

fn features() -> ItemFeatures {
    ItemFeatures {
        category: (0..ITEMS as u32).map(|i| 1 + i % 3).collect(),
        brand: (0..ITEMS as u32).map(|i| 1 + i % 4).collect(),
        price_band: (0..ITEMS as u32).map(|i| 1 + i % 5).collect(),
        title: (0..ITEMS as u32).map(|i| vec![1 + i % 6, 1 + (i * 7) % 9]).collect(),
        genres: (0..ITEMS as u32).map(|i| vec![1 + i % 2]).collect(),
    }
}

fn model(device: &Device) -> (FusedRecommender, CatalogTensors) {
    device.seed(11);
    let f = features();
    let vocabulary = f.vocabulary(3);
    let config = FusedConfig::new(
        ItemTowerConfig::for_vocabulary(&vocabulary, 8),
        SequenceEncoderConfig::new(8, 6).with_dropout(0.0),
    )
    .with_head(4);
    (config.init(device), f.to_tensors(vocabulary, device))
}

/// Three shoppers; shopper 0 repeats an item (rows repeat within a shopper's gradient).
fn sequences() -> Vec<Vec<u32>> {
    vec![vec![0, 1, 2, 1, 3, 4], vec![5, 6, 7, 8], vec![9, 10, 11, 0, 2, 4, 6]]
}

fn sample_batch(device: &Device) -> TrainBatch {
    let seqs = sequences();
    let w = windows(&seqs, 6);
    let last: Vec<_> = (0..3u32).map(|s| *w.iter().find(|x| x.shopper == s).unwrap()).collect();
    let mut rng = SplitMix(5);
    let candidates = CandidateConfig {
        in_batch: 0,
        uniform: 5,
        exclude_seen: false,
    };
    batch(&seqs, &last, ITEMS, candidates, 6, &mut rng, device)
}

#[derive(Default)]
struct Grads<'a> {
    grads: Option<&'a burn::tensor::Gradients>,
    path: Vec<String>,
    out: HashMap<String, Vec<f32>>,
}

impl ModuleVisitor for Grads<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.path.push(name.into());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let g = param
            .val()
            .grad(self.grads.unwrap())
            .map(|g| g.to_data().try_to_vec::<f32>().unwrap());
        let n: usize = param.val().dims().iter().product();
        self.out.insert(self.path.join("."), g.unwrap_or_else(|| vec![0.0; n]));
    }
}

/// The oracle: shopper `b`'s gradient from its own row of the batch, alone.
fn oracle(
    m: &FusedRecommender,
    catalog: &CatalogTensors,
    full: &TrainBatch,
    b: usize,
    objective: Objective,
) -> HashMap<String, Vec<f32>> {
    let row = |t: Tensor<3>| t.narrow(0, b, 1);
    let one = TrainBatch {
        history: full.history.clone().narrow(0, b, 1),
        target: full.target.clone().narrow(0, b, 1),
        weight: row(full.weight.clone()),
        candidates: full.candidates.clone(),
        log_q_candidates: full.log_q_candidates.clone(),
        log_q_target: row(full.log_q_target.clone()),
        collides: full.collides.clone().narrow(0, b, 1),
        predictions: 0,
    };
    let losses = position_losses(m, &one, catalog, objective, 0.0);
    let count = one.weight.clone().sum();
    let loss = (losses * one.weight.clone()).sum() / count;
    let grads = loss.backward();
    let mut v = Grads {
        grads: Some(&grads),
        ..Default::default()
    };
    m.visit(&mut v);
    v.out
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
}

#[test]
fn one_pass_per_shopper_gradients_equal_the_oracle() {
    for objective in [Objective::SampledSoftmax, Objective::Bpr] {
        let device = Device::flex().autodiff();
        let (m, catalog) = model(&device);
        let full = sample_batch(&device);
        let g = shopper_gradients(&m, &catalog, &full, objective, &[]).unwrap();
        assert_eq!(g.shoppers, 3);
        let norms = g.norms();
        let mut expected_sum: HashMap<String, Vec<f32>> = HashMap::new();
        let clip = 0.5 * norms.iter().copied().fold(f64::INFINITY, f64::min);
        for (b, &norm_b) in norms.iter().enumerate() {
            let want = oracle(&m, &catalog, &full, b, objective);
            let got = g.of_shopper(b);
            assert_eq!(got.len(), want.len(), "every parameter has a gradient");
            let mut total2 = 0.0;
            for (path, w) in &want {
                let x = got.get(path).unwrap_or_else(|| panic!("{path} missing"));
                assert_eq!(x.len(), w.len(), "{path}");
                let diff: Vec<f32> = x.iter().zip(w).map(|(a, b)| a - b).collect();
                let scale = norm(w).max(1e-6);
                assert!(
                    norm(&diff) <= 1e-4 * scale,
                    "{objective:?} shopper {b} {path}: |Δ| {} vs |g| {scale}",
                    norm(&diff)
                );
                total2 += norm(w).powi(2);
            }
            let oracle_norm = total2.sqrt();
            assert!(
                (norm_b - oracle_norm).abs() <= 1e-4 * oracle_norm,
                "shopper {b}: {} vs {oracle_norm}",
                norm_b
            );
            assert!(oracle_norm > 0.0);
            let factor = (clip / oracle_norm).min(1.0) as f32;
            for (path, w) in want {
                let e = expected_sum.entry(path).or_insert_with(|| vec![0.0; w.len()]);
                e.iter_mut().zip(&w).for_each(|(a, b)| *a += factor * b);
            }
        }
        // The clipped sum, every shopper clipped to half the smallest norm.
        let (sum, got_norms) = g.clipped_sum(clip);
        assert_eq!(got_norms, norms);
        for (path, w) in &expected_sum {
            let x = &sum[path];
            let diff: Vec<f32> = x.iter().zip(w).map(|(a, b)| a - b).collect();
            assert!(norm(&diff) <= 1e-4 * norm(w).max(1e-6), "clipped sum {path}");
        }
        let total: f64 = sum.values().map(|v| norm(v).powi(2)).sum::<f64>().sqrt();
        assert!(
            total <= 3.0 * clip * (1.0 + 1e-4),
            "three clipped gradients sum to at most 3C: {total}"
        );
    }
}

#[test]
fn dp_sgd_refuses_the_lstm_and_bad_settings() {
    let device = Device::flex().autodiff();
    let f = features();
    let vocabulary = f.vocabulary(3);
    let lstm = FusedConfig::new(
        ItemTowerConfig::for_vocabulary(&vocabulary, 8),
        SequenceEncoderConfig::new(8, 6).with_kind(EncoderKind::Lstm),
    )
    .init(&device);
    let catalog = f.to_tensors(vocabulary, &device);
    let full = sample_batch(&device);
    assert!(shopper_gradients(&lstm, &catalog, &full, Objective::SampledSoftmax, &[]).is_err());
    // With the LSTM frozen, the fusion trains under DP-SGD and the encoder stays as it was.
    let fusion: Vec<String> = fedfuse_model::finetune::FUSION_PARAMETERS.map(String::from).to_vec();
    let g = shopper_gradients(&lstm, &catalog, &full, Objective::SampledSoftmax, &fusion).unwrap();
    assert!(g.norms().iter().all(|n| *n > 0.0));
    let before = fedfuse_model::params::export(&lstm.sequence);
    let (trained, _) = train_dp_sgd(lstm, &catalog, &sequences(), &every_shopper_clipped(fusion)).unwrap();
    assert_eq!(fedfuse_model::params::export(&trained.sequence), before);
    let (m, catalog) = model(&device);
    let bad = DpSgdConfig {
        sampling_rate: 0.0,
        ..DpSgdConfig::default()
    };
    assert!(train_dp_sgd(m, &catalog, &sequences(), &bad).is_err());
}

/// Three steps over every shopper (q = 1) of the parameters `trainable` selects, with a clip
/// of 1e-3 that clips every shopper.
fn every_shopper_clipped(trainable: Vec<String>) -> DpSgdConfig {
    DpSgdConfig {
        sampling_rate: 1.0,
        noise_multiplier: 0.5,
        clip_norm: 1e-3,
        steps: 3,
        max_len: 6,
        negatives: 5,
        trainable,
        ..DpSgdConfig::default()
    }
}

#[test]
fn dp_sgd_steps_change_the_model_and_report_clipping() {
    let device = Device::flex().autodiff();
    let (m, catalog) = model(&device);
    let before = fedfuse_model::params::export(&m);
    let (m, report) = train_dp_sgd(m, &catalog, &sequences(), &every_shopper_clipped(Vec::new())).unwrap();
    assert_eq!(report.steps, 3);
    assert_eq!(report.sampled, 9, "q = 1 samples every shopper every step");
    assert_eq!(report.clipped_fraction, 1.0, "a clip of 1e-3 clips everyone");
    let after = fedfuse_model::params::export(&m);
    // Every parameter moved: noise reaches every coordinate, touched by a shopper or not.
    for (a, b) in before.iter().zip(&after) {
        assert_ne!(a.values, b.values, "{} unchanged", a.name);
    }
}

/// A trained subset (a dense layer, the fusion weights, one content table): each shopper's
/// gradient and norm are the oracle's restricted to the subset, so clipping measures only
/// what is released; the other parameters get no gradient at all.
#[test]
fn per_shopper_gradients_of_a_subset_are_the_oracles_restricted_to_it() {
    let device = Device::flex().autodiff();
    let (m, catalog) = model(&device);
    let full = sample_batch(&device);
    let subset: Vec<String> = ["head_", "alpha", "items.category"].map(String::from).to_vec();
    let is_selected = |path: &str| fedfuse_model::params::selected(path, &subset);
    let g = shopper_gradients(&m, &catalog, &full, Objective::SampledSoftmax, &subset).unwrap();
    let norms = g.norms();
    for (b, &norm_b) in norms.iter().enumerate() {
        let want = oracle(&m, &catalog, &full, b, Objective::SampledSoftmax);
        let got = g.of_shopper(b);
        let mut total2 = 0.0;
        let mut compared = 0;
        for (path, w) in &want {
            match got.get(path) {
                Some(x) if is_selected(path) => {
                    let diff: Vec<f32> = x.iter().zip(w).map(|(a, b)| a - b).collect();
                    assert!(norm(&diff) <= 1e-4 * norm(w).max(1e-6), "shopper {b} {path}");
                    total2 += norm(w).powi(2);
                    compared += 1;
                }
                // The item tables are always listed; an untrained one carries zeros.
                Some(x) => assert!(x.iter().all(|v| *v == 0.0), "{path} is not trained"),
                None => assert!(!is_selected(path), "{path} is trained but has no gradient"),
            }
        }
        assert!(compared >= 5, "head layers, α and the category table: {compared}");
        let restricted = total2.sqrt();
        assert!(restricted > 0.0);
        assert!(
            (norm_b - restricted).abs() <= 1e-4 * restricted,
            "shopper {b}: {norm_b} vs the oracle's {restricted} over the subset"
        );
        let whole: f64 = want.values().map(|w| norm(w).powi(2)).sum::<f64>().sqrt();
        assert!(
            norm_b < 0.99 * whole,
            "the subset's norm {norm_b} is below the whole gradient's {whole}"
        );
    }
}

/// DP-SGD on the fusion alone: the fusion moves (noise reaches it), every other parameter is
/// bit for bit the one it started from; a subset that names no parameter is an error.
#[test]
fn dp_sgd_on_a_subset_leaves_every_other_parameter_as_it_was() {
    let device = Device::flex().autodiff();
    let (m, catalog) = model(&device);
    let before = fedfuse_model::params::export(&m);
    let fusion: Vec<String> = fedfuse_model::finetune::FUSION_PARAMETERS.map(String::from).to_vec();
    let config = every_shopper_clipped(fusion.clone());
    let (m, report) = train_dp_sgd(m.clone(), &catalog, &sequences(), &config).unwrap();
    assert_eq!(report.sampled, 9);
    let after = fedfuse_model::params::export(&m);
    let mut moved = 0;
    for (a, b) in before.iter().zip(&after) {
        if fedfuse_model::params::selected(&a.name, &fusion) {
            assert_ne!(a.values, b.values, "{} is trained but unchanged", a.name);
            moved += 1;
        } else {
            assert_eq!(a.values, b.values, "{} is not trained but moved", a.name);
        }
    }
    assert!(moved >= 6, "α, the content scale and the head's layers: {moved}");
    let nothing = DpSgdConfig {
        trainable: vec!["no_such_parameter".into()],
        ..config
    };
    let err = train_dp_sgd(m, &catalog, &sequences(), &nothing).unwrap_err().to_string();
    assert!(err.contains("no parameter of the model starts with"), "{err}");
}

/// With `exclude_seen` a DP-SGD step leaves each shopper's earlier items out of their
/// softmax: the same step (same model, same draws) reports a strictly lower loss, as every
/// masked candidate is a term taken out of a log-sum-exp, and every candidate covers the
/// catalog here, so each shopper has earlier items among them.
#[test]
fn dp_sgd_with_exclude_seen_leaves_earlier_items_out_of_the_softmax() {
    let device = Device::flex().autodiff();
    let (m, catalog) = model(&device);
    let one_step = |exclude_seen: bool| {
        let config = DpSgdConfig {
            steps: 1,
            negatives: 4 * ITEMS,
            exclude_seen,
            ..every_shopper_clipped(Vec::new())
        };
        train_dp_sgd(m.clone(), &catalog, &sequences(), &config).unwrap().1
    };
    let (kept, left_out) = (one_step(false), one_step(true));
    assert_eq!((kept.sampled, left_out.sampled), (3, 3));
    assert!(left_out.mean_loss.is_finite() && kept.mean_loss.is_finite());
    assert!(
        left_out.mean_loss < kept.mean_loss - 1e-3,
        "seen items left out: {} against {}",
        left_out.mean_loss,
        kept.mean_loss
    );
}
