//! Helpers shared by the layer-store tests: layer tars (hostile ones too), OCI layouts, a
//! store beside a canary directory, and a look inside EROFS images.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, ImageConfigurationBuilder, ImageManifestBuilder, MediaType,
    Os, ANNOTATION_REF_NAME,
};
use tempfile::TempDir;
use vpod_image::oci::writer::{encode_layer, LayerCompression, OciLayoutWriter};
use vpod_image::{DiffId, LayerStore};

pub const MTIME: u64 = 1_600_000_000;

/// Builds a tar entry by entry; paths and link names are written raw, so hostile ones
/// (`../x`, `/etc/x`) can be made.
pub struct LayerTar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerTar {
    pub fn new() -> Self {
        LayerTar {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, path: &str, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_old_mut().name;
        assert!(path.len() < name.len(), "test paths stay short");
        name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(MTIME);
        header.set_size(size);
        header
    }

    fn append(mut self, mut header: tar::Header, data: &[u8]) -> Self {
        header.set_cksum();
        self.builder.append(&header, data).expect("append to a Vec");
        self
    }

    pub fn dir(self, path: &str) -> Self {
        let header = Self::header(tar::EntryType::Directory, path, 0o755, 0);
        self.append(header, &[])
    }

    pub fn file(self, path: &str, content: &str) -> Self {
        self.file_with(path, content, 0o644, 0, 0)
    }

    pub fn file_with(self, path: &str, content: &str, mode: u32, uid: u64, gid: u64) -> Self {
        let mut header = Self::header(tar::EntryType::Regular, path, mode, content.len() as u64);
        header.set_uid(uid);
        header.set_gid(gid);
        self.append(header, content.as_bytes())
    }

    fn link(self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut header = Self::header(kind, path, 0o777, 0);
        let link_name = &mut header.as_old_mut().linkname;
        link_name[..target.len()].copy_from_slice(target.as_bytes());
        self.append(header, &[])
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.link(tar::EntryType::Symlink, path, target)
    }

    pub fn hard_link(self, path: &str, target: &str) -> Self {
        self.link(tar::EntryType::Link, path, target)
    }

    pub fn char_device(self, path: &str) -> Self {
        let mut header = Self::header(tar::EntryType::Char, path, 0o666, 0);
        header.set_device_major(1).expect("gnu header");
        header.set_device_minor(3).expect("gnu header");
        self.append(header, &[])
    }

    /// A PAX extended header applying to the next entry.
    pub fn pax(mut self, records: &[(&str, &[u8])]) -> Self {
        self.builder
            .append_pax_extensions(records.iter().copied())
            .expect("append to a Vec");
        self
    }

    pub fn fifo(self, path: &str) -> Self {
        let header = Self::header(tar::EntryType::Fifo, path, 0o640, 0);
        self.append(header, &[])
    }

    pub fn finish(self) -> Vec<u8> {
        self.builder.into_inner().expect("finish a Vec")
    }
}

/// Writes an OCI layout of `layers` (lowest first) tagged `tag`; returns the manifest.
pub fn write_layout(
    dir: &Path,
    layers: &[(Vec<u8>, LayerCompression)],
    tag: &str,
) -> (Descriptor, Vec<DiffId>) {
    let writer = OciLayoutWriter::create(dir).expect("create layout");
    let mut written = Vec::new();
    for (tar, compression) in layers {
        let encoded = encode_layer(tar, *compression).expect("encode layer");
        written.push(writer.write_layer(&encoded).expect("write layer"));
    }
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(
            ConfigBuilder::default()
                .env(vec!["PATH=/bin".into()])
                .cmd(vec!["sh".into()])
                .entrypoint(vec!["/bin/entry".into()])
                .working_dir("/work")
                .user("1000:1000")
                .labels([("purpose".to_owned(), "test".to_owned())])
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let manifest = writer
        .write_image(config, &written, Some(tag))
        .expect("write image");
    writer
        .write_index(vec![manifest.clone()])
        .expect("write index");
    let diff_ids = written.iter().map(|(_, d)| *d).collect();
    (manifest, diff_ids)
}

/// Writes a one-layer OCI layout (the layer gzipped) tagged `tag` whose config blob is
/// `config`, byte for byte: for configs the writer would not write.
pub fn write_layout_with_raw_config(dir: &Path, tar: &[u8], config: &str, tag: &str) {
    let writer = OciLayoutWriter::create(dir).expect("create layout");
    let encoded = encode_layer(tar, LayerCompression::Gzip).expect("encode layer");
    let (layer, _) = writer.write_layer(&encoded).expect("write layer");
    let config = writer
        .write_blob(MediaType::ImageConfig, config.as_bytes())
        .expect("write config");
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(vec![layer])
        .build()
        .unwrap();
    let mut descriptor = writer
        .write_blob(
            MediaType::ImageManifest,
            &serde_json::to_vec(&manifest).unwrap(),
        )
        .expect("write manifest");
    descriptor.set_annotations(Some(
        [(ANNOTATION_REF_NAME.to_owned(), tag.to_owned())].into(),
    ));
    writer.write_index(vec![descriptor]).expect("write index");
}

/// A store, an image layout and a canary directory side by side in one temp directory.
pub struct Fixture {
    pub temp: TempDir,
    pub store: LayerStore,
}

impl Fixture {
    pub fn new() -> Fixture {
        let temp = tempfile::tempdir().expect("temp dir");
        fs::create_dir(temp.path().join("canary")).expect("canary");
        let store = LayerStore::open(temp.path().join("store")).expect("open store");
        Fixture { temp, store }
    }

    pub fn layout_dir(&self, name: &str) -> PathBuf {
        self.temp.path().join(name)
    }

    pub fn reference(&self, name: &str, tag: &str) -> String {
        format!("oci:{}:{tag}", self.layout_dir(name).display())
    }

    pub fn canary(&self) -> PathBuf {
        self.temp.path().join("canary")
    }

    /// Asserts that a refused import left nothing behind: canary empty, no layer image, no
    /// staging tree, no image record.
    pub fn assert_nothing_written(&self) {
        assert_eq!(dir_entries(&self.canary()), Vec::<String>::new(), "canary");
        let store = self.store.root();
        assert!(
            dir_entries(&store.join("layers/sha256"))
                .iter()
                .all(|n| !n.ends_with(".erofs")),
            "no layer image"
        );
        assert_eq!(dir_entries(&store.join("tmp")), Vec::<String>::new(), "tmp");
        assert_eq!(
            dir_entries(&store.join("images")),
            Vec::<String>::new(),
            "images"
        );
    }
}

pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// An EROFS image mounted read-only on a loop device; unmounted on drop.
pub struct MountedImage {
    pub dir: TempDir,
}

impl MountedImage {
    /// Mounts `image`, or says why it cannot (no erofs in the kernel, no loop devices, not
    /// root), so the caller can fall back to `dump.erofs`.
    pub fn mount(image: &Path) -> Result<MountedImage, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(image)
            .arg(dir.path())
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(MountedImage { dir })
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }
}

impl Drop for MountedImage {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// `dump.erofs --path=PATH IMAGE`, for checks without mounting.
pub fn dump_erofs_path(image: &Path, path: &str) -> String {
    let output = Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(image)
        .output()
        .expect("run dump.erofs (erofs-utils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
