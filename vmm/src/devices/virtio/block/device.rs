//! The virtio-blk device: features, configuration space and activation.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use rustix::fs::OFlags;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::disk::{DiskImage, RawFile, SlotDisk};
use super::handler::{BlockMetrics, BlockQueueHandler};
use super::{
    discard, SECTOR_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX,
};
use crate::config::{DiskConfig, DiskSource, DISK_SERIAL_LEN};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, QUEUE_MAX_SIZE, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("cannot use inherited descriptor {0} as a disk")]
    Inherited(RawFd, #[source] std::io::Error),
    #[error("cannot use the passed descriptor as a disk")]
    Descriptor(#[source] std::io::Error),
    #[error("the descriptor is open read-only but the disk is not")]
    ReadOnlyDescriptor,
    #[error("the descriptor is open write-only")]
    WriteOnlyDescriptor,
    #[error("the slot already holds a disk (detach it first)")]
    SlotInUse,
    #[error("the slot is empty")]
    SlotEmpty,
    #[error("the disk was not made with --disk-slots and cannot be swapped")]
    NotASlot,
}

const QUEUE_SIZES: [u16; 1] = [QUEUE_MAX_SIZE];

/// The queue handler as the running device uses it.
pub(super) type ActiveHandler = BlockQueueHandler<Arc<dyn VirtioInterrupt>, SlotDisk>;

pub struct BlockDevice {
    /// The image while the device is inactive; the handler owns it while active.
    pub(super) disk: Option<SlotDisk>,
    pub(super) handler: Option<ActiveHandler>,
    pub(super) memory: Option<Arc<GuestMemoryMmap>>,
    read_only: bool,
    serial: [u8; DISK_SERIAL_LEN],
    config_space: Vec<u8>,
    avail_features: u64,
    acked_features: u64,
    /// Made empty by `--disk-slots`: disks can be attached and detached at runtime.
    hot_swappable: bool,
    metrics: Arc<BlockMetrics>,
}

/// What a block device reports about itself to the control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockStatus {
    pub attached: bool,
    pub read_only: bool,
    pub serial: String,
    pub capacity_bytes: u64,
    pub metrics: [u64; 4],
}

/// A copy of descriptor `fd`, inherited from the launcher and checked open when the
/// configuration was read; the original stays open.
fn duplicate_inherited(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC touches no memory; a descriptor that is not open makes it fail,
    // which is checked.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// The configuration space: capacity in sectors, size_max (unused), seg_max; geometry,
/// blk_size, topology, writeback and num_queues unused (their features are not offered);
/// then the discard limits at offset 36.
fn config_space(capacity_bytes: u64) -> Vec<u8> {
    let mut config = Vec::with_capacity(48);
    config.extend_from_slice(&(capacity_bytes / SECTOR_SIZE).to_le_bytes());
    config.extend_from_slice(&0u32.to_le_bytes());
    // The driver uses up to queue size - 2 data segments (header and status take two).
    config.extend_from_slice(&u32::from(QUEUE_MAX_SIZE - 2).to_le_bytes());
    config.resize(36, 0);
    for value in [
        discard::MAX_DISCARD_SECTORS,
        discard::MAX_DISCARD_SEGMENTS,
        discard::DISCARD_SECTOR_ALIGNMENT,
    ] {
        config.extend_from_slice(&value.to_le_bytes());
    }
    config
}

impl BlockDevice {
    fn open_file(config: &DiskConfig) -> Result<RawFile, BlockError> {
        match &config.source {
            DiskSource::Path(path) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(!config.read_only)
                    .open(path)
                    .map_err(|e| BlockError::Open(path.clone(), e))?;
                RawFile::new(file).map_err(|e| BlockError::Open(path.clone(), e))
            }
            DiskSource::Inherited(fd) => {
                let copy = duplicate_inherited(*fd).map_err(|e| BlockError::Inherited(*fd, e))?;
                Self::open_descriptor(copy, config.read_only).map_err(|e| match e {
                    BlockError::Descriptor(e) => BlockError::Inherited(*fd, e),
                    other => other,
                })
            }
        }
    }

    /// The disk behind a descriptor someone else opened (passed over the control socket, or
    /// inherited), which must allow writing unless the disk is read-only.
    pub fn open_descriptor(fd: OwnedFd, read_only: bool) -> Result<RawFile, BlockError> {
        let flags = rustix::fs::fcntl_getfl(&fd).map_err(|e| BlockError::Descriptor(e.into()))?;
        let access = flags & OFlags::ACCMODE;
        if access == OFlags::WRONLY {
            return Err(BlockError::WriteOnlyDescriptor);
        }
        if !read_only && access == OFlags::RDONLY {
            return Err(BlockError::ReadOnlyDescriptor);
        }
        RawFile::new(File::from(fd)).map_err(BlockError::Descriptor)
    }

    /// Opens the disk image `config` names.
    pub fn open(config: &DiskConfig) -> Result<Self, BlockError> {
        let disk = Self::open_file(config)?;
        Ok(Self::with_disk(
            SlotDisk::new(Some(disk)),
            config.read_only,
            serial_bytes(&config.serial),
        ))
    }

    /// An empty slot (capacity 0) that [`Self::attach`] fills later.
    pub fn empty_slot() -> Self {
        let mut device = Self::with_disk(SlotDisk::default(), false, [0; DISK_SERIAL_LEN]);
        device.hot_swappable = true;
        device
    }

    fn with_disk(disk: SlotDisk, read_only: bool, serial: [u8; DISK_SERIAL_LEN]) -> Self {
        let mut avail_features = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX;
        // A slot is offered discard too: what it will hold is not known when the driver
        // starts, and a read-only disk put there later refuses discards as it does writes.
        if read_only {
            avail_features |= VIRTIO_BLK_F_RO;
        } else {
            avail_features |= VIRTIO_BLK_F_DISCARD;
        }
        BlockDevice {
            config_space: config_space(disk.size()),
            disk: Some(disk),
            handler: None,
            memory: None,
            read_only,
            serial,
            avail_features,
            acked_features: 0,
            hot_swappable: false,
            metrics: Arc::default(),
        }
    }

    fn slot_disk(&mut self) -> Option<&mut SlotDisk> {
        match self.handler.as_mut() {
            Some(handler) => Some(&mut handler.disk),
            None => self.disk.as_mut(),
        }
    }

    fn set_identity(&mut self, read_only: bool, serial: [u8; DISK_SERIAL_LEN], size: u64) {
        self.read_only = read_only;
        self.serial = serial;
        self.config_space = config_space(size);
        if let Some(handler) = self.handler.as_mut() {
            handler.read_only = read_only;
            handler.serial = serial;
        }
    }

    /// Puts the image `config` names into this empty slot. The caller tells the driver the
    /// configuration changed. Read-only is enforced by the device (writes fail); the guest's
    /// view of the flag was fixed when the driver started.
    pub fn attach(&mut self, config: &DiskConfig) -> Result<(), BlockError> {
        if !self.hot_swappable {
            return Err(BlockError::NotASlot);
        }
        if self.slot_disk().is_some_and(|d| d.is_attached()) {
            return Err(BlockError::SlotInUse);
        }
        let file = Self::open_file(config)?;
        self.attach_image(file, config.read_only, &config.serial)
    }

    /// Puts an already opened image into this empty slot, as [`Self::attach`] does.
    pub fn attach_image(
        &mut self,
        file: RawFile,
        read_only: bool,
        serial: &[u8],
    ) -> Result<(), BlockError> {
        if !self.hot_swappable {
            return Err(BlockError::NotASlot);
        }
        if self.slot_disk().is_some_and(|d| d.is_attached()) {
            return Err(BlockError::SlotInUse);
        }
        let size = file.size();
        if let Some(disk) = self.slot_disk() {
            disk.replace(Some(file));
        }
        self.set_identity(read_only, serial_bytes(serial), size);
        Ok(())
    }

    /// Empties this slot (capacity 0). The caller tells the driver the configuration changed.
    pub fn detach(&mut self) -> Result<(), BlockError> {
        if !self.hot_swappable {
            return Err(BlockError::NotASlot);
        }
        match self.slot_disk() {
            Some(disk) if disk.is_attached() => disk.replace(None),
            _ => return Err(BlockError::SlotEmpty),
        }
        self.set_identity(false, [0; DISK_SERIAL_LEN], 0);
        Ok(())
    }

    /// The serial as text, without its zero padding.
    pub fn serial_text(&self) -> String {
        let end = self
            .serial
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(DISK_SERIAL_LEN);
        String::from_utf8_lossy(&self.serial[..end]).into_owned()
    }

    pub fn status(&mut self) -> BlockStatus {
        let metrics = [
            &self.metrics.requests,
            &self.metrics.read_bytes,
            &self.metrics.write_bytes,
            &self.metrics.errors,
        ]
        .map(|c| c.load(std::sync::atomic::Ordering::Relaxed));
        let serial = self.serial_text();
        let read_only = self.read_only;
        let (attached, capacity_bytes) = self
            .slot_disk()
            .map_or((false, 0), |d| (d.is_attached(), d.size()));
        BlockStatus {
            attached,
            read_only,
            serial,
            capacity_bytes,
            metrics,
        }
    }
}

fn serial_bytes(serial: &[u8]) -> [u8; DISK_SERIAL_LEN] {
    let mut bytes = [0u8; DISK_SERIAL_LEN];
    let len = serial.len().min(DISK_SERIAL_LEN);
    bytes[..len].copy_from_slice(&serial[..len]);
    bytes
}

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // Nothing in the block configuration space is writable without extra features.
    }

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(ActivateError::QueueCount(queues.len(), QUEUE_SIZES.len()));
        }
        let queue = queues
            .into_iter()
            .next()
            .ok_or(ActivateError::InvalidQueue(0))?;
        // Taken only once nothing else can fail, so a refused activation keeps the disk.
        let disk = self.disk.take().ok_or(ActivateError::AlreadyActive)?;
        let mut handler =
            BlockQueueHandler::new(queue, disk, interrupt, self.read_only, self.serial);
        handler.metrics = self.metrics.clone();
        self.handler = Some(handler);
        self.memory = Some(memory);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(handler) = self.handler.take() {
            self.disk = Some(handler.disk);
        }
        self.memory = None;
        self.acked_features = 0;
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_reports_capacity_in_sectors() {
        let config = config_space(10 * 512 + 100);
        let mut capacity = [0u8; 8];
        read_config_bytes(&config, 0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 10);
        let mut seg_max = [0u8; 4];
        read_config_bytes(&config, 12, &mut seg_max);
        assert_eq!(u32::from_le_bytes(seg_max), 254);
    }

    #[test]
    fn read_only_disks_offer_the_ro_feature() {
        let path = std::env::temp_dir().join(format!("vpod-blk-device-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096]).expect("temp disk");
        let ro = BlockDevice::open(&DiskConfig {
            source: DiskSource::Path(path.clone()),
            read_only: true,
            serial: b"abc".to_vec(),
        })
        .expect("opens");
        let rw = BlockDevice::open(&DiskConfig {
            source: DiskSource::Path(path.clone()),
            read_only: false,
            serial: Vec::new(),
        })
        .expect("opens");
        let _ = std::fs::remove_file(&path);
        assert_ne!(ro.avail_features() & VIRTIO_BLK_F_RO, 0);
        assert_eq!(rw.avail_features() & VIRTIO_BLK_F_RO, 0);
        assert_eq!(&ro.serial[..4], b"abc\0");
        assert_ne!(rw.avail_features() & VIRTIO_F_VERSION_1, 0);
    }

    #[test]
    fn missing_disk_is_an_open_error() {
        let result = BlockDevice::open(&DiskConfig {
            source: DiskSource::Path(PathBuf::from("/nonexistent/vpod/disk.img")),
            read_only: true,
            serial: Vec::new(),
        });
        assert!(matches!(result, Err(BlockError::Open(..))));
    }
}
