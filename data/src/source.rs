//! Where a run's data comes from, as a person writes it on a command line: `synthetic` (the
//! built-in generator), `movielens:PATH` (a MovieLens-100K folder, stores by ZIP digit) or
//! `csv:DIR` (the documented CSV layout, see [`crate::csv_reader`]).

use std::path::PathBuf;

use crate::dataset::Dataset;
use crate::error::Result;
use crate::synthetic::SyntheticConfig;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    Synthetic,
    MovieLens(PathBuf),
    Csv(PathBuf),
}

impl std::str::FromStr for DataSource {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.split_once(':') {
            Some(("movielens", path)) if !path.is_empty() => Ok(Self::MovieLens(PathBuf::from(path))),
            Some(("csv", path)) if !path.is_empty() => Ok(Self::Csv(PathBuf::from(path))),
            None if s == "synthetic" => Ok(Self::Synthetic),
            _ => Err(format!(
                "unknown data source {s:?}: use `synthetic`, `movielens:PATH` or `csv:DIR`"
            )),
        }
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Synthetic => f.write_str("synthetic"),
            Self::MovieLens(p) => write!(f, "movielens:{}", p.display()),
            Self::Csv(p) => write!(f, "csv:{}", p.display()),
        }
    }
}

impl DataSource {
    /// Loads the data; `synthetic` says how to generate the synthetic kind.
    pub fn load(&self, synthetic: &SyntheticConfig) -> Result<Dataset> {
        match self {
            Self::Synthetic => crate::synthetic::generate(synthetic),
            Self::MovieLens(path) => crate::movielens::load(path),
            Self::Csv(dir) => crate::csv_reader::load_dir(dir),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_both_kinds_and_refuses_others() {
        assert_eq!("synthetic".parse::<DataSource>(), Ok(DataSource::Synthetic));
        let ml: DataSource = "movielens:/data/ml-100k".parse().unwrap();
        assert_eq!(ml, DataSource::MovieLens("/data/ml-100k".into()));
        assert_eq!(ml.to_string(), "movielens:/data/ml-100k");
        assert_eq!("csv:exports".parse::<DataSource>(), Ok(DataSource::Csv("exports".into())));
        for bad in ["", "movielens:", "csv:", "parquet:x", "Synthetic"] {
            assert!(bad.parse::<DataSource>().is_err(), "{bad}");
        }
    }
}
