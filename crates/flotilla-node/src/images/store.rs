//! The node's content-addressed image store: module bytes under their SHA-256 digest, and one
//! small file per reference naming the digest it resolves to.
//!
//! ```text
//! <root>/blobs/sha256/<hex>          the module, verified against its name when written
//! <root>/refs/<escaped reference>    {"digest": "sha256:<hex>", "size": N, "source": "imported"}
//! ```
//!
//! Every file is written to a temporary name and renamed into place, so a crash never leaves
//! half a module or half a reference, and `flotilla image import` can run while the agent does.

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

/// A reference in the store and the module it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub reference: String,
    pub digest: String,
    pub size: u64,
    pub source: Source,
}

#[derive(Serialize, Deserialize)]
struct RefFile {
    digest: String,
    size: u64,
    source: Source,
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
        for dir in [root.join("blobs/sha256"), root.join("refs")] {
            std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io { path: dir, source })?;
        }
        Ok(ImageStore { root })
    }

    /// Where the module with `digest` is (whether or not it is there).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
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

    /// Points `reference` at the stored module `digest`.
    pub fn tag(&self, reference: &Reference, digest: &str, size: u64, source: Source) -> Result<Image, StoreError> {
        let name = reference.to_string();
        let record = RefFile { digest: digest.into(), size, source };
        let json = serde_json::to_vec(&record).expect("a reference record serialises");
        write_atomically(&self.ref_path(&name), &json)?;
        Ok(Image { reference: name, digest: digest.into(), size, source })
    }

    /// Imports a module under `reference`, once it is known to be one.
    pub fn import(&self, bytes: &[u8], reference: &Reference) -> Result<Image, StoreError> {
        flotilla_wasm::validate(bytes)?;
        let digest = self.put_blob(bytes, None)?;
        self.tag(reference, &digest, bytes.len() as u64, Source::Imported)
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
            return Some(Image { reference: name, digest: record.digest, size: record.size, source: record.source });
        }
        let digest = reference.digest.as_ref()?;
        let size = std::fs::metadata(self.blob_path(digest)).ok()?.len();
        Some(Image { reference: name, digest: digest.clone(), size, source: Source::Pulled })
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
                Some(Image { reference: name, digest: record.digest, size: record.size, source: record.source })
            })
            .collect();
        images.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(images)
    }

    fn ref_path(&self, name: &str) -> PathBuf {
        self.root.join("refs").join(escape(name))
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, bytes)
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|source| StoreError::Io { path: path.into(), source })
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
