//! Ranking metrics for next-item evaluation, sampled (target vs sampled negatives) and full
//! (target vs the whole catalog), averaged over shoppers and over slices.
//!
//! Every case has exactly one relevant item (the held-out target), so each metric is a
//! function of the target's rank `r` (1-based) and the cut-off `K`:
//!
//! | metric        | value when `r <= K`     | otherwise |
//! |---------------|-------------------------|-----------|
//! | HR@K          | 1                       | 0         |
//! | NDCG@K        | 1 / log2(r + 1)         | 0         |
//! | Recall@K      | 1 (one relevant item)   | 0         |
//! | Precision@K   | 1 / K                   | 0         |
//! | F1@K          | 2 / (K + 1)             | 0         |
//! | MRR           | 1 / r, for every r (not truncated at K) |  |
//!
//! Ties are broken pessimistically: every other candidate whose score is `>=` the target's is
//! ranked above it. A model that gives every item the same score (a collapsed embedding, an
//! all-zero untrained model) then gets the worst rank instead of an optimistic 1 or a lucky
//! random one, so a bug can never look like a result. NaN scores count as tied, which makes
//! a NaN target rank last.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// 1-based rank of the target among itself and `negative_scores` (the sampled protocol).
pub fn sampled_rank(target_score: f32, negative_scores: &[f32]) -> usize {
    1 + negative_scores
        .iter()
        .filter(|&&score| ranks_above(score, target_score))
        .count()
}

/// Pessimistic tie rule: `score` is ranked above the target unless it is strictly lower
/// (so ties and NaNs on either side count against the target).
fn ranks_above(score: f32, target_score: f32) -> bool {
    score.partial_cmp(&target_score) != Some(std::cmp::Ordering::Less)
}

/// 1-based rank of `target` among all items except `excluded` (the shopper's training
/// items), the target itself always a candidate. `scores` holds one score per catalog item.
/// Allocates a mask per call; use [`FullRanker`] in a loop.
///
/// # Panics
/// If `target` is not an index into `scores`.
pub fn full_rank(scores: &[f32], target: u32, excluded: &[u32]) -> usize {
    FullRanker::new(scores.len()).rank(scores, target, excluded)
}

/// Full-ranking ranks with a reusable exclusion mask: O(items + excluded) per case and no
/// allocation, and duplicates in `excluded` are harmless.
#[derive(Debug, Clone)]
pub struct FullRanker {
    excluded: Vec<bool>,
}

impl FullRanker {
    pub fn new(num_items: usize) -> Self {
        FullRanker {
            excluded: vec![false; num_items],
        }
    }

    /// See [`full_rank`]. Ids in `excluded` outside the catalog are ignored.
    ///
    /// # Panics
    /// If `target` is not an index into `scores`.
    pub fn rank(&mut self, scores: &[f32], target: u32, excluded: &[u32]) -> usize {
        let target = target as usize;
        let target_score = scores[target];
        if self.excluded.len() < scores.len() {
            self.excluded.resize(scores.len(), false);
        }
        for &item in excluded {
            if let Some(flag) = self.excluded.get_mut(item as usize) {
                *flag = true;
            }
        }
        let above = scores
            .iter()
            .zip(&self.excluded)
            .enumerate()
            .filter(|&(item, (&score, &excluded))| item != target && !excluded && ranks_above(score, target_score))
            .count();
        for &item in excluded {
            if let Some(flag) = self.excluded.get_mut(item as usize) {
                *flag = false;
            }
        }
        above + 1
    }
}

/// The metrics of one case, or their means over many.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RankMetrics {
    pub hit_rate: f64,
    pub ndcg: f64,
    pub recall: f64,
    pub precision: f64,
    pub f1: f64,
    pub mrr: f64,
}

impl RankMetrics {
    /// The metrics of a target at 1-based `rank` with cut-off `k` (see the module table).
    pub fn at(rank: usize, k: usize) -> RankMetrics {
        let rank = rank.max(1);
        let mrr = 1.0 / rank as f64;
        if k == 0 || rank > k {
            return RankMetrics {
                mrr,
                ..RankMetrics::default()
            };
        }
        RankMetrics {
            hit_rate: 1.0,
            ndcg: 1.0 / ((rank + 1) as f64).log2(),
            recall: 1.0,
            precision: 1.0 / k as f64,
            f1: 2.0 / (k as f64 + 1.0),
            mrr,
        }
    }

    fn add(&mut self, other: &RankMetrics) {
        self.hit_rate += other.hit_rate;
        self.ndcg += other.ndcg;
        self.recall += other.recall;
        self.precision += other.precision;
        self.f1 += other.f1;
        self.mrr += other.mrr;
    }

    fn scaled(&self, factor: f64) -> RankMetrics {
        RankMetrics {
            hit_rate: self.hit_rate * factor,
            ndcg: self.ndcg * factor,
            recall: self.recall * factor,
            precision: self.precision * factor,
            f1: self.f1 * factor,
            mrr: self.mrr * factor,
        }
    }
}

/// What the slices need to know about one evaluated shopper (see
/// [`crate::Split::test_case_info`], which fills it from a split).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseInfo {
    pub store: u16,
    /// Training events on the target item, across all shoppers.
    pub target_train_count: u32,
    /// The shopper's training events.
    pub history_len: u32,
    /// Whether the target event's timestamp differs from the event before it; on same-second
    /// pairs "which came last" is arbitrary, so these cases measure the model less well.
    pub distinct_timestamps: bool,
}

/// Where the slices cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SliceThresholds {
    /// Cold-start targets have fewer training interactions than this.
    pub cold_item_below: u32,
    /// Short-history shoppers have at most this many training events.
    pub short_history_at_most: u32,
}

impl Default for SliceThresholds {
    fn default() -> Self {
        SliceThresholds {
            cold_item_below: 5,
            short_history_at_most: 2,
        }
    }
}

/// Ranks of evaluated shoppers; averages for any cut-off are computed at report time, so one
/// pass of scoring serves @5, @10 and @20.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsAccumulator {
    cases: Vec<(u32, CaseInfo)>,
    thresholds: SliceThresholds,
}

/// Mean metrics over `cases` shoppers (all zero when `cases` is 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MeanMetrics {
    pub cases: usize,
    pub mean: RankMetrics,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub k: usize,
    pub overall: MeanMetrics,
    /// Per store index, stores with at least one case only.
    pub by_store: BTreeMap<u16, MeanMetrics>,
    pub cold_items: MeanMetrics,
    pub short_history: MeanMetrics,
    pub distinct_timestamps: MeanMetrics,
}

#[derive(Default)]
struct Sum {
    cases: usize,
    total: RankMetrics,
}

impl Sum {
    fn add(&mut self, metrics: &RankMetrics) {
        self.cases += 1;
        self.total.add(metrics);
    }

    fn mean(&self) -> MeanMetrics {
        let factor = if self.cases == 0 { 0.0 } else { 1.0 / self.cases as f64 };
        MeanMetrics {
            cases: self.cases,
            mean: self.total.scaled(factor),
        }
    }
}

impl MetricsAccumulator {
    pub fn new() -> Self {
        MetricsAccumulator::default()
    }

    pub fn with_thresholds(thresholds: SliceThresholds) -> Self {
        MetricsAccumulator {
            cases: Vec::new(),
            thresholds,
        }
    }

    /// Records one evaluated shopper whose target came at 1-based `rank`.
    pub fn add(&mut self, rank: usize, info: CaseInfo) {
        self.cases.push((u32::try_from(rank).unwrap_or(u32::MAX), info));
    }

    pub fn len(&self) -> usize {
        self.cases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cases.is_empty()
    }

    /// Means over all cases and over each slice at cut-off `k`.
    pub fn report(&self, k: usize) -> MetricsReport {
        let mut overall = Sum::default();
        let mut by_store: BTreeMap<u16, Sum> = BTreeMap::new();
        let (mut cold, mut short, mut distinct) = (Sum::default(), Sum::default(), Sum::default());
        for (rank, info) in &self.cases {
            let metrics = RankMetrics::at(*rank as usize, k);
            overall.add(&metrics);
            by_store.entry(info.store).or_default().add(&metrics);
            if info.target_train_count < self.thresholds.cold_item_below {
                cold.add(&metrics);
            }
            if info.history_len <= self.thresholds.short_history_at_most {
                short.add(&metrics);
            }
            if info.distinct_timestamps {
                distinct.add(&metrics);
            }
        }
        MetricsReport {
            k,
            overall: overall.mean(),
            by_store: by_store.iter().map(|(store, sum)| (*store, sum.mean())).collect(),
            cold_items: cold.mean(),
            short_history: short.mean(),
            distinct_timestamps: distinct.mean(),
        }
    }
}

impl MeanMetrics {
    fn write(&self, f: &mut fmt::Formatter<'_>, name: &str, k: usize) -> fmt::Result {
        let m = &self.mean;
        writeln!(
            f,
            "{name:<20} n={:<6} HR@{k} {:.4}  NDCG@{k} {:.4}  Recall@{k} {:.4}  Precision@{k} {:.4}  F1@{k} {:.4}  MRR {:.4}",
            self.cases, m.hit_rate, m.ndcg, m.recall, m.precision, m.f1, m.mrr
        )
    }
}

impl fmt::Display for MetricsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.overall.write(f, "all", self.k)?;
        self.distinct_timestamps.write(f, "distinct timestamps", self.k)?;
        self.cold_items.write(f, "cold items", self.k)?;
        self.short_history.write(f, "short history", self.k)?;
        for (store, metrics) in &self.by_store {
            metrics.write(f, &format!("store {store}"), self.k)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn third_of_a_hundred_is_a_hit_with_half_ndcg() {
        let mut negatives = vec![0.0_f32; 99];
        negatives[10] = 0.9;
        negatives[50] = 0.8;
        let rank = sampled_rank(0.5, &negatives);
        assert_eq!(rank, 3);
        let m = RankMetrics::at(rank, 10);
        assert_eq!((m.hit_rate, m.recall), (1.0, 1.0));
        assert!(close(m.ndcg, 0.5), "{}", m.ndcg);
        assert!(close(m.precision, 0.1));
        assert!(close(m.f1, 2.0 * 0.1 * 1.0 / 1.1));
        assert!(close(m.mrr, 1.0 / 3.0));
    }

    #[test]
    fn eleventh_is_a_miss_at_ten_but_keeps_its_reciprocal_rank() {
        let negatives: Vec<f32> = (0..99).map(|i| if i < 10 { 2.0 } else { 0.0 }).collect();
        let rank = sampled_rank(1.0, &negatives);
        assert_eq!(rank, 11);
        let m = RankMetrics::at(rank, 10);
        assert_eq!((m.hit_rate, m.ndcg, m.recall, m.precision, m.f1), (0.0, 0.0, 0.0, 0.0, 0.0));
        assert!(close(m.mrr, 1.0 / 11.0));
        assert!(close(RankMetrics::at(1, 10).ndcg, 1.0));
        assert!(close(RankMetrics::at(10, 10).ndcg, 1.0 / 11f64.log2()));
    }

    #[test]
    fn ties_and_nans_rank_pessimistically() {
        assert_eq!(sampled_rank(1.0, &[1.0; 99]), 100, "all tied: target last");
        assert_eq!(sampled_rank(1.0, &[0.0, 1.0, 2.0, 0.5]), 3);
        assert_eq!(sampled_rank(f32::NAN, &[0.0, 1.0]), 3);
        assert_eq!(sampled_rank(1.0, &[f32::NAN, 0.0]), 2);
    }

    #[test]
    fn full_ranking_skips_seen_items_but_never_the_target() {
        // Items 0..6; target 2 scores 0.5; items 0 and 4 score higher but 4 was seen.
        let scores = [0.9, 0.1, 0.5, 0.5, 0.8, 0.2];
        assert_eq!(full_rank(&scores, 2, &[]), 4, "0, 3 (tie), 4 above");
        assert_eq!(
            full_rank(&scores, 2, &[4, 4, 2, 99]),
            3,
            "seen 4 excluded, the target stays, duplicates and strays ignored"
        );
        let mut ranker = FullRanker::new(6);
        assert_eq!(ranker.rank(&scores, 2, &[0, 3, 4]), 1);
        assert_eq!(ranker.rank(&scores, 2, &[]), 4, "the mask is cleared between calls");
    }

    #[test]
    fn accumulator_averages_over_shoppers_and_slices() {
        let mut acc = MetricsAccumulator::new();
        let info = |store, target_train_count, history_len, distinct_timestamps| CaseInfo {
            store,
            target_train_count,
            history_len,
            distinct_timestamps,
        };
        acc.add(1, info(0, 100, 50, true));
        acc.add(3, info(0, 2, 2, false));
        acc.add(20, info(1, 4, 10, true));
        let report = acc.report(10);
        assert_eq!(report.overall.cases, 3);
        assert!(close(report.overall.mean.hit_rate, 2.0 / 3.0));
        assert!(close(report.overall.mean.ndcg, (1.0 + 0.5) / 3.0));
        assert!(close(report.overall.mean.mrr, (1.0 + 1.0 / 3.0 + 1.0 / 20.0) / 3.0));
        assert_eq!((report.by_store[&0].cases, report.by_store[&1].cases), (2, 1));
        assert!(close(report.by_store[&0].mean.hit_rate, 1.0));
        assert!(close(report.by_store[&1].mean.hit_rate, 0.0));
        assert_eq!(report.cold_items.cases, 2);
        assert!(close(report.cold_items.mean.ndcg, 0.25));
        assert_eq!(report.short_history.cases, 1);
        assert!(close(report.short_history.mean.ndcg, 0.5));
        assert_eq!(report.distinct_timestamps.cases, 2);
        assert!(close(report.distinct_timestamps.mean.hit_rate, 0.5));
        assert!(
            close(acc.report(20).overall.mean.hit_rate, 1.0),
            "any cut-off from the same ranks"
        );
        let text = report.to_string();
        assert!(
            text.starts_with("all                  n=3      HR@10 0.6667  NDCG@10 0.5000"),
            "{text}"
        );
        assert_eq!(MetricsAccumulator::new().report(10).overall, MeanMetrics::default());
    }
}
