//! Per-thread seccomp filters: once the VM is built, each thread may make only the system
//! calls its kind needs, and any other call kills the VMM with a line that says which.
//!
//! Filters are built with rust-vmm's `seccompiler` ([`filters`] has the lists) and each
//! thread installs its own kind's (`seccompiler::apply_filter`, no TSYNC), with
//! `no_new_privs` set first:
//!
//! - **vcpu**, at the thread's start, before its run loop: `KVM_RUN` and what its exits
//!   reach: the console, eventfds, and the activation or reset of a virtio device (tap
//!   offloads, vhost-user messages to a virtio-fs backend and the watchdog thread bounding
//!   them, which inherits the vCPU's filter).
//! - **main**, last, once every vCPU thread is started and the VM built: the event loop and
//!   everything it serves, the virtio devices' host sides and the control socket (served on
//!   this thread: there is no API thread), then the teardown.
//!
//! Everything before (opening KVM, guest memory, the kernel, binding sockets, connecting to
//! backends) runs unfiltered. The build's scoped memory-registration thread ends before the
//! filters; no other thread is started afterwards except the virtio-fs watchdog.
//!
//! A call outside the list traps (`SECCOMP_RET_TRAP`): the SIGSYS handler, installed before
//! any filter, writes one line to stderr, `vpod-vmm: killed by seccomp: syscall N in thread
//! NAME` ([`kill_line`] spells it, [`seccomp_kill_from_log`] reads it back), and the process
//! dies by SIGSYS. The handler only formats into a stack buffer and makes calls every filter
//! allows (`write`, `getpid`, `gettid`, `tgkill`, `prctl(PR_GET_NAME)`).
//!
//! `--no-seccomp` (or `"seccomp": false`) leaves every thread unfiltered, for development.

mod filters;

use std::cell::Cell;
use std::io;
use std::sync::Once;

use libc::{c_int, c_void, siginfo_t};
pub use seccompiler::BpfProgram;

pub use filters::KVM_RUN;

/// The guest port whose write makes a `seccomp-probe` build call a system call in no list.
pub const PROBE_PORT: u16 = 0x3f2;

// The line the SIGSYS handler writes is the host's contract: defined in vpod_proto.
pub use vpod_proto::vmm::seccomp_kill::{
    kill_line, seccomp_kill_from_log, KILL_LINE_PREFIX, KILL_LINE_THREAD,
};

/// Errors preparing or installing the filters.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {0} thread's seccomp filter")]
    Compile(&'static str, #[source] seccompiler::BackendError),
    #[error("cannot install the SIGSYS handler")]
    Handler(#[source] io::Error),
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] io::Error),
    #[error("cannot install the {0} thread's seccomp filter")]
    Install(&'static str, #[source] seccompiler::Error),
    #[error("the thread compiling the seccomp filters panicked")]
    CompileThread,
}

/// The kinds of thread, each with its own filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    Main,
    Vcpu,
}

impl ThreadKind {
    /// The name the kill line gives the thread.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

/// Every thread kind's filter, compiled, with the SIGSYS handler installed.
pub struct SeccompFilters {
    main: BpfProgram,
    vcpu: BpfProgram,
}

impl SeccompFilters {
    /// Compiles the filters and installs the SIGSYS handler (process-wide, once).
    pub fn prepare() -> Result<Self, SeccompError> {
        let compile = |kind: ThreadKind, list: Result<filters::AllowList, _>| {
            list.and_then(filters::AllowList::compile)
                .map_err(|e| SeccompError::Compile(kind.name(), e))
        };
        let filters = SeccompFilters {
            main: compile(ThreadKind::Main, filters::main_thread())?,
            vcpu: compile(ThreadKind::Vcpu, filters::vcpu_thread())?,
        };
        install_sigsys_handler()?;
        Ok(filters)
    }

    /// The filter of `kind`.
    pub fn program(&self, kind: ThreadKind) -> &BpfProgram {
        match kind {
            ThreadKind::Main => &self.main,
            ThreadKind::Vcpu => &self.vcpu,
        }
    }
}

/// How many system calls each kind's list names, for the documentation and tests.
pub fn allow_list_sizes() -> Result<[(ThreadKind, usize); 2], SeccompError> {
    let size = |kind: ThreadKind, list: Result<filters::AllowList, _>| {
        list.map(|list| (kind, list.len()))
            .map_err(|e| SeccompError::Compile(kind.name(), e))
    };
    Ok([
        size(ThreadKind::Main, filters::main_thread())?,
        size(ThreadKind::Vcpu, filters::vcpu_thread())?,
    ])
}

thread_local! {
    /// The kind of filter this thread installed, for the SIGSYS handler; "" when it
    /// installed none (then the handler names the thread by its comm).
    static THREAD_KIND: Cell<&'static str> = const { Cell::new("") };
}

/// Installs `program` as the calling thread's filter of `kind`, after `no_new_privs`.
pub fn apply(kind: ThreadKind, program: &BpfProgram) -> Result<(), SeccompError> {
    // SAFETY: PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory; the result is
    // checked. Setting it again is harmless.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(SeccompError::NoNewPrivs(io::Error::last_os_error()));
    }
    THREAD_KIND.with(|name| name.set(kind.name()));
    seccompiler::apply_filter(program).map_err(|e| SeccompError::Install(kind.name(), e))
}

/// The `seccomp-probe` build's guest-triggered violation: `reboot(2)` with no valid magic
/// (harmless if ever allowed), a call in no list.
#[cfg(feature = "seccomp-probe")]
pub fn probe_denied_syscall() {
    // SAFETY: reboot with zero magic numbers fails with EINVAL and touches no memory.
    unsafe { libc::syscall(libc::SYS_reboot, 0, 0, 0, 0) };
}

/// SIGSYS's siginfo on x86_64 (`_sigsys` in the kernel's union): the fields `libc` does not
/// expose.
#[repr(C)]
struct SigsysInfo {
    _signo: c_int,
    _errno: c_int,
    _code: c_int,
    _pad: c_int,
    _call_addr: *mut c_void,
    syscall: c_int,
    _arch: u32,
}

/// A line built on the stack: the handler may not allocate.
struct StackLine {
    bytes: [u8; 128],
    len: usize,
}

impl StackLine {
    fn push(&mut self, text: &[u8]) {
        let room = self.bytes.len() - self.len;
        let take = text.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&text[..take]);
        self.len += take;
    }

    fn push_number(&mut self, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        loop {
            start -= 1;
            digits[start] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[start..]);
    }
}

extern "C" fn handle_sigsys(_: c_int, info: *mut siginfo_t, _: *mut c_void) {
    let syscall = if info.is_null() {
        u64::MAX
    } else {
        // SAFETY: the kernel hands SIGSYS handlers a siginfo whose union holds `_sigsys`,
        // laid out as SigsysInfo; only its number is read.
        let number = unsafe { (*info.cast::<SigsysInfo>()).syscall };
        u64::try_from(number).unwrap_or(u64::MAX)
    };
    let mut line = StackLine {
        bytes: [0; 128],
        len: 0,
    };
    line.push(KILL_LINE_PREFIX.as_bytes());
    line.push_number(syscall);
    line.push(KILL_LINE_THREAD.as_bytes());
    let kind = THREAD_KIND.try_with(Cell::get).unwrap_or("");
    if kind.is_empty() {
        let mut comm = [0u8; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into `comm`.
        unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr(), 0, 0, 0) };
        let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
        line.push(&comm[..len]);
    } else {
        line.push(kind.as_bytes());
    }
    line.push(b"\n");
    // SAFETY: write(2) of an initialised stack buffer to stderr; getpid, gettid, tgkill,
    // reboot and exit_group take plain integers. SA_RESETHAND already restored SIGSYS's
    // default action and SA_NODEFER leaves it unblocked, so the signal kills the process
    // here, unless this is a jailed VMM: the first process of its PID namespace ignores a
    // signal it sends itself with the default action. For that one, a call no filter
    // allows traps again, and the kernel's SIGSYS for a trap kills even that process (a
    // forced signal with the default action lifts the protection). `reboot` with no magic
    // numbers would only fail, were it ever allowed. Should both return, the process ends
    // with 128 + SIGSYS.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.bytes.as_ptr().cast(), line.len);
        let pid = libc::getpid();
        let tid = libc::syscall(libc::SYS_gettid);
        libc::syscall(libc::SYS_tgkill, pid, tid, libc::SIGSYS);
        libc::syscall(libc::SYS_reboot, 0, 0, 0, 0);
        libc::syscall(libc::SYS_exit_group, 128 + libc::SIGSYS);
    }
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static INSTALLED: Once = Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        // SAFETY: sigaction is plain data; every field the call reads is set below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction =
            handle_sigsys as extern "C" fn(c_int, *mut siginfo_t, *mut c_void) as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_NODEFER;
        // SAFETY: `action.sa_mask` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: a valid sigaction for SIGSYS; the handler is async-signal-safe (no
        // allocation, no locks); the result is checked.
        if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
            result = Err(SeccompError::Handler(io::Error::last_os_error()));
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stack_line_formats_numbers_and_truncates() {
        let mut line = StackLine {
            bytes: [0; 128],
            len: 0,
        };
        line.push_number(0);
        line.push(b" ");
        line.push_number(u64::MAX);
        assert_eq!(&line.bytes[..line.len], b"0 18446744073709551615");
        line.push(&[b'x'; 200]);
        assert_eq!(line.len, 128);
    }

    #[test]
    fn every_filter_compiles_and_names_what_the_handler_and_exit_need() {
        SeccompFilters::prepare().expect("filters");
        for list in [filters::main_thread(), filters::vcpu_thread()] {
            let list = list.expect("list");
            for syscall in [
                libc::SYS_write,
                libc::SYS_getpid,
                libc::SYS_gettid,
                libc::SYS_tgkill,
                libc::SYS_prctl,
                libc::SYS_futex,
                libc::SYS_munmap,
                libc::SYS_exit,
                libc::SYS_exit_group,
                libc::SYS_rt_sigreturn,
            ] {
                assert!(list.names(syscall), "syscall {syscall} is missing");
            }
            assert!(!list.names(libc::SYS_reboot));
            assert!(!list.names(libc::SYS_execve));
        }
        assert!(filters::vcpu_thread().expect("list").names(libc::SYS_ioctl));
    }

    #[test]
    fn the_vcpu_list_is_the_shorter_and_both_stay_short() {
        let [(ThreadKind::Main, main), (ThreadKind::Vcpu, vcpu)] =
            allow_list_sizes().expect("lists")
        else {
            panic!("the kinds are main, then vcpu");
        };
        eprintln!("allow-lists: main {main} system calls, vcpu {vcpu}");
        assert!(vcpu < main && main < 80, "main {main}, vcpu {vcpu}");
    }
}
