//! The test images, offline: the project's default image (`build/images/default`, an OCI
//! image layout of busybox-static) and a pause image for the CRI plugin's sandboxes made
//! from the same layers, each tarred and imported with `ctr images import`, which unpacks
//! them into the overlayfs snapshotter.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use vpod_e2e::{built, sha256_hex};

/// The default image's name in containerd.
pub const DEFAULT_IMAGE: &str = "vpod.test/default:latest";
/// The pause image's name: the CRI plugin's `sandbox_image`.
pub const PAUSE_IMAGE: &str = "vpod.test/pause:latest";

/// What the pause image runs: it waits until SIGTERM, which ends it at once with status 0
/// (a trapped signal interrupts busybox sh's `wait`; the sleep goes with the pod's PID
/// namespace).
const PAUSE_COMMAND: [&str; 3] = [
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done",
];

/// An OCI image layout tarred for `ctr images import`, with the name it is imported under
/// (its index names it by tag only: `--base-name` adds the repository).
pub struct ImageArchive {
    pub tar: PathBuf,
    pub base_name: &'static str,
}

/// Tars `build/images/default` and writes the pause image's layout beside it in `dir`,
/// then tars that too.
pub fn test_image_archives(dir: &Path) -> [ImageArchive; 2] {
    let default_layout = built("build/images/default/index.json")
        .parent()
        .expect("the layout's directory")
        .to_path_buf();
    let pause_layout = dir.join("pause-layout");
    write_pause_layout(&default_layout, &pause_layout);
    let base_name = |image: &'static str| image.split(':').next().expect("a name");
    [
        ImageArchive {
            tar: tar_layout(&default_layout, &dir.join("default.tar")),
            base_name: base_name(DEFAULT_IMAGE),
        },
        ImageArchive {
            tar: tar_layout(&pause_layout, &dir.join("pause.tar")),
            base_name: base_name(PAUSE_IMAGE),
        },
    ]
}

/// `layout` as the tar stream `ctr images import` reads (its top-level entries).
fn tar_layout(layout: &Path, tar: &Path) -> PathBuf {
    let out = Command::new("tar")
        .arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(tar)
        .args(["oci-layout", "index.json", "blobs"])
        .output()
        .expect("running tar");
    assert!(
        out.status.success(),
        "tarring {}: {}",
        layout.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    tar.to_path_buf()
}

fn read_json(path: &Path) -> Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    let hex = digest
        .strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("a sha256 digest: {digest}"));
    layout.join("blobs/sha256").join(hex)
}

/// Writes `bytes` as a blob of `layout`; its descriptor's digest.
fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(bytes));
    std::fs::write(blob_path(layout, &digest), bytes).expect("writing a blob");
    digest
}

/// The default image's layers under a config whose entrypoint is [`PAUSE_COMMAND`], as an
/// OCI layout at `to` tagged `latest`.
fn write_pause_layout(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to.join("blobs/sha256")).expect("the pause layout's directory");
    let index = read_json(&from.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("the default image's index names a manifest");
    let mut manifest = read_json(&blob_path(from, manifest_digest));
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("the manifest names a config");
    let mut config = read_json(&blob_path(from, config_digest));
    config["config"]["Entrypoint"] = json!(PAUSE_COMMAND);
    config["config"]["Cmd"] = Value::Null;
    config["config"]["Labels"] = json!({"org.opencontainers.image.title": "vpod test pause"});

    let layers = manifest["layers"]
        .as_array()
        .expect("the manifest lists layers")
        .clone();
    for layer in &layers {
        let digest = layer["digest"].as_str().expect("a layer digest");
        std::fs::copy(blob_path(from, digest), blob_path(to, digest)).expect("copying a layer");
    }
    let config_bytes = serde_json::to_vec(&config).expect("the config serialises");
    manifest["config"]["digest"] = json!(write_blob(to, &config_bytes));
    manifest["config"]["size"] = json!(config_bytes.len());
    let manifest_bytes = serde_json::to_vec(&manifest).expect("the manifest serialises");
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": write_blob(to, &manifest_bytes),
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(
        to.join("index.json"),
        serde_json::to_vec(&index).expect("the index serialises"),
    )
    .expect("writing the index");
    std::fs::write(to.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("writing oci-layout");
}
