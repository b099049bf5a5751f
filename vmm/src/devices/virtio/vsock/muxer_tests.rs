//! Tests of the host side of vsock with real unix sockets (no KVM).

use super::*;
use crate::devices::virtio::vsock::packet::{SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use crate::devices::virtio::vsock::CONNECTION_BUFFER;
use proptest::prelude::*;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir() -> TempDir {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "vpod-vsock-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempDir(dir)
}

fn muxer(dir: &TempDir) -> VsockMuxer {
    VsockMuxer::new(&dir.0.join("v.sock"), 3, Arc::new(VsockMetrics::default())).expect("muxer")
}

fn from_guest(op: Op, src_port: u32, dst_port: u32, len: u32) -> PacketHeader {
    PacketHeader {
        src_cid: 3,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        len,
        type_: TYPE_STREAM,
        op: op.to_wire(),
        flags: 0,
        buf_alloc: 1 << 18,
        fwd_cnt: 0,
    }
}

fn next(m: &mut VsockMuxer) -> Option<(PacketHeader, Vec<u8>)> {
    let mut buf = vec![0u8; 65536];
    let (header, len) = m.next_packet_for_guest(&mut buf)?;
    buf.truncate(len);
    Some((header, buf))
}

fn drain(m: &mut VsockMuxer) -> Vec<(PacketHeader, Vec<u8>)> {
    std::iter::from_fn(|| next(m)).collect()
}

fn read_line(stream: &mut UnixStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

fn is_closed(stream: &mut UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    matches!(stream.read(&mut [0u8; 16]), Ok(0))
}

/// A host client connected to guest port 52; returns it and the REQUEST's header.
fn host_connect(m: &mut VsockMuxer, dir: &TempDir) -> (UnixStream, PacketHeader) {
    let mut client = UnixStream::connect(dir.0.join("v.sock")).expect("connect");
    client.write_all(b"CONNECT 52\n").expect("write");
    m.process_host_events();
    m.process_host_events();
    let (request, _) = next(m).expect("a request");
    assert_eq!(request.operation(), Some(Op::Request));
    assert_eq!((request.dst_cid, request.dst_port), (3, 52));
    (client, request)
}

#[test]
fn connect_line_parses() {
    assert_eq!(parse_connect(b"CONNECT 1024"), Some(1024));
    assert_eq!(parse_connect(b"CONNECT 1024\r"), Some(1024));
    assert_eq!(parse_connect(b"CONNECT x"), None);
    assert_eq!(parse_connect(b"connect 1"), None);
    assert_eq!(parse_connect(b"CONNECT 99999999999"), None);
}

#[test]
fn host_connect_is_proxied_both_ways_after_the_response() {
    let dir = temp_dir();
    let mut m = muxer(&dir);
    let (mut client, request) = host_connect(&mut m, &dir);
    let response = from_guest(Op::Response, 52, request.src_port, 0);
    m.on_guest_packet(&response, Op::Response, &[]);
    assert_eq!(read_line(&mut client), format!("OK {}", request.src_port));
    client.write_all(b"ping").expect("write");
    m.process_host_events();
    let packets = drain(&mut m);
    assert_eq!(packets.len(), 1);
    assert_eq!(packets[0].0.operation(), Some(Op::Rw));
    assert_eq!(packets[0].1, b"ping");
    let rw = from_guest(Op::Rw, 52, request.src_port, 4);
    m.on_guest_packet(&rw, Op::Rw, b"pong");
    let mut got = [0u8; 4];
    client.read_exact(&mut got).expect("pong");
    assert_eq!(&got, b"pong");
    assert_eq!(VsockMetrics::get(&m.metrics().bytes_to_host), 4);
    // The guest closes: the host client sees the end, the guest gets its RST.
    let mut shutdown = from_guest(Op::Shutdown, 52, request.src_port, 0);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    m.on_guest_packet(&shutdown, Op::Shutdown, &[]);
    assert!(drain(&mut m)
        .iter()
        .any(|(h, _)| h.operation() == Some(Op::Rst)));
    assert!(is_closed(&mut client));
    assert_eq!(m.connection_count(), 0);
}

#[test]
fn guest_rst_closes_the_host_client() {
    let dir = temp_dir();
    let mut m = muxer(&dir);
    let (mut client, request) = host_connect(&mut m, &dir);
    let rst = from_guest(Op::Rst, 52, request.src_port, 0);
    m.on_guest_packet(&rst, Op::Rst, &[]);
    assert!(is_closed(&mut client));
    assert!(drain(&mut m).is_empty(), "no reset answers a reset");
}

#[test]
fn unanswered_connect_times_out() {
    let dir = temp_dir();
    let mut m = muxer(&dir);
    let (mut client, _) = host_connect(&mut m, &dir);
    let deadline = m.next_deadline().expect("a deadline");
    assert!(deadline <= Instant::now() + CONNECT_TIMEOUT);
    m.expire(deadline);
    assert!(is_closed(&mut client));
    assert_eq!(VsockMetrics::get(&m.metrics().connect_timeouts), 1);
    assert_eq!(
        next(&mut m).map(|(h, _)| h.operation()),
        Some(Some(Op::Rst))
    );
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn bad_connect_line_closes_the_client() {
    let dir = temp_dir();
    let mut m = muxer(&dir);
    let mut client = UnixStream::connect(dir.0.join("v.sock")).expect("connect");
    client.write_all(b"HELLO\n").expect("write");
    m.process_host_events();
    m.process_host_events();
    assert!(is_closed(&mut client));
    assert!(drain(&mut m).is_empty());
}

#[test]
fn guest_connect_reaches_the_port_socket_or_is_reset() {
    let dir = temp_dir();
    let mut m = muxer(&dir);
    let request = from_guest(Op::Request, 7000, 1025, 0);
    m.on_guest_packet(&request, Op::Request, &[]);
    let (reset, _) = next(&mut m).expect("a reset");
    assert_eq!(reset.operation(), Some(Op::Rst));
    assert_eq!((reset.src_port, reset.dst_port), (1025, 7000));
    assert_eq!(VsockMetrics::get(&m.metrics().connect_refused), 1);

    let listener = UnixListener::bind(dir.0.join("v.sock_1025")).expect("bind");
    m.on_guest_packet(&request, Op::Request, &[]);
    let (response, _) = next(&mut m).expect("a response");
    assert_eq!(response.operation(), Some(Op::Response));
    let (mut host, _) = listener.accept().expect("accepted");
    let rw = from_guest(Op::Rw, 7000, 1025, 3);
    m.on_guest_packet(&rw, Op::Rw, b"hey");
    let mut got = [0u8; 3];
    host.read_exact(&mut got).expect("data");
    assert_eq!(&got, b"hey");
    host.write_all(b"back").expect("write");
    m.process_host_events();
    let (data, payload) = next(&mut m).expect("data");
    assert_eq!(
        (data.operation(), payload.as_slice()),
        (Some(Op::Rw), &b"back"[..])
    );
}

#[test]
fn packets_for_unknown_connections_are_reset_and_counted() {
    let dir = temp_dir();
    let mut m = muxer(&dir);
    let rw = from_guest(Op::Rw, 1, 2, 1);
    m.on_guest_packet(&rw, Op::Rw, b"x");
    assert_eq!(
        next(&mut m).map(|(h, _)| h.operation()),
        Some(Some(Op::Rst))
    );
    assert_eq!(m.metrics().dropped(DropReason::UnknownConnection), 1);
    // A flood of them keeps the reset queue bounded.
    for _ in 0..10_000 {
        m.on_guest_packet(&rw, Op::Rw, b"x");
    }
    assert_eq!(drain(&mut m).len(), MAX_PENDING_RESETS);
    assert!(m.metrics().dropped(DropReason::QueueFull) > 0);
}

fn op_strategy() -> impl Strategy<Value = Op> {
    (1u16..=7).prop_map(|op| Op::from_wire(op).expect("valid op"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_guest_packets_never_panic_or_overgrow(
        packets in prop::collection::vec(
            (op_strategy(), 0u32..4, 0u32..4, 0usize..65_536, any::<u32>(), any::<u32>(), any::<u32>()),
            1..60,
        ),
    ) {
        let dir = temp_dir();
        let mut m = muxer(&dir);
        let _listener = UnixListener::bind(dir.0.join("v.sock_1")).expect("bind");
        let payload = vec![7u8; 65_536];
        for (op, src, dst, len, flags, buf_alloc, fwd_cnt) in packets {
            let mut header = from_guest(op, 5000 + src, dst, len as u32);
            header.flags = flags;
            header.buf_alloc = buf_alloc;
            header.fwd_cnt = fwd_cnt;
            m.on_guest_packet(&header, op, &payload[..len]);
            m.process_host_events();
            let _ = drain(&mut m);
            for tracked in m.connections.values() {
                prop_assert!(tracked.connection.buffered() <= CONNECTION_BUFFER as usize + 32);
            }
            prop_assert!(m.resets.len() <= MAX_PENDING_RESETS);
        }
    }
}
