//! Counters of the vsock device, shared with the control socket.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a packet from the guest (or a host connection) was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The chain is shorter than a header, has device-writable parts or cannot be read.
    MalformedChain,
    /// `len` is larger than the chain carries or than [`super::MAX_PAYLOAD`].
    BadLength,
    /// Not a stream packet.
    BadType,
    /// The source is not the guest's CID, or the destination not the host's.
    BadCid,
    UnknownOp,
    /// A packet for a connection that does not exist.
    UnknownConnection,
    /// Data or a response before the connection was established.
    NotEstablished,
    /// The guest sent more than its credit allowed and the host socket could not take it.
    CreditOverflow,
    /// A control packet could not be queued because the guest takes no rx buffers.
    QueueFull,
    /// Too many connections at once.
    TooManyConnections,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        DropReason::MalformedChain,
        DropReason::BadLength,
        DropReason::BadType,
        DropReason::BadCid,
        DropReason::UnknownOp,
        DropReason::UnknownConnection,
        DropReason::NotEstablished,
        DropReason::CreditOverflow,
        DropReason::QueueFull,
        DropReason::TooManyConnections,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::MalformedChain => "malformed_chain",
            DropReason::BadLength => "bad_length",
            DropReason::BadType => "bad_type",
            DropReason::BadCid => "bad_cid",
            DropReason::UnknownOp => "unknown_op",
            DropReason::UnknownConnection => "unknown_connection",
            DropReason::NotEstablished => "not_established",
            DropReason::CreditOverflow => "credit_overflow",
            DropReason::QueueFull => "queue_full",
            DropReason::TooManyConnections => "too_many_connections",
        }
    }
}

/// Device counters; all monotonic except `connections_active`.
#[derive(Debug, Default)]
pub struct VsockMetrics {
    pub host_connections: AtomicU64,
    pub guest_connections: AtomicU64,
    pub connections_active: AtomicU64,
    pub connect_timeouts: AtomicU64,
    pub connect_refused: AtomicU64,
    pub bytes_to_guest: AtomicU64,
    pub bytes_to_host: AtomicU64,
    pub packets_from_guest: AtomicU64,
    pub packets_to_guest: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
}

impl VsockMetrics {
    pub fn count_drop(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|&r| self.dropped(r)).sum()
    }

    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
