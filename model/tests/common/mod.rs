//! The tiny catalog and shopper walks the model's integration tests train on.

use fedfuse_model::catalog::ItemFeatures;

pub const ITEMS: usize = 8;

pub fn features() -> ItemFeatures {
    ItemFeatures {
        category: vec![1, 1, 2, 2, 3, 3, 1, 2],
        brand: vec![1, 2, 1, 2, 1, 2, 3, 3],
        price_band: vec![1, 2, 3, 4, 5, 1, 2, 3],
        title: vec![
            vec![1, 2],
            vec![2, 3],
            vec![3],
            vec![4, 5],
            vec![5],
            vec![6, 1],
            vec![],
            vec![7],
        ],
        genres: vec![vec![]; ITEMS],
    }
}

/// Shoppers walk the catalog in order (after item i comes i+1, wrapping): a sequential
/// pattern only a model that learns can rank.
pub fn walks() -> Vec<Vec<u32>> {
    (0..ITEMS as u32)
        .map(|s| (0..10).map(|k| (s + k) % ITEMS as u32).collect())
        .collect()
}
