//! The fused model as a [`Scorer`] for the project's evaluation protocol
//! ([`fedfuse_data::evaluate`]): the fused score, and each branch the model computes as a
//! component, so one pass reports every branch of the jointly trained model too.

use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use fedfuse_data::evaluate::{EvalAccumulator, Holdout, ScoreRows, Scorer, evaluate_into};
use fedfuse_data::split::Split;

use crate::catalog::CatalogTensors;
use crate::fused::{BRANCHES, FusedRecommender, Scores};
use crate::item_tower::ItemVectors;
use crate::window::left_padded;

/// Scores histories (data ids, most recent last) against the whole catalog (`candidates`,
/// from [`crate::fused::FusedRecommender::catalog_vectors`]): `[B, 1, n]`.
pub fn score_histories(
    model: &FusedRecommender,
    catalog: &CatalogTensors,
    candidates: &ItemVectors,
    histories: &[Vec<u32>],
) -> Scores {
    let device = catalog.category.device();
    let max_len = model.sequence.max_len();
    let history: Vec<i64> = histories.iter().flat_map(|s| left_padded(s, s.len(), max_len)).collect();
    let history = Tensor::<2, Int>::from_data(TensorData::new(history, [histories.len(), max_len]), &device);
    model.score(&model.encode(history, catalog).last(), candidates)
}

/// A trained model (on a plain, non-autodiff device) ready to be evaluated.
pub struct FusedScorer<'a> {
    model: &'a FusedRecommender,
    catalog: &'a CatalogTensors,
    candidates: ItemVectors,
}

impl<'a> FusedScorer<'a> {
    pub fn new(model: &'a FusedRecommender, catalog: &'a CatalogTensors) -> Self {
        Self {
            model,
            catalog,
            candidates: model.catalog_vectors(catalog),
        }
    }
}

fn to_vec(t: &Tensor<3>) -> Vec<f32> {
    t.to_data().try_to_vec::<f32>().unwrap_or_default()
}

impl Scorer for FusedScorer<'_> {
    fn items(&self) -> usize {
        self.catalog.vocabulary.items - 1
    }

    fn score(&mut self, histories: &[Vec<u32>]) -> ScoreRows {
        let s = score_histories(self.model, self.catalog, &self.candidates, histories);
        ScoreRows {
            scores: to_vec(&s.fused),
            components: BRANCHES
                .iter()
                .zip(&s.branches)
                .filter_map(|(name, b)| b.as_ref().map(|b| (*name, to_vec(b))))
                .collect(),
        }
    }
}

/// HR@10 and NDCG@10 (full ranking) of `model` on the validation items of `cases` of `split`,
/// and how many cases were scored: what the platform's pretraining and fine-tuning decide by and
/// what a store reports of each model offered to it.
pub fn validation_hr10_ndcg10(
    model: &FusedRecommender,
    catalog: &CatalogTensors,
    split: &Split,
    cases: &[usize],
) -> (f64, f64, usize) {
    let mut acc = EvalAccumulator::default();
    evaluate_into(
        &mut FusedScorer::new(model, catalog),
        split,
        Holdout::Validation,
        cases,
        256,
        &mut acc,
    );
    let e = acc.finish(10);
    (e.full.overall.mean.hit_rate, e.full.overall.mean.ndcg, e.full.overall.cases)
}
