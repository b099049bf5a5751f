//! Choosing a layer blob's decompressor. The media type must be a known layer type; the
//! blob's magic bytes then decide the decoder, because real images do carry, for example,
//! uncompressed tars under Docker's `.tar.gzip` type. A media type that names a compression
//! the magic bytes contradict is accepted and the magic bytes win (the digest has already
//! pinned the content; only its encoding label is wrong).

use std::io::{self, BufRead, BufReader, Read};

use crate::oci::media_types::LAYER_MEDIA_TYPES;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("media type {0:?} is not a layer type this store can convert")]
    UnsupportedMediaType(String),
    #[error("could not read the start of the layer blob")]
    Read(#[source] io::Error),
    #[error("could not start the zstd decoder")]
    Zstd(#[source] ruzstd::decoding::errors::FrameDecoderError),
}

/// The compression a blob's first bytes show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectedCompression {
    Gzip,
    Zstd,
    /// Anything else is read as a plain tar; the tar reader refuses what is not one.
    None,
}

pub fn detect_compression(head: &[u8]) -> DetectedCompression {
    if head.starts_with(GZIP_MAGIC) {
        DetectedCompression::Gzip
    } else if head.starts_with(ZSTD_MAGIC) {
        DetectedCompression::Zstd
    } else {
        DetectedCompression::None
    }
}

pub fn check_layer_media_type(media_type: &str) -> Result<(), DecompressError> {
    if LAYER_MEDIA_TYPES.contains(&media_type) {
        Ok(())
    } else {
        Err(DecompressError::UnsupportedMediaType(media_type.to_owned()))
    }
}

/// Wraps `blob` in the decoder its magic bytes call for; returns the uncompressed stream.
pub fn open_decompressed<'a, R: Read + Send + 'a>(
    media_type: &str,
    blob: R,
) -> Result<(Box<dyn Read + Send + 'a>, DetectedCompression), DecompressError> {
    check_layer_media_type(media_type)?;
    let mut buffered = BufReader::with_capacity(256 * 1024, blob);
    let head = buffered.fill_buf().map_err(DecompressError::Read)?;
    let compression = detect_compression(head);
    let reader: Box<dyn Read + Send + 'a> = match compression {
        // MultiGzDecoder: concatenated gzip members are one stream (pigz and some tools
        // write them).
        DetectedCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
        DetectedCompression::Zstd => Box::new(
            ruzstd::decoding::StreamingDecoder::new(buffered).map_err(DecompressError::Zstd)?,
        ),
        DetectedCompression::None => Box::new(buffered),
    };
    Ok((reader, compression))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::writer::{encode_layer, LayerCompression};

    #[test]
    fn each_compression_round_trips_by_magic_bytes() {
        let tar = vec![7u8; 10_000];
        for compression in [
            LayerCompression::None,
            LayerCompression::Gzip,
            LayerCompression::Zstd,
        ] {
            let layer = encode_layer(&tar, compression).unwrap();
            // The media type is any layer type: the magic bytes decide.
            let (mut reader, _) = open_decompressed(
                crate::oci::media_types::MEDIA_TYPE_DOCKER_LAYER_GZIP,
                &layer.blob[..],
            )
            .unwrap();
            let mut out = Vec::new();
            reader.read_to_end(&mut out).unwrap();
            assert_eq!(out, tar, "{compression:?}");
        }
    }

    #[test]
    fn unknown_media_type_is_refused() {
        assert!(matches!(
            open_decompressed("application/octet-stream", &b""[..]),
            Err(DecompressError::UnsupportedMediaType(_))
        ));
    }
}
