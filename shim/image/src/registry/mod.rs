//! Images for the CRI ImageService: pulling from OCI distribution registries into the layer
//! store, and the names (tags, repo digests) and ids by which images are listed, looked up
//! and removed.
//!
//! ```text
//! Images::open(store, options)                      one per store; Clone shares it (Arc)
//! Images::pull(reference, auth).await -> ImageRecord
//! Images::pull_with_progress(reference, auth, &observer).await   events: progress.rs
//! Images::list() / status(reference_or_id) / remove(reference_or_id, in_use)
//! Images::fs_usage() -> FsUsage                     for ImageFsInfo
//! Images::import_oci_layout("oci:PATH[:TAG]", Some("name:tag"))   e.g. the default image
//! Images::counters() -> PullCounters                what pulls did, for tests and metrics
//! ```
//!
//! - **Names** are normalized as containerd does (`reference.rs`): `busybox` is
//!   `docker.io/library/busybox:latest`. An image's id is `sha256:<config digest hex>`; its
//!   `repo_tags` are normalized tags and its `repo_digests` `registry/repository@<digest>`
//!   with the digest the name resolved to (the index's, for a multi-platform image, as
//!   containerd reports it). Manifests sharing one config are one image. A tag pulled again moves to the
//!   new image; the old one stays, untagged, until removed.
//! - **Lookup** (`status`, `remove`) accepts a tag in any form that normalizes to a known
//!   one, a repo digest, an id, or an id prefix (with or without `sha256:`) that matches one
//!   image (several give `Ambiguous`).
//! - **Pulls**: an image index is followed to linux on this host's architecture; the
//!   manifest's digest is computed here and checked against the digest asked for; config and
//!   layer blobs are checked against their descriptors' digests and sizes as they stream.
//!   Each layer converts while it downloads (`stream.rs`: the response body goes through
//!   the decompressor, the hashers and the EROFS writer, never to disk), and is checked
//!   against the config's diffID in the same pass; up to `max_concurrent_downloads`
//!   layers at a time. Layers already converted from the same blob are not downloaded.
//!   Layer media types: OCI and Docker tar, tar+gzip, tar+zstd; anything else is
//!   `UnsupportedMediaType` before a byte of a layer is fetched. Concurrent pulls of one
//!   normalized reference in this process run once: the others wait and get its image. A
//!   failed pull writes no image record and removes the layers it converted that no image
//!   uses (the others finish first). `open` removes staging directories that crashed pulls
//!   of earlier vpods left.
//! - **Transport**: HTTPS, trusting the system's roots and `extra_ca_files`; plain HTTP to
//!   registries listed in `insecure_registries` (`host[:port]`, exactly as in the
//!   reference), and to a loopback registry (`localhost`, 127.0.0.0/8, `[::1]`) that HTTPS
//!   cannot reach, as Docker and containerd allow by default. A registry listed in `mirrors`
//!   is pulled from its mirror (the choice of HTTP above is the mirror's), and the image
//!   keeps the name it was asked for.
//! - **Credentials** come with each pull and are used for that pull only: a registry token
//!   (bearer), else username and password, else `auth` (base64 `user:password`), else an
//!   identity token, which oci-client cannot exchange by the OAuth refresh-token grant;
//!   it is sent as the password of basic auth with the user `<token>` (registries that
//!   accept that, such as ACR, work; others answer `Unauthorized`).
//! - **Removal** refuses an image `in_use` says is used, forgets its names and records, then
//!   deletes every layer disk no remaining image references (under the store's exclusive
//!   lock, so a concurrent import cannot lose its layers).
//!
//! The synchronous methods touch the disk and take file locks: call them from
//! `spawn_blocking` in async code.

mod catalog;
mod fetch;
pub mod progress;
mod pull;
pub mod reference;
mod stream;
mod usage;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use oci_client::client::{Certificate, CertificateEncoding};
use oci_client::errors::OciDistributionError;

use crate::digest::Digest;
use crate::store::{ImportedImage, LayerStore, LayerStoreError};

pub use reference::{ImageReference, ReferenceError};

/// The registry's pure readers of what a registry sends, for the fuzz targets
/// (`tests/fuzz-targets`); not an API.
#[doc(hidden)]
pub mod fuzzing {
    pub use super::fetch::{choose_platform, manifest_media_type};
}

/// Credentials for one pull, as CRI's `AuthConfig` carries them. Empty fields are unset.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
    /// base64 of `username:password`.
    pub auth: String,
    pub identity_token: String,
    pub registry_token: String,
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |value: &String| if value.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

/// An image as the ImageService reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// `sha256:<config digest hex>`.
    pub id: String,
    /// Normalized tags, sorted, e.g. `docker.io/library/busybox:latest`.
    pub repo_tags: Vec<String>,
    /// `registry/repository@sha256:<hex>`, sorted: the digest the repository's reference
    /// resolved to (the manifest, or the image index it was chosen from).
    pub repo_digests: Vec<String>,
    /// Bytes of the image's layer disks.
    pub size_bytes: u64,
    /// The stored image: config and layer disks (of the tagged manifest when several
    /// manifests share the config).
    pub image: ImportedImage,
}

/// How registries are reached.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registries (`host[:port]`, as written in references) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// PEM files of CA certificates trusted besides the system's.
    pub extra_ca_files: Vec<PathBuf>,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
    /// Layers fetched and converted at the same time by one pull.
    pub max_concurrent_downloads: usize,
    /// Registry (`host[:port]` as written in references) to the `host[:port]` pulled from
    /// instead, as containerd's mirrors: the image keeps the name it was asked for.
    pub mirrors: std::collections::HashMap<String, String>,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            extra_ca_files: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(120),
            max_concurrent_downloads: 3,
            mirrors: std::collections::HashMap::new(),
        }
    }
}

/// Disk use of the image store, for ImageFsInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsUsage {
    pub timestamp: SystemTime,
    /// The mount point of the filesystem holding the store.
    pub mountpoint: PathBuf,
    /// Bytes allocated to the store's files (hard links counted once).
    pub used_bytes: u64,
    /// Inodes (files and directories) the store uses.
    pub inodes_used: u64,
}

/// What pulls through this `Images` did since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullCounters {
    /// Pulls that went to a registry (a pull that joined one in flight does not count).
    pub registry_pulls: u64,
    /// Layer blobs downloaded.
    pub blobs_downloaded: u64,
    /// Layers converted to EROFS disks by pulls.
    pub layers_converted: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error(transparent)]
    InvalidReference(#[from] ReferenceError),
    #[error("image {reference} was not found ({detail})")]
    NotFound { reference: String, detail: String },
    #[error("the registry refused access to {reference} ({detail}); the credentials are missing or wrong")]
    Unauthorized { reference: String, detail: String },
    #[error("the credentials for {reference} are malformed: {reason}")]
    InvalidCredentials {
        reference: String,
        reason: &'static str,
    },
    #[error("the {what} of {reference} has digest {actual}, but {expected} was expected")]
    DigestMismatch {
        reference: String,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("the {what} {digest} of {reference} is not the {expected} bytes its descriptor says")]
    SizeMismatch {
        reference: String,
        what: &'static str,
        digest: Digest,
        expected: u64,
    },
    #[error(
        "the {what} of {reference} has media type {media_type:?}, which vpod does not support"
    )]
    UnsupportedMediaType {
        reference: String,
        what: &'static str,
        media_type: String,
    },
    #[error("the image index of {reference} has no manifest for {platform}")]
    NoMatchingPlatform { reference: String, platform: String },
    #[error("the manifest or config of {reference} is malformed: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("the {what} of {reference} is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        reference: String,
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("the registry of {reference} could not be reached or answered with an error")]
    Registry {
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("image {id} is used by a container and cannot be removed")]
    InUse { id: String },
    #[error("{reference:?} matches {count} images; give more of the id")]
    Ambiguous { reference: String, count: usize },
    #[error("the CA certificate file {path} could not be read")]
    CaCertificate {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the registry client could not be set up")]
    Client(#[source] OciDistributionError),
    #[error("could not {operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the layer store failed")]
    Store(#[from] LayerStoreError),
    #[error("a pull's background task stopped before finishing")]
    Task(#[source] tokio::task::JoinError),
}

impl ImagesError {
    fn io(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ImagesError {
        let path = path.to_owned();
        move |source| ImagesError::Io {
            operation,
            path,
            source,
        }
    }
}

/// The image service over one layer store. Cloning shares it.
#[derive(Clone)]
pub struct Images {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    store: LayerStore,
    options: RegistryOptions,
    certificates: Vec<Certificate>,
    /// Pulls in flight, by normalized reference; the slot holds the manifest the last
    /// finished pull stored, for those that waited on it.
    in_flight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Digest>>>>>,
    registry_pulls: AtomicU64,
    blobs_downloaded: AtomicU64,
    layers_converted: AtomicU64,
}

impl Images {
    /// Wraps `store`, reading the extra CA files and removing staging directories that
    /// pulls of dead processes left.
    pub fn open(store: LayerStore, options: RegistryOptions) -> Result<Images, ImagesError> {
        let certificates = options
            .extra_ca_files
            .iter()
            .map(|path| {
                std::fs::read(path)
                    .map(|data| Certificate {
                        encoding: CertificateEncoding::Pem,
                        data,
                    })
                    .map_err(|source| ImagesError::CaCertificate {
                        path: path.clone(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        pull::remove_abandoned_staging(&store.staging_dir())?;
        Ok(Images {
            shared: Arc::new(Shared {
                store,
                options,
                certificates,
                in_flight: Mutex::new(HashMap::new()),
                registry_pulls: AtomicU64::new(0),
                blobs_downloaded: AtomicU64::new(0),
                layers_converted: AtomicU64::new(0),
            }),
        })
    }

    /// The layer store underneath.
    pub fn store(&self) -> &LayerStore {
        &self.shared.store
    }

    /// Every image, by id.
    pub fn list(&self) -> Result<Vec<ImageRecord>, ImagesError> {
        Ok(catalog::entries(&self.shared.store)?
            .into_iter()
            .map(|entry| entry.record)
            .collect())
    }

    /// The image `reference_or_id` names (see the module docs), if any.
    pub fn status(&self, reference_or_id: &str) -> Result<Option<ImageRecord>, ImagesError> {
        let entries = catalog::entries(&self.shared.store)?;
        Ok(catalog::find(&entries, reference_or_id)?.map(|entry| entry.record.clone()))
    }

    /// Removes the image `reference_or_id` names, with all its tags, unless `in_use` says a
    /// container uses it (`InUse`), then deletes the layer disks no image references.
    /// `Ok(false)` when no image matched (removal is idempotent).
    pub fn remove(
        &self,
        reference_or_id: &str,
        in_use: &dyn Fn(&ImageRecord) -> bool,
    ) -> Result<bool, ImagesError> {
        let store = &self.shared.store;
        let entries = catalog::entries(store)?;
        let Some(entry) = catalog::find(&entries, reference_or_id)? else {
            return Ok(false);
        };
        if in_use(&entry.record) {
            return Err(ImagesError::InUse {
                id: entry.record.id.clone(),
            });
        }
        // Names first: an image caught half-removed is untagged, never tagged but gone.
        store.update_image_names(|names| {
            for manifest in &entry.manifests {
                names.forget_manifest(manifest);
            }
        })?;
        for manifest in &entry.manifests {
            store.remove_image(manifest)?;
        }
        store.remove_layers_without_image(&[])?;
        Ok(true)
    }

    /// Disk use of the store's layers, records and staging files.
    pub fn fs_usage(&self) -> Result<FsUsage, ImagesError> {
        usage::store_usage(&self.shared.store)
    }

    /// Imports `oci:PATH[:TAG]` (see `LayerStore::import_oci_layout`) and, with `tag_as`
    /// (any reference form: `vpod/default`, `127.0.0.1:5000/x:v1`), names it: the tag moves
    /// to this image and its repository gains a repo digest. Blocking.
    pub fn import_oci_layout(
        &self,
        reference: &str,
        tag_as: Option<&str>,
    ) -> Result<ImageRecord, ImagesError> {
        let name = tag_as.map(ImageReference::parse).transpose()?;
        let store = &self.shared.store;
        let image = store.import_oci_layout(reference)?;
        if let Some(name) = &name {
            catalog::record_names(store, name, &image.manifest_digest, &image.manifest_digest)?;
        }
        self.record_of_manifest(&image.manifest_digest)
    }

    /// What pulls did since `open`.
    pub fn counters(&self) -> PullCounters {
        PullCounters {
            registry_pulls: self.shared.registry_pulls.load(Ordering::Relaxed),
            blobs_downloaded: self.shared.blobs_downloaded.load(Ordering::Relaxed),
            layers_converted: self.shared.layers_converted.load(Ordering::Relaxed),
        }
    }

    /// The record of the image holding `manifest_digest`; it was just stored, so its
    /// absence means someone removed it meanwhile.
    fn record_of_manifest(&self, manifest_digest: &Digest) -> Result<ImageRecord, ImagesError> {
        catalog::entries(&self.shared.store)?
            .into_iter()
            .find(|entry| entry.manifests.contains(manifest_digest))
            .map(|entry| entry.record)
            .ok_or_else(|| ImagesError::NotFound {
                reference: manifest_digest.to_string(),
                detail: "it was removed while being pulled".to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A gRPC server keeps `Images` in its service and awaits pulls from its handlers: both
    // must cross threads. These fail to compile otherwise.
    fn _images_are_shared_across_threads(images: Images) -> impl Send + Sync + 'static {
        images
    }

    fn _pull_future_is_send(images: &Images) -> impl std::future::Future + Send + '_ {
        images.pull("busybox", None)
    }

    #[test]
    fn credentials_are_not_printed() {
        let auth = RegistryAuth {
            username: "alice".into(),
            password: "secret".into(),
            registry_token: "token".into(),
            ..RegistryAuth::default()
        };
        let printed = format!("{auth:?}");
        assert!(printed.contains("alice"), "{printed}");
        assert!(
            !printed.contains("secret") && !printed.contains("token\""),
            "{printed}"
        );
    }
}
