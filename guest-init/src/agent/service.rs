//! The gRPC handlers: decode, call the container manager (or the network), map the error.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use vpod_proto::v1;

use super::container::ContainerManager;
use super::convert;
use super::convert::stream as convert_stream;
use super::guest_info::{guest_info, GuestClock};
use super::network::{self, Rtnetlink};
use super::portforward;
use super::process_io::{ProcessOutput, OUTPUT_QUEUE};
use super::reaper::ExitStatus;
use super::share;
use super::stdio::Stream as StdioStream;

pub struct AgentService {
    pub containers: Arc<ContainerManager>,
    pub clock: GuestClock,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::StdioChunk, Status>> + Send>>;
type ProcessOutputStream = Pin<Box<dyn Stream<Item = Result<v1::ProcessOutput, Status>> + Send>>;
type ForwardStream = Pin<Box<dyn Stream<Item = Result<v1::PortForwardOutput, Status>> + Send>>;

#[tonic::async_trait]
impl vpod_proto::Agent for AgentService {
    async fn get_version(
        &self,
        _: Request<v1::GetVersionRequest>,
    ) -> Result<Response<v1::GetVersionResponse>, Status> {
        Ok(Response::new(v1::GetVersionResponse {
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol_major: vpod_proto::PROTOCOL_MAJOR,
            protocol_minor: vpod_proto::PROTOCOL_MINOR,
        }))
    }

    async fn guest_info(
        &self,
        _: Request<v1::GuestInfoRequest>,
    ) -> Result<Response<v1::GuestInfoResponse>, Status> {
        let info = guest_info(&self.clock);
        Ok(Response::new(v1::GuestInfoResponse {
            kernel_release: info.kernel_release,
            boot_to_init_ns: info.boot_to_init_ns,
            init_uptime_ns: info.init_uptime_ns,
            memory_total_bytes: info.memory_total_bytes,
            memory_available_bytes: info.memory_available_bytes,
            vcpus: info.vcpus,
        }))
    }

    async fn create_container(
        &self,
        request: Request<v1::CreateContainerRequest>,
    ) -> Result<Response<v1::CreateContainerResponse>, Status> {
        let spec = convert::create_request(request.into_inner())?;
        let containers = Arc::clone(&self.containers);
        // Mounting may block on disk I/O.
        tokio::task::spawn_blocking(move || containers.create(spec))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::CreateContainerResponse {}))
    }

    async fn start_container(
        &self,
        request: Request<v1::StartContainerRequest>,
    ) -> Result<Response<v1::StartContainerResponse>, Status> {
        let pid = self.containers.start(&request.into_inner().id).await?;
        Ok(Response::new(v1::StartContainerResponse {
            pid: u32::try_from(pid).unwrap_or(0),
        }))
    }

    async fn wait_container(
        &self,
        request: Request<v1::WaitContainerRequest>,
    ) -> Result<Response<v1::WaitContainerResponse>, Status> {
        use v1::wait_container_response::Status as Ended;
        let report = self.containers.wait(&request.into_inner().id).await?;
        Ok(Response::new(v1::WaitContainerResponse {
            status: Some(match report.status {
                ExitStatus::Exited(code) => Ended::ExitCode(code),
                ExitStatus::Signaled(signal) => Ended::Signal(signal),
            }),
            started_at_ns: report.started_at_ns,
            finished_at_ns: report.finished_at_ns,
            oom_kills: report.oom_kills,
        }))
    }

    async fn signal_container(
        &self,
        request: Request<v1::SignalContainerRequest>,
    ) -> Result<Response<v1::SignalContainerResponse>, Status> {
        let request = request.into_inner();
        if !(1..=64).contains(&request.signal) {
            return Err(Status::invalid_argument(format!(
                "invalid signal: {} is not 1..64",
                request.signal
            )));
        }
        self.containers.signal(&request.id, request.signal)?;
        Ok(Response::new(v1::SignalContainerResponse {}))
    }

    async fn remove_container(
        &self,
        request: Request<v1::RemoveContainerRequest>,
    ) -> Result<Response<v1::RemoveContainerResponse>, Status> {
        self.containers.remove(&request.into_inner().id).await?;
        Ok(Response::new(v1::RemoveContainerResponse {}))
    }

    async fn container_stats(
        &self,
        request: Request<v1::ContainerStatsRequest>,
    ) -> Result<Response<v1::ContainerStatsResponse>, Status> {
        let stats = self.containers.stats(&request.into_inner().id)?;
        Ok(Response::new(v1::ContainerStatsResponse {
            cpu_usage_ns: stats.cpu_usage_ns,
            memory_usage_bytes: stats.memory_usage_bytes,
            memory_limit_bytes: stats.memory_limit_bytes,
            pids_current: stats.pids_current,
            oom_kills: stats.oom_kills,
        }))
    }

    async fn update_container(
        &self,
        request: Request<v1::UpdateContainerRequest>,
    ) -> Result<Response<v1::UpdateContainerResponse>, Status> {
        let request = request.into_inner();
        let limits = convert::cgroup_limits(&request.limits.unwrap_or_default());
        self.containers.update(&request.id, &limits)?;
        Ok(Response::new(v1::UpdateContainerResponse {}))
    }

    async fn exec_sync(
        &self,
        request: Request<v1::ExecSyncRequest>,
    ) -> Result<Response<v1::ExecSyncResponse>, Status> {
        let request = request.into_inner();
        let id = request.container_id.clone();
        let exec = convert::exec_request(request)?;
        let output = self.containers.exec_sync(&id, exec).await?;
        Ok(Response::new(v1::ExecSyncResponse {
            stdout: output.stdout,
            stderr: output.stderr,
            exit_code: output.status.shell_code(),
            timed_out: output.timed_out,
            signal: match output.status {
                ExitStatus::Signaled(signal) => signal,
                ExitStatus::Exited(_) => 0,
            },
        }))
    }

    type ReadStdioStream = ChunkStream;

    async fn read_stdio(
        &self,
        request: Request<v1::ReadStdioRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let request = request.into_inner();
        let container = self.containers.get(&request.container_id)?;
        let buffer = Arc::clone(&container.stdio);
        drop(container);
        let stop_at = request.no_follow.then(|| buffer.end_offset());
        let stream = async_stream(buffer, request.from_offset, stop_at);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn write_stdin(
        &self,
        request: Request<v1::WriteStdinRequest>,
    ) -> Result<Response<v1::WriteStdinResponse>, Status> {
        let request = request.into_inner();
        let written = self
            .containers
            .write_stdin(&request.container_id, &request.data)
            .await?;
        Ok(Response::new(v1::WriteStdinResponse {
            written: written as u64,
        }))
    }

    async fn close_stdin(
        &self,
        request: Request<v1::CloseStdinRequest>,
    ) -> Result<Response<v1::CloseStdinResponse>, Status> {
        self.containers
            .close_stdin(&request.into_inner().container_id)
            .await?;
        Ok(Response::new(v1::CloseStdinResponse {}))
    }

    type ExecStream = ProcessOutputStream;

    async fn exec(
        &self,
        request: Request<Streaming<v1::ExecInput>>,
    ) -> Result<Response<ProcessOutputStream>, Status> {
        let mut inputs = request.into_inner();
        let (id, exec) = convert_stream::exec_start(inputs.message().await?)?;
        let session = self.containers.exec_stream(&id, exec).await?;
        let inputs = inputs.map(|m| Ok(convert_stream::exec_input(m?)?));
        Ok(Response::new(process_outputs(|outputs| {
            session.run::<_, Status>(inputs, outputs)
        })))
    }

    type AttachStream = ProcessOutputStream;

    async fn attach(
        &self,
        request: Request<Streaming<v1::AttachInput>>,
    ) -> Result<Response<ProcessOutputStream>, Status> {
        let mut inputs = request.into_inner();
        let (id, attach) = convert_stream::attach_start(inputs.message().await?)?;
        let session = self.containers.attach(&id, attach)?;
        let inputs = inputs.map(|m| Ok(convert_stream::attach_input(m?)?));
        Ok(Response::new(process_outputs(|outputs| {
            session.run::<_, Status>(inputs, outputs)
        })))
    }

    type PortForwardStream = ForwardStream;

    async fn port_forward(
        &self,
        request: Request<Streaming<v1::PortForwardInput>>,
    ) -> Result<Response<ForwardStream>, Status> {
        let mut inputs = request.into_inner();
        let port = convert_stream::port_forward_start(inputs.message().await?)?;
        let connection = portforward::connect(port).await?;
        let inputs = inputs.map(|m| Ok(convert_stream::port_forward_input(m?)?));
        let (outputs, receiver) = mpsc::channel(OUTPUT_QUEUE);
        tokio::spawn(portforward::pipe::<_, Status>(
            connection, port, inputs, outputs,
        ));
        let stream = ReceiverStream::new(receiver).map(convert_stream::port_forward_output);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn configure_network(
        &self,
        request: Request<v1::ConfigureNetworkRequest>,
    ) -> Result<Response<v1::ConfigureNetworkResponse>, Status> {
        let config = convert::network_request(request.into_inner())?;
        network::configure(&Rtnetlink::connect()?, &config).await?;
        Ok(Response::new(v1::ConfigureNetworkResponse {}))
    }

    async fn mount_share(
        &self,
        request: Request<v1::MountShareRequest>,
    ) -> Result<Response<v1::MountShareResponse>, Status> {
        let tag = request.into_inner().tag;
        match share::mount_share(&tag) {
            Ok(()) => Ok(Response::new(v1::MountShareResponse {})),
            Err(e @ share::ShareError::BadTag(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e) => Err(Status::internal(vpod_proto::error_chain(&e))),
        }
    }
}

/// Runs a session on its own task with a bounded queue of outputs, which become the
/// call's stream: the session waits while the host does not read.
fn process_outputs<F>(run: impl FnOnce(mpsc::Sender<ProcessOutput>) -> F) -> ProcessOutputStream
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (outputs, receiver) = mpsc::channel(OUTPUT_QUEUE);
    tokio::spawn(run(outputs));
    Box::pin(ReceiverStream::new(receiver).map(|o| Ok(convert_stream::process_output(o))))
}

/// Follows a container's output ring from byte `from` (0: its oldest kept byte) to the end,
/// or only up to offset `stop_at`.
fn async_stream(
    buffer: Arc<super::stdio::StdioBuffer>,
    mut from: u64,
    stop_at: Option<u64>,
) -> impl Stream<Item = Result<v1::StdioChunk, Status>> + Send {
    let (sender, receiver) = tokio::sync::mpsc::channel(16);
    let stop_at = stop_at.unwrap_or(u64::MAX);
    tokio::spawn(async move {
        while from < stop_at {
            let Some((chunks, mut lost)) = buffer.next_after(from).await else {
                break;
            };
            for chunk in chunks {
                if chunk.offset >= stop_at {
                    return;
                }
                from = chunk.end();
                let offset = chunk.offset;
                let message = v1::StdioChunk {
                    stream: match chunk.stream {
                        StdioStream::Stdout => v1::StdioStream::Stdout,
                        StdioStream::Stderr => v1::StdioStream::Stderr,
                    } as i32,
                    data: chunk.data,
                    dropped_bytes: std::mem::take(&mut lost),
                    offset,
                };
                if sender.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}
