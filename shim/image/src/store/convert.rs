//! Making sure one layer is converted: reuse it if present, else write its EROFS image
//! from the tar stream (or, with `LayerConverter::StagedMkfs`, extract and `mkfs.erofs`
//! it) under the layer's lock, publishing the image with an atomic rename.

use std::fs;
use std::io::{self, Read};
use std::path::PathBuf;

use crate::digest::{DiffId, HashingReader};
use crate::layer::decompress::{open_decompressed, DetectedCompression};
use crate::layer::erofs::{uuid_bytes_from_diff_id, ErofsBuilder};
use crate::layer::erofs_writer::ErofsLayerWriter;
use crate::layer::extract::{ExtractStats, LayerExtractor};
use crate::layer::read_ahead::ReadAhead;
use crate::oci::convert::BlobRef;
use crate::oci::layout::{OciLayout, OciLayoutError};
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
        // A layer to convert has its blob checked while it streams (a bad one leaves
        // nothing); one already converted has it checked here.
        if let Some(record) = self.reusable_record(descriptor, &diff_id)? {
            layout.verify_blob(descriptor)?;
            return Ok((record, false));
        }
        self.ensure_layer_from(descriptor, diff_id, || {
            Ok(layout.open_blob_checked_size(descriptor)?)
        })
    }

    /// Ensures the layer `descriptor` (config diffID `diff_id`) is converted from the blob's
    /// bytes as `blob` yields them (a registry's response body, say), checked against the
    /// descriptor's digest and size and the diffID as they pass: a bad blob leaves nothing.
    /// Returns the record and whether this call converted the layer. Once opened, the blob
    /// is read to its end, also when conversion fails, so the blob's own fault is reported
    /// first; a failure before that drops it unread (a pipe's writer then sees it closed).
    pub fn convert_streamed_layer(
        &self,
        descriptor: &BlobRef,
        diff_id: DiffId,
        blob: impl Read + Send,
    ) -> Result<(LayerRecord, bool), LayerStoreError> {
        let lock_path = self.store_lock_path();
        // Held like an import's: garbage collection waits for the conversion.
        let _store_lock =
            files::lock_shared(&lock_path).map_err(LayerStoreError::io("lock", &lock_path))?;
        self.ensure_layer_from(descriptor, diff_id, move || Ok(blob))
    }

    /// Under the layer's lock: reuses, verifies against, or converts the layer, reading the
    /// blob that `open_blob` gives once, if at all.
    fn ensure_layer_from<R: Read + Send>(
        &self,
        descriptor: &BlobRef,
        diff_id: DiffId,
        open_blob: impl FnOnce() -> Result<R, LayerStoreError>,
    ) -> Result<(LayerRecord, bool), LayerStoreError> {
        let lock_path = self.layer_lock_path(&diff_id);
        let _layer_lock =
            files::lock_exclusive(&lock_path).map_err(LayerStoreError::io("lock", &lock_path))?;
        // Another process may have converted it while we waited.
        if let Some(record) = self.reusable_record(descriptor, &diff_id)? {
            let blob = open_blob()?.take(descriptor.size.saturating_add(1));
            check_blob_digest(&mut HashingReader::new(blob), descriptor)?;
            return Ok((record, false));
        }
        if self.has_layer(&diff_id) {
            // Converted from another blob (or a crash came before its record): prove this
            // blob is the same layer, which also checks it against its descriptor.
            return self
                .verify_blob_against_existing_layer(open_blob()?, descriptor, diff_id)
                .map(|record| (record, false));
        }
        self.remove_stale_temporaries(&diff_id)?;
        self.convert_layer(open_blob()?, descriptor, diff_id)
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
        blob: impl Read + Send,
        descriptor: &BlobRef,
        diff_id: DiffId,
    ) -> Result<LayerRecord, LayerStoreError> {
        let digest = descriptor.digest;
        let mut compressed = HashingReader::new(blob.take(descriptor.size.saturating_add(1)));
        let hashed = (|| {
            let (decompressed, _) =
                open_decompressed(descriptor.media_type.as_ref(), &mut compressed)
                    .map_err(|source| LayerStoreError::Decompress { digest, source })?;
            HashingReader::new(Bounded::new(
                decompressed,
                self.options.limits.max_tar_bytes,
            ))
            .finish()
            .map_err(|source| LayerStoreError::ReadLayer { digest, source })
        })();
        check_blob_digest(&mut compressed, descriptor)?;
        let (actual, tar_size) = hashed?;
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
        blob: impl Read + Send,
        descriptor: &BlobRef,
        diff_id: DiffId,
    ) -> Result<LayerRecord, LayerStoreError> {
        let digest = descriptor.digest;
        let image_temp = TempFileGuard {
            path: self
                .temp_dir()
                .join(files::unique_temp_name(&format!("{}.erofs", diff_id.hex()))),
        };
        // Any failure of a blob that does not match its descriptor is reported as that.
        let mut compressed = HashingReader::new(blob.take(descriptor.size.saturating_add(1)));
        // The blob is read, hashed and decompressed on a thread of its own, ahead of the
        // writer; the scope ends with it, once the tar has been read.
        let read = std::thread::scope(|scope| -> Result<_, LayerStoreError> {
            let (decompressed, compression) =
                open_decompressed(descriptor.media_type.as_ref(), &mut compressed)
                    .map_err(|source| LayerStoreError::Decompress { digest, source })?;
            let decompressed = ReadAhead::spawn(scope, "vpod-layer-read", decompressed)
                .map_err(|source| LayerStoreError::ReadLayer { digest, source })?;
            // An uncompressed blob is the tar: its digest is the diffID, hashed once.
            let limits = self.options.limits;
            let tar_stream = TarStream::new(
                decompressed,
                compression != DetectedCompression::None,
                limits.max_tar_bytes,
            );
            let mut archive = tar::Archive::new(tar_stream);
            let unfinished = match &self.options.converter {
                LayerConverter::Writer => {
                    let mut writer = ErofsLayerWriter::create(&image_temp.path)
                        .map_err(|source| LayerStoreError::Extract { digest, source })?
                        .with_max_entries(limits.max_entries);
                    writer
                        .add_entries(&mut archive)
                        .map_err(|source| LayerStoreError::Extract { digest, source })?;
                    Unfinished::Writer(writer)
                }
                LayerConverter::StagedMkfs(builder) => {
                    let staging_path = self
                        .temp_dir()
                        .join(files::unique_temp_name(&diff_id.hex()));
                    let staging = TempDirGuard::create(staging_path.clone())
                        .map_err(LayerStoreError::io("create", &staging_path))?;
                    let stats = LayerExtractor::new(staging.path())
                        .and_then(|extractor| {
                            extractor
                                .with_max_entries(limits.max_entries)
                                .extract_all(&mut archive)
                        })
                        .map_err(|source| LayerStoreError::Extract { digest, source })?;
                    Unfinished::Staged {
                        builder,
                        staging,
                        stats,
                    }
                }
            };
            // The diffID covers the whole stream, end-of-archive blocks and padding included.
            let (actual, tar_size) = archive
                .into_inner()
                .finish()
                .map_err(|source| LayerStoreError::ReadLayer { digest, source })?;
            Ok((unfinished, actual, tar_size))
        });
        let (unfinished, actual, tar_size) = match read {
            Ok(read) => read,
            Err(error) => {
                check_blob_digest(&mut compressed, descriptor)?;
                return Err(error);
            }
        };
        check_streamed_digests(&mut compressed, descriptor, diff_id, actual)?;
        // Only a proven layer gets its image finished.
        let stats = match unfinished {
            Unfinished::Writer(writer) => writer
                .finish(uuid_bytes_from_diff_id(&diff_id))
                .map_err(|source| LayerStoreError::Extract { digest, source })?,
            Unfinished::Staged {
                builder,
                staging,
                stats,
            } => {
                builder
                    .build(
                        staging.path(),
                        &image_temp.path,
                        &diff_id,
                        stats.newest_mtime,
                    )
                    .map_err(|source| LayerStoreError::Erofs { diff_id, source })?;
                stats
            }
        };
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

/// A layer whose tar has been read, its image not yet finished (that waits for the blob's
/// digests).
enum Unfinished<'a> {
    /// The single-pass writer: metadata and superblock still to write.
    Writer(ErofsLayerWriter),
    /// The staged path: the tree extracted, `mkfs.erofs` still to run.
    Staged {
        builder: &'a ErofsBuilder,
        staging: TempDirGuard,
        stats: ExtractStats,
    },
}

/// The decompressed tar stream, hashed for its diffID, or only counted where the blob is
/// the tar itself.
enum TarStream<R> {
    Hashed(HashingReader<Bounded<R>>),
    Counted(Bounded<R>, u64),
}

impl<R: Read> TarStream<R> {
    /// `decompressed`, hashed unless the blob is the tar itself, refused past `max_bytes`.
    fn new(decompressed: R, hashed: bool, max_bytes: u64) -> TarStream<R> {
        let bounded = Bounded::new(decompressed, max_bytes);
        if hashed {
            TarStream::Hashed(HashingReader::new(bounded))
        } else {
            TarStream::Counted(bounded, 0)
        }
    }
}

impl<R: Read> Read for TarStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            TarStream::Hashed(reader) => reader.read(buf),
            TarStream::Counted(reader, count) => {
                let n = reader.read(buf)?;
                *count += n as u64;
                Ok(n)
            }
        }
    }
}

impl<R: Read> TarStream<R> {
    /// Reads the rest of the stream (within the limit); returns its digest (`None` where
    /// only counted) and its size.
    fn finish(self) -> io::Result<(Option<DiffId>, u64)> {
        match self {
            TarStream::Hashed(reader) => reader.finish().map(|(d, n)| (Some(d), n)),
            TarStream::Counted(mut reader, count) => {
                let rest = io::copy(&mut reader, &mut io::sink())?;
                Ok((None, count + rest))
            }
        }
    }
}

/// A decompressed stream that fails once it passes `limit` bytes: a small blob that would
/// expand without end (a decompression bomb, or endless data after the tar) stops there.
struct Bounded<R> {
    inner: R,
    left: u64,
    limit: u64,
}

/// The error a [`Bounded`] stream gives past its limit.
#[derive(Debug, thiserror::Error)]
#[error("the layer's uncompressed tar is larger than {limit} bytes, the store's limit")]
pub struct TarTooLarge {
    pub limit: u64,
}

impl<R> Bounded<R> {
    fn new(inner: R, limit: u64) -> Bounded<R> {
        Bounded {
            inner,
            left: limit,
            limit,
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // One byte more than is left tells "exactly at the limit" from "past it".
        let want = buf
            .len()
            .min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.left {
            return Err(io::Error::other(TarTooLarge { limit: self.limit }));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Checks the whole blob against its descriptor (as `OciLayout::verify_blob` would have
/// before reading it), then the tar's diffID (`None`: the blob's own digest).
fn check_streamed_digests<R: Read>(
    compressed: &mut HashingReader<R>,
    descriptor: &BlobRef,
    expected: DiffId,
    actual: Option<DiffId>,
) -> Result<(), LayerStoreError> {
    check_blob_digest(compressed, descriptor)?;
    let actual = actual.unwrap_or(descriptor.digest);
    if actual != expected {
        return Err(LayerStoreError::DiffIdMismatch {
            digest: descriptor.digest,
            expected,
            actual,
        });
    }
    Ok(())
}

/// Reads the rest of the blob (as far as one byte past its descriptor's size) and checks
/// its size and digest against the descriptor, as `OciLayout::verify_blob` would.
fn check_blob_digest<R: Read>(
    compressed: &mut HashingReader<R>,
    descriptor: &BlobRef,
) -> Result<(), LayerStoreError> {
    let (blob_digest, size) =
        compressed
            .finish_in_place()
            .map_err(|source| LayerStoreError::ReadLayer {
                digest: descriptor.digest,
                source,
            })?;
    if size != descriptor.size {
        return Err(OciLayoutError::SizeMismatch {
            digest: descriptor.digest,
            expected: descriptor.size,
            actual: size,
        }
        .into());
    }
    if blob_digest != descriptor.digest {
        return Err(OciLayoutError::DigestMismatch {
            expected: descriptor.digest,
            actual: blob_digest,
        }
        .into());
    }
    Ok(())
}

fn set_read_only(path: &std::path::Path) -> Result<(), LayerStoreError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o444))
        .map_err(LayerStoreError::io("protect", path))
}
