//! Named network namespaces as `ip netns` and containerd make them: a file
//! `<netns_dir>/<name>` with a new network namespace bind-mounted on it, so the namespace
//! lives as long as the mount does, whatever process made it.
//!
//! `unshare` and `setns` change the calling thread's namespace, so both run on a dedicated
//! short-lived `std::thread`, never on a caller's (possibly shared, possibly tokio) thread.
//! Unlike iproute2, the netns dir is not made a shared mount: as in containerd, the mount
//! is visible in this mount namespace and those created after it.

use rustix::mount::UnmountFlags;
use rustix::thread::{LinkNameSpaceType, UnshareFlags};
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Why a network namespace could not be made, entered or removed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot create the netns dir {0}")]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("cannot create the netns file {0}")]
    CreateFile(PathBuf, #[source] std::io::Error),
    #[error("cannot unshare a new network namespace")]
    Unshare(#[source] std::io::Error),
    #[error("cannot bind-mount the new network namespace on {0}")]
    Mount(PathBuf, #[source] std::io::Error),
    #[error("cannot unmount the netns {0}")]
    Unmount(PathBuf, #[source] std::io::Error),
    #[error("cannot remove the netns file {0}")]
    Remove(PathBuf, #[source] std::io::Error),
    #[error("cannot open the netns {0}")]
    Open(PathBuf, #[source] std::io::Error),
    #[error("cannot enter the netns {0}")]
    Enter(PathBuf, #[source] std::io::Error),
    #[error("the netns thread panicked")]
    ThreadPanicked,
}

/// Creates the network namespace `path` (the file must not exist yet).
pub fn create(path: &Path) -> Result<(), NetnsError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| NetnsError::CreateDir(dir.to_owned(), e))?;
    }
    File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| NetnsError::CreateFile(path.to_owned(), e))?;
    let target = path.to_owned();
    let mounted = std::thread::spawn(move || -> Result<(), NetnsError> {
        // SAFETY: unshare_unsafe is unsafe because unsharing CLONE_FILES or CLONE_FS under a
        // running program can invalidate what other code assumes; CLONE_NEWNET alone only
        // moves this dedicated thread (which runs nothing else and exits right after) into a
        // new network namespace.
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
            .map_err(|e| NetnsError::Unshare(e.into()))?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)
            .map_err(|e| NetnsError::Mount(target.clone(), e.into()))
    })
    .join()
    .map_err(|_| NetnsError::ThreadPanicked)
    .and_then(|r| r);
    if mounted.is_err() {
        let _ = std::fs::remove_file(path);
    }
    mounted
}

/// Unmounts and unlinks the network namespace `path`; a missing one is not an error.
pub fn remove(path: &Path) -> Result<(), NetnsError> {
    match rustix::mount::unmount(path, UnmountFlags::DETACH) {
        // EINVAL: not a mount point (a file left by a crash before the bind mount).
        Ok(()) | Err(rustix::io::Errno::NOENT | rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(NetnsError::Unmount(path.to_owned(), e.into())),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(NetnsError::Remove(path.to_owned(), e)),
        _ => Ok(()),
    }
}

/// Whether `path` is a mounted network namespace (and not a bare file).
pub fn is_netns(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return false;
    };
    // `f_type` is i64 on x86_64 and narrower elsewhere.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(&file).is_ok_and(|s| s.f_type as i64 == NSFS_MAGIC)
}

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Runs `work` on a dedicated thread inside the network namespace `path`.
pub fn run_in<T, E>(path: &Path, work: impl FnOnce() -> Result<T, E> + Send) -> Result<T, E>
where
    T: Send,
    E: From<NetnsError> + Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let netns = File::open(path).map_err(|e| NetnsError::Open(path.to_owned(), e))?;
                rustix::thread::move_into_link_name_space(
                    std::os::fd::AsFd::as_fd(&netns),
                    Some(LinkNameSpaceType::Network),
                )
                .map_err(|e| NetnsError::Enter(path.to_owned(), e.into()))?;
                work()
            })
            .join()
            .map_err(|_| E::from(NetnsError::ThreadPanicked))?
    })
}
