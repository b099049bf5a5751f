//! Exec, Attach and PortForward: the URLs the CRI hands out ([`Runtime::streaming_url`])
//! and the [`StreamingBackend`] that the streaming server (`vpod-streaming`) runs each
//! session on, through the pod's agent (`vpod_proto::streaming`).
//!
//! A session holds no lock: it resolves the container or pod, clones the agent's client
//! from the sandbox under a short read lock and then talks to the agent on its own stream.
//! Between the client and the agent every queue is bounded (the streaming crate's
//! `StreamIo` and the agent helpers' channels), so a slow reader slows the process rather
//! than growing memory. A client that leaves drops the session's future and with it the
//! agent stream, which kills an exec'd process (an attach leaves the container running).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use tonic::transport::Channel;
use tonic::Code;
use vpod_proto::streaming::{self, ExecOptions, Output, ProcessExit, ProcessStreams};
use vpod_proto::AgentClient;
use vpod_streaming::{
    Backend, BackendError, ExecTarget, PortStream, ServerError, StreamIo, StreamRequest,
    StreamingUrls,
};

use super::{error_chain, pod_not_ready, Runtime, RuntimeError};
use crate::ids::IdError;
use crate::state::PodPhase;

impl Runtime {
    /// Gives the runtime the streaming server's URL maker; until then streaming requests
    /// fail (a daemon always sets it; tests that only need the other RPCs need not).
    pub fn set_streaming_urls(&self, urls: StreamingUrls) {
        // A second call (none is made) would keep the first server's URLs.
        let _ = self.streaming.set(urls);
    }

    /// The URL for a streaming request, after the checks containerd makes: the container
    /// exists and runs (exec, attach), the pod exists and is ready (port-forward). Ids are
    /// resolved to full ones before they go into the token.
    pub fn streaming_url(&self, request: StreamRequest) -> Result<String, RuntimeError> {
        request.validate().map_err(ServerError::Request)?;
        let request = match request {
            StreamRequest::Exec(mut exec) => {
                if exec.cmd.is_empty() {
                    return Err(RuntimeError::invalid("cmd", "must not be empty"));
                }
                exec.container_id = self.running_container(&exec.container_id)?.0.id.clone();
                StreamRequest::Exec(exec)
            }
            StreamRequest::Attach(mut attach) => {
                attach.container_id = self.running_container(&attach.container_id)?.0.id.clone();
                StreamRequest::Attach(attach)
            }
            StreamRequest::PortForward(mut forward) => {
                let pod = self.pod(&forward.pod_sandbox_id)?;
                if pod.record().phase != PodPhase::Ready {
                    return Err(pod_not_ready(&pod.id));
                }
                forward.pod_sandbox_id = pod.id.clone();
                StreamRequest::PortForward(forward)
            }
        };
        let urls = self.streaming.get().ok_or_else(|| {
            RuntimeError::Unavailable("the streaming server is not running".to_string())
        })?;
        Ok(urls.url_for(request)?)
    }

    /// The running container `wanted` names (its full id) and a client of its pod's agent.
    async fn container_agent(
        &self,
        wanted: &str,
    ) -> Result<(String, AgentClient<Channel>), RuntimeError> {
        let (container, record) = self.running_container(wanted)?;
        let agent = self.pod_agent(&record.pod_id).await?;
        Ok((container.id.clone(), agent))
    }

    /// A client of the agent of the ready pod `wanted` names.
    async fn pod_agent(&self, wanted: &str) -> Result<AgentClient<Channel>, RuntimeError> {
        let pod = self.pod(wanted)?;
        if pod.record().phase != PodPhase::Ready {
            return Err(pod_not_ready(&pod.id));
        }
        let slot = pod.sandbox.read().await;
        let sandbox = slot.as_ref().ok_or_else(|| pod_not_ready(&pod.id))?;
        Ok(sandbox.agent_client())
    }
}

/// The streaming server's backend: sessions run through the pods' agents.
pub struct StreamingBackend {
    runtime: Arc<Runtime>,
}

impl StreamingBackend {
    pub fn new(runtime: Arc<Runtime>) -> StreamingBackend {
        StreamingBackend { runtime }
    }
}

impl Backend for StreamingBackend {
    async fn exec(&self, target: ExecTarget, io: StreamIo) -> Result<i32, BackendError> {
        let (container_id, mut agent) = self
            .runtime
            .container_agent(&target.container_id)
            .await
            .map_err(backend_error)?;
        let options = ExecOptions {
            container_id,
            args: target.cmd,
            tty: io.tty,
            stdin: io.stdin.is_some(),
            ..ExecOptions::default()
        };
        let streams = streaming::exec(&mut agent, options)
            .await
            .map_err(agent_error)?;
        Ok(pump(streams, io).await?.exit_code)
    }

    async fn attach(&self, container_id: String, io: StreamIo) -> Result<(), BackendError> {
        let (container_id, mut agent) = self
            .runtime
            .container_agent(&container_id)
            .await
            .map_err(backend_error)?;
        let streams = streaming::attach(&mut agent, &container_id, io.stdin.is_some())
            .await
            .map_err(agent_error)?;
        pump(streams, io).await.map(drop)
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: String,
        port: u16,
    ) -> Result<PortStream, BackendError> {
        let mut agent = self
            .runtime
            .pod_agent(&pod_sandbox_id)
            .await
            .map_err(backend_error)?;
        let stream = streaming::port_forward(&mut agent, port)
            .await
            .map_err(agent_error)?;
        Ok(Box::new(stream))
    }
}

/// Copies the client's stdin and resizes to the process and its output to the client
/// until the process has exited and its output was delivered; its exit.
///
/// Both directions wait on bounded queues. The client closing stdin closes the process's;
/// a client that stops reading stdout or stderr stalls the output (the server drops this
/// future when the client goes, which cancels the agent's stream).
async fn pump(streams: ProcessStreams, io: StreamIo) -> Result<ProcessExit, BackendError> {
    let ProcessStreams {
        input,
        mut output,
        exit,
        ..
    } = streams;
    let StreamIo {
        stdin,
        stdout,
        stderr,
        resize,
        ..
    } = io;
    let forward_stdin = {
        let input = input.clone();
        async move {
            let Some(mut stdin) = stdin else { return };
            while let Some(chunk) = stdin.recv().await {
                if input.stdin(chunk.to_vec()).await.is_err() {
                    return;
                }
            }
            tracing::debug!("the client closed stdin");
            let closed = input.close_stdin().await;
            tracing::debug!(ok = closed.is_ok(), "stdin close sent to the agent");
        }
    };
    let forward_resizes = {
        let input = input.clone();
        async move {
            let Some(mut resize) = resize else { return };
            while let Some(size) = resize.recv().await {
                let size = streaming::TerminalSize {
                    width: size.width,
                    height: size.height,
                };
                if input.resize(size).await.is_err() {
                    return;
                }
            }
        }
    };
    // The input side stays open (held here) until the process exits: its end would close
    // the process's stdin, which only the client's close should do.
    let forward_input = async move {
        tokio::join!(forward_stdin, forward_resizes);
        let _held = input;
        std::future::pending::<Infallible>().await
    };
    let deliver_output = async move {
        while let Some(chunk) = output.recv().await {
            let (sender, data) = match chunk {
                Output::Stdout(data) => (&stdout, data),
                Output::Stderr(data) => (&stderr, data),
                Output::Dropped(bytes) => {
                    tracing::debug!(bytes, "an attacher fell behind; output lost");
                    continue;
                }
            };
            // A stream the client did not ask for, or closed, is discarded.
            if let Some(sender) = sender {
                let _ = sender.send(Bytes::from(data)).await;
            }
        }
        // The output ended: the client sees its streams close before the exit code.
        tracing::debug!("the process's output ended");
        drop((stdout, stderr));
        exit.await
    };
    tokio::select! {
        ended = deliver_output => ended.map_err(agent_error),
        never = forward_input => match never {},
    }
}

/// A runtime error as the streaming server reports it.
fn backend_error(error: RuntimeError) -> BackendError {
    match &error {
        RuntimeError::Id(IdError::NotFound { prefix, .. }) => {
            BackendError::NotFound(prefix.clone())
        }
        _ => BackendError::Failed(error_chain(&error)),
    }
}

/// A status from the agent's streaming calls as the streaming server reports it.
fn agent_error(status: tonic::Status) -> BackendError {
    match status.code() {
        Code::NotFound => BackendError::NotFound(status.message().to_string()),
        _ => BackendError::Failed(format!("the agent failed: {}", status.message())),
    }
}
