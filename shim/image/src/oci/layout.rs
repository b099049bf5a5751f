//! Reading an OCI image layout directory: the `oci:PATH[:TAG]` reference, `index.json`, and
//! blobs checked against their descriptors before anything uses them.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, Os};

use crate::digest::{DiffId, Digest, DigestError, HashingReader};
use crate::oci::convert::{self, BlobRef};
use crate::oci::media_types::{self, ANNOTATION_REF_NAME};

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

/// The manifest chosen from a layout (or fetched from a registry), with its parsed config:
/// everything importing it needs, its digests checked to be sha256.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfiguration,
    /// The manifest's layers, lowest first, each with its diffID from the config.
    pub layers: Vec<ResolvedLayer>,
}

/// One layer of a resolved image: the blob the manifest names and the diffID the config
/// gives its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedLayer {
    pub blob: BlobRef,
    pub diff_id: DiffId,
}

impl ResolvedImage {
    /// The layers' diffIDs, lowest first.
    pub fn diff_ids(&self) -> Vec<DiffId> {
        self.layers.iter().map(|layer| layer.diff_id).collect()
    }
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
        let chosen = blob_ref(chosen, "index.json", &index_path)?;
        let (manifest_digest, manifest) = self.read_manifest(&chosen, 0)?;
        let manifest_path = self.blob_path(&manifest_digest);
        let config_blob = blob_ref(manifest.config(), "image manifest", &manifest_path)?;
        let layer_blobs = manifest
            .layers()
            .iter()
            .map(|layer| blob_ref(layer, "image manifest", &manifest_path))
            .collect::<Result<Vec<_>, _>>()?;
        if !media_types::is_config(&config_blob.media_type) {
            return Err(OciLayoutError::UnsupportedConfigType(
                config_blob.media_type.to_string(),
            ));
        }
        let config_path = self.blob_path(&config_blob.digest);
        let config_bytes = self.read_json_blob("image config", &config_blob)?;
        let config = convert::parse_image_config(&config_bytes)
            .map_err(json_error("image config", &config_path))?;
        let diff_ids = convert::diff_ids(&config)
            .map_err(|e| json_error("image config", &config_path)(digest_json_error(e)))?;
        if config.rootfs().typ() != "layers" {
            return Err(OciLayoutError::UnsupportedRootFsType(
                config.rootfs().typ().clone(),
            ));
        }
        if diff_ids.len() != layer_blobs.len() {
            return Err(OciLayoutError::LayerCountMismatch {
                layers: layer_blobs.len(),
                diff_ids: diff_ids.len(),
            });
        }
        Ok(ResolvedImage {
            manifest_digest,
            config_digest: config_blob.digest,
            config,
            layers: layer_blobs
                .into_iter()
                .zip(diff_ids)
                .map(|(blob, diff_id)| ResolvedLayer { blob, diff_id })
                .collect(),
        })
    }

    fn read_manifest(
        &self,
        descriptor: &BlobRef,
        depth: usize,
    ) -> Result<(Digest, ImageManifest), OciLayoutError> {
        if depth > MAX_INDEX_DEPTH {
            return Err(OciLayoutError::IndexTooDeep);
        }
        let path = self.blob_path(&descriptor.digest);
        if media_types::is_manifest(&descriptor.media_type) {
            let bytes = self.read_json_blob("image manifest", descriptor)?;
            let manifest =
                serde_json::from_slice(&bytes).map_err(json_error("image manifest", &path))?;
            Ok((descriptor.digest, manifest))
        } else if media_types::is_index(&descriptor.media_type) {
            let bytes = self.read_json_blob("image index", descriptor)?;
            let index: ImageIndex =
                serde_json::from_slice(&bytes).map_err(json_error("image index", &path))?;
            let wanted = host_platform();
            let child = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        *p.os() == Os::Linux && *p.architecture() == Arch::from(wanted)
                    })
                })
                .ok_or_else(|| OciLayoutError::NoManifestForPlatform(format!("linux/{wanted}")))?;
            let child = blob_ref(child, "image index", &path)?;
            self.read_manifest(&child, depth + 1)
        } else {
            Err(OciLayoutError::UnsupportedManifestType(
                descriptor.media_type.to_string(),
            ))
        }
    }

    /// Reads a small JSON blob and checks its size and digest; the caller parses it.
    fn read_json_blob(
        &self,
        what: &'static str,
        descriptor: &BlobRef,
    ) -> Result<Vec<u8>, OciLayoutError> {
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
        Ok(bytes)
    }

    /// Hashes a whole blob and checks it against its descriptor, without keeping it.
    pub fn verify_blob(&self, descriptor: &BlobRef) -> Result<(), OciLayoutError> {
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
    pub fn open_blob_checked_size(&self, descriptor: &BlobRef) -> Result<File, OciLayoutError> {
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
            .manifests()
            .iter()
            .find(|m| {
                m.annotations()
                    .as_ref()
                    .and_then(|annotations| annotations.get(ANNOTATION_REF_NAME))
                    .map(String::as_str)
                    == Some(tag)
            })
            .ok_or_else(|| OciLayoutError::TagNotFound(tag.to_owned())),
        None => match index.manifests().as_slice() {
            [] => Err(OciLayoutError::NoManifest),
            [only] => Ok(only),
            many => Err(OciLayoutError::AmbiguousManifest(many.len())),
        },
    }
}

/// The blob `descriptor` names, read from the document `what` at `path`; a digest the
/// store cannot use makes that document one of an unexpected shape, as a malformed digest
/// does.
fn blob_ref(
    descriptor: &Descriptor,
    what: &'static str,
    path: &Path,
) -> Result<BlobRef, OciLayoutError> {
    BlobRef::try_from(descriptor).map_err(|e| json_error(what, path)(digest_json_error(e)))
}

fn json_error(what: &'static str, path: &Path) -> impl FnOnce(serde_json::Error) -> OciLayoutError {
    let path = path.to_owned();
    move |source| OciLayoutError::Json { what, path, source }
}

/// A digest the store refuses, as the JSON error a stricter parser would have given.
fn digest_json_error(error: DigestError) -> serde_json::Error {
    serde::de::Error::custom(error)
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
