//! AdamW moments by parameter name: exported from one optimiser and imported into another (even
//! for a model built apart, whose parameter ids differ), training continues exactly as the
//! first optimiser would have; bad moments are refused.

use burn::optim::AdamWConfig;
use burn::tensor::Device;
use fedfuse_model::catalog::CatalogTensors;
use fedfuse_model::fused::FusedConfig;
use fedfuse_model::item_tower::ItemTowerConfig;
use fedfuse_model::moments::{NamedMoments, ParamMoments, export_moments, import_moments};
use fedfuse_model::params::{NamedParam, export, import};
use fedfuse_model::sequence::SequenceEncoderConfig;
use fedfuse_model::train::{TrainConfig, train_with};

mod common;
use common::{features, walks};

fn catalog_and_config(device: &Device) -> (CatalogTensors, FusedConfig) {
    let f = features();
    let vocabulary = f.vocabulary(4);
    let config = FusedConfig::new(
        ItemTowerConfig::for_vocabulary(&vocabulary, 16),
        SequenceEncoderConfig::new(16, 12).with_dropout(0.0),
    );
    (f.to_tensors(vocabulary, device), config)
}

fn config(epochs: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 4,
        learning_rate: 1e-2,
        min_learning_rate: 1e-2,
        max_len: 6,
        seed,
        ..TrainConfig::default()
    }
}

fn max_difference(a: &[NamedParam], b: &[NamedParam]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.values.iter().zip(&y.values).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn moments_carried_by_name_continue_training_as_the_optimiser_that_made_them() {
    let device = Device::flex().autodiff();
    device.seed(7);
    let (catalog, fused) = catalog_and_config(&device);
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    let (trained, reports) = train_with(fused.init(&device), &mut optim, &catalog, &walks(), &config(3, 1), |_, _| {
        true
    })
    .unwrap();
    let moments = export_moments(&trained, &optim).unwrap();
    assert_eq!(moments.params.len(), export(&trained).len(), "every parameter was stepped");
    let steps: usize = reports.iter().map(|r| r.steps).sum();
    assert_eq!(moments.steps, steps as u64);
    assert!(steps >= 6, "3 epochs of at least 8 windows in batches of 4: {steps}");
    assert!(moments.params.iter().all(|p| p.second.iter().all(|v| *v >= 0.0)));
    assert!(moments.params.iter().any(|p| p.first.iter().any(|m| *m != 0.0)));

    // The same optimiser goes on: the reference.
    let (kept, _) = train_with(trained.clone(), &mut optim, &catalog, &walks(), &config(1, 2), |_, _| true).unwrap();

    // Another model, built apart (other parameter ids), given the trained values and the
    // moments by name: a store receiving the federation's moments.
    device.seed(99);
    let elsewhere = import(fused.init(&device), &export(&trained)).unwrap();
    let fresh = AdamWConfig::new().with_weight_decay(1e-4).init();
    let mut carried = import_moments(&elsewhere, fresh, &moments).unwrap();
    let (continued, _) = train_with(elsewhere.clone(), &mut carried, &catalog, &walks(), &config(1, 2), |_, _| {
        true
    })
    .unwrap();
    let gap = max_difference(&export(&kept), &export(&continued));
    assert!(
        gap < 1e-6,
        "carried moments continue as the original optimiser: max |Δ| = {gap}"
    );

    // Without the moments the same step goes elsewhere (so the check above can fail).
    let mut forgot = AdamWConfig::new().with_weight_decay(1e-4).init();
    let (restarted, _) = train_with(elsewhere, &mut forgot, &catalog, &walks(), &config(1, 2), |_, _| true).unwrap();
    let apart = max_difference(&export(&kept), &export(&restarted));
    assert!(apart > 1e-4, "fresh moments step differently: max |Δ| = {apart}");
}

fn moments(name: &str, first: Vec<f32>, second: Vec<f32>, steps: u64) -> NamedMoments {
    NamedMoments {
        steps,
        params: vec![ParamMoments {
            name: name.into(),
            shape: vec![first.len()],
            first,
            second,
        }],
    }
}

#[test]
fn the_weighted_mean_of_moments_is_by_weight_and_keeps_the_largest_step_count() {
    let a = moments("w", vec![1.0, -2.0], vec![4.0, 0.0], 10);
    let b = moments("w", vec![3.0, 2.0], vec![0.0, 8.0], 30);
    let mean = NamedMoments::weighted_mean(&[(1.0, &a), (3.0, &b)]).unwrap();
    assert_eq!(mean.steps, 30);
    assert_eq!(mean.params[0].first, vec![2.5, 1.0]);
    assert_eq!(mean.params[0].second, vec![1.0, 6.0]);
    // A part with no weight or no moments (a store's first round) is left out.
    let none = NamedMoments::default();
    let same = NamedMoments::weighted_mean(&[(2.0, &a), (0.0, &b), (5.0, &none)]).unwrap();
    assert_eq!(same, a);
    assert!(NamedMoments::weighted_mean(&[]).unwrap().is_empty());
    // Parts that disagree on names or shapes are an error, not a silent mix.
    let other = moments("v", vec![1.0, 1.0], vec![1.0, 1.0], 1);
    assert!(NamedMoments::weighted_mean(&[(1.0, &a), (1.0, &other)]).is_err());
    let longer = moments("w", vec![1.0; 3], vec![1.0; 3], 1);
    assert!(NamedMoments::weighted_mean(&[(1.0, &a), (1.0, &longer)]).is_err());
}

#[test]
fn moments_that_would_poison_the_optimiser_are_refused_with_the_parameter_named() {
    let device = Device::flex().autodiff();
    device.seed(3);
    let (catalog, fused) = catalog_and_config(&device);
    let mut optim = AdamWConfig::new().init();
    let (trained, _) = train_with(fused.init(&device), &mut optim, &catalog, &walks(), &config(1, 1), |_, _| {
        true
    })
    .unwrap();
    let good = export_moments(&trained, &optim).unwrap();
    let name = good.params[0].name.clone();
    let spoiled = |f: &dyn Fn(&mut ParamMoments)| {
        let mut m = good.clone();
        f(&mut m.params[0]);
        import_moments(&trained, AdamWConfig::new().init(), &m)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    for (what, err) in [
        ("NaN", spoiled(&|p| p.first[0] = f32::NAN)),
        ("infinity", spoiled(&|p| p.second[0] = f32::INFINITY)),
        ("negative second moment", spoiled(&|p| p.second[0] = -1.0)),
        ("wrong shape", spoiled(&|p| p.shape = vec![p.first.len() + 1])),
        (
            "too few values",
            spoiled(&|p| {
                p.second.pop();
            }),
        ),
    ] {
        assert!(err.contains(&name), "{what}: {err}");
    }
    let unknown = spoiled(&|p| p.name = "no.such.parameter".into());
    assert!(unknown.contains("no.such.parameter"), "{unknown}");
    // An optimiser that never stepped has no moments, which is not an error.
    assert!(export_moments(&trained, &AdamWConfig::new().init()).unwrap().is_empty());
}
