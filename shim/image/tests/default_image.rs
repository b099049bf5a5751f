//! The default image: reproducible, and imports cleanly. Needs busybox-static.

mod common;

use std::fs;
use std::os::unix::fs::FileTypeExt;

use common::{Fixture, MountedImage};
use vpod_image::default_image::{build_default_image, DEFAULT_BUSYBOX};

#[test]
fn default_image_builds_reproducibly_and_imports() {
    let fixture = Fixture::new();
    let first = build_default_image(&fixture.layout_dir("a"), DEFAULT_BUSYBOX.as_ref()).unwrap();
    let second = build_default_image(&fixture.layout_dir("b"), DEFAULT_BUSYBOX.as_ref()).unwrap();
    assert_eq!(
        first.digest(),
        second.digest(),
        "two builds give one manifest digest"
    );

    let image = fixture
        .store
        .import_oci_layout(&fixture.reference("a", "latest"))
        .unwrap();
    assert_eq!(
        image.manifest_digest.to_string(),
        first.digest().to_string()
    );
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.config.cmd, ["sh"]);
    assert!(image.config.env.iter().any(|e| e.starts_with("PATH=")));

    let base_record = fixture
        .store
        .layer_record(&image.layers[0].diff_id)
        .unwrap()
        .unwrap();
    assert!(
        base_record.stats.entries > 100,
        "busybox applet links are there"
    );
    let top_record = fixture
        .store
        .layer_record(&image.layers[1].diff_id)
        .unwrap()
        .unwrap();
    assert_eq!(top_record.stats.whiteouts, 1);

    if let Ok(base) = MountedImage::mount(&image.layers[0].path) {
        assert!(base.path("bin/busybox").is_file());
        assert_eq!(
            fs::read_link(base.path("bin/sh")).unwrap().to_str(),
            Some("/bin/busybox")
        );
        let top = MountedImage::mount(&image.layers[1].path).unwrap();
        assert!(fs::symlink_metadata(top.path("etc/motd"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert!(top.path("etc/vpod-release").is_file());
    }
}
