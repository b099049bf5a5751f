//! Host-side connections to the agent.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::AgentClient;

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to the agent")]
    Connect(#[source] tonic::transport::Error),
    #[error("the VMM's vsock socket answered {0:?} instead of OK")]
    Handshake(String),
}

/// The longest answer line a VMM sends to `CONNECT` ("OK 4294967295\n" and some slack).
const MAX_HANDSHAKE_LINE: usize = 64;

/// A gRPC channel to whatever server listens on the unix socket at `path`: the agent under
/// `vpod-init --agent-unix`, or vpod-cri for its clients.
pub async fn unix_channel(path: impl Into<PathBuf>) -> Result<Channel, tonic::transport::Error> {
    let path: PathBuf = path.into();
    endpoint()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// Connects to an agent serving gRPC directly on a unix socket (`vpod-init --agent-unix`).
pub async fn connect_unix(path: impl Into<PathBuf>) -> Result<AgentClient<Channel>, ClientError> {
    let channel = unix_channel(path).await.map_err(ClientError::Connect)?;
    Ok(AgentClient::new(channel))
}

/// Connects to the agent's guest vsock `port` through the VMM's hybrid vsock unix socket.
pub async fn connect_hybrid_vsock(
    uds: impl Into<PathBuf>,
    port: u32,
) -> Result<AgentClient<Channel>, ClientError> {
    let uds: PathBuf = uds.into();
    let channel =
        endpoint()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let uds = uds.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(open_hybrid_vsock(&uds, port).await?))
                }
            }))
            .await
            .map_err(ClientError::Connect)?;
    Ok(AgentClient::new(channel))
}

/// A stream to guest `port` through the VMM's unix socket at `uds`.
pub async fn open_hybrid_vsock(uds: &Path, port: u32) -> std::io::Result<UnixStream> {
    let mut stream = UnixStream::connect(uds).await?;
    hybrid_vsock_handshake(&mut stream, port).await?;
    Ok(stream)
}

/// Sends `CONNECT <port>\n` and reads the answer byte by byte, so nothing of the
/// connection's payload is consumed; returns the host-side port the VMM assigned.
pub async fn hybrid_vsock_handshake<S>(stream: &mut S, port: u32) -> std::io::Result<u32>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    let mut line = Vec::new();
    loop {
        let byte = stream.read_u8().await?;
        if byte == b'\n' {
            break;
        }
        line.push(byte);
        if line.len() > MAX_HANDSHAKE_LINE {
            break;
        }
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    text.strip_prefix("OK ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                ClientError::Handshake(text),
            )
        })
}

fn endpoint() -> Endpoint {
    // The URI is required by the API and ignored by the connector.
    Endpoint::from_static("http://vpod.invalid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_handshake_returns_the_host_port_and_leaves_the_payload() {
        let (mut host, mut vmm) = tokio::io::duplex(256);
        let vmm_side = async move {
            let mut request = vec![0; "CONNECT 1024\n".len()];
            vmm.read_exact(&mut request).await.unwrap();
            assert_eq!(request, b"CONNECT 1024\n");
            vmm.write_all(b"OK 5000\nPAYLOAD").await.unwrap();
            vmm
        };
        let (port, _vmm) = tokio::join!(hybrid_vsock_handshake(&mut host, 1024), vmm_side);
        assert_eq!(port.unwrap(), 5000);
        let mut rest = [0; 7];
        host.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"PAYLOAD");
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_error() {
        let (mut host, mut vmm) = tokio::io::duplex(256);
        vmm.write_all(b"FAILURE\n").await.unwrap();
        let e = hybrid_vsock_handshake(&mut host, 1024).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
