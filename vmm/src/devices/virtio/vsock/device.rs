//! The virtio-vsock device: the guest CID in the configuration space and activation.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::event_handler::VsockHostEvents;
use super::handler::VsockQueueHandler;
use super::metrics::VsockMetrics;
use super::muxer::{MuxerError, VsockMuxer};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, QUEUE_MAX_SIZE, TYPE_VSOCK,
    VIRTIO_F_VERSION_1,
};
use crate::event_loop::DeadlineTimer;

/// Errors creating the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("guest CID {0} is reserved (use 3 or more)")]
    ReservedCid(u64),
    #[error(transparent)]
    Muxer(#[from] MuxerError),
    #[error("cannot create the vsock device's timer")]
    Timer(#[source] std::io::Error),
}

const QUEUE_SIZES: [u16; 3] = [QUEUE_MAX_SIZE; 3];

/// The running queues and the memory they live in.
pub(super) struct ActiveQueues {
    pub handler: VsockQueueHandler<Arc<dyn VirtioInterrupt>>,
    pub memory: Arc<GuestMemoryMmap>,
}

/// Everything the queue events and the host events share.
pub struct VsockCore {
    pub(super) muxer: VsockMuxer,
    pub(super) active: Option<ActiveQueues>,
}

impl VsockCore {
    /// Moves whatever the backend has into the guest's rx buffers.
    pub(super) fn deliver(&mut self) {
        if let Some(active) = self.active.as_mut() {
            active.handler.process_rx(&active.memory, &mut self.muxer);
        }
    }
}

pub(super) fn lock(core: &Mutex<VsockCore>) -> MutexGuard<'_, VsockCore> {
    core.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct VsockDevice {
    pub(super) core: Arc<Mutex<VsockCore>>,
    /// The host side, until the event loop takes it.
    pub(super) host_events: Option<VsockHostEvents>,
    guest_cid: u64,
    metrics: Arc<VsockMetrics>,
    acked_features: u64,
}

impl VsockDevice {
    /// Listens on `uds_path` for host clients; the guest gets `guest_cid`.
    pub fn new(uds_path: &Path, guest_cid: u64) -> Result<Self, VsockError> {
        if guest_cid < 3 || guest_cid > u64::from(u32::MAX) {
            return Err(VsockError::ReservedCid(guest_cid));
        }
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = VsockMuxer::new(uds_path, guest_cid, metrics.clone())?;
        let core = Arc::new(Mutex::new(VsockCore {
            muxer,
            active: None,
        }));
        let timer = DeadlineTimer::new().map_err(VsockError::Timer)?;
        Ok(VsockDevice {
            host_events: Some(VsockHostEvents::new(core.clone(), timer)),
            core,
            guest_cid,
            metrics,
            acked_features: 0,
        })
    }

    /// The device's counters, for the control socket.
    pub fn metrics(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }
}

/// The socket path a guest connection to host `port` reaches.
pub fn host_port_path(uds_path: &Path, port: u32) -> PathBuf {
    PathBuf::from(format!("{}_{port}", uds_path.display()))
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & VIRTIO_F_VERSION_1;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let queues: [Queue; 3] = queues
            .try_into()
            .map_err(|q: Vec<Queue>| ActivateError::QueueCount(q.len(), QUEUE_SIZES.len()))?;
        let mut core = lock(&self.core);
        if core.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        core.active = Some(ActiveQueues {
            handler: VsockQueueHandler::new(
                queues,
                interrupt,
                self.guest_cid,
                self.metrics.clone(),
            ),
            memory,
        });
        Ok(())
    }

    fn reset(&mut self) {
        let mut core = lock(&self.core);
        core.active = None;
        core.muxer.reset_all();
        self.acked_features = 0;
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
