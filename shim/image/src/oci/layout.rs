//! Reading an OCI image layout directory: the `oci:PATH[:TAG]` reference, `index.json`, and
//! blobs checked against their descriptors before anything uses them.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashingReader};
use crate::oci::spec::{
    Descriptor, ImageConfigFile, ImageIndex, ImageManifest, ANNOTATION_REF_NAME,
    MEDIA_TYPE_DOCKER_CONFIG, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST,
};

/// JSON documents (index, manifest, config) larger than this are refused unread.
pub const MAX_JSON_BLOB_BYTES: u64 = 8 << 20;
/// Nested image indexes deeper than this are refused.
const MAX_INDEX_DEPTH: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum OciLayoutError {
    #[error("image reference {0:?} does not start with \"oci:\"; only OCI layout directories can be imported")]
    UnsupportedReference(String),
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} in {path} is not valid JSON of the expected shape")]
    Json {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("blob {digest} is {actual} bytes but its descriptor says {expected}")]
    SizeMismatch {
        digest: Digest,
        expected: u64,
        actual: u64,
    },
    #[error("blob {expected} has digest {actual}: its content does not match its descriptor")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("{what} {digest} is {size} bytes, more than the {MAX_JSON_BLOB_BYTES}-byte limit")]
    JsonBlobTooLarge {
        what: &'static str,
        digest: Digest,
        size: u64,
    },
    #[error("the layout's index.json names no manifest tagged {0:?}")]
    TagNotFound(String),
    #[error("the layout holds {0} manifests; name one with oci:PATH:TAG")]
    AmbiguousManifest(usize),
    #[error("the layout's index.json lists no manifest")]
    NoManifest,
    #[error("image index has no manifest for {0}")]
    NoManifestForPlatform(String),
    #[error("image indexes nest deeper than {MAX_INDEX_DEPTH} levels")]
    IndexTooDeep,
    #[error("descriptor media type {0:?} is not an image manifest or index")]
    UnsupportedManifestType(String),
    #[error("config media type {0:?} is not an OCI or Docker image config")]
    UnsupportedConfigType(String),
    #[error("the manifest lists {layers} layers but the config lists {diff_ids} diffIDs")]
    LayerCountMismatch { layers: usize, diff_ids: usize },
    #[error("the config's rootfs type is {0:?}, not \"layers\"")]
    UnsupportedRootFsType(String),
}

/// An `oci:PATH[:TAG]` reference, split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    pub layout_dir: PathBuf,
    pub tag: Option<String>,
}

impl OciReference {
    /// Parses `oci:PATH[:TAG]`. The tag is the text after the last `:` when that text holds
    /// no `/`; so `oci:/images/busybox:latest` is tag `latest`, and a directory whose name
    /// has a colon needs an explicit tag.
    pub fn parse(reference: &str) -> Result<OciReference, OciLayoutError> {
        let rest = reference
            .strip_prefix("oci:")
            .ok_or_else(|| OciLayoutError::UnsupportedReference(reference.to_owned()))?;
        if rest.is_empty() {
            return Err(OciLayoutError::UnsupportedReference(reference.to_owned()));
        }
        match rest.rsplit_once(':') {
            Some((path, tag)) if !tag.contains('/') && !path.is_empty() && !tag.is_empty() => {
                Ok(OciReference {
                    layout_dir: PathBuf::from(path),
                    tag: Some(tag.to_owned()),
                })
            }
            _ => Ok(OciReference {
                layout_dir: PathBuf::from(rest),
                tag: None,
            }),
        }
    }
}

/// An OCI image layout directory, opened for reading.
pub struct OciLayout {
    dir: PathBuf,
}

/// The manifest chosen from a layout, with its parsed config.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub manifest_digest: Digest,
    pub manifest: ImageManifest,
    pub config_digest: Digest,
    pub config: ImageConfigFile,
}

impl OciLayout {
    pub fn new(dir: impl Into<PathBuf>) -> OciLayout {
        OciLayout { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where blob `digest` lives in the layout.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    /// Reads `index.json`, picks the manifest (by tag, or the only one), follows image indexes
    /// to this host's platform, and reads the verified manifest and config.
    pub fn resolve(&self, tag: Option<&str>) -> Result<ResolvedImage, OciLayoutError> {
        let index_path = self.dir.join("index.json");
        let index_bytes = read_limited(&index_path, MAX_JSON_BLOB_BYTES)?;
        let index: ImageIndex =
            serde_json::from_slice(&index_bytes).map_err(|source| OciLayoutError::Json {
                what: "index.json",
                path: index_path.clone(),
                source,
            })?;
        let chosen = choose_from_layout_index(&index, tag)?;
        let (manifest_digest, manifest) = self.read_manifest(chosen, 0)?;
        if !matches!(
            manifest.config.media_type.as_str(),
            MEDIA_TYPE_OCI_CONFIG | MEDIA_TYPE_DOCKER_CONFIG
        ) {
            return Err(OciLayoutError::UnsupportedConfigType(
                manifest.config.media_type.clone(),
            ));
        }
        let config: ImageConfigFile = self.read_json_blob("image config", &manifest.config)?;
        if config.rootfs.fs_type != "layers" {
            return Err(OciLayoutError::UnsupportedRootFsType(
                config.rootfs.fs_type.clone(),
            ));
        }
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(OciLayoutError::LayerCountMismatch {
                layers: manifest.layers.len(),
                diff_ids: config.rootfs.diff_ids.len(),
            });
        }
        Ok(ResolvedImage {
            manifest_digest,
            config_digest: manifest.config.digest,
            manifest,
            config,
        })
    }

    fn read_manifest(
        &self,
        descriptor: &Descriptor,
        depth: usize,
    ) -> Result<(Digest, ImageManifest), OciLayoutError> {
        if depth > MAX_INDEX_DEPTH {
            return Err(OciLayoutError::IndexTooDeep);
        }
        match descriptor.media_type.as_str() {
            MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => {
                let manifest = self.read_json_blob("image manifest", descriptor)?;
                Ok((descriptor.digest, manifest))
            }
            MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_MANIFEST_LIST => {
                let index: ImageIndex = self.read_json_blob("image index", descriptor)?;
                let wanted = host_platform();
                let child = index
                    .manifests
                    .iter()
                    .find(|m| {
                        m.platform
                            .as_ref()
                            .is_some_and(|p| p.os == "linux" && p.architecture == wanted)
                    })
                    .ok_or_else(|| {
                        OciLayoutError::NoManifestForPlatform(format!("linux/{wanted}"))
                    })?;
                self.read_manifest(child, depth + 1)
            }
            other => Err(OciLayoutError::UnsupportedManifestType(other.to_owned())),
        }
    }

    /// Reads a small JSON blob, checks its size and digest, then parses it.
    fn read_json_blob<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        descriptor: &Descriptor,
    ) -> Result<T, OciLayoutError> {
        if descriptor.size > MAX_JSON_BLOB_BYTES {
            return Err(OciLayoutError::JsonBlobTooLarge {
                what,
                digest: descriptor.digest,
                size: descriptor.size,
            });
        }
        let path = self.blob_path(&descriptor.digest);
        let bytes = read_limited(&path, descriptor.size)?;
        if bytes.len() as u64 != descriptor.size {
            return Err(OciLayoutError::SizeMismatch {
                digest: descriptor.digest,
                expected: descriptor.size,
                actual: bytes.len() as u64,
            });
        }
        let actual = Digest::of_bytes(&bytes);
        if actual != descriptor.digest {
            return Err(OciLayoutError::DigestMismatch {
                expected: descriptor.digest,
                actual,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| OciLayoutError::Json { what, path, source })
    }

    /// Hashes a whole blob and checks it against its descriptor, without keeping it.
    pub fn verify_blob(&self, descriptor: &Descriptor) -> Result<(), OciLayoutError> {
        let path = self.blob_path(&descriptor.digest);
        let file = self.open_blob_checked_size(descriptor)?;
        let (actual, size) = HashingReader::new(file.take(descriptor.size.saturating_add(1)))
            .finish()
            .map_err(|source| OciLayoutError::Read { path, source })?;
        if size != descriptor.size {
            return Err(OciLayoutError::SizeMismatch {
                digest: descriptor.digest,
                expected: descriptor.size,
                actual: size,
            });
        }
        if actual != descriptor.digest {
            return Err(OciLayoutError::DigestMismatch {
                expected: descriptor.digest,
                actual,
            });
        }
        Ok(())
    }

    /// Opens a blob after checking that its file size matches the descriptor.
    pub fn open_blob_checked_size(&self, descriptor: &Descriptor) -> Result<File, OciLayoutError> {
        let path = self.blob_path(&descriptor.digest);
        let file = File::open(&path).map_err(|source| OciLayoutError::Read {
            path: path.clone(),
            source,
        })?;
        let actual = file
            .metadata()
            .map_err(|source| OciLayoutError::Read { path, source })?
            .len();
        if actual != descriptor.size {
            return Err(OciLayoutError::SizeMismatch {
                digest: descriptor.digest,
                expected: descriptor.size,
                actual,
            });
        }
        Ok(file)
    }
}

fn choose_from_layout_index<'a>(
    index: &'a ImageIndex,
    tag: Option<&str>,
) -> Result<&'a Descriptor, OciLayoutError> {
    match tag {
        Some(tag) => index
            .manifests
            .iter()
            .find(|m| m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(tag))
            .ok_or_else(|| OciLayoutError::TagNotFound(tag.to_owned())),
        None => match index.manifests.as_slice() {
            [] => Err(OciLayoutError::NoManifest),
            [only] => Ok(only),
            many => Err(OciLayoutError::AmbiguousManifest(many.len())),
        },
    }
}

/// The OCI architecture name of this host.
pub fn host_platform() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Reads at most `limit` bytes (plus one, to notice a longer file) of `path`.
fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, OciLayoutError> {
    let read_error = |source| OciLayoutError::Read {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_with_tag_splits_at_last_colon() {
        let parsed = OciReference::parse("oci:/images/busybox:latest").unwrap();
        assert_eq!(parsed.layout_dir, PathBuf::from("/images/busybox"));
        assert_eq!(parsed.tag.as_deref(), Some("latest"));
    }

    #[test]
    fn reference_without_tag_keeps_whole_path() {
        let parsed = OciReference::parse("oci:build/images/default").unwrap();
        assert_eq!(parsed.layout_dir, PathBuf::from("build/images/default"));
        assert_eq!(parsed.tag, None);
        let parsed = OciReference::parse("oci:./a:b/c").unwrap();
        assert_eq!(parsed.layout_dir, PathBuf::from("./a:b/c"));
    }

    #[test]
    fn reference_with_other_scheme_is_refused() {
        assert!(matches!(
            OciReference::parse("docker.io/library/busybox"),
            Err(OciLayoutError::UnsupportedReference(_))
        ));
        assert!(OciReference::parse("oci:").is_err());
    }
}
