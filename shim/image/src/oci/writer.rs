//! Writing an OCI image layout: blobs by digest, the manifest, `index.json` and the
//! `oci-layout` marker. Used by the default-image builder and by tests that need images.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use oci_spec::image::{
    Config, Descriptor, History, ImageConfiguration, ImageIndex, ImageManifest,
    ImageManifestBuilder, MediaType, OciLayoutBuilder,
};
use serde::Serialize;

use crate::digest::{DiffId, Digest};
use crate::oci::media_types::ANNOTATION_REF_NAME;

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
    pub fn oci_media_type(self) -> MediaType {
        match self {
            LayerCompression::None => MediaType::ImageLayer,
            LayerCompression::Gzip => MediaType::ImageLayerGzip,
            LayerCompression::Zstd => MediaType::ImageLayerZstd,
        }
    }
}

/// A layer ready to be written: the compressed blob and the diffID of its tar.
pub struct EncodedLayer {
    pub blob: Vec<u8>,
    pub diff_id: DiffId,
    pub media_type: MediaType,
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
        let marker = OciLayoutBuilder::default()
            .image_layout_version("1.0.0")
            .build()
            .expect("the marker's only field is set");
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
    pub fn write_blob(
        &self,
        media_type: MediaType,
        bytes: &[u8],
    ) -> Result<Descriptor, OciWriteError> {
        let digest = Digest::of_bytes(bytes);
        self.write_file(&self.dir.join("blobs/sha256").join(digest.hex()), bytes)?;
        Ok(Descriptor::new(media_type, bytes.len() as u64, digest))
    }

    /// Writes a layer blob and returns its descriptor and diffID.
    pub fn write_layer(&self, layer: &EncodedLayer) -> Result<(Descriptor, DiffId), OciWriteError> {
        Ok((
            self.write_blob(layer.media_type.clone(), &layer.blob)?,
            layer.diff_id,
        ))
    }

    /// Writes the config and manifest blobs for `layers` (in order, lowest first) and returns
    /// the manifest's descriptor, tagged `tag` when given. The config's `rootfs` is made
    /// here, from `layers`. The manifest is oci-spec's serialisation, whose annotations are a
    /// `HashMap`: a layer descriptor with more than one annotation makes its digest vary.
    pub fn write_image(
        &self,
        config: ImageConfiguration,
        layers: &[(Descriptor, DiffId)],
        tag: Option<&str>,
    ) -> Result<Descriptor, OciWriteError> {
        let diff_ids = layers.iter().map(|(_, diff_id)| *diff_id).collect();
        let config_json = ConfigJson::new(&config, diff_ids);
        let config_descriptor = self.write_blob(
            MediaType::ImageConfig,
            &to_json("image config", &config_json)?,
        )?;
        let manifest: ImageManifest = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::ImageManifest)
            .config(config_descriptor)
            .layers(layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>())
            .build()
            .expect("every required field of the manifest is set");
        let mut descriptor =
            self.write_blob(MediaType::ImageManifest, &to_json("manifest", &manifest)?)?;
        if let Some(tag) = tag {
            descriptor.set_annotations(Some(HashMap::from([(
                ANNOTATION_REF_NAME.to_owned(),
                tag.to_owned(),
            )])));
        }
        Ok(descriptor)
    }

    /// Writes `index.json` listing `manifests`.
    pub fn write_index(&self, manifests: Vec<Descriptor>) -> Result<(), OciWriteError> {
        let mut index = ImageIndex::default();
        index
            .set_schema_version(2)
            .set_media_type(Some(MediaType::ImageIndex))
            .set_manifests(manifests);
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

/// An image config as this writer serialises it. oci-spec's `ImageConfiguration` puts
/// `created` first and keeps labels in a `HashMap`: serialised as it is, every config this
/// writer has written (the default image's too) would get a new digest, and an image with
/// several labels would get a different one each time. This keeps the writer's key order and
/// sorts the maps; fields are left out when absent, as oci-spec leaves them out.
#[derive(Serialize)]
struct ConfigJson<'a> {
    architecture: String,
    os: String,
    #[serde(rename = "os.version", skip_serializing_if = "Option::is_none")]
    os_version: Option<&'a str>,
    #[serde(rename = "os.features", skip_serializing_if = "Option::is_none")]
    os_features: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    author: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<ContainerConfigJson<'a>>,
    rootfs: RootFsJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    history: Option<&'a [History]>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfigJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exposed_ports: Option<BTreeMap<&'a str, EmptyObject>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entrypoint: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmd: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    volumes: Option<BTreeMap<&'a str, EmptyObject>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    labels: Option<BTreeMap<&'a str, &'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_signal: Option<&'a str>,
}

#[derive(Serialize)]
struct RootFsJson {
    #[serde(rename = "type")]
    fs_type: &'static str,
    diff_ids: Vec<DiffId>,
}

/// `{}`: the value of each key of Go's `map[string]struct{}` (exposed ports, volumes).
#[derive(Serialize)]
struct EmptyObject {}

impl<'a> ConfigJson<'a> {
    fn new(config: &'a ImageConfiguration, diff_ids: Vec<DiffId>) -> ConfigJson<'a> {
        ConfigJson {
            architecture: config.architecture().to_string(),
            os: config.os().to_string(),
            os_version: config.os_version().as_deref(),
            os_features: config.os_features().as_deref(),
            variant: config.variant().as_deref(),
            created: config.created().as_deref(),
            author: config.author().as_deref(),
            config: config.config().as_ref().map(ContainerConfigJson::new),
            rootfs: RootFsJson {
                fs_type: "layers",
                diff_ids,
            },
            history: config.history().as_deref(),
        }
    }
}

impl<'a> ContainerConfigJson<'a> {
    fn new(config: &'a Config) -> ContainerConfigJson<'a> {
        let set = |keys: &'a Option<Vec<String>>| {
            keys.as_ref().map(|keys| {
                keys.iter()
                    .map(|key| (key.as_str(), EmptyObject {}))
                    .collect()
            })
        };
        ContainerConfigJson {
            user: config.user().as_deref(),
            exposed_ports: set(config.exposed_ports()),
            env: config.env().as_deref(),
            entrypoint: config.entrypoint().as_deref(),
            cmd: config.cmd().as_deref(),
            volumes: set(config.volumes()),
            working_dir: config.working_dir().as_deref(),
            labels: config.labels().as_ref().map(|labels| {
                labels
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_str()))
                    .collect()
            }),
            stop_signal: config.stop_signal().as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use oci_spec::image::{Arch, HistoryBuilder, Os};

    use super::*;
    use crate::oci::convert::parse_image_config;

    fn image_config(run: Config) -> ImageConfiguration {
        let mut config = ImageConfiguration::default();
        config
            .set_architecture(Arch::Amd64)
            .set_os(Os::Linux)
            .set_created(Some("2024-01-01T00:00:00Z".to_owned()))
            .set_config(Some(run));
        config
    }

    #[test]
    fn image_config_keeps_the_writers_key_order_and_sorts_labels() {
        let mut run = Config::default();
        run.set_user(Some("1000".to_owned()))
            .set_env(Some(vec!["A=1".to_owned()]))
            .set_entrypoint(Some(vec!["/e".to_owned()]))
            .set_cmd(Some(vec!["c".to_owned()]))
            .set_working_dir(Some("/w".to_owned()))
            .set_labels(Some(HashMap::from(
                [("b", "2"), ("a", "1"), ("c", "3")].map(|(k, v)| (k.to_owned(), v.to_owned())),
            )))
            .set_stop_signal(Some("SIGTERM".to_owned()));
        let config = image_config(run);
        let json = ConfigJson::new(&config, vec![Digest::of_bytes(b"")]);
        assert_eq!(
            String::from_utf8(to_json("image config", &json).unwrap()).unwrap(),
            concat!(
                r#"{"architecture":"amd64","os":"linux","created":"2024-01-01T00:00:00Z","#,
                r#""config":{"User":"1000","Env":["A=1"],"Entrypoint":["/e"],"Cmd":["c"],"#,
                r#""WorkingDir":"/w","Labels":{"a":"1","b":"2","c":"3"},"StopSignal":"SIGTERM"},"#,
                r#""rootfs":{"type":"layers","diff_ids":["#,
                r#""sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}}"#,
            )
        );
    }

    #[test]
    fn image_config_fields_beyond_the_old_ones_are_written_not_dropped() {
        let mut run = Config::default();
        run.set_exposed_ports(Some(vec!["80/tcp".to_owned()]))
            .set_volumes(Some(vec!["/data".to_owned()]));
        let mut config = image_config(run);
        config
            .set_author(Some("someone".to_owned()))
            .set_variant(Some("v8".to_owned()))
            .set_os_version(Some("1".to_owned()))
            .set_os_features(Some(vec!["f".to_owned()]))
            .set_history(Some(vec![HistoryBuilder::default()
                .created_by("build")
                .empty_layer(true)
                .build()
                .unwrap()]));
        let bytes = to_json("image config", &ConfigJson::new(&config, Vec::new())).unwrap();
        assert_eq!(parse_image_config(&bytes).unwrap(), config);
    }

    #[test]
    fn go_sets_are_written_sorted() {
        let mut run = Config::default();
        let ports = ["443/tcp", "80/tcp", "8080/tcp"];
        // oci-spec reads Go's `map[string]struct{}` into a Vec in hash order.
        run.set_exposed_ports(Some(ports.iter().rev().map(|p| p.to_string()).collect()));
        let config = image_config(run);
        let bytes = to_json("image config", &ConfigJson::new(&config, Vec::new())).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(r#""ExposedPorts":{"443/tcp":{},"80/tcp":{},"8080/tcp":{}}"#),
            "{text}"
        );
    }
}
