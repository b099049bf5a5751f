//! Tests of the vsock queue handler on plain memory with an in-memory backend, including
//! the property test over random descriptor chains (the vsock parser's fuzz target). The
//! handler's throughput is a benchmark: `target/release/vpod-bench vsock-queue`.

use super::*;
use crate::devices::virtio::test_queue::GuestQueue;
use crate::devices::virtio::vsock::packet::TYPE_STREAM;
use crate::devices::virtio::vsock::HOST_CID;
use proptest::prelude::*;
use std::cell::Cell;
use std::collections::VecDeque;
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const EVENT_RING: u64 = 0x2_0000;
const BUFFERS: u64 = 0x10_0000;
const GUEST_CID: u64 = 3;

#[derive(Default)]
struct CountingSignal(Cell<usize>);

impl QueueSignal for &CountingSignal {
    fn signal_used_queue(&self, _queue: u16) {
        self.0.set(self.0.get() + 1);
    }
}

/// Records what the guest sends; hands out queued packets, or endless data when `source`.
#[derive(Default)]
struct RecordingBackend {
    received: Vec<(PacketHeader, Op, usize)>,
    bytes: u64,
    outgoing: VecDeque<(PacketHeader, Vec<u8>)>,
    source: bool,
}

impl VsockBackend for RecordingBackend {
    fn on_guest_packet(&mut self, header: &PacketHeader, op: Op, payload: &[u8]) {
        assert!(payload.len() <= MAX_PAYLOAD);
        self.bytes += payload.len() as u64;
        if !self.source {
            self.received.push((*header, op, payload.len()));
        }
    }
    fn has_packets_for_guest(&self) -> bool {
        self.source || !self.outgoing.is_empty()
    }
    fn next_packet_for_guest(&mut self, payload: &mut [u8]) -> Option<(PacketHeader, usize)> {
        if self.source {
            let header = PacketHeader {
                len: payload.len() as u32,
                op: Op::Rw.to_wire(),
                ..PacketHeader::default()
            };
            return Some((header, payload.len()));
        }
        let (header, data) = self.outgoing.pop_front()?;
        let len = data.len().min(payload.len());
        payload[..len].copy_from_slice(&data[..len]);
        Some((header, len))
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x100_0000)]).expect("memory")
}

fn raw(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

struct Rings<'a> {
    rx: GuestQueue<'a>,
    tx: GuestQueue<'a>,
}

fn setup<'a>(
    m: &'a GuestMemoryMmap,
    signal: &'a CountingSignal,
) -> (
    Rings<'a>,
    VsockQueueHandler<&'a CountingSignal>,
    Arc<VsockMetrics>,
) {
    let rx = GuestQueue::new(m, RX_RING, 256);
    let tx = GuestQueue::new(m, TX_RING, 256);
    let event = GuestQueue::new(m, EVENT_RING, 256);
    let metrics = Arc::new(VsockMetrics::default());
    let queues = [rx.create_queue(), tx.create_queue(), event.create_queue()];
    let handler = VsockQueueHandler::new(queues, signal, GUEST_CID, metrics.clone());
    (Rings { rx, tx }, handler, metrics)
}

fn guest_packet(op: Op, len: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 1234,
        dst_port: 52,
        len,
        type_: TYPE_STREAM,
        op: op.to_wire(),
        buf_alloc: 1 << 18,
        ..PacketHeader::default()
    }
}

fn write_header(m: &GuestMemoryMmap, at: u64, header: &PacketHeader) {
    m.write_slice(&header.to_bytes(), GuestAddress(at))
        .expect("header");
}

#[test]
fn tx_packet_with_separate_payload_reaches_the_backend() {
    let m = memory();
    let signal = CountingSignal::default();
    let (rings, mut handler, metrics) = setup(&m, &signal);
    write_header(&m, BUFFERS, &guest_packet(Op::Rw, 5));
    m.write_slice(b"hello", GuestAddress(BUFFERS + 0x1000))
        .expect("payload");
    rings
        .tx
        .add_desc_chains(
            &[raw(BUFFERS, 44, NEXT, 1), raw(BUFFERS + 0x1000, 5, 0, 0)],
            0,
        )
        .expect("chain");
    let mut backend = RecordingBackend::default();
    assert!(handler.process_tx(&m, &mut backend));
    assert_eq!(backend.received.len(), 1);
    assert_eq!(backend.received[0].1, Op::Rw);
    assert_eq!(backend.bytes, 5);
    assert_eq!(metrics.dropped_total(), 0);
    assert_eq!(signal.0.get(), 1);
}

#[test]
fn hostile_tx_chains_are_dropped_and_counted() {
    let m = memory();
    let signal = CountingSignal::default();
    let (rings, mut handler, metrics) = setup(&m, &signal);
    write_header(&m, BUFFERS, &guest_packet(Op::Rw, 100)); // claims more than carried
    write_header(&m, BUFFERS + 0x100, &guest_packet(Op::Rw, 0));
    let mut wrong_cid = guest_packet(Op::Request, 0);
    wrong_cid.src_cid = 9;
    write_header(&m, BUFFERS + 0x200, &wrong_cid);
    rings
        .tx
        .add_desc_chains(
            &[
                raw(BUFFERS, 50, 0, 0),
                raw(BUFFERS + 0x100, 20, 0, 0), // shorter than a header
                raw(BUFFERS + 0x100, 44, WRITE, 0), // device-writable in tx
                raw(BUFFERS + 0x200, 44, 0, 0),
                raw(u64::MAX - 8, 44, 0, 0), // outside memory
            ],
            0,
        )
        .expect("chains");
    let mut backend = RecordingBackend::default();
    handler.process_tx(&m, &mut backend);
    assert!(backend.received.is_empty());
    assert_eq!(metrics.dropped(DropReason::BadLength), 1);
    assert_eq!(metrics.dropped(DropReason::MalformedChain), 3);
    assert_eq!(metrics.dropped(DropReason::BadCid), 1);
}

#[test]
fn rx_packet_fills_one_buffer_with_header_and_payload() {
    let m = memory();
    let signal = CountingSignal::default();
    let (rings, mut handler, metrics) = setup(&m, &signal);
    rings
        .rx
        .add_desc_chains(
            &[
                raw(BUFFERS, 4096, WRITE, 0),
                raw(BUFFERS + 0x2000, 20, WRITE, 0),
            ],
            0,
        )
        .expect("chains");
    let mut backend = RecordingBackend::default();
    let header = PacketHeader {
        len: 3,
        op: Op::Rw.to_wire(),
        ..PacketHeader::default()
    };
    backend.outgoing.push_back((header, b"abc".to_vec()));
    backend.outgoing.push_back((header, b"def".to_vec()));
    assert!(handler.process_rx(&m, &mut backend));
    let mut back = [0u8; 47];
    m.read_slice(&mut back, GuestAddress(BUFFERS))
        .expect("read");
    assert_eq!(&back[44..], b"abc");
    assert_eq!(
        PacketHeader::from_bytes(back[..44].try_into().expect("44")).len,
        3
    );
    assert_eq!(rings.rx.used_element(0), (0, 47));
    // The second buffer is too small for a header: returned empty, the packet kept.
    assert_eq!(metrics.dropped(DropReason::MalformedChain), 1);
    assert_eq!(backend.outgoing.len(), 1);
}

#[test]
fn rx_without_packets_keeps_the_buffer_for_later() {
    let m = memory();
    let signal = CountingSignal::default();
    let (rings, mut handler, _) = setup(&m, &signal);
    rings
        .rx
        .add_desc_chains(&[raw(BUFFERS, 4096, WRITE, 0)], 0)
        .expect("chain");
    let mut backend = RecordingBackend::default();
    assert!(!handler.process_rx(&m, &mut backend));
    backend
        .outgoing
        .push_back((PacketHeader::default(), Vec::new()));
    assert!(handler.process_rx(&m, &mut backend));
    assert!(backend.outgoing.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The vsock packet parser's fuzz target: random chains over random memory never panic
    /// and never hand the backend more than a packet's worth.
    #[test]
    fn random_tx_and_rx_chains_never_panic(
        descs in prop::collection::vec((0u64..0x120_0000, 0u32..0x2_0000, any::<u16>(), 0u16..300), 1..40),
        seed in any::<u64>(),
        headers in prop::collection::vec((any::<u32>(), any::<u16>(), any::<u16>(), any::<u64>()), 0..8),
    ) {
        let m = memory();
        let mut state = seed | 1;
        let garbage: Vec<u8> = (0..0x4_0000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        m.write_slice(&garbage, GuestAddress(BUFFERS)).expect("fill");
        for (i, (len, type_, op, cid)) in headers.into_iter().enumerate() {
            let header = PacketHeader {
                src_cid: if cid % 2 == 0 { GUEST_CID } else { cid },
                dst_cid: HOST_CID,
                len: len % 0x2_0000,
                type_: type_ % 3,
                op: op % 9,
                ..PacketHeader::default()
            };
            write_header(&m, BUFFERS + i as u64 * 0x1000, &header);
        }
        let signal = CountingSignal::default();
        let (rings, mut handler, _) = setup(&m, &signal);
        let raw_descs: Vec<RawDescriptor> = descs
            .iter()
            .map(|&(addr, len, flags, next)| raw(addr, len, flags & (WRITE | NEXT), next))
            .collect();
        let _ = rings.tx.add_desc_chains(&raw_descs, 0);
        let _ = rings.rx.add_desc_chains(&raw_descs, 0);
        let mut backend = RecordingBackend::default();
        backend.outgoing.push_back((PacketHeader::default(), vec![1u8; 100]));
        handler.process_tx(&m, &mut backend);
        handler.process_rx(&m, &mut backend);
        let mut source = RecordingBackend { source: true, ..RecordingBackend::default() };
        handler.process_rx(&m, &mut source);
        prop_assert!(backend.received.iter().all(|(h, _, _)| h.len as usize <= MAX_PAYLOAD));
    }
}

#[test]
fn chains_stay_whole_across_table_reuse_and_index_wrap() {
    // Chains of one to three descriptors at shifting table offsets, for more than 256
    // rounds of the 16-bit indices' wrap at the queue size and far past 65536 in total.
    let m = memory();
    let signal = CountingSignal::default();
    let (rings, mut handler, metrics) = setup(&m, &signal);
    let mut backend = RecordingBackend::default();
    let mut expected = 0u64;
    for round in 0..1200u32 {
        let parts = (round % 3) as u16 + 1;
        let chains = 1 + (round % 80) as u16;
        let offset = (round * 37 % 256) as u16;
        let mut descs = Vec::new();
        for c in 0..chains {
            let at = BUFFERS + u64::from(c) * 0x100;
            let port = round.wrapping_mul(131) + u32::from(c);
            let mut header = guest_packet(Op::Rw, u32::from(parts - 1) * 8);
            header.src_port = port;
            write_header(&m, at, &header);
            for p in 0..parts {
                let index = (offset + c * parts + p) % 256;
                let (addr, len) = if p == 0 { (at, 44) } else { (at + 0x8_0000, 8) };
                let last = p + 1 == parts;
                let next = (index + 1) % 256;
                descs.push(raw(
                    addr,
                    len,
                    if last { 0 } else { NEXT },
                    if last { 0 } else { next },
                ));
            }
            expected += 1;
        }
        rings.tx.add_desc_chains(&descs, offset).expect("chains");
        handler.process_tx(&m, &mut backend);
        assert_eq!(metrics.dropped_total(), 0, "round {round}");
        let received = &backend.received[backend.received.len() - usize::from(chains)..];
        for (c, (header, _, len)) in received.iter().enumerate() {
            assert_eq!(header.src_port, round.wrapping_mul(131) + c as u32);
            assert_eq!(*len, usize::from(parts - 1) * 8);
        }
    }
    assert_eq!(backend.received.len() as u64, expected);
}

/// Four full queues of 64 KiB packets each way (what `vpod-bench vsock-queue` times over
/// hundreds of rounds) lose nothing.
#[test]
fn full_queues_of_64_kib_packets_cross_both_ways_whole() {
    const PACKET: u32 = 64 * 1024;
    const CHAINS: u16 = 64;
    let rounds: usize = 4;
    let m = memory();
    let signal = CountingSignal::default();
    let (rings, mut handler, metrics) = setup(&m, &signal);
    for i in 0..u64::from(CHAINS) {
        write_header(&m, BUFFERS + i * 0x100, &guest_packet(Op::Rw, PACKET));
    }
    let tx_chains: Vec<RawDescriptor> = (0..CHAINS)
        .flat_map(|i| {
            let i64 = u64::from(i);
            [
                raw(BUFFERS + i64 * 0x100, 44, NEXT, 2 * i + 1),
                raw(BUFFERS + 0x10_0000 + i64 * u64::from(PACKET), PACKET, 0, 0),
            ]
        })
        .collect();
    let mut sink = RecordingBackend {
        source: true,
        ..RecordingBackend::default()
    };
    for _ in 0..rounds {
        rings.tx.add_desc_chains(&tx_chains, 0).expect("chains");
        handler.process_tx(&m, &mut sink);
    }
    // A well-formed guest loses nothing, across table reuse and index wrap alike.
    assert_eq!(metrics.dropped(DropReason::MalformedChain), 0);
    assert_eq!(metrics.dropped_total(), 0);
    assert_eq!(
        sink.bytes,
        rounds as u64 * u64::from(CHAINS) * u64::from(PACKET)
    );
    assert_eq!(
        usize::from(rings.tx.used_idx()),
        (rounds * usize::from(CHAINS)) % 65536
    );

    let rx_chains: Vec<RawDescriptor> = (0..CHAINS)
        .map(|i| {
            raw(
                BUFFERS + 0x10_0000 + u64::from(i) * u64::from(PACKET + 44),
                PACKET + 44,
                WRITE,
                0,
            )
        })
        .collect();
    let mut source = RecordingBackend {
        source: true,
        ..RecordingBackend::default()
    };
    for _ in 0..rounds {
        rings.rx.add_desc_chains(&rx_chains, 0).expect("chains");
        handler.process_rx(&m, &mut source);
    }
    assert_eq!(metrics.dropped_total(), 0);
    let last = rings.rx.used_idx().wrapping_sub(1);
    assert_eq!(rings.rx.used_element(last).1, PACKET + 44);
}
