//! Assigning shoppers to stores (federated clients) from their attributes.
//!
//! Public data sets have no stores, so the federation is simulated by a natural, skewed split
//! of the shoppers. Each rule has a fixed, documented store list where it can, so store
//! indices mean the same thing across data sets and runs.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::dataset::{Dataset, ShopperInfo};
use crate::error::{DataError, Result};

/// How to derive each shopper's store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Partition {
    /// US ZIP codes' first digit is a region (0 = New England ... 9 = West Coast), a stand-in
    /// for regional stores. Always 11 stores: `zip-0`..`zip-9`, then `zip-other` for missing
    /// or non-numeric (e.g. Canadian) codes.
    ZipFirstDigit,
    /// The MovieLens-1M age bands: `age-under-18`, `age-18-24`, `age-25-34`, `age-35-44`,
    /// `age-45-49`, `age-50-55`, `age-56-plus`, then `age-unknown` only if some age is missing.
    AgeBand,
    /// One store per distinct occupation (trimmed, lowercased), sorted by name, as
    /// `occupation-<name>`, then `occupation-unknown` only if some occupation is missing.
    Occupation,
}

const AGE_BANDS: [(u8, &str); 7] = [
    (0, "age-under-18"),
    (18, "age-18-24"),
    (25, "age-25-34"),
    (35, "age-35-44"),
    (45, "age-45-49"),
    (50, "age-50-55"),
    (56, "age-56-plus"),
];

impl Partition {
    /// Store names and each shopper's store index.
    pub fn assign(&self, shoppers: &[ShopperInfo]) -> Result<(Vec<String>, Vec<u16>)> {
        match self {
            Partition::ZipFirstDigit => {
                let mut names: Vec<String> = (0..10).map(|digit| format!("zip-{digit}")).collect();
                names.push("zip-other".to_owned());
                let stores = shoppers
                    .iter()
                    .map(
                        |shopper| match shopper.zip.as_deref().and_then(|zip| zip.trim().bytes().next()) {
                            Some(byte @ b'0'..=b'9') => u16::from(byte - b'0'),
                            _ => 10,
                        },
                    )
                    .collect();
                Ok((names, stores))
            }
            Partition::AgeBand => {
                let mut names: Vec<String> = AGE_BANDS.iter().map(|(_, name)| (*name).to_owned()).collect();
                let unknown = names.len() as u16;
                let stores: Vec<u16> = shoppers
                    .iter()
                    .map(|shopper| match shopper.age {
                        Some(age) => AGE_BANDS.iter().rposition(|(lower, _)| age >= *lower).unwrap_or(0) as u16,
                        None => unknown,
                    })
                    .collect();
                if stores.contains(&unknown) {
                    names.push("age-unknown".to_owned());
                }
                Ok((names, stores))
            }
            Partition::Occupation => {
                let normalised = |shopper: &ShopperInfo| {
                    shopper
                        .occupation
                        .as_deref()
                        .map(|o| o.trim().to_lowercase())
                        .filter(|o| !o.is_empty())
                };
                let distinct: Vec<String> = shoppers
                    .iter()
                    .filter_map(normalised)
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let mut names: Vec<String> = distinct.iter().map(|o| format!("occupation-{o}")).collect();
                let too_many = || DataError::Overflow {
                    what: "stores",
                    max: u16::MAX.into(),
                };
                let unknown = u16::try_from(names.len()).map_err(|_| too_many())?;
                let stores: Vec<u16> = shoppers
                    .iter()
                    .map(|shopper| match normalised(shopper) {
                        Some(o) => distinct.binary_search(&o).map_or(unknown, |i| i as u16),
                        None => unknown,
                    })
                    .collect();
                if stores.contains(&unknown) {
                    names.push("occupation-unknown".to_owned());
                }
                Ok((names, stores))
            }
        }
    }

    /// Replaces the data set's stores with this partition's.
    pub fn apply(&self, dataset: &mut Dataset) -> Result<()> {
        let (names, stores) = self.assign(&dataset.shoppers)?;
        for (shopper, store) in dataset.shoppers.iter_mut().zip(stores) {
            shopper.store = store;
        }
        dataset.stores = names;
        Ok(())
    }
}

/// Name of the store [`hold_out_platform`] creates.
pub const PLATFORM_STORE: &str = "platform";

/// Moves a share of every store's shoppers (chosen by a hash of the shopper id and `seed`) into
/// a new store [`PLATFORM_STORE`]: shoppers the platform owns, kept out of every partner store,
/// for its own fine-tuning and evaluation. Returns the new store's index.
///
/// A share outside [0, 1] is an error rather than a silent "everyone" or "no one", and so is a
/// data set whose stores already use every `u16` index: the platform's index would wrap onto
/// store 0 and take that store's shoppers into the platform's hold-out.
pub fn hold_out_platform(dataset: &mut Dataset, share: f64, seed: u64) -> Result<u16> {
    if !(0.0..=1.0).contains(&share) {
        return Err(DataError::Config(format!(
            "the platform's share of shoppers must lie in [0, 1], not {share}"
        )));
    }
    let index = u16::try_from(dataset.stores.len()).map_err(|_| DataError::Overflow {
        what: "stores (with the platform's)",
        max: u16::MAX.into(),
    })?;
    dataset.stores.push(PLATFORM_STORE.to_owned());
    for (i, shopper) in dataset.shoppers.iter_mut().enumerate() {
        let mut z = (i as u64) ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if ((z >> 11) as f64 / (1u64 << 53) as f64) < share {
            shopper.store = index;
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_platform_holds_out_about_its_share() {
        let mut dataset = Dataset {
            shoppers: (0..2000).map(|_| shopper(Some("12345"), None, None)).collect(),
            stores: vec!["zip-1".into()],
            ..Dataset::default()
        };
        let p = hold_out_platform(&mut dataset, 0.1, 3).unwrap();
        assert_eq!(dataset.stores[p as usize], PLATFORM_STORE);
        let held = dataset.store_sizes()[p as usize];
        assert!((150..250).contains(&held), "{held} of 2000");
        let again = {
            let mut d = Dataset {
                shoppers: (0..2000).map(|_| shopper(Some("12345"), None, None)).collect(),
                stores: vec!["zip-1".into()],
                ..Dataset::default()
            };
            hold_out_platform(&mut d, 0.1, 3).unwrap();
            d.shoppers.iter().map(|s| s.store).collect::<Vec<_>>()
        };
        assert_eq!(
            again,
            dataset.shoppers.iter().map(|s| s.store).collect::<Vec<_>>(),
            "deterministic"
        );
    }

    #[test]
    fn a_platform_index_that_would_wrap_or_a_share_beyond_one_is_refused() {
        let mut full = Dataset {
            shoppers: vec![shopper(Some("12345"), None, None)],
            stores: (0..=u16::MAX).map(|i| format!("store-{i}")).collect(),
            ..Dataset::default()
        };
        let err = hold_out_platform(&mut full, 0.5, 1).unwrap_err();
        assert!(matches!(err, DataError::Overflow { max: 65535, .. }), "{err}");
        assert_eq!(full.stores.len(), 65_536, "nothing was added");
        assert_eq!(full.shoppers[0].store, 0, "no shopper moved");

        let mut one = Dataset {
            shoppers: vec![shopper(Some("12345"), None, None)],
            stores: vec!["zip-1".into()],
            ..Dataset::default()
        };
        for share in [-0.1, 1.5, f64::NAN] {
            let err = hold_out_platform(&mut one, share, 1).unwrap_err();
            assert!(err.to_string().contains("[0, 1]"), "{share}: {err}");
        }
        assert_eq!(one.stores, vec!["zip-1".to_owned()]);
        assert_eq!(hold_out_platform(&mut one, 1.0, 1).unwrap(), 1);
        assert_eq!(one.shoppers[0].store, 1, "a share of 1 holds out everyone");
    }

    fn shopper(zip: Option<&str>, age: Option<u8>, occupation: Option<&str>) -> ShopperInfo {
        ShopperInfo {
            external_id: String::new(),
            store: 0,
            zip: zip.map(str::to_owned),
            age,
            occupation: occupation.map(str::to_owned),
        }
    }

    #[test]
    fn zip_first_digit_gives_eleven_stores() {
        let shoppers = [
            shopper(Some("85711"), None, None),
            shopper(Some("T8H1N"), None, None),
            shopper(None, None, None),
            shopper(Some("02139"), None, None),
        ];
        let (names, stores) = Partition::ZipFirstDigit.assign(&shoppers).unwrap();
        assert_eq!(names.len(), 11);
        assert_eq!((names[0].as_str(), names[10].as_str()), ("zip-0", "zip-other"));
        assert_eq!(stores, [8, 10, 10, 0]);
    }

    #[test]
    fn age_bands_follow_movielens_1m_and_add_unknown_only_when_needed() {
        let ages = [17, 18, 24, 25, 44, 45, 55, 56, 73];
        let shoppers: Vec<_> = ages.iter().map(|&age| shopper(None, Some(age), None)).collect();
        let (names, stores) = Partition::AgeBand.assign(&shoppers).unwrap();
        assert_eq!(names.len(), 7);
        assert_eq!(stores, [0, 1, 1, 2, 3, 4, 5, 6, 6]);
        let (names, stores) = Partition::AgeBand.assign(&[shopper(None, None, None)]).unwrap();
        assert_eq!((names.len(), stores[0], names[7].as_str()), (8, 7, "age-unknown"));
    }

    #[test]
    fn occupations_are_sorted_and_normalised() {
        let shoppers = [
            shopper(None, None, Some("Writer")),
            shopper(None, None, Some(" artist")),
            shopper(None, None, Some("writer")),
        ];
        let (names, stores) = Partition::Occupation.assign(&shoppers).unwrap();
        assert_eq!(names, ["occupation-artist", "occupation-writer"]);
        assert_eq!(stores, [1, 0, 1]);
        let mut dataset = Dataset {
            shoppers: vec![shopper(None, None, None), shoppers[1].clone()],
            ..Dataset::default()
        };
        Partition::Occupation.apply(&mut dataset).unwrap();
        assert_eq!(dataset.stores, ["occupation-artist", "occupation-unknown"]);
        assert_eq!(dataset.store_sizes(), [1, 1]);
    }
}
