//! Starting processes in containers: a container's init by clone(2) into new mount, PID,
//! UTS and IPC namespaces, an exec'd process by setns(2) into those of a running container.
//!
//! The agent is multi-threaded, so a child may hold copies of locks other threads had taken
//! at the clone: it must not allocate. Everything it needs (C strings, pointer arrays, open
//! descriptors) is prepared here before the clone, and the child only makes system calls.
//! It reports a failure as a fixed-size record on a close-on-exec pipe, whose end of file
//! tells the agent that exec succeeded.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use tokio::sync::oneshot;

use super::in_root::{self, RESOLVE_SAFE};
use super::reaper::{ExitStatus, Reaper};
use super::setup::{c_str, SetupError, Step, Target};
use super::spec::ProcessSpec;

/// The PATH for the lookup of args[0] when the environment has none.
pub use crate::command::DEFAULT_PATH;

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("the process spec is not usable")]
    Spec(#[from] SetupError),
    #[error("the process has no arguments")]
    NoArgs,
    #[error("could not create a pipe")]
    Pipe(#[source] io::Error),
    #[error("could not open {0}")]
    Open(String, #[source] io::Error),
    #[error("could not clone the process")]
    Clone(#[source] io::Error),
    #[error("the container process failed while {stage}")]
    Child {
        stage: String,
        #[source]
        source: io::Error,
    },
    #[error("the exec helper ended without reporting the process")]
    LostHelper,
}

impl SpawnError {
    /// True when exec itself failed because the program does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, SpawnError::Child { stage, source } if stage == STAGE_NAMES[EXEC_STAGE]
            && source.raw_os_error() == Some(libc::ENOENT))
    }
}

// Stages after the setup steps, numbered from STAGE_BASE.
const STAGE_BASE: u32 = 1 << 16;
const STAGE_NAMES: &[&str] = &[
    "joining its cgroup",
    "entering the container's namespaces",
    "setting resource limits",
    "dropping bounding capabilities",
    "setting supplementary groups",
    "keeping capabilities across setuid",
    "setting the group id",
    "setting the user id",
    "setting capabilities",
    "changing to its working directory",
    "redirecting stdio",
    "executing the program",
    "cloning the exec'd process",
    "setting no_new_privs",
    "starting its own session or process group",
    "taking its controlling terminal",
    "installing its seccomp filters",
];
const JOIN_CGROUP: usize = 0;
pub(super) const SETNS: usize = 1;
const RLIMIT: usize = 2;
const CAPBSET: usize = 3;
const SETGROUPS: usize = 4;
const KEEPCAPS: usize = 5;
const SETGID: usize = 6;
const SETUID: usize = 7;
const CAPSET: usize = 8;
const CHDIR: usize = 9;
const DUP2: usize = 10;
const EXEC_STAGE: usize = 11;
pub(super) const CLONE_GRANDCHILD: usize = 12;
const NO_NEW_PRIVS: usize = 13;
const SESSION: usize = 14;
const CONTROLLING_TERMINAL: usize = 15;
const SECCOMP: usize = 16;

pub(super) const TAG_ERROR: u32 = 1;
pub(super) const TAG_PID: u32 = 2;
const RECORD_LEN: usize = 12;

/// The descriptors the process gets as 0, 1 and 2 (the child's ends).
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub session: Session,
}

/// The session and process group the process starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Session {
    /// The agent's.
    Inherit,
    /// A process group of its own, so that killing the group kills what it started.
    OwnGroup,
    /// A session of its own whose controlling terminal is its stdin (a terminal's slave).
    Terminal,
}

/// A process's identity and program, ready for a child that cannot allocate.
pub(super) struct ProcessPlan {
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
    candidates: Vec<CString>,
    cwd: CString,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    capabilities: u64,
    last_cap: u32,
    no_new_privs: bool,
    seccomp: Vec<SeccompProgram>,
}

/// One seccomp program and the sock_fprog that points at it (the instructions live on the
/// heap, so moving this keeps the pointer valid).
pub(super) struct SeccompProgram {
    _instructions: Vec<libc::sock_filter>,
    fprog: libc::sock_fprog,
}

impl SeccompProgram {
    /// `bytes` is whole `struct sock_filter` instructions in this machine's byte order
    /// (checked when the request was converted).
    fn new(bytes: &[u8]) -> Self {
        let mut instructions: Vec<libc::sock_filter> = bytes
            .chunks_exact(8)
            .map(|c| libc::sock_filter {
                code: u16::from_ne_bytes([c[0], c[1]]),
                jt: c[2],
                jf: c[3],
                k: u32::from_ne_bytes([c[4], c[5], c[6], c[7]]),
            })
            .collect();
        let fprog = libc::sock_fprog {
            len: instructions.len() as libc::c_ushort,
            filter: instructions.as_mut_ptr(),
        };
        SeccompProgram {
            _instructions: instructions,
            fprog,
        }
    }
}

impl ProcessPlan {
    pub(super) fn new(spec: &ProcessSpec) -> Result<Self, SpawnError> {
        let program = spec.args.first().ok_or(SpawnError::NoArgs)?;
        let argv = spec
            .args
            .iter()
            .map(|a| c_str(a))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = spec
            .env
            .iter()
            .map(|e| c_str(e))
            .collect::<Result<Vec<_>, _>>()?;
        let path_var = spec
            .env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH);
        let candidates = program_candidates(program, path_var)
            .iter()
            .map(|c| c_str(c))
            .collect::<Result<Vec<_>, _>>()?;
        let argv_ptrs = null_terminated(&argv);
        let envp_ptrs = null_terminated(&envp);
        let last_cap = last_capability();
        Ok(ProcessPlan {
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
            candidates,
            cwd: c_str(if spec.cwd.is_empty() { "/" } else { &spec.cwd })?,
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.additional_gids.clone(),
            rlimits: spec
                .rlimits
                .iter()
                .map(|r| {
                    (
                        r.resource,
                        libc::rlimit {
                            rlim_cur: r.soft,
                            rlim_max: r.hard,
                        },
                    )
                })
                .collect(),
            capabilities: spec.capabilities & known_capabilities(last_cap),
            last_cap,
            no_new_privs: spec.no_new_privs,
            seccomp: spec
                .seccomp
                .iter()
                .map(|p| SeccompProgram::new(p))
                .collect(),
        })
    }
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The paths execve tries for `program`, as execvp would: itself if it has a '/', else
/// each PATH directory in order (an empty entry is the working directory).
pub fn program_candidates(program: &str, path_var: &str) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_string()];
    }
    path_var
        .split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| format!("{}/{program}", dir.trim_end_matches('/')))
        .collect()
}

/// The mask of the capabilities the running kernel knows (0..=`last_cap`): capset refuses
/// others, and "ALL" names every capability the caps crate knows.
fn known_capabilities(last_cap: u32) -> u64 {
    if last_cap >= 63 {
        u64::MAX
    } else {
        (1u64 << (last_cap + 1)) - 1
    }
}

fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// A container's init: its setup steps and its process.
pub struct ContainerLaunch<'a> {
    pub steps: &'a [Step],
    pub process: &'a ProcessSpec,
    pub cgroup: Option<&'a Path>,
    pub stdio: ChildStdio,
}

/// A started process: its pid in the agent's namespace and its exit.
pub struct Spawned {
    pub pid: libc::pid_t,
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// Clones the container's init into new namespaces; returns once it has exec'd.
pub fn spawn_container(
    reaper: &Reaper,
    launch: ContainerLaunch<'_>,
) -> Result<Spawned, SpawnError> {
    let plan = ProcessPlan::new(launch.process)?;
    let cgroup = open_cgroup_procs(launch.cgroup)?;
    let (report_read, report_write) = pipe()?;
    let flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
    let mut waiters = reaper.lock();
    match clone_process(flags as libc::c_ulong)? {
        None => {
            let fd = report_write.as_raw_fd();
            let child = ChildContext { report: fd };
            child.reset_signal_mask();
            if let Some(cgroup) = &cgroup {
                child.join_cgroup(cgroup.as_raw_fd());
            }
            let mut root = -1;
            for (i, step) in launch.steps.iter().enumerate() {
                if let Err(errno) = run_step(step, &mut root) {
                    child.fail(i as u32, errno);
                }
            }
            child.become_process(&plan, &launch.stdio)
        }
        Some(pid) => {
            let exit = waiters.watch(pid);
            drop(waiters);
            drop(report_write);
            drop(launch.stdio);
            match read_records(report_read)?.first() {
                Some(&(TAG_ERROR, stage, errno)) => Err(child_error(launch.steps, stage, errno)),
                _ => Ok(Spawned { pid, exit }),
            }
        }
    }
}

/// A process to start in a running container.
pub struct ExecLaunch<'a> {
    /// The container's init, whose namespaces to enter.
    pub init_pid: libc::pid_t,
    pub process: &'a ProcessSpec,
    pub cgroup: Option<&'a Path>,
    pub stdio: ChildStdio,
}

/// Starts a process in a running container's namespaces and cgroup. A helper enters the
/// namespaces (the PID namespace applies only to its children) and clones the process
/// with CLONE_PARENT, so the agent is its parent and reaps it like any other.
pub fn spawn_exec(reaper: &Reaper, launch: ExecLaunch<'_>) -> Result<Spawned, SpawnError> {
    let plan = ProcessPlan::new(launch.process)?;
    let cgroup = open_cgroup_procs(launch.cgroup)?;
    let mut namespaces = Vec::new();
    for (name, kind) in [
        ("ipc", libc::CLONE_NEWIPC),
        ("uts", libc::CLONE_NEWUTS),
        ("pid", libc::CLONE_NEWPID),
        // Last: after it, /proc is the container's.
        ("mnt", libc::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{}/ns/{name}", launch.init_pid);
        let file = File::open(&path).map_err(|e| SpawnError::Open(path, e))?;
        namespaces.push((OwnedFd::from(file), kind));
    }
    let (report_read, report_write) = pipe()?;
    let mut report_read = File::from(report_read);
    let mut waiters = reaper.lock();
    match clone_process(0)? {
        None => {
            let child = ChildContext {
                report: report_write.as_raw_fd(),
            };
            child.reset_signal_mask();
            if let Some(cgroup) = &cgroup {
                child.join_cgroup(cgroup.as_raw_fd());
            }
            for (fd, kind) in &namespaces {
                // SAFETY: setns takes a descriptor this process owns and a namespace type.
                if unsafe { libc::setns(fd.as_raw_fd(), *kind) } != 0 {
                    child.fail_stage(SETNS);
                }
            }
            match clone_process(libc::CLONE_PARENT as libc::c_ulong) {
                Ok(None) => child.become_process(&plan, &launch.stdio),
                Ok(Some(pid)) => {
                    child.write_record(TAG_PID, 0, pid);
                    child.exit(0)
                }
                Err(_) => child.fail_stage(CLONE_GRANDCHILD),
            }
        }
        Some(helper) => {
            let _helper_exit = waiters.watch(helper);
            drop(report_write);
            drop(launch.stdio);
            // Still under the reaper's lock: the process may end before we register it.
            let first = read_record(&mut report_read);
            let spawned = match first {
                Some((TAG_PID, _, pid)) => Spawned {
                    pid,
                    exit: waiters.watch(pid),
                },
                Some((_, stage, errno)) => return Err(child_error(&[], stage, errno)),
                None => return Err(SpawnError::LostHelper),
            };
            drop(waiters);
            match read_record(&mut report_read) {
                Some((TAG_ERROR, stage, errno)) => Err(child_error(&[], stage, errno)),
                _ => Ok(spawned),
            }
        }
    }
}

pub(super) fn open_cgroup_procs(group: Option<&Path>) -> Result<Option<OwnedFd>, SpawnError> {
    let Some(group) = group else {
        return Ok(None);
    };
    let path = group.join("cgroup.procs");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| SpawnError::Open(path.display().to_string(), e))?;
    Ok(Some(OwnedFd::from(file)))
}

pub(super) fn child_error(steps: &[Step], stage: u32, errno: i32) -> SpawnError {
    let stage = if stage >= STAGE_BASE {
        STAGE_NAMES
            .get((stage - STAGE_BASE) as usize)
            .map_or_else(|| "starting".to_string(), |s| s.to_string())
    } else {
        steps
            .get(stage as usize)
            .map_or_else(|| "setting up".to_string(), Step::describe)
    };
    SpawnError::Child {
        stage,
        source: io::Error::from_raw_os_error(errno),
    }
}

/// A pipe whose both ends are closed on exec.
pub fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the live array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(SpawnError::Pipe(io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both are open descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Opens /dev/null for a process without stdin.
pub fn dev_null() -> Result<OwnedFd, SpawnError> {
    File::open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|e| SpawnError::Open("/dev/null".to_string(), e))
}

pub(super) fn read_record(pipe: &mut File) -> Option<(u32, u32, i32)> {
    let mut record = [0u8; RECORD_LEN];
    pipe.read_exact(&mut record).ok()?;
    let word = |i: usize| [record[i], record[i + 1], record[i + 2], record[i + 3]];
    Some((
        u32::from_ne_bytes(word(0)),
        u32::from_ne_bytes(word(4)),
        i32::from_ne_bytes(word(8)),
    ))
}

fn read_records(pipe: OwnedFd) -> Result<Vec<(u32, u32, i32)>, SpawnError> {
    let mut pipe = File::from(pipe);
    let mut records = Vec::new();
    while let Some(record) = read_record(&mut pipe) {
        records.push(record);
    }
    Ok(records)
}

/// fork(2) with namespace flags, through the raw system call: returns None in the child.
pub(super) fn clone_process(flags: libc::c_ulong) -> Result<Option<libc::pid_t>, SpawnError> {
    let flags = flags | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: without CLONE_VM and with no new stack, clone behaves like fork: the child
    // gets a copy of this address space and continues here. Callers make the child use only
    // memory prepared before the call and system calls, then exec or _exit.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match rc {
        -1 => Err(SpawnError::Clone(io::Error::last_os_error())),
        0 => Ok(None),
        pid => Ok(Some(pid as libc::pid_t)),
    }
}

/// One system call of the setup; returns errno on failure. Runs in the child.
pub(super) fn run_step(step: &Step, root: &mut RawFd) -> Result<(), i32> {
    let opt = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    let (rc, tolerated) = match step {
        Step::MakeRootPrivate => (
            sys_mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            0,
        ),
        Step::OpenRoot(path) => {
            let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
            let fd = in_root::openat2(libc::AT_FDCWD, path, flags, 0, 0);
            if fd >= 0 {
                *root = fd;
            }
            (fd.min(0), 0)
        }
        Step::Mkdir { parent, name } => {
            let dir = ChildFd::in_root(*root, parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            // SAFETY: mkdirat reads a NUL-terminated single component prepared before the
            // clone, in a directory this process holds; it never follows a last symlink.
            (
                unsafe { libc::mkdirat(dir.0, name.as_ptr(), 0o755) },
                libc::EEXIST,
            )
        }
        Step::Touch(path) => {
            ChildFd::in_root(*root, path, libc::O_CREAT | libc::O_RDONLY, 0o644)?;
            (0, 0)
        }
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => match target {
            Target::Path(path) => (
                sys_mount(opt(source), path.as_ptr(), opt(fstype), *flags, opt(data)),
                0,
            ),
            Target::InRoot(path) => {
                let target = ChildFd::in_root(*root, path, libc::O_PATH, 0)?;
                let mut buffer = [0u8; PROC_FD_PATH_LEN];
                let proc_path = proc_fd_path(target.0, &mut buffer);
                (
                    sys_mount(
                        opt(source),
                        proc_path.as_ptr(),
                        opt(fstype),
                        *flags,
                        opt(data),
                    ),
                    0,
                )
            }
        },
        Step::Symlink {
            target,
            parent,
            name,
        } => {
            let dir = ChildFd::in_root(*root, parent, libc::O_PATH | libc::O_DIRECTORY, 0)?;
            // SAFETY: symlinkat reads two NUL-terminated strings prepared before the clone
            // and a directory this process holds.
            (
                unsafe { libc::symlinkat(target.as_ptr(), dir.0, name.as_ptr()) },
                libc::EEXIST,
            )
        }
        Step::PivotRoot(root) => (pivot_root(root), 0),
        Step::Sysctl { path, value } => (write_file(path, value.as_bytes()), 0),
        Step::Mask(path) => {
            let target = match ChildFd::in_root(*root, path, libc::O_PATH, 0) {
                Ok(target) => target,
                Err(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            };
            // SAFETY: stat is plain data, for which all zeroes is a valid value.
            let mut stat: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat fills a live struct for a descriptor this process holds.
            if unsafe { libc::fstat(target.0, &mut stat) } != 0 {
                return Err(errno());
            }
            let mut buffer = [0u8; PROC_FD_PATH_LEN];
            let proc_path = proc_fd_path(target.0, &mut buffer);
            let rc = if stat.st_mode & libc::S_IFMT == libc::S_IFDIR {
                sys_mount(
                    c"tmpfs".as_ptr(),
                    proc_path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY,
                    std::ptr::null(),
                )
            } else {
                // The guest's /dev/null: the old root is still there until the pivot.
                sys_mount(
                    c"/dev/null".as_ptr(),
                    proc_path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            (rc, 0)
        }
        Step::ReadOnly(path) => {
            let target = match ChildFd::in_root(*root, path, libc::O_PATH, 0) {
                Ok(target) => target,
                Err(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            };
            let mut buffer = [0u8; PROC_FD_PATH_LEN];
            let proc_path = proc_fd_path(target.0, &mut buffer);
            let bound = sys_mount(
                proc_path.as_ptr(),
                proc_path.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            );
            if bound != 0 {
                return Err(errno());
            }
            // The bind is a new mount at that path; open it to remount it.
            let mounted = ChildFd::in_root(*root, path, libc::O_PATH, 0)?;
            let mut buffer = [0u8; PROC_FD_PATH_LEN];
            let proc_path = proc_fd_path(mounted.0, &mut buffer);
            (
                sys_mount(
                    std::ptr::null(),
                    proc_path.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                    std::ptr::null(),
                ),
                0,
            )
        }
        // SAFETY: sethostname reads `len` bytes of a string prepared before the clone.
        Step::SetHostname(name) => (
            unsafe { libc::sethostname(name.as_ptr(), name.as_bytes().len()) },
            0,
        ),
    };
    if rc == 0 {
        return Ok(());
    }
    let e = errno();
    if tolerated != 0 && e == tolerated {
        Ok(())
    } else {
        Err(e)
    }
}

/// Writes `bytes` to the existing file at `path` (no allocation); 0 or -1 as a system call.
fn write_file(path: &CStr, bytes: &[u8]) -> libc::c_int {
    // SAFETY: open reads a NUL-terminated path prepared before the clone.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return -1;
    }
    let file = ChildFd(fd);
    // SAFETY: write reads `bytes.len()` bytes of a live slice from a descriptor we hold.
    let written = unsafe { libc::write(file.0, bytes.as_ptr().cast(), bytes.len()) };
    if written == bytes.len() as isize {
        0
    } else {
        if written >= 0 {
            // SAFETY: sets this thread's errno, a plain integer.
            unsafe { *libc::__errno_location() = libc::EIO };
        }
        -1
    }
}

/// A descriptor the child opened and closes when done; no allocation involved.
struct ChildFd(RawFd);

impl ChildFd {
    /// `path` below the root the child opened, resolved inside it; errno on failure.
    fn in_root(root: RawFd, path: &CStr, flags: libc::c_int, mode: u32) -> Result<Self, i32> {
        if root < 0 {
            return Err(libc::EBADF);
        }
        let fd = in_root::openat2(root, path, flags | libc::O_CLOEXEC, mode, RESOLVE_SAFE);
        if fd < 0 {
            Err(errno())
        } else {
            Ok(ChildFd(fd))
        }
    }
}

impl Drop for ChildFd {
    fn drop(&mut self) {
        // SAFETY: closes a descriptor this process opened and nothing else holds.
        unsafe { libc::close(self.0) };
    }
}

/// "/proc/self/fd/" and up to 10 digits and a NUL.
const PROC_FD_PATH_LEN: usize = 32;

/// "/proc/self/fd/<fd>" in `buffer`: mount(2) follows that magic link to exactly the file
/// the descriptor holds, so a mount lands where the in-root lookup found, not where a
/// later path walk might.
fn proc_fd_path(fd: RawFd, buffer: &mut [u8; PROC_FD_PATH_LEN]) -> &CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buffer[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let mut n = fd.max(0) as u32;
    let mut count = 0;
    loop {
        digits[count] = b'0' + (n % 10) as u8;
        count += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..count {
        buffer[PREFIX.len() + i] = digits[count - 1 - i];
    }
    buffer[PREFIX.len() + count] = 0;
    // The buffer holds exactly one NUL, just written after the digits.
    CStr::from_bytes_until_nul(&buffer[..]).unwrap_or(c"/proc/self/fd/")
}

fn sys_mount(
    source: *const libc::c_char,
    target: *const libc::c_char,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
) -> libc::c_int {
    // SAFETY: callers pass null where mount allows it or NUL-terminated strings that live
    // for the call.
    unsafe { libc::mount(source, target, fstype, flags, data.cast()) }
}

/// pivot_root(".", ".") in `root` stacks the old root on the new one; detaching it leaves
/// only the new root, without needing a directory for the old one.
fn pivot_root(root: &CString) -> libc::c_int {
    let dot = c".".as_ptr();
    // SAFETY: the four calls read NUL-terminated strings: `root`, prepared before the
    // clone, and static literals.
    unsafe {
        if libc::chdir(root.as_ptr()) != 0
            || libc::syscall(libc::SYS_pivot_root, dot, dot) != 0
            || libc::umount2(dot, libc::MNT_DETACH) != 0
        {
            return -1;
        }
        libc::chdir(c"/".as_ptr())
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// What a child knows about reporting back. Methods make only system calls.
pub(super) struct ChildContext {
    pub(super) report: RawFd,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

impl ChildContext {
    pub(super) fn write_record(&self, tag: u32, stage: u32, value: i32) {
        let mut record = [0u8; RECORD_LEN];
        record[..4].copy_from_slice(&tag.to_ne_bytes());
        record[4..8].copy_from_slice(&stage.to_ne_bytes());
        record[8..].copy_from_slice(&value.to_ne_bytes());
        // SAFETY: writes the record from a live local array. A failed report cannot be
        // reported either; the agent then sees end of file.
        unsafe { libc::write(self.report, record.as_ptr().cast(), RECORD_LEN) };
    }

    pub(super) fn exit(&self, code: i32) -> ! {
        // SAFETY: _exit ends this process without running anything of the parent's.
        unsafe { libc::_exit(code) }
    }

    pub(super) fn fail(&self, stage: u32, errno: i32) -> ! {
        self.write_record(TAG_ERROR, stage, errno);
        self.exit(if errno == libc::ENOENT { 127 } else { 126 })
    }

    pub(super) fn fail_stage(&self, stage: usize) -> ! {
        self.fail(STAGE_BASE + stage as u32, errno())
    }

    /// No signal blocked and none ignored, as a process starts under runc: exec resets
    /// handled signals but keeps ignored ones, and the agent ignores SIGPIPE (Rust's
    /// runtime does), which a container's `yes | head` needs to end.
    pub(super) fn reset_signal_mask(&self) {
        // SAFETY: sigset_t is plain data and sigemptyset initialises it; sigprocmask reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        }
        for signal in 1..=libc::SIGRTMAX() {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            // SAFETY: sets a default disposition; signals the C library reserves answer
            // EINVAL, which leaves them as they are.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }

    /// A new process group, or a new session with stdin as its controlling terminal.
    fn enter_session(&self, stdio: &ChildStdio) {
        // SAFETY: setpgid, setsid and ioctl(TIOCSCTTY) take integers and a descriptor this
        // process owns.
        let ok = unsafe {
            match stdio.session {
                Session::Inherit => return,
                Session::OwnGroup => libc::setpgid(0, 0) == 0,
                Session::Terminal => libc::setsid() >= 0,
            }
        };
        if !ok {
            self.fail_stage(SESSION);
        }
        if stdio.session == Session::Terminal {
            // SAFETY: as above; 0: do not steal a terminal another session holds.
            if unsafe { libc::ioctl(stdio.stdin.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
                self.fail_stage(CONTROLLING_TERMINAL);
            }
        }
    }

    pub(super) fn join_cgroup(&self, procs: RawFd) {
        // In cgroup v2, writing 0 to cgroup.procs moves the writer.
        // SAFETY: writes one byte from a static string to an open descriptor.
        if unsafe { libc::write(procs, c"0".as_ptr().cast(), 1) } != 1 {
            self.fail_stage(JOIN_CGROUP);
        }
    }

    /// Effective and permitted `active`, inheritable `inheritable`.
    fn set_capabilities(&self, active: u64, inheritable: u64) {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [
            CapData {
                effective: active as u32,
                permitted: active as u32,
                inheritable: inheritable as u32,
            },
            CapData {
                effective: (active >> 32) as u32,
                permitted: (active >> 32) as u32,
                inheritable: (inheritable >> 32) as u32,
            },
        ];
        // SAFETY: capset reads a version-3 header and two data structs, all live locals.
        if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
            self.fail_stage(CAPSET);
        }
    }

    /// Limits, identity, capabilities, stdio, then exec. Never returns.
    pub(super) fn become_process(&self, plan: &ProcessPlan, stdio: &ChildStdio) -> ! {
        for (resource, limit) in &plan.rlimits {
            // SAFETY: setrlimit reads a live rlimit.
            if unsafe { libc::setrlimit(*resource, limit) } != 0 {
                self.fail_stage(RLIMIT);
            }
        }
        // The bounding set must shrink while this process still has CAP_SETPCAP.
        for cap in 0..=plan.last_cap.min(63) {
            if plan.capabilities & (1 << cap) == 0 {
                // SAFETY: prctl with integer arguments only.
                let rc =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                if rc != 0 && errno() != libc::EINVAL {
                    self.fail_stage(CAPBSET);
                }
            }
        }
        // The raw call, not glibc's: its wrapper synchronises the threads glibc believes
        // this process has, which after a raw clone are the agent's and may hold its locks.
        // SAFETY: setgroups reads `groups.len()` gids from the live vector.
        if unsafe { libc::syscall(libc::SYS_setgroups, plan.groups.len(), plan.groups.as_ptr()) }
            != 0
        {
            self.fail_stage(SETGROUPS);
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
            self.fail_stage(KEEPCAPS);
        }
        // SAFETY: plain integer system calls, raw for the reason given for setgroups.
        if unsafe { libc::syscall(libc::SYS_setresgid, plan.gid, plan.gid, plan.gid) } != 0 {
            self.fail_stage(SETGID);
        }
        // SAFETY: as above.
        if unsafe { libc::syscall(libc::SYS_setresuid, plan.uid, plan.uid, plan.uid) } != 0 {
            self.fail_stage(SETUID);
        }
        // Installing a seccomp program takes no_new_privs or CAP_SYS_ADMIN: without the
        // first, the process keeps CAP_SYS_ADMIN until its programs are in (as runc does,
        // the profile must then allow capset).
        let admin = 1u64 << caps::Capability::CAP_SYS_ADMIN.index();
        let hold_admin =
            !plan.seccomp.is_empty() && !plan.no_new_privs && plan.capabilities & admin == 0;
        let held = if hold_admin { admin } else { 0 };
        self.set_capabilities(plan.capabilities | held, plan.capabilities);
        // SAFETY: prctl with integer arguments only.
        if plan.no_new_privs && unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            self.fail_stage(NO_NEW_PRIVS);
        }
        // SAFETY: chdir reads a NUL-terminated string prepared before the clone.
        if unsafe { libc::chdir(plan.cwd.as_ptr()) } != 0 {
            self.fail_stage(CHDIR);
        }
        self.enter_session(stdio);
        for (fd, target) in [
            (stdio.stdin.as_raw_fd(), 0),
            (stdio.stdout.as_raw_fd(), 1),
            (stdio.stderr.as_raw_fd(), 2),
        ] {
            // SAFETY: dup2 and fcntl on descriptors this process owns. dup2 onto itself
            // keeps close-on-exec, so that case clears it.
            let ok = unsafe {
                if fd == target {
                    libc::fcntl(fd, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(fd, target) == target
                }
            };
            if !ok {
                self.fail_stage(DUP2);
            }
        }
        // Last before exec, so that the profile only has to allow what exec needs.
        for program in &plan.seccomp {
            // SAFETY: seccomp reads a sock_fprog whose filter points into a vector the plan
            // owns, prepared before the clone.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &program.fprog as *const libc::sock_fprog,
                )
            };
            if rc != 0 {
                self.fail_stage(SECCOMP);
            }
        }
        if hold_admin {
            self.set_capabilities(plan.capabilities, plan.capabilities);
        }
        let mut failure = libc::ENOENT;
        for candidate in &plan.candidates {
            // SAFETY: the path and the null-terminated argv and envp arrays point into
            // strings prepared before the clone.
            unsafe {
                libc::execve(
                    candidate.as_ptr(),
                    plan.argv_ptrs.as_ptr(),
                    plan.envp_ptrs.as_ptr(),
                )
            };
            match errno() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => failure = libc::EACCES,
                other => {
                    failure = other;
                    break;
                }
            }
        }
        self.fail(STAGE_BASE + EXEC_STAGE as u32, failure)
    }
}

/// For stdio pipes: a descriptor the agent reads without blocking.
pub fn pipe_receiver(fd: OwnedFd) -> io::Result<tokio::net::unix::pipe::Receiver> {
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
}

/// For a stdin pipe.
pub fn pipe_sender(fd: OwnedFd) -> io::Result<tokio::net::unix::pipe::Sender> {
    tokio::net::unix::pipe::Sender::from_owned_fd(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_program_name_is_looked_up_in_path_order() {
        assert_eq!(
            program_candidates("sh", "/usr/bin:/bin/::"),
            ["/usr/bin/sh", "/bin/sh", "./sh", "./sh"]
        );
        assert_eq!(program_candidates("./run", "/bin"), ["./run"]);
        assert_eq!(program_candidates("/bin/true", "/usr/bin"), ["/bin/true"]);
    }

    #[test]
    fn the_path_comes_from_the_environment_or_the_default() {
        let mut spec = ProcessSpec {
            args: vec!["ls".into()],
            env: vec!["PATH=/x".into()],
            cwd: String::new(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            rlimits: vec![],
            capabilities: 0,
            no_new_privs: false,
            seccomp: vec![],
        };
        let plan = ProcessPlan::new(&spec).unwrap();
        assert_eq!(plan.candidates, [c"/x/ls".to_owned()]);
        assert_eq!(plan.cwd, c"/".to_owned());
        assert_eq!(plan.argv_ptrs.len(), 2);
        assert!(plan.argv_ptrs[1].is_null());
        spec.env.clear();
        let plan = ProcessPlan::new(&spec).unwrap();
        assert_eq!(plan.candidates.len(), DEFAULT_PATH.split(':').count());
    }

    #[test]
    fn proc_fd_paths_are_formatted_without_allocating() {
        let mut buffer = [0u8; PROC_FD_PATH_LEN];
        assert_eq!(proc_fd_path(0, &mut buffer), c"/proc/self/fd/0");
        assert_eq!(proc_fd_path(1234, &mut buffer), c"/proc/self/fd/1234");
        assert_eq!(
            proc_fd_path(i32::MAX, &mut buffer),
            c"/proc/self/fd/2147483647"
        );
    }

    #[test]
    fn an_empty_args_list_is_refused() {
        let spec = ProcessSpec {
            args: vec![],
            env: vec![],
            cwd: String::new(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            rlimits: vec![],
            capabilities: 0,
            no_new_privs: false,
            seccomp: vec![],
        };
        assert!(matches!(ProcessPlan::new(&spec), Err(SpawnError::NoArgs)));
    }
}
