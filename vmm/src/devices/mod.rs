//! Emulated devices: the I/O-port and MMIO buses, the legacy PC devices and virtio.

pub mod bus;
pub mod legacy;
pub mod virtio;

pub use bus::{Bus, BusDevice};
