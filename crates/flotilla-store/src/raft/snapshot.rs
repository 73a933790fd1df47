//! Snapshot files: the whole state machine (every live key, the retained history and the
//! keyspace clocks) as one checksummed stream, built from a rocksdb snapshot and installed by
//! replacing the state machine's column families.
//!
//! Format: `FLOTSNAP`, a u32 format version, a length-prefixed postcard [`Header`], then records
//! `family: u8, key_len: u32, key, value_len: u32, value`, then a `0` family byte, the record
//! count (u64) and a CRC-32 of everything before it. Integers are big-endian.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rocksdb::{DB, IteratorMode, ReadOptions, SnapshotWithThreadMode, WriteBatch};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::SnapshotMeta;
use super::state_machine::{META_INSTALLING, META_STATE_MACHINE, SmMeta};
use crate::db::{CF_HISTORY, CF_KV, CF_META, StoreDb, decode, encode, sync_write};
use crate::error::{Error, Result};
use crate::keyspace::history_key;

const MAGIC: &[u8; 8] = b"FLOTSNAP";
const SNAPSHOT_FORMAT: u32 = 1;
const SUFFIX: &str = "snap";

/// `meta` keys that belong to the state machine and travel with it; the rest (identity, vote,
/// log pointers) belong to the member.
const STATE_MACHINE_META: [&[u8]; 2] = [b"keyspace", META_STATE_MACHINE];

/// Bytes of records loaded per write while installing: bounds memory, not correctness (the
/// install marker makes a half-done install redo itself).
const INSTALL_BATCH_BYTES: usize = 4 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Family {
    End = 0,
    Kv = 1,
    History = 2,
    Meta = 3,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::End => "",
            Family::Kv => CF_KV,
            Family::History => CF_HISTORY,
            Family::Meta => CF_META,
        }
    }

    fn from_byte(byte: u8) -> Option<Family> {
        [Family::End, Family::Kv, Family::History, Family::Meta].into_iter().find(|f| *f as u8 == byte)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Header {
    pub(crate) cluster_id: Uuid,
    pub(crate) meta: SnapshotMeta,
}

/// The directory of snapshot files. It holds one published snapshot (`*.snap`, named so that
/// name order is log order) and, transiently, files being built or received (`*.tmp`).
#[derive(Debug)]
pub(crate) struct SnapshotDir {
    path: PathBuf,
    /// Serialises publishing, so a slow build cannot replace a newer snapshot.
    publish: Mutex<()>,
}

impl SnapshotDir {
    pub(crate) fn open(path: PathBuf) -> Result<Self> {
        fs::create_dir_all(&path).map_err(|e| Error::storage("create the snapshot directory", e))?;
        for entry in fs::read_dir(&path).map_err(|e| Error::storage("read the snapshot directory", e))? {
            let entry = entry.map_err(|e| Error::storage("read the snapshot directory", e))?;
            if entry.path().extension().is_some_and(|ext| ext == "tmp") {
                // Left by a build or a transfer that a crash interrupted.
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(SnapshotDir { path, publish: Mutex::new(()) })
    }

    /// Writes the database's current state machine to a new snapshot file and publishes it.
    /// Blocking: run it off the async runtime.
    pub(crate) fn build(&self, db: &StoreDb, cluster_id: Uuid) -> Result<(SnapshotMeta, PathBuf)> {
        let snapshot = db.db().snapshot();
        let sm: SmMeta = match snapshot.get_pinned_cf(db.cf(CF_META), META_STATE_MACHINE)? {
            Some(bytes) => decode(&bytes).map_err(|e| db.corrupt(format!("state machine meta: {e}")))?,
            None => SmMeta::default(),
        };
        let last = sm.last_applied;
        let snapshot_id = format!(
            "{}-{}-{}",
            last.as_ref().map_or(0, |l| l.leader_id.term),
            last.as_ref().map_or(0, |l| l.index),
            Uuid::new_v4().simple()
        );
        let meta = SnapshotMeta { last_log_id: last, last_membership: sm.membership, snapshot_id };
        let header = Header { cluster_id, meta: meta.clone() };
        let tmp = self.path.join(format!("building-{}.tmp", meta.snapshot_id));
        write_file(&tmp, &header, db, &snapshot).map_err(|e| Error::storage("write a snapshot", e))?;
        let path = self.publish(&tmp, &meta)?;
        Ok((meta, path))
    }

    /// A new file to receive a snapshot into.
    pub(crate) fn incoming(&self) -> Result<(PathBuf, File)> {
        let path = self.path.join(format!("incoming-{}.tmp", Uuid::new_v4().simple()));
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::storage("create a snapshot file", e))?;
        Ok((path, file))
    }

    /// The published snapshot, if any, with its header.
    pub(crate) fn current(&self) -> Result<Option<(Header, PathBuf)>> {
        let Some(path) = self.published()?.pop() else {
            return Ok(None);
        };
        let header = read_header(&mut BufReader::new(open(&path)?)).map_err(|e| corrupt_snapshot(&path, e))?;
        Ok(Some((header, path)))
    }

    /// Checks a received file completely, then publishes it. Returns its header and new path.
    pub(crate) fn accept(&self, received: &Path, cluster_id: Uuid) -> Result<(Header, PathBuf)> {
        let header = verify(received).map_err(|e| corrupt_snapshot(received, e))?;
        if header.cluster_id != cluster_id {
            let _ = fs::remove_file(received);
            return Err(Error::DataDir {
                path: received.display().to_string(),
                problem: format!(
                    "snapshot from cluster {}, but this member belongs to cluster {cluster_id}",
                    header.cluster_id
                ),
            });
        }
        let path = self.publish(received, &header.meta)?;
        Ok((header, path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn published(&self) -> Result<Vec<PathBuf>> {
        let mut snaps = Vec::new();
        for entry in fs::read_dir(&self.path).map_err(|e| Error::storage("read the snapshot directory", e))? {
            let path = entry.map_err(|e| Error::storage("read the snapshot directory", e))?.path();
            if path.extension().is_some_and(|ext| ext == SUFFIX) {
                snaps.push(path);
            }
        }
        snaps.sort();
        Ok(snaps)
    }

    fn publish(&self, file: &Path, meta: &SnapshotMeta) -> Result<PathBuf> {
        let _guard = self.publish.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = meta.last_log_id.as_ref().map_or(0, |l| l.index);
        let path = self.path.join(format!("{index:020}-{}.{SUFFIX}", meta.snapshot_id));
        fs::rename(file, &path).map_err(|e| Error::storage("publish a snapshot", e))?;
        sync_dir(&self.path).map_err(|e| Error::storage("sync the snapshot directory", e))?;
        let mut published = self.published()?;
        published.pop();
        for old in published {
            let _ = fs::remove_file(old);
        }
        Ok(path)
    }
}

/// Replaces the state machine in `db` with the snapshot at `path`. A marker written first and
/// removed by the final, synced batch makes an interrupted install redo itself on restart.
pub(crate) fn install(db: &StoreDb, path: &Path) -> Result<SnapshotMeta> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let raw = db.db();
    raw.put_cf_opt(db.cf(CF_META), META_INSTALLING, encode(&name), &sync_write())?;
    clear_family(raw, db, CF_KV)?;
    raw.delete_range_cf(db.cf(CF_HISTORY), history_key(0, 0), history_key(u64::MAX, u32::MAX))?;

    let mut reader = SnapshotReader::open(path).map_err(|e| corrupt_snapshot(path, e))?;
    let header = read_header(&mut reader).map_err(|e| corrupt_snapshot(path, e))?;
    let mut batch = WriteBatch::default();
    while let Some((family, key, value)) = reader.next_record().map_err(|e| corrupt_snapshot(path, e))? {
        batch.put_cf(db.cf(family.name()), key, value);
        if batch.size_in_bytes() >= INSTALL_BATCH_BYTES {
            raw.write(std::mem::take(&mut batch))?;
        }
    }
    reader.finish().map_err(|e| corrupt_snapshot(path, e))?;
    batch.delete_cf(db.cf(CF_META), META_INSTALLING);
    raw.write_opt(batch, &sync_write())?;
    Ok(header.meta)
}

/// Deletes every key of a column family whose keys have no fixed length.
fn clear_family(raw: &DB, db: &StoreDb, family: &str) -> Result<()> {
    let mut iter = raw.raw_iterator_cf(db.cf(family));
    iter.seek_to_last();
    if let Some(last) = iter.key() {
        let mut end = last.to_vec();
        end.push(0);
        raw.delete_range_cf(db.cf(family), Vec::new(), end)?;
    }
    Ok(iter.status()?)
}

fn write_file(path: &Path, header: &Header, db: &StoreDb, snapshot: &SnapshotWithThreadMode<'_, DB>) -> io::Result<()> {
    let file = File::create(path)?;
    let mut out = CrcWriter { inner: BufWriter::with_capacity(1 << 20, file), crc: crc32fast::Hasher::new() };
    out.write_all(MAGIC)?;
    out.write_all(&SNAPSHOT_FORMAT.to_be_bytes())?;
    let header = encode(header);
    out.write_all(&(header.len() as u32).to_be_bytes())?;
    out.write_all(&header)?;
    let mut count = 0u64;
    for family in [Family::Kv, Family::History] {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(snapshot);
        for item in db.db().iterator_cf_opt(db.cf(family.name()), opts, IteratorMode::Start) {
            let (key, value) = item.map_err(io::Error::other)?;
            write_record(&mut out, family, &key, &value)?;
            count += 1;
        }
    }
    for key in STATE_MACHINE_META {
        if let Some(value) = snapshot.get_pinned_cf(db.cf(CF_META), key).map_err(io::Error::other)? {
            write_record(&mut out, Family::Meta, key, &value)?;
            count += 1;
        }
    }
    out.write_all(&[Family::End as u8])?;
    out.write_all(&count.to_be_bytes())?;
    let crc = out.crc.clone().finalize();
    let mut file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.write_all(&crc.to_be_bytes())?;
    file.sync_all()
}

fn write_record(out: &mut impl Write, family: Family, key: &[u8], value: &[u8]) -> io::Result<()> {
    out.write_all(&[family as u8])?;
    out.write_all(&(key.len() as u32).to_be_bytes())?;
    out.write_all(key)?;
    out.write_all(&(value.len() as u32).to_be_bytes())?;
    out.write_all(value)
}

/// Reads a whole file, checking its structure and checksum.
fn verify(path: &Path) -> io::Result<Header> {
    let mut reader = SnapshotReader::open(path)?;
    let header = read_header(&mut reader)?;
    while reader.next_record()?.is_some() {}
    reader.finish()?;
    Ok(header)
}

fn read_header(reader: &mut impl Read) -> io::Result<Header> {
    let mut magic = [0u8; 8];
    reader.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a flotilla snapshot (bad magic)".into()));
    }
    let format = read_u32(reader)?;
    if format != SNAPSHOT_FORMAT {
        return Err(invalid(format!("snapshot format {format}, this build reads {SNAPSHOT_FORMAT}")));
    }
    let len = read_u32(reader)? as usize;
    let mut header = vec![0u8; len];
    reader.read_exact(&mut header)?;
    decode(&header).map_err(|e| invalid(format!("snapshot header: {e}")))
}

/// One record: its column family, key and value.
type Record = (Family, Vec<u8>, Vec<u8>);

struct SnapshotReader {
    inner: BufReader<File>,
    crc: crc32fast::Hasher,
    count: u64,
}

impl SnapshotReader {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(SnapshotReader {
            inner: BufReader::with_capacity(1 << 20, File::open(path)?),
            crc: crc32fast::Hasher::new(),
            count: 0,
        })
    }

    fn next_record(&mut self) -> io::Result<Option<Record>> {
        let mut byte = [0u8; 1];
        self.read_exact(&mut byte)?;
        let family = Family::from_byte(byte[0]).ok_or_else(|| invalid(format!("unknown record family {}", byte[0])))?;
        if family == Family::End {
            return Ok(None);
        }
        let key = self.read_bytes()?;
        let value = self.read_bytes()?;
        self.count += 1;
        Ok(Some((family, key, value)))
    }

    fn read_bytes(&mut self) -> io::Result<Vec<u8>> {
        let len = read_u32(self)? as usize;
        // A corrupt length must not become a huge allocation: no record is bigger than a request.
        if len > 2 * crate::request::MAX_REQUEST_BYTES {
            return Err(invalid(format!("record of {len} bytes")));
        }
        let mut bytes = vec![0u8; len];
        self.read_exact(&mut bytes)?;
        Ok(bytes)
    }

    /// Checks the trailer after the end record: the record count and the checksum.
    fn finish(mut self) -> io::Result<()> {
        let mut count = [0u8; 8];
        self.read_exact(&mut count)?;
        if u64::from_be_bytes(count) != self.count {
            return Err(invalid(format!("trailer says {} records, found {}", u64::from_be_bytes(count), self.count)));
        }
        let expected = self.crc.clone().finalize();
        let mut crc = [0u8; 4];
        self.inner.read_exact(&mut crc)?;
        if u32::from_be_bytes(crc) != expected {
            return Err(invalid("checksum mismatch".into()));
        }
        Ok(())
    }
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn read_u32(reader: &mut impl Read) -> io::Result<u32> {
    let mut bytes = [0u8; 4];
    reader.read_exact(&mut bytes)?;
    Ok(u32::from_be_bytes(bytes))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::storage("open a snapshot", e))
}

fn corrupt_snapshot(path: &Path, err: io::Error) -> Error {
    let problem = if err.kind() == io::ErrorKind::UnexpectedEof { "truncated".to_string() } else { err.to_string() };
    Error::DataDir { path: path.display().to_string(), problem: format!("corrupt snapshot: {problem}") }
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::Expect;
    use crate::keyspace::{Apply, KeyspaceState};
    use crate::request::{Op, TxnRequest};

    fn open_db(dir: &Path, cluster: Uuid) -> StoreDb {
        StoreDb::open(&dir.join("db"), &Expect { member_id: 1, cluster_id: None, fresh_cluster_id: cluster }).unwrap().0
    }

    fn contents(db: &StoreDb) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        for family in [CF_KV, CF_HISTORY] {
            for item in db.db().iterator_cf(db.cf(family), IteratorMode::Start) {
                let (k, v) = item.unwrap();
                all.push((family.to_string(), k.to_vec(), v.to_vec()));
            }
        }
        for key in STATE_MACHINE_META {
            all.push((
                CF_META.to_string(),
                key.to_vec(),
                db.db().get_cf(db.cf(CF_META), key).unwrap().unwrap_or_default(),
            ));
        }
        all
    }

    /// A database with some keys, some deleted, and history behind a compaction.
    fn populated(dir: &Path, cluster: Uuid) -> StoreDb {
        let db = open_db(dir, cluster);
        let mut apply = Apply::new(&db, KeyspaceState::default());
        for i in 0..50 {
            apply.txn(&TxnRequest::default().then([Op::put(format!("k/{}", i % 20), format!("v{i}"))])).unwrap();
        }
        apply.txn(&TxnRequest::default().then([Op::delete("k/3")])).unwrap();
        apply.compact(10).unwrap();
        let (mut batch, _, _) = apply.finish();
        batch.put_cf(db.cf(CF_META), META_STATE_MACHINE, encode(&SmMeta::default()));
        db.db().write(batch).unwrap();
        db
    }

    #[test]
    fn a_snapshot_installs_the_same_state_machine_elsewhere() {
        let cluster = Uuid::new_v4();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = populated(a.path(), cluster);
        let (meta, path) = SnapshotDir::open(a.path().join("snaps")).unwrap().build(&source, cluster).unwrap();

        // The target had other data: all of it is replaced.
        let target = populated(b.path(), cluster);
        target.db().put_cf(target.cf(CF_KV), b"stale", b"x").unwrap();
        let dir = SnapshotDir::open(b.path().join("snaps")).unwrap();
        let received = b.path().join("snaps/incoming-test.tmp");
        std::fs::copy(&path, &received).unwrap();
        let (header, published) = dir.accept(&received, cluster).unwrap();
        assert_eq!(header.meta, meta);
        install(&target, &published).unwrap();
        assert_eq!(contents(&target), contents(&source));
        assert!(target.get_meta::<String>(META_INSTALLING).unwrap().is_none(), "the install marker is cleared");
        assert_eq!(dir.current().unwrap().unwrap().0.meta, meta);
    }

    #[test]
    fn corrupt_truncated_and_foreign_snapshots_are_refused() {
        let cluster = Uuid::new_v4();
        let dir = tempfile::tempdir().unwrap();
        let db = populated(dir.path(), cluster);
        let snaps = SnapshotDir::open(dir.path().join("snaps")).unwrap();
        let (_, path) = snaps.build(&db, cluster).unwrap();
        let bytes = std::fs::read(&path).unwrap();

        let flipped = dir.path().join("snaps/flipped.tmp");
        let mut corrupt = bytes.clone();
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0x40;
        std::fs::write(&flipped, &corrupt).unwrap();
        let err = snaps.accept(&flipped, cluster).unwrap_err().to_string();
        assert!(err.contains("corrupt snapshot"), "{err}");

        let truncated = dir.path().join("snaps/truncated.tmp");
        std::fs::write(&truncated, &bytes[..bytes.len() - 9]).unwrap();
        let err = snaps.accept(&truncated, cluster).unwrap_err().to_string();
        assert!(err.contains("corrupt snapshot"), "{err}");

        let foreign = dir.path().join("snaps/foreign.tmp");
        std::fs::write(&foreign, &bytes).unwrap();
        let err = snaps.accept(&foreign, Uuid::new_v4()).unwrap_err().to_string();
        assert!(err.contains("snapshot from cluster"), "{err}");
        // None of them replaced the published snapshot.
        assert_eq!(snaps.current().unwrap().unwrap().1, path);
    }
}
