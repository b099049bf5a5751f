//! The control socket's listener and clients, on their own epoll that the event loop watches.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::control::VmControl;
use super::protocol::{decode_request, encode_reply, error_reply};
use super::MAX_LINE;
use crate::devices::virtio::vsock::muxer::{bind_unix_listener, MuxerError};

/// Most clients at once.
const MAX_CLIENTS: usize = 32;
/// Most reply bytes a client may leave unread before it is dropped.
const MAX_PENDING_OUTPUT: usize = 1 << 20;
const TOKEN_LISTENER: u64 = 0;

/// Errors setting up the control socket.
#[derive(Debug, thiserror::Error)]
pub enum ApiServerError {
    #[error(transparent)]
    Listen(#[from] MuxerError),
    #[error("cannot set up the control socket's epoll")]
    Epoll(#[source] io::Error),
}

struct Client {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    /// Close once the output is written.
    closing: bool,
}

pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    clients: HashMap<u64, Client>,
    next_token: u64,
    pub control: VmControl,
}

impl ApiServer {
    pub fn new(path: &Path, control: VmControl) -> Result<Self, ApiServerError> {
        let listener = bind_unix_listener(path)?;
        let epoll = Epoll::new().map_err(ApiServerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_LISTENER),
            )
            .map_err(ApiServerError::Epoll)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            listener,
            epoll,
            clients: HashMap::new(),
            next_token: TOKEN_LISTENER + 1,
            control,
        })
    }

    /// The descriptor the event loop watches.
    pub fn fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Serves whatever the sockets have, without blocking.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 16];
        loop {
            let count = match self.epoll.wait(0, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            for event in &events[..count] {
                match event.data() {
                    TOKEN_LISTENER => self.accept_clients(),
                    token => self.serve(token),
                }
            }
            if count < events.len() {
                return;
            }
        }
    }

    /// When a graceful stop turns forced.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.control.stop_deadline
    }

    pub fn expire(&mut self, now: Instant) {
        self.control.expire(now);
    }

    fn accept_clients(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            };
            if self.clients.len() >= MAX_CLIENTS || stream.set_nonblocking(true).is_err() {
                continue; // dropped: the client sees the connection close
            }
            let token = self.next_token;
            self.next_token += 1;
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    stream.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, token),
                )
                .is_ok()
            {
                self.clients.insert(
                    token,
                    Client {
                        stream,
                        input: Vec::new(),
                        output: Vec::new(),
                        closing: false,
                    },
                );
            }
        }
    }

    fn drop_client(&mut self, token: u64) {
        if let Some(client) = self.clients.remove(&token) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                client.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    fn serve(&mut self, token: u64) {
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        let mut eof = false;
        let mut buf = [0u8; 4096];
        while !client.closing {
            match client.stream.read(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => client.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return self.drop_client(token),
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
            let reply = match decode_request(line) {
                Ok(request) => match self.control.handle(request) {
                    Ok(reply) => reply,
                    Err(e) => error_reply(&e.to_string()),
                },
                Err(sentence) => error_reply(&sentence),
            };
            if let Some(client) = self.clients.get_mut(&token) {
                client.output.extend(encode_reply(&reply));
            }
        }
        let Some(client) = self.clients.get_mut(&token) else {
            return;
        };
        if too_long {
            let reply = error_reply(&format!("the request is longer than {MAX_LINE} bytes"));
            client.output.extend(encode_reply(&reply));
            client.input.clear();
            client.closing = true;
        }
        if eof {
            client.closing = true;
        }
        self.flush(token);
    }

    fn flush(&mut self, token: u64) {
        let Some(client) = self.clients.get_mut(&token) else {
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
                Err(_) => return self.drop_client(token),
            }
        }
        if client.output.len() > MAX_PENDING_OUTPUT || (client.output.is_empty() && client.closing)
        {
            return self.drop_client(token);
        }
        let events = if client.closing {
            EventSet::OUT
        } else if client.output.is_empty() {
            EventSet::IN
        } else {
            EventSet::IN | EventSet::OUT
        };
        let _ = self.epoll.ctl(
            ControlOperation::Modify,
            client.stream.as_raw_fd(),
            EpollEvent::new(events, token),
        );
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
