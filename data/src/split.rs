//! The leave-last-out evaluation split with sampled negatives.
//!
//! Per shopper, events are sorted by (timestamp, item id, kind); the last event's item is the
//! test target, the second-last's the validation target, and everything before is training
//! data. Sorting by item id after time makes same-second events (44% of MovieLens shoppers end
//! on two) split the same way on every machine. Shoppers with fewer than 3 events keep all of
//! them in training and are not evaluated: with one or two events there is no history left to
//! predict from once the targets are held out, and dropping their events would waste signal
//! the other shoppers' models can use.
//!
//! Targets are events, not distinct items: if a shopper's last event repeats an item seen
//! earlier (a purchase after a view), that item is the target. Sampled negatives, in
//! contrast, are items the shopper never interacted with at all (in any split), drawn
//! uniformly without replacement from a ChaCha8 stream seeded by the split seed and the
//! shopper id, so they do not change when other shoppers are added or removed.

use std::ops::Range;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::dataset::Dataset;
use crate::error::{DataError, Result};
use crate::interactions::Interaction;
use crate::metrics::CaseInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitConfig {
    /// Negatives per evaluated shopper, for validation and for test each (99: the common
    /// "1 target + 99 negatives" protocol).
    pub negatives: usize,
    pub seed: u64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            negatives: 99,
            seed: 2024,
        }
    }
}

/// One held-out target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalCase {
    pub shopper: u32,
    pub item: u32,
    pub timestamp: i64,
    /// The target event's timestamp differs from the event before it. When it does not, which
    /// of the two is "next" is an artefact of the tie-break, so metrics are also reported on
    /// the cases where this holds.
    pub distinct_timestamps: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Split {
    /// Training events sorted by [`Interaction::sort_key`].
    pub train: Vec<Interaction>,
    /// One case per evaluated shopper, in shopper order; parallel to `test`.
    pub validation: Vec<EvalCase>,
    pub test: Vec<EvalCase>,
    negatives: usize,
    negatives_validation: Vec<u32>,
    negatives_test: Vec<u32>,
    train_ranges: Vec<Range<usize>>,
    train_item_counts: Vec<u32>,
    stores: Vec<u16>,
}

impl Split {
    pub fn new(dataset: &Dataset, config: &SplitConfig) -> Result<Split> {
        let num_shoppers = dataset.shoppers.len();
        let num_items = dataset.catalog.len();
        if let Some(bad) = dataset
            .interactions
            .iter()
            .find(|e| e.shopper as usize >= num_shoppers || e.item as usize >= num_items)
        {
            return Err(DataError::Config(format!(
                "event {bad:?} refers to a shopper or item outside the data set ({num_shoppers} shoppers, {num_items} items)"
            )));
        }

        // Group by shopper (counting sort), then order each shopper's events.
        let mut starts = vec![0_usize; num_shoppers + 1];
        for event in &dataset.interactions {
            starts[event.shopper as usize + 1] += 1;
        }
        for shopper in 0..num_shoppers {
            starts[shopper + 1] += starts[shopper];
        }
        let mut grouped = vec![Interaction::new(0, 0, 0); dataset.interactions.len()];
        let mut next = starts.clone();
        for event in &dataset.interactions {
            let slot = &mut next[event.shopper as usize];
            grouped[*slot] = *event;
            *slot += 1;
        }

        let mut split = Split {
            train: Vec::with_capacity(grouped.len()),
            validation: Vec::new(),
            test: Vec::new(),
            negatives: config.negatives,
            negatives_validation: Vec::new(),
            negatives_test: Vec::new(),
            train_ranges: Vec::with_capacity(num_shoppers),
            train_item_counts: vec![0; num_items],
            stores: dataset.shoppers.iter().map(|s| s.store).collect(),
        };
        let mut seen: Vec<u32> = Vec::new();
        let mut chosen: Vec<u32> = Vec::new();
        for shopper in 0..num_shoppers {
            let events = &mut grouped[starts[shopper]..starts[shopper + 1]];
            events.sort_by_key(Interaction::sort_key);
            let held_out = if events.len() >= 3 { 2 } else { 0 };
            let train_len = events.len() - held_out;
            let start = split.train.len();
            split.train.extend_from_slice(&events[..train_len]);
            split.train_ranges.push(start..split.train.len());
            for event in &events[..train_len] {
                split.train_item_counts[event.item as usize] += 1;
            }
            if held_out == 0 {
                continue;
            }
            let case = |i: usize| EvalCase {
                shopper: shopper as u32,
                item: events[i].item,
                timestamp: events[i].timestamp,
                distinct_timestamps: events[i].timestamp != events[i - 1].timestamp,
            };
            split.validation.push(case(events.len() - 2));
            split.test.push(case(events.len() - 1));

            seen.clear();
            seen.extend(events.iter().map(|e| e.item));
            seen.sort_unstable();
            seen.dedup();
            if num_items - seen.len() < config.negatives {
                return Err(DataError::Config(format!(
                    "shopper {} has only {} unseen items, {} negatives asked",
                    dataset.shoppers[shopper].external_id,
                    num_items - seen.len(),
                    config.negatives
                )));
            }
            let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
            rng.set_stream(shopper as u64);
            for out in [&mut split.negatives_validation, &mut split.negatives_test] {
                sample_unseen(&mut rng, num_items, &seen, config.negatives, &mut chosen);
                out.extend_from_slice(&chosen);
            }
        }
        Ok(split)
    }

    /// Negatives of `validation[case]`.
    pub fn negatives_validation(&self, case: usize) -> &[u32] {
        &self.negatives_validation[case * self.negatives..(case + 1) * self.negatives]
    }

    /// Negatives of `test[case]`.
    pub fn negatives_test(&self, case: usize) -> &[u32] {
        &self.negatives_test[case * self.negatives..(case + 1) * self.negatives]
    }

    /// A shopper's training events in time order (empty for an unknown shopper).
    pub fn train_history(&self, shopper: u32) -> &[Interaction] {
        self.train_ranges
            .get(shopper as usize)
            .map_or(&[], |range| &self.train[range.clone()])
    }

    /// A shopper's training items in time order: the input sequence when predicting the
    /// validation target.
    pub fn train_sequence(&self, shopper: u32) -> Vec<u32> {
        self.train_history(shopper).iter().map(|e| e.item).collect()
    }

    /// Every shopper's training item sequence, indexed by shopper.
    pub fn train_sequences(&self) -> Vec<Vec<u32>> {
        (0..self.train_ranges.len() as u32)
            .map(|shopper| self.train_sequence(shopper))
            .collect()
    }

    /// Every shopper's training timestamps, parallel to [`Split::train_sequences`].
    pub fn train_timestamps(&self) -> Vec<Vec<i64>> {
        (0..self.train_ranges.len() as u32)
            .map(|shopper| self.train_history(shopper).iter().map(|e| e.timestamp).collect())
            .collect()
    }

    /// The input sequence when predicting `test[case]`: training items then the validation
    /// target, everything the shopper did before the test event.
    pub fn test_input_sequence(&self, case: usize) -> Vec<u32> {
        let mut sequence = self.train_sequence(self.test[case].shopper);
        sequence.push(self.validation[case].item);
        sequence
    }

    /// Distinct items of a shopper's training events, sorted: what full ranking excludes.
    pub fn seen_train_items(&self, shopper: u32) -> Vec<u32> {
        let mut items = self.train_sequence(shopper);
        items.sort_unstable();
        items.dedup();
        items
    }

    /// Training events per item, across all shoppers (for popularity baselines and the
    /// cold-item slice).
    pub fn train_item_counts(&self) -> &[u32] {
        &self.train_item_counts
    }

    /// Slice facts for `validation[case]`: history is the training events.
    pub fn validation_case_info(&self, case: usize) -> CaseInfo {
        let target = &self.validation[case];
        self.case_info(target, self.train_history(target.shopper).len())
    }

    /// Slice facts for `test[case]`: history is the training events plus the validation event.
    pub fn test_case_info(&self, case: usize) -> CaseInfo {
        let target = &self.test[case];
        self.case_info(target, self.train_history(target.shopper).len() + 1)
    }

    fn case_info(&self, target: &EvalCase, history_len: usize) -> CaseInfo {
        CaseInfo {
            store: self.stores.get(target.shopper as usize).copied().unwrap_or_default(),
            target_train_count: self.train_item_counts.get(target.item as usize).copied().unwrap_or_default(),
            history_len: u32::try_from(history_len).unwrap_or(u32::MAX),
            distinct_timestamps: target.distinct_timestamps,
        }
    }
}

/// Fills `chosen` with `count` distinct items from `0..num_items` not in `seen` (sorted),
/// uniformly. Rejection sampling while most of the catalog is unseen (the usual case, no
/// allocation); a partial Fisher–Yates over the unseen list when few items are left.
fn sample_unseen(rng: &mut ChaCha8Rng, num_items: usize, seen: &[u32], count: usize, chosen: &mut Vec<u32>) {
    chosen.clear();
    let unseen = num_items - seen.len();
    if unseen >= 2 * count.max(1) && 2 * unseen >= num_items {
        while chosen.len() < count {
            let item = rng.random_range(0..num_items as u32);
            if seen.binary_search(&item).is_err() && !chosen.contains(&item) {
                chosen.push(item);
            }
        }
    } else {
        let mut pool: Vec<u32> = (0..num_items as u32)
            .filter(|item| seen.binary_search(item).is_err())
            .collect();
        for i in 0..count {
            let j = rng.random_range(i..pool.len());
            pool.swap(i, j);
        }
        chosen.extend_from_slice(&pool[..count]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Item;
    use crate::dataset::ShopperInfo;
    use crate::interactions::EventKind;

    fn dataset(events: &[(u32, u32, i64)], shoppers: usize, items: usize) -> Dataset {
        let mut dataset = Dataset::default();
        for item in 0..items {
            dataset.catalog.insert(&item.to_string(), Item::default()).unwrap();
        }
        dataset.shoppers = (0..shoppers)
            .map(|s| ShopperInfo {
                external_id: format!("s{s}"),
                ..ShopperInfo::default()
            })
            .collect();
        dataset.interactions = events.iter().map(|&(s, i, t)| Interaction::new(s, i, t)).collect();
        dataset
    }

    #[test]
    fn last_event_is_test_second_last_validation_and_short_shoppers_train_only() {
        // Shopper 0: items at times 1, 2, 3, 3 (tie broken by item id). Shopper 1: two events.
        let data = dataset(&[(0, 7, 3), (0, 1, 1), (0, 5, 3), (0, 2, 2), (1, 3, 1), (1, 4, 2)], 2, 120);
        let split = Split::new(&data, &SplitConfig::default()).unwrap();
        assert_eq!(
            split.test,
            [EvalCase {
                shopper: 0,
                item: 7,
                timestamp: 3,
                distinct_timestamps: false
            }]
        );
        assert_eq!(
            split.validation,
            [EvalCase {
                shopper: 0,
                item: 5,
                timestamp: 3,
                distinct_timestamps: true
            }]
        );
        assert_eq!(split.train_sequence(0), [1, 2]);
        assert_eq!(split.train_sequence(1), [3, 4]);
        assert_eq!(
            split.train_timestamps(),
            [vec![1, 2], vec![1, 2]],
            "parallel to the sequences"
        );
        assert_eq!(split.test_input_sequence(0), [1, 2, 5]);
        assert_eq!(split.train.len(), 4);
        assert_eq!(split.train_item_counts()[3], 1);
        assert_eq!(split.train_item_counts()[7], 0);
        let info = split.test_case_info(0);
        assert_eq!(
            (info.history_len, info.target_train_count, info.distinct_timestamps),
            (3, 0, false)
        );
        assert_eq!(split.validation_case_info(0).history_len, 2);
        assert_eq!(split.negatives_test(0).len(), 99);
    }

    #[test]
    fn negatives_avoid_everything_seen_are_distinct_and_reproducible() {
        let mut events = Vec::new();
        for shopper in 0..30_u32 {
            for k in 0..(3 + shopper * 3) {
                events.push((shopper, (shopper * 7 + k * 13) % 200, i64::from(k)));
            }
        }
        let data = dataset(&events, 30, 200);
        let config = SplitConfig { negatives: 99, seed: 9 };
        let split = Split::new(&data, &config).unwrap();
        assert_eq!(split.test.len(), 30);
        for (case, target) in split.test.iter().enumerate() {
            let seen: Vec<u32> = events.iter().filter(|e| e.0 == target.shopper).map(|e| e.1).collect();
            for negatives in [split.negatives_test(case), split.negatives_validation(case)] {
                assert_eq!(negatives.len(), 99);
                assert!(negatives.iter().all(|n| !seen.contains(n) && *n < 200));
                let mut distinct = negatives.to_vec();
                distinct.sort_unstable();
                distinct.dedup();
                assert_eq!(distinct.len(), 99);
            }
        }
        assert_eq!(Split::new(&data, &config).unwrap(), split, "same seed, same split");
        let other = Split::new(&data, &SplitConfig { seed: 10, ..config }).unwrap();
        assert_ne!(other.negatives_test(0), split.negatives_test(0));
        assert_eq!(other.test, split.test);
        // Shopper 29 has seen 90 items of 200: the partial Fisher–Yates path.
        assert!(split.seen_train_items(29).len() >= 80);
    }

    #[test]
    fn too_few_unseen_items_and_stray_ids_are_errors() {
        let data = dataset(&[(0, 0, 1), (0, 1, 2), (0, 2, 3)], 1, 50);
        let error = Split::new(&data, &SplitConfig::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid configuration: shopper s0 has only 47 unseen items, 99 negatives asked"
        );
        let ok = Split::new(&data, &SplitConfig { negatives: 47, seed: 1 }).unwrap();
        let mut all = ok.negatives_test(0).to_vec();
        all.sort_unstable();
        assert_eq!(all, (3..50).collect::<Vec<u32>>());
        let stray = dataset(&[(0, 60, 1)], 1, 50);
        assert!(matches!(
            Split::new(&stray, &SplitConfig::default()),
            Err(DataError::Config(_))
        ));
    }

    #[test]
    fn kinds_break_same_item_same_second_ties() {
        let mut data = dataset(&[(0, 1, 1), (0, 2, 5), (0, 2, 5)], 1, 200);
        data.interactions[1].kind = EventKind::Purchase;
        data.interactions[2].kind = EventKind::View;
        let split = Split::new(&data, &SplitConfig::default()).unwrap();
        assert_eq!((split.validation[0].item, split.test[0].item), (2, 2));
        assert_eq!(split.train_sequence(0), [1]);
    }

    #[test]
    fn synthetic_split_feeds_the_metrics_and_popularity_beats_chance() {
        use crate::metrics::{FullRanker, MetricsAccumulator, sampled_rank};
        let config = crate::SyntheticConfig {
            shoppers: 3_000,
            items: 1_000,
            events: 60_000,
            ..crate::SyntheticConfig::default()
        };
        let data = crate::synthetic::generate(&config).unwrap();
        let split = Split::new(&data, &SplitConfig::default()).unwrap();
        assert_eq!(split.test.len(), 3_000, "every synthetic shopper has at least 5 events");
        assert_eq!(split.train.len() + 2 * split.test.len(), data.interactions.len());
        let repeats = split
            .test
            .iter()
            .enumerate()
            .filter(|(case, t)| split.test_input_sequence(*case).contains(&t.item))
            .count();
        println!(
            "synthetic test targets already in the shopper's history: {:.1}%",
            100.0 * repeats as f64 / 3_000.0
        );
        let popularity: Vec<f32> = split.train_item_counts().iter().map(|&c| c as f32).collect();
        let (mut sampled, mut full) = (MetricsAccumulator::new(), MetricsAccumulator::new());
        let mut ranker = FullRanker::new(data.num_items());
        for (case, target) in split.test.iter().enumerate() {
            let negatives: Vec<f32> = split.negatives_test(case).iter().map(|&n| popularity[n as usize]).collect();
            sampled.add(
                sampled_rank(popularity[target.item as usize], &negatives),
                split.test_case_info(case),
            );
            let rank = ranker.rank(&popularity, target.item, &split.seen_train_items(target.shopper));
            full.add(rank, split.test_case_info(case));
        }
        let (sampled, full) = (sampled.report(10), full.report(10));
        println!("popularity baseline, sampled:\n{sampled}popularity baseline, full ranking:\n{full}");
        assert!(
            sampled.overall.mean.hit_rate > 0.3,
            "chance is 0.1: {}",
            sampled.overall.mean.hit_rate
        );
        assert!(full.overall.mean.hit_rate < sampled.overall.mean.hit_rate);
        assert_eq!(sampled.by_store.values().map(|m| m.cases).sum::<usize>(), 3_000);
    }

    /// MovieLens-100K (skipped with a message where the folder is absent).
    #[test]
    fn real_movielens_split_and_same_second_endings() {
        let dir = crate::movielens::default_dir();
        if !dir.join("u.data").exists() {
            eprintln!(
                "skipping: MovieLens-100K not found at {} (set {})",
                dir.display(),
                crate::movielens::DIR_ENV
            );
            return;
        }
        let data = crate::movielens::load(&dir).unwrap();
        let split = Split::new(&data, &SplitConfig::default()).unwrap();
        assert_eq!((split.test.len(), split.validation.len()), (943, 943));
        assert_eq!(split.train.len(), 100_000 - 2 * 943);
        let same_second = split.test.iter().filter(|case| !case.distinct_timestamps).count();
        println!(
            "shoppers whose last two events share a timestamp: {same_second} of 943 ({:.1}%)",
            100.0 * same_second as f64 / 943.0
        );
        assert_eq!(same_second, 415);
        for (case, target) in split.test.iter().enumerate() {
            let events = data.interactions.iter().filter(|e| e.shopper == target.shopper);
            let last = events.clone().map(|e| (e.timestamp, e.item)).max().unwrap();
            assert_eq!(last, (target.timestamp, target.item));
            let seen: Vec<u32> = events.map(|e| e.item).collect();
            assert!(
                split
                    .negatives_test(case)
                    .iter()
                    .chain(split.negatives_validation(case))
                    .all(|n| !seen.contains(n))
            );
        }
        assert_eq!(Split::new(&data, &SplitConfig::default()).unwrap(), split);
    }
}
