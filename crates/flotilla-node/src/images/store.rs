//! The node's content-addressed image store: blobs under their SHA-256 digest (a module, or a
//! container image's manifest, config and layers), and one small file per reference naming the
//! digest it resolves to (the module's, or the container image's manifest's).
//!
//! ```text
//! <root>/blobs/sha256/<hex>          a blob, verified against its name when written
//! <root>/refs/<escaped reference>    {"digest": "sha256:<hex>", "size": N, "source": "imported", "kind": "module"}
//! <root>/snapshots/<hex>/            a container image unpacked (see `container.rs`)
//! ```
//!
//! Every file is written to a temporary name, flushed to disk and renamed into place, so neither
//! a crash nor a power loss leaves half a module, half a layer or half a reference, and
//! `flotilla image import` can run while the agent does. A layer is written as it arrives
//! ([`BlobWriter`]), never held in memory whole.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use flotilla_wasm::digest as sha256;

use super::Reference;

/// Where an image in the store came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// Put there by `flotilla image import`: the reference means this module on this node, and
    /// no registry is asked about it.
    Imported,
    /// Pulled from a registry.
    Pulled,
}

/// What a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A wasm module or component: the digest is the module's.
    #[default]
    Module,
    /// A container image (Linux layers): the digest is its manifest's.
    Container,
}

/// A reference in the store and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub reference: String,
    pub digest: String,
    pub size: u64,
    pub source: Source,
    pub kind: Kind,
}

#[derive(Serialize, Deserialize)]
struct RefFile {
    digest: String,
    size: u64,
    source: Source,
    /// Absent in the files of a store older than container images: those name modules.
    #[serde(default)]
    kind: Kind,
}

/// Whether `digest` is `sha256:` and 64 lowercase hex digits, the only digests the store keeps.
pub(super) fn is_digest(digest: &str) -> bool {
    digest
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the content's digest is {actual}, not the {expected} it was named by")]
    DigestMismatch { expected: String, actual: String },
    /// An import that is no module or component; nothing was stored.
    #[error(transparent)]
    NotAModule(#[from] flotilla_wasm::LoadError),
}

/// The image store of one node.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn open(root: PathBuf) -> Result<ImageStore, StoreError> {
        for dir in [root.join("blobs/sha256"), root.join("refs"), root.join("snapshots")] {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        // Files a writer killed half-way left (a pull, an import): an hour old, none is being
        // written still.
        for dir in [root.join("blobs"), root.join("refs")] {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let stale = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                if entry.file_name().to_string_lossy().contains(".partial-")
                    && stale.is_some_and(|age| age > std::time::Duration::from_secs(3600))
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(ImageStore { root })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with `digest` is (whether or not it is there). A digest that is none
    /// (`sha256:` and 64 hex digits) names no file of the store: a path that never exists.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        match digest.strip_prefix("sha256:").filter(|_| is_digest(digest)) {
            Some(hex) => self.root.join("blobs/sha256").join(hex),
            None => self.root.join("blobs/sha256/not-a-digest"),
        }
    }

    /// Stores `bytes` under their digest, checking it against `expected` when given.
    pub fn put_blob(&self, bytes: &[u8], expected: Option<&str>) -> Result<String, StoreError> {
        let digest = sha256(bytes);
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(StoreError::DigestMismatch { expected: expected.into(), actual: digest });
        }
        let path = self.blob_path(&digest);
        if !path.exists() {
            write_atomically(&path, bytes)?;
        }
        Ok(digest)
    }

    /// Stores the file at `path` under its digest, checking it against `expected` when given,
    /// without holding it in memory (a layer may be large): the digest and the size.
    pub fn put_file(&self, path: &Path, expected: Option<&str>) -> Result<(String, u64), StoreError> {
        let io = |source| StoreError::Io { path: path.into(), source };
        let mut input = std::fs::File::open(path).map_err(io)?;
        let mut writer = self.blob_writer()?;
        let mut buffer = vec![0; 1 << 16];
        loop {
            let n = std::io::Read::read(&mut input, &mut buffer).map_err(io)?;
            if n == 0 {
                break;
            }
            writer.write(&buffer[..n])?;
        }
        writer.finish(expected)
    }

    /// A blob to write a piece at a time (a layer as it arrives), stored once it is finished.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        let dir = self.root.join("blobs");
        let file = tempfile::Builder::new()
            .prefix("blob.partial-")
            .tempfile_in(&dir)
            .map_err(|source| StoreError::Io { path: dir, source })?;
        Ok(BlobWriter { store: self.clone(), file, digest: ring::digest::Context::new(&ring::digest::SHA256), size: 0 })
    }

    /// Points `reference` at the stored `digest`, a module or a container image's manifest.
    pub fn tag(
        &self,
        reference: &Reference,
        digest: &str,
        size: u64,
        source: Source,
        kind: Kind,
    ) -> Result<Image, StoreError> {
        let name = reference.to_string();
        let record = RefFile { digest: digest.into(), size, source, kind };
        let json = serde_json::to_vec(&record).expect("a reference record serialises");
        write_atomically(&self.ref_path(&name), &json)?;
        Ok(Image { reference: name, digest: digest.into(), size, source, kind })
    }

    /// Imports a module under `reference`, once it is known to be one.
    pub fn import(&self, bytes: &[u8], reference: &Reference) -> Result<Image, StoreError> {
        flotilla_wasm::validate(bytes)?;
        let digest = self.put_blob(bytes, None)?;
        self.tag(reference, &digest, bytes.len() as u64, Source::Imported, Kind::Module)
    }

    /// The stored image `reference` names: by name (a pulled `repo@sha256:<manifest digest>`
    /// is stored under that name too), else, for a reference pinning a digest, the module
    /// with that digest.
    pub fn lookup(&self, reference: &Reference) -> Option<Image> {
        let name = reference.to_string();
        let by_name = std::fs::read(self.ref_path(&name)).ok().and_then(|b| serde_json::from_slice::<RefFile>(&b).ok());
        if let Some(record) = by_name
            && self.blob_path(&record.digest).exists()
        {
            let (digest, size, source, kind) = (record.digest, record.size, record.source, record.kind);
            return Some(Image { reference: name, digest, size, source, kind });
        }
        // A digest names a blob, which is a module or a container image's manifest.
        let digest = reference.digest.as_ref()?;
        let path = self.blob_path(digest);
        let size = std::fs::metadata(&path).ok()?.len();
        let mut magic = [0; 4];
        let module = std::fs::File::open(&path).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic)).is_ok()
            && magic == *b"\0asm";
        let kind = if module { Kind::Module } else { Kind::Container };
        Some(Image { reference: name, digest: digest.clone(), size, source: Source::Pulled, kind })
    }

    /// Every reference in the store, sorted.
    pub fn list(&self) -> Result<Vec<Image>, StoreError> {
        let dir = self.root.join("refs");
        let entries = std::fs::read_dir(&dir).map_err(|source| StoreError::Io { path: dir.clone(), source })?;
        let mut images: Vec<Image> = entries
            .flatten()
            .filter_map(|entry| {
                let name = unescape(entry.file_name().to_str()?)?;
                let record: RefFile = serde_json::from_slice(&std::fs::read(entry.path()).ok()?).ok()?;
                let (digest, size, source, kind) = (record.digest, record.size, record.source, record.kind);
                Some(Image { reference: name, digest, size, source, kind })
            })
            .collect();
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(images)
    }

    fn ref_path(&self, name: &str) -> PathBuf {
        self.root.join("refs").join(escape(name))
    }
}

/// Writes `bytes` to `path` through a temporary file, flushed to disk before it is renamed into
/// place: after a power loss the file is whole or absent.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = |source| StoreError::Io { path: path.into(), source };
    let mut file = tempfile::Builder::new().prefix(".partial-").tempfile_in(dir).map_err(io)?;
    std::io::Write::write_all(&mut file, bytes).map_err(io)?;
    file.as_file().sync_all().map_err(io)?;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// A blob being written: hashed as it is, and stored under its digest when finished (a writer
/// dropped unfinished leaves nothing).
pub struct BlobWriter {
    store: ImageStore,
    file: tempfile::NamedTempFile,
    digest: ring::digest::Context,
    size: u64,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter").field("file", &self.file.path()).field("size", &self.size).finish()
    }
}

impl BlobWriter {
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.digest.update(bytes);
        self.size += bytes.len() as u64;
        std::io::Write::write_all(&mut self.file, bytes)
            .map_err(|source| StoreError::Io { path: self.file.path().into(), source })
    }

    /// What was written so far, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Stores the blob under its digest, flushed to disk first, checking the digest against
    /// `expected` when given: the digest and the size.
    pub fn finish(self, expected: Option<&str>) -> Result<(String, u64), StoreError> {
        let hex: String = self.digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let digest = format!("sha256:{hex}");
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(StoreError::DigestMismatch { expected: expected.into(), actual: digest });
        }
        let io = |source| StoreError::Io { path: self.file.path().into(), source };
        self.file.as_file().sync_all().map_err(io)?;
        let path = self.store.blob_path(&digest);
        self.file.persist(&path).map_err(|e| StoreError::Io { path, source: e.error })?;
        Ok((digest, self.size))
    }
}

/// A reference as a file name: `/`, `:`, `@` and `%` percent-encoded.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 8);
    for c in name.chars() {
        match c {
            '/' => out.push_str("%2F"),
            ':' => out.push_str("%3A"),
            '@' => out.push_str("%40"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(file: &str) -> Option<String> {
    if file.contains(".partial-") {
        return None;
    }
    Some(file.replace("%2F", "/").replace("%3A", ":").replace("%40", "@").replace("%25", "%"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_written_in_pieces_is_stored_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().into()).unwrap();
        let partials = || std::fs::read_dir(dir.path().join("blobs")).unwrap().count();
        let before = partials();
        let mut writer = store.blob_writer().unwrap();
        writer.write(b"hello, ").unwrap();
        writer.write(b"layer").unwrap();
        let (digest, size) = writer.finish(Some(&sha256(b"hello, layer"))).unwrap();
        assert_eq!(size, 12);
        assert_eq!(std::fs::read(store.blob_path(&digest)).unwrap(), b"hello, layer");
        // A blob that is not what it was named by, or one abandoned half-way, leaves nothing.
        let mut wrong = store.blob_writer().unwrap();
        wrong.write(b"tampered").unwrap();
        let err = wrong.finish(Some(&digest)).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        let mut abandoned = store.blob_writer().unwrap();
        abandoned.write(b"half").unwrap();
        drop(abandoned);
        assert_eq!(partials(), before);
        assert!(!store.blob_path(&sha256(b"tampered")).exists());
    }

    #[test]
    fn imported_modules_are_found_by_name_and_by_digest() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().into()).unwrap();
        let reference = Reference::parse("localhost:5000/hello:v1").unwrap();
        let image = store.import(b"\0asm\x01\0\0\0", &reference).unwrap();
        assert_eq!(image.reference, "localhost:5000/hello:v1");
        assert_eq!(store.lookup(&reference), Some(image.clone()));
        let pinned = Reference::parse(&format!("other@{}", image.digest)).unwrap();
        assert_eq!(store.lookup(&pinned).map(|i| i.digest), Some(image.digest.clone()));
        assert_eq!(store.lookup(&Reference::parse("hello").unwrap()), None);
        assert_eq!(store.list().unwrap(), [image]);
        let err = store.put_blob(b"x", Some(&sha256(b"y"))).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    }
}
