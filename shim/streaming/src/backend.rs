//! The seam to the runtime: what the streaming server asks of whoever runs containers.

use std::future::Future;

use bytes::Bytes;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

/// Chunks queued per direction between a protocol and the backend before the sender waits.
pub const IO_QUEUE: usize = 8;

/// A terminal size change from the client (`{"Width":w,"Height":h}` on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// The client's side of one exec or attach, as bounded channels.
///
/// Every field is `None` when the request did not ask for it. The backend reads `stdin` until
/// it yields `None` (the client closed stdin or left), sends output chunks into `stdout` and
/// `stderr` (a send waits while the client is slow, and fails once it is gone), and reads
/// `resize` for terminal sizes when `tty` is set. Dropping a sender ends that stream for the
/// client. No chunk is ever buffered past these channels' [`IO_QUEUE`] slots and the protocol's
/// own bounded windows.
#[derive(Debug)]
pub struct StreamIo {
    pub stdin: Option<mpsc::Receiver<Bytes>>,
    pub stdout: Option<mpsc::Sender<Bytes>>,
    pub stderr: Option<mpsc::Sender<Bytes>>,
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
    pub tty: bool,
}

/// A byte stream both ways, as port-forward needs.
pub trait DuplexStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> DuplexStream for T {}

/// A boxed [`DuplexStream`].
pub type PortStream = Box<dyn DuplexStream>;

/// What an exec asks for: the container and the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecTarget {
    pub container_id: String,
    pub cmd: Vec<String>,
}

/// Why the backend could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
}

/// The runtime behind the streaming server.
///
/// Each method runs for as long as the client's session does; when the client goes away the
/// server drops the future, so everything it holds (processes, guest streams) must be freed by
/// `Drop`.
pub trait Backend: Send + Sync + 'static {
    /// Runs `target.cmd` in the container wired to `io` and returns its exit code.
    fn exec(
        &self,
        target: ExecTarget,
        io: StreamIo,
    ) -> impl Future<Output = Result<i32, BackendError>> + Send;

    /// Joins the container's main process's streams until it exits or the client leaves.
    fn attach(
        &self,
        container_id: String,
        io: StreamIo,
    ) -> impl Future<Output = Result<(), BackendError>> + Send;

    /// Opens a connection to `port` inside the pod sandbox.
    fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
    ) -> impl Future<Output = Result<PortStream, BackendError>> + Send;
}
