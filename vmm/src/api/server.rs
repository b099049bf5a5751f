//! The control socket's listener and clients, each registered with the event loop by the
//! server itself, and the timer that turns a graceful stop into a forced one.

use std::collections::HashMap;
use std::io::{self, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use vpod_proto::vmm::{decode_request, encode_line, Reply, MAX_FDS_PER_REQUEST};

use super::control::{PassedFds, VmControl};
use super::MAX_LINE;
use crate::devices::virtio::vsock::muxer::{bind_unix_listener, MuxerError};
use crate::event_loop::{DeadlineTimer, EventOps, EventSet, Events, Subscriber};

/// Most clients at once.
const MAX_CLIENTS: usize = 32;
/// Most reply bytes a client may leave unread before it is dropped.
const MAX_PENDING_OUTPUT: usize = 1 << 20;

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error(transparent)]
    Listen(#[from] MuxerError),
    #[error("cannot create the control socket's timer")]
    Timer(#[source] io::Error),
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Descriptors that came with the input, for the requests that name them.
    fds: PassedFds,
    /// Close once the output is written.
    closing: bool,
}

/// Reads what a client sent, keeping the descriptors that came with it.
fn receive(stream: &UnixStream, buf: &mut [u8], fds: &mut PassedFds) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_REQUEST))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    // More descriptors than the buffer holds are closed by the kernel (MSG_CTRUNC).
    let received = recvmsg(
        stream,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            passed.for_each(|fd| fds.push(fd));
        }
    }
    Ok(received.bytes)
}

pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    clients: HashMap<RawFd, Client>,
    /// Armed while a graceful stop waits to be forced.
    stop_timer: DeadlineTimer,
    pub control: VmControl,
}

impl ApiServer {
    pub fn new(path: &Path, control: VmControl) -> Result<Self, ApiServerError> {
        let listener = bind_unix_listener(path)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            listener,
            clients: HashMap::new(),
            stop_timer: DeadlineTimer::new().map_err(ApiServerError::Timer)?,
            control,
        })
    }

    fn accept_clients(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue; // dropped: the client sees the connection close
            }
            if ops.add(Events::new(&stream, EventSet::IN)).is_ok() {
                self.clients.insert(
                    stream.as_raw_fd(),
                    Client {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        fds: PassedFds::default(),
                        closing: false,
                    },
                );
            }
        }
    }

    fn drop_client(&mut self, client_fd: RawFd, ops: &mut EventOps) {
        if let Some(client) = self.clients.remove(&client_fd) {
            // Unwatched before it closes, or its number could not be watched again.
            let _ = ops.remove(Events::empty(&client.stream));
        }
    }

    fn serve(&mut self, client_fd: RawFd, ops: &mut EventOps) {
        let Some(client) = self.clients.get_mut(&client_fd) else {
            return;
        };
        let mut eof = false;
        let mut buf = [0u8; 4096];
        while !client.closing {
            match receive(&client.stream, &mut buf, &mut client.fds) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => client.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return self.drop_client(client_fd, ops),
            }
            if client.input.len() > MAX_LINE && !client.input[..MAX_LINE].contains(&b'\n') {
                break;
            }
        }
        // Answer every complete line.
        let mut lines = Vec::new();
        while let Some(end) = client.input.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = client.input.drain(..=end).collect();
            lines.push(line);
        }
        let too_long = client.input.len() > MAX_LINE;
        for line in lines {
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let Some(client) = self.clients.get_mut(&client_fd) else {
                return;
            };
            let reply = match decode_request(line) {
                Ok(request) => match self.control.handle(request, &mut client.fds) {
                    Ok(reply) => reply,
                    Err(e) => Reply::error(e.to_string()),
                },
                Err(e) => Reply::error(e.to_string()),
            };
            client.output.extend(encode_line(&reply));
        }
        let Some(client) = self.clients.get_mut(&client_fd) else {
            return;
        };
        if too_long {
            let reply = Reply::error(format!("the request is longer than {MAX_LINE} bytes"));
            client.output.extend(encode_line(&reply));
            client.input.clear();
            client.closing = true;
        }
        if eof {
            client.closing = true;
        }
        self.flush(client_fd, ops);
    }

    fn flush(&mut self, client_fd: RawFd, ops: &mut EventOps) {
        let Some(client) = self.clients.get_mut(&client_fd) else {
            return;
        };
        while !client.output.is_empty() {
            match client.stream.write(&client.output) {
                Ok(0) => break,
                Ok(n) => {
                    client.output.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return self.drop_client(client_fd, ops),
            }
        }
        if client.output.len() > MAX_PENDING_OUTPUT || (client.output.is_empty() && client.closing)
        {
            return self.drop_client(client_fd, ops);
        }
        let events = if client.closing {
            EventSet::OUT
        } else if client.output.is_empty() {
            EventSet::IN
        } else {
            EventSet::IN | EventSet::OUT
        };
        let _ = ops.modify(Events::new(&client.stream, events));
    }
}

impl Subscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) -> Result<(), event_manager::Error> {
        ops.add(Events::new(&self.listener, EventSet::IN))?;
        ops.add(Events::new(&self.stop_timer, EventSet::IN))
    }

    /// Serves whatever the sockets have, without blocking, and forces a graceful stop whose
    /// time is up.
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept_clients(ops);
        } else if fd == self.stop_timer.as_raw_fd() {
            self.stop_timer.fired();
            self.control.expire(Instant::now());
        } else {
            self.serve(fd, ops);
        }
        // A stop request may have set a deadline. Setting a valid timerfd does not fail; if
        // it did, the VM would stop when the guest ends rather than at the deadline.
        let _ = self.stop_timer.set(self.control.stop_deadline);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
