//! Raw block volumes in the guest: a disk the host attached to a slot for a container
//! (CRI `devices`), found by its serial, made read-only or writable as the container asked,
//! and bound by the container's init over a file at its path inside the container.
//!
//! A disk may instead hold a filesystem the container mounts at its path (an emptyDir on a
//! disk of its own): the container's init mounts it (nosuid, nodev, with discard, so what
//! the container deletes is given back to the host file), read-only for that container if
//! it asked, and the device's own read-only flag is left alone, since another container of
//! the pod may write through the same filesystem.
//!
//! The guest's page cache of such a disk belongs to its slot, not to the host file behind
//! it: before the host detaches the disk, [`flush`] writes what the container left dirty and
//! drops the cached pages, so nothing reaches the next disk put in that slot.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::rootfs::{find_disk_by_serial, RootfsError, RootfsPaths};

/// `_IO(0x12, 93)`: set the block device's read-only flag from an `int`.
const BLKROSET: libc::c_ulong = 0x125d;
/// `_IO(0x12, 97)`: write the device's dirty pages and drop its page cache.
const BLKFLSBUF: libc::c_ulong = 0x1261;
/// How long a just-attached disk may take to show its capacity (the driver reads it from a
/// work item after the VMM's configuration-change interrupt).
const CAPACITY_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum BlockDeviceError {
    #[error("the disk of the block device for {0} was not found")]
    Find(String, #[source] RootfsError),
    #[error("the disk {0} still has no capacity after {CAPACITY_WAIT:?}")]
    NoCapacity(PathBuf),
    #[error("could not open {0}")]
    Open(PathBuf, #[source] io::Error),
    #[error("could not set the read-only flag of {0}")]
    ReadOnly(PathBuf, #[source] io::Error),
}

/// A filesystem the agent mounts from a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Ext4,
}

impl Filesystem {
    /// The name mount(2) takes.
    pub fn fstype(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
        }
    }
}

/// A disk a container sees as a block device node, or whose filesystem it sees mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDeviceSpec {
    /// The disk's virtio-blk serial.
    pub serial: String,
    /// Absolute inside the container, without "..".
    pub destination: String,
    pub read_only: bool,
    /// `None`: a device node at `destination`; otherwise this filesystem mounted there.
    pub filesystem: Option<Filesystem>,
    /// The guest's node of the disk (`/dev/vdX`), found when the container is created.
    pub node: PathBuf,
}

/// Finds the disk, waits for its capacity and sets its read-only flag as asked (a node's,
/// not a filesystem's); the guest's node of it.
pub fn prepare(paths: &RootfsPaths, device: &BlockDeviceSpec) -> Result<PathBuf, BlockDeviceError> {
    let node = find_disk_by_serial(&paths.sys_block, &paths.dev, &device.serial)
        .map_err(|e| BlockDeviceError::Find(device.destination.clone(), e))?;
    if let Some(name) = node.file_name() {
        wait_for_capacity(&paths.sys_block.join(name).join("size"), &node)?;
    }
    if device.filesystem.is_some() {
        return Ok(node);
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&node)
        .map_err(|e| BlockDeviceError::Open(node.clone(), e))?;
    // Set either way: the slot may have held a disk with the other flag before.
    let flag: libc::c_int = device.read_only.into();
    // SAFETY: BLKROSET reads one int from the pointer, which points at `flag` for the call.
    let done = unsafe { libc::ioctl(file.as_raw_fd(), BLKROSET, &flag) };
    if done < 0 {
        return Err(BlockDeviceError::ReadOnly(node, io::Error::last_os_error()));
    }
    Ok(node)
}

/// Waits until `size` (sectors, in sysfs) is not zero.
fn wait_for_capacity(size: &Path, node: &Path) -> Result<(), BlockDeviceError> {
    let started = Instant::now();
    loop {
        let sectors = std::fs::read_to_string(size)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if sectors > 0 {
            return Ok(());
        }
        if started.elapsed() > CAPACITY_WAIT {
            return Err(BlockDeviceError::NoCapacity(node.to_path_buf()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (up to `wait`) until nothing has the filesystem on `node` mounted: the last
/// container's mount namespace goes away after its processes, and the kernel writes the
/// filesystem back when its last mount goes. A device open with `O_EXCL` fails while mounted.
pub async fn wait_unmounted(node: &Path, wait: Duration) -> bool {
    let started = Instant::now();
    loop {
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_EXCL)
            .open(node);
        match opened {
            Ok(_) => return true,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && started.elapsed() < wait => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return false,
        }
    }
}

/// Writes the disk's dirty pages and drops its page cache (best effort: the kernel does the
/// same when the last process that had it open closes it).
pub fn flush(node: &Path) {
    let Ok(file) = File::open(node) else {
        return;
    };
    // SAFETY: BLKFLSBUF takes no argument and touches no memory of ours.
    if unsafe { libc::ioctl(file.as_raw_fd(), BLKFLSBUF, 0) } < 0 {
        eprintln!(
            "vpod-init: could not flush {}: {}",
            node.display(),
            io::Error::last_os_error()
        );
    }
}
