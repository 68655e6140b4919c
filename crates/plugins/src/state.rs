//! Durable per-plugin state (ABI v1.2): one redb database per plugin.
//!
//! The file is `<data_dir>/plugin-state/<plugin>.redb` (in memory without a data directory).
//! redb commits are crash-safe: a set either happened or did not, after a crash too. Each
//! `set` and `delete` is one committed write transaction, done before the call returns. The
//! store belongs to the plugin, not to an instance or a version: it survives a trap, a hot
//! reload and an agent restart. Quotas (bytes of keys and values together, and keys) are
//! checked before a write; the totals are counted once when the store opens and kept since.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serf_plugin_sdk::abi::{self, Status};

const TABLE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("state");

/// What a plugin's `[plugins.NAME.state]` table grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateGrant {
    /// Bytes of keys and values together.
    pub max_bytes: u64,
    /// Keys.
    pub max_keys: u64,
    /// Largest value, at most [`abi::MAX_STATE_VALUE_BYTES`].
    pub max_value_bytes: usize,
}

impl StateGrant {
    /// 16 MiB.
    pub const DEFAULT_MAX_BYTES: u64 = 16 << 20;
    /// Ten thousand keys.
    pub const DEFAULT_MAX_KEYS: u64 = 10_000;
}

/// Why a state call failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A key empty or over [`abi::MAX_STATE_KEY_BYTES`], a value over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// The write would go over the plugin's quota.
    #[error("quota: {0}")]
    Quota(String),
    /// No such key.
    #[error("no such key")]
    NotFound,
    /// The database failed (disk full, a broken file).
    #[error("state database: {0}")]
    Database(String),
}

impl StateError {
    /// The status the guest sees.
    pub fn status(&self) -> Status {
        match self {
            StateError::TooLarge(_) | StateError::Quota(_) => Status::TooLarge,
            StateError::NotFound => Status::NotFound,
            StateError::Database(_) => Status::Unavailable,
        }
    }
}

fn db_error(error: impl std::fmt::Display) -> StateError {
    StateError::Database(error.to_string())
}

/// Totals kept in step with the database.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    bytes: u64,
    keys: u64,
}

/// One plugin's store.
pub struct StateStore {
    db: Database,
    path: Option<PathBuf>,
    /// Writes go one at a time (redb's own rule) with the totals they change.
    usage: Mutex<Usage>,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateStore")
            .field("path", &self.path)
            .finish()
    }
}

impl StateStore {
    /// Opens (or creates) the store in `dir`, or in memory without one. Blocking.
    pub fn open(dir: Option<&Path>, plugin: &str) -> Result<StateStore, StateError> {
        let (db, path) = match dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(db_error)?;
                let path = dir.join(format!("{plugin}.redb"));
                (Database::create(&path).map_err(db_error)?, Some(path))
            }
            None => (
                Database::builder()
                    .create_with_backend(redb::backends::InMemoryBackend::new())
                    .map_err(db_error)?,
                None,
            ),
        };
        let txn = db.begin_write().map_err(db_error)?;
        let usage = {
            let table = txn.open_table(TABLE).map_err(db_error)?;
            let mut usage = Usage {
                keys: table.len().map_err(db_error)?,
                bytes: 0,
            };
            for entry in table.iter().map_err(db_error)? {
                let (key, value) = entry.map_err(db_error)?;
                usage.bytes += (key.value().len() + value.value().len()) as u64;
            }
            usage
        };
        txn.commit().map_err(db_error)?;
        Ok(StateStore {
            db,
            path,
            usage: Mutex::new(usage),
        })
    }

    fn usage(&self) -> MutexGuard<'_, Usage> {
        self.usage.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// (bytes, keys) stored.
    pub fn totals(&self) -> (u64, u64) {
        let usage = *self.usage();
        (usage.bytes, usage.keys)
    }

    /// The value under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Vec<u8>, StateError> {
        check_key(key)?;
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(TABLE).map_err(db_error)?;
        let value = table.get(key).map_err(db_error)?;
        value
            .map(|value| value.value().to_vec())
            .ok_or(StateError::NotFound)
    }

    /// Stores `value` under `key`, committed before it returns, if the quota allows.
    pub fn set(&self, grant: &StateGrant, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        check_key(key)?;
        let max_value = grant.max_value_bytes.min(abi::MAX_STATE_VALUE_BYTES);
        if value.len() > max_value {
            return Err(StateError::TooLarge(format!(
                "a value of {} bytes is over the limit of {max_value}",
                value.len()
            )));
        }
        let mut usage = self.usage();
        let txn = self.db.begin_write().map_err(db_error)?;
        let new_usage = {
            let mut table = txn.open_table(TABLE).map_err(db_error)?;
            let old = table
                .get(key)
                .map_err(db_error)?
                .map(|old| old.value().len() as u64);
            let entry = (key.len() + value.len()) as u64;
            let new_usage = match old {
                Some(old_value) => Usage {
                    bytes: usage.bytes - (key.len() as u64 + old_value) + entry,
                    keys: usage.keys,
                },
                None => Usage {
                    bytes: usage.bytes + entry,
                    keys: usage.keys + 1,
                },
            };
            if new_usage.keys > grant.max_keys {
                return Err(StateError::Quota(format!(
                    "{} keys already (max_keys)",
                    usage.keys
                )));
            }
            if new_usage.bytes > grant.max_bytes {
                return Err(StateError::Quota(format!(
                    "{} bytes would be over max_bytes = {}",
                    new_usage.bytes, grant.max_bytes
                )));
            }
            table.insert(key, value).map_err(db_error)?;
            new_usage
        };
        txn.commit().map_err(db_error)?;
        *usage = new_usage;
        Ok(())
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &[u8]) -> Result<(), StateError> {
        check_key(key)?;
        let mut usage = self.usage();
        let txn = self.db.begin_write().map_err(db_error)?;
        let removed = {
            let mut table = txn.open_table(TABLE).map_err(db_error)?;
            let removed = table.remove(key).map_err(db_error)?;
            removed.map(|value| value.value().len() as u64)
        };
        let Some(value_len) = removed else {
            return Err(StateError::NotFound);
        };
        txn.commit().map_err(db_error)?;
        usage.bytes -= key.len() as u64 + value_len;
        usage.keys -= 1;
        Ok(())
    }

    /// Keys starting with `prefix`, after `after`, at most `limit` (capped), in byte order.
    pub fn list(&self, request: &abi::StateList) -> Result<abi::StateKeys, StateError> {
        let limit = match request.limit {
            0 => abi::MAX_STATE_LIST_KEYS,
            n => n.min(abi::MAX_STATE_LIST_KEYS),
        } as usize;
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(TABLE).map_err(db_error)?;
        let start: &[u8] = if request.after.as_slice() > request.prefix.as_slice() {
            &request.after
        } else {
            &request.prefix
        };
        let mut keys = Vec::new();
        let mut more = false;
        for entry in table.range(start..).map_err(db_error)? {
            let (key, _) = entry.map_err(db_error)?;
            let key = key.value();
            if !key.starts_with(&request.prefix) {
                break;
            }
            if !request.after.is_empty() && key <= request.after.as_slice() {
                continue;
            }
            if keys.len() == limit {
                more = true;
                break;
            }
            keys.push(serde_bytes::ByteBuf::from(key.to_vec()));
        }
        Ok(abi::StateKeys { keys, more })
    }
}

fn check_key(key: &[u8]) -> Result<(), StateError> {
    if key.is_empty() || key.len() > abi::MAX_STATE_KEY_BYTES {
        return Err(StateError::TooLarge(format!(
            "a key must have 1 to {} bytes, not {}",
            abi::MAX_STATE_KEY_BYTES,
            key.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRANT: StateGrant = StateGrant {
        max_bytes: 1000,
        max_keys: 3,
        max_value_bytes: 100,
    };

    #[test]
    fn set_get_delete_and_the_quota_with_its_totals() {
        let store = StateStore::open(None, "p").unwrap();
        store.set(&GRANT, b"a", b"1").unwrap();
        store.set(&GRANT, b"a", b"22").unwrap();
        assert_eq!(store.get(b"a").unwrap(), b"22");
        assert_eq!(store.totals(), (3, 1));
        store.set(&GRANT, b"b", b"").unwrap();
        store.set(&GRANT, b"c", b"").unwrap();
        assert!(matches!(
            store.set(&GRANT, b"d", b""),
            Err(StateError::Quota(_))
        ));
        store.set(&GRANT, b"c", b"x").unwrap();
        assert!(matches!(
            store.set(&GRANT, b"c", &[0; 101]),
            Err(StateError::TooLarge(_))
        ));
        assert!(matches!(store.get(b""), Err(StateError::TooLarge(_))));
        store.delete(b"b").unwrap();
        assert!(matches!(store.delete(b"b"), Err(StateError::NotFound)));
        assert!(matches!(store.get(b"b"), Err(StateError::NotFound)));
        assert_eq!(store.totals(), (5, 2));
        let bytes = StateGrant {
            max_bytes: 10,
            ..GRANT
        };
        assert!(matches!(
            store.set(&bytes, b"e", &[0; 9]),
            Err(StateError::Quota(_))
        ));
    }

    #[test]
    fn lists_page_through_a_prefix_in_order() {
        let store = StateStore::open(None, "p").unwrap();
        let grant = StateGrant {
            max_keys: 100,
            ..GRANT
        };
        for key in ["a/1", "a/2", "a/3", "b/1", "a"] {
            store.set(&grant, key.as_bytes(), b"v").unwrap();
        }
        let list = |prefix: &str, after: &str, limit| {
            let keys = store
                .list(&abi::StateList {
                    prefix: prefix.into(),
                    after: after.into(),
                    limit,
                })
                .unwrap();
            let names: Vec<String> = keys
                .keys
                .iter()
                .map(|k| String::from_utf8(k.to_vec()).unwrap())
                .collect();
            (names.join(","), keys.more)
        };
        assert_eq!(list("a/", "", 0), ("a/1,a/2,a/3".into(), false));
        assert_eq!(list("a/", "", 2), ("a/1,a/2".into(), true));
        assert_eq!(list("a/", "a/2", 2), ("a/3".into(), false));
        assert_eq!(list("", "", 0), ("a,a/1,a/2,a/3,b/1".into(), false));
    }

    #[test]
    fn the_store_and_its_totals_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(Some(dir.path()), "p").unwrap();
            store.set(&GRANT, b"k", b"value").unwrap();
        }
        let store = StateStore::open(Some(dir.path()), "p").unwrap();
        assert_eq!(store.get(b"k").unwrap(), b"value");
        assert_eq!(store.totals(), (6, 1));
    }
}
