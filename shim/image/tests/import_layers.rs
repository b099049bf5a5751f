//! Importing well-formed multi-layer images: whiteouts, opaque directories, compression
//! kinds, reuse, records and garbage collection. Needs root and erofs-utils.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

use common::{
    dump_erofs_path, write_layout, write_layout_with_raw_config, Fixture, LayerTar, MountedImage,
    MTIME,
};
use vpod_image::oci::writer::LayerCompression;

/// Layer 1 has /etc/hostname, /etc/motd and /data/{a,b}; layer 2 whites out /etc/motd,
/// makes /data opaque and adds /data/c, a setuid file, a fifo, a hard link and a device.
fn two_layer_image(fixture: &Fixture, name: &str) -> (String, Vec<vpod_image::DiffId>) {
    let base = LayerTar::new()
        .dir("etc/")
        .file("etc/hostname", "base\n")
        .file("etc/motd", "hello\n")
        .dir("data/")
        .file("data/a", "a")
        .file("data/b", "b")
        .symlink("bin", "usr/bin")
        .finish();
    let top = LayerTar::new()
        .file("etc/.wh.motd", "")
        .dir("data/")
        .file("data/.wh..wh..opq", "")
        .file("data/c", "c")
        .file_with("usr/bin/su", "#!", 0o4755, 0, 0)
        .file_with("home/user/owned", "x", 0o600, 1000, 1001)
        .hard_link("home/user/same", "home/user/owned")
        .fifo("run/pipe")
        .char_device("dev/null")
        .finish();
    let (_, diff_ids) = write_layout(
        &fixture.layout_dir(name),
        &[
            (base, LayerCompression::Gzip),
            (top, LayerCompression::Zstd),
        ],
        "v1",
    );
    (fixture.reference(name, "v1"), diff_ids)
}

#[test]
fn multi_layer_image_converts_whiteouts_and_opaque_directories() {
    let fixture = Fixture::new();
    let (reference, diff_ids) = two_layer_image(&fixture, "image");
    let image = fixture.store.import_oci_layout(&reference).expect("import");

    assert_eq!(image.layers.len(), 2);
    assert_eq!(
        image.layers.iter().map(|l| l.diff_id).collect::<Vec<_>>(),
        diff_ids
    );
    for layer in &image.layers {
        assert!(layer.path.is_file());
        assert_eq!(layer.size, fs::metadata(&layer.path).unwrap().len());
        assert_eq!(layer.path, fixture.store.layer_path(&layer.diff_id));
    }
    assert_eq!(image.config.cmd, ["sh"]);
    assert_eq!(image.config.entrypoint, ["/bin/entry"]);
    assert_eq!(image.config.env, ["PATH=/bin"]);
    assert_eq!(image.config.working_dir, "/work");
    assert_eq!(image.config.user, "1000:1000");
    assert_eq!(image.config.labels["purpose"], "test");

    let top_record = fixture.store.layer_record(&diff_ids[1]).unwrap().unwrap();
    assert_eq!(top_record.stats.whiteouts, 1);
    assert_eq!(top_record.stats.opaque_directories, 1);
    assert_eq!(top_record.stats.skipped_device_nodes, 1);

    let top = &image.layers[1].path;
    match MountedImage::mount(top) {
        Ok(mounted) => {
            let whiteout = fs::symlink_metadata(mounted.path("etc/motd")).unwrap();
            assert!(whiteout.file_type().is_char_device());
            assert_eq!(whiteout.rdev(), 0);
            let opaque = rustix::fs::getxattr(
                mounted.path("data").as_path(),
                "trusted.overlay.opaque",
                &mut [0u8; 8][..],
            );
            assert_eq!(opaque.ok(), Some(1), "opaque xattr is \"y\"");
            assert_eq!(fs::read(mounted.path("data/c")).unwrap(), b"c");
            let su = fs::metadata(mounted.path("usr/bin/su")).unwrap();
            assert_eq!(su.mode() & 0o7777, 0o4755, "setuid kept");
            assert_eq!(su.mtime(), MTIME as i64, "per-file mtime kept");
            let owned = fs::metadata(mounted.path("home/user/owned")).unwrap();
            assert_eq!((owned.uid(), owned.gid()), (1000, 1001));
            let same = fs::metadata(mounted.path("home/user/same")).unwrap();
            assert_eq!(same.ino(), owned.ino(), "hard link shares the inode");
            assert!(fs::symlink_metadata(mounted.path("run/pipe"))
                .unwrap()
                .file_type()
                .is_fifo());
            assert!(!mounted.path("dev/null").exists(), "device node skipped");

            let base = MountedImage::mount(&image.layers[0].path).unwrap();
            assert_eq!(
                fs::read_link(base.path("bin")).unwrap().to_str(),
                Some("usr/bin")
            );
            assert_eq!(fs::read(base.path("etc/motd")).unwrap(), b"hello\n");
        }
        Err(why) => {
            eprintln!("cannot mount erofs here ({why}); checking with dump.erofs instead");
            assert!(dump_erofs_path(top, "/etc/motd").contains("char dev"));
            let data = dump_erofs_path(top, "/data");
            assert!(
                !data.contains("Xattr size: 0 "),
                "opaque xattr present: {data}"
            );
        }
    }
}

#[test]
fn second_import_reuses_converted_layers() {
    let fixture = Fixture::new();
    let (reference, _) = two_layer_image(&fixture, "image");
    let first = fixture
        .store
        .import_oci_layout(&reference)
        .expect("first import");
    let mtimes: Vec<_> = first
        .layers
        .iter()
        .map(|l| fs::metadata(&l.path).unwrap().modified().unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let second = fixture
        .store
        .import_oci_layout(&reference)
        .expect("second import");
    assert_eq!(first, second);
    for (layer, before) in second.layers.iter().zip(mtimes) {
        assert_eq!(
            fs::metadata(&layer.path).unwrap().modified().unwrap(),
            before
        );
    }
    assert_eq!(fixture.store.list_images().unwrap(), vec![first]);
}

#[test]
fn same_layer_in_another_compression_is_verified_then_reused() {
    let fixture = Fixture::new();
    let tar = LayerTar::new().file("f", "shared").finish();
    let (_, gzip_ids) = write_layout(
        &fixture.layout_dir("gzip"),
        &[(tar.clone(), LayerCompression::Gzip)],
        "t",
    );
    let (_, plain_ids) = write_layout(
        &fixture.layout_dir("plain"),
        &[(tar, LayerCompression::None)],
        "t",
    );
    assert_eq!(gzip_ids, plain_ids);
    let first = fixture
        .store
        .import_oci_layout(&fixture.reference("gzip", "t"))
        .unwrap();
    let before = fs::metadata(&first.layers[0].path)
        .unwrap()
        .modified()
        .unwrap();
    let second = fixture
        .store
        .import_oci_layout(&fixture.reference("plain", "t"))
        .unwrap();
    assert_eq!(first.layers, second.layers);
    assert_eq!(
        fs::metadata(&second.layers[0].path)
            .unwrap()
            .modified()
            .unwrap(),
        before
    );
    let record = fixture.store.layer_record(&gzip_ids[0]).unwrap().unwrap();
    assert_eq!(record.verified_blobs.len(), 2);
}

#[test]
fn same_tar_converts_to_identical_erofs_bytes() {
    let first = Fixture::new();
    let second = Fixture::new();
    let mut images = Vec::new();
    for fixture in [&first, &second] {
        let (reference, _) = two_layer_image(fixture, "image");
        let image = fixture.store.import_oci_layout(&reference).unwrap();
        images.push(
            image
                .layers
                .iter()
                .map(|l| fs::read(&l.path).unwrap())
                .collect::<Vec<_>>(),
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    assert!(images[0] == images[1], "conversion is reproducible");
}

#[test]
fn unreferenced_layers_are_removed() {
    let fixture = Fixture::new();
    let (reference, diff_ids) = two_layer_image(&fixture, "image");
    let image = fixture.store.import_oci_layout(&reference).unwrap();
    let removed = fixture.store.remove_unreferenced(&diff_ids[..1]).unwrap();
    assert_eq!(removed, vec![diff_ids[1]]);
    assert!(fixture.store.has_layer(&diff_ids[0]));
    assert!(!fixture.store.has_layer(&diff_ids[1]));
    assert!(fixture.store.remove_image(&image.manifest_digest).unwrap());
    assert!(fixture.store.list_images().unwrap().is_empty());
    // Importing again converts the removed layer anew.
    fixture.store.import_oci_layout(&reference).unwrap();
    assert!(fixture.store.has_layer(&diff_ids[1]));
}

#[test]
fn absolute_entry_paths_land_inside_the_layer() {
    let fixture = Fixture::new();
    let canary_file = fixture.canary().join("absolute");
    let absolute = format!("{}", canary_file.display());
    let tar = LayerTar::new()
        .file(&absolute, "inside")
        .file("/etc/passwd", "root:x:0:0::/:/bin/sh\n")
        .finish();
    write_layout(
        &fixture.layout_dir("abs"),
        &[(tar, LayerCompression::None)],
        "t",
    );
    let image = fixture
        .store
        .import_oci_layout(&fixture.reference("abs", "t"))
        .unwrap();
    assert!(!canary_file.exists());
    assert_eq!(common::dir_entries(&fixture.canary()), Vec::<String>::new());
    if let Ok(mounted) = MountedImage::mount(&image.layers[0].path) {
        let relative = absolute.trim_start_matches('/');
        assert_eq!(fs::read(mounted.path(relative)).unwrap(), b"inside");
        assert!(mounted.path("etc/passwd").is_file());
    }
}

#[test]
fn later_entries_replace_earlier_ones() {
    let fixture = Fixture::new();
    let tar = LayerTar::new()
        .file("a", "first")
        .file("a", "second")
        .dir("b/")
        .file("b/inner", "gone")
        .file("b", "file now")
        .file("c", "file first")
        .dir("c/")
        .file("c/inner", "kept")
        .symlink("d", "/nowhere")
        .file("d", "plain")
        .finish();
    write_layout(
        &fixture.layout_dir("dup"),
        &[(tar, LayerCompression::None)],
        "t",
    );
    let image = fixture
        .store
        .import_oci_layout(&fixture.reference("dup", "t"))
        .unwrap();
    let mounted = MountedImage::mount(&image.layers[0].path).expect("mount erofs");
    assert_eq!(fs::read(mounted.path("a")).unwrap(), b"second");
    assert_eq!(fs::read(mounted.path("b")).unwrap(), b"file now");
    assert_eq!(fs::read(mounted.path("c/inner")).unwrap(), b"kept");
    assert_eq!(fs::read(mounted.path("d")).unwrap(), b"plain");
}

#[test]
fn pax_xattrs_are_kept_except_overlay_ones() {
    let fixture = Fixture::new();
    let tar = LayerTar::new()
        .pax(&[
            ("SCHILY.xattr.user.note", b"kept"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ])
        .file("f", "x")
        .finish();
    let (_, diff_ids) = write_layout(
        &fixture.layout_dir("pax"),
        &[(tar, LayerCompression::None)],
        "t",
    );
    let image = fixture
        .store
        .import_oci_layout(&fixture.reference("pax", "t"))
        .unwrap();
    let record = fixture.store.layer_record(&diff_ids[0]).unwrap().unwrap();
    assert_eq!(record.stats.skipped_xattrs, 1);
    let mounted = MountedImage::mount(&image.layers[0].path).expect("mount erofs");
    let mut value = [0u8; 16];
    let len =
        rustix::fs::getxattr(mounted.path("f").as_path(), "user.note", &mut value[..]).unwrap();
    assert_eq!(&value[..len], b"kept");
    assert!(rustix::fs::getxattr(
        mounted.path("f").as_path(),
        "trusted.overlay.opaque",
        &mut value[..]
    )
    .is_err());
}

/// Some image builders leave `architecture` and `os` out of the config, which oci-spec
/// requires; such an image imports with them empty, as before oci-spec read configs.
#[test]
fn config_without_platform_fields_imports_with_them_empty() {
    let fixture = Fixture::new();
    let tar = LayerTar::new().file("f", "x").finish();
    let diff_id = vpod_image::DiffId::of_bytes(&tar);
    write_layout_with_raw_config(
        &fixture.layout_dir("bare"),
        &tar,
        &format!(
            r#"{{"config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{diff_id}"]}}}}"#
        ),
        "t",
    );
    let image = fixture
        .store
        .import_oci_layout(&fixture.reference("bare", "t"))
        .expect("import");
    assert_eq!(image.config.architecture, "");
    assert_eq!(image.config.os, "");
    assert_eq!(image.config.cmd, ["sh"]);
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.layers[0].diff_id, diff_id);
}

/// An overlayfs mounted over empty directories, unmounted on drop: a store there cannot
/// create whiteout devices (overlayfs keeps 0:0 character devices for its own whiteouts),
/// as on a node whose /var/lib sits on overlayfs, like the emulated host's or a container's.
struct OverlayMount {
    temp: tempfile::TempDir,
}

impl OverlayMount {
    fn new() -> OverlayMount {
        let temp = tempfile::tempdir().unwrap();
        for dir in ["lower", "upper", "work", "merged"] {
            fs::create_dir(temp.path().join(dir)).unwrap();
        }
        let p = |d: &str| temp.path().join(d).display().to_string();
        let status = std::process::Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                p("lower"),
                p("upper"),
                p("work")
            ))
            .arg(p("merged"))
            .status()
            .expect("run mount");
        assert!(status.success(), "mount overlayfs (needs root)");
        OverlayMount { temp }
    }

    fn path(&self) -> std::path::PathBuf {
        self.temp.path().join("merged")
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.path())
            .status();
    }
}

#[test]
fn whiteouts_convert_in_a_store_on_overlayfs() {
    let tar = LayerTar::new()
        .dir("etc/")
        .file("etc/.wh.motd", "")
        .file("data/.wh..wh..opq", "")
        .file("data/c", "c")
        .finish();
    let fixture = Fixture::new();
    write_layout(
        &fixture.layout_dir("wh"),
        &[(tar, LayerCompression::Gzip)],
        "t",
    );
    let overlay = OverlayMount::new();
    let store = vpod_image::LayerStore::open(overlay.path().join("store")).unwrap();
    let image = store
        .import_oci_layout(&fixture.reference("wh", "t"))
        .expect("the writer makes no device node on the host");
    let mounted = MountedImage::mount(&image.layers[0].path).expect("mount erofs");
    let whiteout = fs::symlink_metadata(mounted.path("etc/motd")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    drop(mounted);

    // The staged path, in the same place, fails as `vpod run` did.
    let staged_store = vpod_image::LayerStore::open_with(
        overlay.path().join("staged-store"),
        vpod_image::LayerStoreOptions {
            converter: vpod_image::LayerConverter::StagedMkfs(Default::default()),
            ..Default::default()
        },
    )
    .unwrap();
    let error = staged_store
        .import_oci_layout(&fixture.reference("wh", "t"))
        .expect_err("overlayfs refuses whiteout devices");
    let chain = vpod_proto::error_chain(&error);
    assert!(
        chain.contains("could not create the whiteout device"),
        "{chain}"
    );
    drop(store);
    drop(staged_store);
}
