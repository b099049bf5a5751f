//! Writing an OCI image layout: blobs by digest, the manifest, `index.json` and the
//! `oci-layout` marker. Used by the default-image builder and by tests that need images.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use serde::Serialize;

use crate::digest::{DiffId, Digest};
use crate::oci::spec::{
    Descriptor, ImageConfigFile, ImageIndex, ImageManifest, OciLayoutMarker, ANNOTATION_REF_NAME,
    MEDIA_TYPE_OCI_CONFIG, MEDIA_TYPE_OCI_LAYER_GZIP, MEDIA_TYPE_OCI_LAYER_TAR,
    MEDIA_TYPE_OCI_LAYER_ZSTD, MEDIA_TYPE_OCI_MANIFEST,
};

#[derive(Debug, thiserror::Error)]
pub enum OciWriteError {
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not compress a layer")]
    Compress(#[source] io::Error),
    #[error("could not encode {what} as JSON")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerCompression {
    None,
    Gzip,
    Zstd,
}

impl LayerCompression {
    pub fn oci_media_type(self) -> &'static str {
        match self {
            LayerCompression::None => MEDIA_TYPE_OCI_LAYER_TAR,
            LayerCompression::Gzip => MEDIA_TYPE_OCI_LAYER_GZIP,
            LayerCompression::Zstd => MEDIA_TYPE_OCI_LAYER_ZSTD,
        }
    }
}

/// A layer ready to be written: the compressed blob and the diffID of its tar.
pub struct EncodedLayer {
    pub blob: Vec<u8>,
    pub diff_id: DiffId,
    pub media_type: &'static str,
}

/// Compresses a layer tar deterministically (gzip header with no name and mtime 0).
pub fn encode_layer(
    tar: &[u8],
    compression: LayerCompression,
) -> Result<EncodedLayer, OciWriteError> {
    let blob = match compression {
        LayerCompression::None => tar.to_vec(),
        LayerCompression::Gzip => {
            let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::best());
            encoder.write_all(tar).map_err(OciWriteError::Compress)?;
            encoder.finish().map_err(OciWriteError::Compress)?
        }
        LayerCompression::Zstd => {
            ruzstd::encoding::compress_to_vec(tar, ruzstd::encoding::CompressionLevel::Fastest)
        }
    };
    Ok(EncodedLayer {
        blob,
        diff_id: Digest::of_bytes(tar),
        media_type: compression.oci_media_type(),
    })
}

/// A layout directory being written.
pub struct OciLayoutWriter {
    dir: PathBuf,
}

impl OciLayoutWriter {
    /// Creates the directory (and `blobs/sha256`) and writes the `oci-layout` marker.
    pub fn create(dir: impl Into<PathBuf>) -> Result<OciLayoutWriter, OciWriteError> {
        let writer = OciLayoutWriter { dir: dir.into() };
        let blobs = writer.dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(|source| OciWriteError::Write {
            path: blobs,
            source,
        })?;
        let marker = OciLayoutMarker {
            image_layout_version: "1.0.0".to_owned(),
        };
        writer.write_file(
            &writer.dir.join("oci-layout"),
            &to_json("oci-layout", &marker)?,
        )?;
        Ok(writer)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `bytes` as a blob and returns its descriptor.
    pub fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, OciWriteError> {
        let digest = Digest::of_bytes(bytes);
        self.write_file(&self.dir.join("blobs/sha256").join(digest.hex()), bytes)?;
        Ok(Descriptor {
            media_type: media_type.to_owned(),
            digest,
            size: bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        })
    }

    /// Writes a layer blob and returns its descriptor and diffID.
    pub fn write_layer(&self, layer: &EncodedLayer) -> Result<(Descriptor, DiffId), OciWriteError> {
        Ok((
            self.write_blob(layer.media_type, &layer.blob)?,
            layer.diff_id,
        ))
    }

    /// Writes the config and manifest blobs for `layers` (in order, lowest first) and returns
    /// the manifest's descriptor, tagged `tag` when given. `config.rootfs` is filled in here.
    pub fn write_image(
        &self,
        mut config: ImageConfigFile,
        layers: &[(Descriptor, DiffId)],
        tag: Option<&str>,
    ) -> Result<Descriptor, OciWriteError> {
        config.rootfs.fs_type = "layers".to_owned();
        config.rootfs.diff_ids = layers.iter().map(|(_, diff_id)| *diff_id).collect();
        let config_descriptor =
            self.write_blob(MEDIA_TYPE_OCI_CONFIG, &to_json("image config", &config)?)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(MEDIA_TYPE_OCI_MANIFEST.to_owned()),
            config: config_descriptor,
            layers: layers.iter().map(|(d, _)| d.clone()).collect(),
        };
        let mut descriptor =
            self.write_blob(MEDIA_TYPE_OCI_MANIFEST, &to_json("manifest", &manifest)?)?;
        if let Some(tag) = tag {
            descriptor
                .annotations
                .insert(ANNOTATION_REF_NAME.to_owned(), tag.to_owned());
        }
        Ok(descriptor)
    }

    /// Writes `index.json` listing `manifests`.
    pub fn write_index(&self, manifests: Vec<Descriptor>) -> Result<(), OciWriteError> {
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(crate::oci::spec::MEDIA_TYPE_OCI_INDEX.to_owned()),
            manifests,
        };
        self.write_file(&self.dir.join("index.json"), &to_json("index", &index)?)
    }

    fn write_file(&self, path: &Path, bytes: &[u8]) -> Result<(), OciWriteError> {
        fs::write(path, bytes).map_err(|source| OciWriteError::Write {
            path: path.to_owned(),
            source,
        })
    }
}

fn to_json<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, OciWriteError> {
    serde_json::to_vec(value).map_err(|source| OciWriteError::Json { what, source })
}
