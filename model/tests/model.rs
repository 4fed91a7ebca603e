//! The fused recommender on the CPU backend: padding invariance, exact parameter round trips,
//! and a few training steps that actually learn.

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use fedfuse_model::catalog::{CatalogTensors, ItemFeatures};
use fedfuse_model::fused::{FusedConfig, FusedRecommender};
use fedfuse_model::item_tower::ItemTowerConfig;
use fedfuse_model::params::{NamedParam, export, import};
use fedfuse_model::sequence::SequenceEncoderConfig;

const ITEMS: usize = 8;

fn features() -> ItemFeatures {
    ItemFeatures {
        category: vec![1, 1, 2, 2, 3, 3, 1, 2],
        brand: vec![1, 2, 1, 2, 1, 2, 3, 3],
        price_band: vec![1, 2, 3, 4, 5, 1, 2, 3],
        title: vec![
            vec![1, 2],
            vec![2, 3],
            vec![3],
            vec![4, 5],
            vec![5],
            vec![6, 1],
            vec![],
            vec![7],
        ],
        genres: vec![vec![]; ITEMS],
    }
}

fn model(device: &Device, seed: u64) -> (FusedRecommender, CatalogTensors) {
    device.seed(seed);
    let f = features();
    let vocabulary = f.vocabulary(4);
    let config = FusedConfig::new(
        ItemTowerConfig::for_vocabulary(&vocabulary, 16),
        SequenceEncoderConfig::new(16, 12).with_dropout(0.0),
    );
    (config.init(device), f.to_tensors(vocabulary, device))
}

fn ids<const D: usize>(values: Vec<i64>, shape: [usize; D], device: &Device) -> Tensor<D, Int> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

fn all_items(device: &Device) -> Tensor<1, Int> {
    Tensor::<1, Int>::arange(1..ITEMS as i64 + 1, device)
}

fn values(t: Tensor<2>) -> Vec<f32> {
    t.to_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn padding_does_not_change_scores() {
    let device = Device::flex();
    let (m, catalog) = model(&device, 1);
    let short = m.score(
        &m.encode(ids(vec![3, 4, 5], [1, 3], &device), &catalog),
        all_items(&device),
        &catalog,
    );
    let padded = m.score(
        &m.encode(ids(vec![0, 0, 0, 0, 3, 4, 5], [1, 7], &device), &catalog),
        all_items(&device),
        &catalog,
    );
    for (a, b) in short
        .branches
        .into_iter()
        .chain([short.fused])
        .zip(padded.branches.into_iter().chain([padded.fused]))
    {
        for (x, y) in values(a).iter().zip(values(b)) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{x} vs {y}");
        }
    }
}

#[test]
fn flatten_and_load_round_trip_exactly() {
    let device = Device::flex();
    let (a, catalog) = model(&device, 1);
    let (b, _) = model(&device, 2);
    let params = export(&a);
    assert!(
        params
            .iter()
            .any(|p| p.name == "items.id.weight" && p.shape == vec![ITEMS + 1, 16]),
        "{:?}",
        params.iter().map(|p| &p.name).collect::<Vec<_>>()
    );
    assert!(params.iter().any(|p| p.name == "alpha" && p.shape == vec![4]));
    assert_ne!(export(&b), params, "different seeds give different models");
    let b = import(b, &params).unwrap();
    assert_eq!(export(&b), params, "bit-exact round trip");
    // And through the flat form models travel in.
    let shapes: Vec<(String, Vec<usize>)> = params.iter().map(|p| (p.name.clone(), p.shape.clone())).collect();
    let flat: Vec<f32> = params.iter().flat_map(|p| p.values.iter().copied()).collect();
    assert_eq!(fedfuse_model::params::unflatten(&shapes, &flat).unwrap(), params);
    assert!(fedfuse_model::params::unflatten(&shapes, &flat[1..]).is_err());
    let history = ids(vec![1, 2, 3], [1, 3], &device);
    let sa = values(
        a.score(&a.encode(history.clone(), &catalog), all_items(&device), &catalog)
            .fused,
    );
    let sb = values(b.score(&b.encode(history, &catalog), all_items(&device), &catalog).fused);
    assert_eq!(sa, sb);

    // Wrong shapes, missing and unknown parameters are refused by name.
    let mut wrong = params.clone();
    wrong[0].shape = vec![1];
    assert!(import(b.clone(), &wrong).is_err());
    assert!(import(b.clone(), &params[1..]).is_err());
    let mut extra = params.clone();
    extra.push(NamedParam {
        name: "nope".into(),
        shape: vec![1],
        values: vec![0.0],
    });
    assert!(import(b, &extra).is_err());
}

#[test]
fn in_batch_softmax_training_learns_a_sequential_pattern() {
    // Shoppers walk the catalog in order: after item i comes i+1. Eight histories, eight
    // distinct next items, so in-batch negatives are the other shoppers' targets.
    let device = Device::flex().autodiff();
    let (mut m, catalog) = model(&device, 3);
    let histories: Vec<i64> = (0..ITEMS as i64)
        .flat_map(|s| (0..3).map(move |k| (s + k) % ITEMS as i64 + 1))
        .collect();
    let targets: Vec<i64> = (0..ITEMS as i64).map(|s| (s + 3) % ITEMS as i64 + 1).collect();
    let history = ids(histories, [ITEMS, 3], &device);
    let target = ids(targets, [ITEMS], &device);
    let labels = Tensor::<1, Int>::arange(0..ITEMS as i64, &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    let mut optim = AdamWConfig::new().init();
    let mut losses = Vec::new();
    for _ in 0..60 {
        let scores = m.score(&m.encode(history.clone(), &catalog), target.clone(), &catalog).fused;
        let loss = loss_fn.forward(scores, labels.clone());
        losses.push(loss.clone().into_scalar::<f32>());
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        m = optim.step(1e-2, m, grads);
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last < 0.3 * first, "loss {first} → {last}");
    // The fusion weights moved away from uniform and still sum to one.
    let w = m.fusion_weights();
    assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    assert!(w.iter().any(|x| (x - 0.25).abs() > 1e-3), "{w:?}");
}
