//! One server-side SPDY/3.1 session: the client opens streams, we accept or refuse them, and
//! data flows both ways under flow control.
//!
//! [`Session::new`] returns a handle, a receiver of the client's new streams and the driver, a
//! future that reads and writes the socket; the caller runs the driver beside its own work and
//! drops everything when either ends, so no task outlives the connection.
//!
//! Flow control, in both directions:
//! - Inbound, each stream may hold at most [`INBOUND_BUDGET`] unread bytes (plus the frame that
//!   crosses it). A frame that does not fit waits, and with it the reader, so a client that
//!   ignores SPDY windows (Go's spdystream, which kubectl, crictl and the kubelet use, neither
//!   sends nor reads WINDOW_UPDATE) is slowed by TCP. As the application consumes data we send
//!   WINDOW_UPDATE for the stream and the session, which window-respecting clients need.
//! - Outbound, a stream's writes wait for the peer's window (64 KiB to start, per stream and,
//!   as SPDY/3.1 adds, per session) once the peer has shown that it takes part in flow control
//!   by sending a WINDOW_UPDATE or an INITIAL_WINDOW_SIZE setting. A peer that never does gets
//!   TCP's window instead of a stall after 64 KiB. Either way the frame queue to the socket is
//!   bounded, so a client that never reads blocks the writers, not our memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::frame::{
    goaway, rst, Frame, FrameCodec, FrameError, FLAG_FIN, FLAG_UNIDIRECTIONAL,
    SETTINGS_INITIAL_WINDOW_SIZE,
};
use super::headers::Headers;

/// The window both sides start with, per stream and per session.
pub const INITIAL_WINDOW: i64 = 64 * 1024;
/// Unread bytes one stream may hold before the reader waits.
pub const INBOUND_BUDGET: usize = 256 * 1024;
/// The largest DATA frame we send.
const MAX_DATA_CHUNK: usize = 16 * 1024;
/// Frames queued for the socket before writers wait.
const OUTBOUND_QUEUE: usize = 32;
/// Consumed bytes that trigger a WINDOW_UPDATE.
const WINDOW_UPDATE_THRESHOLD: u32 = 16 * 1024;

/// Why a session or one of its streams failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("spdy connection closed")]
    Closed,
    #[error("stream {0} was reset")]
    Reset(u32),
    #[error("stream {0} is already closed for writing")]
    WriteAfterFinish(u32),
    #[error("reading the spdy connection failed")]
    Read(#[source] std::io::Error),
    #[error("writing the spdy connection failed")]
    Write(#[source] std::io::Error),
    #[error("spdy protocol error")]
    Frame(#[from] FrameError),
    #[error("spdy connection was idle for {0:?}")]
    Idle(Duration),
}

/// Limits of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Streams open at once; more are refused with REFUSED_STREAM.
    pub max_streams: usize,
    /// The connection closes after this long with no frame either way.
    pub idle_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_streams: 256,
            idle_timeout: Duration::from_secs(4 * 60 * 60),
        }
    }
}

enum Outbound {
    Frame(Frame),
    /// Send GOAWAY, flush, and shut the write side down.
    GoAway,
}

struct Chunk {
    data: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
}

struct StreamState {
    inbound: Option<mpsc::UnboundedSender<Chunk>>,
    budget: Arc<Semaphore>,
    send_window: i64,
    local_closed: bool,
    reset: bool,
}

struct State {
    streams: HashMap<u32, StreamState>,
    last_client_stream: u32,
    initial_send_window: i64,
    session_send_window: i64,
    peer_flow_control: bool,
    closed: bool,
    last_activity: Instant,
}

struct Shared {
    state: Mutex<State>,
    out: mpsc::Sender<Outbound>,
    /// Bumped whenever a send window grows, a stream is reset or the session ends.
    wake: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_writers(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    async fn send(&self, frame: Frame) -> Result<(), SessionError> {
        self.out
            .send(Outbound::Frame(frame))
            .await
            .map_err(|_| SessionError::Closed)
    }
}

/// A handle on a running session.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
    closed: watch::Receiver<bool>,
}

/// A stream the client opened, waiting for us to accept or refuse it.
pub struct IncomingStream {
    /// The client's stream id.
    pub id: u32,
    /// The SYN_STREAM's headers.
    pub headers: Headers,
    rx: mpsc::UnboundedReceiver<Chunk>,
    shared: Arc<Shared>,
}

/// The reading half of an accepted stream.
pub struct StreamReader {
    id: u32,
    rx: mpsc::UnboundedReceiver<Chunk>,
    shared: Arc<Shared>,
    unacknowledged: u32,
}

/// The writing half of an accepted stream.
pub struct StreamWriter {
    id: u32,
    shared: Arc<Shared>,
    wake: watch::Receiver<u64>,
    finished: bool,
}

impl Session {
    /// Starts a session on an upgraded connection: the handle, the client's new streams, and
    /// the driver to poll until it ends (the connection closed, failed or went idle).
    #[allow(clippy::type_complexity)] // an opaque future cannot take a type alias
    pub fn new<IO>(
        io: IO,
        config: SessionConfig,
    ) -> Result<
        (
            Session,
            mpsc::Receiver<IncomingStream>,
            impl std::future::Future<Output = Result<(), SessionError>> + Send,
        ),
        SessionError,
    >
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let codec = FrameCodec::new()?;
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (wake, _) = watch::channel(0);
        let (closed_tx, closed_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                streams: HashMap::new(),
                last_client_stream: 0,
                initial_send_window: INITIAL_WINDOW,
                session_send_window: INITIAL_WINDOW,
                peer_flow_control: false,
                closed: false,
                last_activity: Instant::now(),
            }),
            out: out_tx,
            wake,
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(16);
        let driver = drive(
            io,
            codec,
            shared.clone(),
            out_rx,
            incoming_tx,
            config,
            closed_tx,
        );
        Ok((
            Session {
                shared,
                closed: closed_rx,
            },
            incoming_rx,
            driver,
        ))
    }

    /// Sends GOAWAY and shuts our side of the connection down once queued frames are out.
    pub async fn go_away(&self) {
        let _ = self.shared.out.send(Outbound::GoAway).await;
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        let mut closed = self.closed.clone();
        let _ = closed.wait_for(|c| *c).await;
    }
}

impl IncomingStream {
    /// Accepts the stream with an empty SYN_REPLY, as the kubelet does.
    pub async fn accept(self) -> Result<(StreamReader, StreamWriter), SessionError> {
        self.shared
            .send(Frame::SynReply {
                stream_id: self.id,
                fin: false,
                headers: Headers::new(),
            })
            .await?;
        let wake = self.shared.wake.subscribe();
        let finished = self
            .shared
            .lock()
            .streams
            .get(&self.id)
            .is_none_or(|s| s.local_closed);
        Ok((
            StreamReader {
                id: self.id,
                rx: self.rx,
                shared: self.shared.clone(),
                unacknowledged: 0,
            },
            StreamWriter {
                id: self.id,
                shared: self.shared,
                wake,
                finished,
            },
        ))
    }

    /// Refuses the stream with RST_STREAM.
    pub async fn reject(self, status: u32) {
        self.shared.lock().streams.remove(&self.id);
        let _ = self
            .shared
            .send(Frame::RstStream {
                stream_id: self.id,
                status,
            })
            .await;
    }
}

impl StreamReader {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The next chunk, or `None` once the client finished the stream, reset it, or left.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let chunk = self.rx.recv().await?;
        let len = chunk.data.len() as u32;
        self.unacknowledged = self.unacknowledged.saturating_add(len);
        if self.unacknowledged >= WINDOW_UPDATE_THRESHOLD {
            let delta = std::mem::take(&mut self.unacknowledged);
            for stream_id in [self.id, 0] {
                let _ = self
                    .shared
                    .send(Frame::WindowUpdate { stream_id, delta })
                    .await;
            }
        }
        Some(chunk.data)
    }
}

impl StreamWriter {
    /// The stream id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends `data` as DATA frames, waiting for window and queue space.
    pub async fn write(&mut self, mut data: Bytes) -> Result<(), SessionError> {
        if self.finished {
            return Err(SessionError::WriteAfterFinish(self.id));
        }
        while !data.is_empty() {
            let allowed = self.reserve(data.len().min(MAX_DATA_CHUNK)).await?;
            let chunk = data.split_to(allowed);
            self.shared
                .send(Frame::Data {
                    stream_id: self.id,
                    fin: false,
                    data: chunk,
                })
                .await?;
        }
        Ok(())
    }

    /// Half-closes the stream with an empty DATA frame carrying FIN.
    pub async fn finish(&mut self) -> Result<(), SessionError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        self.shared
            .send(Frame::Data {
                stream_id: self.id,
                fin: true,
                data: Bytes::new(),
            })
            .await?;
        let mut state = self.shared.lock();
        if let Some(stream) = state.streams.get_mut(&self.id) {
            stream.local_closed = true;
        }
        Ok(())
    }

    /// Waits until up to `want` bytes may be sent and takes them from the windows.
    async fn reserve(&mut self, want: usize) -> Result<usize, SessionError> {
        loop {
            self.wake.borrow_and_update();
            {
                let mut state = self.shared.lock();
                if state.closed {
                    return Err(SessionError::Closed);
                }
                let enforce = state.peer_flow_control;
                let session_window = state.session_send_window;
                let stream = state
                    .streams
                    .get_mut(&self.id)
                    .ok_or(SessionError::Reset(self.id))?;
                if stream.reset {
                    return Err(SessionError::Reset(self.id));
                }
                let available = stream.send_window.min(session_window);
                let allowed = if enforce {
                    (available.max(0) as usize).min(want)
                } else {
                    want
                };
                if allowed > 0 {
                    stream.send_window -= allowed as i64;
                    state.session_send_window -= allowed as i64;
                    return Ok(allowed);
                }
            }
            if self.wake.changed().await.is_err() {
                return Err(SessionError::Closed);
            }
        }
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Nobody will finish this stream: tell the client rather than leave it waiting.
            let _ = self.shared.out.try_send(Outbound::Frame(Frame::RstStream {
                stream_id: self.id,
                status: rst::CANCEL,
            }));
        }
        self.shared.lock().streams.remove(&self.id);
    }
}

/// Reads and writes the connection until it ends.
async fn drive<IO>(
    io: IO,
    codec: FrameCodec,
    shared: Arc<Shared>,
    out_rx: mpsc::Receiver<Outbound>,
    incoming: mpsc::Sender<IncomingStream>,
    config: SessionConfig,
    closed: watch::Sender<bool>,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read_half, write_half) = tokio::io::split(io);
    let codec = Arc::new(Mutex::new(codec));
    let reader = read_frames(read_half, codec.clone(), &shared, incoming, &config);
    let writer = write_frames(write_half, codec, &shared, out_rx);
    // Whichever side ends first ends the session: a dead reader means the client is gone, a
    // dead writer means we said GOAWAY or cannot reach it. After GOAWAY we keep reading a
    // little so the client can take our last frames before the socket closes.
    let result = tokio::select! {
        r = reader => r,
        w = writer => match w {
            Ok(()) => Ok(()),
            Err(e) => Err(e),
        },
    };
    {
        let mut state = shared.lock();
        state.closed = true;
        for stream in state.streams.values_mut() {
            stream.inbound = None;
        }
    }
    shared.wake_writers();
    let _ = closed.send(true);
    result
}

async fn write_frames<W: AsyncWrite>(
    socket: W,
    codec: Arc<Mutex<FrameCodec>>,
    shared: &Shared,
    mut out_rx: mpsc::Receiver<Outbound>,
) -> Result<(), SessionError> {
    let mut socket = std::pin::pin!(socket);
    let mut buf = BytesMut::with_capacity(MAX_DATA_CHUNK + 64);
    while let Some(message) = out_rx.recv().await {
        let frame = match message {
            Outbound::Frame(frame) => frame,
            Outbound::GoAway => {
                let last_good_stream_id = shared.lock().last_client_stream;
                lock_codec(&codec).encode(
                    &Frame::GoAway {
                        last_good_stream_id,
                        status: goaway::OK,
                    },
                    &mut buf,
                )?;
                socket.write_all(&buf).await.map_err(SessionError::Write)?;
                socket.flush().await.map_err(SessionError::Write)?;
                let _ = socket.shutdown().await;
                // Let the reader see the client out; the caller bounds how long.
                std::future::pending::<()>().await;
                return Ok(());
            }
        };
        tracing::trace!(?frame, "spdy frame out");
        buf.clear();
        lock_codec(&codec).encode(&frame, &mut buf)?;
        socket.write_all(&buf).await.map_err(SessionError::Write)?;
        if out_rx.is_empty() {
            socket.flush().await.map_err(SessionError::Write)?;
        }
        shared.lock().last_activity = Instant::now();
    }
    Ok(())
}

fn lock_codec(codec: &Mutex<FrameCodec>) -> MutexGuard<'_, FrameCodec> {
    codec.lock().unwrap_or_else(|e| e.into_inner())
}

async fn read_frames<R: AsyncRead>(
    socket: R,
    codec: Arc<Mutex<FrameCodec>>,
    shared: &Arc<Shared>,
    incoming: mpsc::Sender<IncomingStream>,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    let mut socket = std::pin::pin!(socket);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let next = lock_codec(&codec).decode(&mut buf)?;
        let Some(frame) = next else {
            let last = shared.lock().last_activity;
            let deadline = last + config.idle_timeout;
            match tokio::time::timeout_at(deadline, socket.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => shared.lock().last_activity = Instant::now(),
                Ok(Err(e)) => return Err(SessionError::Read(e)),
                Err(_) => {
                    if shared.lock().last_activity <= last {
                        return Err(SessionError::Idle(config.idle_timeout));
                    }
                }
            }
            continue;
        };
        tracing::trace!(?frame, "spdy frame in");
        handle_frame(frame, shared, &incoming, config).await?;
    }
}

async fn handle_frame(
    frame: Frame,
    shared: &Arc<Shared>,
    incoming: &mpsc::Sender<IncomingStream>,
    config: &SessionConfig,
) -> Result<(), SessionError> {
    match frame {
        Frame::SynStream {
            stream_id,
            flags,
            headers,
            ..
        } => {
            let refusal = {
                let mut state = shared.lock();
                if stream_id % 2 == 0 || stream_id <= state.last_client_stream {
                    Some(rst::PROTOCOL_ERROR)
                } else if state.streams.len() >= config.max_streams {
                    state.last_client_stream = stream_id;
                    Some(rst::REFUSED_STREAM)
                } else {
                    state.last_client_stream = stream_id;
                    None
                }
            };
            if let Some(status) = refusal {
                return shared.send(Frame::RstStream { stream_id, status }).await;
            }
            let (tx, rx) = mpsc::unbounded_channel();
            let initial = shared.lock().initial_send_window;
            shared.lock().streams.insert(
                stream_id,
                StreamState {
                    // The client may open a stream already finished (kubectl's error stream).
                    inbound: (flags & FLAG_FIN == 0).then_some(tx),
                    budget: Arc::new(Semaphore::new(INBOUND_BUDGET)),
                    send_window: initial,
                    local_closed: flags & FLAG_UNIDIRECTIONAL != 0,
                    reset: false,
                },
            );
            let stream = IncomingStream {
                id: stream_id,
                headers,
                rx,
                shared: shared.clone(),
            };
            if let Err(refused) = incoming.send(stream).await {
                refused.0.reject(rst::REFUSED_STREAM).await;
            }
        }
        Frame::Data {
            stream_id,
            fin,
            data,
        } => {
            let target = {
                let state = shared.lock();
                state
                    .streams
                    .get(&stream_id)
                    .map(|s| (s.inbound.clone(), s.budget.clone()))
            };
            let Some((inbound, budget)) = target else {
                return shared
                    .send(Frame::RstStream {
                        stream_id,
                        status: rst::INVALID_STREAM,
                    })
                    .await;
            };
            let Some(inbound) = inbound else {
                return shared
                    .send(Frame::RstStream {
                        stream_id,
                        status: rst::STREAM_ALREADY_CLOSED,
                    })
                    .await;
            };
            if !data.is_empty() {
                let want = data.len().min(INBOUND_BUDGET) as u32;
                let permit = budget
                    .acquire_many_owned(want)
                    .await
                    .map_err(|_| SessionError::Closed)?;
                let len = data.len() as u32;
                let delivered = inbound.send(Chunk {
                    data,
                    _permit: Some(permit),
                });
                if delivered.is_err() {
                    // Nobody reads this stream any more: keep the client's window open anyway.
                    for id in [stream_id, 0] {
                        shared
                            .send(Frame::WindowUpdate {
                                stream_id: id,
                                delta: len,
                            })
                            .await?;
                    }
                }
            }
            if fin {
                if let Some(stream) = shared.lock().streams.get_mut(&stream_id) {
                    stream.inbound = None;
                }
            }
        }
        Frame::Headers { stream_id, fin, .. } => {
            if fin {
                if let Some(stream) = shared.lock().streams.get_mut(&stream_id) {
                    stream.inbound = None;
                }
            }
        }
        Frame::RstStream { stream_id, .. } => {
            if let Some(stream) = shared.lock().streams.get_mut(&stream_id) {
                stream.inbound = None;
                stream.reset = true;
            }
            shared.wake_writers();
        }
        Frame::Settings { entries, .. } => {
            let mut state = shared.lock();
            for entry in entries {
                if entry.id == SETTINGS_INITIAL_WINDOW_SIZE {
                    let value = i64::from(entry.value & 0x7fff_ffff);
                    let delta = value - state.initial_send_window;
                    state.initial_send_window = value;
                    state.peer_flow_control = true;
                    for stream in state.streams.values_mut() {
                        stream.send_window += delta;
                    }
                }
            }
            drop(state);
            shared.wake_writers();
        }
        Frame::WindowUpdate { stream_id, delta } => {
            {
                let mut state = shared.lock();
                state.peer_flow_control = true;
                if stream_id == 0 {
                    state.session_send_window += i64::from(delta);
                } else if let Some(stream) = state.streams.get_mut(&stream_id) {
                    stream.send_window += i64::from(delta);
                }
            }
            shared.wake_writers();
        }
        Frame::Ping { id } => {
            // Client pings are odd; an even id is the echo of one of ours (we send none).
            if id % 2 == 1 {
                shared.send(Frame::Ping { id }).await?;
            }
        }
        Frame::GoAway { .. } | Frame::SynReply { .. } | Frame::Unknown { .. } => {}
    }
    Ok(())
}
