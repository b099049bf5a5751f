//! The virtio-vsock queue handler: takes the guest's packets off the tx queue and hands them
//! to the backend, fills the guest's rx buffers with the backend's packets. A pure type,
//! generic over how the guest is signalled and over the backend, so it runs in unit tests
//! and benchmarks on plain memory.

use std::sync::Arc;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

use super::metrics::{DropReason, VsockMetrics};
use super::muxer::VsockBackend;
use super::packet::{check_guest_header, ChainBuffers, Op, PacketHeader, HEADER_SIZE};
use super::{MAX_PAYLOAD, RX_QUEUE, TX_QUEUE};
use crate::devices::virtio::QueueSignal;

pub struct VsockQueueHandler<S: QueueSignal> {
    pub rx: Queue,
    pub tx: Queue,
    pub event: Queue,
    pub signal: S,
    guest_cid: u64,
    metrics: Arc<VsockMetrics>,
    chain: ChainBuffers,
    payload: Vec<u8>,
}

/// Gathers a chain's buffers; false if one has the wrong direction.
fn gather(descriptors: &[Descriptor], device_writes: bool, chain: &mut ChainBuffers) -> bool {
    chain.clear();
    for descriptor in descriptors {
        if descriptor.is_write_only() != device_writes {
            return false;
        }
        chain.push(descriptor.addr(), descriptor.len());
    }
    // A last descriptor pointing onwards means the iterator cut the chain short.
    descriptors.last().is_some_and(|d| !d.has_next())
}

impl<S: QueueSignal> VsockQueueHandler<S> {
    pub fn new(queues: [Queue; 3], signal: S, guest_cid: u64, metrics: Arc<VsockMetrics>) -> Self {
        let [rx, tx, event] = queues;
        VsockQueueHandler {
            rx,
            tx,
            event,
            signal,
            guest_cid,
            metrics,
            chain: ChainBuffers::default(),
            payload: vec![0u8; MAX_PAYLOAD],
        }
    }

    /// Reads and checks one tx chain; hands a valid packet to `backend`.
    fn take_packet<B: VsockBackend>(
        &mut self,
        memory: &GuestMemoryMmap,
        descriptors: &[Descriptor],
        backend: &mut B,
    ) {
        VsockMetrics::add(&self.metrics.packets_from_guest, 1);
        let mut raw = [0u8; HEADER_SIZE];
        if !gather(descriptors, false, &mut self.chain) || !self.chain.read_at(memory, 0, &mut raw)
        {
            return self.metrics.count_drop(DropReason::MalformedChain);
        }
        let header = PacketHeader::from_bytes(&raw);
        let op = match check_guest_header(&header, self.guest_cid, self.chain.len()) {
            Ok(op) => op,
            Err(reason) => return self.metrics.count_drop(reason),
        };
        let len = if op == Op::Rw { header.len as usize } else { 0 };
        let payload = &mut self.payload[..len];
        if !self.chain.read_at(memory, HEADER_SIZE as u64, payload) {
            return self.metrics.count_drop(DropReason::MalformedChain);
        }
        backend.on_guest_packet(&header, op, payload);
    }

    /// Processes every packet the guest queued. Returns whether the guest was signalled.
    pub fn process_tx<B: VsockBackend>(
        &mut self,
        memory: &GuestMemoryMmap,
        backend: &mut B,
    ) -> bool {
        let mut used_any = false;
        while let Some(chain) = self.tx.pop_descriptor_chain(memory) {
            let head = chain.head_index();
            let descriptors: Vec<_> = chain.take(usize::from(self.tx.size())).collect();
            self.take_packet(memory, &descriptors, backend);
            match self.tx.add_used(memory, head, 0) {
                Ok(()) => used_any = true,
                Err(virtio_queue::Error::InvalidDescriptorIndex) => {}
                Err(_) => break,
            }
        }
        self.signal_if(used_any, TX_QUEUE)
    }

    /// Fills rx buffers with the backend's packets while both last. Returns whether the
    /// guest was signalled.
    pub fn process_rx<B: VsockBackend>(
        &mut self,
        memory: &GuestMemoryMmap,
        backend: &mut B,
    ) -> bool {
        let mut used_any = false;
        while backend.has_packets_for_guest() {
            let Some(chain) = self.rx.pop_descriptor_chain(memory) else {
                break;
            };
            let head = chain.head_index();
            let descriptors: Vec<_> = chain.take(usize::from(self.rx.size())).collect();
            let used_len = if !gather(&descriptors, true, &mut self.chain)
                || self.chain.len() < HEADER_SIZE as u64
            {
                self.metrics.count_drop(DropReason::MalformedChain);
                0
            } else {
                let room = (self.chain.len() - HEADER_SIZE as u64).min(MAX_PAYLOAD as u64);
                let payload = &mut self.payload[..room as usize];
                let Some((header, len)) = backend.next_packet_for_guest(payload) else {
                    // Nothing after all: the buffer stays with the device for later.
                    self.rx.go_to_previous_position();
                    break;
                };
                let len = len.min(payload.len());
                let written = self.chain.write_at(memory, 0, &header.to_bytes())
                    && self
                        .chain
                        .write_at(memory, HEADER_SIZE as u64, &payload[..len]);
                VsockMetrics::add(&self.metrics.packets_to_guest, 1);
                VsockMetrics::add(&self.metrics.bytes_to_guest, len as u64);
                if written {
                    (HEADER_SIZE + len) as u32
                } else {
                    self.metrics.count_drop(DropReason::MalformedChain);
                    0
                }
            };
            match self.rx.add_used(memory, head, used_len) {
                Ok(()) => used_any = true,
                Err(virtio_queue::Error::InvalidDescriptorIndex) => {}
                Err(_) => break,
            }
        }
        self.signal_if(used_any, RX_QUEUE)
    }

    fn signal_if(&self, used: bool, queue: usize) -> bool {
        if used {
            self.signal.signal_used_queue(queue as u16);
        }
        used
    }
}

#[cfg(test)]
#[path = "handler_tests.rs"]
mod tests;
