//! Images: resolving a container's `image:` to a wasm module on the node, by its pull policy,
//! from the content-addressed store or a registry.

pub mod container;
mod reference;
mod registry;
mod store;

use std::time::{Duration, Instant};

pub use reference::Reference;
pub use registry::Registries;
pub use store::{Image, ImageStore, Kind, Source, StoreError, sha256};

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// The policy as written, or upstream's default for the image: `Always` for `:latest` or
    /// no tag, `IfNotPresent` otherwise.
    pub fn parse(policy: Option<&str>, image: &str) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            Some("Never") => PullPolicy::Never,
            _ => match Reference::parse(image) {
                Ok(r) if r.digest.is_none() && r.tag.as_deref() != Some("latest") => PullPolicy::IfNotPresent,
                _ => PullPolicy::Always,
            },
        }
    }
}

/// Why an image cannot be had; `reason` is what the container's waiting state shows.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("{0}")]
    InvalidName(String),
    #[error("Container image \"{0}\" is not present with pull policy of Never")]
    NeverPull(String),
    #[error("{0}")]
    Pull(String),
}

impl ImageError {
    pub fn reason(&self) -> &'static str {
        match self {
            ImageError::InvalidName(_) => "InvalidImageName",
            ImageError::NeverPull(_) => "ErrImageNeverPull",
            ImageError::Pull(_) => "ErrImagePull",
        }
    }
}

/// A resolved image, and whether resolving it pulled it (for the `Pulled` event).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub image: Image,
    /// The reference the container status shows as `imageID`: pinned to the digest.
    pub image_id: String,
    /// How long the pull took, when there was one.
    pub pulled_in: Option<Duration>,
}

/// The node's images: its store and where it pulls from.
#[derive(Debug, Clone)]
pub struct Images {
    store: ImageStore,
    origin: Origin,
}

/// Where the images not in the store come from.
#[derive(Debug, Clone)]
enum Origin {
    Registries(Box<Registries>),
    /// Nowhere: every image is present, made up from its reference (a hollow node's, as
    /// kubemark's fake image service has every image).
    MadeUp,
}

impl Images {
    pub fn new(store: ImageStore, registries: Registries) -> Images {
        Images { store, origin: Origin::Registries(Box::new(registries)) }
    }

    /// A hollow node's images: every reference resolves, to an image that holds nothing.
    pub(crate) fn made_up(store: ImageStore) -> Images {
        Images { store, origin: Origin::MadeUp }
    }

    pub fn store(&self) -> &ImageStore {
        &self.store
    }

    /// The module `image` names under `policy`. An image imported with `flotilla image import`
    /// is what its reference means on this node, so even `Always` uses it without asking a
    /// registry; a pulled one is checked against its registry under `Always`, as upstream does.
    pub async fn resolve(&self, image: &str, policy: PullPolicy) -> Result<Resolved, ImageError> {
        let reference = Reference::parse(image).map_err(ImageError::InvalidName)?;
        let registries = match &self.origin {
            Origin::Registries(registries) => registries,
            Origin::MadeUp => {
                let digest = reference.digest.clone().unwrap_or_else(|| sha256(reference.to_string().as_bytes()));
                let image_id = reference.with_digest(&digest);
                let (reference, source, kind) = (reference.to_string(), Source::Imported, Kind::Module);
                let image = Image { reference, digest, size: 0, source, kind };
                return Ok(Resolved { image, image_id, pulled_in: None });
            }
        };
        let local = self.store.lookup(&reference);
        let use_local = match (&local, policy) {
            (None, PullPolicy::Never) => return Err(ImageError::NeverPull(image.into())),
            (Some(_), PullPolicy::Never | PullPolicy::IfNotPresent) => true,
            (Some(found), PullPolicy::Always) => found.source == Source::Imported || reference.digest.is_some(),
            (None, _) => false,
        };
        if use_local && let Some(image) = local {
            let image_id = reference.with_digest(&image.digest);
            return Ok(Resolved { image, image_id, pulled_in: None });
        }
        let started = Instant::now();
        let image = registries.pull(&self.store, &reference).await.map_err(ImageError::Pull)?;
        let image_id = reference.with_digest(&image.digest);
        Ok(Resolved { image, image_id, pulled_in: Some(started.elapsed()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policies_default_as_upstream() {
        assert_eq!(PullPolicy::parse(None, "hello"), PullPolicy::Always);
        assert_eq!(PullPolicy::parse(None, "hello:latest"), PullPolicy::Always);
        assert_eq!(PullPolicy::parse(None, "hello:v1"), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::parse(Some("Never"), "hello"), PullPolicy::Never);
    }

    #[tokio::test]
    async fn imported_images_resolve_under_every_policy_and_missing_ones_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::open(dir.path().into()).unwrap();
        store.import(b"\0asm\x01\0\0\0", &Reference::parse("hello").unwrap()).unwrap();
        let images = Images::new(store, Registries::new(Vec::new()));
        for policy in [PullPolicy::Always, PullPolicy::IfNotPresent, PullPolicy::Never] {
            let resolved = images.resolve("hello", policy).await.unwrap();
            assert!(resolved.image_id.starts_with("docker.io/library/hello@sha256:"), "{}", resolved.image_id);
            assert!(resolved.pulled_in.is_none());
        }
        let err = images.resolve("other:v1", PullPolicy::Never).await.unwrap_err();
        assert_eq!(err.reason(), "ErrImageNeverPull");
        assert_eq!(err.to_string(), "Container image \"other:v1\" is not present with pull policy of Never");
        assert_eq!(
            images.resolve("Bad Name", PullPolicy::IfNotPresent).await.unwrap_err().reason(),
            "InvalidImageName"
        );
    }

    #[tokio::test]
    async fn a_hollow_node_has_every_image_and_no_registry() {
        let dir = tempfile::tempdir().unwrap();
        let images = Images::made_up(ImageStore::open(dir.path().into()).unwrap());
        let resolved = images.resolve("web:v1", PullPolicy::Never).await.unwrap();
        assert_eq!(resolved.image.reference, "docker.io/library/web:v1");
        assert!(resolved.image_id.starts_with("docker.io/library/web@sha256:"), "{}", resolved.image_id);
        assert!(resolved.pulled_in.is_none(), "nothing is pulled");
        let again = images.resolve("docker.io/library/web:v1", PullPolicy::Always).await.unwrap();
        assert_eq!(again.image_id, resolved.image_id, "one image per reference");
        assert_ne!(images.resolve("web:v2", PullPolicy::Always).await.unwrap().image_id, resolved.image_id);
        assert_eq!(images.resolve("Bad Name", PullPolicy::Always).await.unwrap_err().reason(), "InvalidImageName");
    }
}
