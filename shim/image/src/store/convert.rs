//! Making sure one layer is converted: reuse it if present, else write its EROFS image
//! from the tar stream (or, with `LayerConverter::StagedMkfs`, extract and `mkfs.erofs`
//! it) under the layer's lock, publishing the image with an atomic rename.

use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

use crate::digest::{DiffId, HashingReader};
use crate::layer::decompress::open_decompressed;
use crate::layer::erofs::uuid_bytes_from_diff_id;
use crate::layer::erofs_writer::ErofsLayerWriter;
use crate::layer::extract::LayerExtractor;
use crate::oci::convert::BlobRef;
use crate::oci::layout::OciLayout;
use crate::store::files::{self, TempDirGuard, TempFileGuard};
use crate::store::{LayerConverter, LayerRecord, LayerStore, LayerStoreError};

impl LayerStore {
    /// Ensures the layer `descriptor` (whose config diffID is `diff_id`) is converted and
    /// returns its record and whether this call converted it (`true`) or found it already
    /// converted (`false`). The blob's digest and size are checked first, in every case.
    pub(crate) fn ensure_layer_reporting(
        &self,
        layout: &OciLayout,
        descriptor: &BlobRef,
        diff_id: DiffId,
    ) -> Result<(LayerRecord, bool), LayerStoreError> {
        layout.verify_blob(descriptor)?;
        if let Some(record) = self.reusable_record(descriptor, &diff_id)? {
            return Ok((record, false));
        }

        let lock_path = self.layer_lock_path(&diff_id);
        let _layer_lock =
            files::lock_exclusive(&lock_path).map_err(LayerStoreError::io("lock", &lock_path))?;
        // Another process may have finished while we waited.
        if let Some(record) = self.reusable_record(descriptor, &diff_id)? {
            return Ok((record, false));
        }
        if self.has_layer(&diff_id) {
            return self
                .verify_blob_against_existing_layer(layout, descriptor, diff_id)
                .map(|record| (record, false));
        }
        self.remove_stale_temporaries(&diff_id)?;
        self.convert_layer(layout, descriptor, diff_id)
            .map(|record| (record, true))
    }

    /// The record, if the image exists and this very blob was already proven to be it.
    pub(super) fn reusable_record(
        &self,
        descriptor: &BlobRef,
        diff_id: &DiffId,
    ) -> Result<Option<LayerRecord>, LayerStoreError> {
        if !self.has_layer(diff_id) {
            return Ok(None);
        }
        Ok(self
            .layer_record(diff_id)?
            .filter(|record| record.verified_blobs.contains(&descriptor.digest)))
    }

    /// The layer exists (from another image's blob, or a crash before its record was
    /// written): prove this blob uncompresses to the same diffID, without extracting.
    fn verify_blob_against_existing_layer(
        &self,
        layout: &OciLayout,
        descriptor: &BlobRef,
        diff_id: DiffId,
    ) -> Result<LayerRecord, LayerStoreError> {
        let digest = descriptor.digest;
        let blob = layout.open_blob_checked_size(descriptor)?;
        let mut compressed = HashingReader::new(blob);
        let (decompressed, _) = open_decompressed(descriptor.media_type.as_ref(), &mut compressed)
            .map_err(|source| LayerStoreError::Decompress { digest, source })?;
        let (actual, tar_size) = HashingReader::new(decompressed)
            .finish()
            .map_err(|source| LayerStoreError::ReadLayer { digest, source })?;
        check_blob_unchanged(compressed, descriptor)?;
        if actual != diff_id {
            return Err(LayerStoreError::DiffIdMismatch {
                digest,
                expected: diff_id,
                actual,
            });
        }
        let image_path = self.layer_path(&diff_id);
        let erofs_size = fs::metadata(&image_path)
            .map_err(LayerStoreError::io("inspect", &image_path))?
            .len();
        let mut record = self.layer_record(&diff_id)?.unwrap_or(LayerRecord {
            diff_id,
            erofs_size,
            tar_size,
            stats: Default::default(),
            verified_blobs: Vec::new(),
        });
        record.verified_blobs.push(digest);
        record.verified_blobs.sort();
        record.verified_blobs.dedup();
        self.write_record(&self.layer_record_path(&diff_id), &record)?;
        Ok(record)
    }

    fn convert_layer(
        &self,
        layout: &OciLayout,
        descriptor: &BlobRef,
        diff_id: DiffId,
    ) -> Result<LayerRecord, LayerStoreError> {
        let digest = descriptor.digest;
        let image_temp = TempFileGuard {
            path: self
                .temp_dir()
                .join(files::unique_temp_name(&format!("{}.erofs", diff_id.hex()))),
        };
        let blob = layout.open_blob_checked_size(descriptor)?;
        let mut compressed = HashingReader::new(blob);
        let (decompressed, _) = open_decompressed(descriptor.media_type.as_ref(), &mut compressed)
            .map_err(|source| LayerStoreError::Decompress { digest, source })?;
        let mut archive = tar::Archive::new(HashingReader::new(decompressed));
        let stats = match &self.options.converter {
            LayerConverter::Writer => {
                let mut writer = ErofsLayerWriter::create(&image_temp.path)
                    .map_err(|source| LayerStoreError::Extract { digest, source })?;
                writer
                    .add_entries(&mut archive)
                    .map_err(|source| LayerStoreError::Extract { digest, source })?;
                let (actual, tar_size) = archive
                    .into_inner()
                    .finish()
                    .map_err(|source| LayerStoreError::ReadLayer { digest, source })?;
                check_digests(compressed, descriptor, diff_id, actual)?;
                // Only a proven layer gets its metadata and superblock.
                let stats = writer
                    .finish(uuid_bytes_from_diff_id(&diff_id))
                    .map_err(|source| LayerStoreError::Extract { digest, source })?;
                (stats, tar_size)
            }
            LayerConverter::StagedMkfs(builder) => {
                let staging_path = self
                    .temp_dir()
                    .join(files::unique_temp_name(&diff_id.hex()));
                let staging = TempDirGuard::create(staging_path.clone())
                    .map_err(LayerStoreError::io("create", &staging_path))?;
                let stats = LayerExtractor::new(staging.path())
                    .and_then(|extractor| extractor.extract_all(&mut archive))
                    .map_err(|source| LayerStoreError::Extract { digest, source })?;
                // The diffID covers the whole stream, end-of-archive blocks and padding
                // included.
                let (actual, tar_size) = archive
                    .into_inner()
                    .finish()
                    .map_err(|source| LayerStoreError::ReadLayer { digest, source })?;
                check_digests(compressed, descriptor, diff_id, actual)?;
                builder
                    .build(
                        staging.path(),
                        &image_temp.path,
                        &diff_id,
                        stats.newest_mtime,
                    )
                    .map_err(|source| LayerStoreError::Erofs { diff_id, source })?;
                (stats, tar_size)
            }
        };
        let (stats, tar_size) = stats;
        let image_path = self.layer_path(&diff_id);
        let erofs_size = fs::metadata(&image_temp.path)
            .map_err(LayerStoreError::io("inspect", &image_temp.path))?
            .len();
        set_read_only(&image_temp.path)?;
        files::rename_durably(&image_temp.path, &image_path)
            .map_err(LayerStoreError::io("publish", &image_path))?;
        let record = LayerRecord {
            diff_id,
            erofs_size,
            tar_size,
            stats,
            verified_blobs: vec![digest],
        };
        self.write_record(&self.layer_record_path(&diff_id), &record)?;
        Ok(record)
    }

    /// Removes staging trees and images that a crashed converter of this layer left. Only
    /// the holder of the layer's lock converts it, so whatever is there is abandoned.
    fn remove_stale_temporaries(&self, diff_id: &DiffId) -> Result<(), LayerStoreError> {
        let dir = self.temp_dir();
        let prefix = format!("{}.", diff_id.hex());
        for entry in fs::read_dir(&dir).map_err(LayerStoreError::io("list", &dir))? {
            let entry = entry.map_err(LayerStoreError::io("list", &dir))?;
            if !entry.file_name().to_string_lossy().starts_with(&prefix) {
                continue;
            }
            let path: PathBuf = entry.path();
            let removed = match entry.file_type() {
                Ok(kind) if kind.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            match removed {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(LayerStoreError::io("remove", &path)(e)),
            }
        }
        Ok(())
    }
}

/// Checks the rest of the blob (see `check_blob_unchanged`), then the tar's diffID.
fn check_digests<R: Read>(
    compressed: HashingReader<R>,
    descriptor: &BlobRef,
    expected: DiffId,
    actual: DiffId,
) -> Result<(), LayerStoreError> {
    check_blob_unchanged(compressed, descriptor)?;
    if actual != expected {
        return Err(LayerStoreError::DiffIdMismatch {
            digest: descriptor.digest,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Reads the rest of the blob and checks that what was decompressed is what was verified.
fn check_blob_unchanged<R: Read>(
    compressed: HashingReader<R>,
    descriptor: &BlobRef,
) -> Result<(), LayerStoreError> {
    let digest = descriptor.digest;
    let (actual, size) = compressed
        .finish()
        .map_err(|source| LayerStoreError::ReadLayer { digest, source })?;
    if actual != digest || size != descriptor.size {
        return Err(LayerStoreError::BlobChanged { digest });
    }
    Ok(())
}

fn set_read_only(path: &std::path::Path) -> Result<(), LayerStoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .map_err(LayerStoreError::io("protect", path))
}
