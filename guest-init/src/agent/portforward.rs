//! PortForward: a TCP connection from the agent to a port on the pod's localhost, piped
//! to and from the host's stream. The containers share the guest's network namespace (the
//! agent gives them mount, PID, UTS and IPC namespaces, never a network one), so the
//! agent's 127.0.0.1 is theirs.
//!
//! Each direction is copied by one future that waits for the other side before it reads
//! more: a host that does not read stalls the connection (and TCP stalls the server), a
//! server that does not read stalls the host's stream.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};

use super::process_io::OUTPUT_CHUNK;

#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    #[error("could not connect to port {port} on the pod's localhost")]
    Connect {
        port: u16,
        #[source]
        source: io::Error,
    },
    #[error("the connection to port {port} failed")]
    Connection {
        port: u16,
        #[source]
        source: io::Error,
    },
}

/// From the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardInput {
    Data(Vec<u8>),
    /// The host will send no more: shut the connection's write side.
    CloseWrite,
}

/// To the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardOutput {
    Data(Vec<u8>),
    /// The server shut its write side; nothing more comes.
    Eof,
}

/// Connects to `port` on 127.0.0.1, else on ::1 (a server may listen on either alone).
pub async fn connect(port: u16) -> Result<TcpStream, PortForwardError> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect(v4).await {
        Ok(stream) => Ok(stream),
        Err(first) => TcpStream::connect(SocketAddr::from((Ipv6Addr::LOCALHOST, port)))
            .await
            .map_err(|_| PortForwardError::Connect {
                port,
                source: first,
            }),
    }
}

/// Pipes `stream` both ways until both directions ended, or until the host went away
/// (`inputs` failing or `outputs` closing): then the connection is dropped.
pub async fn pipe<I, E>(
    stream: TcpStream,
    port: u16,
    mut inputs: I,
    outputs: mpsc::Sender<Result<ForwardOutput, PortForwardError>>,
) where
    I: Stream<Item = Result<ForwardInput, E>> + Unpin,
{
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let failed = |source| PortForwardError::Connection { port, source };
    // Host to server; Err: the host went away.
    let upstream = async {
        while let Some(input) = inputs.next().await {
            match input {
                Ok(ForwardInput::Data(data)) => {
                    if let Err(e) = writer.write_all(&data).await {
                        return Ok(Some(failed(e)));
                    }
                }
                Ok(ForwardInput::CloseWrite) => break,
                Err(_) => return Err(()),
            }
        }
        let _ = writer.shutdown().await;
        Ok(None)
    };
    // Server to host; Err: the host went away.
    let downstream = async {
        let mut buf = vec![0; OUTPUT_CHUNK];
        loop {
            let message = match reader.read(&mut buf).await {
                Ok(0) => Ok(ForwardOutput::Eof),
                Ok(n) => Ok(ForwardOutput::Data(buf[..n].to_vec())),
                Err(e) => Err(failed(e)),
            };
            let last = !matches!(message, Ok(ForwardOutput::Data(_)));
            if outputs.send(message).await.is_err() {
                return Err(());
            }
            if last {
                return Ok(());
            }
        }
    };
    tokio::pin!(upstream, downstream);
    let (mut up_done, mut down_done) = (false, false);
    while !(up_done && down_done) {
        tokio::select! {
            up = &mut upstream, if !up_done => match up {
                Ok(None) => up_done = true,
                Ok(Some(e)) => {
                    let _ = outputs.send(Err(e)).await;
                    return;
                }
                Err(()) => return,
            },
            down = &mut downstream, if !down_done => match down {
                Ok(()) => down_done = true,
                Err(()) => return,
            },
            _ = outputs.closed() => return,
        }
    }
}
