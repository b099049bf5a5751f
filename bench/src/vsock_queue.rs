//! `vpod-bench vsock-queue` (native, no KVM): the throughput of vpod-vmm's virtio-vsock
//! queue handler alone, on plain memory with an in-memory guest: full queues of 64 chains of
//! 64 KiB packets, taken off the tx queue by the handler and given to a backend that
//! swallows them, then rx buffers filled from a backend that never runs dry. What the
//! host-side path (`vsock-host-path`) leaves out. Prints its figures; writes no rows.
//!
//! The guest's side of the queues is the VMM's own test driver
//! (`vmm/src/devices/virtio/test_queue.rs`, included at this crate's root: it is compiled for
//! tests only and not part of the VMM's API).

use anyhow::{ensure, Context, Result};
use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vpod_vmm::devices::virtio::vsock::handler::VsockQueueHandler;
use vpod_vmm::devices::virtio::vsock::metrics::DropReason;
use vpod_vmm::devices::virtio::vsock::muxer::VsockBackend;
use vpod_vmm::devices::virtio::vsock::packet::{Op, PacketHeader, TYPE_STREAM};
use vpod_vmm::devices::virtio::vsock::{VsockMetrics, HOST_CID, MAX_PAYLOAD};
use vpod_vmm::devices::virtio::QueueSignal;

use crate::test_queue::GuestQueue;

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const EVENT_RING: u64 = 0x2_0000;
const BUFFERS: u64 = 0x10_0000;
const GUEST_CID: u64 = 3;
const PACKET: u32 = 64 * 1024;
const CHAINS: u16 = 64;
/// Bytes one round moves each way: a full queue of chains.
const ROUND_BYTES: u64 = CHAINS as u64 * PACKET as u64;

/// Counts the interrupts the guest would get, as a transport's signal does its work.
#[derive(Default)]
struct CountingSignal(Cell<u64>);

impl QueueSignal for &CountingSignal {
    fn signal_used_queue(&self, _queue: u16) {
        self.0.set(self.0.get() + 1);
    }
}

/// Swallows every packet from the guest, and hands the guest endless data.
#[derive(Default)]
struct Endless {
    bytes: u64,
    oversized: u64,
}

impl VsockBackend for Endless {
    fn on_guest_packet(&mut self, _header: &PacketHeader, _op: Op, payload: &[u8]) {
        self.bytes += payload.len() as u64;
        if payload.len() > MAX_PAYLOAD {
            self.oversized += 1;
        }
    }
    fn has_packets_for_guest(&self) -> bool {
        true
    }
    fn next_packet_for_guest(&mut self, payload: &mut [u8]) -> Option<(PacketHeader, usize)> {
        let header = PacketHeader {
            len: payload.len() as u32,
            op: Op::Rw.to_wire(),
            ..PacketHeader::default()
        };
        Some((header, payload.len()))
    }
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Moves about `mib` MiB each way (whole rounds of 4 MiB, at least one).
pub fn vsock_queue(mib: u64) -> Result<()> {
    let rounds = ((mib << 20) / ROUND_BYTES).max(1);
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)])
        .context("guest memory")?;
    let rx = GuestQueue::new(&memory, RX_RING, 256);
    let tx = GuestQueue::new(&memory, TX_RING, 256);
    let event = GuestQueue::new(&memory, EVENT_RING, 256);
    let metrics = Arc::new(VsockMetrics::default());
    let queues = [rx.create_queue(), tx.create_queue(), event.create_queue()];
    let signal = CountingSignal::default();
    let mut handler = VsockQueueHandler::new(queues, &signal, GUEST_CID, metrics.clone());

    let header = PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: 52,
        len: PACKET,
        type_: TYPE_STREAM,
        op: Op::Rw.to_wire(),
        buf_alloc: 1 << 18,
        ..PacketHeader::default()
    };
    for i in 0..u64::from(CHAINS) {
        memory
            .write_slice(&header.to_bytes(), GuestAddress(BUFFERS + i * 0x100))
            .context("a packet header")?;
    }
    let tx_chains: Vec<RawDescriptor> = (0..CHAINS)
        .flat_map(|i| {
            let at = u64::from(i);
            [
                raw(BUFFERS + at * 0x100, 44, NEXT, 2 * i + 1),
                raw(BUFFERS + 0x10_0000 + at * u64::from(PACKET), PACKET, 0, 0),
            ]
        })
        .collect();
    let mut sink = Endless::default();
    let started = Instant::now();
    for _ in 0..rounds {
        tx.add_desc_chains(&tx_chains, 0)
            .map_err(anyhow::Error::msg)?;
        handler.process_tx(&memory, &mut sink);
    }
    let tx_secs = started.elapsed().as_secs_f64();
    ensure!(
        metrics.dropped(DropReason::MalformedChain) == 0 && metrics.dropped_total() == 0,
        "the handler dropped {} chains",
        metrics.dropped_total()
    );
    ensure!(sink.bytes == rounds * ROUND_BYTES, "tx lost bytes");
    ensure!(
        sink.oversized == 0,
        "the handler passed on oversized payloads"
    );
    ensure!(
        u64::from(tx.used_idx()) == rounds * u64::from(CHAINS) % 65536,
        "tx used fewer chains than it was given"
    );

    let rx_chains: Vec<RawDescriptor> = (0..CHAINS)
        .map(|i| {
            let at = BUFFERS + 0x10_0000 + u64::from(i) * u64::from(PACKET + 44);
            raw(at, PACKET + 44, WRITE, 0)
        })
        .collect();
    let mut source = Endless::default();
    let started = Instant::now();
    for _ in 0..rounds {
        rx.add_desc_chains(&rx_chains, 0)
            .map_err(anyhow::Error::msg)?;
        handler.process_rx(&memory, &mut source);
    }
    let rx_secs = started.elapsed().as_secs_f64();
    let last = rx.used_idx().wrapping_sub(1);
    ensure!(rx.used_element(last).1 == PACKET + 44, "rx filled short");

    ensure!(signal.0.get() > 0, "the guest was never signalled");
    let bytes = (rounds * ROUND_BYTES) as f64;
    println!(
        "vsock queue handler, 64 KiB packets: tx {:.0} MiB/s ({} MiB in {:.3} s, {} chains dropped), rx {:.0} MiB/s ({} MiB in {:.3} s)",
        bytes / tx_secs / 1048576.0,
        bytes / 1048576.0,
        tx_secs,
        metrics.dropped_total(),
        bytes / rx_secs / 1048576.0,
        bytes / 1048576.0,
        rx_secs
    );
    Ok(())
}
