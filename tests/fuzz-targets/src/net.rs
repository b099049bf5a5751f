//! `net_frames`: the virtio-net queue handler's tx and rx paths on a guest's rings.
//!
//! Control bytes: 0 the queue size (both queues), 1 features (bit 0 mergeable rx buffers,
//! bit 1 event index, bit 2 guest checksum), 2..8 the lengths of three frames the peer
//! sends (little-endian u16 each, 0 for none; a length past the largest frame is cut by the
//! reader as a tap would). Queue 0 is rx, queue 1 tx; the rest is guest memory. Checked: no
//! panic, every frame handed to the backend within bounds, the handler's per-call frame
//! limit.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;

use vpod_vmm::devices::virtio::net::{
    NetBackend, NetMetrics, NetQueueHandler, MAX_FRAME_LEN, NET_HDR_LEN, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
};

use crate::guest::{size_code, DriverImage, GuestInput, Layout, Quiet};
use crate::Seed;

const CONTROL: usize = 8;

/// A peer that sends the frames it was given and counts what it receives.
struct FakeTap {
    incoming: VecDeque<usize>,
    sent: usize,
}

impl NetBackend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let len = self
            .incoming
            .pop_front()
            .ok_or_else(|| io::Error::from(io::ErrorKind::WouldBlock))?;
        let len = len.min(buf.len());
        for (i, byte) in buf[..len].iter_mut().enumerate() {
            *byte = i as u8;
        }
        if len >= NET_HDR_LEN {
            buf[..NET_HDR_LEN].fill(0);
        }
        Ok(len)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        assert!(
            frame.len() > NET_HDR_LEN && frame.len() <= MAX_FRAME_LEN,
            "a tx frame of {} bytes reached the tap",
            frame.len()
        );
        self.sent += 1;
        Ok(())
    }
}

pub fn net_frames(data: &[u8]) {
    let input = GuestInput::split(data, CONTROL);
    let layout = Layout::new(input.queue_size(0));
    let memory = input.memory();
    let bits = input.byte(1);
    let mut features = 0;
    if bits & 1 != 0 {
        features |= VIRTIO_NET_F_MRG_RXBUF;
    }
    if bits & 2 != 0 {
        features |= VIRTIO_RING_F_EVENT_IDX;
    }
    if bits & 4 != 0 {
        features |= VIRTIO_NET_F_GUEST_CSUM;
    }
    let incoming = [2, 4, 6]
        .into_iter()
        .map(|at| usize::from(input.u16(at)))
        .filter(|&len| len > 0)
        .collect();
    let mut tap = FakeTap { incoming, sent: 0 };
    let metrics = Arc::new(NetMetrics::default());
    let mut handler =
        NetQueueHandler::new(layout.queue(0), layout.queue(1), Quiet, features, metrics);
    handler.process_tx(&memory, &mut tap);
    assert!(tap.sent <= vpod_vmm::devices::virtio::net::FRAMES_PER_CALL);
    handler.process_rx(&memory, &mut tap);
    // The guest posted nothing new: rx finds no more buffers, tx no more frames.
    handler.process_rx(&memory, &mut tap);
    handler.process_tx(&memory, &mut tap);
}

/// A frame: the 12-byte header, then an Ethernet header and `payload` bytes.
fn frame(payload: usize) -> Vec<u8> {
    let mut frame = vec![0u8; NET_HDR_LEN];
    frame.extend_from_slice(&[0xff; 6]); // broadcast
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend((0..payload).map(|i| i as u8));
    frame
}

pub fn seeds() -> Vec<Seed> {
    let size = 16;
    let control = |features: u8, frames: [u16; 3]| {
        let mut c = vec![size_code(size), features];
        for len in frames {
            c.extend_from_slice(&len.to_le_bytes());
        }
        c
    };
    let mut seeds = Vec::new();
    // Two tx frames (one split over two buffers) and rx buffers for two incoming frames.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(2);
    let small = frame(50);
    image.write(base, &small);
    image.chain(1, &[(base, small.len() as u32, false)]);
    let big = frame(1000);
    image.write(base + 0x100, &big[..300]);
    image.write(base + 0x800, &big[300..]);
    image.chain(
        1,
        &[
            (base + 0x100, 300, false),
            (base + 0x800, big.len() as u32 - 300, false),
        ],
    );
    for i in 0..4 {
        image.chain(0, &[(base + 0x1000 + 0x800 * i, 1526, true)]);
    }
    seeds.push((
        "tx-two-rx-two",
        image.into_input(&control(0, [64, 1514, 0])),
    ));
    // Mergeable rx buffers: a large frame over several small buffers.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(2);
    for i in 0..8 {
        image.chain(0, &[(base + 0x200 * i, 256, true)]);
    }
    seeds.push((
        "rx-mergeable",
        image.into_input(&control(1 | 2, [1200, 40, 0])),
    ));
    // Malformed chains: a device-writable tx buffer, a read-only rx buffer, a tx frame
    // shorter than the header, a buffer in the hole between the memory regions.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(2);
    image.chain(1, &[(base, 100, true)]);
    image.chain(1, &[(base, 8, false)]);
    image.chain(1, &[(crate::guest::FIRST_REGION + 0x10, 100, false)]);
    image.chain(0, &[(base + 0x400, 2048, false)]);
    image.chain(0, &[(base + 0x1000, 6, true)]);
    seeds.push((
        "malformed-chains",
        image.into_input(&control(4, [100, 0, 0])),
    ));
    // An rx frame larger than every buffer, without mergeable buffers.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(2);
    image.chain(0, &[(base, 512, true)]);
    image.chain(0, &[(base + 0x400, 512, true)]);
    seeds.push((
        "rx-too-large",
        image.into_input(&control(0, [65_000, 100, 0])),
    ));
    seeds
}
