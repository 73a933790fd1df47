//! The rocksdb database under a member's data directory: its column families, and the checks
//! that refuse a directory that is corrupt, foreign or from another version.
//!
//! Layout (every integer key big-endian, so rocksdb's byte order is numeric order):
//!
//! | column family | key | value |
//! | --- | --- | --- |
//! | `log` | Raft log index (u64) | a postcard Raft entry |
//! | `kv` | user key | the key's current [`KvRecord`](crate::keyspace::KvRecord) |
//! | `history` | revision (u64) + sub-revision (u32) | the change made there, with the previous record |
//! | `meta` | a name | format version, identity, Raft vote and pointers, keyspace state |

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBRecoveryMode, Options, WriteOptions,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_HISTORY: &str = "history";
pub(crate) const CF_META: &str = "meta";
const COLUMN_FAMILIES: [&str; 4] = [CF_LOG, CF_KV, CF_HISTORY, CF_META];

/// Bumped whenever the on-disk layout changes in a way an older build could misread.
pub(crate) const FORMAT_VERSION: u32 = 1;

const META_FORMAT: &[u8] = b"format";
const META_IDENTITY: &[u8] = b"identity";

/// Whose data this is: written once, in the same batch as the format version, when the
/// directory is first used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    pub(crate) cluster_id: Uuid,
    pub(crate) member_id: u64,
}

/// Whom the caller expects the directory to belong to, so that someone else's is refused.
#[derive(Clone, Debug)]
pub(crate) struct Expect {
    pub(crate) member_id: u64,
    /// The cluster, when the caller knows it (a configured initial cluster, or a join).
    pub(crate) cluster_id: Option<Uuid>,
    /// The identity a fresh directory takes when `cluster_id` is not known.
    pub(crate) fresh_cluster_id: Uuid,
}

#[derive(Debug)]
pub(crate) struct StoreDb {
    db: DB,
    path: PathBuf,
}

impl StoreDb {
    /// Opens (or creates) the database at `path` and checks it against `expect`.
    pub(crate) fn open(path: &Path, expect: &Expect) -> Result<(StoreDb, Identity)> {
        let refuse = |problem: String| Error::DataDir { path: path.display().to_string(), problem };
        if path.exists() && !path.join("CURRENT").exists() {
            let has_files = std::fs::read_dir(path)
                .map_err(|e| refuse(format!("cannot read the directory: {e}")))?
                .next()
                .is_some();
            if has_files {
                return Err(refuse("holds files but no database (rocksdb CURRENT file missing)".into()));
            }
        }
        std::fs::create_dir_all(path).map_err(|e| refuse(format!("cannot create the directory: {e}")))?;

        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let families = COLUMN_FAMILIES.map(|name| ColumnFamilyDescriptor::new(name, family_options(name, &cache)));
        let db = DB::open_cf_descriptors(&db_options(), path, families)
            .map_err(|e| refuse(format!("cannot open the database: {e}")))?;
        let db = StoreDb { db, path: path.to_owned() };
        let identity = db.check_identity(expect).map_err(refuse)?;
        Ok((db, identity))
    }

    fn check_identity(&self, expect: &Expect) -> std::result::Result<Identity, String> {
        let Expect { member_id, cluster_id, fresh_cluster_id } = expect;
        let format = self.db.get_cf(self.cf(CF_META), META_FORMAT).map_err(|e| format!("cannot read: {e}"))?;
        let Some(format) = format else {
            if !self.is_empty()? {
                return Err("holds data but no format marker: corrupt, or not a flotilla store".into());
            }
            let identity = Identity { cluster_id: cluster_id.unwrap_or(*fresh_cluster_id), member_id: *member_id };
            let mut batch = rocksdb::WriteBatch::default();
            batch.put_cf(self.cf(CF_META), META_FORMAT, FORMAT_VERSION.to_be_bytes());
            batch.put_cf(self.cf(CF_META), META_IDENTITY, encode(&identity));
            self.db.write_opt(batch, &sync_write()).map_err(|e| format!("cannot initialise: {e}"))?;
            return Ok(identity);
        };
        let format = <[u8; 4]>::try_from(format.as_slice())
            .map(u32::from_be_bytes)
            .map_err(|_| format!("format marker is {} bytes, expected 4: corrupt", format.len()))?;
        if format != FORMAT_VERSION {
            return Err(format!(
                "on-disk format version {format}, but this build reads version {FORMAT_VERSION} (incompatible version)"
            ));
        }
        let identity: Identity = self
            .get_meta(META_IDENTITY)
            .map_err(|e| e.to_string())?
            .ok_or("format marker present but identity missing: corrupt")?;
        if let Some(expected) = cluster_id
            && *expected != identity.cluster_id
        {
            return Err(format!(
                "belongs to cluster {}, but this member was configured for cluster {expected}",
                identity.cluster_id
            ));
        }
        if identity.member_id != *member_id {
            return Err(format!(
                "belongs to member {} of cluster {}, but this member was started as member {member_id}",
                identity.member_id, identity.cluster_id
            ));
        }
        Ok(identity)
    }

    fn is_empty(&self) -> std::result::Result<bool, String> {
        for name in COLUMN_FAMILIES {
            let mut iter = self.db.raw_iterator_cf(self.cf(name));
            iter.seek_to_first();
            if iter.valid() {
                return Ok(false);
            }
            iter.status().map_err(|e| format!("cannot read: {e}"))?;
        }
        Ok(true)
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    /// The bytes the database takes on disk (its files) and in its memtables, as RocksDB
    /// estimates them; `None` if it cannot tell.
    pub(crate) fn size(&self) -> Option<u64> {
        let mut total = 0;
        for name in COLUMN_FAMILIES {
            let cf = self.cf(name);
            for property in ["rocksdb.total-sst-files-size", "rocksdb.size-all-mem-tables"] {
                total += self.db.property_int_value_cf(cf, property).ok()??;
            }
        }
        Some(total)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("every column family is opened with the database")
    }

    /// Reads and decodes one `meta` value.
    pub(crate) fn get_meta<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.db.get_pinned_cf(self.cf(CF_META), key)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|e| self.corrupt(format!("meta key {}: {e}", String::from_utf8_lossy(key)))),
        }
    }

    pub(crate) fn corrupt(&self, what: String) -> Error {
        Error::DataDir { path: self.path.display().to_string(), problem: format!("corrupt: {what}") }
    }
}

/// Memory the block cache may hold, shared by all column families. Small on purpose: the
/// store serves from the OS page cache too, and a member on an edge box has tens of MB to spend.
const BLOCK_CACHE_BYTES: usize = 16 << 20;

/// Memtable size per column family before it is flushed; `log` and `kv` take most writes.
const WRITE_BUFFER_BYTES: usize = 16 << 20;

/// Bound on the WAL before rocksdb flushes old memtables, so that recovery after a crash replays
/// a bounded amount.
const MAX_TOTAL_WAL_BYTES: u64 = 64 << 20;

fn db_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // Verify checksums on open and on reads, so corruption is reported instead of served.
    opts.set_paranoid_checks(true);
    // Recover to the last consistent point of the WAL: a torn tail (power loss) is dropped, and
    // Raft re-applies what the synced log holds.
    opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(2);
    opts.set_max_log_file_size(1 << 20);
    opts
}

fn family_options(name: &str, cache: &Cache) -> Options {
    let mut opts = Options::default();
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    opts.set_write_buffer_size(if name == CF_META { 1 << 20 } else { WRITE_BUFFER_BYTES });
    opts.set_max_write_buffer_number(2);
    opts
}

/// Options for a write that must be on disk before it returns.
pub(crate) fn sync_write() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("encoding to a Vec cannot fail")
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> std::result::Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(member_id: u64, cluster: Uuid) -> Expect {
        Expect { member_id, cluster_id: None, fresh_cluster_id: cluster }
    }

    #[test]
    fn a_fresh_directory_takes_the_identity_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Uuid::new_v4();
        let (_, identity) = StoreDb::open(&dir.path().join("db"), &expect(1, cluster)).unwrap();
        assert_eq!(identity, Identity { cluster_id: cluster, member_id: 1 });
        let (_, again) = StoreDb::open(&dir.path().join("db"), &expect(1, Uuid::new_v4())).unwrap();
        assert_eq!(again, identity, "an existing directory keeps its cluster id");
    }

    #[test]
    fn another_members_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Uuid::new_v4();
        drop(StoreDb::open(&dir.path().join("db"), &expect(2, cluster)).unwrap());
        let err = StoreDb::open(&dir.path().join("db"), &expect(3, cluster)).unwrap_err();
        assert!(err.to_string().contains("belongs to member 2"), "{err}");
    }

    #[test]
    fn another_clusters_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(StoreDb::open(&dir.path().join("db"), &expect(1, Uuid::new_v4())).unwrap());
        let mine = Uuid::new_v4();
        let err = StoreDb::open(
            &dir.path().join("db"),
            &Expect { member_id: 1, cluster_id: Some(mine), fresh_cluster_id: mine },
        )
        .unwrap_err();
        assert!(err.to_string().contains("belongs to cluster"), "{err}");
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (db, _) = StoreDb::open(&path, &expect(1, Uuid::new_v4())).unwrap();
        db.db.put_cf(db.cf(CF_META), META_FORMAT, 7u32.to_be_bytes()).unwrap();
        drop(db);
        let err = StoreDb::open(&path, &expect(1, Uuid::new_v4())).unwrap_err();
        assert!(err.to_string().contains("format version 7"), "{err}");
        assert!(err.to_string().contains("incompatible version"), "{err}");
    }

    #[test]
    fn data_without_a_marker_is_not_reinitialised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let (db, _) = StoreDb::open(&path, &expect(1, Uuid::new_v4())).unwrap();
        db.db.put_cf(db.cf(CF_KV), b"k", b"v").unwrap();
        db.db.delete_cf(db.cf(CF_META), META_FORMAT).unwrap();
        drop(db);
        let err = StoreDb::open(&path, &expect(1, Uuid::new_v4())).unwrap_err();
        assert!(err.to_string().contains("no format marker"), "{err}");
    }

    #[test]
    fn a_directory_of_other_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let err = StoreDb::open(dir.path(), &expect(1, Uuid::new_v4())).unwrap_err();
        assert!(err.to_string().contains("no database"), "{err}");
    }

    #[test]
    fn a_corrupt_database_is_refused_with_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        drop(StoreDb::open(&path, &expect(1, Uuid::new_v4())).unwrap());
        let current = std::fs::read_to_string(path.join("CURRENT")).unwrap();
        std::fs::write(path.join(current.trim()), b"garbage, not a manifest").unwrap();
        let err = StoreDb::open(&path, &expect(1, Uuid::new_v4())).unwrap_err();
        assert!(err.to_string().contains("cannot open the database"), "{err}");
    }
}
