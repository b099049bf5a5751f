//! The virtio-fs device: its configuration space (tag and request-queue count), the
//! features it offers, and activation, which hands the rings to the vhost-user backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::backend::{guest_features, BackendError, FsBackend, RingSetup, BACKEND_TIMEOUT};
use super::event_handler::FsHostEvents;
use super::{NUM_QUEUES, REQUEST_QUEUES};
use crate::config::{FsConfig, FS_TAG_MAX_LEN};
use crate::devices::virtio::{
    read_config_bytes, ActivateError, VirtioDevice, VirtioInterrupt, TYPE_FS,
};

/// Errors creating a virtio-fs device.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("fs {0:?}: the vhost-user backend")]
    Backend(String, #[source] BackendError),
    #[error("fs {0:?}: cannot create an eventfd")]
    EventFd(String, #[source] std::io::Error),
}

/// Size of the configuration space: the tag, then the number of request queues.
pub const CONFIG_SPACE_LEN: usize = FS_TAG_MAX_LEN + 4;

/// The configuration space: `tag` zero-padded to 36 bytes (not terminated when it fills
/// them), then `num_request_queues`, little-endian. The tag was checked when configured.
pub fn config_space(tag: &str, request_queues: u32) -> [u8; CONFIG_SPACE_LEN] {
    let mut space = [0u8; CONFIG_SPACE_LEN];
    let len = tag.len().min(FS_TAG_MAX_LEN);
    space[..len].copy_from_slice(&tag.as_bytes()[..len]);
    space[FS_TAG_MAX_LEN..].copy_from_slice(&request_queues.to_le_bytes());
    space
}

/// What the relay of the backend's interrupts and the device share.
pub(super) struct FsShared {
    /// Set at activation, cleared at reset.
    pub interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// The backend died or misbehaved: the device stays failed until the VM ends.
    pub broken: AtomicBool,
    pub tag: String,
}

impl FsShared {
    pub(super) fn interrupt(&self) -> MutexGuard<'_, Option<Arc<dyn VirtioInterrupt>>> {
        self.interrupt.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn mark_broken(&self, why: &dyn std::fmt::Display) {
        if !self.broken.swap(true, Ordering::SeqCst) {
            // The one line the VMM prints for a device failing at run time: the guest only
            // sees requests that never complete.
            eprintln!("vpod-vmm: fs {:?}: device failed: {why}", self.tag);
        }
    }
}

pub struct FsDevice {
    backend: FsBackend,
    config_space: [u8; CONFIG_SPACE_LEN],
    queue_sizes: [u16; NUM_QUEUES],
    avail_features: u64,
    acked_features: u64,
    /// The transport's queue notifiers, handed to the backend as its kick descriptors.
    kicks: Vec<EventFd>,
    /// The backend's interrupt descriptors, relayed to the guest by the host events.
    calls: Arc<Vec<EventFd>>,
    pub(super) shared: Arc<FsShared>,
    pub(super) host_events: Option<FsHostEvents>,
    active: bool,
}

impl FsDevice {
    /// Connects to the share's backend and negotiates with it.
    pub fn new(config: &FsConfig) -> Result<Self, FsError> {
        Self::with_timeout(config, BACKEND_TIMEOUT)
    }

    pub(super) fn with_timeout(config: &FsConfig, timeout: Duration) -> Result<Self, FsError> {
        let backend = FsBackend::connect(&config.socket, NUM_QUEUES, timeout)
            .map_err(|e| FsError::Backend(config.tag.clone(), e))?;
        let avail_features = guest_features(backend.features())
            .map_err(|e| FsError::Backend(config.tag.clone(), e))?;
        let calls = (0..NUM_QUEUES)
            .map(|_| {
                EventFd::new(EFD_NONBLOCK).map_err(|e| FsError::EventFd(config.tag.clone(), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let calls = Arc::new(calls);
        let hang_up = backend
            .socket()
            .try_clone()
            .map_err(|e| FsError::EventFd(config.tag.clone(), e))?;
        let shared = Arc::new(FsShared {
            interrupt: Mutex::new(None),
            broken: AtomicBool::new(false),
            tag: config.tag.clone(),
        });
        Ok(FsDevice {
            backend,
            config_space: config_space(&config.tag, REQUEST_QUEUES),
            queue_sizes: [config.queue_size; NUM_QUEUES],
            avail_features,
            acked_features: 0,
            kicks: Vec::new(),
            host_events: Some(FsHostEvents::new(shared.clone(), calls.clone(), hang_up)),
            calls,
            shared,
            active: false,
        })
    }

    /// Whether the backend failed.
    pub fn is_broken(&self) -> bool {
        self.shared.broken.load(Ordering::SeqCst)
    }

    fn start_backend(
        &mut self,
        memory: &GuestMemoryMmap,
        queues: &[Queue],
    ) -> Result<(), BackendError> {
        let rings: Vec<RingSetup<'_>> = queues
            .iter()
            .zip(self.kicks.iter())
            .zip(self.calls.iter())
            .map(|((queue, kick), call)| RingSetup { queue, kick, call })
            .collect();
        self.backend.start(self.acked_features, memory, &rings)
    }
}

impl VirtioDevice for FsDevice {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
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

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn set_queue_notifiers(&mut self, notifiers: &[EventFd]) -> std::io::Result<bool> {
        self.kicks = notifiers
            .iter()
            .map(EventFd::try_clone)
            .collect::<Result<_, _>>()?;
        Ok(true)
    }

    fn activate(
        &mut self,
        memory: Arc<GuestMemoryMmap>,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if queues.len() != NUM_QUEUES {
            return Err(ActivateError::QueueCount(queues.len(), NUM_QUEUES));
        }
        if self.active {
            return Err(ActivateError::AlreadyActive);
        }
        if self.is_broken() || self.kicks.len() != NUM_QUEUES {
            return Err(ActivateError::Backend("the backend already failed".into()));
        }
        // The relay needs the interrupt before the backend can first signal.
        *self.shared.interrupt() = Some(interrupt);
        if let Err(error) = self.start_backend(&memory, &queues) {
            self.shared.mark_broken(&error);
            *self.shared.interrupt() = None;
            return Err(ActivateError::Backend(error.to_string()));
        }
        self.active = true;
        Ok(())
    }

    fn reset(&mut self) {
        if self.active && !self.is_broken() {
            if let Err(error) = self.backend.stop(NUM_QUEUES) {
                self.shared.mark_broken(&error);
            }
        }
        *self.shared.interrupt() = None;
        self.active = false;
        self.acked_features = 0;
    }

    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
