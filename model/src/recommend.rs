//! Serving: top-K items for a shopper's history and an optional search query, each with an
//! explanation.
//!
//! The personal score is the fused model's; a query (the search-and-recommendation case) is
//! matched against item titles, and the share of query tokens an item's title holds is added
//! to the standardised personal score with a large weight, so items matching the query come
//! first and the shopper's taste orders them. A shopper with no history gets the store's
//! popular items, still filtered by the query. Every recommendation says how much each branch
//! contributed (softmax(α)ₖ·sₖ, which sum to the fused score) and which history items the
//! sequence encoder attended to most.

use burn::prelude::*;
use fedfuse_data::catalog::{Catalog, tokenize};

use crate::catalog::CatalogTensors;
use crate::evaluate::score_histories;
use crate::fused::{BRANCHES, FusedRecommender};
use crate::item_tower::ItemVectors;
use crate::window::left_padded;

/// A request the catalog cannot answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecommendError {
    /// A history names an item id beyond the catalog (another store's catalog, a stale
    /// client): scoring it would index past the embedding tables.
    #[error("history item {item} is not in the catalog of {items} items")]
    UnknownItem { item: u32, items: usize },
}

/// Standard deviations of personal score an item gains for matching the whole query.
pub const QUERY_WEIGHT: f32 = 4.0;

/// What a recommendation is based on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Basis {
    /// The shopper's history through the fused model.
    Personal,
    /// No history: the store's popular items.
    Popular,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    /// Each branch's share of the fused score (empty for popular items).
    pub branches: Vec<(&'static str, f32)>,
    /// Fraction of the query's tokens in the item's title (0 without a query).
    pub query_match: f32,
    /// History items the encoder attended to most, with their attention weights.
    pub attended: Vec<(u32, f32)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommended {
    /// Data item id.
    pub item: u32,
    /// The ranking score: standardised personal (or popularity) score plus the query bonus.
    pub score: f32,
    /// The fused model's score (log popularity for [`Basis::Popular`]).
    pub personal: f32,
    pub explanation: Explanation,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Recommendations {
    pub basis: Basis,
    pub items: Vec<Recommended>,
}

/// A trained model ready to serve one store.
pub struct Recommender<'a> {
    model: &'a FusedRecommender,
    tensors: &'a CatalogTensors,
    catalog: &'a Catalog,
    candidates: ItemVectors,
    popularity: Vec<f32>,
}

fn standardise(v: &mut [f32]) {
    let n = v.len().max(1) as f32;
    let mean = v.iter().sum::<f32>() / n;
    let std = (v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / n).sqrt().max(1e-6);
    v.iter_mut().for_each(|x| *x = (*x - mean) / std);
}

impl<'a> Recommender<'a> {
    /// `model` on a plain device; `item_counts` the store's own events per item.
    pub fn new(model: &'a FusedRecommender, tensors: &'a CatalogTensors, catalog: &'a Catalog, item_counts: &[u32]) -> Self {
        Self {
            model,
            tensors,
            catalog,
            candidates: model.catalog_vectors(tensors),
            popularity: (0..catalog.len())
                .map(|i| (1.0 + item_counts.get(i).copied().unwrap_or(0) as f32).ln())
                .collect(),
        }
    }

    /// Top `k` items for `history` (data ids, oldest first) and an optional `query`, never an
    /// item already in the history.
    pub fn recommend(&self, history: &[u32], query: Option<&str>, k: usize) -> Result<Recommendations, RecommendError> {
        let n = self.catalog.len();
        self.check(std::slice::from_ref(&history))?;
        let query_tokens: Vec<u32> = query
            .map(|q| tokenize(q).filter_map(|t| self.catalog.tokens.get(&t)).collect())
            .unwrap_or_default();
        let asked = query.map_or(0, |q| tokenize(q).count());
        let matches = |item: usize| -> f32 {
            if asked == 0 {
                return 0.0;
            }
            let title = &self.catalog.items[item].title;
            query_tokens.iter().filter(|t| title.contains(t)).count() as f32 / asked as f32
        };
        let (basis, mut base, branches, attended) = if history.is_empty() {
            (Basis::Popular, self.popularity.clone(), None, Vec::new())
        } else {
            let s = score_histories(self.model, self.tensors, &self.candidates, &[history.to_vec()]);
            let fused: Vec<f32> = s.fused.to_data().try_to_vec::<f32>().unwrap_or_default();
            let weights = self.model.fusion_weights();
            let per_branch: Vec<(&'static str, Vec<f32>)> = BRANCHES
                .iter()
                .zip(&s.branches)
                .enumerate()
                .filter_map(|(k, (name, b))| {
                    let w = if self.model.only.is_some() {
                        1.0
                    } else {
                        weights.get(k).copied().unwrap_or(0.0)
                    };
                    b.as_ref().map(|b| {
                        (
                            *name,
                            b.to_data()
                                .try_to_vec::<f32>()
                                .unwrap_or_default()
                                .iter()
                                .map(|x| w * x)
                                .collect(),
                        )
                    })
                })
                .collect();
            (Basis::Personal, fused, Some(per_branch), self.attended(history))
        };
        let raw = base.clone();
        standardise(&mut base);
        let seen: std::collections::HashSet<u32> = history.iter().copied().collect();
        let mut ranked: Vec<(usize, f32, f32)> = (0..n)
            .filter(|i| !seen.contains(&(*i as u32)))
            .map(|i| {
                let m = matches(i);
                (i, base[i] + QUERY_WEIGHT * m, m)
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        Ok(Recommendations {
            basis,
            items: ranked
                .into_iter()
                .map(|(i, score, m)| Recommended {
                    item: i as u32,
                    score,
                    personal: raw[i],
                    explanation: Explanation {
                        branches: branches
                            .as_ref()
                            .map(|b| b.iter().map(|(name, v)| (*name, v[i])).collect())
                            .unwrap_or_default(),
                        query_match: m,
                        attended: attended.clone(),
                    },
                })
                .collect(),
        })
    }

    /// Every history item is in the catalog.
    fn check<H: AsRef<[u32]>>(&self, histories: &[H]) -> Result<(), RecommendError> {
        let items = self.catalog.len();
        match histories.iter().flat_map(|h| h.as_ref()).find(|i| **i as usize >= items) {
            Some(&item) => Err(RecommendError::UnknownItem { item, items }),
            None => Ok(()),
        }
    }

    /// The three history items the last attention block weighted most at the last position.
    fn attended(&self, history: &[u32]) -> Vec<(u32, f32)> {
        let max_len = self.model.sequence.max_len();
        let padded = left_padded(history, history.len(), max_len);
        let device = self.tensors.category.device();
        let ids = Tensor::<2, burn::tensor::Int>::from_data(TensorData::new(padded.clone(), [1, max_len]), &device);
        let Some(attention) = self.model.encode(ids, self.tensors).attention else {
            return Vec::new();
        };
        let weights: Vec<f32> = attention.to_data().try_to_vec::<f32>().unwrap_or_default();
        let mut by_item: Vec<(u32, f32)> = Vec::new();
        for (id, w) in padded.iter().zip(&weights) {
            if *id == crate::PAD {
                continue;
            }
            let item = (*id - 1) as u32;
            match by_item.iter_mut().find(|(i, _)| *i == item) {
                Some(e) => e.1 += w,
                None => by_item.push((item, *w)),
            }
        }
        by_item.sort_by(|a, b| b.1.total_cmp(&a.1));
        by_item.truncate(3);
        by_item
    }

    /// The top `k` item ids for each history, without explanations (the fast path).
    pub fn top_k(&self, histories: &[Vec<u32>], k: usize) -> Result<Vec<Vec<u32>>, RecommendError> {
        let n = self.catalog.len();
        self.check(histories)?;
        if n == 0 {
            return Ok(vec![Vec::new(); histories.len()]);
        }
        let s = score_histories(self.model, self.tensors, &self.candidates, histories);
        let scores: Vec<f32> = s.fused.to_data().try_to_vec::<f32>().unwrap_or_default();
        Ok(histories
            .iter()
            .zip(scores.chunks(n))
            .map(|(h, row)| {
                let mut idx: Vec<u32> = (0..n as u32).filter(|i| !h.contains(i)).collect();
                let k = k.min(idx.len());
                if k > 0 {
                    idx.select_nth_unstable_by(k - 1, |a, b| row[*b as usize].total_cmp(&row[*a as usize]));
                    idx.truncate(k);
                    idx.sort_by(|a, b| row[*b as usize].total_cmp(&row[*a as usize]));
                }
                idx
            })
            .collect())
    }
}
