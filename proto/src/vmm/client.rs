//! A blocking client of the VMM's control socket: one connection per request, each bounded
//! by a timeout, and descriptors passed with a request over SCM_RIGHTS.

use std::io::{self, BufRead, BufReader, IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use serde::de::DeserializeOwned;

use super::api::{
    decode_reply, encode_line, AttachDisk, AttachDiskReply, BalloonReply, BootTimeReply,
    DetachDiskReply, MetricsReply, ReplyError, Request, StateReply, StopReply, MAX_FDS_PER_REQUEST,
};
use super::config::DiskSource;

/// How long one request may take when the client does not say.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a control request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the VMM's control socket {0}")]
    Connect(PathBuf, #[source] io::Error),
    #[error("cannot exchange a request over the VMM's control socket {0}")]
    Io(PathBuf, #[source] io::Error),
    #[error("the VMM's control socket {0} did not answer within {1:?}")]
    Timeout(PathBuf, Duration),
    #[error("the VMM closed its control socket {0} without answering")]
    Closed(PathBuf),
    #[error("cannot pass {0} descriptors with one request")]
    TooManyDescriptors(usize),
    #[error(transparent)]
    Reply(#[from] ReplyError),
}

/// The control socket of one VMM.
#[derive(Debug, Clone)]
pub struct VmmClient {
    path: PathBuf,
    timeout: Duration,
}

impl VmmClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        VmmClient {
            path: path.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The same socket with another bound on each request's writing and reading.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends `request`, with `fds` attached to its line, and decodes the reply `R`; an
    /// `{"error": ...}` reply is [`ReplyError::Refused`].
    pub fn call<R: DeserializeOwned>(
        &self,
        request: &Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<R, ClientError> {
        let line = self.exchange(&encode_line(request), fds)?;
        Ok(decode_reply(request.op(), &line)?)
    }

    pub fn state(&self) -> Result<StateReply, ClientError> {
        self.call(&Request::State, &[])
    }

    pub fn boot_time(&self) -> Result<BootTimeReply, ClientError> {
        self.call(&Request::BootTime, &[])
    }

    pub fn metrics(&self) -> Result<MetricsReply, ClientError> {
        self.call(&Request::Metrics, &[])
    }

    /// Attaches a disk the VMM opens itself (`source` is a path).
    pub fn attach_disk(&self, request: AttachDisk) -> Result<AttachDiskReply, ClientError> {
        self.call(&Request::AttachDisk(request), &[])
    }

    /// Attaches the file behind `file`, passed over the socket, so a VMM that cannot see
    /// the file's path still gets it. The VMM refuses a writable attach of a descriptor
    /// opened read-only.
    pub fn attach_disk_fd(
        &self,
        file: BorrowedFd<'_>,
        slot: Option<u32>,
        read_only: bool,
        serial: impl Into<String>,
    ) -> Result<AttachDiskReply, ClientError> {
        let request = AttachDisk {
            slot,
            source: DiskSource::Fd(0),
            read_only,
            serial: serial.into(),
        };
        self.call(&Request::AttachDisk(request), &[file])
    }

    pub fn detach_slot(&self, slot: u32) -> Result<DetachDiskReply, ClientError> {
        let request = Request::DetachDisk {
            slot: Some(slot),
            serial: None,
        };
        self.call(&request, &[])
    }

    /// The balloon's state and the guest's last memory stats; also asks the guest for
    /// fresh ones.
    pub fn balloon(&self) -> Result<BalloonReply, ClientError> {
        self.call(&Request::Balloon, &[])
    }

    /// Sets the balloon's target: the memory the guest should give up.
    pub fn set_balloon(&self, target_mib: u64) -> Result<BalloonReply, ClientError> {
        self.call(&Request::SetBalloon { target_mib }, &[])
    }

    /// Stops the VM: at once with a zero `timeout`, else when the guest ends by itself or
    /// the timeout passes.
    pub fn stop(&self, timeout: Duration) -> Result<StopReply, ClientError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self.call(&Request::Stop { timeout_ms }, &[])
    }

    /// Writes one line (its descriptors with its first bytes) and reads one line back.
    fn exchange(&self, line: &[u8], fds: &[BorrowedFd<'_>]) -> Result<String, ClientError> {
        if fds.len() > MAX_FDS_PER_REQUEST {
            return Err(ClientError::TooManyDescriptors(fds.len()));
        }
        let stream = UnixStream::connect(&self.path)
            .map_err(|e| ClientError::Connect(self.path.clone(), e))?;
        let io_error = |e: io::Error| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                ClientError::Timeout(self.path.clone(), self.timeout)
            }
            _ => ClientError::Io(self.path.clone(), e),
        };
        stream
            .set_write_timeout(Some(self.timeout))
            .and_then(|()| stream.set_read_timeout(Some(self.timeout)))
            .map_err(io_error)?;
        let sent = if fds.is_empty() {
            0
        } else {
            send_with_fds(&stream, line, fds).map_err(io_error)?
        };
        (&stream).write_all(&line[sent..]).map_err(io_error)?;
        let mut reply = String::new();
        let read = BufReader::new(&stream)
            .read_line(&mut reply)
            .map_err(io_error)?;
        if read == 0 {
            return Err(ClientError::Closed(self.path.clone()));
        }
        Ok(reply)
    }
}

/// Sends the start of `bytes` with `fds` (at most [`MAX_FDS_PER_REQUEST`]) attached; how many bytes went.
fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_REQUEST))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("the descriptors do not fit one message"));
    }
    Ok(sendmsg(
        stream,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::net::UnixListener;

    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

    use crate::vmm::api::{decode_request, encode_line, Reply, VmState};

    fn temp_socket(name: &str) -> (PathBuf, UnixListener) {
        let path =
            std::env::temp_dir().join(format!("vpod-proto-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        (path, listener)
    }

    /// Serves one connection: reads a line (and any descriptors), answers `reply`.
    fn serve_once(
        listener: UnixListener,
        reply: Reply,
    ) -> std::thread::JoinHandle<(Request, Vec<OwnedFd>)> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut line = Vec::new();
            let mut fds = Vec::new();
            while !line.ends_with(b"\n") {
                let mut buf = [0u8; 256];
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_REQUEST))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let got = recvmsg(
                    &stream,
                    &mut [io::IoSliceMut::new(&mut buf)],
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .expect("recvmsg");
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(received) = message {
                        fds.extend(received);
                    }
                }
                assert!(got.bytes > 0, "the client hung up");
                line.extend_from_slice(&buf[..got.bytes]);
            }
            (&stream).write_all(&encode_line(&reply)).expect("reply");
            let request = decode_request(&line[..line.len() - 1]).expect("a request");
            (request, fds)
        })
    }

    #[test]
    fn a_request_gets_its_typed_reply() {
        let (path, listener) = temp_socket("state");
        let state = StateReply {
            state: VmState::Running,
            vcpus: 2,
            memory_mib: 256,
            uptime_ms: 3,
        };
        let server = serve_once(listener, Reply::State(state.clone()));
        let reply = VmmClient::new(&path).state().expect("a state");
        let (request, fds) = server.join().expect("server");
        assert_eq!((request, fds.len()), (Request::State, 0));
        assert_eq!(reply, state);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_descriptor_travels_with_its_request() {
        let (path, listener) = temp_socket("fd");
        let disk = std::env::temp_dir().join(format!("vpod-proto-disk-{}", std::process::id()));
        std::fs::write(&disk, b"disk bytes").expect("disk");
        let file = std::fs::File::open(&disk).expect("open");
        let server = serve_once(
            listener,
            Reply::AttachDisk(AttachDiskReply {
                ok: true,
                slot: 0,
                capacity_bytes: 10,
                serial: "l0".into(),
                read_only: true,
            }),
        );
        let reply = VmmClient::new(&path)
            .attach_disk_fd(file.as_fd(), None, true, "l0")
            .expect("attached");
        let (request, fds) = server.join().expect("server");
        assert_eq!(reply.slot, 0);
        match request {
            Request::AttachDisk(attach) => assert_eq!(attach.source, DiskSource::Fd(0)),
            other => panic!("expected attach_disk, got {other:?}"),
        }
        assert_eq!(fds.len(), 1);
        let mut received = std::fs::File::from(fds.into_iter().next().expect("one"));
        let mut text = String::new();
        received.read_to_string(&mut text).expect("readable");
        assert_eq!(text, "disk bytes");
        let _ = std::fs::remove_file(&disk);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn refusals_silence_and_missing_sockets_are_errors() {
        let (path, listener) = temp_socket("refused");
        let server = serve_once(listener, Reply::error("the slot is empty"));
        let error = VmmClient::new(&path).detach_slot(1).expect_err("refused");
        server.join().expect("server");
        assert_eq!(
            error.to_string(),
            "the VMM refused detach_disk: the slot is empty"
        );

        let (path, listener) = temp_socket("silent");
        let silent = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            std::thread::sleep(Duration::from_millis(300));
            drop(stream);
        });
        let error = VmmClient::new(&path)
            .with_timeout(Duration::from_millis(50))
            .metrics()
            .expect_err("no answer");
        assert!(matches!(error, ClientError::Timeout(..)), "{error}");
        silent.join().expect("silent");
        let _ = std::fs::remove_file(&path);

        let error = VmmClient::new("/nonexistent/vpod/api.sock")
            .state()
            .expect_err("no socket");
        assert!(matches!(error, ClientError::Connect(..)), "{error}");
    }
}
