//! Host-side helpers for the agent's streaming calls (protocol 1.4): Exec, Attach and
//! PortForward, wrapped in plain tokio types so that a streaming server calls them without
//! knowing the wire.
//!
//! Flow control runs end to end: the output receivers are bounded, and a pump task reads
//! the call's stream only when there is room, so a consumer that does not read stalls
//! HTTP/2's window and, in the guest, the process's pipe or the TCP connection. Dropping
//! what a helper returned cancels the call, and the agent then kills the process (Exec)
//! or closes the connection (PortForward).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::v1;
use crate::AgentClient;

/// The protocol minor that brought Exec, Attach and PortForward.
pub const STREAMING_MINOR: u32 = 4;
const _: () = assert!(crate::PROTOCOL_MINOR >= STREAMING_MINOR);

/// Whether an agent (by its GetVersion answer) serves these calls: a pod VM booted from
/// an older initrd answers them Unimplemented.
pub fn agent_supports_streaming(version: &v1::GetVersionResponse) -> bool {
    version.protocol_major == crate::PROTOCOL_MAJOR && version.protocol_minor >= STREAMING_MINOR
}

/// Output chunks (or inputs) queued between a helper's task and its caller.
const QUEUE: usize = 8;
/// The largest chunk a port-forward sends at once, and its in-memory pipe's size.
const FORWARD_CHUNK: usize = 32 * 1024;
/// The largest stdin message (gRPC's default limit is 4 MiB).
const STDIN_CHUNK: usize = 256 * 1024;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TerminalSize {
    pub width: u16,
    pub height: u16,
}

impl From<TerminalSize> for v1::TerminalSize {
    fn from(size: TerminalSize) -> Self {
        v1::TerminalSize {
            width: size.width.into(),
            height: size.height.into(),
        }
    }
}

/// What to run with [`exec`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOptions {
    pub container_id: String,
    pub args: Vec<String>,
    /// "KEY=VALUE"; the container's environment when empty.
    pub env: Vec<String>,
    /// The container's cwd when empty.
    pub cwd: String,
    /// A pseudo-terminal; its output then all comes as stdout.
    pub tty: bool,
    /// Stdin from [`ProcessInput::stdin`]; else /dev/null.
    pub stdin: bool,
    /// The terminal's initial size (with `tty`).
    pub terminal_size: Option<TerminalSize>,
}

/// One piece of a process's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// An attacher fell more than the guest's ring behind: this many bytes are lost here.
    Dropped(u64),
}

/// How the process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// The exit code, or 128 + the signal's number when killed.
    pub exit_code: i32,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

/// The input side of an exec or attach; clones share it. When every clone is dropped the
/// input side ends, which closes the process's stdin (an attacher's, see Attach).
#[derive(Debug, Clone)]
pub struct ProcessInput {
    sender: mpsc::Sender<Input>,
}

/// The call ended: nothing more can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream to the agent has ended")]
pub struct StreamClosed;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Input {
    Stdin(Vec<u8>),
    Resize(TerminalSize),
    CloseStdin,
}

impl ProcessInput {
    /// Waits while the process does not read (the queue is bounded). Large writes go in
    /// pieces well under the agent's message limit.
    pub async fn stdin(&self, data: impl Into<Vec<u8>>) -> Result<(), StreamClosed> {
        let data = data.into();
        if data.len() <= STDIN_CHUNK {
            return self.send(Input::Stdin(data)).await;
        }
        for piece in data.chunks(STDIN_CHUNK) {
            self.send(Input::Stdin(piece.to_vec())).await?;
        }
        Ok(())
    }

    pub async fn resize(&self, size: TerminalSize) -> Result<(), StreamClosed> {
        self.send(Input::Resize(size)).await
    }

    pub async fn close_stdin(&self) -> Result<(), StreamClosed> {
        self.send(Input::CloseStdin).await
    }

    async fn send(&self, input: Input) -> Result<(), StreamClosed> {
        self.sender.send(input).await.map_err(|_| StreamClosed)
    }
}

/// A running exec or attach.
pub struct ProcessStreams {
    /// The process's pid in the guest.
    pub pid: u32,
    pub input: ProcessInput,
    /// Output in order, ending after the exit. Dropping it cancels the call.
    pub output: mpsc::Receiver<Output>,
    /// How the process ended, once its output was delivered to `output`.
    pub exit: ExitFuture,
}

/// Resolves to the process's exit, or to the status the call ended with instead.
pub struct ExitFuture(oneshot::Receiver<Result<ProcessExit, Status>>);

impl Future for ExitFuture {
    type Output = Result<ProcessExit, Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|result| {
            result.unwrap_or_else(|_| Err(Status::cancelled("the output was dropped")))
        })
    }
}

/// Runs a process in a running container with its stdio on a stream. Fails with the
/// agent's status (NotFound for an unknown container, FailedPrecondition when it does
/// not run, InvalidArgument for a bad request or a missing program).
pub async fn exec(
    client: &mut AgentClient<Channel>,
    options: ExecOptions,
) -> Result<ProcessStreams, Status> {
    let start = v1::ExecStart {
        container_id: options.container_id,
        args: options.args,
        env: options.env,
        cwd: options.cwd,
        tty: options.tty,
        stdin: options.stdin,
        terminal_size: options.terminal_size.map(Into::into),
    };
    let first = v1::ExecInput {
        input: Some(v1::exec_input::Input::Start(start)),
    };
    let (input, inputs) = input_stream(first, |input| v1::ExecInput {
        input: Some(match input {
            Input::Stdin(data) => v1::exec_input::Input::Stdin(data),
            Input::Resize(size) => v1::exec_input::Input::Resize(size.into()),
            Input::CloseStdin => v1::exec_input::Input::CloseStdin(v1::Eof {}),
        }),
    });
    let responses = client.exec(inputs).await?.into_inner();
    process_streams(input, responses).await
}

/// Joins a running container's main process: its output from now on, and its stdin
/// (`stdin`, for a container created with stdin) and terminal. Dropping the output
/// leaves it running.
pub async fn attach(
    client: &mut AgentClient<Channel>,
    container_id: &str,
    stdin: bool,
) -> Result<ProcessStreams, Status> {
    let start = v1::AttachStart {
        container_id: container_id.to_string(),
        stdin,
    };
    let first = v1::AttachInput {
        input: Some(v1::attach_input::Input::Start(start)),
    };
    let (input, inputs) = input_stream(first, |input| v1::AttachInput {
        input: Some(match input {
            Input::Stdin(data) => v1::attach_input::Input::Stdin(data),
            Input::Resize(size) => v1::attach_input::Input::Resize(size.into()),
            Input::CloseStdin => v1::attach_input::Input::CloseStdin(v1::Eof {}),
        }),
    });
    let responses = client.attach(inputs).await?.into_inner();
    process_streams(input, responses).await
}

/// The call's input stream: `first`, then what the returned handle sends.
fn input_stream<T: Send + 'static>(
    first: T,
    convert: fn(Input) -> T,
) -> (ProcessInput, impl Stream<Item = T> + Send + 'static) {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let stream = tokio_stream::once(first).chain(ReceiverStream::new(receiver).map(convert));
    (ProcessInput { sender }, stream)
}

async fn process_streams(
    input: ProcessInput,
    mut responses: Streaming<v1::ProcessOutput>,
) -> Result<ProcessStreams, Status> {
    use v1::process_output::Output as Message;
    let pid = match responses.message().await? {
        Some(v1::ProcessOutput {
            output: Some(Message::Started(started)),
            ..
        }) => started.pid,
        _ => return Err(Status::internal("the agent did not start the process")),
    };
    let (output_sender, output) = mpsc::channel(QUEUE);
    let (exit_sender, exit) = oneshot::channel();
    tokio::spawn(pump_process_output(responses, output_sender, exit_sender));
    Ok(ProcessStreams {
        pid,
        input,
        output,
        exit: ExitFuture(exit),
    })
}

/// Copies the call's output to `output` until the exit, which goes to `exit`.
async fn pump_process_output(
    mut responses: Streaming<v1::ProcessOutput>,
    output: mpsc::Sender<Output>,
    exit: oneshot::Sender<Result<ProcessExit, Status>>,
) {
    use v1::process_output::Output as Message;
    let ended = loop {
        let received = tokio::select! {
            received = responses.message() => received,
            // Nobody wants the output: cancel the call.
            _ = output.closed() => return,
        };
        let message = match received {
            Ok(Some(message)) => message,
            Ok(None) => break Err(Status::unavailable("the stream ended before the exit")),
            Err(status) => break Err(status),
        };
        if message.dropped_bytes > 0
            && output
                .send(Output::Dropped(message.dropped_bytes))
                .await
                .is_err()
        {
            return;
        }
        let chunk = match message.output {
            Some(Message::Stdout(data)) => Output::Stdout(data),
            Some(Message::Stderr(data)) => Output::Stderr(data),
            Some(Message::Exit(e)) => {
                break Ok(ProcessExit {
                    exit_code: e.exit_code,
                    signal: (e.signal != 0).then_some(e.signal),
                })
            }
            Some(Message::Started(_)) | None => continue,
        };
        // A dropped receiver: nobody wants the output, so the call is cancelled.
        if output.send(chunk).await.is_err() {
            return;
        }
    };
    drop(output);
    let _ = exit.send(ended);
}

/// A TCP connection to `port` on the pod's localhost, as an in-memory duplex stream:
/// shutting down its write side half-closes the connection, reading gives what the
/// server sends up to its own close. Fails with Unavailable when nothing listens there.
pub async fn port_forward(
    client: &mut AgentClient<Channel>,
    port: u16,
) -> Result<DuplexStream, Status> {
    use v1::port_forward_input::Input as Message;
    let (sender, receiver) = mpsc::channel(QUEUE);
    let start = v1::PortForwardInput {
        input: Some(Message::Start(v1::PortForwardStart { port: port.into() })),
    };
    let inputs = tokio_stream::once(start).chain(ReceiverStream::new(receiver));
    let responses = client.port_forward(inputs).await?.into_inner();
    let (theirs, ours) = tokio::io::duplex(FORWARD_CHUNK);
    tokio::spawn(pump_port_forward(ours, sender, responses));
    Ok(theirs)
}

/// Pipes the duplex stream to the call and back until both directions ended, or until
/// either side failed (then everything is dropped: the call is cancelled).
async fn pump_port_forward(
    ours: DuplexStream,
    sender: mpsc::Sender<v1::PortForwardInput>,
    mut responses: Streaming<v1::PortForwardOutput>,
) {
    use v1::port_forward_input::Input;
    use v1::port_forward_output::Output as Message;
    let (mut reader, mut writer) = tokio::io::split(ours);
    let upload = async move {
        let mut buf = vec![0; FORWARD_CHUNK];
        loop {
            let input = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => Input::CloseWrite(v1::Eof {}),
                Ok(n) => Input::Data(buf[..n].to_vec()),
            };
            let last = matches!(input, Input::CloseWrite(_));
            let message = v1::PortForwardInput { input: Some(input) };
            if sender.send(message).await.is_err() || last {
                return;
            }
        }
    };
    let download = async move {
        loop {
            match responses.message().await {
                Ok(Some(v1::PortForwardOutput {
                    output: Some(Message::Data(data)),
                })) => writer.write_all(&data).await.map_err(drop)?,
                Ok(Some(v1::PortForwardOutput {
                    output: Some(Message::Eof(_)),
                })) => writer.shutdown().await.map_err(drop)?,
                Ok(Some(_)) => {}
                Ok(None) => {
                    let _ = writer.shutdown().await;
                    return Ok(());
                }
                Err(_) => return Err(()),
            }
        }
    };
    tokio::pin!(upload, download);
    let mut uploaded = false;
    loop {
        tokio::select! {
            _ = &mut upload, if !uploaded => uploaded = true,
            // The call is over (both directions done) or broken: stop either way.
            _ = &mut download => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn large_stdin_writes_go_in_pieces_in_order() {
        let (sender, mut receiver) = mpsc::channel(QUEUE);
        let input = ProcessInput { sender };
        let data: Vec<u8> = (0..STDIN_CHUNK * 2 + 5).map(|i| i as u8).collect();
        let writer = {
            let data = data.clone();
            tokio::spawn(async move { input.stdin(data).await })
        };
        let mut pieces = Vec::new();
        while let Some(Input::Stdin(piece)) = receiver.recv().await {
            pieces.push(piece);
        }
        writer.await.unwrap().unwrap();
        let lengths: Vec<usize> = pieces.iter().map(Vec::len).collect();
        assert_eq!(lengths, [STDIN_CHUNK, STDIN_CHUNK, 5]);
        assert_eq!(pieces.concat(), data);
    }

    #[tokio::test]
    async fn the_input_stream_starts_with_the_start_message() {
        let (input, stream) = input_stream("start".to_string(), |i| format!("{i:?}"));
        input
            .resize(TerminalSize {
                width: 1,
                height: 2,
            })
            .await
            .unwrap();
        input.close_stdin().await.unwrap();
        drop(input);
        let all: Vec<String> = stream.collect().await;
        assert_eq!(
            all,
            [
                "start",
                "Resize(TerminalSize { width: 1, height: 2 })",
                "CloseStdin"
            ]
        );
    }

    #[test]
    fn streaming_needs_minor_4_of_this_major() {
        let version = |major, minor| v1::GetVersionResponse {
            agent_version: String::new(),
            protocol_major: major,
            protocol_minor: minor,
        };
        assert!(agent_supports_streaming(&version(1, 4)));
        assert!(agent_supports_streaming(&version(1, 9)));
        assert!(!agent_supports_streaming(&version(1, 3)));
        assert!(!agent_supports_streaming(&version(2, 4)));
    }

    #[tokio::test]
    async fn an_exit_whose_pump_is_gone_is_cancelled() {
        let (sender, receiver) = oneshot::channel();
        drop(sender);
        let status = ExitFuture(receiver).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Cancelled);
    }
}
