//! The virtio-blk device: features, configuration space and activation.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::disk::{DiskImage, RawFile};
use super::handler::BlockQueueHandler;
use super::{SECTOR_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use crate::config::{DiskConfig, DISK_SERIAL_LEN};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, QUEUE_MAX_SIZE, TYPE_BLOCK,
    VIRTIO_F_VERSION_1,
};

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("cannot open disk {0}")]
    Open(PathBuf, #[source] std::io::Error),
}

const QUEUE_SIZES: [u16; 1] = [QUEUE_MAX_SIZE];

/// The queue handler as the running device uses it.
pub(super) type ActiveHandler = BlockQueueHandler<Arc<dyn VirtioInterrupt>, RawFile>;

pub struct BlockDevice {
    /// The image while the device is inactive; the handler owns it while active.
    pub(super) disk: Option<RawFile>,
    pub(super) handler: Option<ActiveHandler>,
    pub(super) memory: Option<Arc<GuestMemoryMmap>>,
    read_only: bool,
    serial: [u8; DISK_SERIAL_LEN],
    config_space: Vec<u8>,
    avail_features: u64,
    acked_features: u64,
}

/// The configuration space: capacity in sectors, size_max (unused), seg_max.
fn config_space(capacity_bytes: u64) -> Vec<u8> {
    let mut config = Vec::with_capacity(16);
    config.extend_from_slice(&(capacity_bytes / SECTOR_SIZE).to_le_bytes());
    config.extend_from_slice(&0u32.to_le_bytes());
    // The driver uses up to queue size - 2 data segments (header and status take two).
    config.extend_from_slice(&u32::from(QUEUE_MAX_SIZE - 2).to_le_bytes());
    config
}

impl BlockDevice {
    /// Opens the disk image `config` names.
    pub fn open(config: &DiskConfig) -> Result<Self, BlockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(|e| BlockError::Open(config.path.clone(), e))?;
        let disk = RawFile::new(file).map_err(|e| BlockError::Open(config.path.clone(), e))?;
        let mut serial = [0u8; DISK_SERIAL_LEN];
        let len = config.serial.len().min(DISK_SERIAL_LEN);
        serial[..len].copy_from_slice(&config.serial[..len]);
        Ok(Self::with_disk(disk, config.read_only, serial))
    }

    fn with_disk(disk: RawFile, read_only: bool, serial: [u8; DISK_SERIAL_LEN]) -> Self {
        let mut avail_features = VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX;
        if read_only {
            avail_features |= VIRTIO_BLK_F_RO;
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
        }
    }
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
        self.handler = Some(BlockQueueHandler::new(
            queue,
            disk,
            interrupt,
            self.read_only,
            self.serial,
        ));
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
            path: path.clone(),
            read_only: true,
            serial: b"abc".to_vec(),
        })
        .expect("opens");
        let rw = BlockDevice::open(&DiskConfig {
            path: path.clone(),
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
            path: PathBuf::from("/nonexistent/vpod/disk.img"),
            read_only: true,
            serial: Vec::new(),
        });
        assert!(matches!(result, Err(BlockError::Open(..))));
    }
}
