//! StartContainer: clone the container's init into its namespaces and follow its output
//! and exit.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use super::{now_ns, Container, ContainerError, ContainerManager, Phase};
use crate::agent::in_root::RootDir;
use crate::agent::process_io::{OutputReader, StdinWriter};
use crate::agent::pty::{set_size, Pty, PtyMaster, TerminalSize};
use crate::agent::reaper::ExitStatus;
use crate::agent::rootfs;
use crate::agent::setup;
use crate::agent::spawn::{self, ChildStdio, ContainerLaunch, Session, SpawnError, Spawned};
use crate::agent::spawn_pod::{spawn_in_pod, PodPidNamespace};
use crate::agent::spec::ContainerSpec;
use crate::agent::stdio::Stream;

impl ContainerManager {
    /// Returns the pid of the container's init in the agent's pid namespace.
    pub async fn start(&self, id: &str) -> Result<libc::pid_t, ContainerError> {
        let container = self.get(id)?;
        let mut claimed = false;
        container.phase.send_if_modified(|phase| {
            claimed = *phase == Phase::Created;
            if claimed {
                *phase = Phase::Starting;
            }
            claimed
        });
        if !claimed {
            return Err(ContainerError::WrongState {
                id: id.to_string(),
                state: container.phase().name(),
                wanted: "created",
            });
        }
        match self.launch(&container).await {
            Ok(spawned) => {
                let pid = spawned.pid;
                let started_at_ns = now_ns();
                container
                    .phase
                    .send_replace(Phase::Running { pid, started_at_ns });
                tokio::spawn(follow_exit(Arc::clone(&container), spawned, started_at_ns));
                Ok(pid)
            }
            Err(e) => {
                let code = match &e {
                    ContainerError::Spawn(_, s) if s.is_not_found() => 127,
                    _ => 126,
                };
                let now = now_ns();
                container.phase.send_replace(Phase::Exited {
                    status: ExitStatus::Exited(code),
                    started_at_ns: now,
                    finished_at_ns: now,
                });
                container.stdio.finish();
                Err(e)
            }
        }
    }

    async fn launch(&self, container: &Arc<Container>) -> Result<Spawned, ContainerError> {
        let id = container.spec.id.clone();
        let spawn_error = |e: SpawnError| ContainerError::Spawn(id.clone(), e);
        let dev = self.paths.dev.clone();
        let is_file = |source: &str| std::fs::metadata(source).is_ok_and(|m| !m.is_dir());
        create_destinations(&container.rootfs.rootfs, &container.spec, &is_file);
        let devpts = container
            .spec
            .terminal
            .map(|_| container.rootfs.devpts_dir());
        let steps = setup::container_steps(
            &container.spec,
            &container.rootfs.rootfs,
            &dev,
            devpts.as_deref(),
            &is_file,
        )
        .map_err(|e| ContainerError::Setup(id.clone(), e))?;
        let (stdio, outputs) = match container.spec.terminal {
            Some(size) => self.terminal_stdio(container, size).await?,
            None => pipe_stdio(container).await.map_err(spawn_error)?,
        };
        let reaper = Arc::clone(&self.reaper);
        let task_container = Arc::clone(container);
        let pod_pid = Arc::clone(&self.pod_pid);
        let spawned = tokio::task::spawn_blocking(move || {
            let launch = ContainerLaunch {
                steps: &steps,
                process: &task_container.spec.process,
                cgroup: task_container.cgroup.as_deref(),
                stdio,
            };
            if !task_container.spec.share_pod_pid {
                return spawn::spawn_container(&reaper, launch);
            }
            let mut pod = pod_pid.lock().unwrap_or_else(|e| e.into_inner());
            if !pod.as_ref().is_some_and(PodPidNamespace::alive) {
                *pod = Some(PodPidNamespace::create(&reaper)?);
            }
            let pod = pod.as_ref().ok_or(SpawnError::LostHelper)?;
            spawn_in_pod(&reaper, launch, pod)
        })
        .await
        .map_err(ContainerError::Task)?
        .map_err(spawn_error)?;
        let closes = if outputs.len() == 1 { 2 } else { 1 };
        for (stream, reader) in outputs {
            tokio::spawn(Arc::clone(&container.stdio).pump(stream, reader, closes));
        }
        Ok(spawned)
    }

    /// A terminal for stdin, stdout and stderr, from the container's own devpts instance
    /// (mounted here, bound on its /dev/pts): its master feeds the output ring (as stdout,
    /// a terminal merges both) and takes stdin when the container has one.
    async fn terminal_stdio(
        &self,
        container: &Arc<Container>,
        size: TerminalSize,
    ) -> Result<(ChildStdio, Vec<(Stream, OutputReader)>), ContainerError> {
        let id = &container.spec.id;
        let terminal_error = |e| ContainerError::Terminal(id.clone(), e);
        let devpts = {
            let mut state = self.mount_state();
            rootfs::mount_devpts(state.ops.as_mut(), &container.rootfs)
                .map_err(|e| ContainerError::Rootfs(id.clone(), e))?
        };
        let pty = Pty::open(&devpts.join("ptmx")).map_err(terminal_error)?;
        set_size(pty.master.as_fd(), size).map_err(terminal_error)?;
        let master = Arc::new(PtyMaster::new(pty.master).map_err(terminal_error)?);
        if container.spec.stdin {
            *container.stdin.lock().await = Some(StdinWriter::Terminal(Arc::clone(&master)));
        }
        let _ = container.terminal.set(Arc::clone(&master));
        let slave = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| ContainerError::Spawn(id.clone(), SpawnError::Pipe(e)))
        };
        let stdio = ChildStdio {
            stdin: slave(&pty.slave)?,
            stdout: slave(&pty.slave)?,
            stderr: pty.slave,
            session: Session::Terminal,
        };
        Ok((
            stdio,
            vec![(Stream::Stdout, OutputReader::Terminal(master))],
        ))
    }
}

/// Pipes for stdout and stderr, and for stdin when the container has one (else /dev/null).
async fn pipe_stdio(
    container: &Container,
) -> Result<(ChildStdio, Vec<(Stream, OutputReader)>), SpawnError> {
    let (stdout_read, stdout_write) = spawn::pipe()?;
    let (stderr_read, stderr_write) = spawn::pipe()?;
    let stdin = if container.spec.stdin {
        let (read, write) = spawn::pipe()?;
        let writer = spawn::pipe_sender(write).map_err(SpawnError::Pipe)?;
        *container.stdin.lock().await = Some(StdinWriter::Pipe(writer));
        read
    } else {
        spawn::dev_null()?
    };
    let stdout = spawn::pipe_receiver(stdout_read).map_err(SpawnError::Pipe)?;
    let stderr = spawn::pipe_receiver(stderr_read).map_err(SpawnError::Pipe)?;
    let stdio = ChildStdio {
        stdin,
        stdout: stdout_write,
        stderr: stderr_write,
        session: Session::Inherit,
    };
    let outputs = vec![
        (Stream::Stdout, OutputReader::Pipe(stdout)),
        (Stream::Stderr, OutputReader::Pipe(stderr)),
    ];
    Ok((stdio, outputs))
}

async fn follow_exit(container: Arc<Container>, spawned: Spawned, started_at_ns: i64) {
    // The reaper never drops a registered waiter; if it did, the process is gone anyway.
    let status = spawned
        .exit
        .await
        .unwrap_or(ExitStatus::Signaled(libc::SIGKILL));
    container.phase.send_replace(Phase::Exited {
        status,
        started_at_ns,
        finished_at_ns: now_ns(),
    });
}

/// Creates the mount destinations and the working directory in the root before the clone,
/// following the image's dangling symlinks inside the root (the child, which cannot
/// allocate, only creates plain missing directories). A failure here is left for the
/// child's own step to report.
fn create_destinations(root: &Path, spec: &ContainerSpec, is_file: &dyn Fn(&str) -> bool) {
    let Ok(dir) = RootDir::open(root) else {
        return;
    };
    for m in &spec.mounts {
        let destination = if m.is_bind() && is_file(&m.source) {
            match m.destination.rsplit_once('/') {
                Some(("", _)) | None => continue,
                Some((parent, _)) => parent,
            }
        } else {
            &m.destination
        };
        let _ = dir.create_dir_all(destination);
    }
    if !spec.process.cwd.is_empty() {
        let _ = dir.create_dir_all(&spec.process.cwd);
    }
}
