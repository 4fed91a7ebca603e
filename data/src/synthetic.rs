//! A deterministic synthetic e-commerce data set, for tests, benchmarks and federated runs
//! that must not depend on a download.
//!
//! The generator is a small causal story, so that a recommender has the same kinds of signal
//! to find as in a real shop, each with a knob in [`SyntheticConfig`]:
//!
//! - **Catalog**: a two-level category tree (12 top categories × 4 subcategories by default),
//!   brands belonging to one top category each with long-tailed brand shares, log-normal
//!   prices per subcategory shifted by a per-brand premium, titles made of the brand's
//!   token, the subcategory's name and words from per-subcategory and per-top-category token
//!   vocabularies. A small share of features is hidden (unknown) as in real catalogs; the
//!   generator still uses the true values, so unknowns are noise, not signal.
//! - **Popularity**: Zipf-like over a random ranking of items, so a few items dominate.
//! - **Stores**: regions of unequal size, each over-representing a few top categories and a
//!   few brands (the non-IID skew federated learning has to cope with). Every shopper belongs
//!   to one store.
//! - **Shoppers**: activity is log-normal (a few heavy shoppers); tastes are a Dirichlet(1)
//!   mixture over three top categories drawn with the store's skew, plus two preferred brands.
//! - **Sessions**: the first item comes from the tastes × popularity; each next item is, with
//!   the configured probabilities, a fixed co-viewed neighbour of the previous one, another
//!   item of the same subcategory, an item of a complementary subcategory, or a fresh draw.
//!   Timestamps increase within a session (seconds) and across sessions (days).
//! - **Funnel**: every visited item is viewed; views are clicked, clicked items carted and
//!   carted items bought at the session's checkout with the configured rates, so views >
//!   clicks > carts > purchases.
//!
//! Generation is O(events · log items) with a handful of lookup tables built once, and the
//! output is identical for identical configurations on every platform (ChaCha8 from the seed,
//! no hash-map iteration order involved).

use std::ops::Range;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, DEFAULT_PRICE_BANDS, Item, UNKNOWN};
use crate::dataset::{Dataset, ShopperInfo};
use crate::error::{DataError, Result};
use crate::interactions::{EventKind, Interaction};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyntheticConfig {
    pub seed: u64,
    pub shoppers: u32,
    pub items: u32,
    pub stores: u16,
    /// Exact number of events generated.
    pub events: u64,
    pub top_categories: u32,
    pub subcategories_per_top: u32,
    pub brands_per_top: u32,
    /// Item popularity ∝ 1 / rank^exponent.
    pub popularity_exponent: f64,
    /// Every shopper gets at least this many events, so almost all are evaluable.
    pub min_events_per_shopper: u32,
    /// σ of the log-normal shopper activity.
    pub activity_sigma: f64,
    /// Mean number of items visited per session (geometric).
    pub mean_session_items: f64,
    /// Next item: a fixed co-viewed neighbour of the previous item.
    pub neighbour_prob: f64,
    /// Next item: another item of the previous item's subcategory.
    pub same_subcategory_prob: f64,
    /// Next item: an item of the subcategory that complements the previous one's.
    pub complement_prob: f64,
    /// Share of fresh draws from global popularity instead of the shopper's tastes.
    pub exploration: f64,
    /// Chance a fresh draw comes from one of the shopper's preferred brands.
    pub brand_loyalty: f64,
    pub click_rate: f64,
    /// Chance a clicked item is carted.
    pub cart_rate: f64,
    /// Chance a carted item is bought at checkout.
    pub purchase_rate: f64,
    /// Weight multiplier of a store's favoured categories when shoppers' tastes are drawn
    /// (1 = no regional skew).
    pub store_skew: f64,
    pub favoured_categories_per_store: u32,
    /// Share of shoppers' preferred brands drawn from their store's three favoured brands
    /// (0 = no regional brand skew).
    pub store_brand_share: f64,
    /// Share of items whose brand, price, title or category is hidden from the catalog.
    pub missing_rate: f64,
    /// Unix time of the first possible event (2024-01-01 by default).
    pub start_timestamp: i64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 42,
            shoppers: 20_000,
            items: 5_000,
            stores: 11,
            events: 500_000,
            top_categories: 12,
            subcategories_per_top: 4,
            brands_per_top: 8,
            popularity_exponent: 1.0,
            min_events_per_shopper: 5,
            activity_sigma: 1.0,
            mean_session_items: 5.0,
            neighbour_prob: 0.25,
            same_subcategory_prob: 0.35,
            complement_prob: 0.08,
            exploration: 0.1,
            brand_loyalty: 0.25,
            click_rate: 0.35,
            cart_rate: 0.3,
            purchase_rate: 0.5,
            store_skew: 5.0,
            favoured_categories_per_store: 2,
            store_brand_share: 0.5,
            missing_rate: 0.02,
            start_timestamp: 1_704_067_200,
        }
    }
}

impl SyntheticConfig {
    fn check(&self) -> Result<()> {
        let fail = |message: String| Err(DataError::Config(message));
        if self.shoppers == 0 || self.items == 0 || self.stores == 0 {
            return fail("shoppers, items and stores must be positive".into());
        }
        if self.top_categories == 0 || self.subcategories_per_top == 0 || self.brands_per_top == 0 {
            return fail("top_categories, subcategories_per_top and brands_per_top must be positive".into());
        }
        if self
            .top_categories
            .checked_mul(self.subcategories_per_top.max(self.brands_per_top))
            .is_none()
        {
            return fail("too many categories or brands".into());
        }
        let minimum = u64::from(self.shoppers) * u64::from(self.min_events_per_shopper);
        if self.events < minimum {
            return fail(format!(
                "{} events cannot give {} shoppers {} events each",
                self.events, self.shoppers, self.min_events_per_shopper
            ));
        }
        let probabilities = [
            ("neighbour_prob", self.neighbour_prob),
            ("same_subcategory_prob", self.same_subcategory_prob),
            ("complement_prob", self.complement_prob),
            ("exploration", self.exploration),
            ("brand_loyalty", self.brand_loyalty),
            ("click_rate", self.click_rate),
            ("cart_rate", self.cart_rate),
            ("purchase_rate", self.purchase_rate),
            ("missing_rate", self.missing_rate),
            ("store_brand_share", self.store_brand_share),
        ];
        if let Some((name, p)) = probabilities.iter().find(|(_, p)| !(0.0..=1.0).contains(p)) {
            return fail(format!("{name} = {p} is not a probability"));
        }
        if self.neighbour_prob + self.same_subcategory_prob + self.complement_prob > 1.0 {
            return fail("neighbour_prob + same_subcategory_prob + complement_prob exceeds 1".into());
        }
        let positive = [
            ("popularity_exponent", self.popularity_exponent, 0.0),
            ("activity_sigma", self.activity_sigma, 0.0),
            ("store_skew", self.store_skew, 0.0),
            ("mean_session_items", self.mean_session_items, 1.0),
        ];
        if let Some((name, value, min)) = positive.iter().find(|(_, v, min)| !v.is_finite() || v < min) {
            return fail(format!("{name} = {value} must be finite and at least {min}"));
        }
        Ok(())
    }
}

const TOP_CATEGORIES: [(&str, [&str; 4]); 12] = [
    ("electronics", ["phones", "laptops", "audio", "cameras"]),
    ("home", ["furniture", "lighting", "bedding", "decor"]),
    ("kitchen", ["cookware", "appliances", "tableware", "storage"]),
    ("fashion", ["shoes", "tops", "trousers", "accessories"]),
    ("beauty", ["skincare", "makeup", "fragrance", "haircare"]),
    ("sports", ["running", "cycling", "fitness", "camping"]),
    ("toys", ["puzzles", "dolls", "bricks", "boardgames"]),
    ("books", ["fiction", "science", "childrens", "cookbooks"]),
    ("grocery", ["coffee", "snacks", "pasta", "drinks"]),
    ("garden", ["tools", "plants", "seeds", "watering"]),
    ("automotive", ["tyres", "oils", "parts", "carcare"]),
    ("pets", ["dogfood", "catfood", "grooming", "aquarium"]),
];

const SYLLABLES: [&str; 16] = [
    "ka", "lo", "mi", "ra", "ve", "to", "su", "ne", "bi", "dor", "fa", "gu", "hel", "jo", "pri", "zan",
];

/// Words per subcategory and per top category in the title vocabularies.
const LEAF_WORDS: u32 = 24;
const TOP_WORDS: u32 = 16;

/// A pronounceable word unique to `index`: its base-16 digits as syllables, at least
/// `min_syllables` of them. The syllable set is uniquely decodable, so with one `min_syllables`
/// distinct indices give distinct words; brands and title words share one index sequence.
fn pseudo_word(mut index: u32, min_syllables: usize) -> String {
    let mut digits = Vec::with_capacity(min_syllables + 2);
    while index > 0 || digits.len() < min_syllables {
        digits.push(SYLLABLES[(index % 16) as usize]);
        index /= 16;
    }
    digits.iter().rev().copied().collect()
}

fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    rng.random::<f64>()
}

fn standard_normal(rng: &mut ChaCha8Rng) -> f64 {
    // Box–Muller; 1 - u keeps the logarithm finite.
    let (u, v) = (1.0 - uniform(rng), uniform(rng));
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn exponential(rng: &mut ChaCha8Rng) -> f64 {
    -(1.0 - uniform(rng)).ln()
}

/// Index drawn with probability proportional to `weights` (linear; for short lists).
fn weighted_index(rng: &mut ChaCha8Rng, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut x = uniform(rng) * total;
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

/// Items in some grouping order with the running sum of their popularity, so an item of any
/// contiguous group can be drawn ∝ popularity with one binary search.
struct Sampler {
    order: Vec<u32>,
    cumulative: Vec<f64>,
}

impl Sampler {
    /// The sampler and each group's range in it (groups numbered densely from 0).
    fn new(
        mut order: Vec<u32>,
        groups: usize,
        group_of: impl Fn(u32) -> u32,
        popularity: &[f64],
    ) -> (Sampler, Vec<Range<usize>>) {
        order.sort_by_key(|&item| (group_of(item), item));
        let mut total = 0.0;
        let cumulative = order
            .iter()
            .map(|&item| {
                total += popularity[item as usize];
                total
            })
            .collect();
        let mut ranges: Vec<Range<usize>> = Vec::new();
        for (at, &item) in order.iter().enumerate() {
            let group = group_of(item) as usize;
            if ranges.len() <= group {
                ranges.resize(group + 1, at..at);
            }
            ranges[group].end = at + 1;
        }
        ranges.resize(groups, order.len()..order.len());
        (Sampler { order, cumulative }, ranges)
    }

    /// Total popularity of a group.
    fn weight(&self, range: &Range<usize>) -> f64 {
        if range.is_empty() {
            return 0.0;
        }
        let low = if range.start == 0 {
            0.0
        } else {
            self.cumulative[range.start - 1]
        };
        self.cumulative[range.end - 1] - low
    }

    fn draw(&self, rng: &mut ChaCha8Rng, range: &Range<usize>) -> Option<u32> {
        if range.is_empty() {
            return None;
        }
        let low = if range.start == 0 {
            0.0
        } else {
            self.cumulative[range.start - 1]
        };
        let high = self.cumulative[range.end - 1];
        let x = low + uniform(rng) * (high - low);
        let at = range.start + self.cumulative[range.clone()].partition_point(|&c| c <= x);
        Some(self.order[at.min(range.end - 1)])
    }
}

/// Generates the data set described by `config`; an error only for an inconsistent config.
pub fn generate(config: &SyntheticConfig) -> Result<Dataset> {
    config.check()?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (world, catalog) = World::build(config, &mut rng)?;
    let mut dataset = Dataset {
        interactions: Vec::with_capacity(usize::try_from(config.events).unwrap_or(0)),
        catalog,
        shoppers: Vec::with_capacity(config.shoppers as usize),
        stores: (0..config.stores).map(|s| format!("store-{s:02}")).collect(),
        ..Dataset::default()
    };
    world.shop(config, &mut rng, &mut dataset);
    dataset.cleaning.rows_read = dataset.interactions.len() as u64;
    dataset.cleaning.catalog_rows_read = dataset.catalog.len() as u64;
    debug_assert!(dataset.interactions.is_sorted_by_key(Interaction::sort_key));
    Ok(dataset)
}

/// The hidden truth behind the catalog and the lookup tables sessions draw from.
struct World {
    /// Subcategory (0..tops·subs, numbered top by top) of each item.
    leaf: Vec<u32>,
    neighbours: Vec<[u32; 2]>,
    /// The complementary subcategory of each subcategory.
    complement: Vec<u32>,
    by_leaf: Sampler,
    leaf_ranges: Vec<Range<usize>>,
    top_ranges: Vec<Range<usize>>,
    by_brand: Sampler,
    brand_ranges: Vec<Range<usize>>,
    /// Popularity mass per top category and per brand: tastes are drawn relative to it.
    top_weight: Vec<f64>,
    brand_weight: Vec<f64>,
}

/// One shopper's fixed preferences.
struct Taste {
    tops: [usize; 3],
    mix: [f64; 3],
    len: usize,
    brands: [u32; 2],
}

impl World {
    fn build(config: &SyntheticConfig, rng: &mut ChaCha8Rng) -> Result<(World, Catalog)> {
        let tops = config.top_categories;
        let subs = config.subcategories_per_top;
        let leaves = tops * subs;
        let brands_per_top = config.brands_per_top;
        let mut catalog = Catalog::new();

        let mut leaf_category = Vec::with_capacity(leaves as usize);
        let mut leaf_noun = Vec::with_capacity(leaves as usize);
        let mut top_nouns = Vec::with_capacity(tops as usize);
        for top in 0..tops {
            let known = TOP_CATEGORIES.get(top as usize);
            let top_name = known.map_or(format!("category{top}"), |(name, _)| (*name).to_owned());
            for sub in 0..subs {
                let sub_name = known
                    .and_then(|(_, s)| s.get(sub as usize))
                    .map_or(format!("{top_name}{sub}"), |s| (*s).to_owned());
                leaf_category.push(catalog.categories.intern_path(&format!("{top_name}/{sub_name}"))?);
                leaf_noun.push(catalog.tokens.intern(&sub_name)?);
            }
            top_nouns.push(catalog.tokens.intern(&top_name)?);
        }
        // Brands take words 0..num_brands, then subcategory words, then top-category words.
        let num_brands = tops * brands_per_top;
        let leaf_vocab = (0..leaves * LEAF_WORDS)
            .map(|index| catalog.tokens.intern(&pseudo_word(num_brands + index, 2)))
            .collect::<Result<Vec<u32>>>()?;
        let top_vocab = (0..tops * TOP_WORDS)
            .map(|index| {
                catalog
                    .tokens
                    .intern(&pseudo_word(num_brands + leaves * LEAF_WORDS + index, 2))
            })
            .collect::<Result<Vec<u32>>>()?;

        // Brands: `brands_per_top` per top category, long-tailed shares, a price premium each.
        let mut brand_ids = Vec::with_capacity(num_brands as usize);
        let mut brand_tokens = Vec::with_capacity(num_brands as usize);
        let mut brand_premium = Vec::with_capacity(num_brands as usize);
        for brand in 0..num_brands {
            let name = pseudo_word(brand, 2);
            let mut display = name.clone();
            display[..1].make_ascii_uppercase();
            brand_ids.push(catalog.brands.intern(&display)?);
            brand_tokens.push(catalog.tokens.intern(&name)?);
            brand_premium.push(0.4 * standard_normal(rng));
        }
        let brand_share: Vec<f64> = (0..brands_per_top).map(|b| 1.0 / f64::from(b + 1).powf(0.8)).collect();

        // Subcategory sizes and log-price levels.
        let leaf_size: Vec<f64> = (0..leaves).map(|_| (0.5 * standard_normal(rng)).exp()).collect();
        let top_price: Vec<f64> = (0..tops)
            .map(|_| 3.0_f64.ln() + uniform(rng) * (400.0_f64 / 3.0).ln())
            .collect();
        let leaf_price: Vec<f64> = (0..leaves)
            .map(|leaf| top_price[(leaf / subs) as usize] + 0.3 * standard_normal(rng))
            .collect();

        let n = config.items;
        let mut leaf = Vec::with_capacity(n as usize);
        let mut brand = Vec::with_capacity(n as usize);
        for item in 0..n {
            // The first `leaves` items cover every subcategory once, so none is empty.
            let l = if item < leaves {
                item
            } else {
                weighted_index(rng, &leaf_size) as u32
            };
            let top = l / subs;
            let b = top * brands_per_top + weighted_index(rng, &brand_share) as u32;
            let price = (leaf_price[l as usize] + brand_premium[b as usize] + 0.35 * standard_normal(rng)).exp();
            let price = ((price * 100.0).round() / 100.0).max(0.01) as f32;
            let mut title = vec![brand_tokens[b as usize], leaf_noun[l as usize]];
            for _ in 0..rng.random_range(2..5) {
                // Squaring a uniform favours the first words: vocabularies are long-tailed too.
                let k = (uniform(rng).powi(2) * f64::from(LEAF_WORDS)) as u32;
                title.push(leaf_vocab[(l * LEAF_WORDS + k) as usize]);
            }
            if rng.random_bool(0.5) {
                title.push(top_vocab[(top * TOP_WORDS + rng.random_range(0..TOP_WORDS)) as usize]);
            }
            title.push(top_nouns[top as usize]);
            let mut hidden = |share: f64| rng.random_bool(config.missing_rate * share);
            let catalog_item = Item {
                category: if hidden(0.25) { UNKNOWN } else { leaf_category[l as usize] },
                brand: if hidden(1.0) { UNKNOWN } else { brand_ids[b as usize] },
                price: if hidden(1.0) { None } else { Some(price) },
                title: if hidden(0.5) { vec![UNKNOWN] } else { title },
                ..Item::default()
            };
            catalog.insert(&format!("i{item:05}"), catalog_item)?;
            leaf.push(l);
            brand.push(b);
        }
        catalog.compute_price_bands(DEFAULT_PRICE_BANDS);

        // Zipf popularity over a random ranking (Fisher–Yates).
        let mut rank: Vec<u32> = (0..n).collect();
        for i in (1..rank.len()).rev() {
            rank.swap(i, rng.random_range(0..=i));
        }
        let popularity: Vec<f64> = rank
            .iter()
            .map(|&r| 1.0 / f64::from(r + 1).powf(config.popularity_exponent))
            .collect();

        let (by_leaf, leaf_ranges) = Sampler::new((0..n).collect(), leaves as usize, |item| leaf[item as usize], &popularity);
        let subs_us = subs as usize;
        let top_ranges: Vec<Range<usize>> = (0..tops as usize)
            .map(|t| leaf_ranges[t * subs_us].start..leaf_ranges[(t + 1) * subs_us - 1].end)
            .collect();
        let (by_brand, brand_ranges) = Sampler::new(
            (0..n).collect(),
            num_brands as usize,
            |item| brand[item as usize],
            &popularity,
        );

        // Co-viewed neighbours: two fixed items of the same subcategory.
        let neighbours = (0..n)
            .map(|item| {
                let range = &leaf_ranges[leaf[item as usize] as usize];
                std::array::from_fn(|_| by_leaf.order[range.start + rng.random_range(0..range.len())])
            })
            .collect();
        // Complements: a subcategory of another top category (phones -> audio, pasta -> cookware).
        let complement = (0..leaves)
            .map(|l| {
                let top = l / subs;
                let other = if tops > 1 {
                    (top + 1 + rng.random_range(0..tops - 1)) % tops
                } else {
                    top
                };
                other * subs + rng.random_range(0..subs)
            })
            .collect();
        let top_weight = top_ranges.iter().map(|r| by_leaf.weight(r)).collect();
        let brand_weight = brand_ranges.iter().map(|r| by_brand.weight(r)).collect();
        let world = World {
            leaf,
            neighbours,
            complement,
            by_leaf,
            leaf_ranges,
            top_ranges,
            by_brand,
            brand_ranges,
            top_weight,
            brand_weight,
        };
        Ok((world, catalog))
    }

    /// Stores, shoppers and their sessions.
    fn shop(&self, config: &SyntheticConfig, rng: &mut ChaCha8Rng, dataset: &mut Dataset) {
        let tops = config.top_categories as usize;
        let stores = usize::from(config.stores);

        // Regions: unequal sizes, a few favoured top categories and brands each.
        let store_size: Vec<f64> = (0..stores).map(|s| 1.0 / ((s + 1) as f64).powf(0.6)).collect();
        let favoured = (config.favoured_categories_per_store as usize).min(tops);
        let store_tops: Vec<Vec<f64>> = (0..stores)
            .map(|_| {
                let mut weights = self.top_weight.clone();
                let mut order: Vec<usize> = (0..tops).collect();
                for i in 0..favoured {
                    order.swap(i, rng.random_range(i..tops));
                    weights[order[i]] *= config.store_skew;
                }
                weights
            })
            .collect();
        let num_brands = self.brand_ranges.len() as u32;
        let store_brands: Vec<[u32; 3]> = (0..stores)
            .map(|_| std::array::from_fn(|_| rng.random_range(0..num_brands)))
            .collect();

        // Activity: the minimum each, the rest shared log-normally; exact total.
        let activity: Vec<f64> = (0..config.shoppers)
            .map(|_| (config.activity_sigma * standard_normal(rng)).exp())
            .collect();
        let total: f64 = activity.iter().sum();
        let minimum = u64::from(config.min_events_per_shopper);
        let extra = config.events - u64::from(config.shoppers) * minimum;
        let mut budgets: Vec<u64> = activity.iter().map(|a| minimum + (extra as f64 * a / total) as u64).collect();
        let leftover = config.events - budgets.iter().sum::<u64>();
        for budget in budgets.iter_mut().take(usize::try_from(leftover).unwrap_or(usize::MAX)) {
            *budget += 1;
        }

        let mut cart: Vec<u32> = Vec::with_capacity(16);
        let mut taste_weights = vec![0.0; tops];
        let continue_prob = 1.0 - 1.0 / config.mean_session_items;
        let brands_per_top = config.brands_per_top as usize;
        for (shopper, &budget) in budgets.iter().enumerate() {
            let store = weighted_index(rng, &store_size);
            dataset.shoppers.push(ShopperInfo {
                external_id: format!("u{shopper:05}"),
                store: store as u16,
                ..ShopperInfo::default()
            });

            // Tastes: up to three top categories drawn with the store's skew, Dirichlet(1) weights.
            taste_weights.copy_from_slice(&store_tops[store]);
            let mut taste = Taste {
                tops: [0; 3],
                mix: [0.0; 3],
                len: tops.min(3),
                brands: [0; 2],
            };
            for slot in 0..taste.len {
                let top = weighted_index(rng, &taste_weights);
                taste_weights[top] = 0.0;
                taste.tops[slot] = top;
                taste.mix[slot] = exponential(rng);
            }
            for slot in 0..2 {
                taste.brands[slot] = if rng.random_bool(config.store_brand_share) {
                    store_brands[store][rng.random_range(0..3)]
                } else {
                    let top = taste.tops[weighted_index(rng, &taste.mix[..taste.len])];
                    let brands = top * brands_per_top..(top + 1) * brands_per_top;
                    (brands.start + weighted_index(rng, &self.brand_weight[brands])) as u32
                };
            }

            let mut session = Session {
                shopper: shopper as u32,
                time: config.start_timestamp + rng.random_range(0..30 * 86_400),
                remaining: budget,
            };
            let mut first = true;
            while session.remaining > 0 {
                if !first {
                    session.time += 600 + (exponential(rng) * 3.0 * 86_400.0) as i64;
                }
                first = false;
                cart.clear();
                let mut item = self.fresh(config, &taste, rng);
                loop {
                    session.emit(rng, &mut dataset.interactions, item, EventKind::View);
                    if rng.random_bool(config.click_rate) {
                        session.emit(rng, &mut dataset.interactions, item, EventKind::Click);
                        if rng.random_bool(config.cart_rate) {
                            session.emit(rng, &mut dataset.interactions, item, EventKind::Cart);
                            cart.push(item);
                        }
                    }
                    if session.remaining == 0 || !rng.random_bool(continue_prob) {
                        break;
                    }
                    item = self.next(config, &taste, item, rng);
                }
                for &bought in &cart {
                    if rng.random_bool(config.purchase_rate) {
                        session.emit(rng, &mut dataset.interactions, bought, EventKind::Purchase);
                    }
                }
            }
        }
    }

    /// A draw from the shopper's tastes × popularity (or, rarely, from everything).
    fn fresh(&self, config: &SyntheticConfig, taste: &Taste, rng: &mut ChaCha8Rng) -> u32 {
        if rng.random_bool(config.exploration) {
            return self.by_leaf.draw(rng, &(0..self.by_leaf.order.len())).unwrap_or(0);
        }
        if rng.random_bool(config.brand_loyalty) {
            let brand = taste.brands[rng.random_range(0..2)] as usize;
            if let Some(item) = self.by_brand.draw(rng, &self.brand_ranges[brand]) {
                return item;
            }
        }
        let top = taste.tops[weighted_index(rng, &taste.mix[..taste.len])];
        self.by_leaf.draw(rng, &self.top_ranges[top]).unwrap_or(0)
    }

    /// The item visited after `item` in a session.
    fn next(&self, config: &SyntheticConfig, taste: &Taste, item: u32, rng: &mut ChaCha8Rng) -> u32 {
        let r = uniform(rng);
        let leaf = self.leaf[item as usize] as usize;
        let same = config.neighbour_prob + config.same_subcategory_prob;
        if r < config.neighbour_prob {
            self.neighbours[item as usize][rng.random_range(0..2)]
        } else if r < same {
            self.by_leaf.draw(rng, &self.leaf_ranges[leaf]).unwrap_or(item)
        } else if r < same + config.complement_prob {
            self.by_leaf
                .draw(rng, &self.leaf_ranges[self.complement[leaf] as usize])
                .unwrap_or(item)
        } else {
            self.fresh(config, taste, rng)
        }
    }
}

/// A shopper's clock and remaining event budget.
struct Session {
    shopper: u32,
    time: i64,
    remaining: u64,
}

impl Session {
    /// Records an event if the budget allows and moves the clock 5 s to 4 min on, so a
    /// shopper's timestamps strictly increase and no two events can be duplicates.
    fn emit(&mut self, rng: &mut ChaCha8Rng, events: &mut Vec<Interaction>, item: u32, kind: EventKind) {
        if self.remaining > 0 {
            events.push(Interaction {
                shopper: self.shopper,
                item,
                timestamp: self.time,
                kind,
                weight: 1.0,
            });
            self.remaining -= 1;
            self.time += rng.random_range(5..240);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn small(seed: u64) -> SyntheticConfig {
        SyntheticConfig {
            seed,
            shoppers: 2_000,
            items: 800,
            events: 40_000,
            ..SyntheticConfig::default()
        }
    }

    /// Total variation distance between each store's top-category distribution of events and
    /// the global one, averaged over stores weighted by events.
    fn regional_skew(dataset: &Dataset) -> f64 {
        let categories = &dataset.catalog.categories;
        let mut counts = vec![vec![0.0; categories.len()]; dataset.stores.len()];
        for event in &dataset.interactions {
            let top = categories.top_level(dataset.catalog.items[event.item as usize].category) as usize;
            counts[usize::from(dataset.shoppers[event.shopper as usize].store)][top] += 1.0;
        }
        let global: Vec<f64> = (0..categories.len())
            .map(|c| counts.iter().map(|store| store[c]).sum())
            .collect();
        let total: f64 = global.iter().sum();
        counts
            .iter()
            .map(|store| {
                let n: f64 = store.iter().sum();
                let tv: f64 = store.iter().zip(&global).map(|(s, g)| (s / n - g / total).abs()).sum::<f64>() / 2.0;
                tv * n / total
            })
            .sum()
    }

    #[test]
    fn default_config_has_the_configured_counts_and_prints_its_time() {
        let config = SyntheticConfig::default();
        let started = Instant::now();
        let dataset = generate(&config).unwrap();
        println!(
            "synthetic default config generated in {:.3} s",
            started.elapsed().as_secs_f64()
        );
        let report = dataset.quality_report();
        println!("{report}");
        assert_eq!(
            (dataset.num_shoppers(), dataset.num_items(), dataset.interactions.len()),
            (20_000, 5_000, 500_000)
        );
        assert_eq!(dataset.stores.len(), 11);
        assert!(
            dataset.store_sizes().iter().all(|&size| size > 500),
            "{:?}",
            dataset.store_sizes()
        );
        assert_eq!(report.shoppers_without_events, 0);
        assert_eq!(report.duplicates_collapsed, 0);
        let ranges = dataset.shopper_ranges();
        assert!(ranges.iter().all(|range| range.len() >= 5));
        for range in &ranges {
            assert!(
                dataset.interactions[range.clone()]
                    .windows(2)
                    .all(|w| w[0].timestamp < w[1].timestamp)
            );
        }
        let [views, clicks, carts, purchases] = report.events_by_kind;
        println!("funnel: {views} views, {clicks} clicks, {carts} carts, {purchases} purchases");
        assert!(views > clicks && clicks > carts && carts > purchases && purchases > 0);
        // Hidden features at about the configured 2%.
        assert!((50..150).contains(&report.unknown_brand), "{}", report.unknown_brand);
        assert!((50..150).contains(&report.unknown_price), "{}", report.unknown_price);
        assert!(report.unknown_category > 0 && report.unknown_category < 60);
    }

    #[test]
    fn same_seed_same_data_other_seed_other_data() {
        let a = generate(&small(7)).unwrap();
        let b = generate(&small(7)).unwrap();
        let c = generate(&small(8)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.interactions, c.interactions);
        assert_ne!(a.catalog.items, c.catalog.items);
        assert_eq!((c.num_shoppers(), c.num_items(), c.interactions.len()), (2_000, 800, 40_000));
    }

    #[test]
    fn popularity_is_long_tailed() {
        let dataset = generate(&SyntheticConfig::default()).unwrap();
        let mut counts = vec![0_u64; dataset.num_items()];
        for event in &dataset.interactions {
            counts[event.item as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top_tenth: u64 = counts[..counts.len() / 10].iter().sum();
        let share = top_tenth as f64 / dataset.interactions.len() as f64;
        println!(
            "top 10% of items get {:.1}% of events; median item {} events",
            share * 100.0,
            counts[counts.len() / 2]
        );
        assert!(share > 0.4, "{share}");
    }

    #[test]
    fn stores_skew_their_category_mix() {
        let skewed = regional_skew(&generate(&SyntheticConfig::default()).unwrap());
        let flat = regional_skew(
            &generate(&SyntheticConfig {
                store_skew: 1.0,
                store_brand_share: 0.0,
                ..SyntheticConfig::default()
            })
            .unwrap(),
        );
        println!("mean store-vs-global total variation of top categories: skewed {skewed:.3}, without skew {flat:.3}");
        assert!(skewed > 0.12, "{skewed}");
        assert!(skewed > 4.0 * flat, "{skewed} vs {flat}");
    }

    #[test]
    fn catalog_has_a_two_level_tree_brands_prices_and_titles() {
        let dataset = generate(&small(5)).unwrap();
        let catalog = &dataset.catalog;
        assert_eq!(catalog.categories.len(), 1 + 12 + 48);
        assert_eq!(catalog.brands.len(), 1 + 12 * 8);
        let phones = catalog.categories.get("electronics/phones").unwrap();
        assert_eq!(
            catalog.categories.path(catalog.categories.top_level(phones)),
            Some("electronics")
        );
        // Every brand sells in one top category only.
        let mut brand_top = vec![None; catalog.brands.len()];
        for item in catalog.items.iter().filter(|i| i.brand != UNKNOWN && i.category != UNKNOWN) {
            let top = catalog.categories.top_level(item.category);
            assert_eq!(*brand_top[item.brand as usize].get_or_insert(top), top);
        }
        // Log-normal prices per category: medians differ by category far more than by chance.
        let mut medians: Vec<f32> = (1..catalog.categories.len() as u32)
            .filter(|&c| catalog.categories.depth(c) == 1)
            .map(|top| {
                let mut prices: Vec<f32> = catalog
                    .items
                    .iter()
                    .filter(|i| i.category != UNKNOWN && catalog.categories.top_level(i.category) == top)
                    .filter_map(|i| i.price)
                    .collect();
                prices.sort_by(f32::total_cmp);
                prices[prices.len() / 2]
            })
            .collect();
        medians.sort_by(f32::total_cmp);
        assert!(medians[medians.len() - 1] > 5.0 * medians[0], "{medians:?}");
        let mut bands = [0; 6];
        for item in &catalog.items {
            bands[usize::from(item.price_band)] += 1;
        }
        assert!(bands[1..].iter().all(|&n| (140..=180).contains(&n)), "{bands:?}");
        // Titles: brand token, subcategory noun, words, top-category noun; tokenizable text.
        let item = catalog
            .items
            .iter()
            .position(|i| i.brand != UNKNOWN && i.title[0] != UNKNOWN && i.category != UNKNOWN)
            .unwrap();
        let title = catalog.title_text(item as u32);
        let words: Vec<&str> = title.split(' ').collect();
        let brand = catalog.brands.name(catalog.items[item].brand).unwrap().to_lowercase();
        assert_eq!(words[0], brand);
        let path = catalog.categories.path(catalog.items[item].category).unwrap();
        assert_eq!(format!("{}/{}", words[words.len() - 1], words[1]), path);
        assert_eq!(crate::catalog::tokenize(&title).count(), catalog.items[item].title.len());
    }

    #[test]
    fn sessions_stay_in_a_subcategory_more_than_chance() {
        let dataset = generate(&small(11)).unwrap();
        let catalog = &dataset.catalog;
        let views: Vec<&Interaction> = dataset.interactions.iter().filter(|e| e.kind == EventKind::View).collect();
        let (mut same, mut pairs) = (0, 0);
        for pair in views.windows(2) {
            if pair[0].shopper == pair[1].shopper && pair[1].timestamp - pair[0].timestamp < 600 {
                pairs += 1;
                same +=
                    usize::from(catalog.items[pair[0].item as usize].category == catalog.items[pair[1].item as usize].category);
            }
        }
        let share = same as f64 / pairs as f64;
        println!("consecutive in-session views in the same subcategory: {:.1}%", share * 100.0);
        assert!(share > 0.5, "{share}");
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        let error = |config: SyntheticConfig| generate(&config).unwrap_err().to_string();
        assert_eq!(
            error(SyntheticConfig { events: 10, ..small(1) }),
            "invalid configuration: 10 events cannot give 2000 shoppers 5 events each"
        );
        assert_eq!(
            error(SyntheticConfig {
                click_rate: 1.5,
                ..small(1)
            }),
            "invalid configuration: click_rate = 1.5 is not a probability"
        );
        assert!(error(SyntheticConfig { items: 0, ..small(1) }).contains("must be positive"));
        assert!(
            error(SyntheticConfig {
                neighbour_prob: 0.6,
                same_subcategory_prob: 0.6,
                ..small(1)
            })
            .contains("exceeds 1")
        );
    }

    #[test]
    fn tiny_and_odd_configs_still_work() {
        let config = SyntheticConfig {
            shoppers: 3,
            items: 2,
            stores: 1,
            events: 15,
            top_categories: 15,
            subcategories_per_top: 6,
            brands_per_top: 1,
            ..SyntheticConfig::default()
        };
        let dataset = generate(&config).unwrap();
        assert_eq!(
            (dataset.num_shoppers(), dataset.num_items(), dataset.interactions.len()),
            (3, 2, 15)
        );
        assert!(dataset.catalog.categories.get("category14/category145").is_some());
    }

    #[test]
    fn pseudo_words_are_unique() {
        let words: std::collections::HashSet<String> = (0..70_000).map(|i| pseudo_word(i, 2)).collect();
        assert_eq!(words.len(), 70_000);
        assert_eq!(
            (
                pseudo_word(0, 2).as_str(),
                pseudo_word(17, 2).as_str(),
                pseudo_word(256, 2).as_str()
            ),
            ("kaka", "lolo", "lokaka")
        );
    }
}
