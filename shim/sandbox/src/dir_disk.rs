//! Directory volumes kept on a disk of their own: a sparse ext4 image inside the volume's
//! host directory, attached to one of the pod's empty disk slots and mounted by the guest
//! at the container's path (the front end picks which volumes: plain emptyDirs, whose
//! small-file work is many times faster on a guest disk than through the share).
//!
//! The image lives in the host directory the kubelet made for the volume, so the kubelet's
//! usage accounting (`du` of that directory) counts what the pod stores there: the image is
//! sparse, grows as the guest writes and shrinks as it deletes (the guest mounts it with
//! `discard`, and the VMM punches holes for discards). The host no longer sees the files
//! themselves, and the kubelet removes the image with the directory when the pod goes.
//!
//! One disk per image, attached read-write whatever a container asked: containers of the
//! pod naming the same directory share the disk and the guest's one filesystem on it; a
//! container that asked for a read-only mount gets its mount read-only in the guest. An
//! image made by an earlier container (a restarted one, or before a daemon restart) is
//! used as it is, so what the pod wrote stays.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;
use vpod_image::Digest;

use super::block_volume::{clean_container_path, OpenedVolume};
use super::disk::{self, DiskError};
use super::serial::MAX_SERIAL_LEN;

/// The image's name in the volume's host directory.
pub const IMAGE_NAME: &str = ".vpod-volume.ext4";
/// ext4's superblock magic (`0xEF53`, little-endian) sits 1024 + 56 bytes in.
const EXT4_MAGIC_OFFSET: usize = 1080;
/// The smallest image worth making.
const MIN_SIZE: u64 = 16 << 20;

/// Why a directory volume cannot be kept on a disk.
#[derive(Debug, thiserror::Error)]
pub enum DirDiskError {
    #[error("the host directory {0} is not an absolute path")]
    Relative(PathBuf),
    #[error("the host directory {0} cannot be used")]
    Dir(PathBuf, #[source] std::io::Error),
    #[error("the host path {0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("the container path {0:?} is not a clean absolute path below /")]
    ContainerPath(String),
    #[error("the volume's disk size ({0} bytes) is below {MIN_SIZE} bytes")]
    TooSmall(u64),
    #[error("could not open or create the volume's disk image {0}")]
    Image(PathBuf, #[source] std::io::Error),
    #[error("{0} is not an ext4 image vpod made: left alone")]
    NotOurs(PathBuf),
    #[error("could not format the volume's disk image")]
    Format(#[source] DiskError),
}

/// A directory volume the front end wants on a disk of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirDisk {
    /// The volume's host directory (a kubelet's emptyDir); the image is made inside it.
    pub host_dir: PathBuf,
    /// Where the filesystem is mounted in the container.
    pub container_path: String,
    /// This container's mount is read-only.
    pub read_only: bool,
    /// The image's size (sparse: what the guest stores is what it costs).
    pub size_bytes: u64,
}

/// Where a directory volume goes in a pod whose disk slots may be full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Placement {
    /// Its image exists: it is on a disk, whatever else (the serial it has).
    Disk(String),
    /// No image and the directory is empty: a disk if a slot is free, else the share.
    Either,
    /// No image and something is in the directory (an earlier container used it through
    /// the share): the share, so every container of the pod sees the same files.
    Share,
}

/// Where `dir`'s volume should go (an unreadable directory is left to [`open`] to refuse).
pub(crate) fn placement(dir: &Path) -> Placement {
    let Ok(dir) = std::fs::canonicalize(dir) else {
        return Placement::Either;
    };
    let image = dir.join(IMAGE_NAME);
    if std::fs::symlink_metadata(&image).is_ok() {
        return Placement::Disk(image_serial(&image));
    }
    let used = std::fs::read_dir(&dir).is_ok_and(|mut entries| entries.next().is_some());
    if used {
        Placement::Share
    } else {
        Placement::Either
    }
}

/// Opens the volume's image, making and formatting it first if the directory has none.
pub(crate) fn open(volume: &DirDisk) -> Result<OpenedVolume, DirDiskError> {
    if !clean_container_path(&volume.container_path) {
        return Err(DirDiskError::ContainerPath(volume.container_path.clone()));
    }
    if volume.size_bytes < MIN_SIZE {
        return Err(DirDiskError::TooSmall(volume.size_bytes));
    }
    let dir = &volume.host_dir;
    if !dir.is_absolute() {
        return Err(DirDiskError::Relative(dir.clone()));
    }
    let dir = std::fs::canonicalize(dir).map_err(|e| DirDiskError::Dir(dir.clone(), e))?;
    let metadata = std::fs::metadata(&dir).map_err(|e| DirDiskError::Dir(dir.clone(), e))?;
    if !metadata.is_dir() {
        return Err(DirDiskError::NotADirectory(dir));
    }
    let image = dir.join(IMAGE_NAME);
    let file = match open_existing(&image)? {
        Some(file) => file,
        None => create(&image, volume.size_bytes)?,
    };
    Ok(OpenedVolume {
        file,
        serial: image_serial(&image),
        host_path: image,
        read_only: false,
    })
}

/// The image if there is one (a regular file, not followed through a link, holding ext4).
fn open_existing(image: &Path) -> Result<Option<File>, DirDiskError> {
    let opened = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
        .open(image);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DirDiskError::Image(image.to_path_buf(), e)),
    };
    let metadata = file
        .metadata()
        .map_err(|e| DirDiskError::Image(image.to_path_buf(), e))?;
    let mut head = [0u8; EXT4_MAGIC_OFFSET + 2];
    let is_ext4 = metadata.is_file()
        && file.read_exact(&mut head).is_ok()
        && head[EXT4_MAGIC_OFFSET..] == [0x53, 0xef];
    if !is_ext4 {
        return Err(DirDiskError::NotOurs(image.to_path_buf()));
    }
    Ok(Some(file))
}

/// Makes the image (never over an existing entry) and formats it.
fn create(image: &Path, size_bytes: u64) -> Result<File, DirDiskError> {
    let failed = |e| DirDiskError::Image(image.to_path_buf(), e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
        .open(image)
        .map_err(failed)?;
    file.set_len(size_bytes).map_err(failed)?;
    if let Err(e) = disk::format_ext4(image) {
        let _ = std::fs::remove_file(image);
        return Err(DirDiskError::Format(e));
    }
    Ok(file)
}

/// "e-" and 18 hex digits of a hash of the image's canonical path.
fn image_serial(image: &Path) -> String {
    let hex = Digest::of_bytes(image.as_os_str().as_encoded_bytes()).hex();
    format!("e-{}", &hex[..MAX_SERIAL_LEN - 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn volume(dir: &Path) -> DirDisk {
        DirDisk {
            host_dir: dir.to_path_buf(),
            container_path: "/cache".into(),
            read_only: false,
            size_bytes: 1 << 30,
        }
    }

    #[test]
    fn an_image_is_made_once_sparse_and_used_again_after() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open(&volume(dir.path())).unwrap();
        let image = dir.path().canonicalize().unwrap().join(IMAGE_NAME);
        assert_eq!(opened.host_path, image);
        assert!(!opened.read_only);
        assert!(opened.serial.starts_with("e-"));
        assert_eq!(opened.serial.len(), MAX_SERIAL_LEN);
        let metadata = std::fs::metadata(&image).unwrap();
        assert_eq!(metadata.len(), 1 << 30);
        // Sparse: a formatted 1 GiB image takes a few MiB.
        assert!(metadata.blocks() * 512 < 32 << 20, "{}", metadata.blocks());
        // What the pod wrote stays: the second open does not format again.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"kept", 100 << 20))
            .unwrap();
        let mut ro = volume(dir.path());
        ro.read_only = true;
        let again = open(&ro).unwrap();
        assert_eq!(again.serial, opened.serial);
        assert!(!again.read_only, "the disk is shared read-write");
        let mut kept = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(&again.file, &mut kept, 100 << 20).unwrap();
        assert_eq!(&kept, b"kept");
    }

    #[test]
    fn a_directory_with_an_image_stays_on_its_disk_one_used_through_the_share_stays_there() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(placement(dir.path()), Placement::Either);
        let opened = open(&volume(dir.path())).unwrap();
        assert_eq!(placement(dir.path()), Placement::Disk(opened.serial));
        let shared = tempfile::tempdir().unwrap();
        std::fs::write(shared.path().join("written-through-the-share"), b"x").unwrap();
        assert_eq!(placement(shared.path()), Placement::Share);
    }

    #[test]
    fn what_is_not_ours_is_left_alone_and_bad_requests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join(IMAGE_NAME);
        std::fs::write(&image, vec![7u8; 4096]).unwrap();
        assert!(matches!(
            open(&volume(dir.path())),
            Err(DirDiskError::NotOurs(_))
        ));
        assert_eq!(std::fs::read(&image).unwrap(), vec![7u8; 4096]);
        // A link where the image goes is not followed.
        std::fs::remove_file(&image).unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::write(&target, b"x").unwrap();
        std::os::unix::fs::symlink(&target, &image).unwrap();
        assert!(open(&volume(dir.path())).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"x");

        let other = tempfile::tempdir().unwrap();
        let mut bad = volume(other.path());
        bad.container_path = "/a/../b".into();
        assert!(matches!(open(&bad), Err(DirDiskError::ContainerPath(_))));
        let mut bad = volume(other.path());
        bad.size_bytes = 4096;
        assert!(matches!(open(&bad), Err(DirDiskError::TooSmall(_))));
        assert!(matches!(
            open(&volume(Path::new("relative"))),
            Err(DirDiskError::Relative(_))
        ));
        assert!(matches!(
            open(&volume(&target)),
            Err(DirDiskError::NotADirectory(_))
        ));
        assert!(std::fs::read_dir(other.path()).unwrap().next().is_none());
    }
}
