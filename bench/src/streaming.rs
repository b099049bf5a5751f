//! The CRI streaming paths measured inside `vpod-bench net-pods` (whose pods, runc
//! containers and network they reuse), as a kubelet's client sees them:
//!
//! - exec round trip: `true` to its exit code, three ways in the same run: ExecSync (one
//!   gRPC call), a streaming Exec (the Exec call for a URL, the WebSocket upgrade with
//!   `v5.channel.k8s.io`, until the status arrives on channel 3), and `runc exec` into a
//!   runc container (its own process start, the floor without a VM);
//! - port-forward: the same file fetched over HTTP through a PortForward tunnel (PortForward
//!   call, WebSocket upgrade with `v4.channel.k8s.io`, the request on data channel 0) and
//!   over a direct TCP connection to the pod's IP, as throughput; and the time to the first
//!   byte of a small answer (a 404) both ways, as connect latency.
//!
//! The WebSocket client is tokio-tungstenite's; the upgrade goes to the URL the CRI
//! returned, on the streaming server's loopback address.

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use vpod_proto::cri::*;

use vpod_bench::report::Row;

use crate::cri::Clients;

/// The v4/v5 remote-command protocol's status channel.
const ERROR: u8 = 3;
/// No exchange waits longer than this.
const LIMIT: Duration = Duration::from_secs(120);

/// ExecSync of `cmd`: its duration; fails unless it exits 0.
pub async fn exec_sync(c: &mut Clients, container: &str, cmd: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let out = c
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 60,
        })
        .await
        .context("ExecSync")?
        .into_inner();
    if out.exit_code != 0 {
        bail!("ExecSync of {cmd:?} exited {}", out.exit_code);
    }
    Ok(started.elapsed())
}

/// A streaming Exec of `cmd` over WebSocket v5, from the Exec call to the status: its
/// duration; fails unless the status is Success.
pub async fn exec_streaming(c: &mut Clients, container: &str, cmd: &[&str]) -> Result<Duration> {
    let started = Instant::now();
    let url = c
        .runtime
        .exec(ExecRequest {
            container_id: container.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            tty: false,
            stdin: false,
            stdout: true,
            stderr: true,
        })
        .await
        .context("Exec")?
        .into_inner()
        .url;
    let mut ws = connect(&url, "v5.channel.k8s.io").await?;
    let mut status = Vec::new();
    let read = async {
        while let Some(message) = ws.next().await {
            match message.context("reading the exec's WebSocket")? {
                Message::Binary(data) if data.first() == Some(&ERROR) => {
                    status.extend_from_slice(&data[1..])
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .context("the exec's stream did not end")??;
    let elapsed = started.elapsed();
    let status = String::from_utf8_lossy(&status);
    if !status.contains("\"Success\"") {
        bail!("streaming exec of {cmd:?}: status {status}");
    }
    Ok(elapsed)
}

/// `runc exec ID true`: its duration.
pub fn runc_exec(id: &str) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new("runc")
        .args(["exec", id, "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running runc exec")?;
    if !status.success() {
        bail!("runc exec {id} true failed ({status})");
    }
    Ok(started.elapsed())
}

/// One HTTP/1.0 exchange through a PortForward tunnel to `port` of `pod` over WebSocket
/// (`v4.channel.k8s.io`: data on channel 0, errors on 1, each channel's first message the
/// port): the answer's length, the time to its first byte and to its end, both from before
/// the PortForward call.
pub async fn port_forward_get(
    c: &mut Clients,
    pod: &str,
    port: u16,
    path: &str,
) -> Result<(u64, Duration, Duration)> {
    let started = Instant::now();
    let url = c
        .runtime
        .port_forward(PortForwardRequest {
            pod_sandbox_id: pod.into(),
            port: vec![i32::from(port)],
        })
        .await
        .context("PortForward")?
        .into_inner()
        .url;
    let mut ws = connect(&url, "v4.channel.k8s.io").await?;
    let mut request = vec![0u8];
    request.extend_from_slice(format!("GET /{path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes());
    ws.send(Message::Binary(request.into()))
        .await
        .context("sending the request through the tunnel")?;
    let (mut bytes, mut first, mut headers_seen) = (0u64, None, [false, false]);
    let read = async {
        while let Some(message) = ws.next().await {
            match message.context("reading the tunnel")? {
                Message::Binary(data) if !data.is_empty() => {
                    let channel = usize::from(data[0]);
                    if channel > 1 {
                        continue;
                    }
                    // Each channel opens with the port (two bytes).
                    let payload = if headers_seen[channel] {
                        &data[1..]
                    } else {
                        headers_seen[channel] = true;
                        data.get(3..).unwrap_or(&[])
                    };
                    if channel == 1 && !payload.is_empty() {
                        bail!("port-forward error: {}", String::from_utf8_lossy(payload));
                    }
                    if channel == 0 && !payload.is_empty() {
                        first.get_or_insert_with(|| started.elapsed());
                        bytes += payload.len() as u64;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(LIMIT, read)
        .await
        .context("the tunnel did not end")??;
    let end = started.elapsed();
    let _ = ws.close(None).await;
    Ok((bytes, first.unwrap_or(end), end))
}

/// The same exchange over a direct TCP connection: length, first byte, end (from before
/// the connect).
pub fn direct_get(addr: SocketAddr, path: &str) -> Result<(u64, Duration, Duration)> {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, LIMIT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(LIMIT))?;
    stream.write_all(format!("GET /{path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes())?;
    let mut buf = vec![0u8; 256 * 1024];
    let (mut bytes, mut first) = (0u64, None);
    loop {
        let n = stream.read(&mut buf).context("reading the answer")?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(|| started.elapsed());
        bytes += n as u64;
    }
    let end = started.elapsed();
    Ok((bytes, first.unwrap_or(end), end))
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A WebSocket to a streaming URL (`http://ADDR/...`) offering `protocol`.
async fn connect(url: &str, protocol: &str) -> Result<Ws> {
    let ws_url = url
        .strip_prefix("http://")
        .map(|rest| format!("ws://{rest}"))
        .with_context(|| format!("{url:?} is not an http:// streaming URL"))?;
    let addr = ws_url
        .trim_start_matches("ws://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut request = ws_url
        .as_str()
        .into_client_request()
        .context("a WebSocket request")?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_str(protocol).context("the subprotocol header")?,
    );
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .with_context(|| format!("connecting to the streaming server at {addr}"))?;
    tcp.set_nodelay(true)?;
    let (ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .with_context(|| format!("the WebSocket upgrade of {url}"))?;
    let chosen = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if chosen != protocol {
        bail!("the streaming server chose {chosen:?}, not {protocol:?}");
    }
    Ok(ws)
}

/// What the streaming figures run against, from `net-pods`' setup.
pub struct Targets<'a> {
    /// The pod whose HTTP server is fetched (pod A) and its address.
    pub pod: &'a str,
    pub pod_addr: SocketAddr,
    /// The file it serves and its size.
    pub file: &'a str,
    pub file_bytes: u64,
    /// A running container for the execs (in pod B), and a running runc container.
    pub container: &'a str,
    pub runc_id: &'a str,
}

/// Exec round trips (`exec_runs` each way, after one warm-up each) and port-forward
/// transfers (`transfer_runs` each way, after a warm-up), as rows.
pub async fn measure(
    c: &mut Clients,
    targets: &Targets<'_>,
    exec_runs: usize,
    transfer_runs: usize,
    host: &str,
) -> Result<Vec<Row>> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (mut sync, mut stream, mut runc) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=exec_runs {
        let s = exec_sync(c, targets.container, &["true"]).await?;
        let w = exec_streaming(c, targets.container, &["true"]).await?;
        let r = runc_exec(targets.runc_id)?;
        if run > 0 {
            sync.push(ms(s));
            stream.push(ms(w));
            runc.push(ms(r));
        }
    }
    let mut rows = vec![
        Row::timing("exec_true", "vpod-execsync", "grpc", host, &sync),
        Row::timing("exec_true", "vpod-exec", "websocket-v5", host, &stream),
        Row::timing("exec_true", "runc-exec", "runc", host, &runc),
    ];

    // Time to the first byte of a short answer (a 404), tunnel against direct.
    let (mut pf_first, mut direct_first) = (Vec::new(), Vec::new());
    for run in 0..=exec_runs {
        let (_, f, _) = port_forward_get(c, targets.pod, targets.pod_addr.port(), "none").await?;
        let (_, d, _) = direct_get(targets.pod_addr, "none")?;
        if run > 0 {
            pf_first.push(ms(f));
            direct_first.push(ms(d));
        }
    }
    rows.push(Row::timing(
        "connect_first_byte",
        "vpod-portforward",
        "websocket-v4",
        host,
        &pf_first,
    ));
    rows.push(Row::timing(
        "connect_first_byte",
        "vpod-direct-tcp",
        "pod-ip",
        host,
        &direct_first,
    ));

    let (mut pf, mut direct) = (Vec::new(), Vec::new());
    for run in 0..=transfer_runs {
        let (pf_bytes, _, pf_end) =
            port_forward_get(c, targets.pod, targets.pod_addr.port(), targets.file).await?;
        let (direct_bytes, _, direct_end) = direct_get(targets.pod_addr, targets.file)?;
        for (what, got) in [("port-forward", pf_bytes), ("direct", direct_bytes)] {
            if got < targets.file_bytes {
                bail!("{what} fetch got {got} bytes of {}", targets.file_bytes);
            }
        }
        eprintln!(
            "net-pods: streaming run {run}: port-forward {:.0} ms, direct {:.0} ms",
            ms(pf_end),
            ms(direct_end)
        );
        if run > 0 {
            pf.push(ms(pf_end));
            direct.push(ms(direct_end));
        }
    }
    let config = format!("{}mib", targets.file_bytes >> 20);
    for (imp, samples) in [("vpod-portforward", &pf), ("vpod-direct-tcp", &direct)] {
        let mut row = Row::timing("portforward_get", imp, &config, host, samples);
        row.mb_s = row
            .timing
            .map(|t| targets.file_bytes as f64 / 1e6 / (t.p50 / 1e3));
        rows.push(row);
    }
    Ok(rows)
}
