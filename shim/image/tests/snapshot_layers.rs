//! Layers from containerd snapshot directories: what survives `mkfs.erofs`, one conversion
//! per directory across calls and threads, keys per directory, and refused inputs. Needs
//! root (ownership, whiteout devices, `trusted.*` xattrs, mounts) and erofs-utils.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};

use common::{dir_entries, dump_erofs_path, Fixture, MountedImage, MTIME};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags, CWD};
use tempfile::TempDir;
use vpod_image::layer::erofs::uuid_from_diff_id;
use vpod_image::store::SnapshotError;
use vpod_image::LayerStore;

/// The newest mtime in the sample snapshot, on one file.
const NEWEST: i64 = MTIME as i64 + 100;

/// A directory for snapshots on the target directory's filesystem, which takes device
/// nodes and `trusted.*` xattrs where some `/tmp`s do not.
fn snapshots_dir() -> TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under target/")
}

/// A committed snapshot as containerd's overlayfs snapshotter leaves one: files with owners
/// and modes, a symbolic link, a hard link, a whiteout (`etc/motd`, char device 0:0) and an
/// opaque directory (`data`), every mtime `MTIME` but one.
fn sample_snapshot(dir: &Path) {
    fs::create_dir_all(dir.join("etc")).unwrap();
    fs::create_dir_all(dir.join("usr/bin")).unwrap();
    fs::create_dir_all(dir.join("data")).unwrap();
    fs::write(dir.join("etc/hostname"), b"snap\n").unwrap();
    fs::set_permissions(dir.join("etc/hostname"), fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::chown(dir.join("etc/hostname"), Some(1000), Some(1001)).unwrap();
    rustix::fs::setxattr(
        dir.join("etc/hostname").as_path(),
        "user.note",
        b"kept",
        XattrFlags::empty(),
    )
    .unwrap();
    fs::hard_link(dir.join("etc/hostname"), dir.join("etc/hostname.same")).unwrap();
    fs::write(dir.join("usr/bin/tool"), b"#!/bin/true\n").unwrap();
    fs::set_permissions(dir.join("usr/bin/tool"), fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("usr/bin", dir.join("bin")).unwrap();
    rustix::fs::mknodat(
        CWD,
        dir.join("etc/motd").as_path(),
        FileType::CharacterDevice,
        Mode::empty(),
        rustix::fs::makedev(0, 0),
    )
    .expect("mknod a whiteout (needs root)");
    rustix::fs::setxattr(
        dir.join("data").as_path(),
        "trusted.overlay.opaque",
        b"y",
        XattrFlags::empty(),
    )
    .expect("set trusted.overlay.opaque (needs root)");
    fs::write(dir.join("data/c"), b"c").unwrap();
    for path in [
        "",
        "etc",
        "usr",
        "usr/bin",
        "data",
        "etc/hostname",
        "etc/motd",
        "bin",
        "data/c",
    ] {
        set_mtime(&dir.join(path), MTIME as i64);
    }
    set_mtime(&dir.join("usr/bin/tool"), NEWEST);
}

fn set_mtime(path: &Path, seconds: i64) {
    let time = Timespec {
        tv_sec: seconds,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: time,
        last_modification: time,
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut value = [0u8; 64];
    let len = rustix::fs::lgetxattr(path, name, &mut value[..]).ok()?;
    Some(value[..len].to_vec())
}

fn erofs_images(store: &LayerStore) -> Vec<String> {
    dir_entries(&store.root().join("layers/sha256"))
        .into_iter()
        .filter(|name| name.ends_with(".erofs"))
        .collect()
}

/// A mount removed on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(kind: &str, options: &str, source: &str, target: &Path) -> Result<Mount, String> {
        let output = Command::new("mount")
            .args(["-t", kind, "-o", options, source])
            .arg(target)
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(Mount(target.to_owned()))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn snapshot_entries_whiteout_and_opaque_dir_survive_conversion() {
    let fixture = Fixture::new();
    let snapshots = snapshots_dir();
    let dir = snapshots.path().join("12/fs");
    sample_snapshot(&dir);

    let (layer, converted) = fixture.store.layer_from_snapshot_reporting(&dir).unwrap();
    assert!(converted);
    assert_eq!(layer.path, fixture.store.layer_path(&layer.diff_id));
    let meta = fs::metadata(&layer.path).unwrap();
    assert_eq!(meta.len(), layer.size);
    assert_eq!(meta.mode() & 0o777, 0o444, "published read-only");
    assert_eq!(
        dir_entries(&fixture.store.root().join("tmp")),
        Vec::<String>::new()
    );
    let record = fixture.store.layer_record(&layer.diff_id).unwrap().unwrap();
    assert_eq!(record.erofs_size, layer.size);
    assert_eq!((record.tar_size, record.verified_blobs.len()), (0, 0));
    assert_eq!(record.stats.entries, 10);
    assert_eq!(record.stats.whiteouts, 1);
    assert_eq!(record.stats.opaque_directories, 1);
    assert_eq!(record.stats.regular_files, 3, "the hard link counted once");
    assert_eq!(record.stats.newest_mtime, NEWEST);
    let fsck = Command::new("fsck.erofs")
        .arg(&layer.path)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    let superblock = Command::new("dump.erofs")
        .arg("-s")
        .arg(&layer.path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&superblock.stdout).contains(&uuid_from_diff_id(&layer.diff_id))
    );

    let mounted = match MountedImage::mount(&layer.path) {
        Ok(mounted) => mounted,
        Err(why) => {
            eprintln!("cannot mount erofs here ({why}); checking with dump.erofs instead");
            assert!(dump_erofs_path(&layer.path, "/etc/motd").contains("char dev"));
            let data = dump_erofs_path(&layer.path, "/data");
            assert!(!data.contains("Xattr size: 0 "), "opaque xattr: {data}");
            return;
        }
    };
    let whiteout = fs::symlink_metadata(mounted.path("etc/motd")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert_eq!(
        xattr(&mounted.path("data"), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert_eq!(fs::read(mounted.path("data/c")).unwrap(), b"c");
    let hostname = fs::metadata(mounted.path("etc/hostname")).unwrap();
    assert_eq!((hostname.uid(), hostname.gid()), (1000, 1001));
    assert_eq!(hostname.mode() & 0o7777, 0o640);
    assert_eq!(hostname.mtime(), MTIME as i64, "per-file mtime kept");
    assert_eq!(
        xattr(&mounted.path("etc/hostname"), "user.note"),
        Some(b"kept".to_vec())
    );
    let same = fs::metadata(mounted.path("etc/hostname.same")).unwrap();
    assert_eq!(
        (same.ino(), same.nlink()),
        (hostname.ino(), 2),
        "hard link kept"
    );
    let tool = fs::metadata(mounted.path("usr/bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(tool.mtime(), NEWEST);
    assert_eq!(
        fs::read_link(mounted.path("bin")).unwrap(),
        Path::new("usr/bin")
    );

    // As the guest stacks it: the whiteout and the opaque directory hide a lower layer's.
    let base = snapshots.path().join("11/fs");
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::create_dir_all(base.join("data")).unwrap();
    fs::write(base.join("etc/motd"), b"hidden").unwrap();
    fs::write(base.join("data/old"), b"hidden").unwrap();
    fs::write(base.join("etc/base"), b"seen").unwrap();
    let rootfs = snapshots.path().join("rootfs");
    fs::create_dir(&rootfs).unwrap();
    let lower = format!(
        "lowerdir={}:{}",
        mounted.dir.path().display(),
        base.display()
    );
    match Mount::new("overlay", &lower, "overlay", &rootfs) {
        Ok(_overlay) => {
            assert!(!rootfs.join("etc/motd").exists(), "whited out");
            assert!(
                !rootfs.join("data/old").exists(),
                "hidden by the opaque directory"
            );
            assert_eq!(fs::read(rootfs.join("data/c")).unwrap(), b"c");
            assert_eq!(fs::read(rootfs.join("etc/base")).unwrap(), b"seen");
        }
        Err(why) => eprintln!("cannot mount overlay here ({why}); skipping the stacked view"),
    }
}

#[test]
fn same_snapshot_twice_converts_once() {
    let fixture = Fixture::new();
    let snapshots = snapshots_dir();
    sample_snapshot(snapshots.path());
    let (first, converted) = fixture
        .store
        .layer_from_snapshot_reporting(snapshots.path())
        .unwrap();
    assert!(converted);
    let before = fs::metadata(&first.path).unwrap();
    let (second, converted) = fixture
        .store
        .layer_from_snapshot_reporting(snapshots.path())
        .unwrap();
    assert!(!converted);
    assert_eq!(first, second);
    let after = fs::metadata(&second.path).unwrap();
    assert_eq!(
        (after.ino(), after.mtime(), after.mtime_nsec()),
        (before.ino(), before.mtime(), before.mtime_nsec())
    );
    assert_eq!(erofs_images(&fixture.store).len(), 1);
}

#[test]
fn two_threads_converting_one_snapshot_share_one_disk() {
    let fixture = Fixture::new();
    let snapshots = snapshots_dir();
    sample_snapshot(snapshots.path());
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let root = fixture.store.root().to_owned();
            let dir = snapshots.path().to_owned();
            std::thread::spawn(move || {
                // Each thread opens its own store handle, as separate shims would.
                let store = LayerStore::open(root).unwrap();
                barrier.wait();
                store.layer_from_snapshot_reporting(&dir)
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().expect("conversion"))
        .collect();
    assert_eq!(results[0].0, results[1].0);
    assert_eq!(
        results.iter().filter(|(_, converted)| *converted).count(),
        1,
        "exactly one conversion"
    );
    assert_eq!(erofs_images(&fixture.store).len(), 1);
    assert_eq!(
        dir_entries(&fixture.store.root().join("tmp")),
        Vec::<String>::new()
    );
}

#[test]
fn snapshots_with_the_same_content_get_different_disks() {
    let fixture = Fixture::new();
    let snapshots = snapshots_dir();
    sample_snapshot(&snapshots.path().join("1/fs"));
    sample_snapshot(&snapshots.path().join("2/fs"));
    let one = fixture
        .store
        .layer_from_snapshot(&snapshots.path().join("1/fs"))
        .unwrap();
    let two = fixture
        .store
        .layer_from_snapshot(&snapshots.path().join("2/fs"))
        .unwrap();
    assert_ne!(one.diff_id, two.diff_id);
    assert_ne!(one.path, two.path);
    assert_eq!(erofs_images(&fixture.store).len(), 2);
}

#[test]
fn snapshot_converts_to_the_same_bytes_in_two_stores() {
    let fixture = Fixture::new();
    let other = LayerStore::open(fixture.temp.path().join("other-store")).unwrap();
    let snapshots = snapshots_dir();
    sample_snapshot(snapshots.path());
    let one = fixture.store.layer_from_snapshot(snapshots.path()).unwrap();
    let two = other.layer_from_snapshot(snapshots.path()).unwrap();
    assert_eq!(one.diff_id, two.diff_id);
    assert_eq!(fs::read(&one.path).unwrap(), fs::read(&two.path).unwrap());
}

#[test]
fn empty_snapshot_is_an_empty_layer() {
    let fixture = Fixture::new();
    let snapshots = snapshots_dir();
    let layer = fixture.store.layer_from_snapshot(snapshots.path()).unwrap();
    let record = fixture.store.layer_record(&layer.diff_id).unwrap().unwrap();
    assert_eq!(record.stats.entries, 0);
    match MountedImage::mount(&layer.path) {
        Ok(mounted) => assert_eq!(dir_entries(mounted.dir.path()), Vec::<String>::new()),
        Err(why) => eprintln!("cannot mount erofs here ({why})"),
    }
}

#[test]
fn snapshot_that_is_a_file_is_refused() {
    let fixture = Fixture::new();
    let file = fixture.canary().join("file");
    fs::write(&file, b"not a directory").unwrap();
    let error = fixture.store.layer_from_snapshot(&file).unwrap_err();
    assert!(
        matches!(error, SnapshotError::NotADirectory(_)),
        "{error:?}"
    );
    fs::remove_file(&file).unwrap();
    fixture.assert_nothing_written();
}

#[test]
fn snapshot_that_is_a_symbolic_link_is_refused() {
    let fixture = Fixture::new();
    let snapshots = snapshots_dir();
    fs::create_dir(snapshots.path().join("real")).unwrap();
    symlink("real", snapshots.path().join("link")).unwrap();
    let error = fixture
        .store
        .layer_from_snapshot(&snapshots.path().join("link"))
        .unwrap_err();
    assert!(matches!(error, SnapshotError::SymbolicLink(_)), "{error:?}");
    assert!(error.to_string().contains("symbolic link"));
    fixture.assert_nothing_written();
}

#[test]
fn missing_snapshot_is_refused() {
    let fixture = Fixture::new();
    let error = fixture
        .store
        .layer_from_snapshot(&fixture.temp.path().join("absent"))
        .unwrap_err();
    assert!(matches!(error, SnapshotError::Io { .. }), "{error:?}");
    fixture.assert_nothing_written();
}

#[test]
fn snapshot_overlapping_the_store_is_refused() {
    let fixture = Fixture::new();
    for dir in [
        fixture.temp.path().to_owned(),
        fixture.store.root().join("tmp"),
    ] {
        let error = fixture.store.layer_from_snapshot(&dir).unwrap_err();
        assert!(
            matches!(error, SnapshotError::OverlapsStore { .. }),
            "{error:?}"
        );
    }
    fixture.assert_nothing_written();
}

#[test]
fn snapshot_with_a_mount_inside_is_refused() {
    let fixture = Fixture::new();
    let snapshots = snapshots_dir();
    fs::create_dir(snapshots.path().join("mnt")).unwrap();
    let _mount = match Mount::new("tmpfs", "size=1m", "tmpfs", &snapshots.path().join("mnt")) {
        Ok(mount) => mount,
        Err(why) => {
            eprintln!("cannot mount tmpfs here ({why}); skipping");
            return;
        }
    };
    let error = fixture
        .store
        .layer_from_snapshot(snapshots.path())
        .unwrap_err();
    assert!(
        matches!(error, SnapshotError::MountPointInside { .. }),
        "{error:?}"
    );
    fixture.assert_nothing_written();
}
