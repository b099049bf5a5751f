//! virtio-vsock in user space, with the hybrid unix-socket mapping Firecracker and Cloud
//! Hypervisor use (no vhost-vsock on the host).
//!
//! - Host to guest: a host client connects to the VM's unix socket `PATH` and sends
//!   `CONNECT <port>\n`; the device sends the guest a REQUEST for that port and, on the
//!   guest's RESPONSE, answers `OK <host_port>\n` (a local port the device assigned) and then
//!   proxies bytes both ways. A guest RST (nothing listening), or no answer within
//!   [`muxer::CONNECT_TIMEOUT`], closes the client connection.
//! - Guest to host: a guest connection to CID 2 port `P` makes the device connect to the unix
//!   socket `PATH_P`; if that fails, the guest gets an RST.
//!
//! Files: [`packet`] (the 44-byte header, pure), [`connection`] (one stream's state machine
//! and credit accounting, generic over the host stream), [`muxer`] (the unix sockets),
//! [`handler`] (the rx/tx queue processing, generic over the interrupt and the backend),
//! [`device`] (configuration and activation) and [`event_handler`] (queue events, and the
//! host sockets and timeouts as an event source of their own). Every packet the guest sends
//! is hostile until checked: malformed ones are dropped and counted in [`VsockMetrics`], and
//! every host-side buffer is bounded.

pub mod connection;
pub mod device;
pub mod event_handler;
pub mod handler;
pub mod metrics;
pub mod muxer;
pub mod packet;

pub use device::{VsockDevice, VsockError};
pub use metrics::VsockMetrics;

/// The host's CID, the only destination the guest may address.
pub const HOST_CID: u64 = 2;
/// The guest CID used when `--vsock` does not set one.
pub const DEFAULT_GUEST_CID: u64 = 3;
/// The largest payload of one packet, either way (Linux's `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Bytes of guest data the device buffers per connection when the host socket is slow; also
/// the receive buffer it advertises to the guest (its credit).
pub const CONNECTION_BUFFER: u32 = 256 * 1024;

/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
pub const EVENT_QUEUE: usize = 2;
