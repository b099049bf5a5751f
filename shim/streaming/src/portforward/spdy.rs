//! Port-forward over SPDY (`portforward.k8s.io`): per client connection an `error` and a
//! `data` stream, both with `port` and `requestID` headers, paired by requestID.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{forward_error, COPY_CHUNK};
use crate::backend::Backend;
use crate::remotecommand::spdy::run_beside_driver;
use crate::server::Timeouts;
use crate::spdy::frame::rst;
use crate::spdy::{IncomingStream, Session, SessionConfig, StreamReader, StreamWriter};

/// The one subprotocol of port-forward over SPDY.
pub(crate) const PROTOCOL: &str = "portforward.k8s.io";

type Pair = (StreamReader, StreamWriter);

#[derive(Default)]
struct Pending {
    port: u16,
    data: Option<Pair>,
    error: Option<Pair>,
    since: Option<Instant>,
}

/// Serves port-forward for `pod` on an upgraded connection until the client leaves.
pub(crate) async fn serve<B, IO>(io: IO, backend: Arc<B>, pod: String, timeouts: Timeouts)
where
    B: Backend,
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let config = SessionConfig {
        max_streams: 1024,
        idle_timeout: timeouts.idle,
    };
    let Ok((_session, mut incoming, driver)) = Session::new(io, config) else {
        return;
    };
    let work = async move {
        let mut pending: HashMap<String, Pending> = HashMap::new();
        // Forwards run as tasks of this set: dropping it (the client left) aborts them all.
        let mut forwards = JoinSet::new();
        let mut tick = tokio::time::interval(
            timeouts
                .stream_creation
                .min(std::time::Duration::from_secs(1)),
        );
        loop {
            tokio::select! {
                next = incoming.recv() => {
                    let Some(stream) = next else { break };
                    let Some((request_id, port, is_data)) = classify(&stream) else {
                        stream.reject(rst::CANCEL).await;
                        continue;
                    };
                    let Ok(pair) = stream.accept().await else { break };
                    let entry = pending.entry(request_id.clone()).or_default();
                    entry.port = port;
                    entry.since.get_or_insert_with(Instant::now);
                    if is_data {
                        entry.data = Some(pair);
                    } else {
                        entry.error = Some(pair);
                    }
                    if entry.data.is_some() && entry.error.is_some() {
                        if let Some(Pending { port, data: Some(data), error: Some(error), .. }) =
                            pending.remove(&request_id)
                        {
                            forwards.spawn(forward(backend.clone(), pod.clone(), port, data, error));
                        }
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    let stale: Vec<String> = pending
                        .iter()
                        .filter(|(_, p)| p.since.is_some_and(|s| now - s > timeouts.stream_creation))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in stale {
                        if let Some(mut p) = pending.remove(&id) {
                            if let Some((_, writer)) = p.error.as_mut() {
                                let message = format!("timed out waiting for streams of request {id}");
                                let _ = writer.write(Bytes::from(message)).await;
                                let _ = writer.finish().await;
                            }
                            if let Some((_, writer)) = p.data.as_mut() {
                                let _ = writer.finish().await;
                            }
                        }
                    }
                }
                Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
            }
        }
    };
    run_beside_driver(driver, work, timeouts.linger).await;
}

/// The request id, port and kind of a new stream, or `None` if the kubelet would refuse it.
fn classify(stream: &IncomingStream) -> Option<(String, u16, bool)> {
    let port: u16 = stream.headers.get("port")?.parse().ok()?;
    if port == 0 {
        return None;
    }
    let is_data = match stream.headers.get("streamtype")? {
        "data" => true,
        "error" => false,
        _ => return None,
    };
    // Clients older than the requestID header open error then data with consecutive ids.
    let request_id = match stream.headers.get("requestid") {
        Some(id) if !id.is_empty() => id.to_owned(),
        _ if is_data => stream.id.saturating_sub(2).to_string(),
        _ => stream.id.to_string(),
    };
    Some((request_id, port, is_data))
}

async fn forward<B: Backend>(
    backend: Arc<B>,
    pod: String,
    port: u16,
    mut data: Pair,
    mut error: Pair,
) {
    match backend.port_forward(pod.clone(), port).await {
        Err(e) => {
            let message = forward_error(port, &pod, &e);
            tracing::debug!(%message, "port-forward failed");
            let _ = error.1.write(Bytes::from(message)).await;
        }
        Ok(conn) => {
            let (mut from_pod, mut to_pod) = tokio::io::split(conn);
            let (reader, writer, error_writer) = (&mut data.0, &mut data.1, &mut error.1);
            let upstream = async {
                while let Some(chunk) = reader.recv().await {
                    if to_pod.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                let _ = to_pod.shutdown().await;
            };
            // The client waits for both our FINs once the pod side is done, so they go out
            // then, not when the client's side is done too.
            let downstream = async {
                let mut buf = vec![0u8; COPY_CHUNK];
                loop {
                    match from_pod.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if writer
                                .write(Bytes::copy_from_slice(&buf[..n]))
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    }
                }
                let _ = writer.finish().await;
                let _ = error_writer.finish().await;
            };
            tokio::join!(upstream, downstream);
        }
    }
    let _ = data.1.finish().await;
    let _ = error.1.finish().await;
}
