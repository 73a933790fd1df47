//! Image references, normalised as Docker and the kubelet normalise them: `hello` is
//! `docker.io/library/hello:latest`, `localhost:5000/app` is `localhost:5000/app:latest`.

use std::fmt;

/// The registry a reference without one names.
pub(super) const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    /// `docker.io`, `localhost:5000`, `ghcr.io`, …
    pub registry: String,
    /// `library/hello`, `org/app`, …
    pub repository: String,
    /// The tag, `latest` when neither a tag nor a digest is given.
    pub tag: Option<String>,
    /// `sha256:<hex>`, when the reference pins one.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `[registry/]repository[:tag][@digest]`, with upstream's rules for what counts as
    /// a registry (a first component with a `.` or `:`, or `localhost`).
    pub fn parse(text: &str) -> Result<Reference, String> {
        let invalid = |why: &str| format!("invalid image reference {text:?}: {why}");
        let (rest, digest) = match text.split_once('@') {
            Some((rest, digest)) => {
                let hex = digest.strip_prefix("sha256:").ok_or_else(|| invalid("only sha256 digests are supported"))?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                    return Err(invalid("a sha256 digest is 64 lowercase hex digits"));
                }
                (rest, Some(digest.to_string()))
            }
            None => (text, None),
        };
        // A tag follows the last `:` after the last `/` (a registry's port comes before it).
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if !rest[colon..].contains('/') => (&rest[..colon], Some(rest[colon + 1..].to_string())),
            _ => (rest, None),
        };
        if let Some(tag) = &tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !tag.starts_with(['.', '-']);
            if !valid {
                return Err(invalid("a tag is up to 128 letters, digits, `_`, `.` and `-`"));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), rest),
            _ => (DEFAULT_REGISTRY.to_string(), name),
        };
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(component_ok) {
            return Err(invalid("a repository is lowercase letters, digits and `._-`, in `/`-separated parts"));
        }
        let tag = if tag.is_none() && digest.is_none() { Some("latest".to_string()) } else { tag };
        Ok(Reference { registry, repository, tag, digest })
    }

    /// The reference with `digest` pinned, as a container status's `imageID` shows it.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }

    /// The last part of the repository: a program's name (`hello` for `docker.io/library/hello`).
    pub fn short_name(&self) -> &str {
        self.repository.rsplit('/').next().unwrap_or(&self.repository)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_normalised_as_docker_does() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        for (text, normal) in [
            ("hello", "docker.io/library/hello:latest".to_string()),
            ("hello:v1", "docker.io/library/hello:v1".into()),
            ("org/app", "docker.io/org/app:latest".into()),
            ("localhost:5000/app", "localhost:5000/app:latest".into()),
            ("localhost/app:1.0", "localhost/app:1.0".into()),
            ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c".into()),
            ("ghcr.io/org/fn", "ghcr.io/org/fn:latest".into()),
            (&format!("app@{digest}"), format!("docker.io/library/app@{digest}")),
            (&format!("app:v2@{digest}"), format!("docker.io/library/app:v2@{digest}")),
        ] {
            assert_eq!(Reference::parse(text).unwrap().to_string(), normal, "{text}");
        }
        assert_eq!(Reference::parse("ghcr.io/org/fn").unwrap().short_name(), "fn");
        for bad in ["", "Hello", "app:", "app@sha256:12", "a//b", "app:-x", "app@md5:00"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
