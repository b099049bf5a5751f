//! A simulated guest driver for vpod-vmm's virtio-net device over a real tap, in a network
//! namespace of its own: the guest's queues in plain memory, driven through the device's
//! queue handler, and the host's end a packet socket on the tap. Shared by the native test
//! `vmm/tests/net_tap.rs` and `vpod-bench net-host-path` (which includes this file), so both
//! drive the device alike. Nothing here touches the machine's own network: every tap and
//! socket is made in a namespace that goes away with the thread that made it. The including
//! crate also includes `vmm/src/devices/virtio/test_queue.rs` as `test_queue` at its root.

#![allow(dead_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use crate::test_queue::GuestQueue;
use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vpod_vmm::devices::virtio::net::{
    NetMetrics, NetQueueHandler, Tap, MAX_FRAME_LEN, NET_HDR_LEN, NUM_BUFFERS_OFFSET,
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_MRG_RXBUF,
};
use vpod_vmm::devices::virtio::QueueSignal;

const WRITE: u16 = VRING_DESC_F_WRITE as u16;
pub const QUEUE_SIZE: u16 = 256;
const RX_RING: u64 = 0;
const TX_RING: u64 = 0x1_0000;
const TX_BUFFERS: u64 = 0x10_0000;
const TX_SLOT: u64 = 0x1_1000;
const RX_BUFFERS: u64 = TX_BUFFERS + TX_SLOT * QUEUE_SIZE as u64;
const MEMORY_SIZE: u64 = 64 << 20;
/// The offloads a Linux guest with every feature accepts on receive.
pub const GUEST_OFFLOADS: u64 =
    VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO4 | VIRTIO_NET_F_GUEST_TSO6;

/// Runs `f` on a thread of its own in a new network namespace; `None` when this process may
/// not make one (not root).
pub fn in_new_netns<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare touches no memory; CLONE_NEWNET moves only this thread into
                // a new namespace, which ends when the thread and its descriptors are gone.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    eprintln!(
                        "skipped: cannot make a network namespace: {}",
                        io::Error::last_os_error()
                    );
                    return None;
                }
                // The kernel's own IPv6 chatter on a new link would land in the guest's rx.
                let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
                Some(f())
            })
            .join()
            .expect("netns thread")
    })
}

/// `struct ifreq` with the flags member.
#[repr(C)]
struct InterfaceFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _rest: [u8; 22],
}

fn socket(domain: libc::c_int, kind: libc::c_int, protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket touches no memory; the result is checked.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets interface `name` up.
pub fn set_link_up(name: &str) -> io::Result<()> {
    let control = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut request = InterfaceFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _rest: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    for (call, set) in [(libc::SIOCGIFFLAGS, false), (libc::SIOCSIFFLAGS, true)] {
        if set {
            request.flags |= libc::IFF_UP as libc::c_short;
        }
        // SAFETY: both requests read or write one ifreq, which `request` is, for the call.
        if unsafe { libc::ioctl(control.as_raw_fd(), call, &mut request) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_socket_option<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: `value` is a live T of the size passed, read by the call only.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of!(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The host's end: a raw packet socket bound to the tap. With `vnet_hdr`, each frame sent
/// or received carries a 10-byte `virtio_net_hdr` in front (GSO frames go whole).
pub struct PacketSocket {
    fd: OwnedFd,
}

impl PacketSocket {
    pub fn bind(interface: &str, vnet_hdr: bool) -> io::Result<Self> {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        let fd = socket(libc::AF_PACKET, libc::SOCK_RAW, libc::c_int::from(protocol))?;
        if vnet_hdr {
            set_socket_option(
                &fd,
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                1 as libc::c_int,
            )?;
        }
        set_socket_option(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (64 << 20) as libc::c_int,
        )?;
        set_socket_option(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (64 << 20) as libc::c_int,
        )?;
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        set_socket_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, timeout)?;
        let name = std::ffi::CString::new(interface).map_err(io::Error::other)?;
        // SAFETY: `name` is a valid C string for the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol;
        address.sll_ifindex = index as i32;
        // SAFETY: `address` is a valid sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::addr_of!(address).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    /// Receives one frame that came in from the tap (frames the host sent out are skipped);
    /// fails with `WouldBlock` after two seconds without one.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf` and `from` are valid and writable for the sizes passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    std::ptr::addr_of_mut!(from).cast(),
                    &mut from_len,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                return Ok(n as usize);
            }
        }
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// The ethertype of the test frames that are not TCP (IEEE local experimental).
pub const TEST_ETHERTYPE: u16 = 0x88b5;
pub const GUEST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// A plain Ethernet frame of `len` bytes in all (at least 14), its payload a pattern.
pub fn ethernet_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut frame = Vec::with_capacity(len);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    frame.extend((frame.len()..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    frame
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Header sizes of the TCP/IPv4 test frames.
pub const TCP_HEADERS: usize = 14 + 20 + 20;
/// The segment size a TSO frame is cut into.
pub const MSS: u16 = 1448;

/// A TCP/IPv4 frame with `payload` bytes, its virtio-net header (`hdr_len` bytes: 12 for
/// the device, 10 for a packet socket) in front: with `tso`, one large segment the tap cuts
/// into `MSS`-byte ones, its checksum left to the host (partial, the pseudo-header sum in
/// place).
pub fn tcp_frame(hdr_len: usize, payload: usize, tso: bool) -> Vec<u8> {
    let mut frame = vec![0u8; hdr_len];
    if tso {
        frame[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
        frame[1] = 1; // VIRTIO_NET_HDR_GSO_TCPV4
        frame[2..4].copy_from_slice(&(TCP_HEADERS as u16).to_le_bytes());
        frame[4..6].copy_from_slice(&MSS.to_le_bytes());
        frame[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the TCP header
        frame[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset: TCP's checksum
    }
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&GUEST_MAC);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_len = (20 + 20 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 1]);
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x18; // PSH, ACK
    tcp[14..16].copy_from_slice(&0xffffu16.to_be_bytes());
    // The pseudo-header sum, not complemented: what a driver leaves for the host to finish.
    let pseudo = u32::from(u16::from_be_bytes([10, 0]))
        + u32::from(u16::from_be_bytes([0, 2]))
        + u32::from(u16::from_be_bytes([10, 0]))
        + u32::from(u16::from_be_bytes([0, 1]))
        + 6
        + u32::from(20 + payload as u16);
    let partial = !checksum(&[], pseudo);
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    frame.extend_from_slice(&tcp);
    frame.extend((0..payload).map(|i| (i % 251) as u8));
    frame
}

struct NoSignal;

impl QueueSignal for NoSignal {
    fn signal_used_queue(&self, _queue: u16) {}
}

/// A guest driver's side of the device: its memory, its two queues and the device's queue
/// handler over them. The tx buffers are `QUEUE_SIZE` slots of a frame each; the rx
/// buffers `QUEUE_SIZE` mergeable buffers of `rx_buffer` bytes.
pub struct GuestNic {
    memory: Arc<GuestMemoryMmap>,
    handler: NetQueueHandler<NoSignal>,
    pub metrics: Arc<NetMetrics>,
    rx_buffer: u32,
    tx_next: u16,
    tx_used: u16,
    rx_used: u16,
}

impl GuestNic {
    pub fn new(rx_buffer: u32) -> Self {
        assert!(u64::from(rx_buffer) * u64::from(QUEUE_SIZE) <= MEMORY_SIZE - RX_BUFFERS);
        let memory = Arc::new(
            GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY_SIZE as usize)])
                .expect("guest memory"),
        );
        let (rx, tx) = {
            let rx = GuestQueue::new(&memory, RX_RING, QUEUE_SIZE);
            let tx = GuestQueue::new(&memory, TX_RING, QUEUE_SIZE);
            (rx.create_queue(), tx.create_queue())
        };
        let metrics = Arc::new(NetMetrics::default());
        let nic = GuestNic {
            handler: NetQueueHandler::new(
                rx,
                tx,
                NoSignal,
                GUEST_OFFLOADS | VIRTIO_NET_F_MRG_RXBUF,
                metrics.clone(),
            ),
            memory,
            metrics,
            rx_buffer,
            tx_next: 0,
            tx_used: 0,
            rx_used: 0,
        };
        let buffers: Vec<RawDescriptor> = (0..QUEUE_SIZE).map(|d| nic.rx_descriptor(d)).collect();
        nic.rx_ring()
            .add_desc_chains(&buffers, 0)
            .expect("rx buffers");
        nic
    }

    fn rx_ring(&self) -> GuestQueue<'_> {
        GuestQueue::attach(&self.memory, RX_RING, QUEUE_SIZE)
    }

    fn tx_ring(&self) -> GuestQueue<'_> {
        GuestQueue::attach(&self.memory, TX_RING, QUEUE_SIZE)
    }

    fn rx_descriptor(&self, index: u16) -> RawDescriptor {
        let addr = RX_BUFFERS + u64::from(index) * u64::from(self.rx_buffer);
        RawDescriptor::from(SplitDescriptor::new(addr, self.rx_buffer, WRITE, 0))
    }

    /// Writes `frame` (device header first) into every tx slot, for [`Self::send_slots`].
    pub fn fill_tx_slots(&self, frame: &[u8]) {
        assert!(frame.len() as u64 <= TX_SLOT);
        for slot in 0..u64::from(QUEUE_SIZE) {
            self.memory
                .write_slice(frame, GuestAddress(TX_BUFFERS + slot * TX_SLOT))
                .expect("tx slot");
        }
    }

    /// The guest's memory, for a device to use.
    pub fn memory(&self) -> Arc<GuestMemoryMmap> {
        self.memory.clone()
    }

    /// The rx and tx queues as the driver set them up, for a device to activate with
    /// (instead of this driver's own handler).
    pub fn device_queues(&self) -> Vec<virtio_queue::Queue> {
        vec![self.rx_ring().create_queue(), self.tx_ring().create_queue()]
    }

    /// Queues `count` (at most a queue's worth) of the frames of `len` bytes in the tx slots
    /// and has the device send them to `tap`.
    pub fn send_slots(&mut self, tap: &mut Tap, count: u16, len: u32) {
        self.queue_slots(count, len);
        self.handler.process_tx(&self.memory, tap);
        self.tx_used = self.tx_ring().used_idx();
    }

    /// Queues one frame (device header first) without processing it.
    pub fn queue_frame(&mut self, frame: &[u8]) {
        let slot = u64::from(self.tx_next % QUEUE_SIZE);
        self.memory
            .write_slice(frame, GuestAddress(TX_BUFFERS + slot * TX_SLOT))
            .expect("tx slot");
        self.queue_slots(1, frame.len() as u32);
    }

    /// The tx chains the device has given back.
    pub fn tx_used(&self) -> u16 {
        self.tx_ring().used_idx()
    }

    fn queue_slots(&mut self, count: u16, len: u32) {
        let descriptors: Vec<RawDescriptor> = (0..count.min(QUEUE_SIZE))
            .map(|i| {
                let slot = u64::from(self.tx_next.wrapping_add(i) % QUEUE_SIZE);
                RawDescriptor::from(SplitDescriptor::new(TX_BUFFERS + slot * TX_SLOT, len, 0, 0))
            })
            .collect();
        self.tx_ring()
            .add_desc_chains(&descriptors, self.tx_next % QUEUE_SIZE)
            .expect("tx chains");
        self.tx_next = self.tx_next.wrapping_add(descriptors.len() as u16);
    }

    /// Sends one frame (device header first).
    pub fn send(&mut self, tap: &mut Tap, frame: &[u8]) {
        self.queue_frame(frame);
        self.handler.process_tx(&self.memory, tap);
        self.tx_used = self.tx_ring().used_idx();
    }

    /// Has the device move what the tap holds into rx buffers; returns each frame received
    /// since the last call (device header first, as the used ring and num_buffers say), and
    /// gives the buffers back.
    pub fn receive(&mut self, tap: &mut Tap) -> Vec<Vec<u8>> {
        self.handler.process_rx(&self.memory, tap);
        self.collect_rx()
    }

    /// The frames some device put in the rx buffers since the last call, the buffers given
    /// back.
    pub fn collect_rx(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        self.take_used(|memory, pieces| {
            let mut frame = Vec::new();
            for &(addr, len) in pieces {
                let mut data = vec![0u8; len as usize];
                memory
                    .read_slice(&mut data, GuestAddress(addr))
                    .expect("rx data");
                frame.extend_from_slice(&data);
            }
            frames.push(frame);
        });
        frames
    }

    /// As [`Self::receive`], counting frames and bytes instead of copying them out.
    pub fn receive_counting(&mut self, tap: &mut Tap) -> (u64, u64) {
        self.handler.process_rx(&self.memory, tap);
        let (mut frames, mut bytes) = (0, 0);
        self.take_used(|_, pieces| {
            frames += 1;
            bytes += pieces.iter().map(|&(_, len)| u64::from(len)).sum::<u64>();
        });
        (frames, bytes)
    }

    /// Walks the used rx elements frame by frame (num_buffers of them each), then puts their
    /// buffers back in the avail ring.
    fn take_used(&mut self, mut each_frame: impl FnMut(&GuestMemoryMmap, &[(u64, u32)])) {
        let ring = GuestQueue::attach(&self.memory, RX_RING, QUEUE_SIZE);
        let used = ring.used_idx();
        let mut pieces = Vec::new();
        let mut heads = Vec::new();
        let mut next = self.rx_used;
        while next != used {
            let (head, len) = ring.used_element(next);
            let addr = RX_BUFFERS + u64::from(head) * u64::from(self.rx_buffer);
            let mut count = [0u8; 2];
            self.memory
                .read_slice(&mut count, GuestAddress(addr + NUM_BUFFERS_OFFSET as u64))
                .expect("num_buffers");
            let count = u16::from_le_bytes(count).max(1);
            pieces.clear();
            for n in 0..count {
                let (head, len) = if n == 0 {
                    (head, len)
                } else {
                    ring.used_element(next.wrapping_add(n))
                };
                let addr = RX_BUFFERS + u64::from(head) * u64::from(self.rx_buffer);
                pieces.push((addr, len));
                heads.push(head as u16);
            }
            next = next.wrapping_add(count);
            each_frame(&self.memory, &pieces);
        }
        self.rx_used = next;
        for head in heads {
            let descriptor = self.rx_descriptor(head);
            ring.add_desc_chains(&[descriptor], head)
                .expect("rx buffer back");
        }
    }
}

/// A tap named `name` in this thread's network namespace, up, with the offloads of a guest
/// that takes checksum and TSO frames.
pub fn test_tap(name: &str) -> Tap {
    let tap = Tap::open(name).expect("tap");
    tap.set_offloads(GUEST_OFFLOADS).expect("offloads");
    set_link_up(name).expect("link up");
    tap
}

/// The largest frame the device takes, header included.
pub const LARGEST_FRAME: usize = MAX_FRAME_LEN;
/// The device header's size.
pub const DEVICE_HDR: usize = NET_HDR_LEN;

/// How long a test waits for frames to cross the kernel.
pub const SETTLE: Duration = Duration::from_millis(50);
