//! The catalog's content features as tensors, indexed by item id (row 0 is padding).

use burn::tensor::{Device, Int, Tensor, TensorData};
use fedfuse_data::catalog::Catalog;

/// Vocabulary sizes the item tower's embeddings are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vocabulary {
    /// Items including the padding row 0.
    pub items: usize,
    pub categories: usize,
    pub brands: usize,
    pub price_bands: usize,
    pub tokens: usize,
    pub genres: usize,
    /// Title tokens (and genres) kept per item.
    pub title_len: usize,
}

/// Content features on a device: `[items]` ids for category, brand and price band, and
/// `[items, title_len]` title tokens with a float mask.
#[derive(Debug, Clone)]
pub struct CatalogTensors {
    pub vocabulary: Vocabulary,
    pub category: Tensor<1, Int>,
    pub brand: Tensor<1, Int>,
    pub price_band: Tensor<1, Int>,
    pub title: Tensor<2, Int>,
    pub title_mask: Tensor<2>,
    pub genre: Tensor<2, Int>,
    pub genre_mask: Tensor<2>,
}

impl CatalogTensors {
    /// Every item of the catalog, model ids 1..=n, as `[1, n]` (the candidates of full ranking).
    pub fn item_ids(&self) -> Tensor<2, Int> {
        let n = self.vocabulary.items - 1;
        Tensor::<1, Int>::arange(1..n as i64 + 1, &self.category.device()).reshape([1, n])
    }
}

/// Plain per-item features (item ids 1..=n map to catalog rows 0..n-1).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemFeatures {
    pub category: Vec<u32>,
    pub brand: Vec<u32>,
    pub price_band: Vec<u32>,
    pub title: Vec<Vec<u32>>,
    /// Multi-hot genres (MovieLens), a second bag of content tokens.
    pub genres: Vec<Vec<u32>>,
}

impl ItemFeatures {
    pub fn from_catalog(catalog: &Catalog) -> Self {
        let items = &catalog.items;
        Self {
            category: items.iter().map(|i| i.category).collect(),
            brand: items.iter().map(|i| i.brand).collect(),
            price_band: items.iter().map(|i| u32::from(i.price_band)).collect(),
            title: items.iter().map(|i| i.title.clone()).collect(),
            genres: items.iter().map(|i| i.genres.clone()).collect(),
        }
    }

    pub fn vocabulary(&self, title_len: usize) -> Vocabulary {
        let max = |v: &[u32]| v.iter().copied().max().unwrap_or(0) as usize + 1;
        Vocabulary {
            items: self.category.len() + 1,
            categories: max(&self.category),
            brands: max(&self.brand),
            price_bands: max(&self.price_band),
            tokens: self.title.iter().flatten().copied().max().unwrap_or(0) as usize + 1,
            genres: self.genres.iter().flatten().copied().max().unwrap_or(0) as usize + 1,
            title_len,
        }
    }

    /// The features as tensors; row 0 (padding) is all zeros with an empty title.
    pub fn to_tensors(&self, vocabulary: Vocabulary, device: &Device) -> CatalogTensors {
        let n = self.category.len() + 1;
        let column = |v: &[u32]| {
            let data: Vec<i64> = std::iter::once(0).chain(v.iter().map(|x| i64::from(*x))).collect();
            Tensor::<1, Int>::from_data(TensorData::new(data, [n]), device)
        };
        let l = vocabulary.title_len.max(1);
        let bag = |rows: &[Vec<u32>]| {
            let mut ids = vec![0i64; n * l];
            let mut mask = vec![0f32; n * l];
            for (i, tokens) in rows.iter().enumerate() {
                for (j, t) in tokens.iter().take(l).enumerate() {
                    ids[(i + 1) * l + j] = i64::from(*t);
                    mask[(i + 1) * l + j] = 1.0;
                }
            }
            (
                Tensor::<2, Int>::from_data(TensorData::new(ids, [n, l]), device),
                Tensor::<2>::from_data(TensorData::new(mask, [n, l]), device),
            )
        };
        let (title, title_mask) = bag(&self.title);
        let (genre, genre_mask) = bag(&self.genres);
        CatalogTensors {
            vocabulary,
            category: column(&self.category),
            brand: column(&self.brand),
            price_band: column(&self.price_band),
            title,
            title_mask,
            genre,
            genre_mask,
        }
    }
}
