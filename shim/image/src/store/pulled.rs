//! Importing an image whose manifest and config were fetched and verified elsewhere (from a
//! registry): blobs of layers the store already holds need not be present at all.

use std::collections::HashSet;

use crate::digest::{DiffId, Digest};
use crate::oci::layout::{OciLayout, ResolvedImage, ResolvedLayer};
use crate::store::import::ImageConfig;
use crate::store::{files, ImageLayer, ImportedImage, LayerStore, LayerStoreError};

/// What importing a resolved image did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImport {
    pub image: ImportedImage,
    /// Layers this call converted (the rest were reused).
    pub converted: Vec<DiffId>,
}

impl LayerStore {
    /// Whether layer `diff_id` is converted and blob `blob_digest` was already proven to
    /// uncompress to it, so a puller need not download the blob.
    pub fn has_verified_layer(
        &self,
        diff_id: &DiffId,
        blob_digest: &Digest,
    ) -> Result<bool, LayerStoreError> {
        if !self.has_layer(diff_id) {
            return Ok(false);
        }
        Ok(self
            .layer_record(diff_id)?
            .is_some_and(|record| record.verified_blobs.contains(blob_digest)))
    }

    /// Imports `resolved` (its manifest and config already verified by the caller) under
    /// `reference`: each layer whose blob is in `layout` is checked and converted (or
    /// reused) as `import_oci_layout` does; a layer whose blob is absent must already be
    /// converted from that very blob, else `LayerBlobMissing` (garbage collection may have
    /// removed it since the caller looked; fetch the blob and try again). The image record
    /// is written last, so a failure leaves no image behind.
    pub fn import_resolved(
        &self,
        layout: &OciLayout,
        resolved: &ResolvedImage,
        reference: &str,
    ) -> Result<ResolvedImport, LayerStoreError> {
        self.import_from(Some(layout), resolved, reference)
    }

    /// Records `resolved` (verified by the caller) under `reference` when every layer is
    /// already converted from its very blob (a pull streamed them in); else
    /// `LayerBlobMissing` (garbage collection removed one since: convert it again).
    pub fn import_converted(
        &self,
        resolved: &ResolvedImage,
        reference: &str,
    ) -> Result<ResolvedImport, LayerStoreError> {
        self.import_from(None, resolved, reference)
    }

    fn import_from(
        &self,
        layout: Option<&OciLayout>,
        resolved: &ResolvedImage,
        reference: &str,
    ) -> Result<ResolvedImport, LayerStoreError> {
        let lock_path = self.store_lock_path();
        let _store_lock =
            files::lock_shared(&lock_path).map_err(LayerStoreError::io("lock", &lock_path))?;
        let mut layers = Vec::with_capacity(resolved.layers.len());
        let mut converted = Vec::new();
        for ResolvedLayer { blob, diff_id } in &resolved.layers {
            let with_blob = layout.filter(|layout| layout.blob_path(&blob.digest).exists());
            let record = if let Some(layout) = with_blob {
                let (record, did_convert) = self.ensure_layer_reporting(layout, blob, *diff_id)?;
                if did_convert {
                    converted.push(*diff_id);
                }
                record
            } else {
                self.reusable_record(blob, diff_id)?
                    .ok_or(LayerStoreError::LayerBlobMissing {
                        digest: blob.digest,
                    })?
            };
            layers.push(ImageLayer {
                diff_id: *diff_id,
                path: self.layer_path(diff_id),
                size: record.erofs_size,
            });
        }
        let image = ImportedImage {
            reference: reference.to_owned(),
            manifest_digest: resolved.manifest_digest,
            config_digest: resolved.config_digest,
            config: ImageConfig::from_config_file(&resolved.config),
            layers,
        };
        self.write_record(&self.image_record_path(&image.manifest_digest), &image)?;
        Ok(ResolvedImport { image, converted })
    }

    /// Deletes those of `candidates` (the layers a failed pull converted) that no image
    /// record references, and returns them: a failed pull leaves no disk behind. Under the
    /// exclusive store lock, as garbage collection; an import that counted on one of them
    /// meets `LayerBlobMissing` and fetches it again.
    pub fn remove_layers_unless_referenced(
        &self,
        candidates: &[DiffId],
    ) -> Result<Vec<DiffId>, LayerStoreError> {
        let lock_path = self.store_lock_path();
        let _store_lock =
            files::lock_exclusive(&lock_path).map_err(LayerStoreError::io("lock", &lock_path))?;
        let mut referenced: HashSet<DiffId> = HashSet::new();
        for image in self.list_images()? {
            referenced.extend(image.layers.iter().map(|layer| layer.diff_id));
        }
        let mut removed = Vec::new();
        for diff_id in candidates {
            if !referenced.contains(diff_id) && !removed.contains(diff_id) {
                self.remove_layer_files(diff_id)?;
                removed.push(*diff_id);
            }
        }
        Ok(removed)
    }

    /// Deletes every converted layer that no image record references and that is not in
    /// `also_keep` (layers attached to running VMs), and returns their diffIDs. Unlike
    /// `remove_unreferenced`, the image records are read under the exclusive store lock,
    /// so an import finishing meanwhile cannot lose its layers.
    pub fn remove_layers_without_image(
        &self,
        also_keep: &[DiffId],
    ) -> Result<Vec<DiffId>, LayerStoreError> {
        let lock_path = self.store_lock_path();
        let _store_lock =
            files::lock_exclusive(&lock_path).map_err(LayerStoreError::io("lock", &lock_path))?;
        let mut keep: HashSet<DiffId> = also_keep.iter().copied().collect();
        for image in self.list_images()? {
            keep.extend(image.layers.iter().map(|layer| layer.diff_id));
        }
        self.remove_layers_except(&keep)
    }
}
