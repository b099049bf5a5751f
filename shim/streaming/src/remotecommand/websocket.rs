//! Exec and attach over WebSocket: every message is one channel byte and a payload (stdin 0,
//! stdout 1, stderr 2, error 3, resize 4). The base64 variants send text messages whose
//! channel is an ASCII digit and whose payload is base64. v5 adds a close signal: channel 255
//! and one byte naming the channel the client is done writing to.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::spdy::run_beside_driver;
use super::{plumb, Operation, ResizeParser, Version};
use crate::backend::{Backend, IO_QUEUE};
use crate::server::Timeouts;
use crate::wsframe::{decode_message, encode_message, Inbound, WsEncoding};

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// The subprotocols exec and attach accept, with their version and encoding; the empty name
/// is a client that offered none.
pub(crate) const PROTOCOLS: [(&str, Version, WsEncoding); 6] = [
    ("v5.channel.k8s.io", Version::V5, WsEncoding::Binary),
    ("v4.channel.k8s.io", Version::V4, WsEncoding::Binary),
    ("v4.base64.channel.k8s.io", Version::V4, WsEncoding::Base64),
    ("channel.k8s.io", Version::V1, WsEncoding::Binary),
    ("base64.channel.k8s.io", Version::V1, WsEncoding::Base64),
    ("", Version::V1, WsEncoding::Binary),
];

/// Serves one exec or attach on an accepted WebSocket until it ends.
pub(crate) async fn serve<B, S>(
    ws: WebSocketStream<S>,
    backend: Arc<B>,
    version: Version,
    encoding: WsEncoding,
    operation: Operation,
    timeouts: Timeouts,
) where
    B: Backend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let wanted = operation.wanted();
    let (plumbing, io) = plumb(wanted, true);
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(IO_QUEUE);

    // The only reader of the socket: it feeds stdin and resize, and ends when the client
    // closes or leaves.
    let mut stdin = plumbing.stdin;
    let resize = plumbing.resize;
    let reader = async move {
        let mut parser = ResizeParser::default();
        while let Some(Ok(message)) = source.next().await {
            let Some(inbound) = decode_message(message, encoding) else {
                continue;
            };
            let (channel, payload) = match inbound {
                Inbound::Close => break,
                Inbound::Data(channel, payload) => (channel, payload),
            };
            match channel {
                STDIN => {
                    if let Some(tx) = &stdin {
                        if tx.send(payload).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                RESIZE => {
                    if let Some(tx) = &resize {
                        for size in parser.push(&payload) {
                            let _ = tx.send(size).await;
                        }
                    }
                }
                255 if version >= Version::V5 => {
                    if payload.first() == Some(&STDIN) {
                        stdin = None;
                    }
                }
                _ => tracing::debug!(channel, "websocket message for no channel"),
            }
        }
    };

    let writer = async move {
        while let Some((channel, payload)) = out_rx.recv().await {
            if sink
                .send(encode_message(channel, &payload, encoding))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = sink.send(Message::Close(None)).await;
        let _ = sink.flush().await;
    };

    let work = async move {
        // The kubelet's hello: an empty message on the first channel it will write to.
        let hello = if wanted.stdout {
            STDOUT
        } else if wanted.stderr {
            STDERR
        } else {
            ERROR
        };
        let _ = out_tx.send((hello, Bytes::new())).await;
        let stdout = forward_out(STDOUT, plumbing.stdout, out_tx.clone());
        let stderr = forward_out(STDERR, plumbing.stderr, out_tx.clone());
        let (status, _, _) = tokio::join!(operation.run(backend, io), stdout, stderr);
        if let Some(bytes) = version.status_bytes(&status) {
            let _ = out_tx.send((ERROR, bytes.into())).await;
        }
        drop(out_tx);
    };
    let work_and_writer = async {
        tokio::join!(work, writer);
    };
    // The reader ending means the client closed or left: that cancels the work.
    run_beside_driver(reader, work_and_writer, timeouts.linger).await;
}

async fn forward_out(
    channel: u8,
    rx: Option<mpsc::Receiver<Bytes>>,
    out: mpsc::Sender<(u8, Bytes)>,
) {
    let Some(mut rx) = rx else {
        return;
    };
    while let Some(chunk) = rx.recv().await {
        if out.send((channel, chunk)).await.is_err() {
            return;
        }
    }
}
