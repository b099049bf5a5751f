//! Counters of one virtio-net device, shared with the control socket.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why a frame or a chain was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetDropReason {
    /// A tx chain with device-writable parts, outside guest memory, looping or cut short.
    TxMalformedChain,
    /// A tx frame longer than [`super::MAX_FRAME_LEN`] or shorter than its header.
    TxBadLength,
    /// The tap refused a tx frame (a bad offload header, or its queue is full).
    TxBackend,
    /// An rx chain with device-readable parts, outside guest memory, looping or cut short
    /// (returned to the guest empty).
    RxMalformedChain,
    /// A frame from the tap larger than the guest's buffers could ever hold.
    RxTooLarge,
    /// Reading the tap failed with something other than "nothing to read".
    RxBackend,
}

impl NetDropReason {
    pub const ALL: [NetDropReason; 6] = [
        NetDropReason::TxMalformedChain,
        NetDropReason::TxBadLength,
        NetDropReason::TxBackend,
        NetDropReason::RxMalformedChain,
        NetDropReason::RxTooLarge,
        NetDropReason::RxBackend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NetDropReason::TxMalformedChain => "tx_malformed_chain",
            NetDropReason::TxBadLength => "tx_bad_length",
            NetDropReason::TxBackend => "tx_backend",
            NetDropReason::RxMalformedChain => "rx_malformed_chain",
            NetDropReason::RxTooLarge => "rx_too_large",
            NetDropReason::RxBackend => "rx_backend",
        }
    }
}

/// Device counters, all monotonic.
#[derive(Debug, Default)]
pub struct NetMetrics {
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Times the tap was left unread because the guest had no rx buffers.
    pub rx_no_buffers: AtomicU64,
    dropped: [AtomicU64; NetDropReason::ALL.len()],
}

impl NetMetrics {
    pub fn count_drop(&self, reason: NetDropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: NetDropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    pub fn dropped_total(&self) -> u64 {
        NetDropReason::ALL.iter().map(|&r| self.dropped(r)).sum()
    }

    pub fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
