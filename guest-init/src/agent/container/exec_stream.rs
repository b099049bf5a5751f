//! Exec with streams: a process in a running container's namespaces and cgroup whose stdin,
//! output, terminal size and exit travel on one bidirectional stream. It leads its own
//! process group (its own session with a terminal), which is killed when the host goes.
//!
//! Flow control: each output descriptor is read only when the bounded output queue has
//! room, so a host that does not read stalls the process on its pipe; stdin is written as
//! it comes, and the next input is read only once the last chunk is in the pipe.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::{Stream, StreamExt};

use super::{Container, ContainerError, ContainerManager};
use crate::agent::process_io::{
    KillGroupOnDrop, OutputReader, ProcessInput, ProcessOutput, StdinWriter, OUTPUT_CHUNK,
};
use crate::agent::pty::{set_size, Pty, PtyError, PtyMaster, TerminalSize};
use crate::agent::reaper::{ExitStatus, Reaper};
use crate::agent::spawn::{self, ChildStdio, ExecLaunch, Session, SpawnError, Spawned};
use crate::agent::spec::ProcessSpec;
use crate::agent::stdio::Stream as OutputStream;

/// After the process ended, how long its output may stay silent before the session stops
/// waiting for the end of file (a background child may hold the pipe open forever).
const DRAIN_IDLE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStreamRequest {
    pub args: Vec<String>,
    /// The container's environment when empty.
    pub env: Vec<String>,
    /// The container's cwd when empty.
    pub cwd: String,
    /// A terminal, with its initial size.
    pub terminal: Option<TerminalSize>,
    /// Stdin from the stream; else /dev/null.
    pub stdin: bool,
}

/// A started process and the agent's ends of its stdio; [`ExecSession::run`] drives it.
pub struct ExecSession {
    spawned: Spawned,
    /// Armed from the spawn on: a session dropped before it ran kills its process too.
    group: KillGroupOnDrop,
    stdin: Option<StdinWriter>,
    outputs: Vec<(OutputStream, OutputReader)>,
    terminal: Option<Arc<PtyMaster>>,
}

impl ContainerManager {
    /// Starts the process; the host's stream then goes to [`ExecSession::run`].
    pub async fn exec_stream(
        &self,
        id: &str,
        request: ExecStreamRequest,
    ) -> Result<ExecSession, ContainerError> {
        let container = self.get(id)?;
        let init_pid = container.running_pid("running")?;
        let process = container
            .spec
            .process
            .for_exec(request.args, request.env, request.cwd);
        let spawn_error = |e: SpawnError| ContainerError::Spawn(id.to_string(), e);
        let pipe_error = |e| spawn_error(SpawnError::Pipe(e));
        let terminal_error = |e| ContainerError::Terminal(id.to_string(), e);
        let mut stdin = None;
        let mut outputs = Vec::new();
        let mut terminal = None;
        let stdio = match request.terminal {
            Some(size) => {
                let pty = open_terminal(&self.paths.dev, init_pid).map_err(terminal_error)?;
                set_size(pty.master.as_fd(), size).map_err(terminal_error)?;
                let master = Arc::new(PtyMaster::new(pty.master).map_err(terminal_error)?);
                if request.stdin {
                    stdin = Some(StdinWriter::Terminal(Arc::clone(&master)));
                }
                outputs.push((
                    OutputStream::Stdout,
                    OutputReader::Terminal(Arc::clone(&master)),
                ));
                terminal = Some(master);
                let slave = |fd: &OwnedFd| fd.try_clone().map_err(pipe_error);
                ChildStdio {
                    stdin: slave(&pty.slave)?,
                    stdout: slave(&pty.slave)?,
                    stderr: pty.slave,
                    session: Session::Terminal,
                }
            }
            None => {
                let stdin_read = if request.stdin {
                    let (read, write) = spawn::pipe().map_err(spawn_error)?;
                    stdin = Some(StdinWriter::Pipe(
                        spawn::pipe_sender(write).map_err(pipe_error)?,
                    ));
                    read
                } else {
                    spawn::dev_null().map_err(spawn_error)?
                };
                let (stdout_read, stdout_write) = spawn::pipe().map_err(spawn_error)?;
                let (stderr_read, stderr_write) = spawn::pipe().map_err(spawn_error)?;
                for (stream, read) in [
                    (OutputStream::Stdout, stdout_read),
                    (OutputStream::Stderr, stderr_read),
                ] {
                    let reader =
                        OutputReader::Pipe(spawn::pipe_receiver(read).map_err(pipe_error)?);
                    outputs.push((stream, reader));
                }
                ChildStdio {
                    stdin: stdin_read,
                    stdout: stdout_write,
                    stderr: stderr_write,
                    session: Session::OwnGroup,
                }
            }
        };
        let spawned = spawn_in(&self.reaper, &container, init_pid, process, stdio)
            .await
            .map_err(ContainerError::Task)?
            .map_err(spawn_error)?;
        Ok(ExecSession {
            group: KillGroupOnDrop::new(spawned.pid),
            spawned,
            stdin,
            outputs,
            terminal,
        })
    }
}

/// A terminal from the container's own devpts (so the process finds its terminal in its
/// /dev/pts), else from the guest's.
fn open_terminal(dev: &std::path::Path, init_pid: libc::pid_t) -> Result<Pty, PtyError> {
    let root = std::fs::File::open(format!("/proc/{init_pid}/root"));
    match root.map(|root| Pty::open_in_root(root.as_fd())) {
        Ok(Ok(pty)) => Ok(pty),
        _ => Pty::open(&dev.join("ptmx")),
    }
}

/// Clones the process into the container on a blocking thread (the clone waits for exec).
async fn spawn_in(
    reaper: &Arc<Reaper>,
    container: &Container,
    init_pid: libc::pid_t,
    process: ProcessSpec,
    stdio: ChildStdio,
) -> Result<Result<Spawned, SpawnError>, tokio::task::JoinError> {
    let reaper = Arc::clone(reaper);
    let cgroup = container.cgroup.clone();
    tokio::task::spawn_blocking(move || {
        spawn::spawn_exec(
            &reaper,
            ExecLaunch {
                init_pid,
                process: &process,
                cgroup: cgroup.as_deref(),
                stdio,
            },
        )
    })
    .await
}

impl ExecSession {
    pub fn pid(&self) -> libc::pid_t {
        self.spawned.pid
    }

    /// Drives the process until it ended and its output was delivered, or until the host
    /// went away: `inputs` failing or `outputs` closing kills the process group. `inputs`
    /// ending closes stdin.
    pub async fn run<I, E>(self, mut inputs: I, outputs: mpsc::Sender<ProcessOutput>)
    where
        I: Stream<Item = Result<ProcessInput, E>> + Unpin,
    {
        let ExecSession {
            spawned,
            mut group,
            stdin,
            outputs: readers,
            terminal,
        } = self;
        let mut exit = spawned.exit;
        // Signals go through a pidfd: one that comes after the reaper took the process
        // (before `exit` fires) then finds it gone rather than whoever got its pid.
        let pidfd = pidfd_open(spawned.pid);
        if outputs
            .send(ProcessOutput::Started(spawned.pid))
            .await
            .is_err()
        {
            return;
        }
        let (exited, exited_seen) = watch::channel(false);
        let mut pumps = JoinSet::new();
        for (stream, reader) in readers {
            pumps.spawn(pump(stream, reader, outputs.clone(), exited_seen.clone()));
        }
        let mut stdin = stdin;
        let mut pending: Option<Vec<u8>> = None;
        let mut inputs_open = true;
        let mut killed = false;
        let status = loop {
            tokio::select! {
                biased;
                status = &mut exit => break status.unwrap_or(ExitStatus::Signaled(libc::SIGKILL)),
                _ = outputs.closed(), if !killed => {
                    group.kill();
                    killed = true;
                }
                written = write_stdin(stdin.as_mut(), &pending), if pending.is_some() => {
                    pending = None;
                    if written.is_err() {
                        stdin = None;
                    }
                }
                input = inputs.next(), if inputs_open && pending.is_none() && !killed => match input {
                    Some(Ok(ProcessInput::Stdin(data))) => {
                        if stdin.is_some() && !data.is_empty() {
                            pending = Some(data);
                        }
                    }
                    Some(Ok(ProcessInput::Resize(size))) => {
                        if let Some(terminal) = &terminal {
                            let _ = terminal.resize(size);
                        }
                    }
                    Some(Ok(ProcessInput::CloseStdin)) => stdin = None,
                    Some(Ok(ProcessInput::Signal(libc::SIGKILL))) => {
                        // As the end of the stream does: the whole group, so that no child
                        // keeps the output open; its exit is still reported.
                        group.kill();
                    }
                    Some(Ok(ProcessInput::Signal(signal))) => {
                        if let Some(pidfd) = &pidfd {
                            pidfd_send_signal(pidfd, signal);
                        }
                    }
                    None => {
                        inputs_open = false;
                        stdin = None;
                    }
                    Some(Err(_)) => {
                        group.kill();
                        killed = true;
                    }
                },
            }
        };
        group.disarm();
        drop(stdin);
        if killed {
            pumps.abort_all();
            return;
        }
        let _ = exited.send(true);
        while pumps.join_next().await.is_some() {}
        let _ = outputs.send(ProcessOutput::Exited(status)).await;
    }
}

/// A pidfd of process `pid` (Linux 5.3); none when it is gone already.
fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: the descriptor was just made for us and nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the process of `pidfd`; a process that ended is left alone.
fn pidfd_send_signal(pidfd: &OwnedFd, signal: i32) {
    // SAFETY: pidfd_send_signal takes a live pidfd, a signal number, no siginfo (the
    // kernel fills one in as kill does) and no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
}

async fn write_stdin(
    stdin: Option<&mut StdinWriter>,
    data: &Option<Vec<u8>>,
) -> std::io::Result<()> {
    match (stdin, data) {
        (Some(stdin), Some(data)) => stdin.write_all(data).await,
        _ => Ok(()),
    }
}

/// Copies one output descriptor to the host until its end, or, once the process has
/// exited, until it stays silent for [`DRAIN_IDLE`].
async fn pump(
    stream: OutputStream,
    mut reader: OutputReader,
    outputs: mpsc::Sender<ProcessOutput>,
    mut exited: watch::Receiver<bool>,
) {
    let mut buf = vec![0; OUTPUT_CHUNK];
    loop {
        let read = if *exited.borrow() {
            match tokio::time::timeout(DRAIN_IDLE, reader.read(&mut buf)).await {
                Ok(read) => read,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                read = reader.read(&mut buf) => read,
                changed = exited.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = ProcessOutput::Output {
            stream,
            data: buf[..n].to_vec(),
            dropped: 0,
        };
        if outputs.send(chunk).await.is_err() {
            return;
        }
    }
}
