//! WebSocket helpers (tokio-tungstenite) for the streaming tests: include with
//! `#[path = "common/ws.rs"] mod ws;` beside `mod common;`.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::common::Io;

/// Opens a WebSocket offering `protocol` on a connection already made; checks the server
/// chose it.
pub async fn connect_on<S: Io>(socket: S, url: &str, protocol: &str) -> WebSocketStream<S> {
    let ws_url = url
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let mut request = ws_url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (ws, response) = tokio_tungstenite::client_async(request, socket)
        .await
        .unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        protocol
    );
    ws
}

/// Reads a channel.k8s.io WebSocket until the server closes: (stdout, error channel).
pub async fn drain<S: Io>(ws: &mut WebSocketStream<S>) -> (Vec<u8>, Vec<u8>) {
    let (mut stdout, mut error) = (Vec::new(), Vec::new());
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(20), ws.next()).await
    {
        if let Message::Binary(data) = message {
            match data.first() {
                Some(1) => stdout.extend_from_slice(&data[1..]),
                Some(3) => error.extend_from_slice(&data[1..]),
                _ => {}
            }
        }
    }
    (stdout, error)
}
