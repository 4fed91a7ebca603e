//! Evaluation under the project's protocol: per shopper, the held-out item against the whole
//! catalog minus the shopper's history (full ranking, which decides) and against the 99
//! sampled negatives (for the literature), for the fused score and each branch alone.

use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use fedfuse_data::metrics::{FullRanker, MetricsAccumulator, MetricsReport, sampled_rank};
use fedfuse_data::split::Split;

use crate::catalog::CatalogTensors;
use crate::fused::{BRANCHES, FusedRecommender};
use crate::train::left_padded;

/// Which held-out item to evaluate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holdout {
    Validation,
    Test,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub full: MetricsReport,
    pub sampled: MetricsReport,
    /// Full-ranking metrics of each branch alone, in `BRANCHES` order.
    pub per_branch_full: Vec<(String, MetricsReport)>,
}

/// Evaluates `model` (on a plain, non-autodiff device) at cut-off `k`.
pub fn evaluate(
    model: &FusedRecommender,
    catalog: &CatalogTensors,
    split: &Split,
    holdout: Holdout,
    max_len: usize,
    batch: usize,
    k: usize,
) -> Evaluation {
    let device = catalog.category.device();
    let n_items = catalog.vocabulary.items - 1;
    let candidates = Tensor::<1, Int>::arange(1..n_items as i64 + 1, &device);
    let cases = match holdout {
        Holdout::Validation => &split.validation,
        Holdout::Test => &split.test,
    };
    let mut full = MetricsAccumulator::new();
    let mut sampled = MetricsAccumulator::new();
    let mut branches: Vec<MetricsAccumulator> = BRANCHES.iter().map(|_| MetricsAccumulator::new()).collect();
    let mut ranker = FullRanker::new(n_items);
    let indices: Vec<usize> = (0..cases.len()).collect();
    for chunk in indices.chunks(batch.max(1)) {
        let inputs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|&c| match holdout {
                Holdout::Validation => split.train_sequence(cases[c].shopper),
                Holdout::Test => split.test_input_sequence(c),
            })
            .collect();
        let history: Vec<i64> = inputs.iter().flat_map(|s| left_padded(s, s.len(), max_len)).collect();
        let history = Tensor::<2, Int>::from_data(TensorData::new(history, [chunk.len(), max_len]), &device);
        let scores = model.score(&model.encode(history, catalog), candidates.clone(), catalog);
        let fused: Vec<f32> = scores.fused.to_data().try_to_vec::<f32>().unwrap_or_default();
        let per_branch: Vec<Vec<f32>> = scores
            .branches
            .iter()
            .map(|b| b.to_data().try_to_vec::<f32>().unwrap_or_default())
            .collect();
        for (row, &c) in chunk.iter().enumerate() {
            let case = cases[c];
            let info = match holdout {
                Holdout::Validation => split.validation_case_info(c),
                Holdout::Test => split.test_case_info(c),
            };
            let seen = &inputs[row];
            let range = row * n_items..(row + 1) * n_items;
            let r = &fused[range.clone()];
            full.add(ranker.rank(r, case.item, seen), info);
            let negatives = match holdout {
                Holdout::Validation => split.negatives_validation(c),
                Holdout::Test => split.negatives_test(c),
            };
            let negative_scores: Vec<f32> = negatives.iter().map(|n| r[*n as usize]).collect();
            sampled.add(sampled_rank(r[case.item as usize], &negative_scores), info);
            for (acc, scores) in branches.iter_mut().zip(&per_branch) {
                acc.add(ranker.rank(&scores[range.clone()], case.item, seen), info);
            }
        }
    }
    Evaluation {
        full: full.report(k),
        sampled: sampled.report(k),
        per_branch_full: BRANCHES
            .iter()
            .zip(&branches)
            .map(|(n, a)| (n.to_string(), a.report(k)))
            .collect(),
    }
}
