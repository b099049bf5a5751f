//! The virtio-net queue handler: sends the guest's tx frames to the backend, fills the
//! guest's rx buffers with the backend's frames (several buffers per frame with mergeable
//! rx buffers). A pure type, generic over how the guest is signalled and over the rate
//! limit, and given the backend on each call, so unit tests, property tests and the
//! benchmark drive it on plain memory without a tap.
//!
//! Notifications both ways are suppressed as the driver and the ring allow: the guest is
//! signalled only when it asked to be (its `used_event` index with
//! `VIRTIO_RING_F_EVENT_IDX`, else the absence of `VRING_AVAIL_F_NO_INTERRUPT`), and it is
//! told not to notify tx while the handler drains the tx queue, which is checked once more
//! after notifications are back on, so that no chain queued in between is missed.
//!
//! Each direction has one scratch buffer of [`MAX_FRAME_LEN`] bytes, allocated once: a tx
//! frame is gathered from guest memory into it and written to the backend in one call; an
//! rx frame is read from the backend into it and scattered into guest buffers. The rx one
//! holds the frame that is waiting for guest buffers.

use std::io;
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::metrics::{NetDropReason, NetMetrics};
use super::{
    MAX_FRAME_LEN, NET_HDR_LEN, NUM_BUFFERS_OFFSET, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::virtio::QueueSignal;

/// Most frames one call of [`NetQueueHandler::process_tx`] or
/// [`NetQueueHandler::process_rx`] moves, so that a guest that keeps its tx queue full, or a
/// peer that floods the tap, cannot hold the event loop (and with it the control socket and
/// the termination signals); the caller comes back for the rest
/// ([`NetQueueHandler::take_unfinished`]).
pub const FRAMES_PER_CALL: usize = 256;

/// Where frames go and come from: the tap, or a fake in tests.
pub trait NetBackend {
    /// Reads one frame, `virtio_net_hdr_v1` first, into `buf`; fails with `WouldBlock` when
    /// none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one frame, `virtio_net_hdr_v1` first.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
}

/// The rate-limit hook: the handler asks before each frame. Refusing a tx frame leaves it
/// (and every later one) in the tx queue; refusing an rx frame leaves it in the rx scratch
/// buffer, and the tap unread. Either way the handler stops, so a limiter that refuses must
/// also arrange to call the handler again when it would admit (a timer registered by the
/// device's host events, as vsock's connect timeouts are); none does so yet, and the only
/// limiter is [`Unlimited`].
pub trait NetRateLimit: Send {
    /// Whether a tx frame of `bytes` (header included) may go now.
    fn admit_tx(&mut self, bytes: usize) -> bool;
    /// Whether an rx frame of `bytes` (header included) may go to the guest now.
    fn admit_rx(&mut self, bytes: usize) -> bool;
}

/// No rate limit.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unlimited;

impl NetRateLimit for Unlimited {
    fn admit_tx(&mut self, _bytes: usize) -> bool {
        true
    }

    fn admit_rx(&mut self, _bytes: usize) -> bool {
        true
    }
}

/// The guest buffers of one rx chain, reused from chain to chain.
#[derive(Debug, Default)]
struct Segments {
    list: Vec<(GuestAddress, u32)>,
    len: usize,
}

impl Segments {
    fn with_capacity(capacity: usize) -> Self {
        Segments {
            list: Vec::with_capacity(capacity),
            len: 0,
        }
    }

    fn clear(&mut self) {
        self.list.clear();
        self.len = 0;
    }

    /// Writes `data` from byte `offset` of the chain on; false if it does not fit or a
    /// buffer is outside guest memory.
    fn write_at(&self, memory: &GuestMemoryMmap, mut offset: usize, mut data: &[u8]) -> bool {
        for &(addr, len) in &self.list {
            if data.is_empty() {
                break;
            }
            let len = len as usize;
            if offset >= len {
                offset -= len;
                continue;
            }
            let take = (len - offset).min(data.len());
            let Some(at) = addr.0.checked_add(offset as u64) else {
                return false;
            };
            if memory.write_slice(&data[..take], GuestAddress(at)).is_err() {
                return false;
            }
            data = &data[take..];
            offset = 0;
        }
        data.is_empty()
    }
}

/// Collects the buffers of an rx chain: all device-writable, all inside guest memory, the
/// chain not cut short. Returns false when the chain is malformed.
fn gather_rx_chain(
    memory: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    segments: &mut Segments,
) -> bool {
    segments.clear();
    let mut ended = false;
    for descriptor in chain {
        let len = descriptor.len();
        if !descriptor.is_write_only()
            || !GuestMemoryBackend::check_range(memory, descriptor.addr(), len as usize)
        {
            return false;
        }
        segments.list.push((descriptor.addr(), len));
        segments.len = segments.len.saturating_add(len as usize);
        ended = !descriptor.has_next();
    }
    // A last descriptor pointing onwards means the chain looped, ran past the queue or could
    // not be read.
    ended
}

/// How one pending rx frame fared.
enum Delivery {
    /// In the guest's buffers.
    Delivered,
    /// Dropped as too large (counted); the chains it took went back to the guest empty.
    Dropped,
    /// Not enough buffers: every chain went back to the avail ring, the frame waits.
    NoBuffers,
}

pub struct NetQueueHandler<S: QueueSignal, L: NetRateLimit = Unlimited> {
    pub rx: Queue,
    pub tx: Queue,
    pub signal: S,
    pub limiter: L,
    /// `VIRTIO_NET_F_MRG_RXBUF` was negotiated: a frame may span several rx chains.
    mergeable: bool,
    /// `VIRTIO_NET_F_GUEST_CSUM` was not negotiated: rx headers carry no flags.
    clear_rx_flags: bool,
    metrics: Arc<NetMetrics>,
    tx_frame: Box<[u8]>,
    rx_frame: Box<[u8]>,
    /// Bytes of `rx_frame` read from the backend and not yet in guest buffers.
    rx_pending: usize,
    /// The rx chains one frame fills: (head, bytes written).
    rx_used: Vec<(u16, u32)>,
    /// Malformed rx chains met while placing one frame, returned empty before it.
    rx_malformed: Vec<u16>,
    segments: Segments,
    first_segments: Segments,
    /// A call stopped at [`FRAMES_PER_CALL`] with work perhaps left.
    unfinished: bool,
}

impl<S: QueueSignal> NetQueueHandler<S, Unlimited> {
    /// A handler for a driver that accepted `features`.
    pub fn new(rx: Queue, tx: Queue, signal: S, features: u64, metrics: Arc<NetMetrics>) -> Self {
        Self::with_limiter(rx, tx, signal, Unlimited, features, metrics)
    }
}

impl<S: QueueSignal, L: NetRateLimit> NetQueueHandler<S, L> {
    pub fn with_limiter(
        mut rx: Queue,
        mut tx: Queue,
        signal: S,
        limiter: L,
        features: u64,
        metrics: Arc<NetMetrics>,
    ) -> Self {
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        let chains = usize::from(rx.size().max(1));
        NetQueueHandler {
            rx,
            tx,
            signal,
            limiter,
            mergeable: features & VIRTIO_NET_F_MRG_RXBUF != 0,
            clear_rx_flags: features & VIRTIO_NET_F_GUEST_CSUM == 0,
            metrics,
            tx_frame: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
            rx_frame: vec![0u8; MAX_FRAME_LEN].into_boxed_slice(),
            rx_pending: 0,
            rx_used: Vec::with_capacity(chains),
            rx_malformed: Vec::with_capacity(chains),
            segments: Segments::with_capacity(chains),
            first_segments: Segments::with_capacity(chains),
            unfinished: false,
        }
    }

    /// Whether a call since the last one of these stopped at [`FRAMES_PER_CALL`]: the
    /// caller should process both queues again soon (after other events).
    pub fn take_unfinished(&mut self) -> bool {
        std::mem::take(&mut self.unfinished)
    }

    /// Whether a frame read from the backend waits for guest buffers.
    pub fn rx_waiting(&self) -> bool {
        self.rx_pending > 0
    }

    /// Gathers one tx chain into the tx scratch buffer: its length, or why it is dropped.
    fn read_tx_chain(
        &mut self,
        memory: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<usize, NetDropReason> {
        let mut len = 0usize;
        let mut ended = false;
        for descriptor in chain {
            if descriptor.is_write_only() {
                return Err(NetDropReason::TxMalformedChain);
            }
            let part = descriptor.len() as usize;
            let end = len
                .checked_add(part)
                .filter(|&end| end <= MAX_FRAME_LEN)
                .ok_or(NetDropReason::TxBadLength)?;
            memory
                .read_slice(&mut self.tx_frame[len..end], descriptor.addr())
                .map_err(|_| NetDropReason::TxMalformedChain)?;
            len = end;
            ended = !descriptor.has_next();
        }
        if !ended {
            return Err(NetDropReason::TxMalformedChain);
        }
        if len <= NET_HDR_LEN {
            return Err(NetDropReason::TxBadLength);
        }
        Ok(len)
    }

    /// Sends every frame the guest queued (until the rate limit refuses one). Returns
    /// whether the guest was signalled.
    pub fn process_tx<B: NetBackend>(&mut self, memory: &GuestMemoryMmap, backend: &mut B) -> bool {
        let mut used_any = false;
        // The guest need not notify while the queue is being drained.
        let _ = self.tx.disable_notification(memory);
        let mut rechecked = false;
        for _ in 0..FRAMES_PER_CALL {
            let Some(chain) = self.tx.pop_descriptor_chain(memory) else {
                // Notifications back on; a chain queued meanwhile is taken now. Once only:
                // an avail index that runs more than a queue ahead pops nothing however
                // often it is read, and must not keep the event loop coming back.
                match self.tx.enable_notification(memory) {
                    Ok(true) if !rechecked => {
                        rechecked = true;
                        let _ = self.tx.disable_notification(memory);
                        continue;
                    }
                    _ => return self.signal_if(memory, used_any, TX_QUEUE),
                }
            };
            rechecked = false;
            let head = chain.head_index();
            match self.read_tx_chain(memory, chain) {
                Ok(len) if !self.limiter.admit_tx(len) => {
                    // Read again when the limiter lets it through.
                    self.tx.go_to_previous_position();
                    let _ = self.tx.enable_notification(memory);
                    return self.signal_if(memory, used_any, TX_QUEUE);
                }
                Ok(len) => match backend.write_frame(&self.tx_frame[..len]) {
                    Ok(()) => {
                        NetMetrics::add(&self.metrics.tx_frames, 1);
                        NetMetrics::add(&self.metrics.tx_bytes, (len - NET_HDR_LEN) as u64);
                    }
                    Err(_) => self.metrics.count_drop(NetDropReason::TxBackend),
                },
                Err(reason) => self.metrics.count_drop(reason),
            }
            match self.tx.add_used(memory, head, 0) {
                Ok(()) => used_any = true,
                Err(virtio_queue::Error::InvalidDescriptorIndex) => {}
                Err(_) => {
                    let _ = self.tx.enable_notification(memory);
                    return self.signal_if(memory, used_any, TX_QUEUE);
                }
            }
        }
        // Notifications stay off: the caller comes back for the rest.
        self.unfinished = true;
        self.signal_if(memory, used_any, TX_QUEUE)
    }

    /// Moves frames from the backend into rx buffers until the backend has none or the guest
    /// has no buffers left (then the frame read last waits for the guest's next rx
    /// notification). Returns whether the guest was signalled.
    pub fn process_rx<B: NetBackend>(&mut self, memory: &GuestMemoryMmap, backend: &mut B) -> bool {
        let mut used_any = false;
        let mut frames = 0;
        loop {
            if frames == FRAMES_PER_CALL {
                self.unfinished = true;
                break;
            }
            frames += 1;
            if self.rx_pending == 0 {
                match backend.read_frame(&mut self.rx_frame) {
                    Ok(len) if len > NET_HDR_LEN => self.rx_pending = len.min(MAX_FRAME_LEN),
                    Ok(0) => break,
                    Ok(_) => {
                        self.metrics.count_drop(NetDropReason::RxBackend);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        self.metrics.count_drop(NetDropReason::RxBackend);
                        break;
                    }
                }
            }
            if !self.limiter.admit_rx(self.rx_pending) {
                break;
            }
            match self.deliver_pending(memory) {
                Delivery::Delivered | Delivery::Dropped => used_any = true,
                Delivery::NoBuffers => {
                    NetMetrics::add(&self.metrics.rx_no_buffers, 1);
                    break;
                }
            }
        }
        self.signal_if(memory, used_any, RX_QUEUE)
    }

    /// Places the pending frame in as many rx chains as it needs (one without mergeable
    /// buffers), or puts every chain back when the guest has too few.
    fn deliver_pending(&mut self, memory: &GuestMemoryMmap) -> Delivery {
        let frame_len = self.rx_pending;
        if self.clear_rx_flags {
            // DATA_VALID is for drivers that take checksum offload (virtio 1.2, 5.1.6.4.1).
            self.rx_frame[0] = 0;
        }
        let start = self.rx.next_avail();
        let most_chains = self.rx.size();
        self.rx_used.clear();
        self.rx_malformed.clear();
        let mut written = 0usize;
        let mut popped: u16 = 0;
        let mut too_large = false;
        let mut rechecked = false;
        while written < frame_len {
            if popped >= most_chains {
                // The whole queue cannot hold it: it never will.
                too_large = true;
                break;
            }
            let Some(chain) = self.rx.pop_descriptor_chain(memory) else {
                // The guest is to notify when it posts its next buffer (with EVENT_IDX: once
                // it moves past the buffers there are now); if it just did, go on. Once
                // only: an avail index more than a queue ahead pops nothing however often
                // it is read (it spun the event loop forever, found by `make fuzz`).
                if !rechecked && matches!(self.rx.enable_notification(memory), Ok(true)) {
                    rechecked = true;
                    continue;
                }
                self.rx.set_next_avail(start);
                return Delivery::NoBuffers;
            };
            rechecked = false;
            popped += 1;
            let head = chain.head_index();
            // The header (num_buffers above all) must lie in the first chain.
            if !gather_rx_chain(memory, chain, &mut self.segments)
                || self.segments.len < NET_HDR_LEN
            {
                self.rx_malformed.push(head);
                continue;
            }
            if !self.mergeable && self.segments.len < frame_len {
                // One buffer per frame, and this one is too small.
                too_large = true;
                self.rx_used.push((head, 0));
                break;
            }
            let take = self.segments.len.min(frame_len - written);
            if !self
                .segments
                .write_at(memory, 0, &self.rx_frame[written..written + take])
            {
                self.rx_malformed.push(head);
                continue;
            }
            if self.rx_used.is_empty() {
                std::mem::swap(&mut self.segments, &mut self.first_segments);
            }
            self.rx_used.push((head, take as u32));
            written += take;
        }
        self.rx_pending = 0;
        if too_large {
            self.metrics.count_drop(NetDropReason::RxTooLarge);
            for used in &mut self.rx_used {
                used.1 = 0;
            }
        } else {
            let count = self.rx_used.len() as u16;
            // Written over what the backend put there (the tap leaves it zero).
            if !self
                .first_segments
                .write_at(memory, NUM_BUFFERS_OFFSET, &count.to_le_bytes())
            {
                self.metrics.count_drop(NetDropReason::RxMalformedChain);
            }
            NetMetrics::add(&self.metrics.rx_frames, 1);
            NetMetrics::add(&self.metrics.rx_bytes, (frame_len - NET_HDR_LEN) as u64);
        }
        // Malformed chains go back first and empty, so that the frame's chains follow one
        // another in the used ring as num_buffers says.
        for _ in &self.rx_malformed {
            self.metrics.count_drop(NetDropReason::RxMalformedChain);
        }
        let malformed = self.rx_malformed.iter().map(|&head| (head, 0));
        for (head, len) in malformed.chain(self.rx_used.iter().copied()) {
            match self.rx.add_used(memory, head, len) {
                Ok(()) | Err(virtio_queue::Error::InvalidDescriptorIndex) => {}
                Err(_) => break,
            }
        }
        if too_large {
            Delivery::Dropped
        } else {
            Delivery::Delivered
        }
    }

    /// Signals `queue` if chains were used and the driver wants to hear of them now.
    fn signal_if(&mut self, memory: &GuestMemoryMmap, used: bool, queue: usize) -> bool {
        if !used {
            return false;
        }
        let ring = if queue == RX_QUEUE {
            &mut self.rx
        } else {
            &mut self.tx
        };
        // virtio-queue answers for `used_event`; the flag is left to the device. A ring
        // that cannot be read gets the signal: a spurious one is harmless.
        let wanted = if ring.event_idx_enabled() {
            ring.needs_notification(memory).unwrap_or(true)
        } else {
            memory
                .read_obj::<u16>(GuestAddress(ring.avail_ring()))
                .map_or(true, |flags| {
                    u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT == 0
                })
        };
        if wanted {
            self.signal.signal_used_queue(queue as u16);
        }
        wanted
    }
}

/// The driver's "do not interrupt me" flag in the avail ring (virtio 1.2, 2.7.7).
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
