//! The keeper: the first process, left outside the jail's PID namespace (the namespace's
//! first process is the next one forked). Its launcher knows only its PID, so it stands in
//! for the VMM: it passes SIGTERM and SIGINT on, waits, and ends as the VMM ended, with its
//! exit code or killed by its signal. It holds one end of a pipe whose other end the VMM
//! watches, so a VMM whose keeper is gone before it could ask for SIGKILL on its death
//! stops on its own.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use super::sys;

/// The VMM's PID, for the signal handler.
static VMM_PID: AtomicI32 = AtomicI32::new(0);

/// The signals passed on to the VMM, which turns them into a clean stop.
pub const FORWARDED: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

extern "C" fn forward(signal: libc::c_int) {
    let pid = VMM_PID.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; `pid` is our child, not yet reaped.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Installs the forwarding handler (before the fork: no signal is lost in between; the VMM
/// blocks these signals at once, so it never runs the handler).
pub fn install_forwarding() -> io::Result<()> {
    for signal in FORWARDED {
        // SAFETY: sigaction is plain data; the handler only loads an atomic and calls kill.
        let rc = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How the VMM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmEnd {
    Exited(i32),
    Killed(i32),
}

/// Waits for the VMM `pid`, holding `alive` (the pipe's write end) until then.
pub fn keep(pid: libc::pid_t, alive: OwnedFd) -> io::Result<VmmEnd> {
    VMM_PID.store(pid, Ordering::Relaxed);
    // Nothing else of the launcher's stays open here (taps, disks): only stdio and the pipe.
    sys::close_other_fds(&[alive.as_raw_fd()])?;
    loop {
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a valid int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        if libc::WIFEXITED(status) {
            return Ok(VmmEnd::Exited(libc::WEXITSTATUS(status)));
        }
        if libc::WIFSIGNALED(status) {
            return Ok(VmmEnd::Killed(libc::WTERMSIG(status)));
        }
    }
}

impl VmmEnd {
    /// Ends this process as the VMM ended: returns its exit code, or dies by its signal
    /// (returning 128 + the signal if that signal does not end a process).
    pub fn finish(self) -> i32 {
        match self {
            VmmEnd::Exited(code) => code,
            VmmEnd::Killed(signal) => {
                // No core file of the keeper for the VMM's SIGSYS or SIGABRT.
                let _ = sys::set_rlimit(libc::RLIMIT_CORE, 0);
                // SAFETY: restores the default action of a valid signal number, unblocks it
                // and sends it to this process.
                unsafe {
                    libc::signal(signal, libc::SIG_DFL);
                    let mut mask: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut mask);
                    libc::sigaddset(&mut mask, signal);
                    libc::pthread_sigmask(libc::SIG_UNBLOCK, &mask, std::ptr::null_mut());
                    libc::raise(signal);
                }
                128 + signal
            }
        }
    }
}
