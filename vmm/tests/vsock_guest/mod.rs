//! A simulated guest for vpod-vmm's vsock muxer: real unix sockets on the host side (a
//! client that sends `CONNECT <port>`, and a listener at `<socket>_<port>` for a
//! guest-initiated stream), the muxer and its connection state machines (handshakes, credit
//! accounting, bounded buffers, fair scheduling), and a guest driver that feeds the muxer
//! packets as the queue handler would (`VsockBackend`) and keeps its credit up to date.
//!
//! Shared by the correctness test `vsock_host_path.rs` and `vpod-bench vsock-host-path`
//! (which includes this file), so both drive the device the same way.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpod_vmm::devices::virtio::vsock::muxer::{VsockBackend, VsockMuxer};
use vpod_vmm::devices::virtio::vsock::packet::{Op, PacketHeader, TYPE_STREAM};
use vpod_vmm::devices::virtio::vsock::{VsockMetrics, HOST_CID, MAX_PAYLOAD};

const GUEST_CID: u64 = 3;
const GUEST_PORT: u32 = 52;
const HOST_PORT: u32 = 53;
const GUEST_EPHEMERAL_PORT: u32 = 49152;
/// What the simulated guest advertises as its receive buffer (Linux's default).
const GUEST_BUF_ALLOC: u32 = 256 * 1024;
const LIMIT: Duration = Duration::from_secs(120);

/// A packet from the guest.
fn from_guest(op: Op, src_port: u32, dst_port: u32, len: usize, fwd_cnt: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len: len as u32,
        type_: TYPE_STREAM,
        op: op.to_wire(),
        flags: 0,
        buf_alloc: GUEST_BUF_ALLOC,
        fwd_cnt,
    }
}

/// Waits until the muxer's epoll descriptor is readable, or `timeout`.
fn wait_for_host(muxer: &VsockMuxer, timeout: Duration) {
    let mut fd = libc::pollfd {
        fd: muxer.epoll_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as i32) };
}

/// The stream's format, both ways: an 8-byte little-endian length, the bytes, and an
/// 8-byte count back from the receiver.
fn send_counted(stream: &mut UnixStream, bytes: u64) -> std::io::Result<()> {
    let block = vec![0xa5u8; 256 * 1024];
    stream.write_all(&bytes.to_le_bytes())?;
    let mut left = bytes;
    while left > 0 {
        let n = block.len().min(left as usize);
        stream.write_all(&block[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// Host to guest: a host client streams `bytes` to the guest's port; the time from the
/// `OK` to the guest's count.
pub fn host_to_guest(socket: &Path, bytes: u64) -> Duration {
    let metrics = Arc::new(VsockMetrics::default());
    let mut muxer = VsockMuxer::new(socket, GUEST_CID, metrics.clone()).expect("muxer");
    let path = socket.to_path_buf();
    let client = std::thread::spawn(move || {
        let mut stream = UnixStream::connect(&path).expect("connect");
        stream.set_read_timeout(Some(LIMIT)).expect("timeout");
        stream
            .write_all(format!("CONNECT {GUEST_PORT}\n").as_bytes())
            .expect("connect line");
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while stream.read(&mut byte).expect("OK line") == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        assert!(line.starts_with(b"OK "), "the device answered {line:?}");
        let started = Instant::now();
        send_counted(&mut stream, bytes).expect("send");
        let mut answer = [0u8; 8];
        stream.read_exact(&mut answer).expect("the guest's count");
        assert_eq!(u64::from_le_bytes(answer), bytes);
        started.elapsed()
    });

    // The guest: answers the REQUEST, consumes data at once and says so in credit updates.
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let (mut host_port, mut received, mut credited) = (None, 0u64, 0u64);
    let want = bytes + 8;
    let deadline = Instant::now() + LIMIT;
    while received < want {
        assert!(
            Instant::now() < deadline,
            "host to guest stalled at {received} bytes"
        );
        muxer.process_host_events();
        let mut idle = true;
        while let Some((header, len)) = muxer.next_packet_for_guest(&mut buf) {
            idle = false;
            match header.operation() {
                Some(Op::Request) => {
                    host_port = Some(header.src_port);
                    let reply = from_guest(Op::Response, GUEST_PORT, header.src_port, 0, 0);
                    muxer.on_guest_packet(&reply, Op::Response, &[]);
                }
                Some(Op::Rw) => received += len as u64,
                Some(Op::Rst) => panic!("the device reset the connection"),
                _ => {}
            }
        }
        if let Some(port) = host_port {
            if received - credited >= 64 * 1024 || (received == want && credited < want) {
                credited = received;
                let update = from_guest(Op::CreditUpdate, GUEST_PORT, port, 0, received as u32);
                muxer.on_guest_packet(&update, Op::CreditUpdate, &[]);
            }
        }
        if idle {
            wait_for_host(&muxer, Duration::from_millis(5));
        }
    }
    let port = host_port.expect("a connection");
    let count = (received - 8).to_le_bytes();
    let answer = from_guest(Op::Rw, GUEST_PORT, port, count.len(), received as u32);
    muxer.on_guest_packet(&answer, Op::Rw, &count);
    // Let the muxer deliver the answer to the client.
    let started = Instant::now();
    while !client.is_finished() && started.elapsed() < LIMIT {
        muxer.process_host_events();
        while muxer.next_packet_for_guest(&mut buf).is_some() {}
        wait_for_host(&muxer, Duration::from_millis(5));
    }
    assert_eq!(metrics.dropped_total(), 0, "the device dropped packets");
    client.join().expect("client")
}

/// Guest to host: the guest connects to the host's port and streams `bytes`, as fast as
/// the device's credit allows; the time from the host's accept to the last byte.
pub fn guest_to_host(socket: &Path, bytes: u64) -> Duration {
    let metrics = Arc::new(VsockMetrics::default());
    let mut muxer = VsockMuxer::new(socket, GUEST_CID, metrics.clone()).expect("muxer");
    let listener = UnixListener::bind(format!("{}_{HOST_PORT}", socket.display())).expect("listen");
    let host = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream.set_read_timeout(Some(LIMIT)).expect("timeout");
        let started = Instant::now();
        let mut length = [0u8; 8];
        stream.read_exact(&mut length).expect("length");
        let want = u64::from_le_bytes(length);
        let mut block = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        while got < want {
            let n = block.len().min((want - got) as usize);
            match stream.read(&mut block[..n]).expect("read") {
                0 => break,
                n => got += n as u64,
            }
        }
        let elapsed = started.elapsed();
        stream.write_all(&got.to_le_bytes()).expect("count");
        (got, elapsed)
    });

    let port = GUEST_EPHEMERAL_PORT;
    let request = from_guest(Op::Request, port, HOST_PORT, 0, 0);
    muxer.on_guest_packet(&request, Op::Request, &[]);
    let length = bytes.to_le_bytes();
    let payload = vec![0x5au8; MAX_PAYLOAD];
    let total = bytes + 8;
    let (mut sent, mut peer_alloc, mut peer_fwd) = (0u64, 0u64, 0u64);
    let (mut established, mut answered) = (false, false);
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let deadline = Instant::now() + LIMIT;
    while !answered {
        assert!(
            Instant::now() < deadline,
            "guest to host stalled at {sent} bytes"
        );
        muxer.process_host_events();
        let mut idle = true;
        while let Some((header, len)) = muxer.next_packet_for_guest(&mut buf) {
            idle = false;
            peer_alloc = u64::from(header.buf_alloc);
            peer_fwd = u64::from(header.fwd_cnt);
            match header.operation() {
                Some(Op::Response) => established = true,
                Some(Op::Rw) => answered = len == 8,
                Some(Op::Rst) => panic!("the device reset the connection"),
                _ => {}
            }
        }
        // Send while the device's credit lasts: the length first, then the data.
        while established && sent < total {
            let credit = peer_alloc.saturating_sub(sent - peer_fwd.min(sent));
            let data: &[u8] = if sent == 0 {
                &length
            } else {
                &payload[..(total - sent).min(MAX_PAYLOAD as u64) as usize]
            };
            if (data.len() as u64) > credit {
                break;
            }
            idle = false;
            let header = from_guest(Op::Rw, port, HOST_PORT, data.len(), 0);
            muxer.on_guest_packet(&header, Op::Rw, data);
            sent += data.len() as u64;
        }
        if idle {
            wait_for_host(&muxer, Duration::from_millis(5));
        }
    }
    assert_eq!(metrics.dropped_total(), 0, "the device dropped packets");
    let (got, elapsed) = host.join().expect("host");
    assert_eq!(got, bytes);
    elapsed
}
