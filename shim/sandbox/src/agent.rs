//! The gRPC channel to a pod's agent through the VMM's hybrid vsock socket, and deadlines
//! for calls on it: a dead or stuck agent is an error, never a hang.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};
use vpod_proto::v1::GetVersionRequest;
use vpod_proto::AgentClient;

/// Why a call to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("the agent failed {call}: {status}")]
    Status {
        call: &'static str,
        status: Box<tonic::Status>,
    },
    #[error("the agent did not answer {call} within {after:?}")]
    Timeout { call: &'static str, after: Duration },
    #[error("could not open a channel to the agent")]
    Connect(#[source] tonic::transport::Error),
    #[error("the agent is incompatible")]
    Version(#[source] vpod_proto::VersionError),
}

/// HTTP/2 pings find an agent that stopped answering on an otherwise idle stream (a long
/// WaitContainer or ReadStdio). Rare, as each ping wakes an idle VM; and patient, as on a
/// host loaded past its cores a VM that is only slow may take many seconds to answer (a
/// unary call's own deadline is shorter): a VM that exits is seen at once through its
/// VMM's pidfd, and a connection that lapses is opened again by its user.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bounds one connection attempt (the VMM closes an unanswered CONNECT after 2 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel that (re)connects through `CONNECT <port>` on the VMM's unix socket `uds`.
pub async fn connect(uds: PathBuf, port: u32) -> Result<AgentClient<Channel>, AgentError> {
    // The URI is required by the API and ignored by the connector.
    let channel = Endpoint::from_static("http://[::]:50051")
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let uds = uds.clone();
            async move {
                let stream = vpod_proto::client::open_hybrid_vsock(&uds, port).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await
        .map_err(AgentError::Connect)?;
    Ok(AgentClient::new(channel))
}

/// Runs one unary call with a deadline.
pub async fn call<T>(
    call: &'static str,
    limit: Duration,
    rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, AgentError> {
    match tokio::time::timeout(limit, rpc).await {
        Err(_) => Err(AgentError::Timeout { call, after: limit }),
        Ok(Err(status)) => Err(AgentError::Status {
            call,
            status: Box::new(status),
        }),
        Ok(Ok(reply)) => Ok(reply.into_inner()),
    }
}

/// A connected agent and the protocol minor it speaks (what it can be asked for).
pub struct CheckedAgent {
    pub client: AgentClient<Channel>,
    pub minor: u32,
}

/// Connects and checks the agent's protocol version, within `limit`.
pub async fn connect_and_check(
    uds: PathBuf,
    port: u32,
    limit: Duration,
) -> Result<CheckedAgent, AgentError> {
    let attempt = async {
        let mut client = connect(uds, port).await?;
        let version = call(
            "GetVersion",
            limit,
            client.get_version(GetVersionRequest {}),
        )
        .await?;
        vpod_proto::check_compatible(&version).map_err(AgentError::Version)?;
        Ok(CheckedAgent {
            client,
            minor: version.protocol_minor,
        })
    };
    tokio::time::timeout(limit, attempt)
        .await
        .unwrap_or(Err(AgentError::Timeout {
            call: "connect",
            after: limit,
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    /// A fake VMM socket that records the CONNECT line and answers `reply`.
    async fn fake_vmm(
        dir: &std::path::Path,
        reply: &'static str,
    ) -> (PathBuf, tokio::task::JoinHandle<String>) {
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
            if reply.starts_with("OK") {
                // Keep the stream open and say nothing more.
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            line
        });
        (path, task)
    }

    #[tokio::test]
    async fn the_connector_sends_connect_to_the_agent_port_and_a_refusal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (path, vmm) = fake_vmm(dir.path(), "FAILURE\n").await;
        let result = connect(path, vpod_proto::AGENT_VSOCK_PORT).await;
        assert!(matches!(result, Err(AgentError::Connect(_))));
        assert_eq!(vmm.await.unwrap(), "CONNECT 1024\n");
    }

    #[tokio::test]
    async fn a_silent_agent_is_a_timeout_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        // Accepts CONNECT with OK, then never speaks HTTP/2.
        let (path, _vmm) = fake_vmm(dir.path(), "OK 5000\n").await;
        let limit = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let result = connect_and_check(path, vpod_proto::AGENT_VSOCK_PORT, limit).await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
