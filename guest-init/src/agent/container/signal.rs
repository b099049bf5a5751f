//! WaitContainer, SignalContainer, ContainerStats, UpdateContainer and stdin: calls on a
//! container's init and its cgroup.

use tokio::io::AsyncWriteExt;

use super::{ContainerError, ContainerManager, Phase};
use crate::agent::cgroup::{CgroupLimits, CgroupStats};

/// How a container's init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    pub status: crate::agent::reaper::ExitStatus,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
}

impl ContainerManager {
    /// Waits until the container's init has ended (also when it has not started yet).
    pub async fn wait(&self, id: &str) -> Result<ExitReport, ContainerError> {
        let container = self.get(id)?;
        let mut phase = container.phase.subscribe();
        drop(container);
        loop {
            if let Phase::Exited {
                status,
                started_at_ns,
                finished_at_ns,
            } = *phase.borrow_and_update()
            {
                return Ok(ExitReport {
                    status,
                    started_at_ns,
                    finished_at_ns,
                });
            }
            if phase.changed().await.is_err() {
                // Removed before it ended.
                return Err(ContainerError::NotFound(id.to_string()));
            }
        }
    }

    pub fn signal(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        let pid = container.running_pid("running")?;
        // SAFETY: kill takes plain integers.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let e = std::io::Error::last_os_error();
            // It ended meanwhile: the exit is on its way to waiters.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(ContainerError::Signal(id.to_string(), e));
            }
        }
        Ok(())
    }

    pub fn stats(&self, id: &str) -> Result<CgroupStats, ContainerError> {
        let container = self.get(id)?;
        let group = container
            .cgroup
            .as_ref()
            .ok_or_else(|| ContainerError::NoCgroup(id.to_string()))?;
        self.cgroups
            .stats(group)
            .map_err(|e| ContainerError::Cgroup(id.to_string(), e))
    }

    /// Rewrites the cgroup limits of a created or running container.
    pub fn update(&self, id: &str, limits: &CgroupLimits) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        let phase = container.phase();
        if let Phase::Exited { .. } = phase {
            return Err(ContainerError::WrongState {
                id: id.to_string(),
                state: phase.name(),
                wanted: "created or running",
            });
        }
        let group = container
            .cgroup
            .as_ref()
            .ok_or_else(|| ContainerError::NoCgroup(id.to_string()))?;
        self.cgroups
            .update(group, limits)
            .map_err(|e| ContainerError::Cgroup(id.to_string(), e))
    }

    pub async fn write_stdin(&self, id: &str, data: &[u8]) -> Result<usize, ContainerError> {
        let container = self.get(id)?;
        let mut stdin = container.stdin.lock().await;
        let pipe = stdin
            .as_mut()
            .ok_or_else(|| ContainerError::NoStdin(id.to_string()))?;
        pipe.write_all(data)
            .await
            .map_err(|e| ContainerError::Stdin(id.to_string(), e))?;
        Ok(data.len())
    }

    pub async fn close_stdin(&self, id: &str) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        container.stdin.lock().await.take();
        Ok(())
    }
}
