//! One vsock stream: its state machine and both directions of credit-based flow control.
//!
//! A pure type, generic over the host stream, so it is unit-tested on in-memory streams.
//!
//! ```text
//!  host CONNECT:  Connecting --RESPONSE--> Established --(both sides done)--> finished
//!                     |  RST or timeout: closed
//!  guest REQUEST: Established (RESPONSE queued) ...
//! ```
//!
//! Towards the guest the device never sends more than the guest's credit, `buf_alloc -
//! (tx_cnt - fwd_cnt)` from the guest's latest header, and reads the host socket only when
//! it can send what it reads. From the guest it advertises [`CONNECTION_BUFFER`] and keeps
//! what the host socket cannot take yet in a buffer of that size; a guest that sends beyond
//! its credit into a full buffer gets its connection reset.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::num::Wrapping;
use std::time::Instant;

use vmm_sys_util::epoll::EventSet;

use super::metrics::{DropReason, VsockMetrics};
use super::packet::{Op, PacketHeader, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::{CONNECTION_BUFFER, HOST_CID};

/// Unacknowledged consumption after which the device tells the guest its new credit.
const CREDIT_UPDATE_THRESHOLD: u32 = CONNECTION_BUFFER / 4;

/// What the host end of a connection must offer beyond reading and writing.
pub trait HostStream: Read + Write {
    /// Tells the host peer no more data will come (a half close).
    fn shutdown_write(&mut self);
}

impl HostStream for std::os::unix::net::UnixStream {
    fn shutdown_write(&mut self) {
        // The peer may already be gone; then there is nobody left to tell.
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}

/// What the owner must do with a connection after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Send the guest an RST and forget the connection.
    Reset,
    /// Forget the connection without telling the guest (it reset it).
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: the REQUEST is (to be) sent, the guest has not answered yet.
    Connecting {
        deadline: Instant,
        request_sent: bool,
    },
    Established,
}

/// A packet the connection wants to send: its operation, flags and payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outgoing {
    pub op: Op,
    pub flags: u32,
    pub len: usize,
}

pub struct Connection<S> {
    pub stream: S,
    /// The host side's port (the port the guest connected to, or one the device assigned).
    pub local_port: u32,
    /// The guest side's port.
    pub peer_port: u32,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    tx_cnt: Wrapping<u32>,
    /// Guest data not yet written to the host stream; at most [`CONNECTION_BUFFER`] bytes.
    to_host: VecDeque<u8>,
    /// Guest bytes handed to the host stream.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// The `OK <port>\n` line owed to a host client.
    reply: Vec<u8>,
    response_pending: bool,
    credit_update_pending: bool,
    shutdown_pending: bool,
    /// The host stream may have data (or an end) to read.
    pub host_readable: bool,
    /// The host stream ended; the guest was (or will be) told with a SHUTDOWN.
    host_eof: bool,
    guest_shut_send: bool,
    guest_shut_rcv: bool,
    host_write_closed: bool,
}

impl<S: HostStream> Connection<S> {
    fn new(stream: S, local_port: u32, peer_port: u32, state: State) -> Self {
        Connection {
            stream,
            local_port,
            peer_port,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            tx_cnt: Wrapping(0),
            to_host: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            reply: Vec::new(),
            response_pending: false,
            credit_update_pending: false,
            shutdown_pending: false,
            host_readable: false,
            host_eof: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_closed: false,
        }
    }

    /// A host client asked for guest port `peer_port`; the guest must answer by `deadline`.
    pub fn host_initiated(stream: S, local_port: u32, peer_port: u32, deadline: Instant) -> Self {
        let state = State::Connecting {
            deadline,
            request_sent: false,
        };
        Self::new(stream, local_port, peer_port, state)
    }

    /// The guest's REQUEST `request` reached a host listener on `stream`.
    pub fn guest_initiated(stream: S, request: &PacketHeader) -> Self {
        let mut connection = Self::new(
            stream,
            request.dst_port,
            request.src_port,
            State::Established,
        );
        connection.update_peer_credit(request);
        connection.response_pending = true;
        connection.host_readable = true;
        connection
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// When the guest must have answered a host-initiated connection.
    pub fn connect_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Connecting { deadline, .. } => Some(deadline),
            State::Established => None,
        }
    }

    /// Bytes buffered for the host, for bounds checks.
    pub fn buffered(&self) -> usize {
        self.to_host.len() + self.reply.len()
    }

    /// How many payload bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.tx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn update_peer_credit(&mut self, header: &PacketHeader) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_fwd_cnt = Wrapping(header.fwd_cnt);
    }

    /// A header from the host to the guest for `outgoing`.
    pub fn header(&mut self, guest_cid: u64, outgoing: Outgoing) -> PacketHeader {
        self.last_fwd_cnt_sent = self.fwd_cnt;
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: outgoing.len as u32,
            type_: TYPE_STREAM,
            op: outgoing.op.to_wire(),
            flags: outgoing.flags,
            buf_alloc: CONNECTION_BUFFER,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    /// Handles a checked packet from the guest for this connection.
    pub fn on_guest_packet(
        &mut self,
        header: &PacketHeader,
        op: Op,
        payload: &[u8],
        metrics: &VsockMetrics,
    ) -> Verdict {
        if op == Op::Rst {
            return Verdict::Close;
        }
        self.update_peer_credit(header);
        match (op, self.state) {
            (Op::Response, State::Connecting { .. }) => {
                self.state = State::Established;
                self.reply = format!("OK {}\n", self.local_port).into_bytes();
                self.host_readable = true;
                self.flush_to_host(metrics)
            }
            (Op::Rw, State::Established) if !self.guest_shut_send => {
                self.accept_data(payload, metrics)
            }
            (Op::Shutdown, State::Established) => {
                self.guest_shut_rcv |= header.flags & SHUTDOWN_RCV != 0;
                self.guest_shut_send |= header.flags & SHUTDOWN_SEND != 0;
                self.flush_to_host(metrics)
            }
            (Op::CreditUpdate, _) => Verdict::Keep,
            (Op::CreditRequest, State::Established) => {
                self.credit_update_pending = true;
                Verdict::Keep
            }
            _ => {
                metrics.count_drop(DropReason::NotEstablished);
                Verdict::Reset
            }
        }
    }

    fn accept_data(&mut self, payload: &[u8], metrics: &VsockMetrics) -> Verdict {
        let mut rest = payload;
        if self.to_host.is_empty() && self.reply.is_empty() {
            match write_some(&mut self.stream, rest) {
                Ok(written) => {
                    self.fwd_cnt += Wrapping(written as u32);
                    VsockMetrics::add(&metrics.bytes_to_host, written as u64);
                    rest = &rest[written..];
                }
                Err(_) => return Verdict::Reset,
            }
        }
        if self.to_host.len() + rest.len() > CONNECTION_BUFFER as usize {
            metrics.count_drop(DropReason::CreditOverflow);
            return Verdict::Reset;
        }
        self.to_host.extend(rest);
        self.maybe_credit_update();
        Verdict::Keep
    }

    fn maybe_credit_update(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD {
            self.credit_update_pending = true;
        }
    }

    /// Writes what is buffered for the host stream, then passes on a guest half close.
    pub fn flush_to_host(&mut self, metrics: &VsockMetrics) -> Verdict {
        while !self.reply.is_empty() {
            match write_some(&mut self.stream, &self.reply) {
                Ok(0) => return Verdict::Keep,
                Ok(written) => {
                    self.reply.drain(..written);
                }
                Err(_) => return Verdict::Reset,
            }
        }
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match write_some(&mut self.stream, front) {
                Ok(0) => return Verdict::Keep,
                Ok(written) => {
                    self.to_host.drain(..written);
                    self.fwd_cnt += Wrapping(written as u32);
                    VsockMetrics::add(&metrics.bytes_to_host, written as u64);
                }
                Err(_) => return Verdict::Reset,
            }
        }
        self.maybe_credit_update();
        if self.guest_shut_send && !self.host_write_closed {
            self.stream.shutdown_write();
            self.host_write_closed = true;
        }
        Verdict::Keep
    }

    /// Whether both directions are over, so the connection can be reset and forgotten.
    pub fn is_finished(&self) -> bool {
        let flushed = self.to_host.is_empty() && self.reply.is_empty();
        let guest_gone = self.guest_shut_send && self.guest_shut_rcv;
        flushed && self.is_established() && (guest_gone || (self.host_eof && self.guest_shut_send))
    }

    fn may_read_host(&self) -> bool {
        self.is_established() && !self.host_eof && !self.guest_shut_rcv
    }

    /// Whether [`Self::next_packet`] may have something to send.
    pub fn has_packet_for_guest(&self) -> bool {
        matches!(
            self.state,
            State::Connecting {
                request_sent: false,
                ..
            }
        ) || self.response_pending
            || self.credit_update_pending
            || self.shutdown_pending
            || (self.host_readable && self.may_read_host() && self.peer_credit() > 0)
    }

    /// The next packet for the guest, its payload (for RW) read into `buf`.
    pub fn next_packet(&mut self, buf: &mut [u8]) -> Result<Option<Outgoing>, Verdict> {
        let control = |op, flags| Ok(Some(Outgoing { op, flags, len: 0 }));
        if let State::Connecting {
            deadline,
            request_sent: false,
        } = self.state
        {
            self.state = State::Connecting {
                deadline,
                request_sent: true,
            };
            return control(Op::Request, 0);
        }
        if self.response_pending {
            self.response_pending = false;
            return control(Op::Response, 0);
        }
        if self.host_readable && self.may_read_host() {
            let room = (self.peer_credit() as usize).min(buf.len());
            if room > 0 {
                match self.stream.read(&mut buf[..room]) {
                    Ok(0) => {
                        self.host_eof = true;
                        self.shutdown_pending = true;
                    }
                    Ok(read) => {
                        self.tx_cnt += Wrapping(read as u32);
                        self.credit_update_pending = false;
                        return Ok(Some(Outgoing {
                            op: Op::Rw,
                            flags: 0,
                            len: read,
                        }));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.host_readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Err(Verdict::Reset),
                }
            }
        }
        if self.shutdown_pending {
            self.shutdown_pending = false;
            return control(Op::Shutdown, SHUTDOWN_SEND);
        }
        if self.credit_update_pending {
            self.credit_update_pending = false;
            return control(Op::CreditUpdate, 0);
        }
        Ok(None)
    }

    /// The host stream events this connection waits for now.
    pub fn interest(&self) -> EventSet {
        let mut events = EventSet::empty();
        if !self.host_readable && self.may_read_host() {
            events |= EventSet::IN;
        }
        if !self.reply.is_empty() || !self.to_host.is_empty() {
            events |= EventSet::OUT;
        }
        events
    }
}

/// Writes what the stream takes now; 0 when it would block.
fn write_some<S: Write>(stream: &mut S, data: &[u8]) -> io::Result<usize> {
    loop {
        return match stream.write(data) {
            Ok(written) => Ok(written),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => Err(e),
        };
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    /// An in-memory host stream: takes at most `room` bytes, reads from `incoming`.
    #[derive(Default)]
    pub struct FakeStream {
        pub incoming: VecDeque<u8>,
        pub eof: bool,
        pub written: Vec<u8>,
        pub room: usize,
        pub shut: bool,
    }

    impl Read for FakeStream {
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

    impl Write for FakeStream {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room);
            if n == 0 && !buf.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.written.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl HostStream for FakeStream {
        fn shutdown_write(&mut self) {
            self.shut = true;
        }
    }

    pub fn guest_header(op: Op, len: u32, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 5000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op: op.to_wire(),
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn established(room: usize) -> Connection<FakeStream> {
        let stream = FakeStream {
            room,
            ..FakeStream::default()
        };
        let mut c = Connection::guest_initiated(stream, &guest_header(Op::Request, 0, 1000, 0));
        assert_eq!(
            c.next_packet(&mut [0u8; 64]),
            Ok(Some(Outgoing {
                op: Op::Response,
                flags: 0,
                len: 0
            }))
        );
        c
    }

    #[test]
    fn host_connect_sends_request_and_answers_ok_on_response() {
        let metrics = VsockMetrics::default();
        let deadline = Instant::now() + Duration::from_secs(2);
        let stream = FakeStream {
            room: 100,
            ..FakeStream::default()
        };
        let mut c = Connection::host_initiated(stream, 1 << 30, 52, deadline);
        assert_eq!(c.connect_deadline(), Some(deadline));
        let first = c
            .next_packet(&mut [0u8; 16])
            .expect("ok")
            .expect("a packet");
        assert_eq!(first.op, Op::Request);
        assert_eq!(c.next_packet(&mut [0u8; 16]), Ok(None));
        // Data before the response is a protocol error.
        let rw = guest_header(Op::Rw, 1, 100, 0);
        let mut early = Connection::host_initiated(FakeStream::default(), 9, 52, deadline);
        assert_eq!(
            early.on_guest_packet(&rw, Op::Rw, b"x", &metrics),
            Verdict::Reset
        );
        assert_eq!(metrics.dropped(DropReason::NotEstablished), 1);
        let response = guest_header(Op::Response, 0, 100, 0);
        assert_eq!(
            c.on_guest_packet(&response, Op::Response, &[], &metrics),
            Verdict::Keep
        );
        assert_eq!(c.stream.written, b"OK 1073741824\n");
        assert!(c.is_established());
    }

    #[test]
    fn guest_rst_closes_a_pending_connection() {
        let metrics = VsockMetrics::default();
        let mut c = Connection::host_initiated(FakeStream::default(), 9, 52, Instant::now());
        let rst = guest_header(Op::Rst, 0, 0, 0);
        assert_eq!(
            c.on_guest_packet(&rst, Op::Rst, &[], &metrics),
            Verdict::Close
        );
    }

    #[test]
    fn host_data_never_exceeds_the_guest_credit() {
        let mut c = established(0);
        c.stream.incoming.extend(vec![7u8; 5000]);
        let mut buf = [0u8; 4096];
        let first = c.next_packet(&mut buf).expect("ok").expect("data");
        assert_eq!((first.op, first.len), (Op::Rw, 1000)); // buf_alloc 1000, nothing acked
        assert_eq!(c.peer_credit(), 0);
        assert!(!c.has_packet_for_guest());
        assert_eq!(c.next_packet(&mut buf), Ok(None));
        // The guest consumed 600 bytes.
        let update = guest_header(Op::CreditUpdate, 0, 1000, 600);
        let metrics = VsockMetrics::default();
        c.on_guest_packet(&update, Op::CreditUpdate, &[], &metrics);
        assert_eq!(c.peer_credit(), 600);
        let second = c.next_packet(&mut buf).expect("ok").expect("data");
        assert_eq!(second.len, 600);
    }

    #[test]
    fn host_eof_becomes_a_send_shutdown() {
        let mut c = established(0);
        c.stream.eof = true;
        let out = c
            .next_packet(&mut [0u8; 64])
            .expect("ok")
            .expect("shutdown");
        assert_eq!((out.op, out.flags), (Op::Shutdown, SHUTDOWN_SEND));
        assert_eq!(c.interest(), EventSet::empty());
    }

    #[test]
    fn guest_data_waits_in_a_bounded_buffer_and_flows_when_the_host_drains() {
        let metrics = VsockMetrics::default();
        let mut c = established(10);
        let rw = guest_header(Op::Rw, 100, 1000, 0);
        assert_eq!(
            c.on_guest_packet(&rw, Op::Rw, &[1u8; 100], &metrics),
            Verdict::Keep
        );
        assert_eq!((c.stream.written.len(), c.buffered()), (10, 90));
        assert!(c.interest().contains(EventSet::OUT));
        c.stream.room = 1000;
        assert_eq!(c.flush_to_host(&metrics), Verdict::Keep);
        assert_eq!((c.stream.written.len(), c.buffered()), (100, 0));
        assert_eq!(VsockMetrics::get(&metrics.bytes_to_host), 100);
    }

    #[test]
    fn guest_over_its_credit_with_a_stuck_host_is_reset() {
        let metrics = VsockMetrics::default();
        let mut c = established(0);
        let chunk = vec![0u8; 64 * 1024];
        let rw = guest_header(Op::Rw, chunk.len() as u32, 1000, 0);
        for _ in 0..4 {
            assert_eq!(
                c.on_guest_packet(&rw, Op::Rw, &chunk, &metrics),
                Verdict::Keep
            );
        }
        assert_eq!(
            c.on_guest_packet(&rw, Op::Rw, &chunk, &metrics),
            Verdict::Reset
        );
        assert_eq!(metrics.dropped(DropReason::CreditOverflow), 1);
        assert!(c.buffered() <= CONNECTION_BUFFER as usize);
    }

    #[test]
    fn consumption_sends_credit_updates() {
        let metrics = VsockMetrics::default();
        let mut c = established(usize::MAX);
        let chunk = vec![0u8; CREDIT_UPDATE_THRESHOLD as usize];
        let rw = guest_header(Op::Rw, chunk.len() as u32, 1000, 0);
        c.on_guest_packet(&rw, Op::Rw, &chunk, &metrics);
        let out = c.next_packet(&mut [0u8; 8]).expect("ok").expect("update");
        assert_eq!(out.op, Op::CreditUpdate);
        let header = c.header(3, out);
        assert_eq!(header.fwd_cnt, CREDIT_UPDATE_THRESHOLD);
        assert_eq!(header.buf_alloc, CONNECTION_BUFFER);
        let request = guest_header(Op::CreditRequest, 0, 1000, 0);
        c.on_guest_packet(&request, Op::CreditRequest, &[], &metrics);
        assert_eq!(
            c.next_packet(&mut [0u8; 8]).expect("ok").map(|o| o.op),
            Some(Op::CreditUpdate)
        );
    }

    #[test]
    fn guest_close_flushes_then_finishes() {
        let metrics = VsockMetrics::default();
        let mut c = established(0);
        let rw = guest_header(Op::Rw, 3, 1000, 0);
        c.on_guest_packet(&rw, Op::Rw, b"abc", &metrics);
        let mut shutdown = guest_header(Op::Shutdown, 0, 1000, 0);
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        c.on_guest_packet(&shutdown, Op::Shutdown, &[], &metrics);
        assert!(!c.is_finished(), "data still buffered");
        c.stream.room = 10;
        c.flush_to_host(&metrics);
        assert!(c.is_finished());
        assert!(c.stream.shut);
        assert_eq!(c.stream.written, b"abc");
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        (1u16..=7).prop_map(|op| Op::from_wire(op).expect("valid op"))
    }

    proptest! {
        #[test]
        fn random_packets_never_panic_or_overgrow_the_buffers(
            steps in prop::collection::vec(
                (op_strategy(), 0usize..70_000, any::<u32>(), any::<u32>(), any::<u32>(), 0usize..100_000, any::<bool>()),
                1..40,
            ),
        ) {
            let metrics = VsockMetrics::default();
            let mut c = established(0);
            let payload = vec![0x5au8; 70_000];
            let mut buf = vec![0u8; 65_536];
            for (op, len, buf_alloc, fwd_cnt, flags, room, host_data) in steps {
                let mut header = guest_header(op, len as u32, buf_alloc, fwd_cnt);
                header.flags = flags;
                c.stream.room = room;
                if host_data {
                    c.stream.incoming.extend(std::iter::repeat_n(1u8, 3000));
                }
                let credit_before = c.peer_credit();
                match c.on_guest_packet(&header, op, &payload[..len], &metrics) {
                    Verdict::Keep => {}
                    Verdict::Reset | Verdict::Close => break,
                }
                prop_assert!(c.buffered() <= CONNECTION_BUFFER as usize + 32);
                let _ = credit_before;
                let credit = c.peer_credit();
                if let Ok(Some(out)) = c.next_packet(&mut buf) {
                    prop_assert!(out.len <= credit as usize);
                }
                let _ = c.flush_to_host(&metrics);
            }
        }
    }
}
