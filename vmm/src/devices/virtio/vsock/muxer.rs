//! The host side of vsock: the VM's unix socket, the `CONNECT <port>` handshake, the unix
//! sockets of guest-initiated connections, and the fair choice of which connection sends the
//! guest its next packet.
//!
//! It has its own epoll (nested in the event loop's), so the event loop watches one
//! descriptor however many connections there are. Host sockets are non-blocking and
//! level-triggered; a connection asks only for the events it can act on ([`Connection::
//! interest`]), so a socket the guest has no credit for never spins the loop.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::connection::{Connection, Verdict};
use super::metrics::{DropReason, VsockMetrics};
use super::packet::{reset_reply, Op, PacketHeader};
use super::HOST_CID;

/// How long the guest has to answer a host CONNECT (and a host client to send its line).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most connections (and handshakes) at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Most resets for unknown connections waiting for rx buffers.
const MAX_PENDING_RESETS: usize = 256;
/// Longest `CONNECT <port>\n` line.
const MAX_HANDSHAKE_LINE: usize = 32;
/// First local port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

const TOKEN_LISTENER: u64 = 0;

/// A connection's key: (host-side port, guest-side port).
type Key = (u32, u32);

/// What the handler needs from the host side; a trait so the queue processing is tested and
/// benchmarked against in-memory backends.
pub trait VsockBackend {
    /// A checked packet from the guest.
    fn on_guest_packet(&mut self, header: &PacketHeader, op: Op, payload: &[u8]);
    /// Whether [`Self::next_packet_for_guest`] may return something.
    fn has_packets_for_guest(&self) -> bool;
    /// The next packet for the guest, its payload written into `payload`; returns the header
    /// and the payload length.
    fn next_packet_for_guest(&mut self, payload: &mut [u8]) -> Option<(PacketHeader, usize)>;
}

/// Errors setting up the VM's unix socket.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    #[error("cannot listen on the vsock socket {0}")]
    Bind(PathBuf, #[source] io::Error),
    #[error("cannot set up the vsock epoll")]
    Epoll(#[source] io::Error),
}

/// A host client that has not sent its `CONNECT` line yet.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

struct Tracked {
    connection: Connection<UnixStream>,
    token: u64,
    registered: EventSet,
    /// The host peer hung up: epoll would report it forever, so the socket is not watched.
    hung_up: bool,
    queued: bool,
}

pub struct VsockMuxer {
    uds_path: PathBuf,
    guest_cid: u64,
    listener: UnixListener,
    epoll: Epoll,
    handshakes: HashMap<u64, Handshake>,
    connections: HashMap<Key, Tracked>,
    tokens: HashMap<u64, Key>,
    /// Connections that may have a packet for the guest, in turn.
    ready: VecDeque<Key>,
    resets: VecDeque<PacketHeader>,
    next_token: u64,
    next_local_port: u32,
    metrics: Arc<VsockMetrics>,
}

/// Removes a stale socket file at `path`; refuses anything else.
fn remove_stale_socket(path: &Path) -> Result<(), MuxerError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Ok(_) => Err(MuxerError::NotASocket(path.to_path_buf())),
        Err(_) => Ok(()),
    }
}

/// Binds a non-blocking unix listener at `path`, replacing a stale socket.
pub fn bind_unix_listener(path: &Path) -> Result<UnixListener, MuxerError> {
    remove_stale_socket(path)?;
    let listener = UnixListener::bind(path).map_err(|e| MuxerError::Bind(path.to_path_buf(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| MuxerError::Bind(path.to_path_buf(), e))?;
    Ok(listener)
}

impl VsockMuxer {
    pub fn new(
        uds_path: &Path,
        guest_cid: u64,
        metrics: Arc<VsockMetrics>,
    ) -> Result<Self, MuxerError> {
        let listener = bind_unix_listener(uds_path)?;
        let epoll = Epoll::new().map_err(MuxerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )
            .map_err(MuxerError::Epoll)?;
        Ok(VsockMuxer {
            uds_path: uds_path.to_path_buf(),
            guest_cid,
            listener,
            epoll,
            handshakes: HashMap::new(),
            connections: HashMap::new(),
            tokens: HashMap::new(),
            ready: VecDeque::new(),
            resets: VecDeque::new(),
            next_token: TOKEN_LISTENER + 1,
            next_local_port: FIRST_LOCAL_PORT,
            metrics,
        })
    }

    /// The descriptor the event loop watches.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    pub fn metrics(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }

    /// Connections open now (handshakes excluded).
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    fn update_gauge(&self) {
        self.metrics.connections_active.store(
            self.connections.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn take_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token = self.next_token.wrapping_add(1).max(TOKEN_LISTENER + 1);
        token
    }

    fn watch(&self, fd: RawFd, op: ControlOperation, events: EventSet, token: u64) {
        // Failing to watch a socket only delays it until the next event on the connection.
        let _ = self.epoll.ctl(op, fd, EpollEvent::new(events, token));
    }

    fn queue_reset(&mut self, reset: PacketHeader) {
        if self.resets.len() >= MAX_PENDING_RESETS {
            self.metrics.count_drop(DropReason::QueueFull);
            return;
        }
        self.resets.push_back(reset);
    }

    fn reset_header(&self, key: Key) -> PacketHeader {
        reset_reply(&PacketHeader {
            src_cid: self.guest_cid,
            dst_cid: HOST_CID,
            src_port: key.1,
            dst_port: key.0,
            ..PacketHeader::default()
        })
    }

    /// Forgets a connection; with `reset`, tells the guest.
    fn remove(&mut self, key: Key, reset: bool) {
        if let Some(tracked) = self.connections.remove(&key) {
            self.tokens.remove(&tracked.token);
            if !tracked.registered.is_empty() {
                self.watch(
                    tracked.connection.stream.as_raw_fd(),
                    ControlOperation::Delete,
                    EventSet::empty(),
                    tracked.token,
                );
            }
            if reset {
                let header = self.reset_header(key);
                self.queue_reset(header);
            }
        }
        self.update_gauge();
    }

    /// Re-evaluates a connection after something happened to it: its epoll interest, its
    /// turn for the guest, and whether it is over.
    fn refresh(&mut self, key: Key, verdict: Verdict) {
        match verdict {
            Verdict::Reset => return self.remove(key, true),
            Verdict::Close => return self.remove(key, false),
            Verdict::Keep => {}
        }
        let Some(tracked) = self.connections.get_mut(&key) else {
            return;
        };
        if tracked.connection.is_finished() {
            return self.remove(key, true);
        }
        let wanted = if tracked.hung_up {
            EventSet::empty()
        } else {
            tracked.connection.interest()
        };
        if wanted != tracked.registered {
            let fd = tracked.connection.stream.as_raw_fd();
            let op = if tracked.registered.is_empty() {
                ControlOperation::Add
            } else if wanted.is_empty() {
                ControlOperation::Delete
            } else {
                ControlOperation::Modify
            };
            let token = tracked.token;
            tracked.registered = wanted;
            self.watch(fd, op, wanted, token);
        }
        let Some(tracked) = self.connections.get_mut(&key) else {
            return;
        };
        if !tracked.queued && tracked.connection.has_packet_for_guest() {
            tracked.queued = true;
            self.ready.push_back(key);
        }
    }

    fn insert(&mut self, connection: Connection<UnixStream>, token: u64) {
        let key = (connection.local_port, connection.peer_port);
        self.tokens.insert(token, key);
        self.connections.insert(
            key,
            Tracked {
                connection,
                token,
                registered: EventSet::empty(),
                hung_up: false,
                queued: false,
            },
        );
        self.update_gauge();
        self.refresh(key, Verdict::Keep);
    }

    fn at_capacity(&self) -> bool {
        self.connections.len() + self.handshakes.len() >= MAX_CONNECTIONS
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.at_capacity() || stream.set_nonblocking(true).is_err() {
                self.metrics.count_drop(DropReason::TooManyConnections);
                continue;
            }
            let token = self.take_token();
            self.watch(
                stream.as_raw_fd(),
                ControlOperation::Add,
                EventSet::IN,
                token,
            );
            self.handshakes.insert(
                token,
                Handshake {
                    stream,
                    line: Vec::new(),
                    deadline: Instant::now() + CONNECT_TIMEOUT,
                },
            );
        }
    }

    fn next_free_port(&mut self, peer_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = port.checked_add(1).unwrap_or(FIRST_LOCAL_PORT);
            if !self.connections.contains_key(&(port, peer_port)) {
                return port;
            }
        }
    }

    /// Reads a client's handshake one byte at a time, so no data after the line is consumed.
    fn read_handshake(&mut self, token: u64) {
        let Some(handshake) = self.handshakes.get_mut(&token) else {
            return;
        };
        let mut byte = [0u8; 1];
        let port = loop {
            match handshake.stream.read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break parse_connect(&handshake.line),
                Ok(1) if handshake.line.len() < MAX_HANDSHAKE_LINE => handshake.line.push(byte[0]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                _ => break None,
            }
        };
        let Some(handshake) = self.handshakes.remove(&token) else {
            return;
        };
        self.watch(
            handshake.stream.as_raw_fd(),
            ControlOperation::Delete,
            EventSet::empty(),
            token,
        );
        let Some(port) = port else {
            return; // dropping the stream closes it
        };
        let local = self.next_free_port(port);
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        VsockMetrics::add(&self.metrics.host_connections, 1);
        self.insert(
            Connection::host_initiated(handshake.stream, local, port, deadline),
            token,
        );
    }

    fn on_connection_event(&mut self, token: u64, events: EventSet) {
        let Some(&key) = self.tokens.get(&token) else {
            return;
        };
        let Some(tracked) = self.connections.get_mut(&key) else {
            return;
        };
        let mut verdict = Verdict::Keep;
        if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            tracked.connection.host_readable = true;
        }
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            tracked.hung_up = true;
        }
        if events.intersects(EventSet::OUT | EventSet::HANG_UP | EventSet::ERROR) {
            verdict = tracked.connection.flush_to_host(&self.metrics);
        }
        self.refresh(key, verdict);
    }

    /// Handles whatever the host sockets report, without blocking.
    pub fn process_host_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        loop {
            let count = match self.epoll.wait(0, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for event in &events[..count] {
                let token = event.data();
                if token == TOKEN_LISTENER {
                    self.accept_clients();
                } else if self.handshakes.contains_key(&token) {
                    self.read_handshake(token);
                } else {
                    self.on_connection_event(token, event.event_set());
                }
            }
            if count < events.len() {
                return;
            }
        }
    }

    /// The earliest handshake or connect deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        let handshakes = self.handshakes.values().map(|h| h.deadline);
        let connects = self
            .connections
            .values()
            .filter_map(|t| t.connection.connect_deadline());
        handshakes.chain(connects).min()
    }

    /// Closes handshakes and connects whose time is up.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .handshakes
            .iter()
            .filter(|(_, h)| h.deadline <= now)
            .map(|(&token, _)| token)
            .collect();
        for token in late {
            if let Some(handshake) = self.handshakes.remove(&token) {
                self.watch(
                    handshake.stream.as_raw_fd(),
                    ControlOperation::Delete,
                    EventSet::empty(),
                    token,
                );
                VsockMetrics::add(&self.metrics.connect_timeouts, 1);
            }
        }
        let late: Vec<Key> = self
            .connections
            .iter()
            .filter(|(_, t)| t.connection.connect_deadline().is_some_and(|d| d <= now))
            .map(|(&key, _)| key)
            .collect();
        for key in late {
            VsockMetrics::add(&self.metrics.connect_timeouts, 1);
            self.remove(key, true);
        }
    }

    /// Drops every connection (the driver reset the device).
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.connections.keys().copied().collect();
        for key in keys {
            self.remove(key, false);
        }
        let tokens: Vec<u64> = self.handshakes.keys().copied().collect();
        for token in tokens {
            if let Some(handshake) = self.handshakes.remove(&token) {
                self.watch(
                    handshake.stream.as_raw_fd(),
                    ControlOperation::Delete,
                    EventSet::empty(),
                    token,
                );
            }
        }
        self.ready.clear();
        self.resets.clear();
    }

    /// The guest connects to host port `header.dst_port`: connect to `PATH_<port>`.
    fn connect_to_host(&mut self, header: &PacketHeader) {
        let key = (header.dst_port, header.src_port);
        if self.at_capacity() {
            self.metrics.count_drop(DropReason::TooManyConnections);
            return self.queue_reset(reset_reply(header));
        }
        let path = format!("{}_{}", self.uds_path.display(), header.dst_port);
        let stream = match UnixStream::connect(&path) {
            Ok(stream) if stream.set_nonblocking(true).is_ok() => stream,
            _ => {
                VsockMetrics::add(&self.metrics.connect_refused, 1);
                return self.queue_reset(reset_reply(header));
            }
        };
        VsockMetrics::add(&self.metrics.guest_connections, 1);
        let token = self.take_token();
        let connection = Connection::guest_initiated(stream, header);
        debug_assert_eq!((connection.local_port, connection.peer_port), key);
        self.insert(connection, token);
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// The port of a `CONNECT <port>` line.
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.trim().parse().ok()
}

impl VsockBackend for VsockMuxer {
    fn on_guest_packet(&mut self, header: &PacketHeader, op: Op, payload: &[u8]) {
        let key = (header.dst_port, header.src_port);
        let Some(tracked) = self.connections.get_mut(&key) else {
            match op {
                Op::Request => self.connect_to_host(header),
                Op::Rst => {}
                _ => {
                    self.metrics.count_drop(DropReason::UnknownConnection);
                    self.queue_reset(reset_reply(header));
                }
            }
            return;
        };
        let verdict = tracked
            .connection
            .on_guest_packet(header, op, payload, &self.metrics);
        self.refresh(key, verdict);
    }

    fn has_packets_for_guest(&self) -> bool {
        !self.resets.is_empty() || !self.ready.is_empty()
    }

    fn next_packet_for_guest(&mut self, payload: &mut [u8]) -> Option<(PacketHeader, usize)> {
        if let Some(reset) = self.resets.pop_front() {
            return Some((reset, 0));
        }
        while let Some(key) = self.ready.pop_front() {
            let Some(tracked) = self.connections.get_mut(&key) else {
                continue;
            };
            tracked.queued = false;
            let outgoing = match tracked.connection.next_packet(payload) {
                Ok(Some(outgoing)) => outgoing,
                Ok(None) => {
                    self.refresh(key, Verdict::Keep);
                    continue;
                }
                Err(verdict) => {
                    self.refresh(key, verdict);
                    match self.resets.pop_front() {
                        Some(reset) => return Some((reset, 0)),
                        None => continue,
                    }
                }
            };
            let header = tracked.connection.header(self.guest_cid, outgoing);
            self.refresh(key, Verdict::Keep);
            return Some((header, outgoing.len));
        }
        None
    }
}

#[cfg(test)]
#[path = "muxer_tests.rs"]
mod tests;
