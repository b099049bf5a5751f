//! Attach: join a running container's main process. An attacher follows the output ring
//! from the moment it joins (the ring, not the attacher, is what the process writes to, so
//! a slow attacher never stalls it: it loses what fell out of the ring, and is told how
//! much), writes to the container's stdin and resizes its terminal. Any number at once.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};

use super::{Container, ContainerError, ContainerManager, Phase};
use crate::agent::process_io::ProcessInput;
use crate::agent::process_io::ProcessOutput;
use crate::agent::pty::TerminalSize;
use crate::agent::reaper::ExitStatus;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachRequest {
    /// Write this attacher's stdin to the container's.
    pub stdin: bool,
}

/// One attacher; [`AttachSession::run`] drives it.
pub struct AttachSession {
    container: Arc<Container>,
    pid: libc::pid_t,
    /// The ring offset at the moment of joining.
    from: u64,
    stdin: bool,
}

impl ContainerManager {
    pub fn attach(
        &self,
        id: &str,
        request: AttachRequest,
    ) -> Result<AttachSession, ContainerError> {
        let container = self.get(id)?;
        let pid = container.running_pid("running")?;
        if request.stdin && !container.spec.stdin {
            return Err(ContainerError::NoStdin(id.to_string()));
        }
        let from = container.stdio.end_offset();
        Ok(AttachSession {
            container,
            pid,
            from,
            stdin: request.stdin,
        })
    }
}

impl AttachSession {
    /// Until the main process ended (then `Exited` is the last output) or the host left
    /// (`inputs` failing or `outputs` closing). `inputs` ending or `CloseStdin` stops this
    /// attacher's stdin; with `stdin_once` that, or leaving, closes the container's stdin.
    pub async fn run<I, E>(self, mut inputs: I, outputs: mpsc::Sender<ProcessOutput>)
    where
        I: Stream<Item = Result<ProcessInput, E>> + Unpin,
    {
        if outputs.send(ProcessOutput::Started(self.pid)).await.is_ok() {
            let follow = follow(Arc::clone(&self.container), self.from, outputs.clone());
            tokio::pin!(follow);
            let mut inputs_open = true;
            loop {
                tokio::select! {
                    _ = &mut follow => break,
                    _ = outputs.closed() => break,
                    input = inputs.next(), if inputs_open => match input {
                        Some(Ok(ProcessInput::Stdin(data))) => {
                            if !self.stdin {
                                continue;
                            }
                            tokio::select! {
                                _ = write_stdin(&self.container, &data) => {}
                                _ = &mut follow => break,
                                _ = outputs.closed() => break,
                            }
                        }
                        Some(Ok(ProcessInput::Resize(size))) => resize(&self.container, size),
                        // Attach signals nothing (its conversion never makes one).
                        Some(Ok(ProcessInput::Signal(_))) => {}
                        Some(Ok(ProcessInput::CloseStdin)) | None => {
                            inputs_open = false;
                            self.release_stdin().await;
                        }
                        Some(Err(_)) => break,
                    },
                }
            }
        }
        self.release_stdin().await;
    }

    /// The end of this attacher's stdin: the container's too with `stdin_once`.
    async fn release_stdin(&self) {
        if self.stdin && self.container.spec.stdin_once {
            self.container.stdin.lock().await.take();
        }
    }
}

async fn write_stdin(container: &Container, data: &[u8]) {
    let mut stdin = container.stdin.lock().await;
    if let Some(writer) = stdin.as_mut() {
        if writer.write_all(data).await.is_err() {
            // The process closed its stdin; later writes would fail the same way.
            stdin.take();
        }
    }
}

fn resize(container: &Container, size: TerminalSize) {
    if let Some(terminal) = container.terminal.get() {
        let _ = terminal.resize(size);
    }
}

/// The output from `from` on, then the main process's exit.
async fn follow(container: Arc<Container>, mut from: u64, outputs: mpsc::Sender<ProcessOutput>) {
    let buffer = Arc::clone(&container.stdio);
    while let Some((chunks, mut lost)) = buffer.next_after(from).await {
        for chunk in chunks {
            from = chunk.end();
            let message = ProcessOutput::Output {
                stream: chunk.stream,
                data: chunk.data,
                dropped: std::mem::take(&mut lost),
            };
            if outputs.send(message).await.is_err() {
                return;
            }
        }
    }
    if let Some(status) = exited(&container).await {
        let _ = outputs.send(ProcessOutput::Exited(status)).await;
    }
}

/// How the main process ended; None when the container was removed first.
async fn exited(container: &Container) -> Option<ExitStatus> {
    let mut phase = container.phase.subscribe();
    loop {
        if let Phase::Exited { status, .. } = *phase.borrow_and_update() {
            return Some(status);
        }
        phase.changed().await.ok()?;
    }
}
