//! Port-forward over WebSocket, two ways:
//! - channels (`v4.channel.k8s.io`, its base64 variant, or no subprotocol): the ports come from
//!   the CRI request; port i gets data channel 2i and error channel 2i+1, and the first message
//!   on each is the port as a little-endian u16;
//! - the KEP-4006 tunnel (`SPDY/3.1+portforward.k8s.io`): binary messages carry the bytes of
//!   a SPDY port-forward session, served by [`super::spdy`].

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::{forward_error, COPY_CHUNK};
use crate::backend::{Backend, IO_QUEUE};
use crate::remotecommand::spdy::run_beside_driver;
use crate::server::Timeouts;
use crate::wsframe::{decode_message, encode_message, Inbound, WsEncoding};

/// The KEP-4006 tunnel's subprotocol.
pub(crate) const TUNNEL_PROTOCOL: &str = "SPDY/3.1+portforward.k8s.io";

/// How a port-forward WebSocket speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsPortForward {
    Channels(WsEncoding),
    Tunnel,
}

/// The subprotocols port-forward accepts over WebSocket, in our preference order.
pub(crate) const PROTOCOLS: [(&str, WsPortForward); 4] = [
    (TUNNEL_PROTOCOL, WsPortForward::Tunnel),
    (
        "v4.channel.k8s.io",
        WsPortForward::Channels(WsEncoding::Binary),
    ),
    (
        "v4.base64.channel.k8s.io",
        WsPortForward::Channels(WsEncoding::Base64),
    ),
    ("", WsPortForward::Channels(WsEncoding::Binary)),
];

/// Serves port-forward on an accepted WebSocket.
pub(crate) async fn serve<B, S>(
    ws: WebSocketStream<S>,
    backend: Arc<B>,
    pod: String,
    ports: Vec<u16>,
    mode: WsPortForward,
    timeouts: Timeouts,
) where
    B: Backend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match mode {
        WsPortForward::Tunnel => tunnel(ws, backend, pod, timeouts).await,
        WsPortForward::Channels(encoding) => {
            channels(ws, backend, pod, ports, encoding, timeouts).await
        }
    }
}

async fn channels<B, S>(
    ws: WebSocketStream<S>,
    backend: Arc<B>,
    pod: String,
    ports: Vec<u16>,
    encoding: WsEncoding,
    timeouts: Timeouts,
) where
    B: Backend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<(u8, Bytes)>(IO_QUEUE);
    let mut inbound = Vec::with_capacity(ports.len());
    let mut forwards = Vec::with_capacity(ports.len());
    for (i, &port) in ports.iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Bytes>(IO_QUEUE);
        inbound.push(Some(tx));
        forwards.push(forward_port(
            backend.clone(),
            pod.clone(),
            port,
            (2 * i) as u8,
            rx,
            out_tx.clone(),
        ));
    }
    drop(out_tx);

    let reader = async move {
        while let Some(Ok(message)) = source.next().await {
            match decode_message(message, encoding) {
                Some(Inbound::Close) => break,
                Some(Inbound::Data(channel, payload)) => {
                    let port_index = usize::from(channel / 2);
                    // Clients write only to data channels; anything else is dropped.
                    if channel % 2 == 0 {
                        if let Some(Some(tx)) = inbound.get(port_index) {
                            if tx.send(payload).await.is_err() {
                                inbound[port_index] = None;
                            }
                        }
                    }
                }
                None => {}
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
        tokio::join!(futures_util::future::join_all(forwards), writer);
    };
    run_beside_driver(reader, work, timeouts.linger).await;
}

async fn forward_port<B: Backend>(
    backend: Arc<B>,
    pod: String,
    port: u16,
    data_channel: u8,
    mut from_client: mpsc::Receiver<Bytes>,
    out: mpsc::Sender<(u8, Bytes)>,
) {
    let error_channel = data_channel + 1;
    let port_bytes = Bytes::copy_from_slice(&port.to_le_bytes());
    for channel in [data_channel, error_channel] {
        if out.send((channel, port_bytes.clone())).await.is_err() {
            return;
        }
    }
    let conn = match backend.port_forward(pod.clone(), port).await {
        Ok(conn) => conn,
        Err(e) => {
            let message = forward_error(port, &pod, &e);
            let _ = out.send((error_channel, Bytes::from(message))).await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tokio::io::split(conn);
    let upstream = async {
        while let Some(chunk) = from_client.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to_pod.shutdown().await;
    };
    let downstream = async {
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            match from_pod.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = Bytes::copy_from_slice(&buf[..n]);
                    if out.send((data_channel, chunk)).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    // Channels have no half-close: the forward is over when the pod side is.
    tokio::select! {
        () = downstream => {}
        () = async { upstream.await; std::future::pending::<()>().await } => {}
    }
}

/// Carries a SPDY port-forward session inside binary WebSocket messages.
async fn tunnel<B, S>(ws: WebSocketStream<S>, backend: Arc<B>, pod: String, timeouts: Timeouts)
where
    B: Backend,
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut source) = ws.split();
    let (spdy_side, tunnel_side) = tokio::io::duplex(64 * 1024);
    let (mut tunnel_read, mut tunnel_write) = tokio::io::split(tunnel_side);
    let into_spdy = async move {
        while let Some(Ok(message)) = source.next().await {
            let bytes = match message {
                Message::Binary(bytes) => bytes,
                Message::Close(_) => break,
                _ => continue,
            };
            if tunnel_write.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = tunnel_write.shutdown().await;
        std::future::pending::<()>().await
    };
    let out_of_spdy = async move {
        let mut buf = vec![0u8; COPY_CHUNK];
        loop {
            match tunnel_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let message = Message::Binary(Bytes::copy_from_slice(&buf[..n]));
                    if sink.send(message).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    let session = super::spdy::serve(spdy_side, backend, pod, timeouts);
    tokio::select! {
        () = async { tokio::join!(session, out_of_spdy); } => {}
        () = into_spdy => {}
    }
}
