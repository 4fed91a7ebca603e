//! The evaluation protocol, for any recommender: per shopper, the held-out item against the
//! whole catalog minus the shopper's history (full ranking, which decides) and against the 99
//! sampled negatives (for comparison with the literature). A [`Scorer`] turns histories into
//! scores over the catalog; the fused model, its branches and the baselines are all judged by
//! this one loop.

use crate::metrics::{FullRanker, MetricsAccumulator, MetricsReport, sampled_rank};
use crate::split::Split;

/// Which held-out item to evaluate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holdout {
    Validation,
    Test,
}

/// Scores of a batch of histories over the catalog: row-major `[histories, items]`, the
/// recommender's own score and optionally named components (a fused model's branches).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoreRows {
    pub scores: Vec<f32>,
    pub components: Vec<(&'static str, Vec<f32>)>,
}

/// A recommender under evaluation.
pub trait Scorer {
    /// Items in the catalog (the length of each row).
    fn items(&self) -> usize;
    /// Scores `histories` (data item ids, oldest first) against every item.
    fn score(&mut self, histories: &[Vec<u32>]) -> ScoreRows;
}

#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub full: MetricsReport,
    pub sampled: MetricsReport,
    /// Full-ranking metrics of each component alone.
    pub components_full: Vec<(String, MetricsReport)>,
}

/// Metrics being gathered, possibly from several recommenders (one per store when every
/// store trains alone).
#[derive(Debug, Clone, Default)]
pub struct EvalAccumulator {
    full: MetricsAccumulator,
    sampled: MetricsAccumulator,
    components: Vec<(String, MetricsAccumulator)>,
}

impl EvalAccumulator {
    pub fn finish(&self, k: usize) -> Evaluation {
        Evaluation {
            full: self.full.report(k),
            sampled: self.sampled.report(k),
            components_full: self.components.iter().map(|(n, a)| (n.clone(), a.report(k))).collect(),
        }
    }
}

/// The case indices of `holdout` (positions in `split.validation` / `split.test`).
pub fn all_cases(split: &Split, holdout: Holdout) -> Vec<usize> {
    let n = match holdout {
        Holdout::Validation => split.validation.len(),
        Holdout::Test => split.test.len(),
    };
    (0..n).collect()
}

/// Evaluates `scorer` on every case at cut-off `k`.
pub fn evaluate(scorer: &mut dyn Scorer, split: &Split, holdout: Holdout, batch: usize, k: usize) -> Evaluation {
    let mut acc = EvalAccumulator::default();
    evaluate_into(scorer, split, holdout, &all_cases(split, holdout), batch, &mut acc);
    acc.finish(k)
}

/// Evaluates `scorer` on the cases `indices`, adding to `acc`.
pub fn evaluate_into(
    scorer: &mut dyn Scorer,
    split: &Split,
    holdout: Holdout,
    indices: &[usize],
    batch: usize,
    acc: &mut EvalAccumulator,
) {
    let n_items = scorer.items();
    let cases = match holdout {
        Holdout::Validation => &split.validation,
        Holdout::Test => &split.test,
    };
    let mut ranker = FullRanker::new(n_items);
    for chunk in indices.chunks(batch.max(1)) {
        let inputs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&c| match holdout {
                Holdout::Validation => split.train_sequence(cases[c].shopper),
                Holdout::Test => split.test_input_sequence(c),
            })
            .collect();
        let rows = scorer.score(&inputs);
        for (name, _) in &rows.components {
            if !acc.components.iter().any(|(n, _)| n == name) {
                acc.components.push((name.to_string(), MetricsAccumulator::new()));
            }
        }
        for (row, &c) in chunk.iter().enumerate() {
            let case = cases[c];
            let info = match holdout {
                Holdout::Validation => split.validation_case_info(c),
                Holdout::Test => split.test_case_info(c),
            };
            let seen = &inputs[row];
            let range = row * n_items..(row + 1) * n_items;
            let r = &rows.scores[range.clone()];
            acc.full.add(ranker.rank(r, case.item, seen), info);
            let negatives = match holdout {
                Holdout::Validation => split.negatives_validation(c),
                Holdout::Test => split.negatives_test(c),
            };
            let negative_scores: Vec<f32> = negatives.iter().map(|n| r[*n as usize]).collect();
            acc.sampled.add(sampled_rank(r[case.item as usize], &negative_scores), info);
            for (name, scores) in &rows.components {
                let a = acc
                    .components
                    .iter_mut()
                    .find(|(n, _)| n == name)
                    .map(|(_, a)| a)
                    .expect("registered above");
                a.add(ranker.rank(&scores[range.clone()], case.item, seen), info);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::Dataset;
    use crate::split::SplitConfig;
    use crate::synthetic::SyntheticConfig;

    /// Scores item i as −i: a fixed ranking, so its metrics can be computed by hand.
    struct ByIdAscending(usize);
    impl Scorer for ByIdAscending {
        fn items(&self) -> usize {
            self.0
        }
        fn score(&mut self, histories: &[Vec<u32>]) -> ScoreRows {
            ScoreRows {
                scores: histories.iter().flat_map(|_| (0..self.0).map(|i| -(i as f32))).collect(),
                components: vec![("flat", vec![0.0; histories.len() * self.0])],
            }
        }
    }

    #[test]
    fn a_fixed_ranking_scores_as_computed_by_hand() {
        let dataset: Dataset = crate::synthetic::generate(&SyntheticConfig {
            shoppers: 300,
            items: 400,
            events: 6000,
            ..SyntheticConfig::default()
        })
        .unwrap();
        let split = Split::new(&dataset, &SplitConfig::default()).unwrap();
        let e = evaluate(&mut ByIdAscending(dataset.catalog.len()), &split, Holdout::Test, 64, 10);
        // By hand: the target's rank is 1 + the number of unseen items with a smaller id.
        let mut hits = 0;
        for (c, case) in split.test.iter().enumerate() {
            let seen = split.test_input_sequence(c);
            let rank = 1 + (0..case.item).filter(|i| !seen.contains(i)).count();
            hits += usize::from(rank <= 10);
        }
        let want = hits as f64 / split.test.len() as f64;
        assert!(want > 0.0, "the hand computation found hits to compare");
        assert!(
            (e.full.overall.mean.hit_rate - want).abs() < 1e-12,
            "{} vs {want}",
            e.full.overall.mean.hit_rate
        );
        assert_eq!(e.full.overall.cases, split.test.len());
        // The all-equal component ranks pessimistically: ties count against the target.
        let flat = &e.components_full[0];
        assert_eq!(flat.0, "flat");
        assert!(flat.1.overall.mean.hit_rate < want, "{}", flat.1.overall.mean.hit_rate);
    }
}
