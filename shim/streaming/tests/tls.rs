//! The streaming server over TLS: SPDY and WebSocket upgrades through a TLS client, what a
//! plain or stalled client gets, and the errors for unusable certificate and key files.

mod common;
#[path = "common/tls.rs"]
mod tls;
#[path = "common/ws.rs"]
mod ws;

use std::time::Duration;

use common::{collect, open_exec_streams, start, SpdyClient};
use futures_util::SinkExt;
use tls::TlsFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use vpod_streaming::{Config, ServerError, StreamingServer, TlsConfig, TlsError};

fn tls_config(files: &TlsFiles) -> Config {
    Config {
        tls: Some(files.config()),
        ..Config::default()
    }
}

/// Binds with `tls` and returns the TLS error it fails with.
async fn bind_error(tls: TlsConfig) -> TlsError {
    let config = Config {
        tls: Some(tls),
        ..Config::default()
    };
    match StreamingServer::bind(config, common::FakeBackend::default()).await {
        Err(ServerError::Tls(e)) => e,
        Err(other) => panic!("not a tls error: {other}"),
        Ok(_) => panic!("the server bound"),
    }
}

/// A SPDY v4 exec of `cat` over `connector`: stdin comes back on stdout, then Success.
async fn spdy_cat(url: &str, connector: &tokio_rustls::TlsConnector) {
    let stream = tls::connect(connector, url).await;
    let (mut client, head) = SpdyClient::connect_on(stream, url, "v4.channel.k8s.io").await;
    assert!(
        head.contains("x-stream-protocol-version: v4.channel.k8s.io"),
        "{head}"
    );
    let (error, stdin, stdout, _) = open_exec_streams(&mut client, true).await;
    let stdin = stdin.unwrap();
    client.data(stdin, b"over ", false).await;
    client.data(stdin, b"tls", true).await;
    let (data, fins, replies) = collect(&mut client).await;
    assert_eq!(replies, 4);
    assert_eq!(data.get(&stdout).map(Vec::as_slice), Some(&b"over tls"[..]));
    assert_eq!(
        String::from_utf8(data[&error].clone()).unwrap(),
        r#"{"metadata":{},"status":"Success"}"#
    );
    assert!(fins.contains(&error) && fins.contains(&stdout));
}

#[tokio::test]
async fn tls_spdy_v4_exec_pipes_stdin_and_reports_success_and_exit_codes() {
    let files = TlsFiles::new();
    let (urls, _backend, _server) = start(tls_config(&files)).await;
    let connector = files.connector(&[]);
    let url = urls
        .url_for(common::exec_request(&["cat"], false, true))
        .unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    spdy_cat(&url, &connector).await;

    let url = urls
        .url_for(common::exec_request(&["exit", "3"], false, false))
        .unwrap();
    let stream = tls::connect(&connector, &url).await;
    let (mut client, _) = SpdyClient::connect_on(stream, &url, "v4.channel.k8s.io").await;
    let (error, _, _, stderr) = open_exec_streams(&mut client, false).await;
    let (data, _, _) = collect(&mut client).await;
    let status = String::from_utf8(data[&error].clone()).unwrap();
    assert!(
        status.contains(r#"{"reason":"ExitCode","message":"3"}"#),
        "{status}"
    );
    assert_eq!(data[&stderr], b"failing\n");
}

#[tokio::test]
async fn tls_websocket_v5_exec_negotiates_http1_and_round_trips() {
    let files = TlsFiles::new();
    let (urls, _backend, _server) = start(tls_config(&files)).await;
    // As a browser or Go client would: h2 first; the server must pick HTTP/1.1.
    let connector = files.connector(&[b"h2", b"http/1.1"]);
    let url = urls
        .url_for(common::exec_request(&["cat"], false, true))
        .unwrap();
    let stream = tls::connect(&connector, &url).await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut ws = ws::connect_on(stream, &url, "v5.channel.k8s.io").await;
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
async fn plain_http_against_tls_fails_cleanly_and_the_next_tls_client_is_served() {
    let files = TlsFiles::new();
    let (urls, _backend, _server) = start(tls_config(&files)).await;
    let url = urls
        .url_for(common::exec_request(&["cat"], false, true))
        .unwrap();
    let (addr, path) = common::split_url(&url);
    let mut plain = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\
         X-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n"
    );
    plain.write_all(request.as_bytes()).await.unwrap();
    // The server answers with at most a TLS alert and closes; never with HTTP.
    let mut answer = Vec::new();
    // Read to the end or a reset: either way the server closed.
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer))
        .await
        .expect("the server kept a plain client's connection open");
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
    // The token was never seen, so the same URL still works for a TLS client.
    spdy_cat(&url, &files.connector(&[])).await;
}

#[tokio::test]
async fn a_client_stalled_in_the_handshake_is_dropped_and_others_are_served_meanwhile() {
    let files = TlsFiles::new();
    let config = Config {
        tls_handshake_timeout: Duration::from_millis(500),
        ..tls_config(&files)
    };
    let (urls, _backend, _server) = start(config).await;
    let url = urls
        .url_for(common::exec_request(&["cat"], false, true))
        .unwrap();
    let (addr, _) = common::split_url(&url);
    // Half a TLS record header, then nothing.
    let mut stalled = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03]).await.unwrap();
    spdy_cat(&url, &files.connector(&[])).await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut rest))
        .await
        .expect("the stalled handshake was not timed out")
        .ok();
}

#[tokio::test]
async fn ec_keys_load_as_pkcs8_and_as_sec1() {
    let files = TlsFiles::new();
    let sec1 = files.write(
        "sec1.pem",
        tls::pem("EC PRIVATE KEY", &tls::sec1_from_pkcs8(&files.key_pkcs8)),
    );
    // One file holding the chain and the key serves as both.
    let both = files.write(
        "both.pem",
        std::fs::read_to_string(&files.cert).unwrap()
            + &std::fs::read_to_string(&files.key).unwrap(),
    );
    for (cert, key) in [
        (files.cert.clone(), sec1),
        (both.clone(), both),
        (files.cert.clone(), files.key.clone()),
    ] {
        let config = Config {
            tls: Some(TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            }),
            ..Config::default()
        };
        let (urls, _backend, server) = start(config).await;
        let url = urls
            .url_for(common::exec_request(&["cat"], false, true))
            .unwrap();
        spdy_cat(&url, &files.connector(&[])).await;
        server.abort();
    }
}

#[tokio::test]
async fn unusable_certificate_and_key_files_are_clear_errors_at_bind() {
    let files = TlsFiles::new();
    let other = TlsFiles::new();
    let missing = files.dir.join("absent.pem");
    let empty = files.write("empty.pem", "");
    let garbled = files.write(
        "garbled.pem",
        "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
    );
    let with = |cert: &std::path::Path, key: &std::path::Path| TlsConfig {
        cert: cert.to_owned(),
        key: key.to_owned(),
    };

    let e = bind_error(with(&missing, &files.key)).await;
    assert!(
        matches!(
            e,
            TlsError::Missing {
                what: "certificate",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "the tls certificate file {} does not exist",
            missing.display()
        )
    );
    let e = bind_error(with(&files.cert, &missing)).await;
    assert!(matches!(e, TlsError::Missing { what: "key", .. }), "{e:?}");

    // A directory is there but cannot be read as a file.
    let e = bind_error(with(&files.dir, &files.key)).await;
    assert!(matches!(e, TlsError::Read { .. }), "{e:?}");

    // The key file has no certificate in it, and the certificate file no key.
    let e = bind_error(with(&files.key, &files.key)).await;
    assert!(matches!(e, TlsError::NoCertificate(_)), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "no certificate in the tls certificate file {}",
            files.key.display()
        )
    );
    let e = bind_error(with(&empty, &files.key)).await;
    assert!(matches!(e, TlsError::NoCertificate(_)), "{e:?}");
    let e = bind_error(with(&files.cert, &files.cert)).await;
    assert!(matches!(e, TlsError::NoKey(_)), "{e:?}");
    assert!(e.to_string().starts_with("no private key"), "{e}");

    let e = bind_error(with(&garbled, &files.key)).await;
    assert!(matches!(e, TlsError::Pem { .. }), "{e:?}");
    assert!(e.to_string().ends_with("is not valid pem"), "{e}");

    let e = bind_error(with(&files.cert, &other.key)).await;
    assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        format!(
            "the private key in {} does not match the certificate in {}",
            other.key.display(),
            files.cert.display()
        )
    );

    // A key section that is no key at all.
    let junk = files.write("junk-key.pem", tls::pem("PRIVATE KEY", b"not a key"));
    let e = bind_error(with(&files.cert, &junk)).await;
    assert!(matches!(e, TlsError::Refused { .. }), "{e:?}");

    // Every message is lowercase prose without a trailing period, whatever the path.
    for e in [
        bind_error(with(&missing, &files.key)).await,
        bind_error(with(&files.cert, &files.cert)).await,
        bind_error(with(&files.cert, &other.key)).await,
    ] {
        let message = e.to_string();
        assert!(!message.ends_with('.'), "{message}");
        assert!(message.starts_with(|c: char| c.is_lowercase()), "{message}");
    }
    let server_error = ServerError::Tls(bind_error(with(&missing, &files.key)).await);
    assert_eq!(
        server_error.to_string(),
        "setting up tls for the streaming server failed"
    );
}
