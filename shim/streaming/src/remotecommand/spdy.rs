//! Exec and attach over SPDY/3.1: the client opens one stream per channel, named by its
//! `streamType` header, and the server answers each; when the command ends the error stream
//! gets the status and every stream is finished.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::{plumb, Operation, ResizeParser, Version};
use crate::backend::Backend;
use crate::server::Timeouts;
use crate::spdy::{Session, SessionConfig, StreamReader, StreamWriter};

/// The remote-command versions SPDY clients may ask for, the server's preference first.
pub(crate) const PROTOCOLS: [(&str, Version); 4] = [
    ("v4.channel.k8s.io", Version::V4),
    ("v3.channel.k8s.io", Version::V3),
    ("v2.channel.k8s.io", Version::V2),
    ("channel.k8s.io", Version::V1),
];

#[derive(Default)]
struct Streams {
    error: Option<(StreamReader, StreamWriter)>,
    stdin: Option<(StreamReader, StreamWriter)>,
    stdout: Option<(StreamReader, StreamWriter)>,
    stderr: Option<(StreamReader, StreamWriter)>,
    resize: Option<(StreamReader, StreamWriter)>,
}

/// Serves one exec or attach on an upgraded connection until it ends.
pub(crate) async fn serve<B, IO>(
    io: IO,
    backend: Arc<B>,
    version: Version,
    operation: Operation,
    timeouts: Timeouts,
) where
    B: Backend,
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let config = SessionConfig {
        max_streams: 16,
        idle_timeout: timeouts.idle,
    };
    let Ok((session, mut incoming, driver)) = Session::new(io, config) else {
        return;
    };
    let work = async {
        let wanted = operation.wanted();
        let resize = version >= Version::V3;
        let expected = 1
            + usize::from(wanted.stdin)
            + usize::from(wanted.stdout)
            + usize::from(wanted.stderr)
            + usize::from(wanted.tty && resize);
        let mut streams = Streams::default();
        let mut received = 0;
        let deadline = Instant::now() + timeouts.stream_creation;
        while received < expected {
            let next = tokio::time::timeout_at(deadline, incoming.recv()).await;
            let Ok(Some(stream)) = next else {
                tracing::debug!("spdy client did not open its streams in time");
                session.go_away().await;
                return;
            };
            let kind = stream.headers.get("streamtype").unwrap_or("").to_owned();
            let Ok(pair) = stream.accept().await else {
                return;
            };
            let slot = match kind.as_str() {
                "error" => &mut streams.error,
                "stdin" => &mut streams.stdin,
                "stdout" => &mut streams.stdout,
                "stderr" => &mut streams.stderr,
                "resize" => &mut streams.resize,
                other => {
                    tracing::debug!(stream_type = other, "unexpected spdy stream type");
                    continue;
                }
            };
            if slot.is_none() {
                received += 1;
            }
            *slot = Some(pair);
        }

        let (plumbing, io) = plumb(wanted, resize);
        let stdin = pump_in(streams.stdin.as_mut(), plumbing.stdin);
        let resize_in = pump_resize(streams.resize.as_mut(), plumbing.resize);
        let inputs = async {
            tokio::join!(stdin, resize_in);
            std::future::pending::<()>().await
        };
        let stdout = pump_out(streams.stdout.as_mut(), plumbing.stdout);
        let stderr = pump_out(streams.stderr.as_mut(), plumbing.stderr);
        let run = async {
            tokio::select! {
                status = operation.run(backend, io) => status,
                () = inputs => unreachable_status(),
            }
        };
        let (status, _, _) = tokio::join!(run, stdout, stderr);

        if let Some((_, writer)) = streams.error.as_mut() {
            if let Some(bytes) = version.status_bytes(&status) {
                let _ = writer.write(bytes.into()).await;
            }
        }
        for (_, writer) in [
            &mut streams.error,
            &mut streams.stdin,
            &mut streams.stdout,
            &mut streams.stderr,
            &mut streams.resize,
        ]
        .into_iter()
        .flatten()
        {
            let _ = writer.finish().await;
        }
        session.go_away().await;
    };
    run_beside_driver(driver, work, timeouts.linger).await;
}

/// Polls the session driver beside `work`. If the connection ends first, `work` (and the
/// backend call inside it) is dropped; if `work` ends first, the driver gets `linger` to let
/// the client read the last frames.
pub(crate) async fn run_beside_driver<D, W>(driver: D, work: W, linger: Duration)
where
    D: std::future::Future,
    W: std::future::Future<Output = ()>,
{
    tokio::pin!(driver);
    tokio::select! {
        _ = &mut driver => {}
        () = work => {
            let _ = tokio::time::timeout(linger, driver).await;
        }
    }
}

fn unreachable_status() -> crate::status::Status {
    // `inputs` never completes; this only satisfies the select's type.
    crate::status::Status::success()
}

async fn pump_in(
    stream: Option<&mut (StreamReader, StreamWriter)>,
    tx: Option<tokio::sync::mpsc::Sender<bytes::Bytes>>,
) {
    let (Some((reader, _)), Some(tx)) = (stream, tx) else {
        return;
    };
    while let Some(chunk) = reader.recv().await {
        if tx.send(chunk).await.is_err() {
            return;
        }
    }
}

async fn pump_resize(
    stream: Option<&mut (StreamReader, StreamWriter)>,
    tx: Option<tokio::sync::mpsc::Sender<crate::backend::TerminalSize>>,
) {
    let (Some((reader, _)), Some(tx)) = (stream, tx) else {
        return;
    };
    let mut parser = ResizeParser::default();
    while let Some(chunk) = reader.recv().await {
        for size in parser.push(&chunk) {
            if tx.send(size).await.is_err() {
                return;
            }
        }
    }
}

async fn pump_out(
    stream: Option<&mut (StreamReader, StreamWriter)>,
    rx: Option<tokio::sync::mpsc::Receiver<bytes::Bytes>>,
) {
    let Some(mut rx) = rx else {
        return;
    };
    let Some((_, writer)) = stream else {
        // The client did not open this stream: drain so the backend is not blocked on it.
        while rx.recv().await.is_some() {}
        return;
    };
    while let Some(chunk) = rx.recv().await {
        if writer.write(chunk).await.is_err() {
            return;
        }
    }
    let _ = writer.finish().await;
}
