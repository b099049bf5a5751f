//! The layer store: image layers converted once into read-only EROFS images, keyed by
//! diffID, shared by every pod VM that attaches them as virtio-blk disks.
//!
//! On disk, under the store root:
//! ```text
//! store.lock                       shared by imports, exclusive for garbage collection
//! layers/sha256/<hex>.erofs        a converted layer (read-only, never rewritten)
//! layers/sha256/<hex>.json         its LayerRecord
//! layers/sha256/<hex>.lock         one converter per layer at a time
//! images/<manifest hex>.json       an ImportedImage
//! names.json                       ImageNames: the tags and repo digests of images
//! names.lock                       one writer of names.json at a time
//! tmp/                             staging trees and files being written
//! ```

mod convert;
mod files;
mod import;
mod names;
mod pulled;
mod snapshot;

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{DiffId, Digest};
use crate::layer::decompress::DecompressError;
use crate::layer::erofs::{ErofsBuilder, ErofsError};
use crate::layer::extract::{ExtractError, ExtractStats, LayerLimits};
use crate::oci::layout::OciLayoutError;

pub use import::{ImageConfig, ImageLayer, ImportedImage};
pub use names::ImageNames;
pub use pulled::ResolvedImport;
pub use snapshot::SnapshotError;

#[derive(Debug, thiserror::Error)]
pub enum LayerStoreError {
    #[error("could not {operation} {path}")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the image layout could not be read")]
    Layout(#[from] OciLayoutError),
    #[error("layer {digest} cannot be decompressed")]
    Decompress {
        digest: Digest,
        #[source]
        source: DecompressError,
    },
    #[error("layer {digest} could not be read")]
    ReadLayer {
        digest: Digest,
        #[source]
        source: io::Error,
    },
    #[error("layer {digest} could not be extracted")]
    Extract {
        digest: Digest,
        #[source]
        source: ExtractError,
    },
    #[error("layer {diff_id} could not be turned into an EROFS image")]
    Erofs {
        diff_id: DiffId,
        #[source]
        source: ErofsError,
    },
    #[error("layer {digest} uncompresses to {actual}, but the image config says {expected}")]
    DiffIdMismatch {
        digest: Digest,
        expected: DiffId,
        actual: DiffId,
    },
    #[error("layer blob {digest} was not fetched and the store no longer holds its layer")]
    LayerBlobMissing { digest: Digest },
    #[error("store record {path} is not valid JSON of the expected shape")]
    Record {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl LayerStoreError {
    fn io(operation: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LayerStoreError {
        let path = path.to_owned();
        move |source| LayerStoreError::Io {
            operation,
            path,
            source,
        }
    }
}

/// What the store knows about a converted layer, in `layers/sha256/<hex>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub diff_id: DiffId,
    /// Bytes of the `.erofs` image.
    pub erofs_size: u64,
    /// Bytes of the uncompressed tar.
    pub tar_size: u64,
    pub stats: ExtractStats,
    /// Compressed blobs proven to uncompress to this diffID: importing one again reuses
    /// the image without reading the blob past its digest check.
    pub verified_blobs: Vec<Digest>,
}

/// Settings of a store; `Default` suits production.
#[derive(Debug, Clone, Default)]
pub struct LayerStoreOptions {
    pub converter: LayerConverter,
    /// What one layer may cost: entries and uncompressed bytes.
    pub limits: LayerLimits,
}

/// How a layer tar becomes an EROFS image.
#[derive(Debug, Clone, Default)]
pub enum LayerConverter {
    /// The single-pass writer: the image straight from the tar stream, nothing else on the
    /// host's filesystem.
    #[default]
    Writer,
    /// The former path, kept for comparison: extract to a staging directory (needs root
    /// and a filesystem that takes device nodes and `trusted.*` xattrs), then `mkfs.erofs`.
    StagedMkfs(ErofsBuilder),
}

/// A directory of converted layers and imported images.
pub struct LayerStore {
    root: PathBuf,
    options: LayerStoreOptions,
}

impl LayerStore {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<LayerStore, LayerStoreError> {
        LayerStore::open_with(root, LayerStoreOptions::default())
    }

    pub fn open_with(
        root: impl AsRef<Path>,
        options: LayerStoreOptions,
    ) -> Result<LayerStore, LayerStoreError> {
        let root = std::path::absolute(root.as_ref())
            .map_err(LayerStoreError::io("resolve", root.as_ref()))?;
        let store = LayerStore { root, options };
        for dir in [store.layers_dir(), store.images_dir(), store.temp_dir()] {
            fs::create_dir_all(&dir).map_err(LayerStoreError::io("create", &dir))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the EROFS image of layer `diff_id` is (or would be).
    pub fn layer_path(&self, diff_id: &DiffId) -> PathBuf {
        self.layers_dir().join(format!("{}.erofs", diff_id.hex()))
    }

    /// Whether layer `diff_id` is converted and present.
    pub fn has_layer(&self, diff_id: &DiffId) -> bool {
        self.layer_path(diff_id).is_file()
    }

    /// The record of a converted layer, if there is one.
    pub fn layer_record(&self, diff_id: &DiffId) -> Result<Option<LayerRecord>, LayerStoreError> {
        read_json_if_present(&self.layer_record_path(diff_id))
    }

    /// Every imported image, in manifest-digest order.
    pub fn list_images(&self) -> Result<Vec<ImportedImage>, LayerStoreError> {
        let dir = self.images_dir();
        let mut images = Vec::new();
        for entry in fs::read_dir(&dir).map_err(LayerStoreError::io("list", &dir))? {
            let entry = entry.map_err(LayerStoreError::io("list", &dir))?;
            let path = entry.path();
            if path.extension().is_some_and(|ext| ext == "json") {
                if let Some(image) = read_json_if_present::<ImportedImage>(&path)? {
                    images.push(self.with_layer_paths(image));
                }
            }
        }
        images.sort_by_key(|image| image.manifest_digest);
        Ok(images)
    }

    /// The imported image with this manifest digest, if any.
    pub fn image(
        &self,
        manifest_digest: &Digest,
    ) -> Result<Option<ImportedImage>, LayerStoreError> {
        Ok(
            read_json_if_present::<ImportedImage>(&self.image_record_path(manifest_digest))?
                .map(|image| self.with_layer_paths(image)),
        )
    }

    /// Forgets an imported image; its layers stay until `remove_unreferenced`.
    pub fn remove_image(&self, manifest_digest: &Digest) -> Result<bool, LayerStoreError> {
        let path = self.image_record_path(manifest_digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(LayerStoreError::io("remove", &path)(e)),
        }
    }

    /// Deletes every converted layer not in `keep` and returns their diffIDs. Waits for
    /// imports in progress and blocks new ones meanwhile, so a layer an import has just
    /// reused is never removed under it. Callers pass the layers of every image they keep
    /// (see `list_images`) plus those attached to running VMs.
    pub fn remove_unreferenced(&self, keep: &[DiffId]) -> Result<Vec<DiffId>, LayerStoreError> {
        let lock_path = self.store_lock_path();
        let _store_lock =
            files::lock_exclusive(&lock_path).map_err(LayerStoreError::io("lock", &lock_path))?;
        let keep: HashSet<DiffId> = keep.iter().copied().collect();
        self.remove_layers_except(&keep)
    }

    /// The body of garbage collection; the caller holds the exclusive store lock.
    fn remove_layers_except(&self, keep: &HashSet<DiffId>) -> Result<Vec<DiffId>, LayerStoreError> {
        let dir = self.layers_dir();
        let mut removed = Vec::new();
        for entry in fs::read_dir(&dir).map_err(LayerStoreError::io("list", &dir))? {
            let entry = entry.map_err(LayerStoreError::io("list", &dir))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".erofs")) else {
                continue;
            };
            let Ok(diff_id) = Digest::from_hex(hex) else {
                continue;
            };
            if keep.contains(&diff_id) {
                continue;
            }
            self.remove_layer_files(&diff_id)?;
            removed.push(diff_id);
        }
        removed.sort();
        Ok(removed)
    }

    /// Deletes one layer's files; the caller holds the exclusive store lock.
    fn remove_layer_files(&self, diff_id: &DiffId) -> Result<(), LayerStoreError> {
        // The record goes first: a layer without a record is re-verified, never trusted.
        for path in [
            self.layer_record_path(diff_id),
            self.layer_path(diff_id),
            self.layer_lock_path(diff_id),
        ] {
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LayerStoreError::io("remove", &path)(e)),
            }
        }
        Ok(())
    }

    fn with_layer_paths(&self, mut image: ImportedImage) -> ImportedImage {
        for layer in &mut image.layers {
            layer.path = self.layer_path(&layer.diff_id);
        }
        image
    }

    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers/sha256")
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    /// A directory on the store's filesystem for files being written (pull staging), so
    /// they can be renamed into place.
    pub fn staging_dir(&self) -> PathBuf {
        self.temp_dir()
    }

    fn temp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn store_lock_path(&self) -> PathBuf {
        self.root.join("store.lock")
    }

    fn layer_record_path(&self, diff_id: &DiffId) -> PathBuf {
        self.layers_dir().join(format!("{}.json", diff_id.hex()))
    }

    fn layer_lock_path(&self, diff_id: &DiffId) -> PathBuf {
        self.layers_dir().join(format!("{}.lock", diff_id.hex()))
    }

    fn image_record_path(&self, manifest_digest: &Digest) -> PathBuf {
        self.images_dir()
            .join(format!("{}.json", manifest_digest.hex()))
    }

    fn write_record<T: Serialize>(&self, path: &Path, record: &T) -> Result<(), LayerStoreError> {
        let bytes =
            serde_json::to_vec_pretty(record).map_err(|source| LayerStoreError::Record {
                path: path.to_owned(),
                source,
            })?;
        files::write_atomically(&self.temp_dir(), path, &bytes)
            .map_err(LayerStoreError::io("write", path))
    }
}

fn read_json_if_present<T: serde::de::DeserializeOwned>(
    path: &Path,
) -> Result<Option<T>, LayerStoreError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LayerStoreError::io("read", path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| LayerStoreError::Record {
            path: path.to_owned(),
            source,
        })
}
