//! Most-popular: the score of an item is its number of training events.

use fedfuse_data::evaluate::{ScoreRows, Scorer};

#[derive(Debug, Clone)]
pub struct Popularity {
    counts: Vec<f32>,
}

impl Popularity {
    /// From training events per item (`Split::train_item_counts`).
    pub fn new(item_counts: &[u32]) -> Self {
        Self {
            counts: item_counts.iter().map(|c| *c as f32).collect(),
        }
    }
}

impl Scorer for Popularity {
    fn items(&self) -> usize {
        self.counts.len()
    }

    fn score(&mut self, histories: &[Vec<u32>]) -> ScoreRows {
        ScoreRows {
            scores: histories.iter().flat_map(|_| self.counts.iter().copied()).collect(),
            components: Vec::new(),
        }
    }
}
