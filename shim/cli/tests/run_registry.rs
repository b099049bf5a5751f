//! `vpod run` of an image that is only in a registry (Debian's docker-registry on
//! 127.0.0.1, plain HTTP as for any loopback registry): the run pulls it, converting each
//! layer as it downloads, into a store root on overlayfs (as `/var/lib` is inside
//! container-based nodes and the emulated host), boots the pod VM and shows the container
//! the layers merged as OCI says, whiteouts and opaque directories included. Nothing in
//! the store is a device node: the EROFS images carry the whiteouts.

#[path = "../../image/tests/registry_support/mod.rs"]
mod registry_support;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use registry_support::{Setup, TestRegistry};
use vpod_e2e::in_guest_host;
use vpod_e2e::vpod::VpodRoot;
use vpod_image::oci::writer::LayerCompression;

const LIMIT: Duration = Duration::from_secs(900);

/// A tar built entry by entry.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Layer {
        Layer(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(size);
        header.set_mtime(1_600_000_000);
        header
    }

    fn file(mut self, path: &str, data: &[u8], mode: u32) -> Layer {
        let mut header = Layer::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.0
            .append_data(&mut header, path, data)
            .expect("tar entry");
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Layer {
        let mut header = Layer::header(tar::EntryType::Symlink, 0o777, 0);
        self.0
            .append_link(&mut header, path, target)
            .expect("tar symlink");
        self
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().expect("tar")
    }
}

/// An overlayfs mounted on a fresh directory (upper and work on /tmp); unmounted and
/// removed when dropped.
struct Overlay {
    dir: tempfile::TempDir,
}

impl Overlay {
    fn mount() -> Overlay {
        let dir = tempfile::tempdir().expect("a scratch directory");
        for sub in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(dir.path().join(sub)).expect("overlay directory");
        }
        let path = |sub: &str| dir.path().join(sub).display().to_string();
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                path("lower"),
                path("upper"),
                path("work")
            ))
            .arg(path("merged"))
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t overlay failed: {status}");
        Overlay { dir }
    }

    fn merged(&self) -> PathBuf {
        self.dir.path().join("merged")
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.merged()).status();
    }
}

/// Every character or block device under `dir`.
fn device_nodes(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("list the store") {
            let entry = entry.expect("a store entry");
            let kind = entry.file_type().expect("its type");
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_char_device() || kind.is_block_device() {
                found.push(entry.path());
            }
        }
    }
    found
}

#[test]
fn vpod_run_pulls_a_registry_image_into_a_store_on_overlayfs_and_boots_it() {
    in_guest_host(LIMIT, || {
        let busybox = std::fs::read("/bin/busybox").expect("host busybox (busybox-static)");
        let base = Layer::new()
            .file("bin/busybox", &busybox, 0o755)
            .symlink("bin/sh", "busybox")
            .file("a/keep", b"kept\n", 0o644)
            .file("a/gone", b"whited out\n", 0o644)
            .file("d/old", b"hidden by the opaque marker\n", 0o644)
            .finish();
        let upper = Layer::new()
            .file("a/.wh.gone", b"", 0o644)
            .file("a/added", b"added\n", 0o644)
            .file("d/.wh..wh..opq", b"", 0o644)
            .file("d/new", b"fresh\n", 0o644)
            .finish();
        let registry = TestRegistry::start(Setup::default());
        registry.push_layers(
            &[
                (base, LayerCompression::Gzip),
                (upper, LayerCompression::None),
            ],
            "cli/run:v1",
        );
        let reference = format!("{}/cli/run:v1", registry.address);

        let overlay = Overlay::mount();
        let root = VpodRoot::new_in("run-registry", &overlay.merged());
        let done = root.run(&[
            "--env",
            "PATH=/bin",
            &reference,
            "--",
            "sh",
            "-c",
            r#"echo a: $(busybox ls -A /a); echo d: $(busybox ls -A /d); busybox cat /a/added"#,
        ]);
        assert_eq!(done.code(), Some(0), "{}", done.explain());
        assert!(done.has_stdout_line("a: added keep"), "{}", done.explain());
        assert!(done.has_stdout_line("d: new"), "{}", done.explain());
        assert!(done.has_stdout_line("added"), "{}", done.explain());
        assert!(
            done.stderr_text()
                .contains(&format!("vpod: pulling {reference}: 2 layers, 2 to fetch")),
            "{}",
            done.explain()
        );
        assert_eq!(device_nodes(root.path()), Vec::<PathBuf>::new());
        drop(root);
    });
}
