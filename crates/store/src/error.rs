//! Why the store could not do something.

use std::path::PathBuf;

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database open.
    #[error(
        "the state database {path} is in use by another process; is another palisade agent running with the same --state-dir?"
    )]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The database file could not be opened.
    #[error("cannot open the state database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::DatabaseError,
    },
    /// The database was written by a newer palisade.
    #[error(
        "the state database {path} was written by a newer palisade (format {found}, this one reads up to {newest}); upgrade palisade"
    )]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// The format it has.
        found: u64,
        /// The newest format this palisade reads.
        newest: u8,
    },
    /// The database or its directory could not be made private.
    #[error(
        "cannot keep {path} private (mode 0600 for a database, 0700 for its directory): {source}"
    )]
    Private {
        /// The file or directory.
        path: PathBuf,
        /// Why the mode could not be set.
        #[source]
        source: std::io::Error,
    },
    /// A transaction or table operation failed inside redb.
    #[error(
        "state database error: {0}; check the disk (space, errors in the kernel log) under the state directory"
    )]
    Db(String),
    /// A stored decision could not be decoded.
    #[error(
        "a stored decision could not be decoded (format {format}): {reason}; the state database is damaged: restore it or move it away (a joined node gets the network's decisions again)"
    )]
    Corrupt {
        /// The store's format.
        format: u8,
        /// What was wrong with it.
        reason: String,
    },
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

/// The store's results.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
