//! The virtio-net device: features, the configuration space (MAC, link status) and
//! activation.

use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::event_handler::NetHostEvents;
use super::handler::NetQueueHandler;
use super::metrics::NetMetrics;
use super::tap::{Tap, TapError};
use super::{
    MacAddress, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP, VIRTIO_RING_F_EVENT_IDX,
};
use crate::config::{NetConfig, TapSource};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, QUEUE_MAX_SIZE, TYPE_NET,
    VIRTIO_F_VERSION_1,
};

/// Errors creating a virtio-net device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create the device's eventfd")]
    EventFd(#[source] std::io::Error),
}

const QUEUE_SIZES: [u16; 2] = [QUEUE_MAX_SIZE; 2];

/// Everything offered: virtio 1.x, the MAC and link status, checksum and segmentation
/// offloads both ways, mergeable rx buffers, event-index notification suppression. No
/// control queue, so no multiqueue and no runtime offload changes.
pub const AVAILABLE_FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_STATUS
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_GUEST_UFO
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6
    | VIRTIO_NET_F_HOST_UFO
    | VIRTIO_NET_F_MRG_RXBUF
    | VIRTIO_RING_F_EVENT_IDX;

/// The running queues and the memory they live in.
pub(super) struct ActiveQueues {
    pub handler: NetQueueHandler<Arc<dyn VirtioInterrupt>>,
    pub memory: Arc<GuestMemoryMmap>,
}

/// What the queue notifications and the tap's events share.
pub struct NetCore {
    pub(super) tap: Tap,
    pub(super) active: Option<ActiveQueues>,
    /// Written when a pass stopped at its frame budget: the host events come back for the
    /// rest after the loop's other events.
    pub(super) again: EventFd,
}

impl NetCore {
    /// Moves the tap's frames into the guest's rx buffers while both last.
    pub(super) fn receive(&mut self) {
        if let Some(active) = self.active.as_mut() {
            active.handler.process_rx(&active.memory, &mut self.tap);
        }
        self.come_back_if_unfinished();
    }

    /// Sends the guest's queued frames to the tap.
    pub(super) fn transmit(&mut self) {
        if let Some(active) = self.active.as_mut() {
            active.handler.process_tx(&active.memory, &mut self.tap);
        }
        self.come_back_if_unfinished();
    }

    fn come_back_if_unfinished(&mut self) {
        if let Some(active) = self.active.as_mut() {
            if active.handler.take_unfinished() {
                // Writing a valid eventfd fails only when its counter is full, and then it
                // is readable anyway.
                let _ = self.again.write(1);
            }
        }
    }
}

pub(super) fn lock(core: &Mutex<NetCore>) -> MutexGuard<'_, NetCore> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

/// The configuration space (virtio 1.2, 5.1.4): mac, status; max_virtqueue_pairs and mtu
/// follow but are not offered.
fn config_space(mac: MacAddress) -> [u8; 8] {
    let mut config = [0u8; 8];
    config[..6].copy_from_slice(&mac);
    config[6..].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
    config
}

pub struct NetDevice {
    pub(super) core: Arc<Mutex<NetCore>>,
    /// The tap's side, until the event loop takes it.
    pub(super) host_events: Option<NetHostEvents>,
    config_space: [u8; 8],
    acked_features: u64,
    metrics: Arc<NetMetrics>,
}

impl NetDevice {
    /// Opens or adopts the tap `config` names.
    pub fn new(config: &NetConfig) -> Result<Self, NetError> {
        let tap = match &config.tap {
            TapSource::Name(name) => Tap::open(name)?,
            TapSource::Inherited(fd) => Tap::from_inherited(*fd)?,
        };
        Self::with_tap(tap, config.mac)
    }

    /// A device on a tap already set up.
    pub fn with_tap(tap: Tap, mac: MacAddress) -> Result<Self, NetError> {
        let again = EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd)?;
        let core = Arc::new(Mutex::new(NetCore {
            tap,
            active: None,
            again,
        }));
        Ok(NetDevice {
            host_events: Some(NetHostEvents::new(core.clone())),
            core,
            config_space: config_space(mac),
            acked_features: 0,
            metrics: Arc::default(),
        })
    }

    /// The device's counters, for the control socket.
    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }
}

impl VirtioDevice for NetDevice {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAILABLE_FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & AVAILABLE_FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The MAC is writable only with VIRTIO_NET_F_CTRL_MAC_ADDR, which is not offered.
    }

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let [rx, tx]: [Queue; 2] = queues
            .try_into()
            .map_err(|q: Vec<Queue>| ActivateError::QueueCount(q.len(), QUEUE_SIZES.len()))?;
        let mut core = lock(&self.core);
        if core.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        // If the tap refuses, it keeps sending plain frames, which every driver takes.
        let _ = core.tap.set_offloads(self.acked_features);
        let features = self.acked_features;
        core.active = Some(ActiveQueues {
            handler: NetQueueHandler::new(rx, tx, interrupt, features, self.metrics.clone()),
            memory,
        });
        // Frames that came before the driver did wait in the tap (their edge is gone).
        core.receive();
        Ok(())
    }

    fn reset(&mut self) {
        let mut core = lock(&self.core);
        core.active = None;
        let _ = core.tap.set_offloads(0);
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
    fn config_space_holds_the_mac_then_link_up() {
        let config = config_space([0x02, 1, 2, 3, 4, 5]);
        let mut mac = [0u8; 6];
        read_config_bytes(&config, 0, &mut mac);
        assert_eq!(mac, [0x02, 1, 2, 3, 4, 5]);
        let mut status = [0u8; 2];
        read_config_bytes(&config, 6, &mut status);
        assert_eq!(u16::from_le_bytes(status), VIRTIO_NET_S_LINK_UP);
    }

    #[test]
    fn offered_features_are_virtio_1_with_offloads_and_mergeable_buffers() {
        for bit in [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MAC,
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_UFO,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_UFO,
            VIRTIO_NET_F_MRG_RXBUF,
        ] {
            assert_ne!(AVAILABLE_FEATURES & bit, 0, "bit {bit:#x}");
        }
        // No control queue: nothing that needs one.
        assert_eq!(AVAILABLE_FEATURES & (1 << 17), 0);
    }
}
