//! SPDY clients against the streaming server over loopback.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{collect, open_exec_streams, start, SpdyClient};
use vpod_streaming::spdy::Frame;
use vpod_streaming::{Config, PortForwardRequest, StreamRequest};

fn exec(cmd: &[&str], stdin: bool) -> StreamRequest {
    common::exec_request(cmd, false, stdin)
}

#[tokio::test]
async fn spdy_v4_exec_pipes_stdin_to_stdout_and_reports_success() {
    let (urls, _backend, _server) = start(Config::default()).await;
    let url = urls.url_for(exec(&["cat"], true)).unwrap();
    let (mut client, head) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    assert!(
        head.contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("upgrade: spdy/3.1"),
        "{head}"
    );
    let (error, stdin, stdout, _) = open_exec_streams(&mut client, true).await;
    let stdin = stdin.unwrap();
    client.data(stdin, b"hello ", false).await;
    client.data(stdin, b"world", true).await;
    let (data, fins, replies) = collect(&mut client).await;
    assert_eq!(replies, 4);
    assert_eq!(
        data.get(&stdout).map(Vec::as_slice),
        Some(&b"hello world"[..])
    );
    assert_eq!(
        String::from_utf8(data[&error].clone()).unwrap(),
        r#"{"metadata":{},"status":"Success"}"#
    );
    assert!(fins.contains(&error) && fins.contains(&stdout));
}

#[tokio::test]
async fn spdy_v4_exec_carries_the_exit_code_in_the_status() {
    let (urls, _backend, _server) = start(Config::default()).await;
    let url = urls.url_for(exec(&["exit", "3"], false)).unwrap();
    let (mut client, _) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let (error, _, _, stderr) = open_exec_streams(&mut client, false).await;
    let (data, _, _) = collect(&mut client).await;
    let status = String::from_utf8(data[&error].clone()).unwrap();
    assert!(status.contains(r#""reason":"NonZeroExitCode""#), "{status}");
    assert!(
        status.contains(r#"{"reason":"ExitCode","message":"3"}"#),
        "{status}"
    );
    assert_eq!(data[&stderr], b"failing\n");
}

#[tokio::test]
async fn spdy_v2_exec_reports_failure_as_plain_text() {
    let (urls, _backend, _server) = start(Config::default()).await;
    let url = urls.url_for(exec(&["exit", "3"], false)).unwrap();
    // The client prefers v2: the server takes the client's first supported offer.
    let (mut client, head) = SpdyClient::connect(&url, "v2.channel.k8s.io, channel.k8s.io").await;
    assert!(
        head.contains("x-stream-protocol-version: v2.channel.k8s.io"),
        "{head}"
    );
    let (error, _, _, _) = open_exec_streams(&mut client, false).await;
    let (data, _, _) = collect(&mut client).await;
    assert_eq!(
        String::from_utf8(data[&error].clone()).unwrap(),
        "command terminated with non-zero exit code: exit status 3"
    );
}

#[tokio::test]
async fn spdy_unknown_protocol_is_forbidden_and_missing_one_is_bad_request() {
    let (urls, _backend, _server) = start(Config::default()).await;
    let url = urls.url_for(exec(&["cat"], true)).unwrap();
    let (status, head, _) = common::http_get(
        &url,
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v9"),
        ],
    )
    .await;
    assert_eq!(status, 403, "{head}");
    assert!(
        head.contains("x-accepted-stream-protocol-versions"),
        "{head}"
    );
    let url = urls.url_for(exec(&["cat"], true)).unwrap();
    let (status, _, _) =
        common::http_get(&url, &[("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")]).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn spdy_port_forward_moves_1mib_each_way_on_three_connections_at_once() {
    let (urls, _backend, _server) = start(Config::default()).await;
    let url = urls
        .url_for(StreamRequest::PortForward(PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            ports: vec![],
        }))
        .unwrap();
    let (mut client, _) = SpdyClient::connect(&url, "portforward.k8s.io").await;
    let mut data_streams = Vec::new();
    for request in 0..3 {
        let id = request.to_string();
        let error = client
            .open(&[
                ("streamType", "error"),
                ("port", "8080"),
                ("requestID", &id),
            ])
            .await;
        client.data(error, b"", true).await;
        let data = client
            .open(&[("streamType", "data"), ("port", "8080"), ("requestID", &id)])
            .await;
        data_streams.push((data, error));
    }
    let payload: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let streams: Vec<u32> = data_streams.iter().map(|d| d.0).collect();
    let mut read_half = client.take_reader();
    let reader = tokio::spawn(async move {
        let mut received: HashMap<u32, Vec<u8>> = HashMap::new();
        let mut fins = 0;
        while fins < 6 {
            match read_half.next().await {
                Some(Frame::Data {
                    stream_id,
                    fin,
                    data,
                }) => {
                    received
                        .entry(stream_id)
                        .or_default()
                        .extend_from_slice(&data);
                    fins += usize::from(fin);
                }
                Some(_) => {}
                None => break,
            }
        }
        received
    });
    // All three connections interleaved, written while the other task reads.
    for chunk in payload.chunks(32 * 1024) {
        for &stream in &streams {
            client.data(stream, chunk, false).await;
        }
    }
    for &stream in &streams {
        client.data(stream, b"", true).await;
    }
    let received = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .unwrap()
        .unwrap();
    for (data, error) in data_streams {
        assert_eq!(received.get(&data).map(Vec::len), Some(payload.len()));
        assert!(received[&data] == payload, "bytes differ on stream {data}");
        assert!(received.get(&error).is_none_or(Vec::is_empty));
    }
}

#[tokio::test]
async fn spdy_port_forward_failure_is_written_on_the_error_stream() {
    let (urls, _backend, _server) = start(Config::default()).await;
    let url = urls
        .url_for(StreamRequest::PortForward(PortForwardRequest {
            pod_sandbox_id: "pod1".into(),
            ports: vec![],
        }))
        .unwrap();
    let (mut client, _) = SpdyClient::connect(&url, "portforward.k8s.io").await;
    let error = client
        .open(&[("streamType", "error"), ("port", "1"), ("requestID", "0")])
        .await;
    let _data = client
        .open(&[("streamType", "data"), ("port", "1"), ("requestID", "0")])
        .await;
    let mut message = Vec::new();
    while let Some(frame) = client.next().await {
        if let Frame::Data {
            stream_id,
            fin,
            data,
        } = frame
        {
            if stream_id == error {
                message.extend_from_slice(&data);
                if fin {
                    break;
                }
            }
        }
    }
    let message = String::from_utf8(message).unwrap();
    assert!(
        message.starts_with("error forwarding port 1 to pod pod1"),
        "{message}"
    );
}

#[tokio::test]
async fn spdy_garbage_frames_end_the_session_and_the_server_stays_up() {
    let (urls, _backend, _server) = start(Config::default()).await;
    let url = urls.url_for(exec(&["cat"], true)).unwrap();
    let (mut client, _) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    use tokio::io::AsyncWriteExt;
    client
        .writer
        .write_all(&[0x80, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x20])
        .await
        .unwrap();
    client.writer.write_all(&[0xde; 32]).await.unwrap();
    assert!(client.next().await.is_none() || client.next().await.is_none());
    // A fresh request still works.
    let url = urls.url_for(exec(&["exit", "0"], false)).unwrap();
    let (mut client, _) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    let (error, _, _, _) = open_exec_streams(&mut client, false).await;
    let (data, _, _) = collect(&mut client).await;
    assert!(String::from_utf8_lossy(&data[&error]).contains("Success"));
}

#[tokio::test]
async fn spdy_client_that_drops_mid_stream_frees_the_backend_call() {
    let (urls, backend, _server) = start(Config::default()).await;
    let url = urls.url_for(exec(&["hold"], true)).unwrap();
    let (mut client, _) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    open_exec_streams(&mut client, true).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(backend.dropped.load(Ordering::SeqCst), 0);
    drop(client);
    for _ in 0..100 {
        if backend.dropped.load(Ordering::SeqCst) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the backend's exec was not dropped after the client left");
}

#[tokio::test]
async fn spdy_client_that_never_reads_blocks_the_backend_not_our_memory() {
    let (urls, backend, _server) = start(Config::default()).await;
    let url = urls.url_for(exec(&["spew"], false)).unwrap();
    let (mut client, _) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    open_exec_streams(&mut client, false).await;
    // The backend writes until the buffers between it and the client are full, then waits:
    // what it wrote stops growing (a busy machine may take a while to get there).
    let mut last = 0;
    let mut steady = 0;
    let started = tokio::time::Instant::now();
    let second = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = backend.spewed.load(Ordering::SeqCst);
        steady = if now == last && now > 0 {
            steady + 1
        } else {
            0
        };
        last = now;
        if steady == 3 {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the backend kept writing to a client that reads nothing ({now} bytes)"
        );
    };
    // Socket buffers plus a few bounded queues, not the gigabytes it would write.
    assert!(second < 64 * 1024 * 1024, "{second} bytes buffered");
    drop(client);
}

#[tokio::test]
async fn spdy_client_with_flow_control_gets_no_more_than_its_window() {
    let (urls, _backend, _server) = start(Config::default()).await;
    let url = urls.url_for(exec(&["spew"], false)).unwrap();
    let (mut client, _) = SpdyClient::connect(&url, "v4.channel.k8s.io").await;
    client
        .send(Frame::Settings {
            flags: 0,
            entries: vec![vpod_streaming::spdy::frame::Setting {
                flags: 0,
                id: vpod_streaming::spdy::frame::SETTINGS_INITIAL_WINDOW_SIZE,
                value: 65536,
            }],
        })
        .await;
    let (_, _, stdout, _) = open_exec_streams(&mut client, false).await;
    let mut received = 0usize;
    stdout_until(&mut client, stdout, &mut received, 65536).await;
    assert_eq!(received, 65536);
    client
        .send(Frame::WindowUpdate {
            stream_id: stdout,
            delta: 1000,
        })
        .await;
    client
        .send(Frame::WindowUpdate {
            stream_id: 0,
            delta: 1000,
        })
        .await;
    stdout_until(&mut client, stdout, &mut received, 65536 + 1000).await;
    assert_eq!(received, 65536 + 1000);
}

/// Counts the stdout bytes that arrive until `target` did (at most 30 s), then for half a
/// second more: a server that overran the window would have sent more by then.
async fn stdout_until(client: &mut SpdyClient, stdout: u32, received: &mut usize, target: usize) {
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut settling = false;
    loop {
        match tokio::time::timeout_at(deadline, client.next()).await {
            Ok(Some(Frame::Data {
                stream_id, data, ..
            })) if stream_id == stdout => *received += data.len(),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
        if !settling && *received >= target {
            settling = true;
            deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        }
    }
}
