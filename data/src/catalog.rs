//! Items and their content features: category tree, brand, price band, title tokens, and the
//! MovieLens-style genres and release year.
//!
//! Every categorical feature is an index into a [`Vocabulary`] whose index 0 is [`UNKNOWN`].
//! Missing values are therefore ordinary indices the model can learn an embedding for, instead
//! of `Option`s that every consumer would have to special-case; the quality report counts them
//! so the mapping is never silent.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// Index of "missing" in every vocabulary (category, brand, title token, genre).
pub const UNKNOWN: u32 = 0;
/// The name stored at [`UNKNOWN`]; reading it back from a file maps to [`UNKNOWN`] again.
pub const UNKNOWN_NAME: &str = "<unknown>";
/// Price band of an item without a price.
pub const UNKNOWN_PRICE_BAND: u8 = 0;
/// Quintiles: coarse enough that every band has many items even in small catalogs.
pub const DEFAULT_PRICE_BANDS: u8 = 5;

/// Interned names with [`UNKNOWN`] reserved at index 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vocabulary {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Default for Vocabulary {
    fn default() -> Self {
        Vocabulary::new()
    }
}

impl Vocabulary {
    pub fn new() -> Self {
        Vocabulary {
            names: vec![UNKNOWN_NAME.to_owned()],
            index: HashMap::from([(UNKNOWN_NAME.to_owned(), UNKNOWN)]),
        }
    }

    /// The index of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> Result<u32> {
        if let Some(&id) = self.index.get(name) {
            return Ok(id);
        }
        let id = u32::try_from(self.names.len()).map_err(|_| DataError::Overflow {
            what: "names in a vocabulary",
            max: u32::MAX.into(),
        })?;
        self.names.push(name.to_owned());
        self.index.insert(name.to_owned(), id);
        Ok(id)
    }

    pub fn get(&self, name: &str) -> Option<u32> {
        self.index.get(name).copied()
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    /// Number of entries including [`UNKNOWN`]: the embedding table size.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Never true: [`UNKNOWN`] is always present.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// External string ids to dense `u32` ids in first-seen order (no reserved entry: every dense
/// id is a real shopper or item).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IdMap {
    external: Vec<String>,
    dense: HashMap<String, u32>,
}

impl IdMap {
    pub fn new() -> Self {
        IdMap::default()
    }

    /// Adds `external` and returns its new dense id, or `None` if it is already present.
    pub fn insert_new(&mut self, external: &str) -> Result<Option<u32>> {
        if self.dense.contains_key(external) {
            return Ok(None);
        }
        let id = u32::try_from(self.external.len()).map_err(|_| DataError::Overflow {
            what: "ids",
            max: u32::MAX.into(),
        })?;
        self.external.push(external.to_owned());
        self.dense.insert(external.to_owned(), id);
        Ok(Some(id))
    }

    /// The dense id of `external`, adding it if new.
    pub fn get_or_insert(&mut self, external: &str) -> Result<u32> {
        match self.dense.get(external) {
            Some(&id) => Ok(id),
            None => Ok(self.insert_new(external)?.unwrap_or_default()),
        }
    }

    pub fn get(&self, external: &str) -> Option<u32> {
        self.dense.get(external).copied()
    }

    pub fn external(&self, id: u32) -> Option<&str> {
        self.external.get(id as usize).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.external.len()
    }

    pub fn is_empty(&self) -> bool {
        self.external.is_empty()
    }
}

/// Categories as full `/`-separated paths, each knowing its parent, so a model can embed the
/// leaf and its top-level category and share strength between sibling subcategories.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryTree {
    paths: Vocabulary,
    /// `parent[c]` for every category; `None` for top-level categories and for [`UNKNOWN`].
    parent: Vec<Option<u32>>,
}

impl Default for CategoryTree {
    fn default() -> Self {
        CategoryTree::new()
    }
}

impl CategoryTree {
    pub fn new() -> Self {
        CategoryTree {
            paths: Vocabulary::new(),
            parent: vec![None],
        }
    }

    /// Interns a path such as `Electronics / Phones` and all its ancestors; returns the leaf.
    /// Segments are trimmed and empty ones skipped, so an empty path is [`UNKNOWN`].
    pub fn intern_path(&mut self, path: &str) -> Result<u32> {
        let mut full = String::new();
        let mut current: Option<u32> = None;
        for segment in path.split('/').map(str::trim).filter(|s| !s.is_empty()) {
            if !full.is_empty() {
                full.push('/');
            }
            full.push_str(segment);
            if full == UNKNOWN_NAME {
                return Ok(UNKNOWN);
            }
            let id = self.paths.intern(&full)?;
            if id as usize == self.parent.len() {
                self.parent.push(current);
            }
            current = Some(id);
        }
        Ok(current.unwrap_or(UNKNOWN))
    }

    pub fn get(&self, path: &str) -> Option<u32> {
        self.paths.get(path)
    }

    /// The full path, e.g. `electronics/phones`.
    pub fn path(&self, id: u32) -> Option<&str> {
        self.paths.name(id)
    }

    pub fn parent(&self, id: u32) -> Option<u32> {
        self.parent.get(id as usize).copied().flatten()
    }

    /// The top-level ancestor (itself for a top-level category, [`UNKNOWN`] for unknown).
    pub fn top_level(&self, mut id: u32) -> u32 {
        while let Some(parent) = self.parent(id) {
            id = parent;
        }
        id
    }

    /// 0 for [`UNKNOWN`], 1 for top-level categories, 2 for their children...
    pub fn depth(&self, mut id: u32) -> usize {
        if id == UNKNOWN {
            return 0;
        }
        let mut depth = 1;
        while let Some(parent) = self.parent(id) {
            id = parent;
            depth += 1;
        }
        depth
    }

    /// Number of categories at every level, including [`UNKNOWN`].
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// Content features of one item. Missing values are [`UNKNOWN`] / `None` / band 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Deepest category of the item's path in [`Catalog::categories`].
    pub category: u32,
    pub brand: u32,
    pub price: Option<f32>,
    /// 1..=bands by price quantile, [`UNKNOWN_PRICE_BAND`] without a price; set by
    /// [`Catalog::compute_price_bands`].
    pub price_band: u8,
    /// Title tokens in order; `[UNKNOWN]` when the title is missing, so a bag-of-tokens model
    /// never sees an empty bag.
    pub title: Vec<u32>,
    /// Multi-hot genre indices into [`Catalog::genres`] (MovieLens); empty when the source has none.
    pub genres: Vec<u32>,
    pub year: Option<u16>,
}

impl Default for Item {
    fn default() -> Self {
        Item {
            category: UNKNOWN,
            brand: UNKNOWN,
            price: None,
            price_band: UNKNOWN_PRICE_BAND,
            title: vec![UNKNOWN],
            genres: Vec::new(),
            year: None,
        }
    }
}

/// All items, indexed by dense item id, with the vocabularies their features index into.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    pub ids: IdMap,
    pub items: Vec<Item>,
    pub categories: CategoryTree,
    pub brands: Vocabulary,
    pub tokens: Vocabulary,
    pub genres: Vocabulary,
    /// Lower edges of price bands 2..=bands, so items added later can be banded the same way.
    pub price_band_edges: Vec<f32>,
}

impl Catalog {
    pub fn new() -> Self {
        Catalog::default()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Adds a new item; `Ok(None)` if `external_id` is already in the catalog.
    pub fn insert(&mut self, external_id: &str, item: Item) -> Result<Option<u32>> {
        let id = self.ids.insert_new(external_id)?;
        if id.is_some() {
            self.items.push(item);
        }
        Ok(id)
    }

    /// The dense id of an item, adding it with every feature unknown if the catalog lacks it
    /// (events for items missing from the catalog are kept, not dropped).
    pub fn get_or_insert_unknown(&mut self, external_id: &str) -> Result<(u32, bool)> {
        match self.ids.get(external_id) {
            Some(id) => Ok((id, false)),
            None => Ok((self.insert(external_id, Item::default())?.unwrap_or_default(), true)),
        }
    }

    pub fn item_id(&self, external_id: &str) -> Option<u32> {
        self.ids.get(external_id)
    }

    pub fn external_id(&self, item: u32) -> Option<&str> {
        self.ids.external(item)
    }

    /// Tokenizes and interns a title; `[UNKNOWN]` if it has no word.
    pub fn intern_title(&mut self, title: &str) -> Result<Vec<u32>> {
        let tokens = tokenize(title)
            .map(|token| self.tokens.intern(&token))
            .collect::<Result<Vec<_>>>()?;
        Ok(if tokens.is_empty() { vec![UNKNOWN] } else { tokens })
    }

    /// The title as its tokens joined by spaces (empty for an unknown title).
    pub fn title_text(&self, item: u32) -> String {
        let Some(item) = self.items.get(item as usize) else {
            return String::new();
        };
        let words: Vec<&str> = item
            .title
            .iter()
            .filter(|&&t| t != UNKNOWN)
            .filter_map(|&t| self.tokens.name(t))
            .collect();
        words.join(" ")
    }

    /// Recomputes every item's price band from quantiles of the known prices: band `b` holds
    /// roughly the `b`-th `1/bands` of items by price. Quantiles rather than fixed price
    /// ranges because price scales differ by orders of magnitude between shops.
    pub fn compute_price_bands(&mut self, bands: u8) {
        let bands = bands.max(1);
        let mut known: Vec<f32> = self.items.iter().filter_map(|item| item.price).collect();
        known.sort_by(f32::total_cmp);
        self.price_band_edges.clear();
        if !known.is_empty() {
            // Band k+1 starts at the ceil(k·n/bands)-th cheapest price; ties share a band, and
            // a catalog with fewer prices than bands simply uses fewer bands.
            let (n, bands) = (known.len(), usize::from(bands));
            self.price_band_edges
                .extend((1..bands).filter_map(|k| known.get((k * n).div_ceil(bands)).copied()));
        }
        let edges = std::mem::take(&mut self.price_band_edges);
        for item in &mut self.items {
            item.price_band = band_of(&edges, item.price);
        }
        self.price_band_edges = edges;
    }

    /// The band an item with this price gets under the current edges.
    pub fn price_band_for(&self, price: Option<f32>) -> u8 {
        band_of(&self.price_band_edges, price)
    }
}

fn band_of(edges: &[f32], price: Option<f32>) -> u8 {
    match price {
        None => UNKNOWN_PRICE_BAND,
        Some(price) => {
            let above = edges.iter().filter(|&&edge| price >= edge).count();
            u8::try_from(above + 1).unwrap_or(u8::MAX)
        }
    }
}

/// Lowercased alphanumeric words: the title tokenizer for every source, so the same word in a
/// CSV title and a MovieLens title gets the same token.
pub fn tokenize(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_reserves_unknown_and_interns_once() {
        let mut vocab = Vocabulary::new();
        assert_eq!(vocab.len(), 1);
        assert_eq!(vocab.intern("acme").unwrap(), 1);
        assert_eq!(vocab.intern("zenith").unwrap(), 2);
        assert_eq!(vocab.intern("acme").unwrap(), 1);
        assert_eq!(vocab.intern(UNKNOWN_NAME).unwrap(), UNKNOWN);
        assert_eq!(vocab.name(2), Some("zenith"));
        assert_eq!(vocab.len(), 3);
    }

    #[test]
    fn category_paths_build_a_tree() {
        let mut tree = CategoryTree::new();
        let phones = tree.intern_path(" Electronics / Phones ").unwrap();
        let laptops = tree.intern_path("Electronics/Laptops").unwrap();
        let electronics = tree.get("Electronics").unwrap();
        assert_eq!(tree.path(phones), Some("Electronics/Phones"));
        assert_eq!(tree.parent(phones), Some(electronics));
        assert_eq!(tree.parent(laptops), Some(electronics));
        assert_eq!(tree.parent(electronics), None);
        assert_eq!(tree.top_level(phones), electronics);
        assert_eq!((tree.depth(UNKNOWN), tree.depth(electronics), tree.depth(phones)), (0, 1, 2));
        assert_eq!(tree.intern_path(" / ").unwrap(), UNKNOWN);
        assert_eq!(tree.len(), 4);
    }

    #[test]
    fn tokenizer_lowercases_and_splits_on_punctuation() {
        let tokens: Vec<String> = tokenize("Star Wars: Episode IV (1977), Señor!").collect();
        assert_eq!(tokens, ["star", "wars", "episode", "iv", "1977", "señor"]);
        let mut catalog = Catalog::new();
        assert_eq!(catalog.intern_title(" -- ").unwrap(), vec![UNKNOWN]);
    }

    #[test]
    fn price_bands_are_quantiles_and_unknown_is_zero() {
        let mut catalog = Catalog::new();
        for (i, price) in [Some(10.0), None, Some(1.0), Some(5.0), Some(3.0), Some(100.0)]
            .into_iter()
            .enumerate()
        {
            catalog
                .insert(
                    &i.to_string(),
                    Item {
                        price,
                        ..Item::default()
                    },
                )
                .unwrap();
        }
        catalog.compute_price_bands(5);
        let bands: Vec<u8> = catalog.items.iter().map(|item| item.price_band).collect();
        assert_eq!(bands, [4, 0, 1, 3, 2, 5]);
        assert_eq!(catalog.price_band_edges, [3.0, 5.0, 10.0, 100.0]);
        assert_eq!(catalog.price_band_for(Some(0.5)), 1);
        assert_eq!(catalog.price_band_for(Some(7.0)), 3);
        assert_eq!(catalog.price_band_for(None), 0);
    }

    #[test]
    fn duplicate_item_ids_are_refused_and_missing_items_get_unknown_features() {
        let mut catalog = Catalog::new();
        assert_eq!(catalog.insert("a", Item::default()).unwrap(), Some(0));
        assert_eq!(catalog.insert("a", Item::default()).unwrap(), None);
        assert_eq!(catalog.get_or_insert_unknown("b").unwrap(), (1, true));
        assert_eq!(catalog.get_or_insert_unknown("a").unwrap(), (0, false));
        assert_eq!(catalog.items[1], Item::default());
        assert_eq!(catalog.external_id(1), Some("b"));
    }
}
