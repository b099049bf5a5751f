//! A fake backend and small protocol clients for the loopback tests, over plain TCP or any
//! other connection (a TLS stream). The CRI crate's streaming tests include this file too,
//! so it uses only what that crate has; the WebSocket (`ws.rs`) and TLS (`tls.rs`) helpers
//! beside it are included by the test files that need them.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use vpod_streaming::spdy::{Frame, FrameCodec, Headers};
use vpod_streaming::{
    Backend, BackendError, Config, ExecRequest, ExecTarget, PortStream, StreamIo, StreamRequest,
    StreamingServer, StreamingUrls,
};

/// A client's connection: a TCP socket or a TLS stream over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Counts drops of what a backend call held.
pub struct DropGuard(pub Arc<AtomicUsize>);
impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// `cat`, `exit N`, `size` (prints the first resize), `spew` (writes forever), `hold`.
#[derive(Default, Clone)]
pub struct FakeBackend {
    pub dropped: Arc<AtomicUsize>,
    pub spewed: Arc<AtomicU64>,
}

impl Backend for FakeBackend {
    async fn exec(&self, target: ExecTarget, mut io: StreamIo) -> Result<i32, BackendError> {
        let _guard = DropGuard(self.dropped.clone());
        match target.cmd.first().map(String::as_str) {
            Some("cat") => {
                let (Some(mut stdin), Some(stdout)) = (io.stdin.take(), io.stdout.take()) else {
                    return Ok(2);
                };
                while let Some(chunk) = stdin.recv().await {
                    if stdout.send(chunk).await.is_err() {
                        return Ok(141);
                    }
                }
                Ok(0)
            }
            Some("exit") => {
                if let Some(stderr) = io.stderr.take() {
                    let _ = stderr.send(Bytes::from_static(b"failing\n")).await;
                }
                Ok(target.cmd[1].parse().unwrap_or(1))
            }
            Some("size") => {
                let mut resize = io
                    .resize
                    .take()
                    .ok_or(BackendError::Failed("no tty".into()))?;
                let size = resize
                    .recv()
                    .await
                    .ok_or(BackendError::Failed("no size".into()))?;
                if let Some(stdout) = io.stdout.take() {
                    let text = format!("{}x{}", size.width, size.height);
                    let _ = stdout.send(Bytes::from(text)).await;
                }
                Ok(0)
            }
            Some("spew") => {
                let stdout = io
                    .stdout
                    .take()
                    .ok_or(BackendError::Failed("no out".into()))?;
                let chunk = Bytes::from(vec![b'x'; 32 * 1024]);
                while stdout.send(chunk.clone()).await.is_ok() {
                    self.spewed.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                Ok(0)
            }
            Some("hold") => {
                std::future::pending::<()>().await;
                Ok(0)
            }
            _ => Err(BackendError::Failed("unknown command".into())),
        }
    }

    async fn attach(&self, _container_id: String, mut io: StreamIo) -> Result<(), BackendError> {
        if let (Some(mut stdin), Some(stdout)) = (io.stdin.take(), io.stdout.take()) {
            while let Some(chunk) = stdin.recv().await {
                let _ = stdout.send(chunk).await;
            }
        }
        Ok(())
    }

    async fn port_forward(&self, pod: String, port: u16) -> Result<PortStream, BackendError> {
        if port == 1 {
            return Err(BackendError::Failed(format!("nothing listens in {pod}")));
        }
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(theirs);
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = w.shutdown().await;
        });
        Ok(Box::new(ours))
    }
}

pub async fn start(config: Config) -> (StreamingUrls, FakeBackend, tokio::task::JoinHandle<()>) {
    let backend = FakeBackend::default();
    let server = StreamingServer::bind(config, backend.clone())
        .await
        .unwrap();
    let urls = server.urls();
    let handle = tokio::spawn(server.serve());
    (urls, backend, handle)
}

/// An exec of `cmd` with stdout, and stderr unless it has a terminal.
pub fn exec_request(cmd: &[&str], tty: bool, stdin: bool) -> StreamRequest {
    StreamRequest::Exec(ExecRequest {
        container_id: "c1".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty,
        stdin,
        stdout: true,
        stderr: !tty,
    })
}

/// Splits `http://addr/path` (or `https://`) into the address and path.
pub fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap();
    let slash = rest.find('/').unwrap();
    (rest[..slash].to_owned(), rest[slash..].to_owned())
}

/// Sends a GET with `headers` and reads the response head; returns the status and the socket.
pub async fn http_get(url: &str, headers: &[(&str, &str)]) -> (u16, String, TcpStream) {
    let (addr, _) = split_url(url);
    let socket = TcpStream::connect(&addr).await.unwrap();
    http_get_on(socket, url, headers).await
}

/// [`http_get`] on a connection already made (a TLS stream, say).
pub async fn http_get_on<S: Io>(
    mut socket: S,
    url: &str,
    headers: &[(&str, &str)],
) -> (u16, String, S) {
    let (addr, path) = split_url(url);
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0);
    (status, head, socket)
}

type BoxedIo = Box<dyn Io>;

/// A SPDY client in the shape of Go's spdystream: no flow control of its own.
pub struct SpdyClient {
    read: Option<SpdyReadHalf>,
    pub writer: WriteHalf<BoxedIo>,
    encoder: FrameCodec,
    next_id: u32,
}

/// The reading half of a split [`SpdyClient`].
pub struct SpdyReadHalf {
    reader: ReadHalf<BoxedIo>,
    decoder: FrameCodec,
    buf: BytesMut,
}

impl SpdyReadHalf {
    /// The next frame, or `None` when the server closed.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.decoder.decode(&mut self.buf).unwrap() {
                return Some(frame);
            }
            let read =
                tokio::time::timeout(Duration::from_secs(20), self.reader.read_buf(&mut self.buf))
                    .await
                    .expect("server went quiet");
            if read.unwrap_or(0) == 0 {
                return None;
            }
        }
    }
}

impl SpdyClient {
    /// Connects over plain TCP and upgrades.
    pub async fn connect(url: &str, protocol: &str) -> (SpdyClient, String) {
        let (addr, _) = split_url(url);
        let socket = TcpStream::connect(&addr).await.unwrap();
        SpdyClient::connect_on(socket, url, protocol).await
    }

    /// Upgrades a connection already made (a TLS stream, say).
    pub async fn connect_on<S: Io>(socket: S, url: &str, protocol: &str) -> (SpdyClient, String) {
        let socket: BoxedIo = Box::new(socket);
        let (status, head, socket) = http_get_on(
            socket,
            url,
            &[
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", protocol),
            ],
        )
        .await;
        assert_eq!(status, 101, "{head}");
        let (reader, writer) = tokio::io::split(socket);
        (
            SpdyClient {
                read: Some(SpdyReadHalf {
                    reader,
                    decoder: FrameCodec::new().unwrap(),
                    buf: BytesMut::new(),
                }),
                writer,
                encoder: FrameCodec::new().unwrap(),
                next_id: 1,
            },
            head,
        )
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        self.encoder.encode(&frame, &mut out).unwrap();
        self.writer.write_all(&out).await.unwrap();
    }

    pub async fn open(&mut self, pairs: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let mut headers = Headers::new();
        for (n, v) in pairs {
            headers.insert(n, v);
        }
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers,
        })
        .await;
        id
    }

    pub async fn data(&mut self, stream_id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id,
            fin,
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// Takes the reading half, so reads and writes can run on two tasks.
    pub fn take_reader(&mut self) -> SpdyReadHalf {
        self.read.take().expect("reader already taken")
    }

    /// The next frame, or `None` when the server closed.
    pub async fn next(&mut self) -> Option<Frame> {
        self.read.as_mut().expect("reader taken").next().await
    }
}

/// Reads until the server closes; returns each stream's bytes, which streams got FIN, and
/// how many SYN_REPLY frames came.
pub async fn collect(client: &mut SpdyClient) -> (HashMap<u32, Vec<u8>>, Vec<u32>, usize) {
    let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut fins = Vec::new();
    let mut replies = 0;
    while let Some(frame) = client.next().await {
        match frame {
            Frame::SynReply { .. } => replies += 1,
            Frame::Data {
                stream_id,
                fin,
                data: d,
            } => {
                data.entry(stream_id).or_default().extend_from_slice(&d);
                if fin {
                    fins.push(stream_id);
                }
            }
            Frame::GoAway { .. } => break,
            _ => {}
        }
    }
    (data, fins, replies)
}

/// Opens an exec's streams as kubectl does: (error, stdin, stdout, stderr).
pub async fn open_exec_streams(
    client: &mut SpdyClient,
    stdin: bool,
) -> (u32, Option<u32>, u32, u32) {
    let error = client.open(&[("streamType", "error")]).await;
    let stdin = if stdin {
        Some(client.open(&[("streamType", "stdin")]).await)
    } else {
        None
    };
    let stdout = client.open(&[("streamType", "stdout")]).await;
    let stderr = client.open(&[("streamType", "stderr")]).await;
    (error, stdin, stdout, stderr)
}
