//! virtio-fs through vhost-user: the guest mounts a host directory (`mount -t virtiofs TAG
//! DIR`) that a separate backend process serves, one virtiofsd per share, as Cloud
//! Hypervisor and Kata do. The VMM owns only the device's shell: the configuration space,
//! feature negotiation, and the description of guest memory and the rings it hands the
//! backend, which then reads and answers the FUSE requests in the rings itself. Guest
//! memory must be a shared memfd for that ([`crate::vstate::memory::create_shared_guest_memory`]),
//! chosen only for VMs with a virtio-fs device.
//!
//! Files: [`backend`] (the vhost-user session: negotiation, memory table, rings, all under a
//! deadline), [`device`] (configuration space and activation) and [`event_handler`] (the
//! relay of the backend's interrupts and the watch on its socket). A backend that dies or
//! stops answering fails the device (the driver sees `DEVICE_NEEDS_RESET` at activation, or
//! requests that never complete afterwards); it never blocks or panics the VMM.
//!
//! Not done yet: requests the backend had taken when it died are never completed, so the
//! guest waits on them (a `sync` of the share, as at reboot, waits forever; the VMM still
//! stops on request). Completing them with `ENOTCONN` from the VMM needs to know which ring
//! entries the backend had taken, that is, vhost-user's inflight tracking
//! (`INFLIGHT_SHMFD`); reconnecting to a restarted backend needs the same.

pub mod backend;
pub mod device;
pub mod event_handler;
#[cfg(test)]
mod tests;

pub use backend::BackendError;
pub use device::{FsDevice, FsError};

/// Request queues (Linux uses the first only; more would add nothing on one or two vCPUs).
pub const REQUEST_QUEUES: u32 = 1;
/// The high-priority queue (FUSE interrupts and forgets), then the request queues.
pub const NUM_QUEUES: usize = 1 + REQUEST_QUEUES as usize;
