//! WebSocket clients and token checks against the streaming server over loopback.

mod common;
#[path = "common/ws.rs"]
mod ws;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use vpod_streaming::{Config, StreamRequest};

fn exec(cmd: &[&str], tty: bool) -> StreamRequest {
    common::exec_request(cmd, tty, true)
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(url: &str, protocol: &str) -> Ws {
    let (addr, _) = common::split_url(url);
    let socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    ws::connect_on(socket, url, protocol).await
}

#[tokio::test]
async fn websocket_v4_exec_pipes_stdin_and_reports_the_exit_code() {
    let (urls, _backend, _server) = common::start(Config::default()).await;
    let url = urls.url_for(exec(&["exit", "3"], false)).unwrap();
    let mut ws = connect(&url, "v4.channel.k8s.io").await;
    let (_, error) = ws::drain(&mut ws).await;
    let status = String::from_utf8(error).unwrap();
    assert!(
        status.contains(r#"{"reason":"ExitCode","message":"3"}"#),
        "{status}"
    );
}

#[tokio::test]
async fn websocket_v5_close_of_stdin_ends_cat_with_success() {
    let (urls, _backend, _server) = common::start(Config::default()).await;
    let url = urls.url_for(exec(&["cat"], false)).unwrap();
    let mut ws = connect(&url, "v5.channel.k8s.io").await;
    ws.send(Message::Binary(b"\x00hello".to_vec().into()))
        .await
        .unwrap();
    ws.send(Message::Binary(vec![255, 0].into())).await.unwrap();
    let (stdout, error) = ws::drain(&mut ws).await;
    assert_eq!(stdout, b"hello");
    assert_eq!(
        String::from_utf8(error).unwrap(),
        r#"{"metadata":{},"status":"Success"}"#
    );
}

#[tokio::test]
async fn websocket_resize_reaches_the_backend() {
    let (urls, _backend, _server) = common::start(Config::default()).await;
    let url = urls.url_for(exec(&["size"], true)).unwrap();
    let mut ws = connect(&url, "v4.channel.k8s.io").await;
    ws.send(Message::Binary(
        br#"{"Width":120,"Height":40}"#
            .iter()
            .fold(vec![4u8], |mut v, b| {
                v.push(*b);
                v
            })
            .into(),
    ))
    .await
    .unwrap();
    let (stdout, _) = ws::drain(&mut ws).await;
    assert_eq!(stdout, b"120x40");
}

#[tokio::test]
async fn websocket_base64_exec_round_trips() {
    let (urls, _backend, _server) = common::start(Config::default()).await;
    let url = urls.url_for(exec(&["exit", "0"], false)).unwrap();
    let mut ws = connect(&url, "v4.base64.channel.k8s.io").await;
    let mut saw_status = false;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(20), ws.next()).await
    {
        if let Message::Text(text) = message {
            if text.starts_with('3') {
                saw_status = true;
            }
        }
    }
    assert!(saw_status);
}

#[tokio::test]
async fn unknown_reused_and_expired_tokens_get_404() {
    let config = Config {
        // Long enough for the requests below on a busy machine; the expiry waits it out.
        token_ttl: Duration::from_secs(3),
        ..Config::default()
    };
    let (urls, _backend, _server) = common::start(config).await;
    let url = urls.url_for(exec(&["cat"], false)).unwrap();
    let (addr_path, _) = (url.clone(), ());
    let unknown = format!(
        "{}/exec/nosuchtoken",
        addr_path.rsplitn(3, '/').nth(2).unwrap()
    );
    let (status, _, _) = common::http_get(&unknown, &[]).await;
    assert_eq!(status, 404);

    // The first request spends the token even though it is no upgrade.
    let (status, _, _) = common::http_get(&url, &[]).await;
    assert_eq!(status, 400);
    let (status, _, _) = common::http_get(&url, &[]).await;
    assert_eq!(status, 404);

    let url = urls.url_for(exec(&["cat"], false)).unwrap();
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let (status, _, _) = common::http_get(&url, &[]).await;
    assert_eq!(status, 404);

    // An attach token is not an exec token.
    let url = urls.url_for(exec(&["cat"], false)).unwrap();
    let (status, _, _) = common::http_get(&url.replace("/exec/", "/attach/"), &[]).await;
    assert_eq!(status, 404);
}
