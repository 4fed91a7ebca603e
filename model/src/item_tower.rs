//! An item as two vectors: its collaborative (ID) embedding, learned from who bought it, and
//! its content vector, built from features every item has (category, brand, price band, title
//! tokens, genres) so that items with few interactions still get a meaningful vector.

use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::Int;

use crate::catalog::{CatalogTensors, Vocabulary};

#[derive(Config, Debug)]
pub struct ItemTowerConfig {
    pub items: usize,
    pub categories: usize,
    pub brands: usize,
    pub price_bands: usize,
    pub tokens: usize,
    pub genres: usize,
    pub dim: usize,
}

impl ItemTowerConfig {
    pub fn for_vocabulary(v: &Vocabulary, dim: usize) -> Self {
        Self::new(v.items, v.categories, v.brands, v.price_bands, v.tokens, v.genres, dim)
    }

    pub fn init(&self, device: &Device) -> ItemTower {
        let emb = |n: usize| {
            EmbeddingConfig::new(n.max(1), self.dim)
                .with_initializer(burn::nn::Initializer::Normal { mean: 0.0, std: 0.05 })
                .init(device)
        };
        ItemTower {
            id: emb(self.items),
            category: emb(self.categories),
            brand: emb(self.brands),
            price_band: emb(self.price_bands),
            token: emb(self.tokens),
            genre: emb(self.genres),
        }
    }
}

#[derive(Module, Debug)]
pub struct ItemTower {
    pub id: Embedding,
    category: Embedding,
    brand: Embedding,
    price_band: Embedding,
    token: Embedding,
    genre: Embedding,
}

/// Masked mean of a bag of embeddings: `[N, L, d]` with `[N, L]` mask → `[N, d]`.
fn bag_mean(emb: Tensor<3>, mask: Tensor<2>) -> Tensor<2> {
    let [n, l] = mask.dims();
    let mask = mask.reshape([n, l, 1]);
    let count = mask.clone().sum_dim(1).clamp_min(1.0);
    (emb * mask).sum_dim(1).div(count).squeeze_dim::<2>(1)
}

impl ItemTower {
    /// ID vectors of `ids` (`[N]`) → `[N, d]`.
    pub fn id_vectors(&self, ids: Tensor<1, Int>) -> Tensor<2> {
        let n = ids.dims()[0];
        self.id.forward(ids.reshape([1, n])).squeeze_dim::<2>(0)
    }

    /// Content vectors of `ids` (`[N]`) → `[N, d]`: category + brand + price band + mean title
    /// token + mean genre.
    pub fn content_vectors(&self, ids: Tensor<1, Int>, catalog: &CatalogTensors) -> Tensor<2> {
        let n = ids.dims()[0];
        let one = |table: &Tensor<1, Int>, emb: &Embedding| {
            emb.forward(table.clone().select(0, ids.clone()).reshape([1, n]))
                .squeeze_dim::<2>(0)
        };
        let bag = |tokens: &Tensor<2, Int>, mask: &Tensor<2>, emb: &Embedding| {
            let t = tokens.clone().select(0, ids.clone());
            let m = mask.clone().select(0, ids.clone());
            bag_mean(emb.forward(t), m)
        };
        one(&catalog.category, &self.category)
            + one(&catalog.brand, &self.brand)
            + one(&catalog.price_band, &self.price_band)
            + bag(&catalog.title, &catalog.title_mask, &self.token)
            + bag(&catalog.genre, &catalog.genre_mask, &self.genre)
    }
}
