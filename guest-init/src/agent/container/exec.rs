//! ExecSync: a process in a running container's namespaces and cgroup, as the container's
//! user, with its output collected whole and a deadline after which it is killed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::{ContainerError, ContainerManager};
use crate::agent::reaper::ExitStatus;
use crate::agent::spawn::{self, ChildStdio, ExecLaunch, SpawnError};

/// The most output kept per stream; the rest is read and dropped.
pub const MAX_EXEC_OUTPUT: usize = 16 << 20;
/// How long output may keep flowing after the process ended (from its own children).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub args: Vec<String>,
    /// The container's environment when empty.
    pub env: Vec<String>,
    /// The container's cwd when empty.
    pub cwd: String,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
    pub timed_out: bool,
}

impl ContainerManager {
    pub async fn exec_sync(
        &self,
        id: &str,
        request: ExecRequest,
    ) -> Result<ExecOutput, ContainerError> {
        let container = self.get(id)?;
        let init_pid = container.running_pid("running")?;
        let process = container
            .spec
            .process
            .for_exec(request.args, request.env, request.cwd);
        let spawn_error = |e: SpawnError| ContainerError::Spawn(id.to_string(), e);
        let (stdout_read, stdout_write) = spawn::pipe().map_err(spawn_error)?;
        let (stderr_read, stderr_write) = spawn::pipe().map_err(spawn_error)?;
        let stdin = spawn::dev_null().map_err(spawn_error)?;
        let stdout = collect(
            spawn::pipe_receiver(stdout_read).map_err(|e| spawn_error(SpawnError::Pipe(e)))?,
        );
        let stderr = collect(
            spawn::pipe_receiver(stderr_read).map_err(|e| spawn_error(SpawnError::Pipe(e)))?,
        );
        let reaper = Arc::clone(&self.reaper);
        let cgroup = container.cgroup.clone();
        let spawned = tokio::task::spawn_blocking(move || {
            spawn::spawn_exec(
                &reaper,
                ExecLaunch {
                    init_pid,
                    process: &process,
                    cgroup: cgroup.as_deref(),
                    stdio: ChildStdio {
                        stdin,
                        stdout: stdout_write,
                        stderr: stderr_write,
                        session: spawn::Session::Inherit,
                    },
                },
            )
        })
        .await
        .map_err(ContainerError::Task)?;
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(e) if e.is_not_found() => {
                // As a shell would answer: 127 and a message, not an RPC error.
                return Ok(ExecOutput {
                    stdout: Vec::new(),
                    stderr: format!("{e}: {}\n", std::io::Error::from_raw_os_error(libc::ENOENT))
                        .into_bytes(),
                    status: ExitStatus::Exited(127),
                    timed_out: false,
                });
            }
            Err(e) => return Err(spawn_error(e)),
        };
        let pid = spawned.pid;
        let mut exit = spawned.exit;
        let mut timed_out = false;
        let status = match request.timeout {
            Some(limit) => match tokio::time::timeout(limit, &mut exit).await {
                Ok(status) => status,
                Err(_) => {
                    timed_out = true;
                    // SAFETY: kill takes plain integers; the pid is ours until we reap it.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    exit.await
                }
            },
            None => exit.await,
        }
        .unwrap_or(ExitStatus::Signaled(libc::SIGKILL));
        Ok(ExecOutput {
            stdout: stdout.finish().await,
            stderr: stderr.finish().await,
            status,
            timed_out,
        })
    }
}

/// A pipe being read into a bounded buffer.
struct Collector {
    buffer: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

fn collect(mut pipe: tokio::net::unix::pipe::Receiver) -> Collector {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&buffer);
    let task = tokio::spawn(async move {
        let mut chunk = vec![0; 16 * 1024];
        while let Ok(n) = pipe.read(&mut chunk).await {
            if n == 0 {
                break;
            }
            let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
            let room = MAX_EXEC_OUTPUT.saturating_sub(sink.len());
            sink.extend_from_slice(&chunk[..n.min(room)]);
        }
    });
    Collector { buffer, task }
}

impl Collector {
    /// Waits briefly for end of file (a background child may hold the pipe open forever).
    async fn finish(mut self) -> Vec<u8> {
        if tokio::time::timeout(DRAIN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
        std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|e| e.into_inner()))
    }
}
