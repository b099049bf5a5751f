//! virtio-blk on a raw file: read, write, flush, discard and the device id (serial).

pub mod device;
pub mod discard;
pub mod disk;
pub mod event_handler;
pub mod handler;
pub mod request;

pub use device::{BlockDevice, BlockError, BlockStatus};
pub use disk::{DiskImage, SlotDisk};
pub use handler::BlockMetrics;

/// Sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Feature bits (virtio 1.2, 5.2.3).
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const VIRTIO_BLK_F_DISCARD: u64 = 1 << 13;
