//! The virtio-net device's host path on real taps, natively and without KVM: each test makes
//! a network namespace of its own (on a thread of its own), a tap in it and a packet socket
//! on the tap for the host's end, and drives the device's queue handler over guest memory as
//! a guest driver would (`net_guest`). Skipped, with a line on stderr, where the process may
//! not make a namespace. The throughput of the same path is a benchmark:
//! `target/release/vpod-bench net-host-path`.

mod net_guest;
#[allow(dead_code)]
#[path = "../src/devices/virtio/test_queue.rs"]
mod test_queue;

use net_guest::{
    ethernet_frame, in_new_netns, tcp_frame, test_tap, GuestNic, PacketSocket, DEVICE_HDR, MSS,
    SETTLE, TCP_HEADERS, TEST_ETHERTYPE,
};
use std::sync::Arc;
use vpod_vmm::devices::virtio::net::{
    NetDevice, NetMetrics, Tap, TapError, NUM_BUFFERS_OFFSET, RX_QUEUE, TX_QUEUE,
};
use vpod_vmm::devices::virtio::{DeviceEvents, VirtioDevice, VirtioInterrupt};

fn is_test_frame(frame: &[u8]) -> bool {
    frame.get(12..14) == Some(&TEST_ETHERTYPE.to_be_bytes()[..])
}

fn num_buffers(frame: &[u8]) -> u16 {
    u16::from_le_bytes([frame[NUM_BUFFERS_OFFSET], frame[NUM_BUFFERS_OFFSET + 1]])
}

/// Receives from `socket` until a frame passes `wanted`.
fn recv_matching(socket: &PacketSocket, wanted: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut buf = vec![0u8; 70_000];
    loop {
        let n = socket.recv(&mut buf).expect("a frame from the tap");
        if wanted(&buf[..n]) {
            return buf[..n].to_vec();
        }
    }
}

#[test]
fn guest_tx_frame_comes_out_of_the_tap_unchanged() {
    in_new_netns(|| {
        let mut tap = test_tap("vpodtx0");
        let host = PacketSocket::bind("vpodtx0", false).expect("packet socket");
        let mut guest = GuestNic::new(2048);
        let frame = ethernet_frame(600, 7);
        let mut with_header = vec![0u8; DEVICE_HDR];
        with_header.extend_from_slice(&frame);
        guest.send(&mut tap, &with_header);
        assert_eq!(recv_matching(&host, is_test_frame), frame);
        assert_eq!(NetMetrics::get(&guest.metrics.tx_frames), 1);
        assert_eq!(guest.metrics.dropped_total(), 0);
    });
}

#[test]
fn guest_tso_frame_crosses_the_tap_whole_with_its_gso_header() {
    in_new_netns(|| {
        let mut tap = test_tap("vpodtso0");
        let host = PacketSocket::bind("vpodtso0", true).expect("packet socket");
        let mut guest = GuestNic::new(2048);
        let sent = tcp_frame(DEVICE_HDR, 60_000, true);
        guest.send(&mut tap, &sent);
        // The packet socket's header is the 10-byte virtio_net_hdr.
        let got = recv_matching(&host, |f| f.len() > 10 + TCP_HEADERS && f[10 + 12] == 0x08);
        assert_eq!(got.len(), 10 + TCP_HEADERS + 60_000);
        assert_eq!(got[1], 1, "gso_type TCPV4");
        assert_eq!(u16::from_le_bytes([got[4], got[5]]), MSS);
        assert_eq!(got[10..], sent[DEVICE_HDR..]);
        assert_eq!(
            NetMetrics::get(&guest.metrics.tx_bytes),
            sent.len() as u64 - 12
        );
    });
}

#[test]
fn host_frames_land_in_rx_buffers_with_a_header_and_num_buffers() {
    in_new_netns(|| {
        let mut tap = test_tap("vpodrx0");
        let host = PacketSocket::bind("vpodrx0", false).expect("packet socket");
        let mut guest = GuestNic::new(2048);
        let frames: Vec<_> = (0..3)
            .map(|i| ethernet_frame(1000 + i * 100, i as u8))
            .collect();
        for frame in &frames {
            host.send(frame).expect("send");
        }
        std::thread::sleep(SETTLE);
        let got: Vec<_> = guest
            .receive(&mut tap)
            .into_iter()
            .filter(|f| is_test_frame(&f[DEVICE_HDR..]))
            .collect();
        assert_eq!(got.len(), 3);
        for (got, sent) in got.iter().zip(&frames) {
            assert_eq!(num_buffers(got), 1);
            assert_eq!(got[0], 0, "no offload flags on a plain frame");
            assert_eq!(&got[DEVICE_HDR..], &sent[..]);
        }
    });
}

#[test]
fn host_tso_frame_reaches_the_guest_whole_across_mergeable_buffers() {
    in_new_netns(|| {
        let mut tap = test_tap("vpodgro0");
        let host = PacketSocket::bind("vpodgro0", true).expect("packet socket");
        let mut guest = GuestNic::new(4096);
        let sent = tcp_frame(10, 60_000, true);
        host.send(&sent).expect("send a TSO frame");
        std::thread::sleep(SETTLE);
        let frames = guest.receive(&mut tap);
        let got = frames
            .iter()
            .find(|f| f.len() == DEVICE_HDR + TCP_HEADERS + 60_000)
            .expect("the TSO frame, unsegmented");
        assert_eq!(got[1], 1, "gso_type TCPV4");
        assert_eq!(u16::from_le_bytes([got[4], got[5]]), MSS);
        assert_eq!(usize::from(num_buffers(got)), got.len().div_ceil(4096));
        assert_eq!(got[DEVICE_HDR..], sent[10..]);
    });
}

#[test]
fn rx_waits_for_buffers_and_then_loses_no_frame() {
    in_new_netns(|| {
        let mut tap = test_tap("vpodstall0");
        let host = PacketSocket::bind("vpodstall0", false).expect("packet socket");
        // 300 frames of two 1 KiB buffers each, 256 buffers: the device must stop for want
        // of buffers and resume when they come back.
        let mut guest = GuestNic::new(1024);
        let count = 300;
        for i in 0..count {
            host.send(&ethernet_frame(1400, i as u8)).expect("send");
        }
        std::thread::sleep(SETTLE);
        let mut got = 0;
        for _ in 0..4 {
            got += guest
                .receive(&mut tap)
                .iter()
                .filter(|f| is_test_frame(&f[DEVICE_HDR..]))
                .count();
        }
        assert_eq!(got, count);
        assert!(NetMetrics::get(&guest.metrics.rx_no_buffers) >= 1);
        assert_eq!(guest.metrics.dropped_total(), 0);
    });
}

#[test]
fn an_inherited_tap_is_adopted_and_anything_else_refused() {
    in_new_netns(|| {
        let tap = test_tap("vpodfd0");
        let adopted = Tap::from_inherited(std::os::fd::AsRawFd::as_raw_fd(&tap)).expect("adopt");
        assert_eq!(adopted.name(), "vpodfd0");
        let file = std::fs::File::open("/dev/null").expect("open");
        let refused = Tap::from_inherited(std::os::fd::AsRawFd::as_raw_fd(&file));
        assert!(
            matches!(refused, Err(TapError::Inherited(..))),
            "{refused:?}"
        );
        assert!(matches!(
            Tap::open("a-name-far-too-long"),
            Err(TapError::BadName(_))
        ));
    });
}

/// Counts the interrupts a device raises.
#[derive(Default)]
struct CountingInterrupt(std::sync::atomic::AtomicUsize);

impl VirtioInterrupt for CountingInterrupt {
    fn signal_used_queue(&self, _queue: u16) -> std::io::Result<()> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
    fn signal_config_changed(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_device_sets_the_guests_offloads_and_moves_frames_on_queue_notifications() {
    in_new_netns(|| {
        let tap = Tap::open("vpoddev0").expect("tap");
        net_guest::set_link_up("vpoddev0").expect("link up");
        let host = PacketSocket::bind("vpoddev0", true).expect("packet socket");
        let mut device = NetDevice::with_tap(tap, [2, 0, 0, 0, 0, 9]).expect("device");
        let mut mac = [0u8; 6];
        device.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 9]);
        assert!(device.host_events().is_some(), "the tap is an event source");
        device.set_acked_features(device.avail_features());
        let mut guest = GuestNic::new(4096);
        let interrupt = Arc::new(CountingInterrupt::default());
        device
            .activate(guest.memory(), interrupt.clone(), guest.device_queues())
            .expect("activate");

        guest.queue_frame(&tcp_frame(DEVICE_HDR, 30_000, true));
        device.process_queue(TX_QUEUE);
        assert_eq!(guest.tx_used(), 1);
        let got = recv_matching(&host, |f| f.len() == 10 + TCP_HEADERS + 30_000);
        assert_eq!(got[1], 1, "gso_type TCPV4");

        // TSO reaches the guest only because activation gave the tap the guest's offloads.
        host.send(&tcp_frame(10, 60_000, true)).expect("send");
        std::thread::sleep(SETTLE);
        device.process_queue(RX_QUEUE);
        let frames = guest.collect_rx();
        let got = frames
            .iter()
            .find(|f| f.len() == DEVICE_HDR + TCP_HEADERS + 60_000)
            .expect("the TSO frame, whole");
        assert_eq!(got[1], 1, "gso_type TCPV4");
        assert!(interrupt.0.load(std::sync::atomic::Ordering::Relaxed) >= 2);
        assert_eq!(device.metrics().dropped_total(), 0);
        device.reset();
    });
}
