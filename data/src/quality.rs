//! What a data set looks like after loading, and what cleaning did to it.
//!
//! Cleaning in this crate never drops or rewrites anything silently: duplicates are collapsed
//! and missing features mapped to [`crate::UNKNOWN`], and this report counts both, so a run log
//! shows at a glance whether an export was healthy.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::catalog::{UNKNOWN, UNKNOWN_PRICE_BAND};
use crate::dataset::Dataset;
use crate::interactions::EventKind;

/// Size of one store (federated client).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreCounts {
    pub name: String,
    pub shoppers: u64,
    pub events: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityReport {
    /// Event rows in the source, duplicates included.
    pub rows_read: u64,
    pub catalog_rows_read: u64,
    pub duplicates_collapsed: u64,
    /// Items referenced by events but absent from the catalog (kept, all features unknown).
    pub items_missing_from_catalog: u64,
    pub unknown_category: u64,
    pub unknown_brand: u64,
    pub unknown_price: u64,
    pub unknown_title: u64,
    pub shoppers: u64,
    pub items: u64,
    pub events: u64,
    pub shoppers_without_events: u64,
    pub items_without_events: u64,
    /// Indexed by `EventKind as usize` (view, click, cart, purchase).
    pub events_by_kind: [u64; 4],
    pub stores: Vec<StoreCounts>,
}

impl QualityReport {
    pub fn of(dataset: &Dataset) -> QualityReport {
        let items = &dataset.catalog.items;
        let count = |predicate: &dyn Fn(&crate::Item) -> bool| items.iter().filter(|item| predicate(item)).count() as u64;
        let mut stores: Vec<StoreCounts> = dataset
            .stores
            .iter()
            .map(|name| StoreCounts {
                name: name.clone(),
                shoppers: 0,
                events: 0,
            })
            .collect();
        for shopper in &dataset.shoppers {
            if let Some(store) = stores.get_mut(usize::from(shopper.store)) {
                store.shoppers += 1;
            }
        }
        let mut events_by_kind = [0; 4];
        let mut shopper_seen = vec![false; dataset.shoppers.len()];
        let mut item_seen = vec![false; items.len()];
        for event in &dataset.interactions {
            events_by_kind[event.kind as usize] += 1;
            if let Some(seen) = shopper_seen.get_mut(event.shopper as usize) {
                *seen = true;
            }
            if let Some(seen) = item_seen.get_mut(event.item as usize) {
                *seen = true;
            }
            let store = dataset.store_of(event.shopper).map(usize::from);
            if let Some(store) = store.and_then(|store| stores.get_mut(store)) {
                store.events += 1;
            }
        }
        QualityReport {
            rows_read: dataset.cleaning.rows_read,
            catalog_rows_read: dataset.cleaning.catalog_rows_read,
            duplicates_collapsed: dataset.cleaning.duplicates_collapsed,
            items_missing_from_catalog: dataset.cleaning.items_missing_from_catalog,
            unknown_category: count(&|item| item.category == UNKNOWN),
            unknown_brand: count(&|item| item.brand == UNKNOWN),
            unknown_price: count(&|item| item.price.is_none() || item.price_band == UNKNOWN_PRICE_BAND),
            unknown_title: count(&|item| item.title.iter().all(|&token| token == UNKNOWN)),
            shoppers: dataset.shoppers.len() as u64,
            items: items.len() as u64,
            events: dataset.interactions.len() as u64,
            shoppers_without_events: shopper_seen.iter().filter(|seen| !**seen).count() as u64,
            items_without_events: item_seen.iter().filter(|seen| !**seen).count() as u64,
            events_by_kind,
            stores,
        }
    }
}

impl fmt::Display for QualityReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} events from {} rows ({} duplicates collapsed); {} shoppers ({} without events); {} items ({} without events, {} missing from catalog)",
            self.events,
            self.rows_read,
            self.duplicates_collapsed,
            self.shoppers,
            self.shoppers_without_events,
            self.items,
            self.items_without_events,
            self.items_missing_from_catalog
        )?;
        let kinds: Vec<String> = EventKind::ALL
            .iter()
            .map(|kind| format!("{kind} {}", self.events_by_kind[*kind as usize]))
            .collect();
        writeln!(f, "events by kind: {}", kinds.join(", "))?;
        writeln!(
            f,
            "unknown item features: category {}, brand {}, price {}, title {}",
            self.unknown_category, self.unknown_brand, self.unknown_price, self.unknown_title
        )?;
        let stores: Vec<String> = self
            .stores
            .iter()
            .map(|s| format!("{} {}/{}", s.name, s.shoppers, s.events))
            .collect();
        write!(f, "{} stores (shoppers/events): {}", self.stores.len(), stores.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Item;
    use crate::dataset::ShopperInfo;
    use crate::interactions::Interaction;

    #[test]
    fn report_counts_unknowns_stores_and_kinds() {
        let mut dataset = Dataset::default();
        let brand = dataset.catalog.brands.intern("acme").unwrap();
        let title = dataset.catalog.intern_title("red shoe").unwrap();
        dataset
            .catalog
            .insert(
                "a",
                Item {
                    brand,
                    title,
                    price: Some(3.0),
                    ..Item::default()
                },
            )
            .unwrap();
        dataset.catalog.insert("b", Item::default()).unwrap();
        dataset.catalog.insert("c", Item::default()).unwrap();
        dataset.catalog.compute_price_bands(5);
        dataset.stores = vec!["north".into(), "south".into()];
        dataset.shoppers = vec![
            ShopperInfo {
                external_id: "x".into(),
                store: 0,
                ..ShopperInfo::default()
            },
            ShopperInfo {
                external_id: "y".into(),
                store: 1,
                ..ShopperInfo::default()
            },
            ShopperInfo {
                external_id: "z".into(),
                store: 1,
                ..ShopperInfo::default()
            },
        ];
        let mut view = Interaction::new(0, 1, 2);
        view.kind = EventKind::View;
        dataset.interactions = vec![Interaction::new(0, 0, 1), view, Interaction::new(1, 0, 1)];
        dataset.cleaning.rows_read = 4;
        dataset.cleaning.duplicates_collapsed = 1;
        let report = dataset.quality_report();
        assert_eq!(
            (
                report.unknown_category,
                report.unknown_brand,
                report.unknown_price,
                report.unknown_title
            ),
            (3, 2, 2, 2)
        );
        assert_eq!((report.shoppers, report.items, report.events), (3, 3, 3));
        assert_eq!((report.shoppers_without_events, report.items_without_events), (1, 1));
        assert_eq!(report.events_by_kind, [1, 0, 0, 2]);
        assert_eq!(
            report.stores,
            [
                StoreCounts {
                    name: "north".into(),
                    shoppers: 1,
                    events: 2
                },
                StoreCounts {
                    name: "south".into(),
                    shoppers: 2,
                    events: 1
                }
            ]
        );
        let text = report.to_string();
        assert!(text.starts_with("3 events from 4 rows (1 duplicates collapsed)"), "{text}");
        assert!(
            text.contains("unknown item features: category 3, brand 2, price 2, title 2"),
            "{text}"
        );
        assert!(text.ends_with("2 stores (shoppers/events): north 1/2, south 2/1"), "{text}");
    }
}
