//! Virtio devices and their transport.
//!
//! A device implements [`VirtioDevice`] (features, config space, activation) and
//! [`DeviceEvents`] (its event glue), and signals the guest only through [`VirtioInterrupt`],
//! so it never knows whether it sits behind MMIO (today) or PCI. Each device has its own
//! folder with the same files: `device.rs` (config and activation), `handler.rs` (the queue
//! processing, a pure type generic over how it signals the guest), `event_handler.rs` (the
//! glue to queue notifications and to the host descriptors the device watches itself).
//! [`event_handler::VirtioEvents`] registers a device's queue notifications with the event
//! loop; its host side, if any, is a source of its own ([`DeviceEvents::host_events`]).

pub mod balloon;
pub mod block;
pub mod event_handler;
pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_queue;
pub mod vsock;

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::event_loop::Subscriber;

pub use mmio::{MmioInterrupt, MmioTransport};

/// Feature bit: the device follows virtio 1.x (the only kind offered here).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Largest queue any device here offers.
pub const QUEUE_MAX_SIZE: u16 = 256;

/// Virtio device ids.
pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;
pub const TYPE_BALLOON: u32 = 5;
pub const TYPE_VSOCK: u32 = 19;
pub const TYPE_FS: u32 = 26;

/// How a device tells the guest that something happened.
pub trait VirtioInterrupt: Send + Sync {
    /// Buffers were added to the used ring of `queue`.
    fn signal_used_queue(&self, queue: u16) -> io::Result<()>;
    /// The configuration space changed (for example, a disk's backing file was swapped).
    fn signal_config_changed(&self) -> io::Result<()>;
}

/// Signals a used queue; what queue handlers need, and what their tests fake.
pub trait QueueSignal {
    fn signal_used_queue(&self, queue: u16);
}

impl QueueSignal for Arc<dyn VirtioInterrupt> {
    fn signal_used_queue(&self, queue: u16) {
        // A lost interrupt is recovered by the guest's next notification; nothing to do here.
        let _ = VirtioInterrupt::signal_used_queue(self.as_ref(), queue);
    }
}

/// Errors activating a device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivateError {
    #[error("the driver set up {0} queues, the device needs {1}")]
    QueueCount(usize, usize),
    #[error("queue {0} is not ready or lies outside guest memory")]
    InvalidQueue(usize),
    #[error("the device is already active")]
    AlreadyActive,
    #[error("the device's backend failed: {0}")]
    Backend(String),
}

/// A virtio device, independent of its transport.
pub trait VirtioDevice: DeviceEvents + Send {
    /// The virtio device id.
    fn device_type(&self) -> u32;
    /// The largest size of each of the device's queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// How many of its queues the driver sets up with the features it accepted (all of
    /// them, unless a device's queues depend on features, as the balloon's do). Only these
    /// must be ready at activation, and only these are handed over.
    fn queue_count(&self) -> usize {
        self.queue_max_sizes().len()
    }
    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// Records the features the driver accepted (already masked by what was offered).
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Offered once, when the transport is made, the eventfds the guest's notifications of
    /// each queue arrive on. A device whose queues another process serves (vhost-user) keeps
    /// copies for its backend and returns true: the event loop then leaves them alone and
    /// [`DeviceEvents::process_queue`] is never called. Others return false.
    fn set_queue_notifiers(&mut self, _notifiers: &[EventFd]) -> io::Result<bool> {
        Ok(false)
    }
    /// Starts the device with the driver's queues.
    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;
    /// Stops the device; the driver will set it up again.
    fn reset(&mut self);
    /// The device as its own type, for operations beyond virtio (swapping a disk).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// The event glue: what a device does when the guest notifies one of its queues, and the
/// descriptors it watches on the host side (sockets, a tap, timers). Kept apart from
/// [`VirtioDevice`] so each device implements it in its own `event_handler.rs`. The queue
/// notifications themselves are registered by [`event_handler::VirtioEvents`].
pub trait DeviceEvents {
    /// The guest notified `queue` (only once the device is active): process it.
    fn process_queue(&mut self, queue: usize);

    /// The device's host side as an event source of its own, taken once before the guest
    /// runs. It is apart from the queue notifications so that host traffic does not hold the
    /// transport, which every vCPU register access locks.
    fn host_events(&mut self) -> Option<Box<dyn Subscriber>> {
        None
    }
}

/// Copies the bytes of `config` at `offset` into `data`; bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let len = available.len().min(data.len());
        data[..len].copy_from_slice(&available[..len]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_clamped_to_the_config_space() {
        let config = [1u8, 2, 3, 4];
        let mut data = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut data);
        assert_eq!(data, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut data);
        assert_eq!(data, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut data);
        assert_eq!(data, [0; 4]);
    }
}
