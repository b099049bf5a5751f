//! The agent's reaper. PID 1 is the parent of last resort for every process in the guest,
//! so one task collects every exit with `waitpid(-1)` on SIGCHLD and hands the statuses of
//! the processes somebody waits for to their waiters; the rest (orphans) are just reaped.
//!
//! Spawning happens under the same lock as dispatching, so a child that ends before its
//! spawner has registered it cannot be missed: the reaper has reaped it but waits for the
//! lock before it looks for a waiter.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended, decoded from its wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    pub fn from_raw(raw: libc::c_int) -> Self {
        if libc::WIFSIGNALED(raw) {
            ExitStatus::Signaled(libc::WTERMSIG(raw))
        } else {
            ExitStatus::Exited(libc::WEXITSTATUS(raw))
        }
    }

    /// As a shell reports it: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal,
        }
    }
}

/// The waiters, by pid in the agent's pid namespace.
#[derive(Default)]
pub struct Waiters {
    by_pid: HashMap<libc::pid_t, oneshot::Sender<ExitStatus>>,
}

impl Waiters {
    /// Registers interest in `pid`; call it while holding the lock taken for the spawn.
    pub fn watch(&mut self, pid: libc::pid_t) -> oneshot::Receiver<ExitStatus> {
        let (sender, receiver) = oneshot::channel();
        self.by_pid.insert(pid, sender);
        receiver
    }

    fn deliver(&mut self, pid: libc::pid_t, status: ExitStatus) {
        if let Some(sender) = self.by_pid.remove(&pid) {
            // A waiter that went away does not care.
            let _ = sender.send(status);
        }
    }
}

/// Collects exits and wakes waiters.
pub struct Reaper {
    waiters: Mutex<Waiters>,
}

impl Reaper {
    /// Starts the SIGCHLD-driven reaping task on the current runtime. The signal handler
    /// is installed before this returns, so no exit of a later child goes unnoticed.
    pub fn start() -> io::Result<Arc<Self>> {
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Arc::new(Reaper {
            waiters: Mutex::new(Waiters::default()),
        });
        let task_reaper = Arc::clone(&reaper);
        tokio::spawn(async move {
            loop {
                task_reaper.reap_ended();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    /// The lock spawners hold from before fork until their child is registered.
    pub fn lock(&self) -> MutexGuard<'_, Waiters> {
        // A panic elsewhere while holding the lock leaves the map consistent.
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps every child that has ended and delivers the statuses.
    pub fn reap_ended(&self) {
        loop {
            let mut raw = 0;
            // SAFETY: waitpid writes only to `raw`, a live local.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            self.lock().deliver(pid, ExitStatus::from_raw(raw));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_statuses_decode_to_codes_and_signals() {
        assert_eq!(ExitStatus::from_raw(3 << 8), ExitStatus::Exited(3));
        assert_eq!(
            ExitStatus::from_raw(libc::SIGTERM),
            ExitStatus::Signaled(15)
        );
        assert_eq!(ExitStatus::Signaled(9).shell_code(), 137);
        assert_eq!(ExitStatus::Exited(4).shell_code(), 4);
    }

    #[test]
    fn a_status_reaches_only_its_waiter() {
        let mut waiters = Waiters::default();
        let mut first = waiters.watch(10);
        let mut second = waiters.watch(11);
        waiters.deliver(11, ExitStatus::Exited(0));
        waiters.deliver(12, ExitStatus::Exited(1));
        assert_eq!(second.try_recv().unwrap(), ExitStatus::Exited(0));
        assert!(first.try_recv().is_err());
    }
}
