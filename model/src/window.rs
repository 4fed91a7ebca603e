//! Training windows and batches.
//!
//! A shopper's training sequence is cut, from its end backwards, into windows of at most
//! `max_len` next-item predictions: the window's inputs are items `start-1 .. end-1` and its
//! targets items `start .. end`, so one forward pass over the inputs scores every target
//! (causal encoders see only the past). Every training event is the target of exactly one
//! window per epoch.
//!
//! Cut that way, the first targets of a window see one or two items of history, while a
//! shopper's test item is predicted from a full `max_len`. [`context_windows`] cuts targets in
//! chunks of `stride` instead and fills the rest of each window with the items before them as
//! context (read, not scored), so that every target after the first `max_len` events is
//! predicted from at least `max_len − stride` items, the way it will be served. It costs
//! `max_len / stride` times the forward passes per epoch.
//!
//! The candidates a batch's predictions are scored against are shared by the whole batch:
//! `in_batch` draws from the batch's own targets (negatives as popular as the data) and
//! `uniform` draws from the catalog (so the tail is not ignored), both with replacement. Each
//! logit is corrected by the log of its candidate's expected count in the draw (sampled
//! softmax, Jean et al. 2015; Yi et al. 2019), which makes the sampled loss an unbiased
//! stand-in for the full softmax. When the draws would cover the catalog, the batch uses the
//! catalog itself and the exact softmax.

use burn::prelude::*;
use burn::tensor::{Bool, Int, TensorData};

/// One window: targets are `sequence[start..end]` of shopper `shopper`, read after the
/// `context` items before `sequence[start - 1]` (inputs `start - 1 - context .. end - 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub shopper: u32,
    pub start: u32,
    pub end: u32,
    pub context: u32,
}

/// All windows of `sequences` (targets need at least one earlier item), disjoint: every
/// position scored.
pub fn windows(sequences: &[Vec<u32>], max_len: usize) -> Vec<Window> {
    context_windows(sequences, max_len, max_len)
}

/// Windows of `max_len` inputs whose last `stride` positions are scored (`1 ≤ stride ≤
/// max_len`; `stride = max_len` is [`windows`]). Cut from the end backwards; a sequence's
/// oldest targets, up to `max_len` of them, form one window without context. Every training
/// event is still the target of exactly one window.
pub fn context_windows(sequences: &[Vec<u32>], max_len: usize, stride: usize) -> Vec<Window> {
    let max_len = max_len.max(1);
    let stride = stride.clamp(1, max_len);
    let mut out = Vec::new();
    for (s, seq) in sequences.iter().enumerate() {
        let mut end = seq.len();
        while end > 1 {
            // Targets 1..end need inputs 0..end-1: they fit in one window.
            let start = if end - 1 <= max_len { 1 } else { end - stride };
            let context = (max_len - (end - start)).min(start - 1);
            out.push(Window {
                shopper: s as u32,
                start: start as u32,
                end: end as u32,
                context: context as u32,
            });
            end = start;
        }
    }
    out
}

/// Runs of consecutive training events that share a timestamp, per shopper.
///
/// A split orders a shopper's same-second events by item id, so within such a run "next"
/// means "larger id": on MovieLens-100K half of all consecutive training pairs are tied, and a
/// sequence model trained on them in that order learns id order instead of taste. Training
/// on [`SameTimeRuns::shuffled`] sequences (each run permuted afresh every epoch) takes that
/// signal away: the order inside a second carries nothing about the shopper, so no order is
/// taught. Evaluation keeps the split's order; only training targets move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SameTimeRuns {
    /// Per shopper: the sequence length the runs were found in, and the runs as position
    /// ranges (two events or more each).
    shoppers: Vec<(u32, Vec<(u32, u32)>)>,
}

/// "T of N training events sit in a same-second run": what a shuffle reorders.
impl std::fmt::Display for SameTimeRuns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} training events sit in a same-second run",
            self.tied_events(),
            self.events()
        )
    }
}

/// Sequences that do not fit the runs they are to be shuffled by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("same-time runs: {0}")]
pub struct RunsMismatch(pub String);

impl SameTimeRuns {
    /// From each shopper's training timestamps, oldest first.
    pub fn from_timestamps<T: AsRef<[i64]>>(timestamps: &[T]) -> Self {
        let shoppers = timestamps
            .iter()
            .map(|ts| {
                let ts = ts.as_ref();
                let mut runs = Vec::new();
                let mut start = 0;
                for i in 1..=ts.len() {
                    if i == ts.len() || ts[i] != ts[start] {
                        if i - start >= 2 {
                            runs.push((start as u32, i as u32));
                        }
                        start = i;
                    }
                }
                (ts.len() as u32, runs)
            })
            .collect();
        Self { shoppers }
    }

    /// The training events of every shopper of `split`.
    pub fn from_split(split: &fedfuse_data::split::Split) -> Self {
        Self::from_timestamps(&split.train_timestamps())
    }

    /// Events that sit in a run (could be reordered).
    pub fn tied_events(&self) -> usize {
        self.shoppers
            .iter()
            .flat_map(|(_, runs)| runs.iter().map(|(a, b)| (b - a) as usize))
            .sum()
    }

    /// Events the runs were found among (every shopper's sequence length).
    pub fn events(&self) -> usize {
        self.shoppers.iter().map(|(len, _)| *len as usize).sum()
    }

    /// Whether `sequences` can be shuffled by these runs: one per shopper, each of the length
    /// the runs were found in or empty (a shopper outside the store or group training).
    pub fn check(&self, sequences: &[Vec<u32>]) -> Result<(), RunsMismatch> {
        if sequences.len() != self.shoppers.len() {
            return Err(RunsMismatch(format!(
                "{} sequences for {} shoppers",
                sequences.len(),
                self.shoppers.len()
            )));
        }
        match sequences
            .iter()
            .zip(&self.shoppers)
            .position(|(seq, (len, _))| !seq.is_empty() && seq.len() != *len as usize)
        {
            Some(s) => Err(RunsMismatch(format!(
                "shopper {s} has {} training events, the runs were found in {}",
                sequences[s].len(),
                self.shoppers[s].0
            ))),
            None => Ok(()),
        }
    }

    /// `sequences` with every run permuted uniformly at random (empty sequences stay empty).
    /// Call [`SameTimeRuns::check`] first; a shopper that does not fit is left in order.
    pub fn shuffled(&self, sequences: &[Vec<u32>], rng: &mut SplitMix) -> Vec<Vec<u32>> {
        sequences
            .iter()
            .enumerate()
            .map(|(shopper, seq)| {
                let mut seq = seq.clone();
                self.shuffle_shopper(shopper, &mut seq, rng);
                seq
            })
            .collect()
    }

    /// Permutes every run of `shopper` in `sequence`, that shopper's training sequence; for
    /// trainers that draw a few shoppers a step (DP-SGD) rather than walk them all. A sequence
    /// of another length than the runs were found in (or an unknown shopper) is left in order.
    pub fn shuffle_shopper(&self, shopper: usize, sequence: &mut [u32], rng: &mut SplitMix) {
        let Some((len, runs)) = self.shoppers.get(shopper) else {
            return;
        };
        if sequence.len() == *len as usize {
            for (a, b) in runs {
                rng.shuffle(&mut sequence[*a as usize..*b as usize]);
            }
        }
    }
}

/// The last `max_len` items before `end`, as model ids (data id + 1), left-padded with 0.
pub fn left_padded(sequence: &[u32], end: usize, max_len: usize) -> Vec<i64> {
    let start = end.saturating_sub(max_len);
    let items = &sequence[start..end];
    let mut out = vec![crate::PAD; max_len - items.len()];
    out.extend(items.iter().map(|i| i64::from(*i) + 1));
    out
}

/// How a batch's predictions are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateConfig {
    /// Draws from the batch's targets.
    pub in_batch: usize,
    /// Draws from the catalog, uniformly.
    pub uniform: usize,
    /// Leave out of each prediction's softmax the candidates its shopper has already
    /// interacted with (the target excepted). Evaluation ranks the catalog minus the shopper's
    /// history, so scores of seen items never matter there; trained against them, the model
    /// spends capacity pushing down items it will never be asked to rank.
    pub exclude_seen: bool,
}

impl Default for CandidateConfig {
    fn default() -> Self {
        Self {
            in_batch: 256,
            uniform: 256,
            exclude_seen: false,
        }
    }
}

/// A batch on a device. `history` and `target` are `[B, T]` model ids (0 = none); `weight`
/// `[B, T, 1]` is 1 where a target exists; `candidates` `[1, C]`; `log_q_candidates`
/// `[1, 1, C]` and `log_q_target` `[B, T, 1]` the sampled-softmax corrections (0 for the
/// exact softmax); `collides` `[B, T, C]` marks a candidate equal to the row's own target
/// (and, with [`CandidateConfig::exclude_seen`], one its shopper saw before that position).
#[derive(Debug, Clone)]
pub struct TrainBatch {
    pub history: Tensor<2, Int>,
    pub target: Tensor<2, Int>,
    pub weight: Tensor<3>,
    pub candidates: Tensor<2, Int>,
    pub log_q_candidates: Tensor<3>,
    pub log_q_target: Tensor<3>,
    pub collides: Tensor<3, Bool>,
    /// Predictions (targets) in the batch.
    pub predictions: usize,
}

/// A small deterministic generator for shuffles and candidate draws (splitmix64): CPU runs
/// repeat exactly for a seed, and nothing here needs cryptographic strength (noise for
/// privacy comes from `fedfuse-privacy`).
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by Lemire's multiply-shift (bias below 2⁻³²).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32).wrapping_mul(n as u64) >> 32) as usize
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Builds the batch of `windows` (items are data ids; the catalog has `n_items` items).
pub fn batch(
    sequences: &[Vec<u32>],
    windows: &[Window],
    n_items: usize,
    candidates: CandidateConfig,
    max_len: usize,
    rng: &mut SplitMix,
    device: &Device,
) -> TrainBatch {
    let b = windows.len();
    let t = max_len;
    let mut history = vec![crate::PAD; b * t];
    let mut target = vec![crate::PAD; b * t];
    let mut weight = vec![0f32; b * t];
    let mut targets = Vec::new();
    for (row, w) in windows.iter().enumerate() {
        let seq = &sequences[w.shopper as usize];
        let (start, end) = (w.start as usize, w.end as usize);
        let first = start - w.context as usize;
        let offset = row * t + (t - (end - first));
        for (k, p) in (first..end).enumerate() {
            history[offset + k] = i64::from(seq[p - 1]) + 1;
            if p >= start {
                target[offset + k] = i64::from(seq[p]) + 1;
                weight[offset + k] = 1.0;
                targets.push(seq[p]);
            }
        }
    }
    let predictions = targets.len();
    let exact = candidates.in_batch + candidates.uniform >= n_items || predictions == 0;
    let (cands, log_q): (Vec<u32>, Vec<f32>) = if exact {
        ((0..n_items as u32).collect(), vec![0.0; n_items])
    } else {
        let mut count = std::collections::HashMap::<u32, u32>::new();
        targets.iter().for_each(|i| *count.entry(*i).or_default() += 1);
        let expected = |i: u32| {
            let c = f64::from(count.get(&i).copied().unwrap_or(0));
            (candidates.in_batch as f64 * c / predictions as f64 + candidates.uniform as f64 / n_items as f64).ln() as f32
        };
        let mut drawn: Vec<u32> = (0..candidates.in_batch).map(|_| targets[rng.below(predictions)]).collect();
        drawn.extend((0..candidates.uniform).map(|_| rng.below(n_items) as u32));
        let log_q = drawn.iter().map(|i| expected(*i)).collect();
        (drawn, log_q)
    };
    let log_q_target: Vec<f32> = if exact {
        vec![0.0; b * t]
    } else {
        let mut count = std::collections::HashMap::<i64, u32>::new();
        targets.iter().for_each(|i| *count.entry(i64::from(*i) + 1).or_default() += 1);
        target
            .iter()
            .map(|m| match count.get(m) {
                Some(c) if *m != crate::PAD => (candidates.in_batch as f64 * f64::from(*c) / predictions as f64
                    + candidates.uniform as f64 / n_items as f64)
                    .ln() as f32,
                _ => 0.0,
            })
            .collect()
    };
    let c = cands.len();
    let cand_model: Vec<i64> = cands.iter().map(|i| i64::from(*i) + 1).collect();
    let target_t = Tensor::<2, Int>::from_data(TensorData::new(target, [b, t]), device);
    let cand_t = Tensor::<2, Int>::from_data(TensorData::new(cand_model, [1, c]), device);
    let collides = if candidates.exclude_seen {
        Tensor::from_data(
            TensorData::new(seen_or_target(sequences, windows, &cands, n_items, t), [b, t, c]),
            device,
        )
    } else {
        target_t
            .clone()
            .reshape([b, t, 1])
            .expand([b, t, c])
            .equal(cand_t.clone().reshape([1, 1, c]).expand([b, t, c]))
    };
    TrainBatch {
        history: Tensor::from_data(TensorData::new(history, [b, t]), device),
        target: target_t,
        weight: Tensor::from_data(TensorData::new(weight, [b, t, 1]), device),
        candidates: cand_t,
        log_q_candidates: Tensor::from_data(TensorData::new(log_q, [1, 1, c]), device),
        log_q_target: Tensor::from_data(TensorData::new(log_q_target, [b, t, 1]), device),
        collides,
        predictions,
    }
}

/// The `[B, T, C]` mask (row-major) of candidates equal to a position's target or found
/// anywhere in its shopper's sequence before it (not only in the window: evaluation leaves
/// out the whole history).
fn seen_or_target(sequences: &[Vec<u32>], windows: &[Window], cands: &[u32], n_items: usize, t: usize) -> Vec<bool> {
    let c = cands.len();
    let mut mask = vec![false; windows.len() * t * c];
    // Candidate columns of each item (an item may be drawn more than once).
    let mut columns: Vec<Vec<u32>> = vec![Vec::new(); n_items];
    for (j, item) in cands.iter().enumerate() {
        if let Some(cols) = columns.get_mut(*item as usize) {
            cols.push(j as u32);
        }
    }
    // Position of each item's first occurrence in the current row's sequence.
    let mut first_seen = vec![usize::MAX; n_items];
    for (row, w) in windows.iter().enumerate() {
        let seq = &sequences[w.shopper as usize];
        let (start, end) = (w.start as usize, w.end as usize);
        let first = start - w.context as usize;
        let at = |p: usize| (row * t + t - (end - first) + (p - first)) * c;
        for (pos, item) in seq[..end].iter().enumerate() {
            if let Some(f) = first_seen.get_mut(*item as usize) {
                *f = (*f).min(pos);
            }
        }
        for (j, item) in cands.iter().enumerate() {
            let seen_at = first_seen.get(*item as usize).copied().unwrap_or(usize::MAX);
            for p in start.max(seen_at.saturating_add(1))..end {
                mask[at(p) + j] = true;
            }
        }
        for p in start..end {
            for j in columns.get(seq[p] as usize).into_iter().flatten() {
                mask[at(p) + *j as usize] = true;
            }
        }
        for item in &seq[..end] {
            if let Some(f) = first_seen.get_mut(*item as usize) {
                *f = usize::MAX;
            }
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_cover_every_target_once() {
        let seqs = vec![(0..12).collect::<Vec<u32>>(), vec![5], vec![1, 2]];
        let w = windows(&seqs, 5);
        assert_eq!(
            w,
            vec![
                Window {
                    shopper: 0,
                    start: 7,
                    end: 12,
                    context: 0
                },
                Window {
                    shopper: 0,
                    start: 2,
                    end: 7,
                    context: 0
                },
                Window {
                    shopper: 0,
                    start: 1,
                    end: 2,
                    context: 0
                },
                Window {
                    shopper: 2,
                    start: 1,
                    end: 2,
                    context: 0
                },
            ]
        );
        let covered: usize = w.iter().map(|w| (w.end - w.start) as usize).sum();
        assert_eq!(covered, 11 + 1);
    }

    #[test]
    fn batch_aligns_inputs_and_targets_to_the_right() {
        let device = Device::flex();
        let seqs = vec![vec![3u32, 4, 5], vec![7, 8, 9, 1, 2]];
        let w = windows(&seqs, 4);
        let mut rng = SplitMix(1);
        let b = batch(&seqs, &w, 10, CandidateConfig::default(), 4, &mut rng, &device);
        let h: Vec<i64> = b.history.to_data().try_to_vec_as::<i64>().unwrap();
        let t: Vec<i64> = b.target.to_data().try_to_vec_as::<i64>().unwrap();
        // Model ids are data ids + 1.
        assert_eq!(h, vec![0, 0, 4, 5, 8, 9, 10, 2]);
        assert_eq!(t, vec![0, 0, 5, 6, 9, 10, 2, 3]);
        assert_eq!(b.predictions, 6);
        // 512 draws cover a 10-item catalog: the exact softmax over all of it.
        assert_eq!(b.candidates.dims(), [1, 10]);
        let collide: Vec<bool> = b.collides.to_data().try_to_vec::<bool>().unwrap();
        // Row 0, position 2 has target model id 5 = catalog column 4.
        assert!(collide[2 * 10 + 4] && collide.iter().filter(|c| **c).count() == 6);
    }

    #[test]
    fn context_windows_score_every_target_once_after_a_full_window_of_history() {
        let seqs = vec![(0..12).collect::<Vec<u32>>(), vec![5], vec![1, 2], (0..5).collect()];
        let w = context_windows(&seqs, 5, 2);
        let at = |start, end, context| Window {
            shopper: 0,
            start,
            end,
            context,
        };
        // Shopper 0: targets 10..12 after items 6..9 (context 3 + the window's own inputs), …,
        // and the oldest five targets in one window of their own.
        assert_eq!(&w[..4], &[at(10, 12, 3), at(8, 10, 3), at(6, 8, 3), at(1, 6, 0)]);
        assert_eq!(
            &w[4..],
            &[
                Window {
                    shopper: 2,
                    start: 1,
                    end: 2,
                    context: 0
                },
                Window {
                    shopper: 3,
                    start: 1,
                    end: 5,
                    context: 0
                }
            ]
        );
        let mut scored: Vec<(u32, u32)> = w.iter().flat_map(|w| (w.start..w.end).map(move |p| (w.shopper, p))).collect();
        scored.sort_unstable();
        let mut want: Vec<(u32, u32)> = (1..12)
            .map(|p| (0, p))
            .chain([(2, 1)])
            .chain((1..5).map(|p| (3, p)))
            .collect();
        want.sort_unstable();
        assert_eq!(scored, want, "every target exactly once");
        assert!(w.iter().all(|w| w.context + w.end - w.start <= 5));
        // A stride of max_len is the plain cut.
        assert_eq!(context_windows(&seqs, 5, 5), windows(&seqs, 5));
    }

    #[test]
    fn context_positions_are_read_but_not_scored() {
        let device = Device::flex();
        let seqs = vec![vec![1u32, 2, 3, 4, 5, 6, 7]];
        let w = context_windows(&seqs, 4, 2);
        assert_eq!(
            w[0],
            Window {
                shopper: 0,
                start: 5,
                end: 7,
                context: 2
            }
        );
        let mut rng = SplitMix(3);
        let b = batch(&seqs, &w[..1], 10, CandidateConfig::default(), 4, &mut rng, &device);
        let h: Vec<i64> = b.history.to_data().try_to_vec_as::<i64>().unwrap();
        let t: Vec<i64> = b.target.to_data().try_to_vec_as::<i64>().unwrap();
        let wt: Vec<f32> = b.weight.to_data().try_to_vec::<f32>().unwrap();
        // Inputs: data items 3, 4, 5, 6 (model ids + 1); targets 6 and 7 at the last two
        // positions only.
        assert_eq!(h, vec![4, 5, 6, 7]);
        assert_eq!(t, vec![0, 0, 7, 8]);
        assert_eq!(wt, vec![0.0, 0.0, 1.0, 1.0]);
        assert_eq!(b.predictions, 2);
    }

    #[test]
    fn same_time_runs_are_found_and_only_they_are_permuted() {
        // Shopper 0: seconds 5,5,5 then 6 then 7,7; shopper 1 has no ties; shopper 2 is empty.
        let runs = SameTimeRuns::from_timestamps(&[vec![5i64, 5, 5, 6, 7, 7], vec![1, 2, 3], vec![]]);
        assert_eq!(runs.tied_events(), 5);
        assert_eq!(runs.to_string(), "5 of 9 training events sit in a same-second run");
        let seqs = vec![vec![10u32, 11, 12, 13, 14, 15], vec![1, 2, 3], vec![]];
        runs.check(&seqs).unwrap();
        let mut rng = SplitMix(42);
        let mut firsts = std::collections::BTreeSet::new();
        let mut tails = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let out = runs.shuffled(&seqs, &mut rng);
            // Untied events keep their places; every run keeps its items.
            assert_eq!(out[0][3], 13);
            assert_eq!(out[1], vec![1, 2, 3]);
            assert!(out[2].is_empty());
            let mut head = out[0][..3].to_vec();
            head.sort_unstable();
            assert_eq!(head, vec![10, 11, 12]);
            let mut tail = out[0][4..].to_vec();
            tail.sort_unstable();
            assert_eq!(tail, vec![14, 15]);
            firsts.insert(out[0][0]);
            tails.insert((out[0][4], out[0][5]));
        }
        // Every item of the 3-run leads it at some draw; the 2-run comes out both ways.
        assert_eq!(firsts.into_iter().collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(tails.len(), 2);
    }

    #[test]
    fn same_time_runs_refuse_sequences_they_were_not_found_in() {
        let runs = SameTimeRuns::from_timestamps(&[vec![1i64, 1, 2], vec![4, 4]]);
        // A shopper outside the group (empty) is fine.
        runs.check(&[vec![7, 8, 9], vec![]]).unwrap();
        let err = runs.check(&[vec![7, 8], vec![1, 2]]).unwrap_err();
        assert!(
            err.to_string()
                .contains("shopper 0 has 2 training events, the runs were found in 3"),
            "{err}"
        );
        let err = runs.check(&[vec![7, 8, 9]]).unwrap_err();
        assert!(err.to_string().contains("1 sequences for 2 shoppers"), "{err}");
    }

    #[test]
    fn sampled_candidates_carry_their_expected_counts() {
        let device = Device::flex();
        let seqs = vec![vec![1u32, 2, 1, 2, 1, 2, 3]];
        let w = windows(&seqs, 10);
        let mut rng = SplitMix(9);
        let cfg = CandidateConfig {
            in_batch: 4,
            uniform: 8,
            exclude_seen: false,
        };
        let b = batch(&seqs, &w, 1000, cfg, 10, &mut rng, &device);
        assert_eq!(b.candidates.dims(), [1, 12]);
        let c: Vec<i64> = b.candidates.to_data().try_to_vec_as::<i64>().unwrap();
        let q: Vec<f32> = b.log_q_candidates.to_data().try_to_vec::<f32>().unwrap();
        // Targets: 2,1,2,1,2,3 → item 2 (model 3) has share 3/6.
        for (id, lq) in c.iter().zip(&q) {
            let share = match id - 1 {
                2 => 3.0 / 6.0,
                1 => 2.0 / 6.0,
                3 => 1.0 / 6.0,
                _ => 0.0,
            };
            let want = (4.0 * share + 8.0 / 1000.0f64).ln() as f32;
            assert!((lq - want).abs() < 1e-5, "{id}: {lq} vs {want}");
        }
        // The first four are in-batch draws: all are targets.
        assert!(c[..4].iter().all(|id| [2, 3, 4].contains(id)), "{c:?}");
    }

    #[test]
    fn exclude_seen_masks_the_whole_earlier_history_and_the_target() {
        // Data ids; item 0 comes back at position 2; item 1 lies before the first window.
        let seqs = vec![vec![0u32, 1, 0, 2, 3]];
        let w = [
            Window {
                shopper: 0,
                start: 4,
                end: 5,
                context: 1,
            },
            Window {
                shopper: 0,
                start: 2,
                end: 4,
                context: 0,
            },
        ];
        let (t, f) = (true, false);
        // Exact softmax: column j is item j. Row 0 predicts only its last position (item 3
        // after 0, 1, 0, 2); row 1 predicts item 0 (after 0, 1) and item 2 (after 0, 1, 0).
        let exact: Vec<u32> = (0..5).collect();
        assert_eq!(
            seen_or_target(&seqs, &w, &exact, 5, 2),
            [[f, f, f, f, f], [t, t, t, t, f], [t, t, f, f, f], [t, t, t, f, f]].concat()
        );
        // Sampled candidates, item 3 drawn twice: both of its columns are the target's.
        assert_eq!(
            seen_or_target(&seqs, &w, &[3, 3, 4, 1], 5, 2),
            [[f, f, f, f], [t, t, f, t], [f, f, f, t], [f, f, f, t]].concat()
        );
        // Through `batch`: the same mask as a tensor.
        let device = Device::flex();
        let cfg = CandidateConfig {
            in_batch: 0,
            uniform: 5,
            exclude_seen: true,
        };
        let b = batch(&seqs, &w, 5, cfg, 2, &mut SplitMix(1), &device);
        let mask: Vec<bool> = b.collides.to_data().try_to_vec::<bool>().unwrap();
        assert_eq!(mask, seen_or_target(&seqs, &w, &exact, 5, 2));
        // Without the option only the targets' own columns are marked.
        let plain = CandidateConfig {
            exclude_seen: false,
            ..cfg
        };
        let b = batch(&seqs, &w, 5, plain, 2, &mut SplitMix(1), &device);
        let mask: Vec<bool> = b.collides.to_data().try_to_vec::<bool>().unwrap();
        assert_eq!(
            mask,
            [[f, f, f, f, f], [f, f, f, t, f], [t, f, f, f, f], [f, f, t, f, f]].concat()
        );
    }
}
