//! The fedfuse CSV layout: how a shop hands its data to fedfuse, read and written.
//!
//! A data folder holds up to three UTF-8 files, each with a header line naming its columns.
//! Columns may come in any order; optional columns may be left out of the header. Fields are
//! trimmed; quoting follows RFC 4180 (`"Shoe, red"`), so titles may contain commas.
//!
//! `interactions.csv` (required): one event per row.
//!
//! | column      | required | meaning                                                        |
//! |-------------|----------|----------------------------------------------------------------|
//! | `shopper`   | yes      | the shop's shopper id (any non-empty string)                   |
//! | `item`      | yes      | the shop's item id (any non-empty string)                      |
//! | `timestamp` | yes      | integer, seconds since the Unix epoch                          |
//! | `event`     | no       | `view`, `click`, `cart` or `purchase` (any case); empty or absent = `purchase` |
//! | `weight`    | no       | finite, non-negative number; empty or absent = 1               |
//!
//! `catalog.csv` (optional): one item per row. Empty fields are unknown.
//!
//! | column     | required | meaning                                                         |
//! |------------|----------|-----------------------------------------------------------------|
//! | `item`     | yes      | the item id used in `interactions.csv`; each at most once       |
//! | `category` | no       | a path, `/`-separated from the top: `Electronics/Phones`        |
//! | `brand`    | no       | brand name                                                      |
//! | `price`    | no       | finite, non-negative number                                     |
//! | `title`    | no       | free text, tokenized into lowercase alphanumeric words          |
//! | `genres`   | no       | `|`-separated genre names (MovieLens-style content features)    |
//! | `year`     | no       | release year, integer 0..=65535                                 |
//!
//! `shoppers.csv` (optional): one shopper per row; when present it fixes the shoppers' dense ids
//! (file order) and every shopper in `interactions.csv` must be listed.
//!
//! | column       | required | meaning                                                     |
//! |--------------|----------|-------------------------------------------------------------|
//! | `shopper`    | yes      | the id used in `interactions.csv`; each at most once        |
//! | `store`      | no       | store name; empty or absent = `all`                         |
//! | `zip`, `occupation` | no | text, empty = unknown                                     |
//! | `age`        | no       | integer 0..=255, empty = unknown                            |
//!
//! Nothing is dropped silently: a malformed row (wrong number of fields, unparsable number,
//! unknown event kind, empty id, repeated catalog or shopper id) is an error naming the file
//! and line, and a missing header is an error on line 1. Events for items not in the catalog
//! are kept with unknown features and counted; exact duplicate events are collapsed and
//! counted (see [`crate::QualityReport`]).
//!
//! Dense ids: shoppers in `shoppers.csv` order (else first appearance in `interactions.csv`),
//! items in `catalog.csv` order, then items only seen in events in first-appearance order.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use csv::StringRecord;

use crate::catalog::{Catalog, DEFAULT_PRICE_BANDS, IdMap, Item, UNKNOWN, UNKNOWN_NAME};
use crate::dataset::{CleaningCounts, Dataset, ShopperInfo};
use crate::error::{DataError, Result};
use crate::interactions::{EventKind, Interaction};

pub const INTERACTIONS_FILE: &str = "interactions.csv";
pub const CATALOG_FILE: &str = "catalog.csv";
pub const SHOPPERS_FILE: &str = "shoppers.csv";

/// Store name given to every shopper when the data names no store.
pub const DEFAULT_STORE: &str = "all";

const INTERACTION_COLUMNS: [&str; 5] = ["shopper", "item", "timestamp", "event", "weight"];
const CATALOG_COLUMNS: [&str; 7] = ["item", "category", "brand", "price", "title", "genres", "year"];
const SHOPPER_COLUMNS: [&str; 5] = ["shopper", "store", "zip", "age", "occupation"];

/// Loads `interactions.csv` and, where present, `catalog.csv` and `shoppers.csv` from `dir`.
pub fn load_dir(dir: &Path) -> Result<Dataset> {
    let optional = |name: &str| Some(dir.join(name)).filter(|path| path.exists());
    load(
        &dir.join(INTERACTIONS_FILE),
        optional(CATALOG_FILE).as_deref(),
        optional(SHOPPERS_FILE).as_deref(),
    )
}

/// Loads the three files of the layout from explicit paths.
pub fn load(interactions: &Path, catalog: Option<&Path>, shoppers: Option<&Path>) -> Result<Dataset> {
    let mut dataset = Dataset::default();
    let listed_shoppers = match shoppers {
        Some(path) => {
            read_shoppers(path, &mut dataset)?;
            true
        }
        None => false,
    };
    if let Some(path) = catalog {
        read_catalog(path, &mut dataset.catalog, &mut dataset.cleaning)?;
    }
    read_interactions(interactions, &mut dataset, listed_shoppers)?;
    if dataset.stores.is_empty() {
        dataset.stores.push(DEFAULT_STORE.to_owned());
    }
    dataset.catalog.compute_price_bands(DEFAULT_PRICE_BANDS);
    dataset.collapse_duplicates();
    Ok(dataset)
}

/// Writes `dataset` in this layout (all three files, every optional column), so a data set
/// can be exported, inspected and loaded back unchanged.
pub fn write_dir(dataset: &Dataset, dir: &Path) -> Result<()> {
    write_shoppers(dataset, &dir.join(SHOPPERS_FILE))?;
    write_catalog(&dataset.catalog, &dir.join(CATALOG_FILE))?;
    write_interactions(dataset, &dir.join(INTERACTIONS_FILE))
}

/// Where a row came from, to build errors that point at it.
struct RowAt<'a> {
    path: &'a Path,
    line: u64,
}

impl RowAt<'_> {
    fn fail(&self, message: impl Into<String>) -> DataError {
        DataError::row(self.path, self.line, message)
    }
}

/// A data row, with fields looked up by the position of the column in the known column list.
struct Row<'a> {
    record: &'a StringRecord,
    positions: &'a [Option<usize>],
}

impl<'a> Row<'a> {
    /// The field of known column `column`, `None` if the header lacks that column.
    fn get(&self, column: usize) -> Option<&'a str> {
        self.positions[column].and_then(|position| self.record.get(position))
    }

    /// The field, `None` if absent or empty.
    fn non_empty(&self, column: usize) -> Option<&'a str> {
        self.get(column).filter(|field| !field.is_empty())
    }
}

/// Opens `path`, checks its header against `known` (the first `required` of which must be
/// present) and calls `on_row` for every data row with its 1-based line number.
fn read_rows(
    path: &Path,
    known: &[&str],
    required: usize,
    mut on_row: impl FnMut(&RowAt<'_>, &Row<'_>) -> Result<()>,
) -> Result<()> {
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(BufReader::new(file));
    let layout = layout_text(known, required);
    let mut record = StringRecord::new();
    if !reader.read_record(&mut record).map_err(|e| csv_error(path, e))? {
        return Err(DataError::row(path, 1, format!("empty file: expected the header `{layout}`")));
    }
    let positions = parse_header(
        &RowAt {
            path,
            line: record.position().map_or(1, |p| p.line()),
        },
        &record,
        known,
        required,
        &layout,
    )?;
    while reader.read_record(&mut record).map_err(|e| csv_error(path, e))? {
        let at = RowAt {
            path,
            line: record.position().map_or(0, |p| p.line()),
        };
        if record.len() != positions.iter().flatten().count() {
            let expected = positions.iter().flatten().count();
            return Err(at.fail(format!("expected {expected} fields as in the header, found {}", record.len())));
        }
        on_row(
            &at,
            &Row {
                record: &record,
                positions: &positions,
            },
        )?;
    }
    Ok(())
}

fn layout_text(known: &[&str], required: usize) -> String {
    let mut text = known[..required].join(",");
    for optional in &known[required..] {
        text.push_str(&format!("[,{optional}]"));
    }
    text
}

/// Maps header names to positions. A first line with no known column name is almost always
/// data without a header, and is reported as such rather than as unknown columns.
fn parse_header(
    at: &RowAt<'_>,
    record: &StringRecord,
    known: &[&str],
    required: usize,
    layout: &str,
) -> Result<Vec<Option<usize>>> {
    let names: Vec<String> = record
        .iter()
        .map(|name| name.trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    if !names.iter().any(|name| known.contains(&name.as_str())) {
        let found = record.iter().collect::<Vec<_>>().join(",");
        return Err(at.fail(format!("missing header: expected `{layout}`, found `{found}`")));
    }
    let mut positions = vec![None; known.len()];
    for (position, name) in names.iter().enumerate() {
        let Some(column) = known.iter().position(|k| k == name) else {
            return Err(at.fail(format!("unknown column `{name}` in header: expected `{layout}`")));
        };
        if positions[column].replace(position).is_some() {
            return Err(at.fail(format!("column `{name}` appears twice in header")));
        }
    }
    if let Some(missing) = (0..required).find(|&column| positions[column].is_none()) {
        return Err(at.fail(format!(
            "header lacks required column `{}`: expected `{layout}`",
            known[missing]
        )));
    }
    Ok(positions)
}

fn csv_error(path: &Path, error: csv::Error) -> DataError {
    let line = error.position().map_or(0, |p| p.line());
    match error.into_kind() {
        csv::ErrorKind::Io(source) => DataError::io(path, source),
        csv::ErrorKind::Utf8 { err, .. } => DataError::row(path, line, format!("not valid UTF-8: {err}")),
        other => DataError::row(path, line, format!("malformed CSV: {other:?}")),
    }
}

fn parse_number<T: std::str::FromStr>(at: &RowAt<'_>, what: &str, text: &str) -> Result<T> {
    text.parse()
        .map_err(|_| at.fail(format!("{what} `{text}` is not a valid number")))
}

fn parse_amount(at: &RowAt<'_>, what: &str, text: &str) -> Result<f32> {
    let value: f32 = parse_number(at, what, text)?;
    if !value.is_finite() || value < 0.0 {
        return Err(at.fail(format!("{what} `{text}` must be finite and non-negative")));
    }
    Ok(value)
}

fn read_shoppers(path: &Path, dataset: &mut Dataset) -> Result<()> {
    let mut stores: HashMap<String, u16> = HashMap::new();
    let mut ids = IdMap::new();
    read_rows(path, &SHOPPER_COLUMNS, 1, |at, row| {
        let external = row.non_empty(0).ok_or_else(|| at.fail("empty shopper id"))?;
        if ids.insert_new(external)?.is_none() {
            return Err(at.fail(format!("shopper `{external}` is listed twice")));
        }
        let store_name = row.non_empty(1).unwrap_or(DEFAULT_STORE);
        let store = match stores.get(store_name) {
            Some(&store) => store,
            None => {
                let store = u16::try_from(dataset.stores.len()).map_err(|_| DataError::Overflow {
                    what: "stores",
                    max: u16::MAX.into(),
                })?;
                dataset.stores.push(store_name.to_owned());
                stores.insert(store_name.to_owned(), store);
                store
            }
        };
        let age = row.non_empty(3).map(|age| parse_number::<u8>(at, "age", age)).transpose()?;
        dataset.shoppers.push(ShopperInfo {
            external_id: external.to_owned(),
            store,
            zip: row.non_empty(2).map(str::to_owned),
            age,
            occupation: row.non_empty(4).map(str::to_owned),
        });
        Ok(())
    })
}

fn read_catalog(path: &Path, catalog: &mut Catalog, cleaning: &mut CleaningCounts) -> Result<()> {
    let mut first_line: Vec<u64> = Vec::new();
    read_rows(path, &CATALOG_COLUMNS, 1, |at, row| {
        let external = row.non_empty(0).ok_or_else(|| at.fail("empty item id"))?;
        if let Some(existing) = catalog.item_id(external) {
            return Err(at.fail(format!(
                "item `{external}` is already described on line {}",
                first_line[existing as usize]
            )));
        }
        let category = catalog.categories.intern_path(row.get(1).unwrap_or(""))?;
        let brand = match row.non_empty(2) {
            Some(brand) => catalog.brands.intern(brand)?,
            None => UNKNOWN,
        };
        let price = row.non_empty(3).map(|price| parse_amount(at, "price", price)).transpose()?;
        let title = catalog.intern_title(row.get(4).unwrap_or(""))?;
        let mut genres = Vec::new();
        for genre in row.get(5).unwrap_or("").split('|').map(str::trim).filter(|g| !g.is_empty()) {
            genres.push(catalog.genres.intern(genre)?);
        }
        let year = row
            .non_empty(6)
            .map(|year| parse_number::<u16>(at, "year", year))
            .transpose()?;
        catalog.insert(
            external,
            Item {
                category,
                brand,
                price,
                title,
                genres,
                year,
                ..Item::default()
            },
        )?;
        first_line.push(at.line);
        cleaning.catalog_rows_read += 1;
        Ok(())
    })
}

fn read_interactions(path: &Path, dataset: &mut Dataset, listed_shoppers: bool) -> Result<()> {
    let mut shopper_ids = IdMap::new();
    for shopper in &dataset.shoppers {
        shopper_ids.insert_new(&shopper.external_id)?;
    }
    let Dataset {
        interactions,
        catalog,
        shoppers,
        cleaning,
        ..
    } = dataset;
    read_rows(path, &INTERACTION_COLUMNS, 3, |at, row| {
        let shopper_id = row.non_empty(0).ok_or_else(|| at.fail("empty shopper id"))?;
        let item_id = row.non_empty(1).ok_or_else(|| at.fail("empty item id"))?;
        let timestamp_text = row.get(2).unwrap_or("");
        let timestamp: i64 = timestamp_text
            .parse()
            .map_err(|_| at.fail(format!("timestamp `{timestamp_text}` is not an integer")))?;
        let kind = match row.non_empty(3) {
            Some(text) => EventKind::parse(text)
                .ok_or_else(|| at.fail(format!("unknown event kind `{text}`: expected view, click, cart or purchase")))?,
            None => EventKind::default(),
        };
        let weight = row
            .non_empty(4)
            .map(|weight| parse_amount(at, "weight", weight))
            .transpose()?
            .unwrap_or(1.0);
        let shopper = match shopper_ids.get(shopper_id) {
            Some(shopper) => shopper,
            None if listed_shoppers => return Err(at.fail(format!("shopper `{shopper_id}` is not listed in {SHOPPERS_FILE}"))),
            None => {
                shoppers.push(ShopperInfo {
                    external_id: shopper_id.to_owned(),
                    ..ShopperInfo::default()
                });
                shopper_ids.get_or_insert(shopper_id)?
            }
        };
        let (item, missing) = catalog.get_or_insert_unknown(item_id)?;
        cleaning.items_missing_from_catalog += u64::from(missing);
        cleaning.rows_read += 1;
        interactions.push(Interaction {
            shopper,
            item,
            timestamp,
            kind,
            weight,
        });
        Ok(())
    })
}

fn writer(path: &Path) -> Result<csv::Writer<File>> {
    csv::Writer::from_path(path).map_err(|e| DataError::io(path, e.into()))
}

fn write_rows<const N: usize>(path: &Path, header: [&str; N], rows: impl Iterator<Item = [String; N]>) -> Result<()> {
    let mut out = writer(path)?;
    let io = |e: csv::Error| DataError::io(path, e.into());
    out.write_record(header).map_err(io)?;
    for row in rows {
        out.write_record(&row).map_err(io)?;
    }
    out.flush().map_err(|e| DataError::io(path, e))
}

fn write_shoppers(dataset: &Dataset, path: &Path) -> Result<()> {
    let rows = dataset.shoppers.iter().map(|shopper| {
        [
            shopper.external_id.clone(),
            dataset.stores.get(usize::from(shopper.store)).cloned().unwrap_or_default(),
            shopper.zip.clone().unwrap_or_default(),
            shopper.age.map(|age| age.to_string()).unwrap_or_default(),
            shopper.occupation.clone().unwrap_or_default(),
        ]
    });
    write_rows(path, SHOPPER_COLUMNS, rows)
}

fn write_catalog(catalog: &Catalog, path: &Path) -> Result<()> {
    let name_or_empty = |name: Option<&str>| name.filter(|&n| n != UNKNOWN_NAME).unwrap_or("").to_owned();
    let rows = catalog.items.iter().enumerate().map(|(id, item)| {
        let genres: Vec<&str> = item.genres.iter().filter_map(|&g| catalog.genres.name(g)).collect();
        [
            catalog.external_id(id as u32).unwrap_or("").to_owned(),
            name_or_empty(catalog.categories.path(item.category)),
            name_or_empty(catalog.brands.name(item.brand)),
            item.price.map(|price| price.to_string()).unwrap_or_default(),
            catalog.title_text(id as u32),
            genres.join("|"),
            item.year.map(|year| year.to_string()).unwrap_or_default(),
        ]
    });
    write_rows(path, CATALOG_COLUMNS, rows)
}

fn write_interactions(dataset: &Dataset, path: &Path) -> Result<()> {
    let rows = dataset.interactions.iter().map(|event| {
        [
            dataset
                .shoppers
                .get(event.shopper as usize)
                .map(|s| s.external_id.clone())
                .unwrap_or_default(),
            dataset.catalog.external_id(event.item).unwrap_or("").to_owned(),
            event.timestamp.to_string(),
            event.kind.as_str().to_owned(),
            event.weight.to_string(),
        ]
    });
    write_rows(path, INTERACTION_COLUMNS, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::UNKNOWN;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Loads `interactions.csv` with the given text and returns the error message.
    fn interactions_error(text: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), INTERACTIONS_FILE, text);
        let error = load(&path, None, None).unwrap_err();
        let message = error.to_string();
        assert!(message.starts_with(&path.display().to_string()), "{message}");
        message.strip_prefix(&path.display().to_string()).unwrap().to_owned()
    }

    #[test]
    fn bad_interaction_rows_name_file_and_line() {
        let header = "shopper,item,timestamp,event,weight\n";
        assert_eq!(
            interactions_error(&format!("{header}a,x,1,view,1\na,x,2\n")),
            ":3: expected 5 fields as in the header, found 3"
        );
        assert_eq!(
            interactions_error(&format!("{header}a,x,1,view,1\nb,y,2,buy,1\n")),
            ":3: unknown event kind `buy`: expected view, click, cart or purchase"
        );
        assert_eq!(
            interactions_error(&format!("{header}a,x,yesterday,view,1\n")),
            ":2: timestamp `yesterday` is not an integer"
        );
        assert_eq!(
            interactions_error(&format!("{header}a,x,1.5,view,1\n")),
            ":2: timestamp `1.5` is not an integer"
        );
        assert_eq!(
            interactions_error(&format!("{header}a,x,1,view,-2\n")),
            ":2: weight `-2` must be finite and non-negative"
        );
        assert_eq!(
            interactions_error(&format!("{header}a,x,1,view,heavy\n")),
            ":2: weight `heavy` is not a valid number"
        );
        assert_eq!(interactions_error(&format!("{header}a,,1,view,1\n")), ":2: empty item id");
        assert_eq!(
            interactions_error("a,x,1\nb,y,2\n"),
            ":1: missing header: expected `shopper,item,timestamp[,event][,weight]`, found `a,x,1`"
        );
        assert_eq!(
            interactions_error(""),
            ":1: empty file: expected the header `shopper,item,timestamp[,event][,weight]`"
        );
        assert_eq!(
            interactions_error("shopper,item,time\n"),
            ":1: unknown column `time` in header: expected `shopper,item,timestamp[,event][,weight]`"
        );
        assert_eq!(
            interactions_error("shopper,item,event\n"),
            ":1: header lacks required column `timestamp`: expected `shopper,item,timestamp[,event][,weight]`"
        );
        assert_eq!(
            interactions_error("shopper,item,item,timestamp\n"),
            ":1: column `item` appears twice in header"
        );
        // A quoted field spanning lines: the next row's line number still counts physical lines.
        assert_eq!(
            interactions_error(&format!("{header}\"a\nb\",x,1,view,1\nc,y,z,view,1\n")),
            ":4: timestamp `z` is not an integer"
        );
        assert_eq!(
            interactions_error("shopper,item,timestamp\na,x,1\n\"b,y,2\n"),
            ":3: expected 3 fields as in the header, found 1"
        );
    }

    #[test]
    fn bad_catalog_and_shopper_rows_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let events = write(dir.path(), INTERACTIONS_FILE, "shopper,item,timestamp\na,x,1\n");
        let catalog_error = |text: &str| {
            let path = write(dir.path(), CATALOG_FILE, text);
            load(&events, Some(&path), None)
                .unwrap_err()
                .to_string()
                .replace(&path.display().to_string(), "catalog")
        };
        assert_eq!(
            catalog_error("item,category,brand,price,title\nx,a/b,acme,cheap,t\n"),
            "catalog:2: price `cheap` is not a valid number"
        );
        assert_eq!(
            catalog_error("item,category,brand,price,title\nx,,,,\nx,,,,\n"),
            "catalog:3: item `x` is already described on line 2"
        );
        assert_eq!(
            catalog_error("item,price\nx,NaN\n"),
            "catalog:2: price `NaN` must be finite and non-negative"
        );
        assert_eq!(
            catalog_error("item,year\nx,1e3\n"),
            "catalog:2: year `1e3` is not a valid number"
        );
        let shopper_error = |text: &str| {
            let path = write(dir.path(), SHOPPERS_FILE, text);
            load(&events, None, Some(&path))
                .unwrap_err()
                .to_string()
                .replace(&path.display().to_string(), "shoppers")
        };
        assert_eq!(
            shopper_error("shopper,store,age\na,north,old\n"),
            "shoppers:2: age `old` is not a valid number"
        );
        assert_eq!(
            shopper_error("shopper,store\na,north\na,south\n"),
            "shoppers:3: shopper `a` is listed twice"
        );
        let unlisted = shopper_error("shopper,store\nb,north\n").replace(&events.display().to_string(), "events");
        assert_eq!(unlisted, "events:2: shopper `a` is not listed in shoppers.csv");
        let missing = load(&dir.path().join("nope.csv"), None, None).unwrap_err();
        assert!(matches!(missing, DataError::Io { .. }), "{missing}");
    }

    #[test]
    fn loads_defaults_unknowns_duplicates_and_missing_items() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            INTERACTIONS_FILE,
            "timestamp,shopper,item,event\n10,s1,x,View\n10,s1,x,view\n12,s1,y,\n5,s2,z,cart\n5,s2,unlisted,click\n",
        );
        write(
            dir.path(),
            CATALOG_FILE,
            "item,category,brand,price,title\nx,Shoes/Running,Acme,59.5,\"Runner, Red (2024)\"\ny,,,,\nz,Shoes,Zenith,10,Slipper\n",
        );
        let dataset = load_dir(dir.path()).unwrap();
        let catalog = &dataset.catalog;
        assert_eq!(catalog.len(), 4);
        assert_eq!(dataset.stores, [DEFAULT_STORE]);
        assert_eq!(
            dataset.shoppers.iter().map(|s| s.external_id.as_str()).collect::<Vec<_>>(),
            ["s1", "s2"]
        );
        let x = &catalog.items[0];
        assert_eq!(catalog.categories.path(x.category), Some("Shoes/Running"));
        assert_eq!(
            catalog.categories.path(catalog.categories.top_level(x.category)),
            Some("Shoes")
        );
        assert_eq!(catalog.title_text(0), "runner red 2024");
        assert_eq!((x.price, x.price_band, catalog.items[2].price_band), (Some(59.5), 3, 1));
        assert_eq!(
            (catalog.items[1].category, catalog.items[1].brand, catalog.items[1].price_band),
            (UNKNOWN, UNKNOWN, 0)
        );
        assert_eq!(catalog.items[1].title, [UNKNOWN]);
        assert_eq!(catalog.external_id(3), Some("unlisted"));
        let keys: Vec<_> = dataset
            .interactions
            .iter()
            .map(|e| (e.shopper, e.item, e.timestamp, e.kind))
            .collect();
        assert_eq!(
            keys,
            [
                (0, 0, 10, EventKind::View),
                (0, 1, 12, EventKind::Purchase),
                (1, 2, 5, EventKind::Cart),
                (1, 3, 5, EventKind::Click)
            ]
        );
        let report = dataset.quality_report();
        assert_eq!(
            (
                report.rows_read,
                report.duplicates_collapsed,
                report.items_missing_from_catalog
            ),
            (5, 1, 1)
        );
        assert_eq!(
            (
                report.unknown_category,
                report.unknown_brand,
                report.unknown_price,
                report.unknown_title
            ),
            (2, 2, 2, 2)
        );
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            SHOPPERS_FILE,
            "shopper,store,zip,age,occupation\nann,north,02139,31,writer\nbob,south,,,\n",
        );
        write(
            dir.path(),
            CATALOG_FILE,
            "item,category,brand,price,title,genres,year\np1,Home/Kitchen,Acme,12.25,\"Pan, steel\",Cooking|Tools,2021\np2,,,,,,\n",
        );
        write(
            dir.path(),
            INTERACTIONS_FILE,
            "shopper,item,timestamp,event,weight\nbob,p2,7,view,0.5\nann,p1,3,purchase,2\nann,p2,3,cart,1\nbob,p3,9,click,1\n",
        );
        let original = load_dir(dir.path()).unwrap();
        let copy_dir = tempfile::tempdir().unwrap();
        write_dir(&original, copy_dir.path()).unwrap();
        let copy = load_dir(copy_dir.path()).unwrap();
        assert_eq!(copy.interactions, original.interactions);
        assert_eq!(copy.shoppers, original.shoppers);
        assert_eq!(copy.stores, original.stores);
        assert_eq!(copy.catalog.items, original.catalog.items);
        assert_eq!(copy.catalog.ids, original.catalog.ids);
        for item in 0..original.catalog.len() as u32 {
            assert_eq!(copy.catalog.title_text(item), original.catalog.title_text(item));
        }
        assert_eq!(copy.catalog.genres.names(), ["<unknown>", "Cooking", "Tools"]);
        assert_eq!(original.interactions.len(), 4);
        assert_eq!(original.shoppers[0].age, Some(31));
        assert_eq!(original.catalog.items[0].year, Some(2021));
        assert_eq!(original.catalog.items[0].price, Some(12.25));
    }

    #[test]
    fn synthetic_data_survives_a_csv_round_trip() {
        let config = crate::SyntheticConfig {
            shoppers: 300,
            items: 200,
            events: 6_000,
            ..crate::SyntheticConfig::default()
        };
        let original = crate::synthetic::generate(&config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_dir(&original, dir.path()).unwrap();
        let copy = load_dir(dir.path()).unwrap();
        assert_eq!(copy.interactions, original.interactions);
        assert_eq!(
            copy.shoppers.iter().map(|s| &s.external_id).collect::<Vec<_>>(),
            original.shoppers.iter().map(|s| &s.external_id).collect::<Vec<_>>()
        );
        let store_names = |d: &Dataset| {
            d.shoppers
                .iter()
                .map(|s| d.stores[usize::from(s.store)].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(store_names(&copy), store_names(&original));
        // Vocabulary ids follow first appearance, so compare features by name.
        let described = |d: &Dataset| {
            let c = &d.catalog;
            (0..c.len() as u32)
                .map(|i| {
                    let item = &c.items[i as usize];
                    let category = c.categories.path(item.category).map(str::to_owned);
                    (
                        category,
                        c.brands.name(item.brand).map(str::to_owned),
                        item.price,
                        item.price_band,
                        c.title_text(i),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(described(&copy), described(&original));
        assert_eq!(copy.quality_report().unknown_brand, original.quality_report().unknown_brand);
    }
}
