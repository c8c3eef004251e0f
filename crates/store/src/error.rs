//! Why the store could not do something.

use std::path::PathBuf;

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the state database {path} is in use by another process; is another palisade agent running with the same --state-dir?"
    )]
    InUse { path: PathBuf },
    #[error("cannot open the state database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error(
        "the state database {path} was written by a newer palisade (format {found}, this one reads up to {newest}); upgrade palisade"
    )]
    TooNew {
        path: PathBuf,
        found: u64,
        newest: u8,
    },
    #[error(
        "cannot keep {path} private (mode 0600 for a database, 0700 for its directory): {source}"
    )]
    Private {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state database error: {0}")]
    Db(String),
    #[error("a stored decision could not be decoded (format {format}): {reason}")]
    Corrupt { format: u8, reason: String },
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.to_string())
            }
        }
    )*};
}
db_err!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError
);

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
