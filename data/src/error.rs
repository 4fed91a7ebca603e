//! The one error type of the crate.
//!
//! Every problem found in an input file carries the file's path and the 1-based line, because a
//! data engineer fixing a 100 MB export needs to jump straight to the row, not re-run a loader
//! under a debugger.

use std::path::{Path, PathBuf};

/// Why loading, generating or splitting data failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be opened or read at all.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A row (or the header, line 1) is malformed; `message` says what is wrong with it.
    #[error("{}:{line}: {message}", path.display())]
    Row { path: PathBuf, line: u64, message: String },
    /// A parameter given in code (a generator or split configuration) cannot be honoured.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Dense ids ran out (more than `u32::MAX` items, more than `u16::MAX` stores...).
    #[error("too many {what}: at most {max} are supported")]
    Overflow { what: &'static str, max: u64 },
}

impl DataError {
    pub(crate) fn row(path: &Path, line: u64, message: impl Into<String>) -> Self {
        DataError::Row {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
