//! `oci_documents`: what a registry or an OCI layout hands the image store: manifests,
//! indexes and image configs, read as the registry pull and the layout import read them,
//! then turned into the store's types and a container's runtime spec; and references.
//!
//! Input: byte 0 picks the mode, the rest is the document:
//! 0 a manifest, 1 an index, 2 an image config, 3 an OCI layout (index.json, the manifest
//! and the config separated by 0 bytes; `@MANIFEST_DIGEST@`, `@MANIFEST_SIZE@`,
//! `@CONFIG_DIGEST@`, `@CONFIG_SIZE@` in them become the real values, so the fuzzer gets
//! past the digest checks), 4 an image reference.

use oci_spec::image::{ImageIndex, ImageManifest};
use vpod_image::oci::convert::{diff_ids, parse_image_config, BlobRef};
use vpod_image::oci::layout::{OciLayout, OciReference};
use vpod_image::oci::media_types;
use vpod_image::registry::fuzzing::{choose_platform, manifest_media_type};
use vpod_image::registry::ImageReference;
use vpod_image::runtime_spec::{parse_user_spec, runtime_spec, ProcessOverrides};
use vpod_image::{Digest, ImageConfig};

use crate::Seed;

const MODES: u8 = 5;

pub fn oci_documents(data: &[u8]) {
    let Some((&mode, document)) = data.split_first() else {
        return;
    };
    match mode % MODES {
        0 => manifest(document),
        1 => index(document),
        2 => config(document),
        3 => layout(document),
        _ => reference(document),
    }
}

fn manifest(bytes: &[u8]) {
    let _ = manifest_media_type(bytes);
    let Ok(manifest) = serde_json::from_slice::<ImageManifest>(bytes) else {
        return;
    };
    if let Ok(config) = BlobRef::try_from(manifest.config()) {
        let _ = media_types::is_config(&config.media_type);
    }
    for layer in manifest.layers() {
        if let Ok(layer) = BlobRef::try_from(layer) {
            let _ = media_types::is_layer(&layer.media_type);
        }
    }
}

fn index(bytes: &[u8]) {
    let _ = manifest_media_type(bytes);
    let Ok(index) = serde_json::from_slice::<ImageIndex>(bytes) else {
        return;
    };
    if let Some(chosen) = choose_platform(&index) {
        if let Ok(blob) = BlobRef::try_from(chosen) {
            let _ = media_types::is_manifest(&blob.media_type)
                || media_types::is_index(&blob.media_type);
        }
    }
}

fn config(bytes: &[u8]) {
    let Ok(config) = parse_image_config(bytes) else {
        return;
    };
    let _ = diff_ids(&config);
    let image = ImageConfig::from_config_file(&config);
    let _ = parse_user_spec(&image.user);
    let _ = runtime_spec(&image, &ProcessOverrides::default());
    let overrides = ProcessOverrides {
        entrypoint: Some(vec!["/bin/sh".into()]),
        command: vec!["-c".into(), "true".into()],
        env: vec!["PATH=/bin".into(), "NEW=1".into()],
        workdir: Some("/work".into()),
        user: Some("1000:1000".into()),
    };
    let _ = runtime_spec(&image, &overrides);
}

fn layout(bytes: &[u8]) {
    let mut parts = bytes.splitn(3, |&b| b == 0);
    let index = parts.next().unwrap_or_default();
    let manifest = parts.next().unwrap_or_default();
    let config = parts.next().unwrap_or_default();
    let config_digest = Digest::of_bytes(config);
    let manifest = substitute(manifest, "CONFIG", &config_digest, config.len());
    let manifest_digest = Digest::of_bytes(&manifest);
    let index = substitute(index, "MANIFEST", &manifest_digest, manifest.len());

    let dir = crate::guest::scratch_path("layout");
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("layout directory");
    std::fs::write(dir.join("index.json"), &index).expect("index.json");
    std::fs::write(blobs.join(manifest_digest.hex()), &manifest).expect("manifest blob");
    std::fs::write(blobs.join(config_digest.hex()), config).expect("config blob");
    let layout = OciLayout::new(&dir);
    if let Ok(image) = layout.resolve(None) {
        assert_eq!(image.manifest_digest, manifest_digest);
        assert_eq!(image.layers.len(), image.config.rootfs().diff_ids().len());
    }
    let _ = layout.resolve(Some("latest"));
    std::fs::remove_dir_all(&dir).expect("layout directory removed");
}

/// `document` with `@{what}_DIGEST@` and `@{what}_SIZE@` replaced by `digest` and `size`.
fn substitute(document: &[u8], what: &str, digest: &Digest, size: usize) -> Vec<u8> {
    let text = String::from_utf8_lossy(document);
    text.replace(&format!("@{what}_DIGEST@"), &digest.to_string())
        .replace(&format!("@{what}_SIZE@"), &size.to_string())
        .into_bytes()
}

fn reference(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(reference) = ImageReference::parse(&text) {
        let _ = reference.repository_name();
        let _ = reference.tagged_name();
        let _ = reference.repo_digest(&Digest::of_bytes(b""));
    }
    let _ = OciReference::parse(&text);
}

const CONFIG: &str = r#"{"architecture":"amd64","os":"linux","config":{"User":"app:staff","Env":["PATH=/usr/local/bin:/usr/bin:/bin","LANG=C"],"Entrypoint":["/entrypoint.sh"],"Cmd":["serve","--port","80"],"WorkingDir":"/srv","Labels":{"org.opencontainers.image.title":"demo"},"StopSignal":"SIGQUIT","ExposedPorts":{"80/tcp":{}},"Volumes":{"/data":{}}},"rootfs":{"type":"layers","diff_ids":["sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"]},"history":[{"created":"2024-01-01T00:00:00Z","created_by":"ADD rootfs.tar /"}]}"#;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"@CONFIG_DIGEST@","size":@CONFIG_SIZE@},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4","size":32}]}"#;

const INDEX: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"@MANIFEST_DIGEST@","size":@MANIFEST_SIZE@,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}"#;

const DOCKER_LIST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":7143,"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":7143,"platform":{"architecture":"amd64","os":"linux"}}]}"#;

fn mode(mode: u8, document: &str) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(document.as_bytes());
    out
}

pub fn seeds() -> Vec<Seed> {
    let real_manifest = MANIFEST
        .replace(
            "@CONFIG_DIGEST@",
            &Digest::of_bytes(CONFIG.as_bytes()).to_string(),
        )
        .replace("@CONFIG_SIZE@", &CONFIG.len().to_string());
    let mut layout = vec![3u8];
    for (i, part) in [INDEX, MANIFEST, CONFIG].into_iter().enumerate() {
        if i > 0 {
            layout.push(0);
        }
        layout.extend_from_slice(part.as_bytes());
    }
    vec![
        ("manifest", mode(0, &real_manifest)),
        (
            "manifest-without-media-type",
            mode(0, &real_manifest.replace(r#""mediaType":"application/vnd.oci.image.manifest.v1+json","#, "")),
        ),
        ("index-docker-list", mode(1, DOCKER_LIST)),
        ("config", mode(2, CONFIG)),
        (
            "config-without-platform",
            mode(2, r#"{"config":{"User":"1000"},"rootfs":{"type":"layers","diff_ids":[]}}"#),
        ),
        ("layout", layout),
        (
            "reference",
            mode(4, "registry.example:5000/library/busybox:1.36@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ),
    ]
}
