//! The jail a launcher asks for ([`vpod_proto::vmm::JailConfig`]): what the VMM does to
//! itself before it builds the VM, so that a guest that takes the VMM over holds as little
//! as possible. Firecracker's jailer is the model; here it is a step of the VMM's own start,
//! run while it is still one thread and still root:
//!
//! 1. join the pod's cgroup, if the configuration names one ([`join_cgroup`]), so that both
//!    processes below and everything they allocate are charged there;
//! 2. a new PID namespace, entered by forking: the first process stays outside as the
//!    [`keeper`] (the launcher's child, standing in for the VMM), the second is the VMM, the
//!    namespace's first process, which sees no other process of the host;
//! 3. new mount, IPC, UTS and (unless a NIC's tap is opened by name) network namespaces,
//!    the last one empty, and a root of its own ([`confine`]): a small tmpfs on
//!    `root` holding only what the [`plan`] lists, bound at their own paths (kernel and
//!    initrd read-only, disks named by path with their own access, the directories where it
//!    makes its console file and sockets, the fs backends' sockets), and `/dev/kvm` (and
//!    `/dev/net/tun` for a tap by name) as device nodes owned by the jail's user; the old
//!    root is detached and the new one made read-only; every bind is nosuid, nodev, noexec;
//! 4. every descriptor the configuration does not name closed; RLIMIT_NOFILE and
//!    RLIMIT_MEMLOCK as configured (4096 and none by default), no core files, not dumpable;
//! 5. the capability bounding and ambient sets emptied, then the jail's uid and gid with no
//!    supplementary groups (which leaves no capability at all), and `no_new_privs`.
//!
//! The seccomp filters come later, once the VM is built.

mod confine;
pub mod keeper;
pub mod plan;
mod sys;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use vpod_proto::vmm::JailConfig;

use crate::config::VmConfig;
pub use keeper::VmmEnd;
pub use plan::JailPlan;

/// Why the VMM could not confine itself.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("cannot join the cgroup {0}")]
    Cgroup(PathBuf, #[source] io::Error),
    #[error("jail: {0} cannot be found")]
    Path(PathBuf, #[source] io::Error),
    #[error("jail: {0} has no file name")]
    NotAFile(PathBuf),
    #[error("jail: the root {0} is not a directory")]
    Root(PathBuf),
    #[error("jail: {0} failed")]
    Step(&'static str, #[source] io::Error),
    #[error("jail: cannot mount {0}")]
    Mount(PathBuf, #[source] io::Error),
    #[error("jail: cannot make the device node {0}")]
    Device(PathBuf, #[source] io::Error),
    #[error("jail: the keeper process ended before the VMM was confined")]
    KeeperGone,
}

/// Which process returns from [`enter`].
#[derive(Debug)]
pub enum Role {
    /// The keeper, once the VMM has ended: end as it did ([`VmmEnd::finish`]).
    Keeper(VmmEnd),
    /// The VMM, confined: build and run the VM.
    Vmm,
}

/// Moves this process into the cgroup v2 directory `cgroup`.
pub fn join_cgroup(cgroup: &Path) -> Result<(), JailError> {
    std::fs::write(cgroup.join("cgroup.procs"), b"0")
        .map_err(|e| JailError::Cgroup(cgroup.to_path_buf(), e))
}

/// Confines the VMM as `jail` says; `config`'s paths become those it has inside. Call it
/// while the process is one thread. Returns twice, in two processes: see [`Role`].
pub fn enter(jail: &JailConfig, config: &mut VmConfig) -> Result<Role, JailError> {
    if !jail.root.is_dir() {
        return Err(JailError::Root(jail.root.clone()));
    }
    let plan = JailPlan::for_config(config)?;
    let (alive_read, alive_write) = pipe().map_err(|e| JailError::Step("making a pipe", e))?;
    keeper::install_forwarding().map_err(|e| JailError::Step("forwarding signals", e))?;
    sys::unshare(libc::CLONE_NEWPID).map_err(|e| JailError::Step("making a PID namespace", e))?;
    match sys::fork().map_err(|e| JailError::Step("forking the VMM", e))? {
        Some(vmm) => {
            drop(alive_read);
            let end = keeper::keep(vmm, alive_write)
                .map_err(|e| JailError::Step("waiting for the VMM", e))?;
            Ok(Role::Keeper(end))
        }
        None => {
            drop(alive_write);
            confine::confine(jail, &plan, alive_read)?;
            Ok(Role::Vmm)
        }
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}
