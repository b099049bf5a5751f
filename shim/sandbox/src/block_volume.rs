//! Raw block volumes (CRI `devices`, Kubernetes' `volumeMode: Block`): a host block device
//! or a disk image file, attached to one of the pod's empty disk slots as a virtio-blk disk
//! and bound by the agent at its path in the container.
//!
//! The host opens the volume itself (so what is attached is what was checked) and passes
//! the descriptor to the VMM. One disk per host path and mode in a pod: containers asking
//! for the same volume with the same mode share its slot, as layers do.
//!
//! A VM gets disks, not the host's character devices (`/dev/fuse`, GPUs, terminals): those
//! are refused by name.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use vpod_image::Digest;

use super::serial::MAX_SERIAL_LEN;

/// The smallest disk virtio-blk can show: one sector.
const SECTOR_BYTES: u64 = 512;

/// Why a block volume cannot be given to a container.
#[derive(Debug, thiserror::Error)]
pub enum BlockVolumeError {
    #[error("the host path {0} is not an absolute path")]
    Relative(PathBuf),
    #[error("the host path {0} cannot be used")]
    Missing(PathBuf, #[source] std::io::Error),
    #[error(
        "the host path {0} is a character device: a VM pod cannot reach the host's character \
         devices, only block devices and disk image files"
    )]
    CharDevice(PathBuf),
    #[error("the host path {0} is {1}, not a block device or a disk image file")]
    NotADisk(PathBuf, &'static str),
    #[error("the host path {0} holds {1} bytes, less than one 512-byte sector")]
    TooSmall(PathBuf, u64),
    #[error("the container path {0:?} is not a clean absolute path below /")]
    ContainerPath(String),
}

/// A volume as the front end asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockVolume {
    /// A block device or a regular file on the host (symlinks are followed).
    pub host_path: PathBuf,
    /// Where the block device node appears in the container.
    pub container_path: String,
    /// The disk is attached read-only and the guest's device is made read-only.
    pub read_only: bool,
}

/// A volume opened on the host, ready to attach.
#[derive(Debug)]
pub(crate) struct OpenedVolume {
    pub file: File,
    /// The virtio-blk serial: the same for the same disk and mode.
    pub serial: String,
    pub host_path: PathBuf,
    /// How the disk is attached.
    pub read_only: bool,
}

/// Checks that `path` names something a VM can get as a disk: a block device or a regular
/// file of at least one sector. The front ends call it to refuse a request up front.
pub fn check_host_path(path: &Path) -> Result<(), BlockVolumeError> {
    if !path.is_absolute() {
        return Err(BlockVolumeError::Relative(path.to_path_buf()));
    }
    let metadata =
        std::fs::metadata(path).map_err(|e| BlockVolumeError::Missing(path.to_path_buf(), e))?;
    check_kind(path, &metadata.file_type())?;
    if metadata.file_type().is_file() && metadata.len() < SECTOR_BYTES {
        return Err(BlockVolumeError::TooSmall(
            path.to_path_buf(),
            metadata.len(),
        ));
    }
    Ok(())
}

fn check_kind(path: &Path, kind: &std::fs::FileType) -> Result<(), BlockVolumeError> {
    if kind.is_block_device() || kind.is_file() {
        return Ok(());
    }
    let path = path.to_path_buf();
    Err(if kind.is_char_device() {
        BlockVolumeError::CharDevice(path)
    } else if kind.is_dir() {
        BlockVolumeError::NotADisk(path, "a directory")
    } else if kind.is_fifo() {
        BlockVolumeError::NotADisk(path, "a FIFO")
    } else if kind.is_socket() {
        BlockVolumeError::NotADisk(path, "a socket")
    } else {
        BlockVolumeError::NotADisk(path, "something else")
    })
}

/// Whether `path` is absolute, below `/` and free of `..`.
pub(crate) fn clean_container_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.trim_matches('/').is_empty()
        && !path.split('/').any(|p| p == ".." || p == ".")
        && !path.contains('\0')
}

/// Opens the volume (read-write unless read-only) after checking what it is, and checks
/// again what was opened.
pub(crate) fn open(volume: &BlockVolume) -> Result<OpenedVolume, BlockVolumeError> {
    if !clean_container_path(&volume.container_path) {
        return Err(BlockVolumeError::ContainerPath(
            volume.container_path.clone(),
        ));
    }
    check_host_path(&volume.host_path)?;
    let missing = |e| BlockVolumeError::Missing(volume.host_path.clone(), e);
    let host_path = std::fs::canonicalize(&volume.host_path).map_err(missing)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(!volume.read_only)
        .open(&host_path)
        .map_err(missing)?;
    let metadata = file.metadata().map_err(missing)?;
    check_kind(&volume.host_path, &metadata.file_type())?;
    let size = if metadata.file_type().is_block_device() {
        file.seek(SeekFrom::End(0)).map_err(missing)?
    } else {
        metadata.len()
    };
    if size < SECTOR_BYTES {
        return Err(BlockVolumeError::TooSmall(volume.host_path.clone(), size));
    }
    Ok(OpenedVolume {
        file,
        serial: volume_serial(&host_path, volume.read_only),
        host_path,
        read_only: volume.read_only,
    })
}

/// "d-" and 18 hex digits of a hash of the canonical host path and the mode.
fn volume_serial(host_path: &Path, read_only: bool) -> String {
    let mut key = host_path.as_os_str().as_encoded_bytes().to_vec();
    key.extend_from_slice(if read_only { b"\0ro" } else { b"\0rw" });
    let hex = Digest::of_bytes(&key).hex();
    format!("d-{}", &hex[..MAX_SERIAL_LEN - 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn volume(host_path: &Path, container_path: &str) -> BlockVolume {
        BlockVolume {
            host_path: host_path.to_path_buf(),
            container_path: container_path.to_string(),
            read_only: false,
        }
    }

    #[test]
    fn a_disk_image_file_opens_with_a_serial_per_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        let rw = open(&volume(&image, "/dev/xvdb")).unwrap();
        assert!(rw.serial.starts_with("d-"));
        assert_eq!(rw.serial.len(), MAX_SERIAL_LEN);
        let again = open(&volume(&image, "/dev/other")).unwrap();
        assert_eq!(rw.serial, again.serial);
        let mut ro = volume(&image, "/dev/xvdb");
        ro.read_only = true;
        assert_ne!(open(&ro).unwrap().serial, rw.serial);
    }

    #[test]
    fn character_devices_missing_paths_and_directories_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |path: &Path| open(&volume(path, "/dev/x")).unwrap_err();
        assert!(matches!(
            refused(Path::new("/dev/null")),
            BlockVolumeError::CharDevice(_)
        ));
        assert!(refused(Path::new("/dev/null"))
            .to_string()
            .contains("character device"));
        assert!(matches!(
            refused(&dir.path().join("absent")),
            BlockVolumeError::Missing(..)
        ));
        assert!(matches!(
            refused(dir.path()),
            BlockVolumeError::NotADisk(_, "a directory")
        ));
        let empty = dir.path().join("empty.img");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(refused(&empty), BlockVolumeError::TooSmall(_, 0)));
        assert!(matches!(
            refused(Path::new("relative.img")),
            BlockVolumeError::Relative(_)
        ));
    }

    #[test]
    fn container_paths_must_be_clean_and_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 512]).unwrap();
        for bad in ["", "/", "dev/xvdb", "/dev/../etc/x", "/dev/./x"] {
            assert!(
                matches!(
                    open(&volume(&image, bad)),
                    Err(BlockVolumeError::ContainerPath(_))
                ),
                "{bad:?}"
            );
        }
    }
}
