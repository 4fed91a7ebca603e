//! fedfuse data: everything between a shop's raw exports and the numbers a recommender is
//! judged by, kept free of the model stack (no burn) so stores, the aggregator and benchmarks
//! can use it without a GPU.
//!
//! - [`interactions`]: [`Interaction`] events with dense ids and an [`EventKind`] funnel;
//! - [`catalog`]: the [`Catalog`] of items and their content features, every categorical
//!   feature with an explicit [`UNKNOWN`] index;
//! - [`dataset`]: [`Dataset`], events + catalog + shoppers + stores;
//! - [`csv_reader`]: the documented CSV layout, read and written;
//! - [`movielens`]: the MovieLens-100K folder;
//! - [`synthetic`]: a deterministic synthetic e-commerce generator;
//! - [`partition`]: stores (federated clients) from shopper attributes;
//! - [`quality`]: the [`QualityReport`] that makes cleaning visible;
//! - [`split`]: the leave-last-out evaluation split with sampled negatives;
//! - [`metrics`]: HR, NDCG, recall, precision, F1 and MRR, sampled and full-ranking, with slices;
//! - [`evaluate`]: the evaluation protocol for any [`evaluate::Scorer`].

pub mod catalog;
pub mod csv_reader;
pub mod dataset;
pub mod error;
pub mod evaluate;
pub mod interactions;
pub mod metrics;
pub mod movielens;
pub mod partition;
pub mod quality;
pub mod source;
pub mod split;
pub mod synthetic;

pub use catalog::{Catalog, CategoryTree, IdMap, Item, UNKNOWN, Vocabulary};
pub use dataset::{CleaningCounts, Dataset, ShopperInfo};
pub use error::{DataError, Result};
pub use interactions::{EventKind, Interaction};
pub use metrics::{MetricsAccumulator, MetricsReport, RankMetrics};
pub use partition::Partition;
pub use quality::{QualityReport, StoreCounts};
pub use split::{EvalCase, Split, SplitConfig};
pub use synthetic::SyntheticConfig;
