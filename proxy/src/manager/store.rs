//! What the manager's two redb files (the journal and the audit trail) share: records
//! kept as JSON, one error for the storage and for a record that does not decode, and
//! the clock their entries are stamped with.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("record {what} unreadable: {source}")]
    Record {
        what: String,
        source: serde_json::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] redb::Error),
}

/// `From` each of redb's per-operation errors (they all convert into `redb::Error`) for an
/// error type that has `From<StoreError>`, so `?` works on every redb call.
macro_rules! from_redb {
    ($target:ty) => {
        $crate::manager::store::from_redb!(@each $target;
            redb::DatabaseError,
            redb::TransactionError,
            redb::TableError,
            redb::StorageError,
            redb::CommitError
        );
    };
    (@each $target:ty; $($t:ty),*) => {$(
        impl From<$t> for $target {
            fn from(e: $t) -> Self {
                <$target>::from($crate::manager::store::StoreError::Storage(e.into()))
            }
        }
    )*};
}
pub(crate) use from_redb;

pub fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Record {
        what: what.to_owned(),
        source,
    })
}

pub fn decode<T: for<'de> Deserialize<'de>>(raw: &[u8], what: &str) -> Result<T, StoreError> {
    serde_json::from_slice(raw).map_err(|source| StoreError::Record {
        what: what.to_owned(),
        source,
    })
}

/// Unix seconds; a clock before 1970 counts as 0 rather than failing a write.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
