//! Pulling from a real registry (Debian's docker-registry on 127.0.0.1, images pushed with
//! skopeo) into the layer store, and the image bookkeeping the CRI ImageService needs:
//! names, lookups, concurrent pulls, shared layers, removal and garbage collection, private
//! repositories, tampered blobs.

mod common;
mod registry_support;

use std::path::PathBuf;

use base64::Engine as _;
use common::{dir_entries, Fixture, LayerTar};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfiguration, ImageConfigurationBuilder, ImageIndex,
    MediaType, Os, PlatformBuilder, ANNOTATION_REF_NAME,
};
use registry_support::{Setup, TestRegistry};
use vpod_image::oci::layout::{OciLayout, ResolvedImage};
use vpod_image::oci::writer::{encode_layer, LayerCompression, OciLayoutWriter};
use vpod_image::registry::{
    ImageRecord, Images, ImagesError, PullCounters, RegistryAuth, RegistryOptions,
};
use vpod_image::{DiffId, LayerStore};

/// An error with its sources, for assertion messages.
fn chain(error: &dyn std::error::Error) -> String {
    let text = vpod_proto::error_chain(error);
    eprintln!("error as reported: {text}");
    text
}

fn default_image_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../build/images/default");
    assert!(
        dir.join("index.json").is_file(),
        "the default image {} is missing: build it with `make image`",
        dir.display()
    );
    dir
}

/// `oci:` reference of the default image (tagged `latest` in its index.json).
fn default_image_source() -> String {
    format!("oci:{}:latest", default_image_dir().display())
}

fn default_image() -> ResolvedImage {
    OciLayout::new(default_image_dir())
        .resolve(Some("latest"))
        .expect("the default image resolves")
}

fn images_over(store: LayerStore, registry: &TestRegistry) -> Images {
    let options = RegistryOptions {
        insecure_registries: vec![registry.address.clone()],
        ..RegistryOptions::default()
    };
    Images::open(store, options).expect("open images")
}

fn open_store(fixture: &Fixture) -> LayerStore {
    LayerStore::open(fixture.store.root()).expect("open store")
}

fn erofs_files(fixture: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = dir_entries(&fixture.store.root().join("layers/sha256"))
        .into_iter()
        .filter(|name| name.ends_with(".erofs"))
        .collect();
    names.sort();
    names
}

fn erofs_name(diff_id: &DiffId) -> String {
    format!("{}.erofs", diff_id.hex())
}

/// A linux config for `architecture`, running nothing in particular.
fn linux_config(architecture: &str) -> ImageConfiguration {
    ImageConfigurationBuilder::default()
        .architecture(Arch::from(architecture))
        .os(Os::Linux)
        .build()
        .unwrap()
}

fn layer_ids(record: &ImageRecord) -> Vec<DiffId> {
    record
        .image
        .layers
        .iter()
        .map(|layer| layer.diff_id)
        .collect()
}

/// A second image: the default image's two layers, then a zstd and an uncompressed layer.
fn write_second_image(dir: &std::path::Path) -> ResolvedImage {
    let default = default_image();
    let source = OciLayout::new(default_image_dir());
    let writer = OciLayoutWriter::create(dir).expect("create layout");
    let mut layers: Vec<(Descriptor, DiffId)> = Vec::new();
    for layer in &default.layers {
        let bytes = std::fs::read(source.blob_path(&layer.blob.digest)).expect("read layer");
        let written = writer
            .write_blob(layer.blob.media_type.clone(), &bytes)
            .expect("write layer");
        layers.push((written, layer.diff_id));
    }
    for (tar, compression) in [
        (
            LayerTar::new()
                .dir("etc")
                .file("etc/second", "zstd layer")
                .finish(),
            LayerCompression::Zstd,
        ),
        (
            LayerTar::new().file("plain.txt", "uncompressed").finish(),
            LayerCompression::None,
        ),
    ] {
        let encoded = encode_layer(&tar, compression).expect("encode");
        layers.push(writer.write_layer(&encoded).expect("write layer"));
    }
    let mut config = linux_config("amd64");
    config.set_config(Some(
        ConfigBuilder::default()
            .cmd(vec!["cat".into(), "/etc/second".into()])
            .build()
            .unwrap(),
    ));
    let manifest = writer
        .write_image(config, &layers, Some("v1"))
        .expect("write image");
    writer.write_index(vec![manifest]).expect("write index");
    OciLayout::new(dir)
        .resolve(Some("v1"))
        .expect("second image resolves")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulled_image_has_tags_digests_layers_and_is_found_every_way() {
    let registry = TestRegistry::start(Setup::default());
    registry.push(&default_image_source(), "vpod/default:latest", false);
    let expected = default_image();
    let fixture = Fixture::new();
    let images = images_over(open_store(&fixture), &registry);
    let address = &registry.address;

    // No tag means :latest.
    let record = images
        .pull(&format!("{address}/vpod/default"), None)
        .await
        .expect("pull");
    let tag = format!("{address}/vpod/default:latest");
    let repo_digest = format!("{address}/vpod/default@{}", expected.manifest_digest);
    assert_eq!(record.id, expected.config_digest.to_string());
    assert_eq!(record.repo_tags, vec![tag.clone()]);
    assert_eq!(record.repo_digests, vec![repo_digest.clone()]);
    assert_eq!(record.image.manifest_digest, expected.manifest_digest);
    assert_eq!(layer_ids(&record), expected.diff_ids());
    assert_eq!(record.image.config.cmd, vec!["sh".to_owned()]);
    for layer in &record.image.layers {
        assert!(layer.path.is_file(), "{} missing", layer.path.display());
        assert_eq!(std::fs::metadata(&layer.path).unwrap().len(), layer.size);
    }
    assert_eq!(
        record.size_bytes,
        record.image.layers.iter().map(|l| l.size).sum::<u64>()
    );
    assert_eq!(images.list().unwrap(), vec![record.clone()]);

    let id_hex = &record.id["sha256:".len()..];
    for query in [
        tag.clone(),
        format!("{address}/vpod/default"),
        repo_digest.clone(),
        record.id.clone(),
        id_hex[..12].to_owned(),
        format!("sha256:{}", &id_hex[..12]),
    ] {
        assert_eq!(
            images.status(&query).unwrap().as_ref(),
            Some(&record),
            "status({query})"
        );
    }
    for query in [
        format!("{address}/vpod/default:other"),
        format!("{address}/vpod/other"),
        "busybox".to_owned(),
        "0123456789ab".to_owned(),
    ] {
        assert_eq!(images.status(&query).unwrap(), None, "status({query})");
    }

    // By digest: the same image, found again.
    let by_digest = images
        .pull(&repo_digest, None)
        .await
        .expect("pull by digest");
    assert_eq!(by_digest.id, record.id);

    // Unknown repository and unknown tag: NotFound, nothing recorded.
    for missing in [
        format!("{address}/vpod/missing:latest"),
        format!("{address}/vpod/default:nope"),
    ] {
        let error = images.pull(&missing, None).await.unwrap_err();
        assert!(
            matches!(error, ImagesError::NotFound { .. }),
            "{missing}: {}",
            chain(&error)
        );
    }
    assert_eq!(images.list().unwrap().len(), 1);
    assert_eq!(
        dir_entries(&fixture.store.root().join("tmp")),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_registry_on_loopback_needs_no_insecure_listing() {
    let registry = TestRegistry::start(Setup::default());
    registry.push(&default_image_source(), "vpod/default:latest", false);
    let fixture = Fixture::new();
    let images = Images::open(open_store(&fixture), RegistryOptions::default()).unwrap();
    // 127.0.0.1 answers no HTTPS: the pull falls back to plain HTTP, as Docker's does.
    let record = images
        .pull(&format!("{}/vpod/default", registry.address), None)
        .await
        .expect("a loopback registry over plain HTTP");
    assert_eq!(images.list().unwrap(), vec![record]);
    // Registries elsewhere are not loopback (the decision is fetch::is_loopback's, tested
    // there): nothing outside this machine is reached in tests.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirrored_registry_is_pulled_from_its_mirror_under_its_own_name() {
    let registry = TestRegistry::start(Setup::default());
    registry.push(
        &default_image_source(),
        "e2e-test-images/busybox:1.29-2",
        false,
    );
    let fixture = Fixture::new();
    let options = RegistryOptions {
        mirrors: [("registry.k8s.io".to_string(), registry.address.clone())].into(),
        ..RegistryOptions::default()
    };
    let images = Images::open(open_store(&fixture), options).unwrap();
    // registry.k8s.io itself is not reachable from here: only the mirror can answer.
    let record = images
        .pull("registry.k8s.io/e2e-test-images/busybox:1.29-2", None)
        .await
        .expect("pulled through the mirror");
    assert_eq!(
        record.repo_tags,
        vec!["registry.k8s.io/e2e-test-images/busybox:1.29-2".to_string()]
    );
    assert!(
        record.repo_digests[0].starts_with("registry.k8s.io/e2e-test-images/busybox@sha256:"),
        "{record:?}"
    );
    // An unmirrored registry is asked itself (here a loopback port nothing listens on).
    let error = images
        .pull("127.0.0.1:1/e2e-test-images/busybox:1.29-2", None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ImagesError::Registry { .. }),
        "{}",
        chain(&error)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_reference_fetch_and_convert_once() {
    let registry = TestRegistry::start(Setup::default());
    registry.push(&default_image_source(), "vpod/default:latest", false);
    let layer_count = default_image().layers.len() as u64;
    let fixture = Fixture::new();
    let images = images_over(open_store(&fixture), &registry);
    let reference = format!("{}/vpod/default:latest", registry.address);

    let (first, second) =
        tokio::join!(images.pull(&reference, None), images.pull(&reference, None));
    let (first, second) = (first.expect("first pull"), second.expect("second pull"));
    assert_eq!(first, second);
    assert_eq!(
        images.counters(),
        PullCounters {
            registry_pulls: 1,
            blobs_downloaded: layer_count,
            layers_converted: layer_count,
        }
    );

    // A later pull asks the registry again (the tag may have moved) but reuses the layers.
    let again = images.pull(&reference, None).await.expect("third pull");
    assert_eq!(again, first);
    assert_eq!(
        images.counters(),
        PullCounters {
            registry_pulls: 2,
            blobs_downloaded: layer_count,
            layers_converted: layer_count,
        }
    );
    // So does another service on the same store, as another process would.
    let other = images_over(open_store(&fixture), &registry);
    other.pull(&reference, None).await.expect("pull by another");
    assert_eq!(other.counters().blobs_downloaded, 0);
    assert_eq!(other.counters().layers_converted, 0);
    assert_eq!(erofs_files(&fixture).len() as u64, layer_count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_layers_are_reused_and_removal_collects_only_unshared_ones() {
    let registry = TestRegistry::start(Setup::default());
    registry.push(&default_image_source(), "vpod/default:latest", false);
    let second_dir = tempfile::tempdir().unwrap();
    let second_layout = write_second_image(second_dir.path());
    registry.push(
        &format!("oci:{}:v1", second_dir.path().display()),
        "vpod/second:v1",
        false,
    );
    let fixture = Fixture::new();
    let images = images_over(open_store(&fixture), &registry);
    let address = &registry.address;

    let default = images
        .pull(&format!("{address}/vpod/default"), None)
        .await
        .expect("pull default");
    let shared = layer_ids(&default);
    let second = images
        .pull(&format!("{address}/vpod/second:v1"), None)
        .await
        .expect("pull second");
    let second_ids = layer_ids(&second);
    assert_eq!(second_ids, second_layout.diff_ids());
    assert_eq!(&second_ids[..shared.len()], &shared[..]);
    let unshared = &second_ids[shared.len()..];
    assert_eq!(unshared.len(), 2);
    // Only the two new layers (zstd, uncompressed) were fetched and converted.
    let counters = images.counters();
    assert_eq!(counters.blobs_downloaded, shared.len() as u64 + 2);
    assert_eq!(counters.layers_converted, shared.len() as u64 + 2);
    assert_eq!(images.list().unwrap().len(), 2);

    let usage = images.fs_usage().unwrap();
    let layer_bytes: u64 = second.image.layers.iter().map(|l| l.size).sum();
    assert!(
        usage.used_bytes >= layer_bytes,
        "{usage:?} vs {layer_bytes}"
    );
    assert!(usage.inodes_used >= second_ids.len() as u64, "{usage:?}");
    assert!(
        fixture.store.root().starts_with(&usage.mountpoint),
        "{usage:?}"
    );

    // Refused while in use; nothing changes.
    let error = images
        .remove(&second.id, &|record| record.id == second.id)
        .unwrap_err();
    assert!(
        matches!(error, ImagesError::InUse { .. }),
        "{}",
        chain(&error)
    );
    assert_eq!(images.list().unwrap().len(), 2);
    assert_eq!(erofs_files(&fixture).len(), 4);

    // Removing the second image collects its own layers and keeps the shared ones.
    let tag = format!("{address}/vpod/second:v1");
    assert!(images.remove(&tag, &|_| false).unwrap());
    let mut kept: Vec<String> = shared.iter().map(erofs_name).collect();
    kept.sort();
    assert_eq!(erofs_files(&fixture), kept);
    assert_eq!(images.status(&tag).unwrap(), None);
    assert!(
        !images.remove(&tag, &|_| false).unwrap(),
        "removal is idempotent"
    );
    assert_eq!(images.list().unwrap(), vec![default.clone()]);

    // Then the default image, by an id prefix: no layer disk is left.
    assert!(images.remove(&default.id[7..19], &|_| false).unwrap());
    assert_eq!(erofs_files(&fixture), Vec::<String>::new());
    assert_eq!(images.list().unwrap(), Vec::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_repository_needs_the_right_credentials_and_the_ca() {
    let registry = TestRegistry::start(Setup {
        basic_auth: Some(("alice", "wonderland")),
        tls: true,
    });
    registry.push(&default_image_source(), "private/default:latest", false);
    let fixture = Fixture::new();
    let options = RegistryOptions {
        extra_ca_files: vec![registry.ca_certificate()],
        ..RegistryOptions::default()
    };
    let images = Images::open(open_store(&fixture), options).unwrap();
    let reference = format!("{}/private/default:latest", registry.address);
    let basic = |username: &str, password: &str| RegistryAuth {
        username: username.into(),
        password: password.into(),
        ..RegistryAuth::default()
    };

    for (what, auth) in [
        ("no credentials", None),
        ("a wrong password", Some(basic("alice", "guess"))),
        ("an unknown user", Some(basic("mallory", "wonderland"))),
    ] {
        let error = images.pull(&reference, auth).await.unwrap_err();
        assert!(
            matches!(error, ImagesError::Unauthorized { .. }),
            "{what}: {}",
            chain(&error)
        );
    }
    assert_eq!(images.list().unwrap(), Vec::new());

    let encoded = RegistryAuth {
        auth: base64::engine::general_purpose::STANDARD.encode("alice:wonderland"),
        ..RegistryAuth::default()
    };
    let record = images
        .pull(&reference, Some(encoded))
        .await
        .expect("pull with base64 auth");
    assert_eq!(record.repo_tags, vec![reference.clone()]);
    images
        .pull(&reference, Some(basic("alice", "wonderland")))
        .await
        .expect("pull with username and password");

    // Without our CA the registry's certificate is not trusted.
    let other = Fixture::new();
    let untrusting = Images::open(open_store(&other), RegistryOptions::default()).unwrap();
    let error = untrusting
        .pull(&reference, Some(basic("alice", "wonderland")))
        .await
        .unwrap_err();
    assert!(
        matches!(error, ImagesError::Registry { .. }),
        "{}",
        chain(&error)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_layer_blob_is_a_digest_error_and_leaves_no_image() {
    let registry = TestRegistry::start(Setup::default());
    registry.push(&default_image_source(), "vpod/default:latest", false);
    let expected = default_image();
    let biggest = expected
        .layers
        .iter()
        .map(|layer| &layer.blob)
        .max_by_key(|blob| blob.size)
        .unwrap();
    let path = registry.blob_data_path(&biggest.digest);
    let mut bytes = std::fs::read(&path).expect("registry blob");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let fixture = Fixture::new();
    let images = images_over(open_store(&fixture), &registry);
    let error = images
        .pull(&format!("{}/vpod/default", registry.address), None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ImagesError::DigestMismatch { .. }),
        "{}",
        chain(&error)
    );
    assert_eq!(images.list().unwrap(), Vec::new());
    assert_eq!(erofs_files(&fixture), Vec::<String>::new());
    assert_eq!(
        dir_entries(&fixture.store.root().join("tmp")),
        Vec::<String>::new()
    );
    assert_eq!(
        dir_entries(&fixture.store.root().join("images")),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_index_resolves_to_linux_amd64() {
    let registry = TestRegistry::start(Setup::default());
    let dir = tempfile::tempdir().unwrap();
    let writer = OciLayoutWriter::create(dir.path()).unwrap();
    let mut entries = Vec::new();
    for architecture in ["arm64", "amd64"] {
        let tar = LayerTar::new().file("arch", architecture).finish();
        let layer = writer
            .write_layer(&encode_layer(&tar, LayerCompression::Gzip).unwrap())
            .unwrap();
        let mut manifest = writer
            .write_image(linux_config(architecture), &[layer], None)
            .unwrap();
        manifest.set_platform(Some(
            PlatformBuilder::default()
                .architecture(Arch::from(architecture))
                .os(Os::Linux)
                .build()
                .unwrap(),
        ));
        entries.push(manifest);
    }
    let mut index = ImageIndex::default();
    index
        .set_media_type(Some(MediaType::ImageIndex))
        .set_manifests(entries.clone());
    let mut index_descriptor = writer
        .write_blob(MediaType::ImageIndex, &serde_json::to_vec(&index).unwrap())
        .unwrap();
    index_descriptor.set_annotations(Some(
        [(ANNOTATION_REF_NAME.to_owned(), "multi".to_owned())].into(),
    ));
    writer.write_index(vec![index_descriptor.clone()]).unwrap();
    registry.push(
        &format!("oci:{}:multi", dir.path().display()),
        "vpod/multi:latest",
        true,
    );

    let fixture = Fixture::new();
    let images = images_over(open_store(&fixture), &registry);
    let record = images
        .pull(&format!("{}/vpod/multi", registry.address), None)
        .await
        .expect("pull multi-platform image");
    assert_eq!(record.image.config.architecture, "amd64");
    assert_eq!(
        record.image.manifest_digest.to_string(),
        entries[1].digest().to_string()
    );
    // The repo digest names the index, as containerd reports it.
    let repo_digest = format!(
        "{}/vpod/multi@{}",
        registry.address,
        index_descriptor.digest()
    );
    assert_eq!(record.repo_digests, vec![repo_digest.clone()]);
    assert_eq!(images.status(&repo_digest).unwrap(), Some(record.clone()));
    let by_index = images
        .pull(&repo_digest, None)
        .await
        .expect("pull by index");
    assert_eq!(by_index.id, record.id);
}

#[test]
fn layout_import_can_be_named_and_found_by_that_name() {
    let fixture = Fixture::new();
    let images = Images::open(open_store(&fixture), RegistryOptions::default()).unwrap();
    let expected = default_image();

    let error = images
        .import_oci_layout(&default_image_source(), Some("Not A Name"))
        .unwrap_err();
    assert!(
        matches!(error, ImagesError::InvalidReference(_)),
        "{}",
        chain(&error)
    );
    assert_eq!(images.list().unwrap(), Vec::new());

    let record = images
        .import_oci_layout(&default_image_source(), Some("vpod/default"))
        .expect("import");
    assert_eq!(record.id, expected.config_digest.to_string());
    assert_eq!(
        record.repo_tags,
        vec!["docker.io/vpod/default:latest".to_owned()]
    );
    assert_eq!(
        record.repo_digests,
        vec![format!(
            "docker.io/vpod/default@{}",
            expected.manifest_digest
        )]
    );
    for query in [
        "vpod/default",
        "docker.io/vpod/default:latest",
        "vpod/default:latest",
    ] {
        assert_eq!(
            images.status(query).unwrap(),
            Some(record.clone()),
            "{query}"
        );
    }
    // Unnamed imports (as `vpod run` makes) are listed by id only.
    let other = Fixture::new();
    let unnamed = Images::open(open_store(&other), RegistryOptions::default()).unwrap();
    let record = unnamed
        .import_oci_layout(&default_image_source(), None)
        .unwrap();
    assert_eq!(record.repo_tags, Vec::<String>::new());
    assert_eq!(unnamed.status(&record.id).unwrap(), Some(record));
}

#[test]
fn resolved_import_needs_only_the_blobs_the_store_lacks() {
    let fixture = Fixture::new();
    let store = &fixture.store;
    let dir = tempfile::tempdir().unwrap();
    let second = write_second_image(dir.path());
    let layout = OciLayout::new(dir.path());
    let shared = &second.layers[..2];
    for layer in shared {
        std::fs::remove_file(layout.blob_path(&layer.blob.digest)).unwrap();
    }

    // The store lacks the shared layers too: refused, and no image is recorded.
    let error = store
        .import_resolved(&layout, &second, "second")
        .unwrap_err();
    assert!(
        matches!(error, vpod_image::LayerStoreError::LayerBlobMissing { digest } if digest == shared[0].blob.digest),
        "{}",
        chain(&error)
    );
    assert_eq!(store.list_images().unwrap(), Vec::new());

    // Once the default image brought them, the missing blobs are not needed.
    store.import_oci_layout(&default_image_source()).unwrap();
    for layer in shared {
        assert!(store
            .has_verified_layer(&layer.diff_id, &layer.blob.digest)
            .unwrap());
    }
    let imported = store.import_resolved(&layout, &second, "second").unwrap();
    assert_eq!(imported.converted, second.diff_ids()[2..].to_vec());
    assert_eq!(imported.image.manifest_digest, second.manifest_digest);
    assert_eq!(store.list_images().unwrap().len(), 2);
}

/// Starts a registry holding the default image as `vpod/default:latest`, lets `tamper`
/// change its storage, pulls, and checks that the pull left nothing behind.
async fn pull_tampered(tamper: impl FnOnce(&TestRegistry, &ResolvedImage)) -> ImagesError {
    let registry = TestRegistry::start(Setup::default());
    registry.push(&default_image_source(), "vpod/default:latest", false);
    tamper(&registry, &default_image());
    let fixture = Fixture::new();
    let images = images_over(open_store(&fixture), &registry);
    let error = images
        .pull(&format!("{}/vpod/default", registry.address), None)
        .await
        .unwrap_err();
    assert_eq!(images.list().unwrap(), Vec::new());
    assert_eq!(erofs_files(&fixture), Vec::<String>::new());
    assert_eq!(
        dir_entries(&fixture.store.root().join("tmp")),
        Vec::<String>::new()
    );
    error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_manifest_is_a_digest_error() {
    let error = pull_tampered(|registry, image| {
        let path = registry.blob_data_path(&image.manifest_digest);
        let text = std::fs::read_to_string(&path).unwrap();
        let layer = image.layers[0].blob.digest.to_string();
        let forged = format!("{}0", &layer[..layer.len() - 1]);
        assert_ne!(layer, forged);
        std::fs::write(&path, text.replace(&layer, &forged)).unwrap();
    })
    .await;
    assert!(
        matches!(
            error,
            ImagesError::DigestMismatch {
                what: "manifest",
                ..
            }
        ),
        "{}",
        chain(&error)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_longer_than_its_descriptor_is_refused() {
    let error = pull_tampered(|registry, image| {
        let smallest = image
            .layers
            .iter()
            .map(|layer| &layer.blob)
            .min_by_key(|blob| blob.size)
            .unwrap();
        let path = registry.blob_data_path(&smallest.digest);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0; 4096]);
        std::fs::write(&path, bytes).unwrap();
    })
    .await;
    assert!(
        matches!(error, ImagesError::SizeMismatch { .. }),
        "{}",
        chain(&error)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_layer_media_type_is_refused_before_any_download() {
    let registry = TestRegistry::start(Setup::default());
    let dir = tempfile::tempdir().unwrap();
    let writer = OciLayoutWriter::create(dir.path()).unwrap();
    let tar = LayerTar::new().file("x", "y").finish();
    let layer = writer
        .write_blob(
            MediaType::from("application/vnd.example.layer.v1.tar+lz4"),
            &tar,
        )
        .unwrap();
    let manifest = writer
        .write_image(
            linux_config("amd64"),
            &[(layer, DiffId::of_bytes(&tar))],
            Some("odd"),
        )
        .unwrap();
    writer.write_index(vec![manifest]).unwrap();
    registry.push(
        &format!("oci:{}:odd", dir.path().display()),
        "vpod/odd:latest",
        false,
    );

    let fixture = Fixture::new();
    let images = images_over(open_store(&fixture), &registry);
    let error = images
        .pull(&format!("{}/vpod/odd", registry.address), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ImagesError::UnsupportedMediaType { what: "layer", .. }
        ),
        "{}",
        chain(&error)
    );
    assert_eq!(images.counters().blobs_downloaded, 0);
    assert_eq!(images.list().unwrap(), Vec::new());
}
