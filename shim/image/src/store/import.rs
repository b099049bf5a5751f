//! Importing an image from an OCI layout: resolve, convert each layer, record the image.

use std::collections::BTreeMap;
use std::path::PathBuf;

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::digest::{DiffId, Digest};
use crate::oci::layout::{OciLayout, OciReference};
use crate::store::{LayerStore, LayerStoreError};

/// An image in the store, ready to run: its layers' disks, lowest first, and how to run it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedImage {
    /// The reference it was last imported under, e.g. `oci:/images/busybox:latest`.
    pub reference: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    pub layers: Vec<ImageLayer>,
}

/// One layer of an image as a disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayer {
    pub diff_id: DiffId,
    /// The `.erofs` file; derived from the store root, not stored.
    #[serde(skip)]
    pub path: PathBuf,
    /// Bytes of the `.erofs` file.
    pub size: u64,
}

/// How a container of the image runs (the image config's `config` object, with absent
/// fields as empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

impl ImageConfig {
    /// The fields the store keeps of an image config file. Public for the fuzz targets.
    #[doc(hidden)]
    pub fn from_config_file(file: &ImageConfiguration) -> ImageConfig {
        let run = file.config().clone().unwrap_or_default();
        ImageConfig {
            architecture: file.architecture().to_string(),
            os: file.os().to_string(),
            env: run.env().clone().unwrap_or_default(),
            entrypoint: run.entrypoint().clone().unwrap_or_default(),
            cmd: run.cmd().clone().unwrap_or_default(),
            working_dir: run.working_dir().clone().unwrap_or_default(),
            user: run.user().clone().unwrap_or_default(),
            labels: run
                .labels()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            stop_signal: run.stop_signal().clone(),
        }
    }
}

impl LayerStore {
    /// Imports `oci:PATH[:TAG]`: every blob is checked against its descriptor, every layer
    /// against its diffID, and each layer is converted once (or reused), then the image is
    /// recorded under `images/`.
    pub fn import_oci_layout(&self, reference: &str) -> Result<ImportedImage, LayerStoreError> {
        let parsed = OciReference::parse(reference)?;
        let layout = OciLayout::new(parsed.layout_dir);
        let resolved = layout.resolve(parsed.tag.as_deref())?;

        Ok(self.import_resolved(&layout, &resolved, reference)?.image)
    }
}
