//! A loaded or generated data set: events, catalog, shoppers and the stores they belong to.
//!
//! The store is the federated client: each shopper belongs to exactly one, and a store only
//! ever sees its own shoppers' events. Sources that know the store (synthetic data) set it;
//! for the others [`crate::Partition`] derives one from shopper attributes.

use serde::{Deserialize, Serialize};

use crate::catalog::Catalog;
use crate::interactions::Interaction;
use crate::quality::QualityReport;

/// A shopper's external id and the attributes partitions are built from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShopperInfo {
    pub external_id: String,
    /// Index into [`Dataset::stores`].
    pub store: u16,
    pub zip: Option<String>,
    pub age: Option<u8>,
    pub occupation: Option<String>,
}

/// What loading did to the raw rows, kept with the data so the [`QualityReport`] can say it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleaningCounts {
    /// Event rows read from the source (before collapsing duplicates).
    pub rows_read: u64,
    /// Catalog rows read (items described by the source).
    pub catalog_rows_read: u64,
    /// Events dropped because an identical (shopper, item, timestamp, kind) event was kept.
    pub duplicates_collapsed: u64,
    /// Items that appear in events but not in the catalog; kept with unknown features.
    pub items_missing_from_catalog: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dataset {
    /// Sorted by [`Interaction::sort_key`], without duplicate events.
    pub interactions: Vec<Interaction>,
    pub catalog: Catalog,
    /// Indexed by dense shopper id.
    pub shoppers: Vec<ShopperInfo>,
    /// Store names, indexed by [`ShopperInfo::store`].
    pub stores: Vec<String>,
    pub cleaning: CleaningCounts,
}

impl Dataset {
    pub fn num_shoppers(&self) -> usize {
        self.shoppers.len()
    }

    pub fn num_items(&self) -> usize {
        self.catalog.len()
    }

    /// Sorts events by [`Interaction::sort_key`] and keeps the first of each run of events
    /// with equal (shopper, item, timestamp, kind): a double-submitted form or a re-sent log
    /// line is one event, and counting it twice would inflate popularity. The first row's
    /// weight is kept. Returns how many events were dropped (also added to
    /// [`CleaningCounts::duplicates_collapsed`]).
    pub fn collapse_duplicates(&mut self) -> u64 {
        // Stable sort: among duplicates the earliest row in the source stays first.
        self.interactions.sort_by_key(Interaction::sort_key);
        let before = self.interactions.len();
        self.interactions.dedup_by_key(|event| event.sort_key());
        let dropped = (before - self.interactions.len()) as u64;
        self.cleaning.duplicates_collapsed += dropped;
        dropped
    }

    /// Number of shoppers in each store.
    pub fn store_sizes(&self) -> Vec<usize> {
        let mut sizes = vec![0; self.stores.len()];
        for shopper in &self.shoppers {
            if let Some(size) = sizes.get_mut(usize::from(shopper.store)) {
                *size += 1;
            }
        }
        sizes
    }

    /// The store of a shopper.
    pub fn store_of(&self, shopper: u32) -> Option<u16> {
        self.shoppers.get(shopper as usize).map(|info| info.store)
    }

    /// Counts, unknown features and per-store sizes; see [`QualityReport`].
    pub fn quality_report(&self) -> QualityReport {
        QualityReport::of(self)
    }

    /// Each shopper's events as a range of [`Dataset::interactions`]; relies on the sorted
    /// order every loader and the generator leave behind.
    pub fn shopper_ranges(&self) -> Vec<std::ops::Range<usize>> {
        let mut ranges = vec![0..0; self.shoppers.len()];
        let mut start = 0;
        while start < self.interactions.len() {
            let shopper = self.interactions[start].shopper;
            let len = self.interactions[start..]
                .iter()
                .take_while(|event| event.shopper == shopper)
                .count();
            if let Some(range) = ranges.get_mut(shopper as usize) {
                *range = start..start + len;
            }
            start += len;
        }
        ranges
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interactions::EventKind;

    #[test]
    fn duplicates_collapse_to_the_first_row_and_are_counted() {
        let mut dataset = Dataset::default();
        let mut weighted = Interaction::new(0, 1, 10);
        weighted.weight = 2.0;
        let mut view = Interaction::new(0, 1, 10);
        view.kind = EventKind::View;
        dataset.interactions = vec![
            Interaction::new(1, 0, 5),
            weighted,
            Interaction::new(0, 1, 10),
            view,
            Interaction::new(0, 1, 11),
            Interaction::new(1, 0, 5),
        ];
        assert_eq!(dataset.collapse_duplicates(), 2);
        assert_eq!(dataset.cleaning.duplicates_collapsed, 2);
        let keys: Vec<_> = dataset.interactions.iter().map(Interaction::sort_key).collect();
        assert_eq!(
            keys,
            [
                (0, 10, 1, EventKind::View),
                (0, 10, 1, EventKind::Purchase),
                (0, 11, 1, EventKind::Purchase),
                (1, 5, 0, EventKind::Purchase)
            ]
        );
        assert_eq!(dataset.interactions[1].weight, 2.0, "the first row's weight survives");
    }

    #[test]
    fn shopper_ranges_cover_sorted_events() {
        let mut dataset = Dataset {
            shoppers: vec![ShopperInfo::default(); 3],
            ..Dataset::default()
        };
        dataset.interactions = vec![
            Interaction::new(0, 0, 1),
            Interaction::new(0, 1, 2),
            Interaction::new(2, 0, 1),
        ];
        assert_eq!(dataset.shopper_ranges(), [0..2, 0..0, 2..3]);
    }
}
