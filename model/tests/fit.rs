//! Fitting as an experiment does, on a small synthetic store whose clock ticks coarsely, so
//! that the split's item-id tie-break decides some validation targets.

use fedfuse_data::split::{Split, SplitConfig};
use fedfuse_data::synthetic::{SyntheticConfig, generate};
use fedfuse_model::fit::{Experiment, Grouping, ModelShape, Selection, run_experiment};
use fedfuse_model::fused::Scoring;
use fedfuse_model::train::TrainConfig;

#[test]
fn a_fit_reports_validation_on_the_distinct_timestamp_slice_and_stops_early() {
    let mut dataset = generate(&SyntheticConfig {
        shoppers: 120,
        items: 80,
        events: 2400,
        ..SyntheticConfig::default()
    })
    .unwrap();
    // A clock of coarse ticks: consecutive events of a session share a timestamp.
    let tick = {
        let mut ts: Vec<i64> = dataset.interactions.iter().map(|e| e.timestamp).collect();
        ts.sort_unstable();
        ts.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0).max().unwrap() / 64
    };
    for e in &mut dataset.interactions {
        e.timestamp -= e.timestamp.rem_euclid(tick.max(1));
    }
    let split = Split::new(
        &dataset,
        &SplitConfig {
            negatives: 20,
            ..SplitConfig::default()
        },
    )
    .unwrap();
    let distinct = split.validation.iter().filter(|c| c.distinct_timestamps).count();
    assert!(
        distinct > 0 && distinct < split.validation.len(),
        "the coarse clock ties some validation targets and not all: {distinct} of {}",
        split.validation.len()
    );

    let experiment = Experiment {
        dataset: &dataset,
        split: &split,
        device: burn::tensor::Device::flex(),
        shape: ModelShape {
            dim: 16,
            max_len: 8,
            ..ModelShape::default()
        },
        train: TrainConfig {
            epochs: 12,
            learning_rate: 3e-2,
            batch_size: 32,
            max_len: 8,
            ..TrainConfig::default()
        },
        patience: 1,
        selection: Selection::BestValidated,
        scoring: Scoring::Fused,
        grouping: Grouping::Pooled,
    };
    let mut epochs = Vec::new();
    let outcome = run_experiment(&experiment, 3, |_, e| epochs.push(e.clone())).unwrap();
    for e in &epochs {
        eprintln!(
            "epoch {}: validation HR@10 {:.3}, distinct-timestamp slice {:.3} ({} of {})",
            e.train.epoch + 1,
            e.validation_hr10,
            e.validation_hr10_distinct_timestamps,
            distinct,
            split.validation.len()
        );
    }
    assert!(!epochs.is_empty() && epochs.len() <= 12);
    for e in &epochs {
        assert_eq!(e.validation_cases_distinct_timestamps, distinct);
        assert!((0.0..=1.0).contains(&e.validation_hr10_distinct_timestamps));
        // The whole set's hit rate mixes the slice with the tied rest, so it can be no
        // further from the slice's than the tied share allows.
        let tied_share = 1.0 - distinct as f64 / split.validation.len() as f64;
        assert!((e.validation_hr10 - e.validation_hr10_distinct_timestamps).abs() <= tied_share + 1e-9);
    }
    // Patience 1: training stops at the first epoch that does not beat the best, and the
    // model kept is the best epoch's.
    let best = outcome.best_epochs[0];
    let hr: Vec<f64> = epochs.iter().map(|e| e.validation_hr10).collect();
    let best_hr = hr.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(hr[best - 1], best_hr, "best epoch {best} of {hr:?}");
    assert!(epochs.len() < 12, "a learning rate this high overfits 120 shoppers: {hr:?}");
    assert!(
        hr.last().unwrap() <= &best_hr && best == epochs.len() - 1,
        "{hr:?}, best {best}"
    );
    assert_eq!(outcome.test.full.overall.cases, split.test.len());
}

#[test]
fn averaging_serves_the_mean_of_the_late_epochs_weights() {
    use burn::prelude::*;
    use fedfuse_model::catalog::ItemFeatures;
    use fedfuse_model::fit::{TITLE_LEN, fit};
    use fedfuse_model::params::export;
    use fedfuse_model::train::train;

    let dataset = generate(&SyntheticConfig {
        shoppers: 60,
        items: 40,
        events: 900,
        ..SyntheticConfig::default()
    })
    .unwrap();
    let split = Split::new(
        &dataset,
        &SplitConfig {
            negatives: 10,
            ..SplitConfig::default()
        },
    )
    .unwrap();
    let shape = ModelShape {
        dim: 8,
        max_len: 6,
        ..ModelShape::default()
    };
    let features = ItemFeatures::from_catalog(&dataset.catalog);
    let vocabulary = features.vocabulary(TITLE_LEN);
    let device = burn::tensor::Device::flex();
    let train_device = device.clone().autodiff();
    let train_catalog = features.to_tensors(vocabulary, &train_device);
    let eval_catalog = features.to_tensors(vocabulary, &device);
    let sequences = split.train_sequences();
    let cases: Vec<usize> = (0..split.validation.len()).collect();
    let config = TrainConfig {
        epochs: 3,
        learning_rate: 1e-2,
        batch_size: 16,
        max_len: 6,
        ..TrainConfig::default()
    };
    // One initial model, cloned: the device's seed is global, and tests in this binary run
    // side by side.
    device.seed(5);
    let start = shape.config(&vocabulary).init(&train_device);
    let init = || start.clone();
    // Each epoch's weights, from the same training outside `fit` (deterministic on the CPU).
    let mut per_epoch = Vec::new();
    train(init(), &train_catalog, &sequences, &config, |_, m| {
        per_epoch.push(export(&m.valid()));
        true
    })
    .unwrap();

    let fit_with = |selection| {
        fit(
            init(),
            &train_catalog,
            &eval_catalog,
            &sequences,
            &split,
            &cases,
            &config,
            3,
            selection,
            |_| {},
        )
        .unwrap()
    };
    let fitted = fit_with(Selection::AverageFrom(2));
    assert_eq!(fitted.averaged_epochs, 2);
    let served = export(&fitted.model);
    let mut moved = 0;
    for (k, p) in served.iter().enumerate() {
        assert_eq!(p.name, per_epoch[2][k].name);
        for (i, v) in p.values.iter().enumerate() {
            let (a, b) = (per_epoch[1][k].values[i], per_epoch[2][k].values[i]);
            let want = (a + b) / 2.0;
            assert!(
                (v - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{}[{i}]: {v} vs {want}",
                p.name
            );
            moved += usize::from(a != b);
        }
    }
    assert!(
        moved > 1000,
        "epochs 2 and 3 differ, so the mean is neither: {moved} values moved"
    );
    assert!(fitted.epochs.len() == 3 && (0.0..=1.0).contains(&fitted.served_validation.0));

    // A fit that ends before the first averaged epoch serves its best validated epoch.
    let early = fit_with(Selection::AverageFrom(9));
    assert_eq!(early.averaged_epochs, 0);
    let best = &early.epochs[early.best_epoch];
    assert_eq!(early.served_validation, (best.validation_hr10, best.validation_ndcg10));
    assert_eq!(export(&early.model), per_epoch[early.best_epoch]);
}
