//! The allow-lists, one per thread kind, as the system calls (and, for `ioctl`, `fcntl`,
//! `socket`, `prctl`, `mmap` and `mprotect`, the arguments) each kind makes once the VM is
//! built. Everything before the filters (opening KVM, creating the VM and its vCPUs, mapping
//! guest memory, binding sockets, connecting to vhost-user backends) needs no entry.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

/// `KVM_RUN`: `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;

/// The system calls of one thread kind, and the conditions on their arguments.
#[derive(Default)]
pub(crate) struct AllowList {
    rules: BTreeMap<i64, Vec<SeccompRule>>,
}

impl AllowList {
    /// Allows each of `syscalls` whatever its arguments.
    fn allow(&mut self, syscalls: &[libc::c_long]) -> &mut Self {
        for &syscall in syscalls {
            // An empty chain matches the call unconditionally; it wins over any condition.
            self.rules.insert(syscall, Vec::new());
        }
        self
    }

    /// Allows `syscall` when its argument `arg` (32 bits) is one of `values`.
    fn allow_arg(
        &mut self,
        syscall: libc::c_long,
        arg: u8,
        values: &[u64],
    ) -> Result<&mut Self, BackendError> {
        let entry = self.rules.entry(syscall).or_default();
        for &value in values {
            let condition =
                SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)?;
            entry.push(SeccompRule::new(vec![condition])?);
        }
        Ok(self)
    }

    /// Allows `syscall` when none of `mask`'s bits is set in its argument `arg`.
    fn allow_without_bits(
        &mut self,
        syscall: libc::c_long,
        arg: u8,
        mask: u64,
    ) -> Result<&mut Self, BackendError> {
        let condition = SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask),
            0,
        )?;
        self.rules
            .entry(syscall)
            .or_default()
            .push(SeccompRule::new(vec![condition])?);
        Ok(self)
    }

    /// How many system calls the list names.
    pub(crate) fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether the list names `syscall` (with or without conditions).
    #[cfg(test)]
    pub(crate) fn names(&self, syscall: libc::c_long) -> bool {
        self.rules.contains_key(&syscall)
    }

    /// The BPF program: the listed calls are allowed, every other one traps (SIGSYS).
    pub(crate) fn compile(self) -> Result<BpfProgram, BackendError> {
        SeccompFilter::new(
            self.rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?
        .try_into()
    }
}

/// What every thread does: the Rust runtime and allocator (glibc's malloc counts the CPUs,
/// `sched_getaffinity`, when a thread first needs an arena of its own), thread exit, the
/// SIGSYS handler
/// (`write`, `getpid`, `gettid`, `tgkill`, `prctl(PR_GET_NAME)`), closing descriptors (which
/// debug builds of std precede with `fcntl(F_GETFD)`) and writing to the console or an
/// eventfd.
fn common() -> Result<AllowList, BackendError> {
    let mut list = AllowList::default();
    list.allow(&[
        libc::SYS_brk,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_clock_gettime,
        libc::SYS_getrandom,
        libc::SYS_sched_getaffinity,
        libc::SYS_close,
        libc::SYS_write,
        libc::SYS_getpid,
        libc::SYS_gettid,
        libc::SYS_tgkill,
        libc::SYS_exit,
        libc::SYS_exit_group,
    ]);
    // No new executable memory.
    let exec = libc::PROT_EXEC as u64;
    list.allow_without_bits(libc::SYS_mmap, 2, exec)?
        .allow_without_bits(libc::SYS_mprotect, 2, exec)?
        .allow_arg(libc::SYS_prctl, 0, &[libc::PR_GET_NAME as u64])?
        .allow_arg(libc::SYS_fcntl, 1, &[libc::F_GETFD as u64])?;
    Ok(list)
}

/// The main thread: the event loop (epoll, the lifecycle eventfd, the signalfd, timerfds),
/// the virtio devices' queues (block reads, writes, flushes and discards as punched holes;
/// vsock's unix sockets, accepted and connected; tap frames; balloon `madvise`; vhost-user
/// messages), the control socket (clients accepted, descriptors received with SCM_RIGHTS,
/// disks opened by path and inspected), stopping the vCPUs (`tgkill`), sharing the boot
/// files' pages once the guest has booted (`mincore`, reads and private `mmap`s of the
/// kernel and initrd) and the teardown (removing the sockets it bound).
pub(crate) fn main_thread() -> Result<AllowList, BackendError> {
    let mut list = common()?;
    list.allow(&[
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_ctl,
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_preadv,
        libc::SYS_pwrite64,
        libc::SYS_pwritev,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_fallocate,
        libc::SYS_openat,
        libc::SYS_statx,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_lseek,
        libc::SYS_accept4,
        libc::SYS_connect,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockopt,
        libc::SYS_timerfd_settime,
        libc::SYS_timerfd_gettime,
        libc::SYS_mincore,
        libc::SYS_unlink,
        libc::SYS_unlinkat,
    ]);
    list.allow_arg(
        libc::SYS_fcntl,
        1,
        &[
            libc::F_SETFD as u64,
            libc::F_GETFL as u64,
            libc::F_SETFL as u64,
            libc::F_DUPFD_CLOEXEC as u64,
        ],
    )?
    .allow_arg(libc::SYS_socket, 0, &[libc::AF_UNIX as u64])?
    .allow_arg(libc::SYS_ioctl, 1, &[libc::FIONBIO, libc::TUNSETOFFLOAD])?;
    Ok(list)
}

/// A vCPU thread: `KVM_RUN` and its exits. Port and MMIO exits reach the legacy devices
/// (console output, eventfds) and the virtio transports, where a driver starting or
/// resetting a device runs that device's activation: tap offloads (`TUNSETOFFLOAD`) and a
/// first read of the tap, vsock connections closed, and the vhost-user messages that hand a
/// virtio-fs backend its memory and rings (SCM_RIGHTS), each bounded by a watchdog thread
/// the vCPU starts (`clone3`; that thread inherits this filter and names itself).
pub(crate) fn vcpu_thread() -> Result<AllowList, BackendError> {
    let mut list = common()?;
    list.allow(&[
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        // The virtio-fs watchdog thread: started, named, and its own start-up.
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
    ]);
    list.allow_arg(libc::SYS_prctl, 0, &[libc::PR_SET_NAME as u64])?
        // The watchdog's copy of the backend's socket.
        .allow_arg(libc::SYS_fcntl, 1, &[libc::F_DUPFD_CLOEXEC as u64])?
        .allow_arg(libc::SYS_ioctl, 1, &[KVM_RUN, libc::TUNSETOFFLOAD])?;
    Ok(list)
}
