//! The vsock device's guest-facing paths:
//! - `vsock_packet`: the packet header and the rx/tx queue handler on a guest's rings, with
//!   a backend that checks what the handler hands it;
//! - `vsock_muxer`: the same rings against the real muxer and real unix sockets (a host
//!   client's `CONNECT`, a host listener for the guest's connections);
//! - `vsock_connection`: one stream's state machine and credit accounting driven by a
//!   script of guest packets and host socket events.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vpod_vmm::devices::virtio::vsock::connection::{Connection, HostStream, Outgoing, Verdict};
use vpod_vmm::devices::virtio::vsock::handler::VsockQueueHandler;
use vpod_vmm::devices::virtio::vsock::muxer::{VsockBackend, VsockMuxer};
use vpod_vmm::devices::virtio::vsock::packet::{
    check_guest_header, reset_reply, Op, PacketHeader, HEADER_SIZE, TYPE_STREAM,
};
use vpod_vmm::devices::virtio::vsock::{VsockMetrics, CONNECTION_BUFFER, HOST_CID, MAX_PAYLOAD};

use crate::guest::{size_code, DriverImage, GuestInput, Layout, Quiet};
use crate::Seed;

const GUEST_CID: u64 = 3;
/// The port the muxer gives the first host-initiated connection.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

fn handler(layout: &Layout) -> VsockQueueHandler<Quiet> {
    VsockQueueHandler::new(
        [layout.queue(0), layout.queue(1), layout.queue(2)],
        Quiet,
        GUEST_CID,
        Arc::new(VsockMetrics::default()),
    )
}

/// Checks what the handler passes on and hands out scripted packets for the guest.
struct CheckingBackend {
    for_guest: usize,
    payload_len: usize,
}

impl VsockBackend for CheckingBackend {
    fn on_guest_packet(&mut self, header: &PacketHeader, op: Op, payload: &[u8]) {
        assert_eq!(header.operation(), Some(op));
        assert_eq!((header.src_cid, header.dst_cid), (GUEST_CID, HOST_CID));
        assert_eq!(header.type_, TYPE_STREAM);
        assert!(header.len as usize <= MAX_PAYLOAD);
        let expected = if op == Op::Rw { header.len as usize } else { 0 };
        assert_eq!(payload.len(), expected, "payload length for {op:?}");
    }

    fn has_packets_for_guest(&self) -> bool {
        self.for_guest > 0
    }

    fn next_packet_for_guest(&mut self, payload: &mut [u8]) -> Option<(PacketHeader, usize)> {
        self.for_guest = self.for_guest.checked_sub(1)?;
        let len = self.payload_len.min(payload.len());
        payload[..len].fill(0x5a);
        let header = PacketHeader {
            src_cid: HOST_CID,
            dst_cid: GUEST_CID,
            src_port: 1024,
            dst_port: 52,
            len: len as u32,
            type_: TYPE_STREAM,
            op: Op::Rw.to_wire(),
            flags: 0,
            buf_alloc: CONNECTION_BUFFER,
            fwd_cnt: 0,
        };
        Some((header, len))
    }
}

/// Control bytes: 0 the queue size (rx, tx, event), 1 packets for the guest, 2..4 their
/// payload length, 4..8 a chain length for the header check. Then guest memory.
pub fn vsock_packet(data: &[u8]) {
    let input = GuestInput::split(data, 8);
    // The header as the guest wrote it, whatever it is: parsing is total and reversible.
    let mut raw = [0u8; HEADER_SIZE];
    let take = data.len().min(HEADER_SIZE);
    raw[..take].copy_from_slice(&data[..take]);
    let header = PacketHeader::from_bytes(&raw);
    assert_eq!(header.to_bytes(), raw);
    let chain_len = u64::from(u32::from_le_bytes([
        input.byte(4),
        input.byte(5),
        input.byte(6),
        input.byte(7),
    ]));
    if let Ok(op) = check_guest_header(&header, GUEST_CID, chain_len) {
        assert_eq!(header.operation(), Some(op));
        assert!(u64::from(header.len) + HEADER_SIZE as u64 <= chain_len.max(HEADER_SIZE as u64));
        let reset = reset_reply(&header);
        assert_eq!((reset.src_cid, reset.dst_port), (HOST_CID, header.src_port));
    }

    let layout = Layout::new(input.queue_size(0));
    let memory = input.memory();
    let mut backend = CheckingBackend {
        for_guest: usize::from(input.byte(1) & 7),
        payload_len: usize::from(input.u16(2)),
    };
    let mut handler = handler(&layout);
    handler.process_tx(&memory, &mut backend);
    handler.process_rx(&memory, &mut backend);
    handler.process_tx(&memory, &mut backend);
}

/// Control bytes: 0 the queue size, 1 flags (bit 0: a host client sends `CONNECT <port>`,
/// bit 1: a host listener on port 1024 takes the guest's connections and says hello, bit 2:
/// and then hangs up), 2..4 the client's port. Then guest memory.
pub fn vsock_muxer(data: &[u8]) {
    let input = GuestInput::split(data, 4);
    let flags = input.byte(1);
    let layout = Layout::new(input.queue_size(0));
    let memory = input.memory();
    let dir = crate::guest::scratch_path("vsock");
    std::fs::create_dir(&dir).expect("vsock scratch directory");
    let uds = dir.join("v.sock");
    let listener = (flags & 2 != 0).then(|| {
        let listener =
            UnixListener::bind(format!("{}_1024", uds.display())).expect("host listener");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        listener
    });
    let mut muxer =
        VsockMuxer::new(&uds, GUEST_CID, Arc::new(VsockMetrics::default())).expect("muxer");
    let mut client = (flags & 1 != 0).then(|| {
        let mut client = UnixStream::connect(&uds).expect("host client");
        let line = format!("CONNECT {}\n", input.u16(2));
        client.write_all(line.as_bytes()).expect("connect line");
        client
    });
    let mut handler = handler(&layout);
    muxer.process_host_events();
    muxer.process_host_events();
    handler.process_rx(&memory, &mut muxer);
    handler.process_tx(&memory, &mut muxer);
    let mut accepted = Vec::new();
    if let Some(listener) = &listener {
        while let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.write_all(b"hello from the host\n");
            if flags & 4 == 0 {
                accepted.push(stream);
            }
        }
    }
    if let Some(client) = client.as_mut() {
        let _ = client.set_nonblocking(true);
        let _ = client.write_all(b"ping");
        let _ = client.read(&mut [0u8; 64]);
    }
    muxer.process_host_events();
    handler.process_rx(&memory, &mut muxer);
    handler.process_tx(&memory, &mut muxer);
    muxer.process_host_events();
    handler.process_rx(&memory, &mut muxer);
    assert!(muxer.connection_count() <= 2);
    muxer.expire(Instant::now() + Duration::from_secs(3));
    muxer.reset_all();
    assert_eq!(muxer.connection_count(), 0);
    drop((muxer, listener, client, accepted));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A host socket as a script sets it up: bytes to read, room to write, an end.
#[derive(Default)]
struct ScriptStream {
    incoming: VecDeque<u8>,
    eof: bool,
    room: usize,
    broken: bool,
    shut: bool,
}

impl Read for ScriptStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.incoming.is_empty() {
            return if self.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = buf.len().min(self.incoming.len());
        for (slot, byte) in buf.iter_mut().zip(self.incoming.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for ScriptStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        assert!(!self.shut, "a write after the half close");
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl HostStream for ScriptStream {
    fn shutdown_write(&mut self) {
        self.shut = true;
    }
}

/// Reads a script; past its end every read is zero.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn u8(&mut self) -> u8 {
        let Some((&first, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        first
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
}

/// Opcodes of the connection script.
const GUEST_PACKET: u8 = 0;
const NEXT_PACKET: u8 = 1;
const FLUSH: u8 = 2;
const HOST_DATA: u8 = 3;
const HOST_EOF: u8 = 4;
const HOST_ROOM: u8 = 5;
const QUERY: u8 = 6;
const OPCODES: u8 = 7;

/// The script: byte 0 (bit 0: host-initiated, else guest-initiated with the buf_alloc in
/// bytes 1..5), then opcodes with their arguments (see the `match`).
pub fn vsock_connection(data: &[u8]) {
    let metrics = VsockMetrics::default();
    let mut script = Script(data);
    let stream = ScriptStream {
        room: 4096,
        ..ScriptStream::default()
    };
    let mut connection = if script.u8() & 1 != 0 {
        let deadline = Instant::now() + Duration::from_secs(2);
        Connection::host_initiated(stream, FIRST_LOCAL_PORT, 52, deadline)
    } else {
        let request = guest_header(Op::Request, 0, 0, script.u32(), 0);
        Connection::guest_initiated(stream, &request)
    };
    let mut payload = vec![0u8; MAX_PAYLOAD];
    for _ in 0..512 {
        if script.0.is_empty() {
            break;
        }
        let verdict = match script.u8() % OPCODES {
            GUEST_PACKET => {
                let Some(op) = Op::from_wire(u16::from(script.u8() % 8)) else {
                    continue;
                };
                let flags = u32::from(script.u8() & 3);
                let len = if op == Op::Rw {
                    usize::from(script.u16())
                } else {
                    0
                };
                let header = guest_header(op, len as u32, flags, script.u32(), script.u32());
                payload[..len].fill(0x33);
                connection.on_guest_packet(&header, op, &payload[..len], &metrics)
            }
            NEXT_PACKET => {
                let room = usize::from(script.u16()).min(MAX_PAYLOAD);
                let credit = connection.peer_credit() as usize;
                match connection.next_packet(&mut payload[..room]) {
                    Ok(Some(outgoing)) => {
                        check_outgoing(&mut connection, outgoing, credit, room);
                        Verdict::Keep
                    }
                    Ok(None) => Verdict::Keep,
                    Err(verdict) => verdict,
                }
            }
            FLUSH => connection.flush_to_host(&metrics),
            HOST_DATA => {
                let n = usize::from(script.u16());
                connection.stream.incoming.extend((0..n).map(|i| i as u8));
                connection.host_readable = true;
                Verdict::Keep
            }
            HOST_EOF => {
                connection.stream.eof = true;
                connection.host_readable = true;
                Verdict::Keep
            }
            HOST_ROOM => {
                let room = script.u8();
                connection.stream.broken = room == 0xff;
                connection.stream.room = usize::from(room) * 1024;
                Verdict::Keep
            }
            _ => {
                let _ = connection.interest();
                let _ = connection.is_finished();
                let _ = connection.has_packet_for_guest();
                let _ = connection.connect_deadline();
                Verdict::Keep
            }
        };
        assert!(
            connection.buffered() <= CONNECTION_BUFFER as usize + 32,
            "{} bytes buffered for the host",
            connection.buffered()
        );
        if verdict != Verdict::Keep {
            break;
        }
    }
}

fn check_outgoing(
    connection: &mut Connection<ScriptStream>,
    outgoing: Outgoing,
    credit: usize,
    room: usize,
) {
    if outgoing.op == Op::Rw {
        assert!(outgoing.len > 0 && outgoing.len <= room.min(credit));
    } else {
        assert_eq!(outgoing.len, 0);
    }
    let header = connection.header(GUEST_CID, outgoing);
    assert_eq!(header.len as usize, outgoing.len);
    assert_eq!((header.src_cid, header.dst_cid), (HOST_CID, GUEST_CID));
}

fn guest_header(op: Op, len: u32, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
    PacketHeader {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port: 52,
        dst_port: 1024,
        len,
        type_: TYPE_STREAM,
        op: op.to_wire(),
        flags,
        buf_alloc,
        fwd_cnt,
    }
}

/// Queues one tx packet (header, then payload in a second buffer when there is one).
fn tx_packet(image: &mut DriverImage, at: u64, header: &PacketHeader, payload: &[u8]) {
    image.write(at, &header.to_bytes());
    if payload.is_empty() {
        image.chain(1, &[(at, HEADER_SIZE as u32, false)]);
    } else {
        image.write(at + 0x40, payload);
        image.chain(
            1,
            &[
                (at, HEADER_SIZE as u32, false),
                (at + 0x40, payload.len() as u32, false),
            ],
        );
    }
}

fn rx_buffers(image: &mut DriverImage, at: u64, count: u64) {
    for i in 0..count {
        image.chain(0, &[(at + 0x1000 * i, 0x1000, true)]);
    }
}

pub fn packet_seeds() -> Vec<Seed> {
    let size = 16;
    let mut seeds = Vec::new();
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(3);
    tx_packet(
        &mut image,
        base,
        &guest_header(Op::Request, 0, 0, 1 << 18, 0),
        &[],
    );
    let hello = b"hello from the guest";
    let rw = guest_header(Op::Rw, hello.len() as u32, 0, 1 << 18, 0);
    tx_packet(&mut image, base + 0x100, &rw, hello);
    tx_packet(
        &mut image,
        base + 0x200,
        &guest_header(Op::Shutdown, 0, 3, 1 << 18, 0),
        &[],
    );
    rx_buffers(&mut image, base + 0x1000, 2);
    let chain_len = 64u32.to_le_bytes();
    let control = [
        size_code(size),
        2,
        100,
        0,
        chain_len[0],
        chain_len[1],
        chain_len[2],
        chain_len[3],
    ];
    seeds.push(("request-rw-shutdown", image.into_input(&control)));
    // Hostile headers: a length past the chain, the wrong CID, an unknown op, a bad type.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(3);
    tx_packet(
        &mut image,
        base,
        &guest_header(Op::Rw, 4096, 0, 0, 0),
        b"short",
    );
    let mut wrong_cid = guest_header(Op::Request, 0, 0, 0, 0);
    wrong_cid.src_cid = 7;
    tx_packet(&mut image, base + 0x100, &wrong_cid, &[]);
    let mut unknown_op = guest_header(Op::Rw, 0, 0, 0, 0);
    unknown_op.op = 99;
    tx_packet(&mut image, base + 0x200, &unknown_op, &[]);
    let mut bad_type = guest_header(Op::Rw, 0, 0, 0, 0);
    bad_type.type_ = 2;
    tx_packet(&mut image, base + 0x300, &bad_type, &[]);
    // A header split over two buffers, and an rx buffer too small for a header.
    let split = guest_header(Op::CreditRequest, 0, 0, 0, 0).to_bytes();
    image.write(base + 0x400, &split[..20]);
    image.write(base + 0x500, &split[20..]);
    image.chain(1, &[(base + 0x400, 20, false), (base + 0x500, 24, false)]);
    image.chain(0, &[(base + 0x1000, 16, true)]);
    seeds.push((
        "hostile-headers",
        image.into_input(&[size_code(size), 1, 0, 1, 0, 0, 0, 0]),
    ));
    seeds
}

pub fn muxer_seeds() -> Vec<Seed> {
    let size = 16;
    let mut seeds = Vec::new();
    // The guest connects to host port 1024 and sends data; the host says hello.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(3);
    tx_packet(
        &mut image,
        base,
        &guest_header(Op::Request, 0, 0, 1 << 18, 0),
        &[],
    );
    let data = b"GET / HTTP/1.0\r\n\r\n";
    let rw = guest_header(Op::Rw, data.len() as u32, 0, 1 << 18, 0);
    tx_packet(&mut image, base + 0x100, &rw, data);
    rx_buffers(&mut image, base + 0x1000, 4);
    seeds.push((
        "guest-connects",
        image.into_input(&[size_code(size), 2, 0, 0]),
    ));
    // A host client connects to guest port 52; the guest answers and closes.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(3);
    let mut response = guest_header(Op::Response, 0, 0, 1 << 18, 0);
    response.dst_port = FIRST_LOCAL_PORT;
    tx_packet(&mut image, base, &response, &[]);
    let mut rst = guest_header(Op::Rst, 0, 0, 0, 0);
    rst.dst_port = FIRST_LOCAL_PORT;
    tx_packet(&mut image, base + 0x100, &rst, &[]);
    rx_buffers(&mut image, base + 0x1000, 4);
    seeds.push((
        "host-connects",
        image.into_input(&[size_code(size), 1, 52, 0]),
    ));
    // A packet for a connection nobody made, with both a client and a listener that hangs up.
    let mut image = DriverImage::new(size);
    let base = image.layout.data_base(3);
    tx_packet(&mut image, base, &guest_header(Op::Rw, 3, 0, 0, 0), b"abc");
    tx_packet(
        &mut image,
        base + 0x100,
        &guest_header(Op::Request, 0, 0, 0, 0),
        &[],
    );
    rx_buffers(&mut image, base + 0x1000, 3);
    seeds.push((
        "unknown-connection",
        image.into_input(&[size_code(size), 7, 53, 0]),
    ));
    seeds
}

pub fn connection_seeds() -> Vec<Seed> {
    let op = |op: Op| (op.to_wire() % 8) as u8;
    let mut guest = vec![0u8];
    guest.extend_from_slice(&(1u32 << 18).to_le_bytes());
    guest.extend_from_slice(&[NEXT_PACKET, 0, 0x10]); // the RESPONSE
    guest.extend_from_slice(&[GUEST_PACKET, op(Op::Rw), 0, 10, 0]);
    guest.extend_from_slice(&(1u32 << 18).to_le_bytes());
    guest.extend_from_slice(&0u32.to_le_bytes());
    guest.extend_from_slice(&[HOST_DATA, 0, 2, NEXT_PACKET, 0, 1, HOST_ROOM, 0, FLUSH]);
    guest.extend_from_slice(&[HOST_EOF, NEXT_PACKET, 0, 1, NEXT_PACKET, 0, 1, QUERY]);
    let mut host = vec![1u8, NEXT_PACKET, 0, 0x10, GUEST_PACKET, op(Op::Response), 0];
    host.extend_from_slice(&4096u32.to_le_bytes());
    host.extend_from_slice(&0u32.to_le_bytes());
    host.extend_from_slice(&[
        HOST_DATA,
        0,
        0x20,
        NEXT_PACKET,
        0xff,
        0xff,
        NEXT_PACKET,
        0,
        0x10,
    ]);
    host.extend_from_slice(&[GUEST_PACKET, op(Op::Shutdown), 3]);
    host.extend_from_slice(&4096u32.to_le_bytes());
    host.extend_from_slice(&4096u32.to_le_bytes());
    host.extend_from_slice(&[FLUSH, QUERY]);
    let mut flood = vec![0u8, 0, 0, 4, 0, HOST_ROOM, 0];
    for _ in 0..6 {
        flood.extend_from_slice(&[GUEST_PACKET, op(Op::Rw), 0, 0xff, 0xff]);
        flood.extend_from_slice(&(1u32 << 18).to_le_bytes());
        flood.extend_from_slice(&0u32.to_le_bytes());
    }
    vec![
        ("guest-initiated", guest),
        ("host-initiated", host),
        ("credit-overflow", flood),
    ]
}
