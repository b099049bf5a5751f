//! Hostile or broken images: each is refused with a clear error, and nothing is written
//! outside the store (a canary directory beside it stays empty) nor left inside it.

mod common;

use std::fs;

use common::{write_layout, write_layout_with_raw_config, Fixture, LayerTar};
use vpod_image::layer::extract::ExtractError;
use vpod_image::layer::tar_path::TarPathError;
use vpod_image::oci::layout::OciLayoutError;
use vpod_image::oci::writer::{encode_layer, LayerCompression, OciLayoutWriter};
use vpod_image::LayerStoreError;

/// Digests oci-spec accepts but the store, which keys blobs and layers by sha256, does not.
fn digests_of_other_algorithms() -> [String; 2] {
    [format!("sha512:{}", "ab".repeat(64)), "foo:bar".to_owned()]
}

/// Asserts `error` is `what` (a document of the layout) refused as malformed, naming the
/// `digest` it could not use.
fn assert_refused_for_digest(error: &LayerStoreError, what: &str, digest: &str) {
    assert!(
        matches!(
            error,
            LayerStoreError::Layout(OciLayoutError::Json { what: refused, .. }) if *refused == what
        ),
        "{error:?}"
    );
    let chain = vpod_proto::error_chain(error);
    assert!(chain.contains(digest), "{chain}");
}

fn import_single_layer(fixture: &Fixture, tar: Vec<u8>) -> Result<(), LayerStoreError> {
    write_layout(
        &fixture.layout_dir("bad"),
        &[(tar, LayerCompression::Gzip)],
        "t",
    );
    fixture
        .store
        .import_oci_layout(&fixture.reference("bad", "t"))
        .map(|_| ())
}

fn extract_error(result: Result<(), LayerStoreError>) -> ExtractError {
    match result {
        Err(LayerStoreError::Extract { source, .. }) => source,
        other => panic!("expected an extraction error, got {other:?}"),
    }
}

#[test]
fn layer_whose_digest_does_not_match_is_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new().file("f", "content").finish();
    let (manifest, _) = write_layout(
        &fixture.layout_dir("bad"),
        &[(tar, LayerCompression::Gzip)],
        "t",
    );
    // Corrupt the layer blob in place, keeping its size.
    let manifest_path = fixture
        .layout_dir("bad")
        .join("blobs/sha256")
        .join(manifest.digest().digest());
    let parsed: oci_spec::image::ImageManifest =
        serde_json::from_slice(&fs::read(manifest_path).unwrap()).unwrap();
    let blob = fixture
        .layout_dir("bad")
        .join("blobs/sha256")
        .join(parsed.layers()[0].digest().digest());
    let mut bytes = fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&blob, bytes).unwrap();

    let error = fixture
        .store
        .import_oci_layout(&fixture.reference("bad", "t"))
        .unwrap_err();
    assert!(
        matches!(
            error,
            LayerStoreError::Layout(OciLayoutError::DigestMismatch { .. })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("image layout"));
    fixture.assert_nothing_written();
}

#[test]
fn layer_whose_diff_id_does_not_match_the_config_is_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new().file("f", "content").finish();
    let writer =
        vpod_image::oci::writer::OciLayoutWriter::create(fixture.layout_dir("bad")).unwrap();
    let encoded = vpod_image::oci::writer::encode_layer(&tar, LayerCompression::Gzip).unwrap();
    let (descriptor, _) = writer.write_layer(&encoded).unwrap();
    let wrong = vpod_image::Digest::of_bytes(b"some other tar");
    let manifest = writer
        .write_image(Default::default(), &[(descriptor, wrong)], Some("t"))
        .unwrap();
    writer.write_index(vec![manifest]).unwrap();
    let error = fixture
        .store
        .import_oci_layout(&fixture.reference("bad", "t"))
        .unwrap_err();
    assert!(
        matches!(error, LayerStoreError::DiffIdMismatch { .. }),
        "{error:?}"
    );
    fixture.assert_nothing_written();
}

#[test]
fn parent_directory_entries_are_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new()
        .file("ok", "fine")
        .file("../canary/escaped", "pwned")
        .finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(
        matches!(
            error,
            ExtractError::UnsafePath(TarPathError::ParentComponent(_))
        ),
        "{error:?}"
    );
    fixture.assert_nothing_written();
    assert!(!fixture.temp.path().join("escaped").exists());
}

#[test]
fn deep_parent_directory_entries_are_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new()
        .file("a/b/../../../../canary/escaped", "pwned")
        .finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(matches!(error, ExtractError::UnsafePath(_)), "{error:?}");
    fixture.assert_nothing_written();
}

#[test]
fn writing_through_an_earlier_symlink_is_refused() {
    let fixture = Fixture::new();
    let canary = fixture.canary();
    let tar = LayerTar::new()
        .symlink("link", &canary.display().to_string())
        .file("link/passwd", "pwned")
        .finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(
        matches!(error, ExtractError::ThroughNonDirectory { ref component, .. } if component == "/link"),
        "{error:?}"
    );
    assert!(error.to_string().contains("symbolic link"));
    fixture.assert_nothing_written();
}

#[test]
fn writing_through_a_relative_symlink_chain_is_refused() {
    let fixture = Fixture::new();
    // up -> .. of the staging root, then up/canary/x: the walk must not follow `up`.
    let tar = LayerTar::new()
        .dir("d/")
        .symlink("d/up", "../../../canary")
        .file("d/up/x", "pwned")
        .finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(
        matches!(error, ExtractError::ThroughNonDirectory { .. }),
        "{error:?}"
    );
    fixture.assert_nothing_written();
}

#[test]
fn symlink_replacing_a_directory_cannot_be_written_through() {
    let fixture = Fixture::new();
    let tar = LayerTar::new()
        .dir("etc/")
        .file("etc/a", "a")
        .symlink("etc", &fixture.canary().display().to_string())
        .file("etc/b", "pwned")
        .finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(
        matches!(error, ExtractError::ThroughNonDirectory { .. }),
        "{error:?}"
    );
    fixture.assert_nothing_written();
}

#[test]
fn hard_link_to_a_path_outside_the_layer_is_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new().hard_link("stolen", "/etc/passwd").finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(
        matches!(error, ExtractError::HardLinkTargetNotInLayer { .. }),
        "{error:?}"
    );
    fixture.assert_nothing_written();

    let fixture = Fixture::new();
    let tar = LayerTar::new().hard_link("stolen", "../canary/x").finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(matches!(error, ExtractError::UnsafePath(_)), "{error:?}");
    fixture.assert_nothing_written();
}

#[test]
fn hard_link_to_a_missing_or_later_entry_is_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new()
        .hard_link("early", "later")
        .file("later", "content")
        .finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(
        matches!(error, ExtractError::HardLinkTargetNotInLayer { .. }),
        "{error:?}"
    );
    assert!(error
        .to_string()
        .contains("not an earlier file of this layer"));
    fixture.assert_nothing_written();
}

#[test]
fn hard_link_through_an_earlier_symlink_is_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new()
        .dir("d/")
        .file("d/f", "x")
        .symlink("d", &fixture.canary().display().to_string())
        .hard_link("x", "d/f")
        .finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(
        matches!(
            error,
            ExtractError::HardLinkTargetNotInLayer { .. }
                | ExtractError::ThroughNonDirectory { .. }
        ),
        "{error:?}"
    );
    fixture.assert_nothing_written();
}

#[test]
fn hard_link_to_a_directory_is_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new().dir("d/").hard_link("x", "d").finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(
        matches!(error, ExtractError::HardLinkTargetNotInLayer { .. }),
        "{error:?}"
    );
    fixture.assert_nothing_written();
}

#[test]
fn whiteout_of_dot_dot_is_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new().file("d/.wh...", "").finish();
    let error = extract_error(import_single_layer(&fixture, tar));
    assert!(
        matches!(error, ExtractError::InvalidWhiteout { .. }),
        "{error:?}"
    );
    fixture.assert_nothing_written();
}

#[test]
fn blob_that_is_not_a_tar_is_refused() {
    let fixture = Fixture::new();
    let error = import_single_layer(&fixture, vec![0x42; 4096]).unwrap_err();
    assert!(
        matches!(error, LayerStoreError::Extract { .. }),
        "{error:?}"
    );
    fixture.assert_nothing_written();
}

#[test]
fn missing_tag_is_refused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new().file("f", "x").finish();
    write_layout(
        &fixture.layout_dir("img"),
        &[(tar, LayerCompression::None)],
        "t",
    );
    let error = fixture
        .store
        .import_oci_layout(&fixture.reference("img", "nope"))
        .unwrap_err();
    assert!(
        matches!(
            error,
            LayerStoreError::Layout(OciLayoutError::TagNotFound(_))
        ),
        "{error:?}"
    );
    fixture.assert_nothing_written();
}

#[test]
fn layer_digest_of_another_algorithm_is_refused() {
    for digest in digests_of_other_algorithms() {
        let fixture = Fixture::new();
        let writer = OciLayoutWriter::create(fixture.layout_dir("bad")).unwrap();
        let tar = LayerTar::new().file("f", "content").finish();
        let encoded = encode_layer(&tar, LayerCompression::Gzip).unwrap();
        let (mut layer, diff_id) = writer.write_layer(&encoded).unwrap();
        layer.set_digest(digest.as_str().try_into().unwrap());
        let manifest = writer
            .write_image(Default::default(), &[(layer, diff_id)], Some("t"))
            .unwrap();
        writer.write_index(vec![manifest]).unwrap();
        let error = fixture
            .store
            .import_oci_layout(&fixture.reference("bad", "t"))
            .unwrap_err();
        assert_refused_for_digest(&error, "image manifest", &digest);
        fixture.assert_nothing_written();
    }
}

#[test]
fn manifest_digest_of_another_algorithm_in_index_json_is_refused() {
    for digest in digests_of_other_algorithms() {
        let fixture = Fixture::new();
        let tar = LayerTar::new().file("f", "content").finish();
        let (mut manifest, _) = write_layout(
            &fixture.layout_dir("bad"),
            &[(tar, LayerCompression::Gzip)],
            "t",
        );
        manifest.set_digest(digest.as_str().try_into().unwrap());
        OciLayoutWriter::create(fixture.layout_dir("bad"))
            .unwrap()
            .write_index(vec![manifest])
            .unwrap();
        let error = fixture
            .store
            .import_oci_layout(&fixture.reference("bad", "t"))
            .unwrap_err();
        assert_refused_for_digest(&error, "index.json", &digest);
        fixture.assert_nothing_written();
    }
}

#[test]
fn diff_id_of_another_algorithm_is_refused() {
    for digest in digests_of_other_algorithms() {
        let fixture = Fixture::new();
        let tar = LayerTar::new().file("f", "content").finish();
        write_layout_with_raw_config(
            &fixture.layout_dir("bad"),
            &tar,
            &format!(
                r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{digest}"]}}}}"#
            ),
            "t",
        );
        let error = fixture
            .store
            .import_oci_layout(&fixture.reference("bad", "t"))
            .unwrap_err();
        assert_refused_for_digest(&error, "image config", &digest);
        fixture.assert_nothing_written();
    }
}

/// A store in `fixture`'s directory with `limits`, beside the fixture's own.
fn store_with(fixture: &Fixture, limits: vpod_image::LayerLimits) -> vpod_image::LayerStore {
    vpod_image::LayerStore::open_with(
        fixture.temp.path().join("limited-store"),
        vpod_image::LayerStoreOptions {
            limits,
            ..Default::default()
        },
    )
    .unwrap()
}

/// The files a store left under its `tmp`, and the largest of them.
fn leftovers(store: &vpod_image::LayerStore) -> Vec<(String, u64)> {
    let tmp = store.root().join("tmp");
    fs::read_dir(&tmp)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let size = e.metadata().map(|m| m.len()).unwrap_or(0);
                    (e.file_name().to_string_lossy().into_owned(), size)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_decompression_bomb_stops_at_the_store_s_byte_limit() {
    let fixture = Fixture::new();
    // 64 MiB of zeros in one file: about 64 KiB of gzip.
    let tar = LayerTar::new()
        .file("bomb", &"\0".repeat(64 << 20))
        .finish();
    let (_, _) = write_layout(
        &fixture.layout_dir("bomb"),
        &[(tar, LayerCompression::Gzip)],
        "t",
    );
    let store = store_with(
        &fixture,
        vpod_image::LayerLimits {
            max_tar_bytes: 4 << 20,
            ..Default::default()
        },
    );
    let error = store
        .import_oci_layout(&fixture.reference("bomb", "t"))
        .expect_err("past the limit");
    let chain = vpod_proto::error_chain(&error);
    assert!(
        chain.contains("larger than 4194304 bytes, the store's limit"),
        "{chain}"
    );
    assert_eq!(leftovers(&store), Vec::new());
    assert_eq!(common::dir_entries(&fixture.canary()), Vec::<String>::new());
    // The same image fits a store with the default limits.
    store_with(&fixture, Default::default())
        .import_oci_layout(&fixture.reference("bomb", "t"))
        .expect("within the default limit");
}

#[test]
fn a_layer_with_more_entries_than_the_limit_is_refused_for_both_converters() {
    let fixture = Fixture::new();
    let mut tar = LayerTar::new();
    for i in 0..1001 {
        tar = tar.file(&format!("f{i}"), "x");
    }
    write_layout(
        &fixture.layout_dir("many"),
        &[(tar.finish(), LayerCompression::Gzip)],
        "t",
    );
    let limits = vpod_image::LayerLimits {
        max_entries: 1000,
        ..Default::default()
    };
    let staged = vpod_image::LayerStore::open_with(
        fixture.temp.path().join("staged-store"),
        vpod_image::LayerStoreOptions {
            converter: vpod_image::LayerConverter::StagedMkfs(Default::default()),
            limits,
        },
    )
    .unwrap();
    for store in [store_with(&fixture, limits), staged] {
        let error = store
            .import_oci_layout(&fixture.reference("many", "t"))
            .expect_err("too many entries");
        assert!(
            matches!(
                &error,
                LayerStoreError::Extract {
                    source: ExtractError::TooManyEntries(1000),
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(leftovers(&store), Vec::new());
    }
}

#[test]
fn an_absurd_entry_size_without_data_is_refused_and_leaves_nothing() {
    let fixture = Fixture::new();
    // A header claiming 2^40 bytes followed by a few: the converter must not write a huge
    // file or wait for the data.
    let mut header = tar::Header::new_gnu();
    header.set_path("huge").unwrap();
    header.set_size(1 << 40);
    header.set_mode(0o644);
    header.set_cksum();
    let mut tar = header.as_bytes().to_vec();
    tar.extend_from_slice(&[7u8; 4096]);
    let error = import_single_layer(&fixture, tar).expect_err("a truncated entry");
    let chain = vpod_proto::error_chain(&error);
    assert!(chain.contains("could not"), "{chain}");
    let big: Vec<_> = leftovers(&fixture.store)
        .into_iter()
        .filter(|(_, size)| *size > (1 << 20))
        .collect();
    assert_eq!(big, Vec::new());
    fixture.assert_nothing_written();
}
