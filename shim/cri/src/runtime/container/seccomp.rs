//! The seccomp profile a CRI container asks for, as the OCI profile its runtime spec
//! carries: none (unconfined), the runtime's default, or a JSON profile from a file on this
//! node. The sandbox compiles it and the guest applies it
//! ([`vpod_sandbox::seccomp`]).
//!
//! The default is containerd's (and Docker's): every system call a container commonly
//! needs is allowed and the rest fail with EPERM; the calls that only some capabilities
//! make useful (mount and unshare with CAP_SYS_ADMIN, ptrace with CAP_SYS_PTRACE, ...) are
//! allowed when the container holds that capability; `clone` may not create namespaces
//! without CAP_SYS_ADMIN, and `clone3` (whose flags a filter cannot read) answers ENOSYS so
//! that C libraries fall back to `clone`.

use std::path::Path;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

use crate::runtime::RuntimeError;

/// Which profile a container runs under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SeccompChoice {
    /// No filter (CRI's empty profile path, as containerd without a configured default).
    #[default]
    Unconfined,
    /// [`runtime_default`].
    RuntimeDefault,
    /// A JSON OCI profile at this absolute path on the node.
    Localhost(String),
}

/// The field a bad profile is reported under.
pub const FIELD: &str = "config.linux.security_context.seccomp";
/// The largest profile file read.
const MAX_PROFILE_BYTES: u64 = 1 << 20;

impl SeccompChoice {
    /// From CRI's deprecated `seccomp_profile_path`: "", "unconfined", "runtime/default",
    /// "docker/default" or "localhost/<absolute path>".
    pub fn from_profile_path(path: &str) -> Result<SeccompChoice, RuntimeError> {
        match path {
            "" | "unconfined" => Ok(SeccompChoice::Unconfined),
            "runtime/default" | "docker/default" => Ok(SeccompChoice::RuntimeDefault),
            _ => match path.strip_prefix("localhost/") {
                Some(file) => SeccompChoice::localhost(file),
                None => Err(RuntimeError::invalid(
                    "config.linux.security_context.seccomp_profile_path",
                    format!(
                        "{path:?} is not a seccomp profile: \"unconfined\", \"runtime/default\" \
                         or \"localhost/<absolute path>\""
                    ),
                )),
            },
        }
    }

    /// A Localhost profile's reference: an absolute path.
    pub fn localhost(file: &str) -> Result<SeccompChoice, RuntimeError> {
        if !file.starts_with('/') {
            return Err(RuntimeError::invalid(
                FIELD,
                format!("the localhost profile {file:?} is not an absolute path"),
            ));
        }
        Ok(SeccompChoice::Localhost(file.to_string()))
    }

    /// The spec's profile for a container holding `capabilities` ("CAP_X" or "X").
    pub fn profile(&self, capabilities: &[String]) -> Result<Option<LinuxSeccomp>, RuntimeError> {
        match self {
            SeccompChoice::Unconfined => Ok(None),
            SeccompChoice::RuntimeDefault => Ok(Some(runtime_default(capabilities))),
            SeccompChoice::Localhost(path) => load(Path::new(path)).map(Some),
        }
    }
}

/// Reads and parses a JSON OCI seccomp profile (as runc takes it).
fn load(path: &Path) -> Result<LinuxSeccomp, RuntimeError> {
    let fail = |reason: String| RuntimeError::invalid(FIELD, reason);
    let metadata = std::fs::metadata(path)
        .map_err(|e| fail(format!("cannot read the profile {}: {e}", path.display())))?;
    if !metadata.is_file() || metadata.len() > MAX_PROFILE_BYTES {
        return Err(fail(format!(
            "the profile {} is not a file of at most {MAX_PROFILE_BYTES} bytes",
            path.display()
        )));
    }
    let text = std::fs::read(path)
        .map_err(|e| fail(format!("cannot read the profile {}: {e}", path.display())))?;
    serde_json::from_slice(&text).map_err(|e| {
        fail(format!(
            "the profile {} is not an OCI seccomp profile: {e}",
            path.display()
        ))
    })
}

/// System calls the default profile allows whatever the capabilities.
const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_adjtime64",
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchmodat2",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "ipc",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "_llseek",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "name_to_handle_at",
    "nanosleep",
    "newfstatat",
    "_newselect",
    "open",
    "openat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socket",
    "socketcall",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    // x86 and arm specifics; names another architecture lacks are skipped when compiled.
    "arch_prctl",
    "modify_ldt",
    "arm_fadvise64_64",
    "arm_sync_file_range",
    "sync_file_range2",
    "breakpoint",
    "cacheflush",
    "set_tls",
    "riscv_flush_icache",
];

/// System calls allowed only to a container holding the capability.
const BY_CAPABILITY: &[(&str, &[&str])] = &[
    ("CAP_DAC_READ_SEARCH", &["open_by_handle_at"]),
    (
        "CAP_SYS_ADMIN",
        &[
            "bpf",
            "clone",
            "clone3",
            "fanotify_init",
            "fsconfig",
            "fsmount",
            "fsopen",
            "fspick",
            "lookup_dcookie",
            "mount",
            "mount_setattr",
            "move_mount",
            "open_tree",
            "perf_event_open",
            "quotactl",
            "quotactl_fd",
            "setdomainname",
            "sethostname",
            "setns",
            "umount",
            "umount2",
            "unshare",
        ],
    ),
    ("CAP_SYS_BOOT", &["reboot"]),
    ("CAP_SYS_CHROOT", &["chroot"]),
    (
        "CAP_SYS_MODULE",
        &["delete_module", "init_module", "finit_module"],
    ),
    ("CAP_SYS_PACCT", &["acct"]),
    (
        "CAP_SYS_PTRACE",
        &[
            "kcmp",
            "pidfd_getfd",
            "process_madvise",
            "process_vm_readv",
            "process_vm_writev",
            "ptrace",
        ],
    ),
    ("CAP_SYS_RAWIO", &["iopl", "ioperm"]),
    (
        "CAP_SYS_TIME",
        &["settimeofday", "stime", "clock_settime", "clock_settime64"],
    ),
    ("CAP_SYS_TTY_CONFIG", &["vhangup"]),
    (
        "CAP_SYS_NICE",
        &[
            "get_mempolicy",
            "mbind",
            "set_mempolicy",
            "set_mempolicy_home_node",
        ],
    ),
    ("CAP_SYSLOG", &["syslog"]),
];

/// personality(2) personas the default allows: Linux, its UNAME26 and 32-bit variants, and
/// the query.
const PERSONAS: &[u64] = &[0x0, 0x0008, 0x20000, 0x20008, 0xffff_ffff];

/// The namespace flags of clone(2): CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET and NEWTIME.
const CLONE_NAMESPACES: u64 = 0x0002_0000
    | 0x0200_0000
    | 0x0400_0000
    | 0x0800_0000
    | 0x1000_0000
    | 0x2000_0000
    | 0x4000_0000
    | 0x80;

/// ENOSYS, which tells a C library to fall back from clone3 to clone.
const ENOSYS: u32 = 38;
/// EPERM, what the default answers for everything else.
const EPERM: u32 = 1;

/// The runtime's default profile for a container holding `capabilities`.
pub fn runtime_default(capabilities: &[String]) -> LinuxSeccomp {
    // "CAP_X" or "X", as the spec's set and the CRI write them.
    let bare = |name: &str| name.trim_start_matches("CAP_").to_ascii_uppercase();
    let holds = |cap: &str| capabilities.iter().any(|c| bare(c) == bare(cap));
    let mut syscalls = vec![allow(ALLOWED, Vec::new())];
    for persona in PERSONAS {
        syscalls.push(allow(
            &["personality"],
            vec![arg(0, *persona, None, LinuxSeccompOperator::ScmpCmpEq)],
        ));
    }
    for (capability, names) in BY_CAPABILITY {
        if holds(capability) {
            syscalls.push(allow(names, Vec::new()));
        }
    }
    if !holds("CAP_SYS_ADMIN") {
        // The flags are clone's first argument on x86 and arm, its second on s390.
        let index = if cfg!(target_arch = "s390x") { 1 } else { 0 };
        syscalls.push(allow(
            &["clone"],
            vec![arg(
                index,
                CLONE_NAMESPACES,
                Some(0),
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )],
        ));
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec!["clone3".to_string()])
                .action(LinuxSeccompAction::ScmpActErrno)
                .errno_ret(ENOSYS)
                .build()
                .expect("a syscall rule with every field set"),
        );
    }
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(EPERM)
        .syscalls(syscalls)
        .build()
        .expect("a profile with every field set")
}

fn allow(names: &[&str], args: Vec<oci_spec::runtime::LinuxSeccompArg>) -> LinuxSyscall {
    let mut rule = LinuxSyscallBuilder::default()
        .names(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .action(LinuxSeccompAction::ScmpActAllow);
    if !args.is_empty() {
        rule = rule.args(args);
    }
    rule.build().expect("a syscall rule with every field set")
}

fn arg(
    index: usize,
    value: u64,
    value_two: Option<u64>,
    op: LinuxSeccompOperator,
) -> oci_spec::runtime::LinuxSeccompArg {
    let mut arg = LinuxSeccompArgBuilder::default()
        .index(index)
        .value(value)
        .op(op);
    if let Some(two) = value_two {
        arg = arg.value_two(two);
    }
    arg.build().expect("an argument rule with every field set")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_paths_map_as_containerd_maps_them() {
        assert_eq!(
            SeccompChoice::from_profile_path("").unwrap(),
            SeccompChoice::Unconfined
        );
        assert_eq!(
            SeccompChoice::from_profile_path("unconfined").unwrap(),
            SeccompChoice::Unconfined
        );
        for default in ["runtime/default", "docker/default"] {
            assert_eq!(
                SeccompChoice::from_profile_path(default).unwrap(),
                SeccompChoice::RuntimeDefault
            );
        }
        assert_eq!(
            SeccompChoice::from_profile_path("localhost//etc/p.json").unwrap(),
            SeccompChoice::Localhost("/etc/p.json".into())
        );
        // A bare path, or a relative localhost one, is refused.
        assert!(SeccompChoice::from_profile_path("/etc/p.json").is_err());
        assert!(SeccompChoice::from_profile_path("localhost/p.json").is_err());
    }

    #[test]
    fn the_default_compiles_and_follows_the_capabilities() {
        let plain = runtime_default(&["CAP_CHOWN".into()]);
        let programs = vpod_sandbox::seccomp::compile(&plain).expect("the default compiles");
        // Allow-or-EPERM, then clone3's ENOSYS.
        assert_eq!(programs.len(), 2);
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            p.syscalls()
                .iter()
                .flatten()
                .filter(|s| s.action() == LinuxSeccompAction::ScmpActAllow && s.args().is_none())
                .flat_map(|s| s.names().clone())
                .collect()
        };
        assert!(!names(&plain).contains(&"sethostname".to_string()));
        assert!(!names(&plain).contains(&"mount".to_string()));
        let admin = runtime_default(&["SYS_ADMIN".into()]);
        assert!(names(&admin).contains(&"sethostname".to_string()));
        assert!(names(&admin).contains(&"clone3".to_string()));
        // With CAP_SYS_ADMIN there is nothing but allow-or-EPERM.
        assert_eq!(vpod_sandbox::seccomp::compile(&admin).unwrap().len(), 1);
    }

    #[test]
    fn a_localhost_profile_is_read_and_a_bad_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("block.json");
        std::fs::write(
            &good,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["chmod"],"action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let choice = SeccompChoice::localhost(good.to_str().unwrap()).unwrap();
        let profile = choice.profile(&[]).unwrap().unwrap();
        assert_eq!(profile.default_action(), LinuxSeccompAction::ScmpActAllow);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        for path in [
            bad,
            dir.path().join("missing.json"),
            dir.path().to_path_buf(),
        ] {
            let choice = SeccompChoice::localhost(path.to_str().unwrap()).unwrap();
            let err = choice.profile(&[]).unwrap_err();
            assert!(err.to_string().contains(FIELD), "{err}");
        }
    }
}
