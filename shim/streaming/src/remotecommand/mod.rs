//! Exec and attach, independent of the wire: which protocol versions exist, the channels
//! between a protocol and the backend, and how a finished backend call becomes a status.
//!
//! [`spdy`] and [`websocket`] put the same plumbing on their own framing.

pub(crate) mod spdy;
pub(crate) mod websocket;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;

use crate::backend::{Backend, ExecTarget, StreamIo, TerminalSize, IO_QUEUE};
use crate::status::Status;
use crate::tokens::{AttachRequest, ExecRequest};

/// The remote-command protocol versions, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Version {
    /// `channel.k8s.io`
    V1,
    /// `v2.channel.k8s.io`
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a JSON Status.
    V4,
    /// `v5.channel.k8s.io` (WebSocket only): adds the close signal.
    V5,
}

impl Version {
    /// Whether the error stream gets JSON rather than plain text.
    pub(crate) fn json_status(self) -> bool {
        self >= Version::V4
    }

    /// The bytes for the error stream, or `None` when this version writes nothing.
    pub(crate) fn status_bytes(self, status: &Status) -> Option<Vec<u8>> {
        if self.json_status() {
            Some(status.to_json())
        } else {
            status.to_plain()
        }
    }
}

/// What the client asked to run, and with which streams.
#[derive(Debug, Clone)]
pub(crate) enum Operation {
    Exec(ExecRequest),
    Attach(AttachRequest),
}

/// The streams an operation wants.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Operation {
    pub(crate) fn wanted(&self) -> Wanted {
        match self {
            Operation::Exec(r) => Wanted {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
            Operation::Attach(r) => Wanted {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            },
        }
    }

    /// Runs the operation on the backend and says how it ended.
    pub(crate) async fn run<B: Backend>(self, backend: Arc<B>, io: StreamIo) -> Status {
        match self {
            Operation::Exec(r) => {
                let target = ExecTarget {
                    container_id: r.container_id,
                    cmd: r.cmd,
                };
                Status::from_exec(&backend.exec(target, io).await)
            }
            Operation::Attach(r) => Status::from_attach(&backend.attach(r.container_id, io).await),
        }
    }
}

/// The protocol's ends of the channels whose other ends the backend gets in [`StreamIo`].
pub(crate) struct Plumbing {
    pub stdin: Option<mpsc::Sender<Bytes>>,
    pub stdout: Option<mpsc::Receiver<Bytes>>,
    pub stderr: Option<mpsc::Receiver<Bytes>>,
    pub resize: Option<mpsc::Sender<TerminalSize>>,
}

/// Makes the bounded channels for `wanted`; `resize` only where the protocol carries it.
pub(crate) fn plumb(wanted: Wanted, resize: bool) -> (Plumbing, StreamIo) {
    fn pair<T>(on: bool) -> (Option<mpsc::Sender<T>>, Option<mpsc::Receiver<T>>) {
        if on {
            let (tx, rx) = mpsc::channel(IO_QUEUE);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        }
    }
    let (stdin_tx, stdin_rx) = pair(wanted.stdin);
    let (stdout_tx, stdout_rx) = pair(wanted.stdout);
    let (stderr_tx, stderr_rx) = pair(wanted.stderr);
    let (resize_tx, resize_rx) = pair(wanted.tty && resize);
    (
        Plumbing {
            stdin: stdin_tx,
            stdout: stdout_rx,
            stderr: stderr_rx,
            resize: resize_tx,
        },
        StreamIo {
            stdin: stdin_rx,
            stdout: stdout_tx,
            stderr: stderr_tx,
            resize: resize_rx,
            tty: wanted.tty,
        },
    )
}

/// The most bytes of an unfinished resize message we keep.
const MAX_RESIZE_PENDING: usize = 4096;

/// Turns the resize stream's bytes (JSON objects back to back) into sizes.
#[derive(Default)]
pub(crate) struct ResizeParser {
    pending: BytesMut,
}

impl ResizeParser {
    /// Adds bytes and returns the sizes they complete. Malformed input is dropped.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<TerminalSize> {
        self.pending.extend_from_slice(bytes);
        let mut sizes = Vec::new();
        let mut consumed = 0;
        let mut stream =
            serde_json::Deserializer::from_slice(&self.pending).into_iter::<TerminalSize>();
        loop {
            match stream.next() {
                Some(Ok(size)) => {
                    sizes.push(size);
                    consumed = stream.byte_offset();
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(_)) => {
                    consumed = self.pending.len();
                    break;
                }
                None => {
                    consumed = self.pending.len();
                    break;
                }
            }
        }
        let _ = self.pending.split_to(consumed);
        if self.pending.len() > MAX_RESIZE_PENDING {
            self.pending.clear();
        }
        sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_messages_split_across_chunks_are_joined() {
        let mut parser = ResizeParser::default();
        assert!(parser.push(br#"{"Width":80,"#).is_empty());
        let sizes = parser.push(br#""Height":24}{"Width":100,"Height":40}"#);
        assert_eq!(
            sizes,
            vec![
                TerminalSize {
                    width: 80,
                    height: 24
                },
                TerminalSize {
                    width: 100,
                    height: 40
                }
            ]
        );
    }

    #[test]
    fn garbage_resize_is_dropped_and_parsing_recovers() {
        let mut parser = ResizeParser::default();
        assert!(parser.push(b"not json").is_empty());
        assert_eq!(parser.push(br#"{"Width":1,"Height":2}"#).len(), 1);
    }
}
