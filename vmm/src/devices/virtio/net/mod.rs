//! virtio-net on a tap (virtio 1.2, 5.1): one rx and one tx queue, no control queue.
//!
//! The guest's frames carry the 12-byte `virtio_net_hdr_v1` in front; the tap is opened with
//! `IFF_VNET_HDR` and a header size of 12, so the header goes through to the kernel as is
//! (checksum and segmentation offloads included) and comes back the same way. Each frame
//! crosses one fixed scratch buffer of [`MAX_FRAME_LEN`] bytes: nothing is allocated per
//! frame.
//!
//! Files: [`tap`] (opening or adopting the tap, its offloads), [`handler`] (the rx/tx queue
//! processing, a pure type generic over the interrupt and the backend, so tests and the
//! benchmark drive it on plain memory), [`metrics`] (counters, drops by reason), [`device`]
//! (features, the configuration space, activation) and [`event_handler`] (queue
//! notifications, and the tap as an event source of its own).
//!
//! Flow control: the tap is watched edge-triggered. A readable tap is read until it is empty
//! or the guest has no rx buffers left; in the second case the frame already read waits in
//! the scratch buffer and nothing more is read until the guest posts buffers (its rx queue
//! notification resumes reading). So a guest that never reads rx costs one frame of host
//! memory; the kernel drops the rest at the tap's queue.
//!
//! Every chain the guest offers is hostile until checked: a chain with descriptors of the
//! wrong direction, outside guest memory, looping or cut short, and a tx frame longer than
//! [`MAX_FRAME_LEN`], is dropped and counted in [`NetMetrics`].

pub mod device;
pub mod event_handler;
pub mod handler;
pub mod metrics;
pub mod tap;

pub use device::{NetDevice, NetError};
pub use handler::{NetBackend, NetQueueHandler, NetRateLimit, Unlimited, FRAMES_PER_CALL};
pub use metrics::{NetDropReason, NetMetrics};
pub use tap::{Tap, TapError};

/// Size of `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const NET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame either way, header included: a 64 KiB GSO frame with its Ethernet
/// and VLAN headers (Linux's own limit for a virtio-net buffer: 65550 bytes of frame).
pub const MAX_FRAME_LEN: usize = NET_HDR_LEN + 65550;
/// The MTU advertised with `VIRTIO_NET_F_MTU`.
pub const DEFAULT_MTU: u16 = 1500;

/// Queue indices.
pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;

/// Feature bits (virtio 1.2, 5.1.3).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_GUEST_UFO: u64 = 1 << 10;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_NET_F_HOST_UFO: u64 = 1 << 14;
/// The ring's event-index notification suppression (virtio 1.2, 2.7.10), a ring feature.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
pub const VIRTIO_NET_F_STATUS: u64 = 1 << 16;

/// `status` in the configuration space: the link is up.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;

/// A MAC address.
pub type MacAddress = [u8; 6];
