//! `vpod pull` against a real registry (Debian's docker-registry on 127.0.0.1): a layer
//! line each on a pipe, the image's id on stdout, nothing fetched the second time, and a
//! clear error for an image that is not there.

#[path = "../../image/tests/registry_support/mod.rs"]
mod registry_support;

use std::process::{Command, Output};

use registry_support::{Setup, TestRegistry};
use vpod_image::oci::writer::LayerCompression;

fn tar_of(name: &str, content: &[u8]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_path(name).unwrap();
    header.set_size(content.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, content).unwrap();
    builder.into_inner().unwrap()
}

fn vpod_pull(root: &std::path::Path, reference: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vpod"))
        .arg("pull")
        .arg("--root")
        .arg(root)
        .arg(reference)
        .output()
        .expect("run vpod pull")
}

#[test]
fn vpod_pull_reports_each_layer_and_prints_the_image_id() {
    let registry = TestRegistry::start(Setup::default());
    registry.push_layers(
        &[
            (tar_of("a", &[b'a'; 300_000]), LayerCompression::Gzip),
            (tar_of("b", b"second layer"), LayerCompression::None),
        ],
        "cli/app:v1",
    );
    let root = tempfile::tempdir().unwrap();
    let reference = format!("{}/cli/app:v1", registry.address);

    let first = vpod_pull(root.path(), &reference);
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    let id = String::from_utf8_lossy(&first.stdout).trim().to_owned();
    assert!(
        id.len() == 71 && id.starts_with("sha256:"),
        "stdout: {id:?}"
    );
    assert!(
        stderr.contains(&format!("pulling {reference}: 2 layers, 2 to fetch")),
        "{stderr}"
    );
    for index in 1..=2 {
        let line = stderr
            .lines()
            .find(|line| line.starts_with(&format!("vpod: layer {index}/2 sha256:")))
            .unwrap_or_else(|| panic!("no line for layer {index}: {stderr}"));
        assert!(line.contains("fetched and converted"), "{line}");
    }
    assert!(
        stderr.contains(&format!("pulled {reference} ({id})")),
        "{stderr}"
    );
    let disks = std::fs::read_dir(root.path().join("layers/sha256"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".erofs"))
        })
        .count();
    assert_eq!(disks, 2);

    let second = vpod_pull(root.path(), &reference);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(second.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&second.stdout).trim(), id);
    assert!(stderr.contains("2 layers, 0 to fetch"), "{stderr}");
    assert_eq!(
        stderr.matches("already in the store").count(),
        2,
        "{stderr}"
    );

    let missing = vpod_pull(root.path(), &format!("{}/cli/missing:v1", registry.address));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("vpod: pulling") && stderr.contains("was not found"),
        "{stderr}"
    );
}
