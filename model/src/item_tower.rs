//! An item as two vectors: its collaborative (ID) embedding, learned from who bought it, and
//! its content vector, built from features every item has (category, brand, price band, title
//! tokens, genres) so that items with few interactions still get a meaningful vector.
//!
//! Lookups go through [`ItemRows`], the embedding rows a set of items is made of. Training
//! differentiates through them into the tables; DP-SGD instead makes them per-shopper leaves,
//! which is how one backward pass yields each shopper's own gradient (see [`crate::dpsgd`]).

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
    pub category: Embedding,
    pub brand: Embedding,
    pub price_band: Embedding,
    pub token: Embedding,
    pub genre: Embedding,
}

/// Which table rows `[E, N]` items are made of.
#[derive(Debug, Clone)]
pub struct ItemIndices {
    pub id: Tensor<2, Int>,
    pub category: Tensor<2, Int>,
    pub brand: Tensor<2, Int>,
    pub price_band: Tensor<2, Int>,
    pub title: Tensor<3, Int>,
    pub genre: Tensor<3, Int>,
}

/// The embedding rows of `[E, N]` items: `[E, N, d]` per single-valued feature, `[E, N, L, d]`
/// per bag, with the bags' `[E, N, L]` masks (constants, never trained) and the row indices.
#[derive(Debug, Clone)]
pub struct ItemRows {
    pub indices: ItemIndices,
    pub id: Tensor<3>,
    pub category: Tensor<3>,
    pub brand: Tensor<3>,
    pub price_band: Tensor<3>,
    pub title: Tensor<4>,
    pub title_mask: Tensor<3>,
    pub genre: Tensor<4>,
    pub genre_mask: Tensor<3>,
}

/// Vectors of `[E, N]` items, `[E, N, d]` each.
#[derive(Debug, Clone)]
pub struct ItemVectors {
    pub id: Tensor<3>,
    pub content: Tensor<3>,
}

impl ItemVectors {
    /// The item vector the sequence branch and the MLP head see: ID + content.
    pub fn item(&self) -> Tensor<3> {
        self.id.clone() + self.content.clone()
    }
}

/// Masked mean of a bag: `[E, N, L, d]` with `[E, N, L]` → `[E, N, d]`.
fn bag_mean(rows: Tensor<4>, mask: Tensor<3>) -> Tensor<3> {
    let [e, n, l] = mask.dims();
    let mask = mask.reshape([e, n, l, 1]);
    let count = mask.clone().sum_dim(2).clamp_min(1.0);
    (rows * mask).sum_dim(2).div(count).squeeze_dim::<3>(2)
}

fn lookup2(table: &Embedding, ids: Tensor<2, Int>) -> Tensor<3> {
    table.forward(ids)
}

fn lookup3(table: &Embedding, ids: Tensor<3, Int>) -> Tensor<4> {
    let [e, n, l] = ids.dims();
    let d = table.weight.dims()[1];
    table.forward(ids.reshape([e, n * l])).reshape([e, n, l, d])
}

impl ItemTower {
    /// The rows of items `ids` (`[E, N]`, model ids, 0 = padding).
    pub fn rows(&self, ids: Tensor<2, Int>, catalog: &CatalogTensors) -> ItemRows {
        let [e, n] = ids.dims();
        let flat = ids.clone().reshape([e * n]);
        let column = |c: &Tensor<1, Int>| c.clone().select(0, flat.clone()).reshape([e, n]);
        let bag = |c: &Tensor<2, Int>| {
            let l = c.dims()[1];
            c.clone().select(0, flat.clone()).reshape([e, n, l])
        };
        let mask = |m: &Tensor<2>| {
            let l = m.dims()[1];
            m.clone().select(0, flat.clone()).reshape([e, n, l])
        };
        let indices = ItemIndices {
            id: ids,
            category: column(&catalog.category),
            brand: column(&catalog.brand),
            price_band: column(&catalog.price_band),
            title: bag(&catalog.title),
            genre: bag(&catalog.genre),
        };
        ItemRows {
            id: lookup2(&self.id, indices.id.clone()),
            category: lookup2(&self.category, indices.category.clone()),
            brand: lookup2(&self.brand, indices.brand.clone()),
            price_band: lookup2(&self.price_band, indices.price_band.clone()),
            title: lookup3(&self.token, indices.title.clone()),
            title_mask: mask(&catalog.title_mask),
            genre: lookup3(&self.genre, indices.genre.clone()),
            genre_mask: mask(&catalog.genre_mask),
            indices,
        }
    }

    /// Vectors of items `ids` (`[E, N]`).
    pub fn vectors(&self, ids: Tensor<2, Int>, catalog: &CatalogTensors) -> ItemVectors {
        self.rows(ids, catalog).vectors()
    }

    /// ID vectors of items `ids` (`[E, N]`) with a zero content vector: what a model that reads
    /// items by ID alone needs, without touching (or, in training, tracking) the content tables.
    pub fn id_vectors(&self, ids: Tensor<2, Int>) -> ItemVectors {
        let id = lookup2(&self.id, ids);
        ItemVectors {
            content: Tensor::zeros(id.dims(), &id.device()),
            id,
        }
    }
}

impl ItemRows {
    /// ID vector and content vector: category + brand + price band + mean title token + mean
    /// genre.
    pub fn vectors(&self) -> ItemVectors {
        ItemVectors {
            id: self.id.clone(),
            content: self.category.clone()
                + self.brand.clone()
                + self.price_band.clone()
                + bag_mean(self.title.clone(), self.title_mask.clone())
                + bag_mean(self.genre.clone(), self.genre_mask.clone()),
        }
    }
}
