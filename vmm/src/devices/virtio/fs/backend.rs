//! The vhost-user session with a virtio-fs backend (virtiofsd): connecting, negotiating
//! features, and handing it guest memory and the rings when the driver starts the device.
//! The backend processes the queues itself; this side only describes them.
//!
//! The backend is another process and may die or stop answering at any time. Every request
//! runs under a [`Deadline`]: a backend silent for [`BACKEND_TIMEOUT`] gets its socket shut
//! down, which fails the request instead of blocking a vCPU (the `vhost` crate retries reads
//! that time out, so a socket timeout alone would not do).

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::virtio::VIRTIO_F_VERSION_1;

/// How long the backend may take to answer one group of requests.
pub const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Ring features the driver may negotiate; the backend, which walks the rings, must offer
/// them too. Everything else (notably `VHOST_USER_F_PROTOCOL_FEATURES`, a vhost-user bit
/// that shares the feature word) stays between this side and the backend.
const RING_INDIRECT_DESC: u64 = 1 << 28;
const RING_EVENT_IDX: u64 = 1 << 29;
const GUEST_VISIBLE_FEATURES: u64 = VIRTIO_F_VERSION_1 | RING_INDIRECT_DESC | RING_EVENT_IDX;

/// Protocol features this side uses: acknowledged requests, so a refused memory table or ring
/// is an error here rather than a silent stall.
const WANTED_PROTOCOL_FEATURES: VhostUserProtocolFeatures = VhostUserProtocolFeatures::REPLY_ACK;

/// Errors talking to the backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot connect to the vhost-user socket {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("the backend failed to {0}")]
    Request(&'static str, #[source] vhost::Error),
    #[error("the backend does not offer VIRTIO_F_VERSION_1 (features {0:#x})")]
    NotVersion1(u64),
    #[error("guest memory region at {0:#x} is not shareable (no memfd)")]
    PrivateMemory(u64),
    #[error("ring {0} lies outside guest memory")]
    RingOutsideMemory(usize),
    #[error("cannot start the backend watchdog")]
    Watchdog(#[source] std::io::Error),
}

/// Features offered to the driver: the ring features both sides have.
pub fn guest_features(backend_features: u64) -> Result<u64, BackendError> {
    if backend_features & VIRTIO_F_VERSION_1 == 0 {
        return Err(BackendError::NotVersion1(backend_features));
    }
    Ok(backend_features & GUEST_VISIBLE_FEATURES)
}

/// Features set on the backend when the driver starts the device: what the driver acked
/// (of what was offered), plus the protocol-features bit if the backend has it.
pub fn backend_features(acked_by_driver: u64, backend_features: u64) -> u64 {
    let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    (acked_by_driver & backend_features & GUEST_VISIBLE_FEATURES) | (backend_features & protocol)
}

/// Protocol features to enable: the wanted ones the backend offers.
pub fn protocol_features(offered: VhostUserProtocolFeatures) -> VhostUserProtocolFeatures {
    offered & WANTED_PROTOCOL_FEATURES
}

/// Shuts a socket down unless dropped first: bounds a group of requests in time.
struct Deadline {
    done: Option<mpsc::Sender<()>>,
    watchdog: Option<JoinHandle<()>>,
}

impl Deadline {
    fn start(socket: &UnixStream, limit: Duration) -> Result<Self, BackendError> {
        let socket = socket.try_clone().map_err(BackendError::Watchdog)?;
        let (done, finished) = mpsc::channel::<()>();
        let watchdog = std::thread::Builder::new()
            .name("fs-deadline".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(limit) {
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                }
            })
            .map_err(BackendError::Watchdog)?;
        Ok(Deadline {
            done: Some(done),
            watchdog: Some(watchdog),
        })
    }
}

impl Drop for Deadline {
    fn drop(&mut self) {
        // Dropping the sender wakes the watchdog at once, whatever it was waiting for.
        self.done.take();
        if let Some(watchdog) = self.watchdog.take() {
            let _ = watchdog.join();
        }
    }
}

/// One ring as the backend needs it.
pub struct RingSetup<'a> {
    pub queue: &'a Queue,
    pub kick: &'a EventFd,
    pub call: &'a EventFd,
}

/// A connected, negotiated vhost-user-fs backend.
pub struct FsBackend {
    frontend: Frontend,
    /// Kept for the deadline watchdog and hang-up detection.
    socket: UnixStream,
    features: u64,
    protocol_features: VhostUserProtocolFeatures,
    timeout: Duration,
}

fn request<T>(what: &'static str, result: vhost::Result<T>) -> Result<T, BackendError> {
    result.map_err(|e| BackendError::Request(what, e))
}

impl FsBackend {
    /// Connects to the backend at `path` and negotiates what can be before the driver runs.
    pub fn connect(path: &Path, queues: usize, timeout: Duration) -> Result<Self, BackendError> {
        let socket = UnixStream::connect(path)
            .map_err(|e| BackendError::Connect(path.display().to_string(), e))?;
        let watched = socket
            .try_clone()
            .map_err(|e| BackendError::Connect(path.display().to_string(), e))?;
        let _deadline = Deadline::start(&socket, timeout)?;
        let mut frontend = Frontend::from_stream(watched, queues as u64);
        request("take ownership", frontend.set_owner())?;
        let features = request("report its features", frontend.get_features())?;
        guest_features(features)?;
        let mut acked_protocol = VhostUserProtocolFeatures::empty();
        if features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            let offered = request(
                "report its protocol features",
                frontend.get_protocol_features(),
            )?;
            acked_protocol = protocol_features(offered);
            request(
                "accept protocol features",
                frontend.set_protocol_features(acked_protocol),
            )?;
        }
        Ok(FsBackend {
            frontend,
            socket,
            features,
            protocol_features: acked_protocol,
            timeout,
        })
    }

    /// The backend's virtio feature bits.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// The socket, to watch for the backend hanging up.
    pub fn socket(&self) -> &UnixStream {
        &self.socket
    }

    /// Hands the backend the driver's features, guest memory and every ring, then enables
    /// the rings.
    pub fn start(
        &mut self,
        acked_by_driver: u64,
        memory: &GuestMemoryMmap,
        rings: &[RingSetup<'_>],
    ) -> Result<(), BackendError> {
        let regions = memory
            .iter()
            .map(|region| {
                VhostUserMemoryRegionInfo::from_guest_region(region)
                    .map_err(|_| BackendError::PrivateMemory(region.start_addr().raw_value()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let _deadline = Deadline::start(&self.socket, self.timeout)?;
        let frontend = &mut self.frontend;
        request(
            "accept the driver's features",
            frontend.set_features(backend_features(acked_by_driver, self.features)),
        )?;
        request("map guest memory", frontend.set_mem_table(&regions))?;
        for (index, ring) in rings.iter().enumerate() {
            let config =
                ring_config(memory, ring.queue).ok_or(BackendError::RingOutsideMemory(index))?;
            request(
                "size a ring",
                frontend.set_vring_num(index, ring.queue.size()),
            )?;
            request("place a ring", frontend.set_vring_addr(index, &config))?;
            request(
                "set a ring's start",
                frontend.set_vring_base(index, ring.queue.next_avail()),
            )?;
            request(
                "take a ring's interrupt",
                frontend.set_vring_call(index, ring.call),
            )?;
            request(
                "take a ring's notifier",
                frontend.set_vring_kick(index, ring.kick),
            )?;
        }
        if self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
            for index in 0..rings.len() {
                request("enable a ring", frontend.set_vring_enable(index, true))?;
            }
        }
        Ok(())
    }

    /// Stops the rings (the driver reset the device); the backend keeps its session.
    pub fn stop(&mut self, rings: usize) -> Result<(), BackendError> {
        let _deadline = Deadline::start(&self.socket, self.timeout)?;
        for index in 0..rings {
            if self.features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0 {
                request(
                    "disable a ring",
                    self.frontend.set_vring_enable(index, false),
                )?;
            }
            // GET_VRING_BASE is what stops a ring in vhost-user.
            request("stop a ring", self.frontend.get_vring_base(index))?;
        }
        Ok(())
    }

    /// The protocol features in use.
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol_features
    }
}

/// A ring's addresses as this process sees them (vhost-user rings are described in the
/// frontend's address space, which the backend translates through the memory table).
fn ring_config(memory: &GuestMemoryMmap, queue: &Queue) -> Option<VringConfigData> {
    let host = |addr: u64| {
        memory
            .get_host_address(GuestAddress(addr))
            .ok()
            .map(|p| p as u64)
    };
    Some(VringConfigData {
        queue_max_size: queue.max_size(),
        queue_size: queue.size(),
        flags: 0,
        desc_table_addr: host(queue.desc_table())?,
        used_ring_addr: host(queue.used_ring())?,
        avail_ring_addr: host(queue.avail_ring())?,
        log_addr: None,
    })
}
