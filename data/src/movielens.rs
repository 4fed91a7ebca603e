//! The MovieLens-100K folder (`u.data`, `u.item`, `u.user`) as a [`Dataset`].
//!
//! MovieLens is the public benchmark the fused recommender is compared on, so it is mapped onto
//! the e-commerce types rather than given its own: every rating is a purchase-kind event of
//! weight 1 (the implicit-feedback convention: that the user rated the film is the signal, not
//! the score), films are items whose content features are genres, release year and title
//! tokens, and users are shoppers whose store comes from a [`Partition`] (ZIP region by
//! default). Category, brand and price are unknown for every film and the quality report says so.
//!
//! Files (GroupLens' README): `u.data` is tab-separated `user item rating timestamp`;
//! `u.item` is `|`-separated with 24 fields `id|title|release date|video release date|IMDb
//! URL|` then 19 genre flags, in ISO-8859-1; `u.user` is `id|age|gender|occupation|zip`. All
//! three are read as ISO-8859-1 (each byte is the char with that code point), which is exact
//! for this data and never fails. Blank lines are skipped; any other malformed line is an
//! error naming the file and line.

use std::path::{Path, PathBuf};

use crate::catalog::{Catalog, DEFAULT_PRICE_BANDS, IdMap, Item, UNKNOWN};
use crate::dataset::{Dataset, ShopperInfo};
use crate::error::{DataError, Result};
use crate::interactions::{EventKind, Interaction};
use crate::partition::Partition;

/// Environment variable naming the MovieLens-100K folder.
pub const DIR_ENV: &str = "FEDFUSE_ML100K";

/// The 19 genre flags of `u.item`, in file order (`u.genre`). Flag 0, "unknown", maps to
/// [`UNKNOWN`], so genre index `i` in [`Catalog::genres`] is flag `i`.
pub const GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

const ITEM_FIELDS: usize = 5 + GENRES.len();

/// `$FEDFUSE_ML100K` if set, else the workspace's `shared/data/ml-100k` beside the checkout
/// (the data is under GroupLens' terms and never copied into the repository).
pub fn default_dir() -> PathBuf {
    match std::env::var_os(DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data/ml-100k")),
    }
}

/// Loads the folder with stores by [`Partition::ZipFirstDigit`] (11 stores).
pub fn load(dir: &Path) -> Result<Dataset> {
    load_with(dir, Partition::ZipFirstDigit)
}

/// Loads the folder with stores by `partition`.
pub fn load_with(dir: &Path, partition: Partition) -> Result<Dataset> {
    let mut dataset = Dataset::default();
    let shopper_ids = read_users(&dir.join("u.user"), &mut dataset.shoppers)?;
    read_items(&dir.join("u.item"), &mut dataset.catalog)?;
    dataset.cleaning.catalog_rows_read = dataset.catalog.len() as u64;
    read_ratings(&dir.join("u.data"), &shopper_ids, &dataset.catalog, &mut dataset.interactions)?;
    dataset.cleaning.rows_read = dataset.interactions.len() as u64;
    dataset.catalog.compute_price_bands(DEFAULT_PRICE_BANDS);
    partition.apply(&mut dataset)?;
    dataset.collapse_duplicates();
    Ok(dataset)
}

/// Non-blank lines of a file decoded as ISO-8859-1, with 1-based line numbers.
fn latin1_lines(path: &Path) -> Result<Vec<(u64, String)>> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let text: String = bytes.iter().map(|&byte| char::from(byte)).collect();
    Ok(text
        .split('\n')
        .enumerate()
        .map(|(i, line)| (i as u64 + 1, line.strip_suffix('\r').unwrap_or(line).to_owned()))
        .filter(|(_, line)| !line.trim().is_empty())
        .collect())
}

fn fields<'a>(path: &Path, line: u64, text: &'a str, separator: char, expected: usize) -> Result<Vec<&'a str>> {
    let fields: Vec<&str> = text.split(separator).map(str::trim).collect();
    if fields.len() != expected {
        let name = if separator == '\t' { "tab" } else { "`|`" };
        return Err(DataError::row(
            path,
            line,
            format!("expected {expected} {name}-separated fields, found {}", fields.len()),
        ));
    }
    Ok(fields)
}

fn number<T: std::str::FromStr>(path: &Path, line: u64, what: &str, text: &str) -> Result<T> {
    text.parse()
        .map_err(|_| DataError::row(path, line, format!("{what} `{text}` is not a valid number")))
}

fn read_users(path: &Path, shoppers: &mut Vec<ShopperInfo>) -> Result<IdMap> {
    let mut ids = IdMap::new();
    for (line, text) in latin1_lines(path)? {
        let f = fields(path, line, &text, '|', 5)?;
        if f[0].is_empty() {
            return Err(DataError::row(path, line, "empty user id"));
        }
        if ids.insert_new(f[0])?.is_none() {
            return Err(DataError::row(path, line, format!("user `{}` is listed twice", f[0])));
        }
        let age = Some(f[1])
            .filter(|age| !age.is_empty())
            .map(|age| number::<u8>(path, line, "age", age))
            .transpose()?;
        let text_or_none = |field: &str| Some(field.to_owned()).filter(|f| !f.is_empty());
        shoppers.push(ShopperInfo {
            external_id: f[0].to_owned(),
            store: 0,
            zip: text_or_none(f[4]),
            age,
            occupation: text_or_none(f[3]),
        });
    }
    Ok(ids)
}

fn read_items(path: &Path, catalog: &mut Catalog) -> Result<()> {
    for genre in &GENRES[1..] {
        catalog.genres.intern(genre)?;
    }
    for (line, text) in latin1_lines(path)? {
        let f = fields(path, line, &text, '|', ITEM_FIELDS)?;
        let fail = |message: String| DataError::row(path, line, message);
        if f[0].is_empty() {
            return Err(fail("empty item id".to_owned()));
        }
        let mut genres = Vec::new();
        for (genre, flag) in f[5..].iter().enumerate() {
            match *flag {
                "0" => {}
                "1" => genres.push(genre as u32),
                other => {
                    return Err(fail(format!(
                        "genre flag {} (`{}`) is `{other}`, expected 0 or 1",
                        genre + 1,
                        GENRES[genre]
                    )));
                }
            }
        }
        let year = match f[2] {
            "" => title_year(f[1]),
            date => Some(release_year(date).ok_or_else(|| fail(format!("release date `{date}` is not like 01-Jan-1995")))?),
        };
        let (title_text, _) = strip_years(f[1]);
        // Item 267's title is literally "unknown": a missing title, not a film called that.
        let title = if f[1] == "unknown" {
            vec![UNKNOWN]
        } else {
            catalog.intern_title(&title_text)?
        };
        let item = Item {
            title,
            genres,
            year,
            ..Item::default()
        };
        if catalog.insert(f[0], item)?.is_none() {
            return Err(fail(format!("item `{}` is listed twice", f[0])));
        }
    }
    Ok(())
}

fn read_ratings(path: &Path, shoppers: &IdMap, catalog: &Catalog, interactions: &mut Vec<Interaction>) -> Result<()> {
    for (line, text) in latin1_lines(path)? {
        let f = fields(path, line, &text, '\t', 4)?;
        let fail = |message: String| DataError::row(path, line, message);
        let shopper = shoppers
            .get(f[0])
            .ok_or_else(|| fail(format!("user `{}` is not in u.user", f[0])))?;
        let item = catalog
            .item_id(f[1])
            .ok_or_else(|| fail(format!("item `{}` is not in u.item", f[1])))?;
        let rating: u8 = number(path, line, "rating", f[2])?;
        if !(1..=5).contains(&rating) {
            return Err(fail(format!("rating `{rating}` is outside 1..=5")));
        }
        let timestamp: i64 = number(path, line, "timestamp", f[3])?;
        interactions.push(Interaction {
            shopper,
            item,
            timestamp,
            kind: EventKind::Purchase,
            weight: 1.0,
        });
    }
    Ok(())
}

/// The year of a `dd-Mon-yyyy` release date.
fn release_year(date: &str) -> Option<u16> {
    let year = date.rsplit('-').next()?;
    (year.len() == 4 && date.len() > 4).then(|| year.parse().ok()).flatten()
}

/// The title without `(yyyy)` groups, and the last such year: a release year is not a word of
/// the title, and leaving it in would make every 1995 film share a token.
fn strip_years(title: &str) -> (String, Option<u16>) {
    let mut kept = String::with_capacity(title.len());
    let mut year = None;
    let mut rest = title;
    while let Some(open) = rest.find('(') {
        let candidate = &rest[open + 1..];
        let digits = candidate.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 4 && candidate.as_bytes().get(4) == Some(&b')') {
            kept.push_str(&rest[..open]);
            year = candidate[..4].parse().ok();
            rest = &candidate[5..];
        } else {
            kept.push_str(&rest[..=open]);
            rest = candidate;
        }
    }
    kept.push_str(rest);
    (kept, year)
}

fn title_year(title: &str) -> Option<u16> {
    strip_years(title).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn write_folder(user: &str, item: &[u8], data: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("u.user"), user).unwrap();
        std::fs::write(dir.path().join("u.item"), item).unwrap();
        std::fs::write(dir.path().join("u.data"), data).unwrap();
        dir
    }

    fn item_line(id: u32, title: &[u8], date: &str, flags: &[usize]) -> Vec<u8> {
        let mut line = format!("{id}|").into_bytes();
        line.extend_from_slice(title);
        line.extend_from_slice(format!("|{date}||http://example.invalid/").as_bytes());
        for genre in 0..GENRES.len() {
            line.extend_from_slice(if flags.contains(&genre) { b"|1" } else { b"|0" });
        }
        line.push(b'\n');
        line
    }

    #[test]
    fn titles_lose_their_year_and_keep_other_parentheses() {
        assert_eq!(strip_years("Toy Story (1995)"), ("Toy Story ".to_owned(), Some(1995)));
        assert_eq!(
            strip_years("Shanghai Triad (Yao a yao) (1995)"),
            ("Shanghai Triad (Yao a yao) ".to_owned(), Some(1995))
        );
        assert_eq!(strip_years("Nineteen (19)"), ("Nineteen (19)".to_owned(), None));
        assert_eq!(release_year("01-Jan-1995"), Some(1995));
        assert_eq!(release_year("1995"), None);
    }

    #[test]
    fn reads_a_tiny_folder_with_latin1_titles() {
        let mut items = item_line(1, b"Toy Story (1995)", "01-Jan-1995", &[3, 4, 5]);
        items.extend(item_line(2, b"Cit\xe9 des enfants perdus, La (1995)", "", &[8]));
        items.extend(item_line(3, b"unknown", "", &[0]));
        let dir = write_folder(
            "1|24|M|technician|85711\n2|53|F|other|T8H1N\n",
            &items,
            "1\t1\t5\t100\n2\t2\t3\t50\n\n1\t3\t4\t100\n",
        );
        let dataset = load(dir.path()).unwrap();
        let catalog = &dataset.catalog;
        assert_eq!(catalog.title_text(0), "toy story");
        assert_eq!(catalog.title_text(1), "cité des enfants perdus la");
        assert_eq!(catalog.items[2].title, [UNKNOWN]);
        assert_eq!(catalog.items[0].genres, [3, 4, 5]);
        assert_eq!(catalog.genres.name(3), Some("Animation"));
        assert_eq!(catalog.items[2].genres, [UNKNOWN]);
        assert_eq!(
            (catalog.items[0].year, catalog.items[1].year, catalog.items[2].year),
            (Some(1995), Some(1995), None)
        );
        assert_eq!(dataset.stores.len(), 11);
        assert_eq!((dataset.shoppers[0].store, dataset.shoppers[1].store), (8, 10));
        assert_eq!(dataset.shoppers[1].occupation.as_deref(), Some("other"));
        let events: Vec<_> = dataset
            .interactions
            .iter()
            .map(|e| (e.shopper, e.item, e.timestamp, e.kind, e.weight))
            .collect();
        assert_eq!(
            events,
            [
                (0, 0, 100, EventKind::Purchase, 1.0),
                (0, 2, 100, EventKind::Purchase, 1.0),
                (1, 1, 50, EventKind::Purchase, 1.0)
            ]
        );
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let items = String::from_utf8(item_line(1, b"A (1990)", "01-Jan-1990", &[1])).unwrap();
        let error = |user: &str, item: &str, data: &str| {
            let dir = write_folder(user, item.as_bytes(), data);
            let message = load(dir.path()).unwrap_err().to_string();
            message.replace(&dir.path().display().to_string(), "")
        };
        assert_eq!(
            error("1|24|M|x|1\n", &items, "1\t1\t5\n"),
            "/u.data:1: expected 4 tab-separated fields, found 3"
        );
        assert_eq!(
            error("1|24|M|x|1\n", &items, "1\t1\t5\t9\n1\t2\t5\t9\n"),
            "/u.data:2: item `2` is not in u.item"
        );
        assert_eq!(
            error("1|24|M|x|1\n", &items, "1\t1\t7\t9\n"),
            "/u.data:1: rating `7` is outside 1..=5"
        );
        assert_eq!(
            error("1|24|M|x|1\n", &items, "1\t1\t5\tnoon\n"),
            "/u.data:1: timestamp `noon` is not a valid number"
        );
        assert_eq!(
            error("1|old|M|x|1\n", &items, ""),
            "/u.user:1: age `old` is not a valid number"
        );
        assert_eq!(
            error("1|24|M|x|1\n", "1|A|||\n", ""),
            "/u.item:1: expected 24 `|`-separated fields, found 5"
        );
        let bad_flag = items.replacen("|1|", "|2|", 1);
        assert_eq!(
            error("1|24|M|x|1\n", &bad_flag, ""),
            "/u.item:1: genre flag 2 (`Action`) is `2`, expected 0 or 1"
        );
        let bad_date = items.replace("01-Jan-1990", "Jan 1990");
        assert_eq!(
            error("1|24|M|x|1\n", &bad_date, ""),
            "/u.item:1: release date `Jan 1990` is not like 01-Jan-1995"
        );
    }

    /// The real MovieLens-100K folder; skipped (with a message) where it is absent.
    #[test]
    fn real_movielens_100k_has_the_published_counts() {
        let dir = default_dir();
        if !dir.join("u.data").exists() {
            eprintln!("skipping: MovieLens-100K not found at {} (set {DIR_ENV})", dir.display());
            return;
        }
        let dataset = load(&dir).unwrap();
        let report = dataset.quality_report();
        println!("{report}");
        assert_eq!(
            (dataset.num_shoppers(), dataset.num_items(), dataset.interactions.len()),
            (943, 1682, 100_000)
        );
        assert_eq!(report.duplicates_collapsed, 0);
        assert_eq!(
            (report.unknown_category, report.unknown_brand, report.unknown_price),
            (1682, 1682, 1682)
        );
        assert_eq!(dataset.stores.len(), 11);
        let sizes = dataset.store_sizes();
        assert_eq!(sizes.iter().sum::<usize>(), 943);
        assert!(sizes.iter().all(|&size| size > 0), "{sizes:?}");
        assert_eq!(report.stores.iter().map(|s| s.events).sum::<u64>(), 100_000);
        let years: BTreeMap<bool, usize> = dataset.catalog.items.iter().fold(BTreeMap::new(), |mut m, i| {
            *m.entry(i.year.is_some()).or_default() += 1;
            m
        });
        println!("items with a year: {years:?}");
        assert!(years[&true] >= 1680, "{years:?}");
        assert!(dataset.catalog.items.iter().all(|item| !item.genres.is_empty()));
    }
}
