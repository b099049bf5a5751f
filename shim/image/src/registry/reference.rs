//! Image references as users write them (`busybox`, `quay.io/org/app:v1`,
//! `app@sha256:...`), normalized the way containerd and Docker do: a name without a
//! registry is on `docker.io`, a one-component name there is under `library/`, and a
//! reference without tag or digest means `:latest`.

use std::fmt;

use crate::digest::Digest;

/// The registry of names without one.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// The tag of references without a tag or digest.
pub const DEFAULT_TAG: &str = "latest";

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("image reference {reference:?} is invalid: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: &'static str,
}

/// A normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageReference {
    /// `docker.io`, `quay.io`, `127.0.0.1:5000`.
    pub registry: String,
    /// `library/busybox`, `vpod/default`.
    pub repository: String,
    /// The tag; `latest` when the reference had neither tag nor digest, `None` when it had
    /// a digest (a tag given beside a digest is ignored, as Docker does).
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl ImageReference {
    /// Parses and normalizes `reference`.
    pub fn parse(reference: &str) -> Result<ImageReference, ReferenceError> {
        let fail = |reason| ReferenceError {
            reference: reference.to_owned(),
            reason,
        };
        if reference.is_empty() || reference.len() > 4096 {
            return Err(fail("it is empty or longer than 4096 bytes"));
        }
        let (name_and_tag, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                let digest: Digest = digest
                    .parse()
                    .map_err(|_| fail("the part after '@' is not a sha256 digest"))?;
                (name, Some(digest))
            }
            None => (reference, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a registry's port.
        let last_slash = name_and_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_and_tag[last_slash..].rfind(':') {
            Some(i) => {
                let colon = last_slash + i;
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            None => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            if !valid_tag(tag) {
                return Err(fail(
                    "the tag must be 1 to 128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
                ));
            }
        }

        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first, rest)
            }
            _ => (DEFAULT_REGISTRY, name),
        };
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DEFAULT_REGISTRY,
            other => other,
        };
        if !valid_registry(registry) {
            return Err(fail(
                "the registry must be a host name or address with an optional port",
            ));
        }
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        if !valid_repository(&repository) {
            return Err(fail(
                "the repository must be lowercase letters and digits in '/'-separated parts, joined by '.', '_', '__' or '-'",
            ));
        }
        let tag = match (tag, digest) {
            (_, Some(_)) => None,
            (Some(tag), None) => Some(tag.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
        };
        Ok(ImageReference {
            registry: registry.to_owned(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, the name repo digests and tags start with.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// `registry/repository:tag`, when the reference names a tag.
    pub fn tagged_name(&self) -> Option<String> {
        self.tag
            .as_ref()
            .map(|tag| format!("{}:{tag}", self.repository_name()))
    }

    /// `registry/repository@digest` for `manifest_digest`.
    pub fn repo_digest(&self, manifest_digest: &Digest) -> String {
        format!("{}@{manifest_digest}", self.repository_name())
    }
}

impl fmt::Display for ImageReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repository_name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn valid_registry(registry: &str) -> bool {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-']);
    let port_ok = port.is_none_or(|port| {
        !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
    });
    host_ok && port_ok
}

/// Path components are `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`.
fn valid_repository(repository: &str) -> bool {
    if repository.is_empty() || repository.len() > 255 {
        return false;
    }
    repository.split('/').all(|component| {
        let bytes = component.as_bytes();
        if bytes.is_empty()
            || !bytes[0].is_ascii_alphanumeric()
            || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
        {
            return false;
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b.is_ascii_lowercase() || b.is_ascii_digit() {
                i += 1;
                continue;
            }
            let separator_len = if b == b'-' {
                bytes[i..].iter().take_while(|&&c| c == b'-').count()
            } else if bytes[i..].starts_with(b"__") {
                2
            } else if matches!(b, b'.' | b'_') {
                1
            } else {
                return false;
            };
            i += separator_len;
            if !bytes.get(i).is_some_and(|c| c.is_ascii_alphanumeric()) {
                return false;
            }
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalized(reference: &str) -> String {
        ImageReference::parse(reference).unwrap().to_string()
    }

    #[test]
    fn short_names_are_docker_hub_library_latest() {
        assert_eq!(normalized("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(normalized("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(normalized("org/app"), "docker.io/org/app:latest");
        assert_eq!(
            normalized("index.docker.io/library/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalized("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn registry_with_port_is_not_a_tag() {
        let parsed = ImageReference::parse("127.0.0.1:5000/vpod/default").unwrap();
        assert_eq!(parsed.registry, "127.0.0.1:5000");
        assert_eq!(parsed.repository, "vpod/default");
        assert_eq!(parsed.tag.as_deref(), Some("latest"));
        assert_eq!(
            normalized("localhost/app:v2"),
            "localhost/app:v2",
            "localhost is a registry and its names get no library/ prefix"
        );
    }

    #[test]
    fn digest_reference_drops_the_tag() {
        let digest = Digest::of_bytes(b"x");
        let parsed = ImageReference::parse(&format!("quay.io/a/b:v1@{digest}")).unwrap();
        assert_eq!(parsed.tag, None);
        assert_eq!(parsed.digest, Some(digest));
        assert_eq!(parsed.repo_digest(&digest), format!("quay.io/a/b@{digest}"));
    }

    #[test]
    fn malformed_references_are_refused() {
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "a/b/",
            "busybox@sha256:1234",
            "busybox@md5:00",
            "bad host!/x",
            "host:port/x",
            "a..b",
            "a_-b",
        ] {
            assert!(ImageReference::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
