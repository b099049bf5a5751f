//! Media types beyond oci-spec's `MediaType`: Docker's v2 schema 2 types, which registries
//! still serve and which `MediaType` carries only as `Other`, and which media types this
//! crate reads as a manifest, an index, a config or a layer.

use oci_spec::image::MediaType;

/// The annotation that names a manifest in an OCI layout's `index.json`.
pub use oci_spec::image::ANNOTATION_REF_NAME;

pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MEDIA_TYPE_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const MEDIA_TYPE_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MEDIA_TYPE_DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
pub const MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// Layer media types the store converts; the compression they name is checked against the
/// blob's magic bytes. The OCI ones are `MediaType`'s layer variants, spelled out because
/// `MediaType` has no constant strings (a test holds them to oci-spec's).
pub const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    MEDIA_TYPE_DOCKER_LAYER_TAR,
    MEDIA_TYPE_DOCKER_LAYER_GZIP,
    MEDIA_TYPE_DOCKER_LAYER_ZSTD,
    MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP,
];

/// An OCI image manifest or a Docker v2 schema 2 manifest.
pub fn is_manifest(media_type: &MediaType) -> bool {
    is_oci_or_docker(
        media_type,
        &MediaType::ImageManifest,
        MEDIA_TYPE_DOCKER_MANIFEST,
    )
}

/// An OCI image index or a Docker manifest list.
pub fn is_index(media_type: &MediaType) -> bool {
    is_oci_or_docker(
        media_type,
        &MediaType::ImageIndex,
        MEDIA_TYPE_DOCKER_MANIFEST_LIST,
    )
}

/// An OCI image config or a Docker container image config.
pub fn is_config(media_type: &MediaType) -> bool {
    is_oci_or_docker(
        media_type,
        &MediaType::ImageConfig,
        MEDIA_TYPE_DOCKER_CONFIG,
    )
}

/// A layer the store converts (one of [`LAYER_MEDIA_TYPES`]).
pub fn is_layer(media_type: &MediaType) -> bool {
    LAYER_MEDIA_TYPES.contains(&media_type.as_ref())
}

fn is_oci_or_docker(media_type: &MediaType, oci: &MediaType, docker: &str) -> bool {
    media_type == oci || matches!(media_type, MediaType::Other(other) if other == docker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_layer_types_are_oci_specs_layer_variants() {
        let oci_layers = [
            MediaType::ImageLayer,
            MediaType::ImageLayerGzip,
            MediaType::ImageLayerZstd,
            MediaType::ImageLayerNonDistributable,
            MediaType::ImageLayerNonDistributableGzip,
            MediaType::ImageLayerNonDistributableZstd,
        ];
        for media_type in &oci_layers {
            assert!(is_layer(media_type), "{media_type}");
        }
        let spelled: Vec<MediaType> = LAYER_MEDIA_TYPES
            .iter()
            .map(|text| MediaType::from(*text))
            .filter(|media_type| !matches!(media_type, MediaType::Other(_)))
            .collect();
        assert_eq!(spelled, oci_layers);
    }

    #[test]
    fn docker_types_are_read_as_their_oci_kind() {
        assert!(is_manifest(&MediaType::from(MEDIA_TYPE_DOCKER_MANIFEST)));
        assert!(is_manifest(&MediaType::ImageManifest));
        assert!(is_index(&MediaType::from(MEDIA_TYPE_DOCKER_MANIFEST_LIST)));
        assert!(is_index(&MediaType::ImageIndex));
        assert!(is_config(&MediaType::from(MEDIA_TYPE_DOCKER_CONFIG)));
        assert!(is_config(&MediaType::ImageConfig));
        assert!(is_layer(&MediaType::from(
            MEDIA_TYPE_DOCKER_FOREIGN_LAYER_GZIP
        )));
        assert!(!is_manifest(&MediaType::ImageIndex));
        assert!(!is_config(&MediaType::from(
            "application/vnd.oci.empty.v1+json"
        )));
        assert!(!is_layer(&MediaType::from(
            "application/vnd.example.layer.v1.tar+lz4"
        )));
    }
}
