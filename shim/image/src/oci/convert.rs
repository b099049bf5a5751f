//! Where oci-spec's documents meet the store's own types. oci-spec accepts any digest
//! algorithm (`sha512:…`, even `foo:bar`); the store names blobs and layers by sha256 only,
//! so each digest read from a descriptor or a config's diffIDs is checked and converted here,
//! once, and the store works with [`Digest`] from then on. An image config is also read more
//! leniently than oci-spec reads it.

use oci_spec::image::{Descriptor, ImageConfiguration, MediaType};

use crate::digest::{DiffId, Digest, DigestError};

/// A blob a descriptor names, as the store handles it: its digest a checked sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub media_type: MediaType,
    pub digest: Digest,
    pub size: u64,
}

impl TryFrom<&Descriptor> for BlobRef {
    type Error = DigestError;

    fn try_from(descriptor: &Descriptor) -> Result<BlobRef, DigestError> {
        Ok(BlobRef {
            media_type: descriptor.media_type().clone(),
            digest: descriptor.digest().as_ref().parse()?,
            size: descriptor.size(),
        })
    }
}

impl From<Digest> for oci_spec::image::Digest {
    fn from(digest: Digest) -> oci_spec::image::Digest {
        oci_spec::image::Digest::try_from(digest.to_string())
            .expect("a sha256 digest's text form is a valid OCI digest")
    }
}

/// The config's diffIDs, lowest layer first.
pub fn diff_ids(config: &ImageConfiguration) -> Result<Vec<DiffId>, DigestError> {
    config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|diff_id| diff_id.parse())
        .collect()
}

/// Parses an image config blob. oci-spec requires `architecture` and `os`; an image that
/// leaves them out is read with them empty, as docker and containerd read it.
pub fn parse_image_config(bytes: &[u8]) -> Result<ImageConfiguration, serde_json::Error> {
    let strict = serde_json::from_slice(bytes);
    let Err(error) = strict else {
        return strict;
    };
    // Only the rare config without them is parsed twice; any other error is oci-spec's,
    // with its line and column.
    let mut document: serde_json::Value = serde_json::from_slice(bytes)?;
    let Some(fields) = document.as_object_mut() else {
        return Err(error);
    };
    let mut filled = false;
    for required in ["architecture", "os"] {
        if !fields.contains_key(required) {
            fields.insert(required.to_owned(), "".into());
            filled = true;
        }
    }
    if !filled {
        return Err(error);
    }
    serde_json::from_value(document)
}

#[cfg(test)]
mod tests {
    use oci_spec::image::{Arch, ImageManifest, Os};

    use super::*;

    const SHA256_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn descriptor(digest: &str) -> Descriptor {
        serde_json::from_str(&format!(
            r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{digest}","size":3}}"#
        ))
        .expect("oci-spec accepts the digest")
    }

    #[test]
    fn sha256_descriptor_converts_and_other_algorithms_are_refused() {
        let blob = BlobRef::try_from(&descriptor(&format!("sha256:{SHA256_HEX}"))).unwrap();
        assert_eq!(blob.digest, Digest::of_bytes(b""));
        assert_eq!(blob.size, 3);
        assert_eq!(blob.media_type, MediaType::ImageLayer);

        let sha512 = format!("sha512:{}", "ab".repeat(64));
        assert!(matches!(
            BlobRef::try_from(&descriptor(&sha512)),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            BlobRef::try_from(&descriptor("foo:bar")),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
    }

    #[test]
    fn our_digest_round_trips_through_oci_specs() {
        let digest = Digest::of_bytes(b"layer");
        let oci: oci_spec::image::Digest = digest.into();
        assert_eq!(oci.to_string(), digest.to_string());
        assert_eq!(oci.as_ref().parse::<Digest>(), Ok(digest));
    }

    #[test]
    fn bad_diff_id_is_refused() {
        let config = parse_image_config(
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:00"]}}"#,
        )
        .unwrap();
        assert!(matches!(
            diff_ids(&config),
            Err(DigestError::MalformedHex(_))
        ));
    }

    /// A Docker v2 schema 2 manifest, as Docker Hub serves it.
    const DOCKER_MANIFEST: &str = r#"{
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 1469,
            "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        },
        "layers": [
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": 2814446,
                "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            },
            {
                "mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                "size": 5,
                "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "urls": ["https://example.com/layer"]
            }
        ]
    }"#;

    #[test]
    fn docker_manifest_parses_with_its_media_types() {
        let manifest: ImageManifest = serde_json::from_str(DOCKER_MANIFEST).unwrap();
        assert_eq!(
            manifest.media_type().as_ref().map(AsRef::as_ref),
            Some("application/vnd.docker.distribution.manifest.v2+json")
        );
        assert!(crate::oci::media_types::is_manifest(
            manifest.media_type().as_ref().unwrap()
        ));
        assert!(crate::oci::media_types::is_config(
            manifest.config().media_type()
        ));
        let layers: Vec<BlobRef> = manifest
            .layers()
            .iter()
            .map(|layer| BlobRef::try_from(layer).unwrap())
            .collect();
        assert_eq!(layers.len(), 2);
        assert!(layers
            .iter()
            .all(|layer| crate::oci::media_types::is_layer(&layer.media_type)));
    }

    /// A Docker image config with the fields docker writes and this crate ignores, nulls
    /// where docker writes them, and no `history`.
    const DOCKER_CONFIG: &str = r#"{
        "architecture": "amd64",
        "config": {
            "Hostname": "", "Domainname": "", "User": "", "AttachStdin": false,
            "Tty": false, "OpenStdin": false, "StdinOnce": false,
            "ExposedPorts": {"80/tcp": {}},
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["nginx", "-g", "daemon off;"],
            "Image": "sha256:0000", "Volumes": null, "WorkingDir": "",
            "Entrypoint": null, "OnBuild": null,
            "Labels": {"maintainer": "someone"},
            "StopSignal": "SIGQUIT"
        },
        "container": "1e28cc65",
        "container_config": {"Hostname": "1e28cc65", "Cmd": ["/bin/sh"]},
        "created": "2021-08-27T00:00:00.000000000Z",
        "docker_version": "20.10.7",
        "os": "linux",
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]
        }
    }"#;

    #[test]
    fn docker_config_parses_ignoring_unknown_fields() {
        let config = parse_image_config(DOCKER_CONFIG.as_bytes()).unwrap();
        assert_eq!(*config.architecture(), Arch::Amd64);
        assert_eq!(*config.os(), Os::Linux);
        let run = config.config().as_ref().unwrap();
        assert_eq!(run.entrypoint(), &None);
        assert_eq!(run.working_dir().as_deref(), Some(""));
        assert_eq!(run.stop_signal().as_deref(), Some("SIGQUIT"));
        assert_eq!(diff_ids(&config).unwrap(), vec![Digest::of_bytes(b"")]);
    }

    #[test]
    fn config_without_platform_or_container_config_parses_with_them_empty() {
        let config = parse_image_config(br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#).unwrap();
        assert_eq!(config.architecture().to_string(), "");
        assert_eq!(config.os().to_string(), "");
        assert!(config.config().is_none());
        assert!(parse_image_config(br#"{"architecture":"amd64","os":"linux"}"#).is_err());
    }
}
