//! WaitContainer, SignalContainer, ContainerStats, UpdateContainer and stdin: calls on a
//! container's init and its cgroup.

use super::{ContainerError, ContainerManager, Phase};
use crate::agent::cgroup::{CgroupLimits, CgroupStats};

/// How a container's init ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitReport {
    pub status: crate::agent::reaper::ExitStatus,
    pub started_at_ns: i64,
    pub finished_at_ns: i64,
    /// The OOM killer's kills in the container's cgroup by then.
    pub oom_kills: u64,
}

/// How long a held-back signal waits for its handler, and how often it looks.
const DEFER_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);
const DEFER_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Signals a program can catch or ignore.
fn catchable(signal: i32) -> bool {
    signal != libc::SIGKILL && signal != libc::SIGSTOP
}

/// Whether process `pid` is the init of its PID namespace (the last NSpid is 1); a
/// container in the pod's shared namespace is not, and gets every signal at once.
fn namespace_init(pid: libc::pid_t) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .and_then(|v| v.split_whitespace().last().map(|last| last == "1"))
            .unwrap_or(false)
    })
}

/// Whether process `pid` catches or ignores `signal`, from /proc/PID/status (`None` when
/// that cannot be read: the process is gone).
pub fn handling(pid: libc::pid_t, signal: i32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    sig_handled(&status, signal)
}

/// Whether the SigCgt or SigIgn mask of a /proc/PID/status text has `signal`.
fn sig_handled(status: &str, signal: i32) -> Option<bool> {
    let bit = 1u64.checked_shl(u32::try_from(signal - 1).ok()?)?;
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    };
    Some((mask("SigCgt:")? | mask("SigIgn:")?) & bit != 0)
}

impl ContainerManager {
    /// Waits until the container's init has ended (also when it has not started yet).
    pub async fn wait(&self, id: &str) -> Result<ExitReport, ContainerError> {
        let container = self.get(id)?;
        let mut phase = container.phase.subscribe();
        let group = container.cgroup.clone();
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
                    oom_kills: group.as_deref().map_or(0, |g| self.cgroups.oom_kills(g)),
                });
            }
            if phase.changed().await.is_err() {
                // Removed before it ended.
                return Err(ContainerError::NotFound(id.to_string()));
            }
        }
    }

    /// Sends `signal` to the container's init. The init of a PID namespace gets a signal
    /// from outside it only if it has a handler for it (SIGKILL and SIGSTOP aside): one sent
    /// before the program set its handlers up (a StopContainer right after StartContainer,
    /// as critest and impatient controllers do) would be dropped, and the container killed
    /// at the end of its grace period. Such a signal is held back and sent as soon as the
    /// init handles it (or never, if it never does: the kernel would have dropped it).
    pub fn signal(&self, id: &str, signal: i32) -> Result<(), ContainerError> {
        let container = self.get(id)?;
        let pid = container.running_pid("running")?;
        if catchable(signal) && namespace_init(pid) && handling(pid, signal) == Some(false) {
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                while started.elapsed() < DEFER_LIMIT {
                    tokio::time::sleep(DEFER_POLL).await;
                    if !matches!(container.phase(), Phase::Running { pid: now, .. } if now == pid) {
                        return;
                    }
                    if handling(pid, signal) != Some(false) {
                        // SAFETY: kill takes plain integers.
                        unsafe { libc::kill(pid, signal) };
                        return;
                    }
                }
            });
            return Ok(());
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handled_signals_are_read_from_the_status_masks() {
        // busybox top: TERM (15) caught; HUP (1) caught.
        let top = "Name:\ttop\nSigIgn:\t0000000000000000\nSigCgt:\t0000000003807a27\n";
        assert_eq!(sig_handled(top, libc::SIGTERM), Some(true));
        assert_eq!(sig_handled(top, libc::SIGHUP), Some(true));
        // sleep: nothing caught; PIPE (13) ignored counts as handled (it is not dropped).
        let sleep = "SigIgn:\t0000000000001000\nSigCgt:\t0000000000000000\n";
        assert_eq!(sig_handled(sleep, libc::SIGTERM), Some(false));
        assert_eq!(sig_handled(sleep, libc::SIGPIPE), Some(true));
        assert_eq!(sig_handled("garbage", libc::SIGTERM), None);
        assert_eq!(sig_handled(sleep, 0), None);
        assert_eq!(sig_handled(sleep, 65), None);
        // This test process is alive and, like every Rust program, ignores SIGPIPE.
        assert_eq!(
            handling(std::process::id() as i32, libc::SIGPIPE),
            Some(true)
        );
        assert!(!catchable(libc::SIGKILL) && catchable(libc::SIGTERM));
    }
}
