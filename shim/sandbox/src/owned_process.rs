//! A helper process of a pod (its VMM, its virtiofsd): our child, reaped here, or adopted
//! by PID from the pod's state after a restart of the runtime. Both are ended by PID only
//! while the PID still is theirs.

use std::process::{Child, ExitStatus};
use std::sync::Mutex;

use rustix::process::{Pid, Signal};

#[derive(Debug)]
pub(crate) struct OwnedProcess {
    pid: u32,
    child: Option<Mutex<Child>>,
}

impl OwnedProcess {
    pub(crate) fn spawned(child: Child) -> OwnedProcess {
        OwnedProcess {
            pid: child.id(),
            child: Some(Mutex::new(child)),
        }
    }

    pub(crate) fn adopted(pid: u32) -> OwnedProcess {
        OwnedProcess { pid, child: None }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Our child's exit status once it ended (and is reaped), without blocking; `None` for
    /// a running child, and for an adopted process, whose status is its parent's.
    pub(crate) fn try_wait_child(&self) -> Option<ExitStatus> {
        let child = self.child.as_ref()?;
        let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
        child.try_wait().ok().flatten()
    }

    pub(crate) fn is_child(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL by PID: our child while not reaped (then reaped), or an adopted PID while
    /// `still_ours(pid)` says it has not been reused by another program.
    pub(crate) fn kill_and_reap(&self, still_ours: impl Fn(u32) -> bool) {
        let kill = || {
            if let Some(pid) = Pid::from_raw(self.pid as i32) {
                let _ = rustix::process::kill_process(pid, Signal::KILL);
            }
        };
        match &self.child {
            Some(child) => {
                let mut child = child.lock().unwrap_or_else(|e| e.into_inner());
                if let Ok(None) = child.try_wait() {
                    kill();
                    let _ = child.wait();
                }
            }
            None => {
                if still_ours(self.pid) {
                    kill();
                }
            }
        }
    }
}
